//! Drop safety: thousands of futures with reads pending on pipes are dropped, then the pipes are
//! written. The kernel must never write into freed memory (run under valgrind too, see
//! docs/BENCHMARKS.md), and every byte written afterwards must arrive intact.

use arsync_ring::{op, Ring};
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::task::{Context, Waker};

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two fresh fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]).into(),
            OwnedFd::from_raw_fd(fds[1]).into(),
        )
    }
}

#[test]
fn dropped_pending_reads_never_corrupt_memory() {
    const PIPES: usize = 64;
    const FUTS_PER_PIPE: usize = 40; // 2560 pending reads
    let ring = Ring::builder().entries(512).build().unwrap();
    let pipes: Vec<_> = (0..PIPES).map(|_| pipe()).collect();
    let mut futs = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    for (r, _) in &pipes {
        for _ in 0..FUTS_PER_PIPE {
            let mut f = Box::pin(ring.read_at(r.as_raw_fd(), Vec::with_capacity(64), u64::MAX));
            assert!(f.as_mut().poll(&mut cx).is_pending());
            futs.push(f);
        }
    }
    ring.submit().unwrap();
    assert_eq!(ring.ops_in_slab(), PIPES * FUTS_PER_PIPE);
    // Drop every future while its read is pending in the kernel.
    drop(futs);
    // Fill memory that freed buffers would occupy, then write to every pipe.
    let noise: Vec<Vec<u8>> = (0..PIPES * FUTS_PER_PIPE)
        .map(|i| vec![(i % 251) as u8; 64])
        .collect();
    for (i, (_, w)) in pipes.iter().enumerate() {
        let mut w = w;
        w.write_all(&[i as u8; 16]).unwrap();
    }
    // Let cancellations and completions arrive.
    for _ in 0..10 {
        ring.submit().unwrap();
    }
    ring.block_on(ring.sleep(std::time::Duration::from_millis(20)))
        .unwrap()
        .unwrap();
    assert_eq!(
        ring.ops_in_slab(),
        0,
        "every dropped read was cancelled or completed and freed"
    );
    for (i, v) in noise.iter().enumerate() {
        assert!(
            v.iter().all(|&b| b == (i % 251) as u8),
            "memory of buffer {i} was overwritten"
        );
    }
    // The data either went to a (dropped, cancelled-too-late) read or is still in the pipe;
    // whatever is in the pipe is intact. Check with fresh reads through the ring.
    for (i, (r, w)) in pipes.iter().enumerate() {
        let mut w = w;
        w.write_all(b"tail").unwrap();
        let mut r = r;
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        while !got.ends_with(b"tail") {
            let n = r.read(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        let body = &got[..got.len() - 4];
        assert!(
            body.iter().all(|&x| x == i as u8),
            "pipe {i} carried corrupted bytes"
        );
    }
    // A new batch of reads works normally after all of that.
    let (r, w) = pipe();
    let mut w2 = &w;
    w2.write_all(b"fresh").unwrap();
    let (n, buf) = ring
        .block_on(ring.op(op::Read::new(
            r.as_raw_fd(),
            Vec::with_capacity(8),
            u64::MAX,
        )))
        .unwrap();
    assert_eq!((n.unwrap(), &buf[..]), (5, &b"fresh"[..]));
}

#[test]
fn dropping_a_batch_and_the_ring_mid_flight() {
    let pipes: Vec<_> = (0..100).map(|_| pipe()).collect();
    {
        // Declared before the ring, so dropped after it: the batch outlives its ring.
        let outlives_ring;
        let ring = Ring::new().unwrap();
        let mut b = ring.batch();
        for (r, _) in &pipes {
            let _ = b.push(op::Read::new(
                r.as_raw_fd(),
                Vec::with_capacity(32),
                u64::MAX,
            ));
        }
        b.submit().unwrap();
        let mut b2 = ring.batch();
        for (r, _) in &pipes {
            let _ = b2.push(op::Read::new(
                r.as_raw_fd(),
                Vec::with_capacity(32),
                u64::MAX,
            ));
        }
        b2.submit().unwrap();
        drop(b);
        // b2 is still in flight when the ring is dropped: the ring cancels and drains it.
        outlives_ring = b2;
        assert!(!outlives_ring.is_empty());
    }
    for (r, w) in &pipes {
        let (mut r, mut w) = (r, w);
        w.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
    }
}

/// Runs the drop-safety test under valgrind (memcheck; scripts/deps installs it). Uninitialised
/// value errors are off: memcheck does not see the kernel's io_uring writes, so it would flag
/// every byte the kernel read into a buffer. Invalid reads/writes/frees and definite leaks count.
#[test]
fn drop_safety_under_valgrind() {
    if std::env::var_os("ARSYNC_UNDER_VALGRIND").is_some() {
        return;
    }
    let has_valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(has_valgrind, "valgrind is not installed: run scripts/deps");
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("valgrind")
        .args([
            "--error-exitcode=1",
            "--undef-value-errors=no",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe)
        .args(["dropp", "--test-threads=1"])
        .env("ARSYNC_UNDER_VALGRIND", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind reported errors:\n{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
