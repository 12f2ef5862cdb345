use arsync_ring::Handle;

fn assert_sync<T: Sync>() {}

fn main() {
    assert_sync::<Handle>();
}
