//! Concurrent writes to one file through the library API: many threads writing disjoint and
//! overlapping ranges in any order (as the kernel's writeback does), racing with flushes,
//! attribute reads, reads and size-extending truncates. Every byte must come back.

mod common;

use common::*;
use dynfs_core::fs::SetAttr;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::Fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const EXTENT: u64 = 64 << 10;

/// Offsets `0, chunk, 2*chunk, ...` below `len`, shuffled deterministically by `seed`.
fn shuffled_offsets(len: usize, chunk: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).step_by(chunk).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn new_file(fs: &Fs, name: &str) -> u64 {
    let (ino, _) = fs
        .mknod(ROOT_INO, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.open(ino).unwrap();
    ino
}

fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = fs.read(ino, out.len() as u64, 1 << 20).unwrap();
        assert!(!chunk.is_empty(), "short read at {}", out.len());
        out.extend(chunk);
    }
    out
}

/// Writers of disjoint and overlapping ranges plus a thread calling flush, getattr, read and
/// an extending truncate, all on one inode; returns the expected content.
fn hammer(fs: &Arc<Fs>, ino: u64, seed: u64, before: Vec<u8>) -> Vec<u8> {
    let len = before.len();
    let want = Arc::new(bytes(seed, len));
    let done = Arc::new(AtomicBool::new(false));
    let observer = {
        let (fs, done, want) = (fs.clone(), done.clone(), want.clone());
        let before = before.clone();
        std::thread::spawn(move || {
            // Every write extends the file or lands inside it, so the size seen never shrinks.
            let mut last = 0u64;
            let mut rounds = 0u32;
            while !done.load(Ordering::Relaxed) || rounds < 3 {
                let size = fs.getattr(ino).unwrap().size;
                assert!(size >= last, "size went back from {last} to {size}");
                last = size;
                match rounds % 4 {
                    0 => fs.flush(ino).unwrap(),
                    1 => {
                        // A read sees each byte either written (the wanted byte) or not yet
                        // (the byte before), never anything else.
                        let at = (size / 2) as usize;
                        let got = fs.read(ino, at as u64, 200_000).unwrap();
                        for (k, &b) in got.iter().enumerate() {
                            let i = at + k;
                            assert!(b == before[i] || b == want[i], "byte {i} is {b}");
                        }
                    }
                    2 if rounds % 8 == 2 => {
                        // An extending truncate to the final length changes no data.
                        set_size(&fs, ino, len as u64);
                    }
                    _ => std::thread::yield_now(),
                }
                rounds += 1;
            }
        })
    };
    let writers: Vec<_> = (0..6u64)
        .map(|t| {
            let (fs, want) = (fs.clone(), want.clone());
            std::thread::spawn(move || {
                if t < 3 {
                    // Disjoint: thread t writes chunks t, t+3, ... of 256 KiB, out of order
                    // (the kernel's background writeback sends them like that).
                    let chunk = 256 << 10;
                    for (k, off) in shuffled_offsets(len, chunk, seed).into_iter().enumerate() {
                        if k % 3 == t as usize {
                            let end = (off + chunk).min(len);
                            fs.write(ino, off as u64, &want[off..end]).unwrap();
                        }
                    }
                } else {
                    // Overlapping: uneven ranges across extent boundaries, written with the
                    // same bytes, so the result is the same whatever the order.
                    let mut x = seed.wrapping_mul(t + 7) | 1;
                    for _ in 0..60 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % len as u64) as usize;
                        let n = ((x >> 32) % 300_000) as usize + 1;
                        let end = (off + n).min(len);
                        fs.write(ino, off as u64, &want[off..end]).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    observer.join().unwrap();
    Arc::try_unwrap(want).unwrap()
}

#[test]
fn concurrent_writes_to_one_file_keep_every_byte() {
    let tp = TestPool::new(3, "rs:2+1", EXTENT);
    let fs = Arc::new(tp.open());
    let len = 6 << 20;
    for (round, name) in ["a", "b", "c"].iter().enumerate() {
        let ino = new_file(&fs, name);
        let want = hammer(&fs, ino, 11 + round as u64, vec![0; len]);
        // Before and after the final flush, and after reopening the pool.
        assert!(
            read_all(&fs, ino) == want,
            "round {round}: buffered read differs"
        );
        fs.release(ino).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().size, len as u64);
        assert!(
            read_all(&fs, ino) == want,
            "round {round}: committed read differs"
        );
    }
    fs.sync().unwrap();
    drop(fs);
    let fs = tp.open();
    for (round, name) in ["a", "b", "c"].iter().enumerate() {
        assert!(
            get_file(&fs, name) == bytes(11 + round as u64, len),
            "round {round}: differs after reopen"
        );
    }
}

#[test]
fn concurrent_overwrite_of_committed_file_and_truncate() {
    let tp = TestPool::new(4, "replicate:2", EXTENT);
    let fs = Arc::new(tp.open());
    let len = 3 << 20;
    // A committed file full of other bytes, then overwritten concurrently in place.
    let ino = new_file(&fs, "f");
    let old = bytes(99, len);
    fs.write(ino, 0, &old).unwrap();
    fs.flush(ino).unwrap();
    let want = hammer(&fs, ino, 5, old);
    assert!(read_all(&fs, ino) == want, "overwrite differs");
    // Shrink to a size inside an extent while data is still buffered, then extend again:
    // the cut-off tail reads as zeros.
    let cut = len / 3 + 1234;
    fs.write(ino, 10, b"late").unwrap();
    set_size(&fs, ino, cut as u64);
    set_size(&fs, ino, len as u64);
    let mut expect = want;
    expect[10..14].copy_from_slice(b"late");
    expect[cut..].fill(0);
    fs.release(ino).unwrap();
    assert!(read_all(&fs, ino) == expect, "truncate then extend differs");
    fs.sync().unwrap();
    drop(fs);
    assert!(get_file(&tp.open(), "f") == expect);
}

/// Truncates or extends `ino` to `size` bytes.
fn set_size(fs: &Fs, ino: u64, size: u64) {
    fs.setattr(
        ino,
        SetAttr {
            size: Some(size),
            ..Default::default()
        },
    )
    .unwrap();
}
