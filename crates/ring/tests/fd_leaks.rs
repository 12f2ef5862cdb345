//! Fds produced by operations whose owner went away are closed (own test binary: it counts the
//! process's open fds, so no other test may run concurrently).

use arsync_ring::op::{self, cstr};
use arsync_ring::Ring;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn fds_from_abandoned_opens_and_accepts_are_closed() {
    let d = tmp();
    std::fs::write(d.path().join("f"), b"x").unwrap();
    let dir = std::fs::File::open(d.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let before = open_fds();
    {
        let ring = Ring::new().unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut futs = Vec::new();
        for _ in 0..200 {
            let mut f = Box::pin(ring.op(op::OpenAt::new(
                dir.as_raw_fd(),
                cstr("f").unwrap(),
                libc::O_RDONLY,
                0,
            )));
            let _ = std::future::Future::poll(f.as_mut(), &mut cx);
            futs.push(f);
        }
        ring.submit().unwrap();
        drop(futs); // every open either completed (fd closed now) or is orphaned (closed at its CQE)
                    // An accept stream that is dropped after connections arrived: the accepted fds are closed.
        let mut acc = ring.accept_stream(listener.as_raw_fd());
        let mut f = Box::pin(acc.next());
        let _ = std::future::Future::poll(f.as_mut(), &mut cx);
        drop(f);
        ring.submit().unwrap();
        let clients: Vec<_> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        ring.block_on(ring.sleep(Duration::from_millis(20)))
            .unwrap()
            .unwrap();
        drop(acc);
        ring.block_on(ring.sleep(Duration::from_millis(5)))
            .unwrap()
            .unwrap();
        assert_eq!(ring.ops_in_slab(), 0);
        drop(clients);
    }
    assert_eq!(open_fds(), before, "fds leaked by abandoned operations");
}
