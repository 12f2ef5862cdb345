use arsync_ring::Ring;

fn main() {
    let ring = Ring::new().unwrap();
    let mut buf: Vec<u8> = Vec::with_capacity(16);
    let fut = ring.read_at(0, buf, 0);
    // The kernel owns the buffer until the future completes: it cannot be touched here.
    buf.push(1);
    drop(fut);
}
