//! Inspecting an unmounted pool changes nothing on disk: `dynfs status` opens the pool
//! read-only (no placement, no counter updates, no commit).

mod common;

use common::*;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::{Fs, Pool};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every file under `dirs`: path → (size, mtime in ns, ctime in ns, content hash).
fn snapshot(dirs: &[&Path]) -> BTreeMap<PathBuf, (u64, i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let t = |s: i64, ns: i64| s * 1_000_000_000 + ns;
                let h = std::fs::read(&p).unwrap();
                out.insert(
                    p,
                    (
                        m.len(),
                        t(m.mtime(), m.mtime_nsec()),
                        t(m.ctime(), m.ctime_nsec()),
                        h,
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn status_of_an_unmounted_pool_writes_nothing() {
    let m = Mounted::new(4, "rs:2+1", "64K");
    {
        let fs = Fs::new(Pool::open(&m.pool).unwrap());
        let (ino, _) = fs
            .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, 0, 0, b"")
            .unwrap();
        fs.write(ino, 0, &bytes(1, 300_000)).unwrap();
        fs.flush(ino).unwrap();
        fs.sync().unwrap();
    }
    // An admin command ran and closed the pool; from here on only inspection.
    let mut dirs: Vec<&Path> = m.disks.iter().map(|d| d.as_path()).collect();
    dirs.push(&m.pool);
    let before = snapshot(&dirs);
    assert!(before.len() > 6, "{before:?}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let pool = m.pool.to_str().unwrap();
    let text = run_ok(&["status", pool]);
    assert!(text.contains("rs:2+1"), "{text}");
    run_ok(&["status", "--json", pool]);
    let after = snapshot(&dirs);
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p)
        .chain(after.keys().filter(|p| !before.contains_key(*p)))
        .collect();
    assert!(changed.is_empty(), "status changed {changed:?}");
}
