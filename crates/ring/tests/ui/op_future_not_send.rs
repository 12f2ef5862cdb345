use arsync_ring::Ring;

fn assert_send<T: Send>(_: T) {}

fn main() {
    let ring = Ring::new().unwrap();
    assert_send(ring.read_at(0, Vec::with_capacity(8), 0));
}
