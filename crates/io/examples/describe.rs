//! Prints the I/O backend and io_uring features (what `arsync --version -v` shows):
//! `cargo run -p arsync-io --example describe`.

fn main() -> std::io::Result<()> {
    let rt = arsync_io::Runtime::new()?;
    println!("{}", rt.io().describe());
    Ok(())
}
