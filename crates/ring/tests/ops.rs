//! Every operation against real files, pipes and sockets.

use arsync_ring::op::{self, cstr, XattrTarget};
use arsync_ring::{Fd, Ring, SqeOpts};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn features_display_lists_opcodes() {
    let ring = Ring::new().unwrap();
    let text = ring.features().to_string();
    assert!(text.contains("opcodes supported:"), "{text}");
    assert!(text.contains("statx"), "{text}");
}

#[test]
fn file_ops_roundtrip() {
    let d = tmp();
    let ring = Ring::builder().entries(32).files(8).build().unwrap();
    let h = ring.handle();
    let dir = std::fs::File::open(d.path()).unwrap();
    let dfd = dir.as_raw_fd();
    ring.block_on(async {
        let f = h
            .open_at(dfd, "a.txt", libc::O_CREAT | libc::O_RDWR, 0o640)
            .await
            .unwrap();
        let fd = f.as_raw_fd();
        let (r, buf) = h.write_at(fd, b"hello world".to_vec(), 0).await;
        assert_eq!(r.unwrap(), 11);
        assert_eq!(buf, b"hello world");
        let (r, buf) = h.read_at(fd, Vec::with_capacity(5), 6).await;
        assert_eq!(r.unwrap(), 5);
        assert_eq!(buf, b"world");
        // readv / writev
        let (r, _) = h
            .op(op::Writev::new(
                fd,
                vec![b"AB".to_vec(), b"CD".to_vec()],
                11,
            ))
            .await;
        assert_eq!(r.unwrap(), 4);
        let (r, bufs) = h
            .op(op::Readv::new(
                fd,
                vec![Vec::with_capacity(3), Vec::with_capacity(20)],
                9,
            ))
            .await;
        assert_eq!(r.unwrap(), 6);
        assert_eq!(bufs[0], b"ldA");
        assert_eq!(bufs[1], b"BCD");
        h.fsync(fd, false).await.unwrap();
        h.fsync(fd, true).await.unwrap();
        h.op(op::Fallocate::new(fd, 0, 0, 4096)).await.unwrap();
        h.op(op::Fadvise::new(fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL))
            .await
            .unwrap();
        let st = h.statx(dfd, "a.txt", 0, libc::STATX_ALL).await.unwrap();
        assert_eq!(st.stx_size, 4096);
        assert_eq!(st.stx_mode & 0o777, 0o640);
        if h.features().supports(arsync_ring::Opcode::Ftruncate) {
            h.op(op::Ftruncate::new(fd, 15)).await.unwrap();
            assert_eq!(
                h.statx(dfd, "a.txt", 0, libc::STATX_SIZE)
                    .await
                    .unwrap()
                    .stx_size,
                15
            );
        }
        // xattrs (fd and path forms); tmpfs supports user.* xattrs.
        let name = cstr("user.test").unwrap();
        let r = h
            .op(op::SetXattr::new(
                XattrTarget::Fd(Fd::Raw(fd)),
                name.clone(),
                b"v1".to_vec(),
                0,
            ))
            .await;
        if r.is_ok() {
            let (n, v) = h
                .op(op::GetXattr::new(
                    XattrTarget::Fd(Fd::Raw(fd)),
                    name.clone(),
                    Vec::with_capacity(16),
                ))
                .await;
            assert_eq!(n.unwrap(), 2);
            assert_eq!(v, b"v1");
            let p = cstr(d.path().join("a.txt")).unwrap();
            h.op(op::SetXattr::new(
                XattrTarget::Path(p.clone()),
                name.clone(),
                b"value2".to_vec(),
                0,
            ))
            .await
            .unwrap();
            let (n, v) = h
                .op(op::GetXattr::new(
                    XattrTarget::Path(p),
                    name,
                    Vec::with_capacity(16),
                ))
                .await;
            assert_eq!(n.unwrap(), 6);
            assert_eq!(v, b"value2");
        }
        h.close(f).await.unwrap();
        // directory ops
        h.op(op::MkdirAt::new(dfd, cstr("sub").unwrap(), 0o750))
            .await
            .unwrap();
        h.op(op::SymlinkAt::new(
            cstr("a.txt").unwrap(),
            dfd,
            cstr("link").unwrap(),
        ))
        .await
        .unwrap();
        h.op(op::LinkAt::new(
            dfd,
            cstr("a.txt").unwrap(),
            dfd,
            cstr("sub/hard").unwrap(),
            0,
        ))
        .await
        .unwrap();
        h.op(op::RenameAt::new(
            dfd,
            cstr("sub/hard").unwrap(),
            dfd,
            cstr("moved").unwrap(),
            0,
        ))
        .await
        .unwrap();
        let e = h
            .op(op::RenameAt::new(
                dfd,
                cstr("moved").unwrap(),
                dfd,
                cstr("a.txt").unwrap(),
                libc::RENAME_NOREPLACE,
            ))
            .await;
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EEXIST));
        h.op(op::UnlinkAt::new(dfd, cstr("moved").unwrap(), 0))
            .await
            .unwrap();
        h.op(op::UnlinkAt::new(
            dfd,
            cstr("sub").unwrap(),
            libc::AT_REMOVEDIR,
        ))
        .await
        .unwrap();
        // missing path -> ENOENT
        let e = h.statx(dfd, "nope", 0, libc::STATX_ALL).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // openat2 normal and direct
        let f2 = h
            .op(op::OpenAt2::new(
                dfd,
                cstr("a.txt").unwrap(),
                libc::O_RDONLY as u64,
                0,
                0,
            ))
            .await
            .unwrap()
            .unwrap();
        let (r, buf) = h.read_at(f2.as_raw_fd(), Vec::with_capacity(5), 0).await;
        assert_eq!((r.unwrap(), &buf[..]), (5, &b"hello"[..]));
        let slot = h.alloc_direct().unwrap();
        let none = h
            .op(
                op::OpenAt2::new(dfd, cstr("a.txt").unwrap(), libc::O_RDONLY as u64, 0, 0)
                    .direct(slot.index()),
            )
            .await
            .unwrap();
        assert!(none.is_none());
        let (r, buf) = h.read_at(&slot, Vec::with_capacity(5), 6).await;
        assert_eq!((r.unwrap(), &buf[..]), (5, &b"world"[..]));
        h.op(op::Close::direct(slot.index())).await.unwrap();
    })
    .unwrap();
    let link = std::fs::read_link(d.path().join("link")).unwrap();
    assert_eq!(link.to_str(), Some("a.txt"));
}

#[test]
fn fixed_buffers_and_direct_descriptors() {
    let d = tmp();
    std::fs::write(d.path().join("src"), vec![7u8; 10000]).unwrap();
    let ring = Ring::builder().files(4).build().unwrap();
    let pool = ring.register_buffers(4, 4096).unwrap();
    let h = ring.handle();
    let dir = std::fs::File::open(d.path()).unwrap();
    ring.block_on(async {
        let src = h.alloc_direct().unwrap();
        h.op(op::OpenAtDirect::new(
            dir.as_raw_fd(),
            cstr("src").unwrap(),
            libc::O_RDONLY,
            0,
            src.index(),
        ))
        .await
        .unwrap();
        let dst = h
            .open_at(
                dir.as_raw_fd(),
                "dst",
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            )
            .await
            .unwrap();
        let mut off = 0u64;
        loop {
            let b = pool.get().unwrap();
            assert_eq!(pool.available(), 3);
            let (r, b) = h.op(op::ReadFixed::new(&src, b, off)).await;
            let n = r.unwrap();
            if n == 0 {
                break;
            }
            let (w, _b) = h.op(op::WriteFixed::new(dst.as_raw_fd(), b, off)).await;
            assert_eq!(w.unwrap(), n);
            off += n as u64;
        }
        assert_eq!(pool.available(), 4);
        h.op(op::Close::direct(src.index())).await.unwrap();
    })
    .unwrap();
    assert_eq!(
        std::fs::read(d.path().join("dst")).unwrap(),
        vec![7u8; 10000]
    );
    // A fixed buffer of another ring is refused, not used.
    let other = Ring::new().unwrap();
    let b = pool.get().unwrap();
    let (r, _) = other
        .block_on(other.op(op::ReadFixed::new(dir.as_raw_fd(), b, 0)))
        .unwrap();
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn pipes_and_splice() {
    let ring = Ring::new().unwrap();
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let h = ring.handle();
    ring.block_on(async {
        let (n, _) = h
            .write_at(w1.as_raw_fd(), b"through the pipe".to_vec(), u64::MAX)
            .await;
        assert_eq!(n.unwrap(), 16);
        let n = h
            .op(op::Splice::new(
                r1.as_raw_fd(),
                None,
                w2.as_raw_fd(),
                None,
                64,
            ))
            .await
            .unwrap();
        assert_eq!(n, 16);
        let (n, b) = h
            .read_at(r2.as_raw_fd(), Vec::with_capacity(64), u64::MAX)
            .await;
        assert_eq!(n.unwrap(), 16);
        assert_eq!(b, b"through the pipe");
    })
    .unwrap();
}

#[test]
fn sockets_accept_connect_send_recv() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ring = Ring::new().unwrap();
    let h = ring.handle();
    let lfd = listener.as_raw_fd();
    ring.block_on(async {
        let mut accepts = h.accept_stream(lfd);
        // SAFETY: plain socket creation; checked below.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(s >= 0);
        // SAFETY: fresh fd.
        let client = unsafe { OwnedFd::from_raw_fd(s) };
        let c2 = h.clone();
        let cfd = client.as_raw_fd();
        let conn = h.op(op::Connect::new(cfd, addr));
        let (server, c) = join2(accepts.next(), conn).await;
        c.unwrap();
        let server = server.unwrap();
        let (n, _) = c2.send(cfd, b"ping".to_vec()).await;
        assert_eq!(n.unwrap(), 4);
        let (n, b) = h.recv(server.as_raw_fd(), Vec::with_capacity(16)).await;
        assert_eq!(n.unwrap(), 4);
        assert_eq!(b, b"ping");
        if h.features().supports(arsync_ring::Opcode::SendZc) {
            let (n, b) = h
                .op(op::Send::new(server.as_raw_fd(), vec![9u8; 1000], 0).zero_copy())
                .await;
            assert_eq!(n.unwrap(), 1000);
            assert_eq!(b.len(), 1000);
            let (n, b) = h
                .read_full_at(cfd, Vec::with_capacity(1000), u64::MAX)
                .await;
            assert_eq!(n.unwrap(), 1000);
            assert!(b.iter().all(|&x| x == 9));
        }
        // A second connection through the same (multishot) stream.
        let _c3 = TcpStream::connect(addr).unwrap();
        let s3 = accepts.next().await.unwrap();
        assert!(s3.as_raw_fd() >= 0);
    })
    .unwrap();
}

/// Polls two futures concurrently.
async fn join2<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let mut ra = None;
    let mut rb = None;
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

#[test]
fn timeout_and_cancel() {
    let ring = Ring::new().unwrap();
    let h = ring.handle();
    let (r, _w) = pipe();
    let t = Instant::now();
    ring.block_on(h.sleep(Duration::from_millis(30)))
        .unwrap()
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(25));
    let rfd = r.as_raw_fd();
    let h2 = h.clone();
    let reader =
        ring.spawn_local(async move { h2.read_at(rfd, Vec::with_capacity(8), u64::MAX).await });
    ring.block_on(async {
        h.sleep(Duration::from_millis(10)).await.unwrap();
        let n = h.op(op::CancelFd::new(rfd)).await.unwrap();
        assert_eq!(n, 1);
        let (res, _) = reader.await;
        assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    })
    .unwrap();
}

#[test]
fn batch_chain_copies_a_file_with_one_cqe() {
    let d = tmp();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.path().join("in"), &data).unwrap();
    let ring = Ring::builder().files(4).build().unwrap();
    let dir = std::fs::File::open(d.path()).unwrap();
    let dfd = dir.as_raw_fd();
    let (s, t) = (ring.alloc_direct().unwrap(), ring.alloc_direct().unwrap());
    let q = SqeOpts::linked_quiet();
    let mut b = ring.batch();
    let t1 = b.push_with(
        op::OpenAtDirect::new(dfd, cstr("in").unwrap(), libc::O_RDONLY, 0, s.index()),
        q,
    );
    let t2 = b.push_with(op::Read::new(&s, Vec::with_capacity(3000), 0), q);
    let t3 = b.push_with(op::Close::direct(s.index()), q);
    let t4 = b.push_with(
        op::OpenAtDirect::new(
            dfd,
            cstr("out").unwrap(),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
            t.index(),
        ),
        q,
    );
    b.wait().unwrap();
    let (r, buf) = b.take(t2).unwrap();
    assert_eq!(r.unwrap(), 3000);
    assert!(
        b.take(t1).unwrap().is_ok() && b.take(t3).unwrap().is_ok() && b.take(t4).unwrap().is_ok()
    );
    // Second chain: write + close, the tail posts the only CQE.
    let t5 = b.push_with(op::Write::new(&t, buf, 0), q);
    let t6 = b.push(op::Close::direct(t.index()));
    b.wait().unwrap();
    assert_eq!(b.take(t5).unwrap().0.unwrap(), 3000);
    b.take(t6).unwrap().unwrap();
    assert!(b.is_empty());
    drop(b);
    assert_eq!(std::fs::read(d.path().join("out")).unwrap(), data);
    // A failing chain: open of a missing file fails, later links are cancelled.
    let mut b = ring.batch();
    let a = b.push_with(
        op::OpenAtDirect::new(dfd, cstr("missing").unwrap(), libc::O_RDONLY, 0, s.index()),
        q,
    );
    let r = b.push_with(op::Read::new(&s, Vec::with_capacity(10), 0), q);
    let c = b.push(op::Close::direct(s.index()));
    b.wait().unwrap();
    assert_eq!(
        b.take(a).unwrap().unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        b.take(r).unwrap().0.unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
    assert_eq!(
        b.take(c).unwrap().unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
}

#[test]
fn short_read_breaks_chain_and_is_reported() {
    let d = tmp();
    std::fs::write(d.path().join("in"), b"short").unwrap();
    let ring = Ring::new().unwrap();
    let f = std::fs::File::open(d.path().join("in")).unwrap();
    let out = std::fs::File::create(d.path().join("out")).unwrap();
    let mut b = ring.batch();
    let r = b.push_with(
        op::Read::new(f.as_raw_fd(), Vec::with_capacity(100), 0),
        SqeOpts::linked_quiet(),
    );
    let w = b.push(op::Write::new(out.as_raw_fd(), vec![1u8; 100], 0));
    b.wait().unwrap();
    let (n, buf) = b.take(r).unwrap();
    assert_eq!(n.unwrap(), 5);
    assert_eq!(buf, b"short");
    assert_eq!(
        b.take(w).unwrap().0.unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
}

#[test]
fn cross_thread_wake_ends_a_blocking_wait() {
    let ring = Ring::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<std::task::Waker>();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f2 = flag.clone();
    let th = std::thread::spawn(move || {
        let w = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f2.store(true, std::sync::atomic::Ordering::SeqCst);
        w.wake();
    });
    let mut sent = false;
    ring.block_on(std::future::poll_fn(|cx| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        if !sent {
            tx.send(cx.waker().clone()).unwrap();
            sent = true;
        }
        std::task::Poll::Pending
    }))
    .unwrap();
    th.join().unwrap();
}

#[test]
fn spawn_local_runs_many_tasks() {
    let ring = Ring::new().unwrap();
    let h = ring.handle();
    let d = tmp();
    let dir = std::fs::File::open(d.path()).unwrap();
    let dfd = dir.as_raw_fd();
    let n = ring
        .block_on(async {
            let mut hs = Vec::new();
            for i in 0..50 {
                let h = h.clone();
                hs.push(
                    arsync_ring::spawn_local(async move {
                        let name = format!("f{i}");
                        let f = h
                            .open_at(dfd, &name, libc::O_CREAT | libc::O_WRONLY, 0o644)
                            .await
                            .unwrap();
                        let (r, _) = h
                            .write_all_at(f.as_raw_fd(), name.clone().into_bytes(), 0)
                            .await;
                        r.unwrap();
                        1
                    })
                    .unwrap(),
                );
            }
            let mut total = 0;
            for j in hs {
                total += j.await;
            }
            total
        })
        .unwrap();
    assert_eq!(n, 50);
    assert_eq!(std::fs::read(d.path().join("f7")).unwrap(), b"f7");
}

#[test]
fn dropping_ring_with_pending_ops_drains() {
    let (r, w) = pipe();
    {
        let ring = Ring::new().unwrap();
        let h = ring.handle();
        for _ in 0..10 {
            let h = h.clone();
            let rfd = r.as_raw_fd();
            ring.spawn_local(async move {
                let _ = h.read_at(rfd, Vec::with_capacity(8), u64::MAX).await;
            });
        }
        // Run once so the reads are submitted, then drop the ring with them in flight.
        ring.block_on(async {}).unwrap();
        ring.block_on(ring.sleep(Duration::from_millis(5)))
            .unwrap()
            .unwrap();
        assert!(ring.ops_in_slab() >= 10);
    }
    // The reads were cancelled: the data stays in the pipe.
    let mut wf = std::fs::File::from(w);
    wf.write_all(b"x").unwrap();
    let mut rf = std::fs::File::from(r);
    let mut b = [0u8; 1];
    rf.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn chains_without_skip_success_and_drain_barriers() {
    let d = tmp();
    std::fs::write(d.path().join("in"), b"abc").unwrap();
    let ring = Ring::builder().skip_success(false).build().unwrap();
    assert!(!ring.features().skip_success);
    let f = std::fs::File::open(d.path().join("in")).unwrap();
    let mut b = ring.batch();
    let r1 = b.push_with(
        op::Read::new(f.as_raw_fd(), Vec::with_capacity(3), 0),
        SqeOpts::linked_quiet(),
    );
    let r2 = b.push_with(
        op::Read::new(f.as_raw_fd(), Vec::with_capacity(2), 1),
        SqeOpts {
            drain: true,
            ..SqeOpts::default()
        },
    );
    b.wait().unwrap();
    let (n1, b1) = b.take(r1).unwrap();
    let (n2, b2) = b.take(r2).unwrap();
    assert_eq!(
        (n1.unwrap(), &b1[..], n2.unwrap(), &b2[..]),
        (3, &b"abc"[..], 2, &b"bc"[..])
    );
}

#[test]
fn ring_builder_can_mask_opcodes() {
    let ring = Ring::builder()
        .without(arsync_ring::Opcode::Statx)
        .build()
        .unwrap();
    assert!(!ring.features().supports(arsync_ring::Opcode::Statx));
    assert!(ring
        .features()
        .to_string()
        .contains("opcodes missing: statx"));
}

#[test]
fn batch_tickets_are_checked() {
    let ring = Ring::new().unwrap();
    let mut a = ring.batch();
    let mut b = ring.batch();
    let (r, _w) = pipe();
    let pending = a.push(op::Read::new(
        r.as_raw_fd(),
        Vec::with_capacity(4),
        u64::MAX,
    ));
    let nop = b.push(op::Nop);
    a.submit().unwrap();
    b.wait().unwrap();
    // Not completed yet: no output, the ticket comes back.
    let pending = a.take(pending).unwrap_err();
    assert!(a.take(pending).is_err());
    // A ticket of another batch is refused.
    let mut c = ring.batch();
    let nop = c.take(nop).unwrap_err();
    assert!(b.take(nop).unwrap().is_ok());
    assert!(b.is_empty());
    drop(a); // cancels the pending read
    ring.block_on(ring.sleep(Duration::from_millis(5)))
        .unwrap()
        .unwrap();
    assert_eq!(ring.ops_in_slab(), 0);
}

#[test]
fn dropped_rings_release_their_registered_fd() {
    // A thread can register at most 16 ring fds at once; dropping a ring must release its slot.
    for i in 0..40 {
        let ring = Ring::new().unwrap();
        assert!(
            ring.ring_fd_registered(),
            "ring {i} could not register its fd"
        );
        ring.block_on(ring.op(op::Nop)).unwrap().unwrap();
    }
}
