//! Stress: 100k operations at high queue depth, mixing futures and batches.

use arsync_ring::{op, Ring, SqeOpts};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[test]
fn hundred_thousand_ops_at_high_queue_depth() {
    let d = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 256) as u8).collect();
    let path = d.path().join("f");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let fd = file.as_raw_fd();
    let ring = Ring::builder().entries(256).build().unwrap();
    let start = Instant::now();
    let mut done = 0usize;
    // Batches of 512 reads at random offsets plus linked nops (queue depth > SQ size).
    while done < 80_000 {
        let mut b = ring.batch();
        let mut ts = Vec::new();
        for i in 0..256usize {
            let off = (i * 13) % 4000;
            ts.push((
                off,
                b.push(op::Read::new(fd, Vec::with_capacity(64), off as u64)),
            ));
            let _ = b.push_with(op::Nop, SqeOpts::linked_quiet());
        }
        b.wait().unwrap();
        for (off, t) in ts {
            let (n, buf) = b.take(t).unwrap();
            let n = n.unwrap();
            assert_eq!(&buf[..], &data[off..off + n]);
        }
        done += 512;
    }
    // Futures: 256 tasks doing reads concurrently, 80 each.
    let h = ring.handle();
    let data2 = data.clone();
    let total = ring
        .block_on(async move {
            let mut js = Vec::new();
            for t in 0..256u64 {
                let h = h.clone();
                let data = data2.clone();
                js.push(
                    arsync_ring::spawn_local(async move {
                        for k in 0..80u64 {
                            let off = (t * 7 + k * 11) % 4000;
                            let (n, buf) = h.read_at(fd, Vec::with_capacity(32), off).await;
                            let n = n.unwrap();
                            assert_eq!(&buf[..], &data[off as usize..off as usize + n]);
                        }
                        80usize
                    })
                    .unwrap(),
                );
            }
            let mut s = 0;
            for j in js {
                s += j.await;
            }
            s
        })
        .unwrap();
    done += total;
    assert!(done >= 100_000);
    assert_eq!(ring.ops_in_slab(), 0);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}
