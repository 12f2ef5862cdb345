fn main() {
    println!("dynfs {}", env!("CARGO_PKG_VERSION"));
}
