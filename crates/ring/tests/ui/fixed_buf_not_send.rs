use arsync_ring::FixedBuf;

fn assert_send<T: Send>() {}

fn main() {
    assert_send::<FixedBuf>();
}
