use arsync_ring::Ring;

fn assert_send<T: Send>(_: T) {}

fn main() {
    let ring = Ring::new().unwrap();
    assert_send(ring);
}
