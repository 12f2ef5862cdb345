fn main() {
    println!("arsync {}", env!("CARGO_PKG_VERSION"));
}
