//! Shared helpers for engine tests.
#![allow(dead_code)]

use dynfs_core::io::DiskIo;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::{Fs, InitOptions, Policy, Pool};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A pool in a temporary directory (on /dev/shm when available).
pub struct TestPool {
    pub root: tempfile::TempDir,
    pub pool: PathBuf,
    pub disks: Vec<PathBuf>,
}

pub fn tempdir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

impl TestPool {
    pub fn new(ndisks: usize, policy: &str, extent_size: u64) -> Self {
        let root = tempdir();
        let disks: Vec<PathBuf> = (0..ndisks)
            .map(|i| {
                let d = root.path().join(format!("disk{i}"));
                std::fs::create_dir(&d).unwrap();
                d
            })
            .collect();
        let pool = root.path().join("pool");
        Pool::init(
            &pool,
            &InitOptions {
                disks: disks.clone(),
                policy: policy.parse().unwrap(),
                extent_size,
            },
        )
        .unwrap();
        TestPool { root, pool, disks }
    }

    pub fn open(&self) -> Fs {
        Fs::new(Pool::open(&self.pool).unwrap())
    }

    pub fn open_with(&self, io: Arc<dyn DiskIo>) -> Fs {
        Fs::new(Pool::open_with(&self.pool, io).unwrap())
    }

    /// All fragment files on all disks.
    pub fn fragment_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in &self.disks {
            let data = d.join("data");
            let Ok(rd) = std::fs::read_dir(&data) else {
                continue;
            };
            for sub in rd {
                for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                    v.push(f.unwrap().path());
                }
            }
        }
        v.sort();
        v
    }
}

pub fn policy(s: &str) -> Policy {
    s.parse().unwrap()
}

/// Create a file with `data` under the root and flush it.
pub fn put_file(fs: &Fs, name: &str, data: &[u8]) -> u64 {
    let (ino, _) = fs
        .mknod(ROOT_INO, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.open(ino).unwrap();
    // Write in uneven chunks to exercise partial-extent buffering.
    let mut off = 0;
    let mut step = 777;
    while off < data.len() {
        let n = step.min(data.len() - off);
        fs.write(ino, off as u64, &data[off..off + n]).unwrap();
        off += n;
        step = step * 3 % 100_003 + 1;
    }
    fs.release(ino).unwrap();
    ino
}

pub fn get_file(fs: &Fs, name: &str) -> Vec<u8> {
    let (ino, attr) = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off < attr.size {
        let chunk = fs.read(ino, off, 65536).unwrap();
        assert!(!chunk.is_empty(), "short read at {off}");
        off += chunk.len() as u64;
        out.extend(chunk);
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
