//! The metadata replica count R = M + 1 drops again once no policy of tolerance M is in use:
//! no override on any inode, no extent and no inline file under such a policy, in the live
//! tree or in a snapshot. It drops at the next open, never below what existing data needs.

mod common;

use common::*;
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::{disk, snapshot, Fs};

/// Disk ids whose directory holds a metadata file.
fn files_on(tp: &TestPool) -> usize {
    tp.disks
        .iter()
        .filter(|d| disk::meta_path(d).exists())
        .count()
}

/// Open, check the replica count needed and held, and the files' content.
fn reopen(tp: &TestPool, replicas: usize, files: &[(&[&str], &[u8])]) -> Fs {
    let fs = tp.open();
    assert_eq!(fs.pool().meta_replicas_needed(), replicas);
    assert_eq!(fs.pool().meta.replica_disks().len(), replicas);
    assert_eq!(files_on(tp), replicas);
    for (path, data) in files {
        let mut ino = ROOT_INO;
        for name in path.iter() {
            ino = fs.lookup(ino, name.as_bytes()).unwrap().0;
        }
        assert_eq!(&fs.read(ino, 0, 1 << 20).unwrap(), data, "{path:?}");
    }
    fs
}

#[test]
fn the_replica_count_drops_once_no_policy_needs_it() {
    let tp = TestPool::new(6, "rs:2+1", 16384);
    let big = bytes(1, 70_000);
    let small = bytes(2, 1000);
    {
        let fs = tp.open();
        assert_eq!(fs.pool().meta_replicas_needed(), 2);
        let big_ino = put_file(&fs, "big", &big);
        fs.setxattr(big_ino, b"user.dynfs.policy", b"replicate:5", 0)
            .unwrap();
        let (dir, _) = fs
            .mknod(ROOT_INO, b"dir", Kind::Dir, 0o755, 0, 0, 0, b"")
            .unwrap();
        fs.setxattr(dir, b"user.dynfs.policy", b"replicate:4", 0)
            .unwrap();
        let (f, _) = fs
            .mknod(dir, b"small", Kind::File, 0o644, 0, 0, 0, b"")
            .unwrap();
        fs.open(f).unwrap();
        fs.write(f, 0, &small).unwrap();
        fs.release(f).unwrap();
        fs.sync().unwrap();
        assert_eq!(fs.pool().meta_replicas_needed(), 5);
    }
    let all: &[(&[&str], &[u8])] = &[(&["big"], &big), (&["dir", "small"], &small)];
    // The file's override (and its extents under replicate:5) keep R at 5.
    let fs = reopen(&tp, 5, all);
    let (big_ino, _) = fs.lookup(ROOT_INO, b"big").unwrap();
    fs.removexattr(big_ino, b"user.dynfs.policy").unwrap();
    drop(fs);
    // The override is gone, but its extents are still stored under replicate:5.
    let fs = reopen(&tp, 5, all);
    fs.set_policy(big_ino, None).unwrap();
    fs.sync().unwrap();
    drop(fs);
    // Restriped to rs:2+1; the directory's replicate:4 override remains.
    let fs = reopen(&tp, 4, all);
    let (dir, _) = fs.lookup(ROOT_INO, b"dir").unwrap();
    fs.removexattr(dir, b"user.dynfs.policy").unwrap();
    fs.sync().unwrap();
    drop(fs);
    // The small file was stored (inline, in the metadata) under replicate:4.
    let fs = reopen(&tp, 4, all);
    fs.unlink(dir, b"small").unwrap();
    fs.sync().unwrap();
    drop(fs);
    // Nothing needs more than rs:2+1 any more.
    let fs = reopen(&tp, 2, &[(&["big"], &big)]);
    // Raising it again works as before.
    fs.setxattr(big_ino, b"user.dynfs.policy", b"replicate:3", 0)
        .unwrap();
    assert_eq!(fs.pool().meta.replica_disks().len(), 3);
    drop(fs);
    reopen(&tp, 3, &[(&["big"], &big)]);
}

#[test]
fn a_snapshot_keeps_the_count_its_extents_need() {
    let tp = TestPool::new(5, "replicate:2", 16384);
    let data = bytes(3, 50_000);
    {
        let fs = tp.open();
        let ino = put_file(&fs, "f", &data);
        fs.setxattr(ino, b"user.dynfs.policy", b"replicate:4", 0)
            .unwrap();
        fs.sync().unwrap();
        snapshot::create(fs.pool(), "s").unwrap();
        fs.set_policy(ino, None).unwrap();
        fs.sync().unwrap();
    }
    // The live file is back under replicate:2, the snapshot still holds replicate:4 extents.
    let fs = reopen(&tp, 4, &[(&["f"], &data)]);
    snapshot::delete(fs.pool(), "s").unwrap();
    drop(fs);
    reopen(&tp, 2, &[(&["f"], &data)]);
    // Losing any one disk (the tolerance of replicate:2) still loses nothing.
    for d in &tp.disks {
        let away = d.with_extension("away");
        std::fs::rename(d, &away).unwrap();
        {
            let fs = tp.open();
            assert_eq!(get_file(&fs, "f"), data, "without {}", d.display());
        }
        std::fs::rename(&away, d).unwrap();
    }
}
