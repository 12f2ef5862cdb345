//! Shared helpers for the integration tests: generated trees and exact comparison.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sets an mtime with nanoseconds.
/// Sets an mtime with nanoseconds.
pub fn set_mtime(p: &Path, secs: i64, nsec: u32) {
    arsync_testutil::set_mtime(p, secs, nsec).unwrap();
}

/// Builds a tree with files of several sizes, nested dirs, symlinks, odd
/// modes and a large file. Returns the large file's path.
pub fn make_tree(root: &Path, large: usize) -> PathBuf {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("z.dir")).unwrap();
    fs::write(root.join("small.txt"), b"hello world\n").unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("a/one.bin"), bytes(1, 1000)).unwrap();
    fs::write(root.join("a/b/two.bin"), bytes(2, 70_000)).unwrap();
    fs::write(root.join("a/b/c/three"), bytes(3, 33_000)).unwrap();
    fs::write(root.join("z.dir/file"), b"z").unwrap();
    let long = "n".repeat(200);
    fs::write(root.join("a").join(&long), b"long name").unwrap();
    fs::set_permissions(root.join("a/one.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("small.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("small.txt", root.join("link")).unwrap();
    symlink("../../small.txt", root.join("a/b/uplink")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let big = root.join("big.dat");
    fs::write(&big, bytes(4, large)).unwrap();
    for (i, p) in [
        "small.txt",
        "zero",
        "a/one.bin",
        "a/b/two.bin",
        "a/b/c/three",
        "z.dir/file",
        "big.dat",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(
            &root.join(p),
            1_600_000_000 + i as i64 * 1000,
            123_456_789 * (i as u32 % 2),
        );
    }
    fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o750)).unwrap();
    big
}

/// Compares two trees: types, content, permissions, mtimes (files, dirs and
/// symlinks), symlink targets. Nanoseconds are compared when `nsec` (protocol >= 31).
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_tree_ns(a, b, true, true)
}

/// [`assert_same_tree`] with a choice about nanoseconds of files and of
/// directories (real rsync, as a receiver, leaves a directory's nanoseconds
/// alone when the seconds already match).
pub fn assert_same_tree_ns(a: &Path, b: &Path, nsec: bool, dir_nsec: bool) {
    let mut la = list(a);
    let mut lb = list(b);
    la.sort();
    lb.sort();
    assert_eq!(la, lb, "entry lists differ");
    for rel in &la {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?} type");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "{rel:?} target"
            );
            assert_eq!(ma.mtime(), mb.mtime(), "{rel:?} symlink mtime");
            continue;
        }
        assert_eq!(ma.mode(), mb.mode(), "{rel:?} mode");
        assert_eq!(ma.mtime(), mb.mtime(), "{rel:?} mtime");
        if nsec && (dir_nsec || !ma.is_dir()) {
            assert_eq!(ma.mtime_nsec(), mb.mtime_nsec(), "{rel:?} mtime nsec");
        }
        if ma.is_file() {
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "{rel:?} content"
            );
        }
    }
}

fn list(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out
}

/// Changes ~1% of a file in place at scattered spots, keeping its size.
pub fn touch_up_one_percent(p: &Path) {
    let mut d = fs::read(p).unwrap();
    let n = d.len();
    let spots = 10;
    let span = n / 100 / spots;
    for s in 0..spots {
        let off = (n / spots) * s + 17;
        for b in &mut d[off..off + span] {
            *b = b.wrapping_add(1);
        }
    }
    fs::write(p, &d).unwrap();
    set_mtime(p, 1_700_000_000, 0);
}
