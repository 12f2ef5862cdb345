//! Copies a file with many reads and writes in flight: `cargo run -p arsync-io --example copy -- SRC DST`.
//! `ARSYNC_IO=threads` runs it on the thread-pool backend.

use arsync_io::{tools, Runtime};
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [src, dst] = args.as_slice() else {
        eprintln!("usage: copy SRC DST");
        std::process::exit(2);
    };
    let rt = Runtime::new()?;
    let io = rt.io();
    let n = rt.block_on(async { tools::copy_file(&io, src, dst, 256 * 1024, 16).await })??;
    println!("copied {n} bytes with the {} backend", io.backend());
    Ok(())
}
