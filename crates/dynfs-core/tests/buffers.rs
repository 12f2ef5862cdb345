//! Write buffer memory: the extent buffers of all open files together stay within the pool's
//! `write_buffer_mib` budget, and every byte still reads back.

mod common;

use common::*;
use dynfs_core::config::PoolConfig;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::Fs;
use std::sync::Arc;

const ES: u64 = 64 << 10;

/// A pool of 64 KiB extents whose write buffer budget is `mib` MiB.
fn pool_with_budget(policy: &str, mib: u64) -> TestPool {
    let tp = TestPool::new(4, policy, ES);
    let mut c = PoolConfig::load(&tp.pool).unwrap();
    c.write_buffer_mib = mib;
    c.store(&tp.pool).unwrap();
    tp
}

fn new_file(fs: &Fs, name: &str) -> u64 {
    let (ino, _) = fs
        .mknod(ROOT_INO, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.open(ino).unwrap();
    ino
}

/// Write `files` files of `per_file` bytes each, round-robin in 16 KiB chunks, all open at
/// once; returns the largest buffered byte count seen after a write, and checks the content
/// before and after closing and after reopening the pool.
fn many_open_writers(tp: &TestPool, files: usize, per_file: usize) -> usize {
    let fs = tp.open();
    let inos: Vec<u64> = (0..files)
        .map(|f| new_file(&fs, &format!("f{f}")))
        .collect();
    let data: Vec<Vec<u8>> = (0..files).map(|f| bytes(f as u64 + 1, per_file)).collect();
    let mut peak = 0;
    for off in (0..per_file).step_by(16 << 10) {
        for (f, &ino) in inos.iter().enumerate() {
            let end = (off + (16 << 10)).min(per_file);
            fs.write(ino, off as u64, &data[f][off..end]).unwrap();
            peak = peak.max(fs.buffered_bytes());
        }
    }
    for (f, &ino) in inos.iter().enumerate() {
        assert_eq!(
            fs.read(ino, 0, per_file + 1).unwrap(),
            data[f],
            "file {f} while open"
        );
    }
    for &ino in &inos {
        fs.release(ino).unwrap();
    }
    assert_eq!(
        fs.buffered_bytes(),
        0,
        "buffers left after every file closed"
    );
    drop(fs);
    let fs = tp.open();
    for (f, d) in data.iter().enumerate() {
        assert_eq!(
            &get_file(&fs, &format!("f{f}")),
            d,
            "file {f} after reopening"
        );
    }
    peak
}

#[test]
fn many_files_written_at_once_stay_within_the_budget() {
    // 40 files of 256 KiB (4 extents each) written round-robin: 10 MiB in all, with every
    // file's buffer under its own limit (8 extents), so only the pool-wide budget bounds it.
    let tp = pool_with_budget("rs:2+1", 1);
    let peak = many_open_writers(&tp, 40, 256 << 10);
    // At most the budget plus what one write adds before its writer flushes (a 16 KiB write
    // can start a new 64 KiB buffer).
    assert!(peak <= (1 << 20) + ES as usize, "peak {peak} over budget");
    // The same workload under a budget it never reaches holds far more: the bound above is
    // the budget's doing.
    let tp = pool_with_budget("rs:2+1", 64);
    let peak = many_open_writers(&tp, 40, 256 << 10);
    assert!(peak > 4 << 20, "peak {peak} without a binding budget");
}

#[test]
fn concurrent_writers_stay_within_the_budget() {
    let tp = pool_with_budget("replicate:2", 1);
    let fs = Arc::new(tp.open());
    let threads = 6;
    let per_file = 512 << 10;
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (fs, peak) = (fs.clone(), peak.clone());
            std::thread::spawn(move || {
                let mut inos = Vec::new();
                for f in 0..4 {
                    inos.push(new_file(&fs, &format!("t{t}-{f}")));
                }
                for off in (0..per_file).step_by(32 << 10) {
                    for (f, &ino) in inos.iter().enumerate() {
                        let d = bytes((t * 10 + f) as u64, per_file);
                        fs.write(ino, off as u64, &d[off..off + (32 << 10)])
                            .unwrap();
                        peak.fetch_max(fs.buffered_bytes(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
                for ino in inos {
                    fs.release(ino).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    // Each thread may be one write past the budget before it flushes.
    assert!(
        peak <= (1 << 20) + threads * ES as usize,
        "peak {peak} over budget"
    );
    assert_eq!(fs.buffered_bytes(), 0);
    assert!(
        fs.spare_bytes() <= (1 << 20) / 4,
        "spare {}",
        fs.spare_bytes()
    );
    for t in 0..threads {
        for f in 0..4 {
            let want = bytes((t * 10 + f) as u64, per_file);
            assert_eq!(get_file(&fs, &format!("t{t}-{f}")), want, "t{t}-{f}");
        }
    }
}

#[test]
fn a_sequential_writer_pipelines_within_a_small_budget() {
    // A budget of 4 extents: a file's buffer is written out every 2 extents (one batch
    // filling, one being written), and the data is intact.
    let tp = pool_with_budget("rs:2+1", 1);
    let mut c = PoolConfig::load(&tp.pool).unwrap();
    c.extent_size = 256 << 10;
    // Changing the extent size is only valid on an empty pool (this one is).
    c.store(&tp.pool).unwrap();
    let fs = tp.open();
    let ino = new_file(&fs, "seq");
    let data = bytes(9, 5 << 20);
    let mut peak = 0;
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        fs.write(ino, (i * (128 << 10)) as u64, chunk).unwrap();
        peak = peak.max(fs.buffered_bytes());
    }
    assert!(peak <= (1 << 20) + (256 << 10), "peak {peak}");
    fs.release(ino).unwrap();
    assert_eq!(get_file(&fs, "seq"), data);
}

#[test]
fn small_files_cost_their_size_not_an_extent() {
    // 4 MiB extents (the `dynfs init` default): a file stores its own length, not a whole
    // extent, and a file of at most 4 KiB stores no fragment at all (inline).
    let tp = TestPool::new(6, "rs:4+2", dynfs_core::config::DEFAULT_EXTENT_SIZE);
    let fs = tp.open();
    put_file(&fs, "tiny", &bytes(1, 4096));
    assert!(tp.fragment_files().is_empty());
    let data = bytes(2, 10_000);
    put_file(&fs, "small", &data);
    let frags = tp.fragment_files();
    assert_eq!(frags.len(), 6);
    let stored: u64 = frags
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    // Six fragments of ceil(10000 / 4) bytes.
    assert_eq!(stored, 6 * 2500);
    // The file is read back from them, and its memory was given back.
    assert_eq!(get_file(&fs, "small"), data);
    assert_eq!(fs.buffered_bytes(), 0);
}
