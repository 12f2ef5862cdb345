//! Engine tests: init validation, policies, reconstruction, metadata replicas, gc, scrub,
//! drain/rebuild, snapshots, POSIX operations.

mod common;

use common::*;
use dynfs_core::disk::{self, DiskIdentity};
use dynfs_core::fs::{SetAttr, RENAME_EXCHANGE, RENAME_NOREPLACE};
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::scrub::{self, ScrubOptions};
use dynfs_core::{snapshot, Error, Health, InitOptions, Pool};

#[test]
fn init_rejects_bad_arguments_and_changes_nothing() {
    let root = tempdir();
    let d: Vec<_> = (0..3)
        .map(|i| {
            let p = root.path().join(format!("d{i}"));
            std::fs::create_dir(&p).unwrap();
            p
        })
        .collect();
    let pool = root.path().join("pool");
    // Too few disks for the policy, plus a missing directory: both reported.
    let err = Pool::init(
        &pool,
        &InitOptions {
            disks: vec![d[0].clone(), root.path().join("nope")],
            policy: policy("rs:2+1"),
            extent_size: 65536,
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("needs at least 3 disks"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    assert!(!pool.exists());
    assert!(DiskIdentity::load(&d[0]).unwrap().is_none());
    // Bad extent size.
    assert!(Pool::init(
        &pool,
        &InitOptions {
            disks: d.clone(),
            policy: policy("rs:2+1"),
            extent_size: 1000
        }
    )
    .is_err());
    // A good init, then reusing a disk in another pool fails.
    Pool::init(
        &pool,
        &InitOptions {
            disks: d.clone(),
            policy: policy("rs:2+1"),
            extent_size: 65536,
        },
    )
    .unwrap();
    let other = root.path().join("pool2");
    let err = Pool::init(
        &other,
        &InitOptions {
            disks: d.clone(),
            policy: policy("replicate:2"),
            extent_size: 65536,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("already belongs to pool"), "{err}");
    assert!(!other.exists());
    // Re-init of the same pool dir fails.
    assert!(Pool::init(
        &pool,
        &InitOptions {
            disks: d,
            policy: policy("rs:2+1"),
            extent_size: 65536
        }
    )
    .is_err());
}

#[test]
fn pool_lock_prevents_double_open() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let _a = Pool::open(&tp.pool).unwrap();
    let err = Pool::open(&tp.pool).err().expect("second open must fail");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn roundtrip_each_policy_and_fragment_placement() {
    for (n, p) in [
        (2, "replicate:2"),
        (3, "replicate:3"),
        (3, "rs:2+1"),
        (6, "rs:4+2"),
    ] {
        let tp = TestPool::new(n, p, 65536);
        let data = bytes(n as u64, 300_000);
        {
            let fs = tp.open();
            put_file(&fs, "f", &data);
            assert_eq!(get_file(&fs, "f"), data);
        }
        let fs = tp.open();
        assert_eq!(get_file(&fs, "f"), data, "{p}");
        // Every extent's fragments are on distinct disks.
        let tx = fs.pool().meta.read().unwrap();
        let t = tx.open_table(dynfs_core::meta::EXTENTS).unwrap();
        use redb::ReadableTable;
        let mut count = 0;
        for row in t.iter().unwrap() {
            let e: dynfs_core::meta::Extent =
                dynfs_core::meta::dec(row.unwrap().1.value()).unwrap();
            let mut ds: Vec<u32> = e.frags.iter().map(|f| f.disk).collect();
            ds.sort();
            ds.dedup();
            assert_eq!(ds.len(), e.policy.width());
            count += 1;
        }
        assert_eq!(count, 5, "{p}: 300000 bytes / 64KiB extents");
    }
}

#[test]
fn sparse_files_cost_nothing_and_seek_finds_data() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let fs = tp.open();
    let (ino, _) = fs
        .mknod(ROOT_INO, b"sparse", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.open(ino).unwrap();
    fs.write(ino, 10 * 65536 + 5, b"hello").unwrap();
    fs.release(ino).unwrap();
    let a = fs.getattr(ino).unwrap();
    assert_eq!(a.size, 10 * 65536 + 10);
    assert_eq!(a.alloc, 10, "one short extent stored");
    assert_eq!(fs.seek(ino, 0, libc::SEEK_DATA).unwrap(), 10 * 65536);
    assert_eq!(fs.seek(ino, 0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        fs.seek(ino, 10 * 65536 + 1, libc::SEEK_HOLE).unwrap(),
        a.size
    );
    assert!(matches!(
        fs.seek(ino, a.size, libc::SEEK_DATA),
        Err(Error::Errno(libc::ENXIO))
    ));
    let r = fs.read(ino, 0, 100).unwrap();
    assert_eq!(r, vec![0u8; 100]);
    assert_eq!(fs.read(ino, 10 * 65536 + 5, 100).unwrap(), b"hello");
    // Zero writes do not allocate either.
    let (z, _) = fs
        .mknod(ROOT_INO, b"zeros", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.write(z, 0, &vec![0u8; 200_000]).unwrap();
    fs.flush(z).unwrap();
    assert_eq!(fs.getattr(z).unwrap().alloc, 0);
    assert_eq!(fs.getattr(z).unwrap().size, 200_000);
    // Punch a hole in real data.
    let (p, _) = fs
        .mknod(ROOT_INO, b"punch", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    let d = bytes(9, 4 * 65536);
    fs.write(p, 0, &d).unwrap();
    fs.fallocate(
        p,
        65536 + 100,
        2 * 65536,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    fs.flush(p).unwrap();
    let got = fs.read(p, 0, 4 * 65536).unwrap();
    let mut want = d.clone();
    want[65536 + 100..3 * 65536 + 100].fill(0);
    assert_eq!(got, want);
    assert_eq!(fs.seek(p, 0, libc::SEEK_HOLE).unwrap(), 2 * 65536);
    // fallocate mode 0 extends the size.
    fs.fallocate(p, 0, 10 * 65536, 0).unwrap();
    assert_eq!(fs.getattr(p).unwrap().size, 10 * 65536);
}

#[test]
fn truncate_shrinks_then_extends_with_zeros() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let d = bytes(3, 200_000);
    let ino = put_file(&fs, "t", &d);
    fs.setattr(
        ino,
        SetAttr {
            size: Some(70_000),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get_file(&fs, "t"), d[..70_000].to_vec());
    fs.setattr(
        ino,
        SetAttr {
            size: Some(150_000),
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = d[..70_000].to_vec();
    want.resize(150_000, 0);
    assert_eq!(get_file(&fs, "t"), want);
    fs.setattr(
        ino,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().alloc, 0);
    // Extents were freed: only none remain on disk.
    drop(fs);
    assert!(tp.fragment_files().is_empty());
}

#[test]
fn namespace_operations() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let (dir, _) = fs
        .mknod(ROOT_INO, b"dir", Kind::Dir, 0o755, 0, 0, 0, b"")
        .unwrap();
    let (sub, _) = fs
        .mknod(dir, b"sub", Kind::Dir, 0o755, 0, 0, 0, b"")
        .unwrap();
    assert_eq!(fs.getattr(dir).unwrap().nlink, 3);
    let a = put_file(&fs, "a", b"AAAA");
    let b = put_file(&fs, "b", b"BBBB");
    assert!(matches!(
        fs.mknod(ROOT_INO, b"a", Kind::File, 0o644, 0, 0, 0, b""),
        Err(Error::Errno(libc::EEXIST))
    ));
    // Hard link.
    fs.link(a, dir, b"a2").unwrap();
    assert_eq!(fs.getattr(a).unwrap().nlink, 2);
    // NOREPLACE refuses, EXCHANGE swaps.
    assert!(matches!(
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE),
        Err(Error::Errno(libc::EEXIST))
    ));
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(get_file(&fs, "a"), b"BBBB");
    assert_eq!(get_file(&fs, "b"), b"AAAA");
    // Plain rename over an existing file drops the target.
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(get_file(&fs, "b"), b"BBBB");
    assert!(fs.getattr(b).is_ok());
    assert!(matches!(
        fs.lookup(ROOT_INO, b"a"),
        Err(Error::Errno(libc::ENOENT))
    ));
    // a is still reachable through dir/a2.
    assert_eq!(fs.lookup(dir, b"a2").unwrap().0, a);
    // Directory into its own subtree is refused; rmdir non-empty refused.
    assert!(matches!(
        fs.rename(ROOT_INO, b"dir", sub, b"x", 0),
        Err(Error::Errno(libc::EINVAL))
    ));
    assert!(matches!(
        fs.rmdir(ROOT_INO, b"dir"),
        Err(Error::Errno(libc::ENOTEMPTY))
    ));
    // Move sub to the root: link counts follow.
    fs.rename(dir, b"sub", ROOT_INO, b"sub", 0).unwrap();
    assert_eq!(fs.getattr(dir).unwrap().nlink, 2);
    assert_eq!(fs.getattr(sub).unwrap().parent, ROOT_INO);
    // Symlink, FIFO, device.
    let (l, _) = fs
        .mknod(
            ROOT_INO,
            b"link",
            Kind::Symlink,
            0o777,
            0,
            0,
            0,
            b"target/path",
        )
        .unwrap();
    assert_eq!(fs.readlink(l).unwrap(), b"target/path");
    fs.mknod(ROOT_INO, b"fifo", Kind::Fifo, 0o600, 0, 0, 0, b"")
        .unwrap();
    let (c, _) = fs
        .mknod(ROOT_INO, b"chr", Kind::CharDev, 0o600, 0, 0, 0x0103, b"")
        .unwrap();
    assert_eq!(fs.getattr(c).unwrap().rdev, 0x0103);
    // readdir pages through everything.
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let page = fs.readdir(ROOT_INO, off, 3).unwrap();
        if page.is_empty() {
            break;
        }
        off = page.last().unwrap().next;
        names.extend(page.into_iter().map(|e| String::from_utf8(e.name).unwrap()));
    }
    names.sort();
    assert_eq!(names, [".", "..", "b", "chr", "dir", "fifo", "link", "sub"]);
    // Unlink while open: data stays readable until release.
    fs.open(b).unwrap();
    fs.unlink(ROOT_INO, b"b").unwrap();
    assert_eq!(fs.read(b, 0, 10).unwrap(), b"BBBB");
    fs.release(b).unwrap();
    assert!(fs.getattr(b).is_err());
    // xattrs.
    fs.setxattr(l, b"user.k", b"v", 0).unwrap();
    assert!(matches!(
        fs.setxattr(l, b"user.k", b"v", libc::XATTR_CREATE),
        Err(Error::Errno(libc::EEXIST))
    ));
    assert_eq!(fs.getxattr(l, b"user.k").unwrap(), b"v");
    assert_eq!(fs.listxattr(l).unwrap(), vec![b"user.k".to_vec()]);
    fs.removexattr(l, b"user.k").unwrap();
    assert!(matches!(
        fs.getxattr(l, b"user.k"),
        Err(Error::Errno(libc::ENODATA))
    ));
}

#[test]
fn policy_xattr_restripes_without_losing_copies() {
    let tp = TestPool::new(4, "replicate:2", 65536);
    let fs = tp.open();
    let d = bytes(5, 250_000);
    let ino = put_file(&fs, "f", &d);
    fs.setxattr(ino, b"user.dynfs.policy", b"rs:2+1", 0)
        .unwrap();
    assert_eq!(fs.getxattr(ino, b"user.dynfs.policy").unwrap(), b"rs:2+1");
    assert_eq!(get_file(&fs, "f"), d);
    let st = dynfs_core::status::Status::gather(fs.pool()).unwrap();
    assert_eq!(st.policies.get("rs:2+1"), Some(&4));
    assert_eq!(st.policies.get("replicate:2"), None);
    // Old fragments are gone: 4 extents x 3 fragments.
    drop(st);
    assert_eq!(tp.fragment_files().len(), 12);
    // Impossible policy refused.
    assert!(fs
        .setxattr(ino, b"user.dynfs.policy", b"rs:4+2", 0)
        .is_err());
    assert!(fs.setxattr(ino, b"user.dynfs.policy", b"junk", 0).is_err());
    // A directory's policy is inherited by new files.
    let (dir, _) = fs
        .mknod(ROOT_INO, b"d", Kind::Dir, 0o755, 0, 0, 0, b"")
        .unwrap();
    fs.setxattr(dir, b"user.dynfs.policy", b"replicate:3", 0)
        .unwrap();
    let (f2, _) = fs
        .mknod(dir, b"x", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    assert_eq!(
        fs.getxattr(f2, b"user.dynfs.policy").unwrap(),
        b"replicate:3"
    );
}

#[test]
fn metadata_survives_lost_and_stale_replicas() {
    // rs:2+1 tolerates one lost disk: metadata replicas on two of the three disks (ids 1, 2).
    let tp = TestPool::new(3, "rs:2+1", 65536);
    {
        let fs = tp.open();
        put_file(&fs, "one", b"first");
        assert_eq!(fs.pool().meta.replica_disks(), vec![1, 2]);
    }
    assert!(!disk::meta_path(&tp.disks[2]).exists());
    // Keep a stale copy of disk0's replica.
    let stale = tp.root.path().join("stale.redb");
    std::fs::copy(disk::meta_path(&tp.disks[0]), &stale).unwrap();
    {
        let fs = tp.open();
        put_file(&fs, "two", b"second");
    }
    // Disk 0 gets the stale replica back: the other replica's newer generation wins.
    std::fs::copy(&stale, disk::meta_path(&tp.disks[0])).unwrap();
    {
        let fs = tp.open();
        assert_eq!(get_file(&fs, "two"), b"second");
        assert_eq!(fs.pool().open_report.resynced, vec![1]);
    }
    // Disk 1's replica is destroyed: disk 0's alone holds everything and is copied back.
    std::fs::write(disk::meta_path(&tp.disks[1]), b"garbage").unwrap();
    {
        let fs = tp.open();
        assert_eq!(get_file(&fs, "two"), b"second");
        assert_eq!(fs.pool().open_report.resynced, vec![2]);
    }
    // After resync, each replica alone is enough.
    for i in 0..2 {
        let other = disk::meta_path(&tp.disks[1 - i]);
        std::fs::rename(&other, other.with_extension("hide")).unwrap();
        let fs = tp.open();
        assert_eq!(get_file(&fs, "one"), b"first");
        assert_eq!(fs.pool().open_report.source_disk, i as u32 + 1);
        drop(fs);
        std::fs::rename(other.with_extension("hide"), &other).unwrap();
    }
}

#[test]
fn gc_removes_orphans_from_a_crash_before_commit() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    {
        let fs = tp.open();
        put_file(&fs, "keep", &bytes(1, 100_000));
    }
    let before = tp.fragment_files();
    {
        // Fragments written but never committed (crash between the two steps).
        let pool = Pool::open(&tp.pool).unwrap();
        pool.write_extent(policy("rs:2+1"), &bytes(2, 50_000))
            .unwrap();
        std::fs::write(
            tp.disks[0].join("data/00/0000000000000999.0.tmp"),
            b"partial",
        )
        .unwrap();
        std::mem::forget(pool.write_extent(policy("rs:2+1"), b"x").unwrap());
    }
    assert_eq!(tp.fragment_files().len(), before.len() + 7);
    let pool = Pool::open_no_gc(&tp.pool, std::sync::Arc::new(dynfs_core::io::StdIo)).unwrap();
    let r = pool.gc().unwrap();
    assert_eq!(r.fragments, 7);
    assert_eq!(tp.fragment_files(), before);
    assert_eq!(pool.gc().unwrap().fragments, 0);
    drop(pool);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "keep"), bytes(1, 100_000));
}

#[test]
fn scrub_detects_repairs_and_resumes() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let data = bytes(11, 400_000);
    {
        let fs = tp.open();
        put_file(&fs, "f", &data);
    }
    let frags = tp.fragment_files();
    assert_eq!(frags.len(), 7 * 3);
    {
        let pool = Pool::open(&tp.pool).unwrap();
        let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
        assert!(r.clean());
        assert_eq!(r.extents, 7);
    }
    // Corrupt one fragment, delete another (different extents).
    let mut b = std::fs::read(&frags[0]).unwrap();
    b[10] ^= 1;
    std::fs::write(&frags[0], b).unwrap();
    std::fs::remove_file(&frags[5]).unwrap();
    let pool = Pool::open(&tp.pool).unwrap();
    // Partial run (checkpoint), then resume.
    let part = scrub::scrub(
        &pool,
        ScrubOptions {
            max_extents: Some(3),
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(part.extents, 3);
    assert!(scrub::scrub_checkpoint(&pool).unwrap().is_some());
    let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(r.extents, 7);
    assert!(r.resumed_from > 0);
    let bad: u64 = r.disks.values().map(|d| d.bad).sum();
    assert_eq!(bad, 2);
    assert!(!r.clean());
    let r = scrub::scrub(
        &pool,
        ScrubOptions {
            repair: true,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(r.clean(), "{r:?}");
    let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
    assert!(r.clean());
    assert_eq!(r.disks.values().map(|d| d.bad).sum::<u64>(), 0);
    drop(pool);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "f"), data);
}

#[test]
fn drain_moves_everything_and_disk_can_be_removed() {
    let tp = TestPool::new(4, "rs:2+1", 65536);
    let data = bytes(12, 500_000);
    {
        let fs = tp.open();
        put_file(&fs, "f", &data);
    }
    let pool = Pool::open(&tp.pool).unwrap();
    assert!(
        pool.remove_disk(1).is_err(),
        "disk with fragments cannot be removed"
    );
    let r = scrub::drain(&pool, 1, &mut |_, _| {}).unwrap();
    assert_eq!(r.failed, 0);
    assert_eq!(pool.fragments_on(1).unwrap(), 0);
    pool.remove_disk(1).unwrap();
    assert_eq!(pool.disks().len(), 3);
    drop(pool);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "f"), data);
    assert!(DiskIdentity::load(&tp.disks[0]).unwrap().is_none());
}

#[test]
fn failed_disk_is_rebuilt_and_new_disk_added() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let data = bytes(13, 300_000);
    {
        let fs = tp.open();
        put_file(&fs, "f", &data);
    }
    std::fs::remove_dir_all(&tp.disks[2]).unwrap();
    let extra = tp.root.path().join("disk-new");
    std::fs::create_dir(&extra).unwrap();
    {
        let pool = Pool::open(&tp.pool).unwrap();
        let st = dynfs_core::status::Status::gather(&pool).unwrap();
        assert_eq!(st.degraded_extents, 5);
        assert_eq!(st.disks[2].health, "missing");
        pool.set_health(3, Health::Failed).unwrap();
        let id = pool.add_disk(&extra).unwrap();
        assert_eq!(id, 4);
        let r = scrub::rebuild(&pool, None, &mut |_, _| {}).unwrap();
        assert_eq!((r.rebuilt, r.failed), (5, 0));
        let st = dynfs_core::status::Status::gather(&pool).unwrap();
        assert_eq!(st.degraded_extents, 0);
    }
    // Now lose another disk: still readable.
    std::fs::remove_dir_all(&tp.disks[0]).unwrap();
    let fs = tp.open();
    assert_eq!(get_file(&fs, "f"), data);
}

#[test]
fn repeated_errors_mark_disk_suspect_then_failed() {
    use dynfs_core::io::{Fault, FaultKind, FaultOp, FaultyIo};
    let tp = TestPool::new(3, "replicate:2", 65536);
    let io = std::sync::Arc::new(FaultyIo::new());
    io.add(Fault {
        op: FaultOp::Write,
        path_contains: Some(tp.disks[0].to_string_lossy().into_owned()),
        nth: 1,
        repeat: true,
        kind: FaultKind::Eio,
    });
    let fs = tp.open_with(io.clone());
    for i in 0..12 {
        let d = bytes(i, 70_000);
        put_file(&fs, &format!("f{i}"), &d);
        assert_eq!(get_file(&fs, &format!("f{i}")), d);
    }
    let h = fs.pool().disks()[0].health();
    assert!(matches!(h, Health::Suspect | Health::Failed), "{h}");
    drop(fs);
    assert_eq!(DiskIdentity::load(&tp.disks[0]).unwrap().unwrap().health, h);
}

#[test]
fn snapshots_are_copy_on_write() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let v1 = bytes(21, 200_000);
    let v2 = bytes(22, 150_000);
    let fs = tp.open();
    let ino = put_file(&fs, "f", &v1);
    let frags_before = tp.fragment_files().len();
    snapshot::create(fs.pool(), "s1").unwrap();
    assert_eq!(
        tp.fragment_files().len(),
        frags_before,
        "snapshot copies no data"
    );
    assert!(snapshot::create(fs.pool(), "s1").is_err());
    fs.setattr(
        ino,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    fs.open(ino).unwrap();
    fs.write(ino, 0, &v2).unwrap();
    fs.release(ino).unwrap();
    put_file(&fs, "new", b"after");
    assert_eq!(get_file(&fs, "f"), v2);
    let pool = fs.pool().clone();
    drop(fs);
    snapshot::restore(&pool, "s1").unwrap();
    let fs = dynfs_core::Fs::from_arc(pool);
    assert_eq!(get_file(&fs, "f"), v1);
    assert!(fs.lookup(ROOT_INO, b"new").is_err());
    assert_eq!(snapshot::list(fs.pool()).unwrap().len(), 1);
    snapshot::delete(fs.pool(), "s1").unwrap();
    assert!(snapshot::list(fs.pool()).unwrap().is_empty());
    assert_eq!(get_file(&fs, "f"), v1);
    assert_eq!(tp.fragment_files().len(), frags_before);
    assert!(snapshot::delete(fs.pool(), "s1").is_err());
}

#[test]
fn access_acl_keeps_mode_in_sync() {
    use dynfs_core::fs::{acl_to_mode, ACL_ACCESS_XATTR};
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let ino = put_file(&fs, "f", b"x");
    let entry = |tag: u16, perm: u16, id: u32| {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
        v
    };
    let mut minimal = 2u32.to_le_bytes().to_vec();
    minimal.extend(entry(0x01, 6, u32::MAX));
    minimal.extend(entry(0x04, 4, u32::MAX));
    minimal.extend(entry(0x20, 0, u32::MAX));
    assert_eq!(acl_to_mode(&minimal).unwrap(), (0o640, true));
    fs.setxattr(ino, ACL_ACCESS_XATTR, &minimal, 0).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().perm & 0o777, 0o640);
    assert!(
        fs.getxattr(ino, ACL_ACCESS_XATTR).is_err(),
        "minimal ACL is not stored"
    );
    let mut ext = 2u32.to_le_bytes().to_vec();
    ext.extend(entry(0x01, 7, u32::MAX));
    ext.extend(entry(0x02, 4, 1234));
    ext.extend(entry(0x04, 4, u32::MAX));
    ext.extend(entry(0x10, 5, u32::MAX));
    ext.extend(entry(0x20, 1, u32::MAX));
    fs.setxattr(ino, ACL_ACCESS_XATTR, &ext, 0).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().perm & 0o777, 0o751);
    // chmod rewrites the mask entry.
    fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o700),
            ..Default::default()
        },
    )
    .unwrap();
    let acl = fs.getxattr(ino, ACL_ACCESS_XATTR).unwrap();
    assert_eq!(acl_to_mode(&acl).unwrap(), (0o700, false));
    assert!(fs.setxattr(ino, ACL_ACCESS_XATTR, b"bad", 0).is_err());
}

#[test]
fn group_committed_changes_reach_every_replica_with_identical_times() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let data = bytes(7, 100_000);
    let (primary, mtime, ctime, root, gen) = {
        let fs = tp.open();
        let ino = put_file(&fs, "f", &data);
        // Lazy changes, made a little apart so that re-reading the clock would differ.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs.mknod(ROOT_INO, b"d", Kind::Dir, 0o755, 0, 0, 0, b"")
            .unwrap();
        fs.sync().unwrap();
        let i = fs.getattr(ino).unwrap();
        let primary = fs.pool().meta.replica_disks()[0];
        let r = fs.getattr(ROOT_INO).unwrap();
        let gen = fs.pool().meta.generation().unwrap();
        (primary, i.mtime, i.ctime, (r.mtime, r.ctime), gen)
    };
    // Lose the primary's replica: the secondaries alone must hold every change, identically.
    let pdir = tp
        .disks
        .iter()
        .find(|d| {
            DiskIdentity::load(d)
                .ok()
                .flatten()
                .is_some_and(|id| id.disk_id == primary)
        })
        .unwrap();
    std::fs::remove_file(disk::meta_path(pdir)).unwrap();
    let fs = tp.open();
    assert_eq!(fs.pool().meta.generation().unwrap(), gen);
    assert_eq!(get_file(&fs, "f"), data);
    let (ino, i) = fs.lookup(ROOT_INO, b"f").unwrap();
    assert_eq!((i.mtime, i.ctime), (mtime, ctime), "inode {ino}");
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().1.kind, Kind::Dir);
    let r = fs.getattr(ROOT_INO).unwrap();
    assert_eq!((r.mtime, r.ctime), root);
}

#[test]
fn attribute_changes_on_a_written_file_commit_with_its_data() {
    use dynfs_core::meta::Ts;
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let data = bytes(11, 5000);
    let when = Ts {
        secs: 1_000_000,
        nanos: 7,
    };
    {
        let fs = tp.open();
        let (ino, _) = fs
            .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, 0, 0, b"")
            .unwrap();
        fs.open(ino).unwrap();
        fs.write(ino, 0, &data).unwrap();
        let commits = fs.pool().meta.commits();
        // What `cp -a` does before closing: chown, chmod, utimes.
        for a in [
            SetAttr {
                uid: Some(1000),
                gid: Some(2000),
                ..Default::default()
            },
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
            SetAttr {
                atime: Some(when),
                mtime: Some(when),
                ..Default::default()
            },
        ] {
            fs.setattr(ino, a).unwrap();
        }
        // Visible at once, but no metadata commit yet.
        let i = fs.getattr(ino).unwrap();
        assert_eq!((i.uid, i.gid, i.perm & 0o7777), (1000, 2000, 0o600));
        assert_eq!((i.atime, i.mtime, i.size), (when, when, 5000));
        assert_eq!(fs.pool().meta.commits(), commits);
        // Closing commits data and attributes together: one commit.
        fs.release(ino).unwrap();
        assert_eq!(fs.pool().meta.commits(), commits + 1);
        fs.sync().unwrap();
    }
    let fs = tp.open();
    assert_eq!(get_file(&fs, "f"), data);
    let i = fs.lookup(ROOT_INO, b"f").unwrap().1;
    assert_eq!((i.uid, i.gid, i.perm & 0o7777), (1000, 2000, 0o600));
    assert_eq!((i.atime, i.mtime), (when, when));
}

#[test]
fn buffered_chmod_does_not_override_a_later_acl_or_write() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let (ino, _) = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    fs.open(ino).unwrap();
    fs.write(ino, 0, b"abc").unwrap();
    fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    // A minimal access ACL (user rwx, group r-x, other ---) sets the mode after the chmod.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    fs.setxattr(ino, dynfs_core::fs::ACL_ACCESS_XATTR, &acl, 0)
        .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().perm & 0o777, 0o750);
    // A write after an explicit mtime moves the mtime on again.
    let old = dynfs_core::meta::Ts { secs: 5, nanos: 0 };
    fs.write(ino, 3, b"def").unwrap();
    fs.setattr(
        ino,
        SetAttr {
            mtime: Some(old),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().mtime, old);
    fs.write(ino, 6, b"ghi").unwrap();
    fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    fs.release(ino).unwrap();
    let i = fs.getattr(ino).unwrap();
    assert_eq!(i.perm & 0o777, 0o640);
    assert!(i.mtime.secs > 5, "write after utimes must set mtime");
    assert_eq!(get_file(&fs, "f"), b"abcdefghi");
}

#[test]
fn small_files_are_stored_inline_and_verified() {
    use dynfs_core::meta::{EXTENTS, EXTMAP, INLINE, LIVE};
    use redb::ReadableTable;
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let small = bytes(31, 4096);
    let tiny = bytes(32, 10);
    {
        let fs = tp.open();
        put_file(&fs, "small", &small);
        let ino = put_file(&fs, "tiny", &tiny);
        // No fragment file: the data is in the (replicated) metadata.
        assert!(tp.fragment_files().is_empty());
        assert_eq!(fs.getattr(ino).unwrap().alloc, 10);
        let st = dynfs_core::status::Status::gather(fs.pool()).unwrap();
        assert_eq!((st.extents, st.unavailable_extents), (2, 0));
        // Restriping leaves inline data alone.
        fs.setxattr(ino, b"user.dynfs.policy", b"replicate:3", 0)
            .unwrap();
        assert!(tp.fragment_files().is_empty());
        fs.sync().unwrap();
    }
    {
        // Reopened, it reads back and scrubs clean.
        let fs = tp.open();
        assert_eq!(get_file(&fs, "small"), small);
        assert_eq!(get_file(&fs, "tiny"), tiny);
        let pool = fs.pool().clone();
        let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
        assert!(r.clean() && r.extents == 2, "{r:?}");
        // Growing past the inline limit stores the file as fragments and drops the inline row.
        let ino = fs.lookup(ROOT_INO, b"small").unwrap().0;
        fs.open(ino).unwrap();
        fs.write(ino, 4096, b"more").unwrap();
        fs.release(ino).unwrap();
        assert_eq!(tp.fragment_files().len(), 3);
        let mut want = small.clone();
        want.extend_from_slice(b"more");
        assert_eq!(get_file(&fs, "small"), want);
        let rows = dynfs_core::meta::table_len(&pool.meta.read().unwrap(), INLINE).unwrap();
        assert_eq!(rows, 1, "only tiny stays inline");
        // Shrinking back under the limit: a later write-back stores it inline again.
        fs.setattr(
            ino,
            SetAttr {
                size: Some(100),
                ..Default::default()
            },
        )
        .unwrap();
        fs.open(ino).unwrap();
        fs.write(ino, 0, b"x").unwrap();
        fs.release(ino).unwrap();
        let mut want = small[..100].to_vec();
        want[0] = b'x';
        assert_eq!(get_file(&fs, "small"), want);
        // The replaced extent's fragments are deleted after the next durable commit.
        fs.sync().unwrap();
        assert!(tp.fragment_files().is_empty(), "fragments freed");
        // A damaged inline value is detected, never returned.
        let tiny_ino = fs.lookup(ROOT_INO, b"tiny").unwrap().0;
        let id = {
            let tx = pool.meta.read().unwrap();
            let t = tx.open_table(EXTMAP).unwrap();
            let v = t.get((LIVE, tiny_ino, 0)).unwrap().unwrap().value();
            v
        };
        pool.meta
            .write(move |tx| {
                let mut t = tx.open_table(INLINE)?;
                let mut v = t.get(id)?.unwrap().value().to_vec();
                let last = v.len() - 1;
                v[last] ^= 1;
                t.insert(id, v.as_slice())?;
                Ok(())
            })
            .unwrap();
        let err = fs.read(tiny_ino, 0, 10).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        // Unlinking frees the extent record and its inline row together.
        fs.unlink(ROOT_INO, b"tiny").unwrap();
        let tx = pool.meta.read().unwrap();
        assert!(tx.open_table(INLINE).unwrap().get(id).unwrap().is_none());
        // "small" (100 bytes again) is the only inline file left.
        assert_eq!(dynfs_core::meta::table_len(&tx, INLINE).unwrap(), 1);
        assert!(tx.open_table(EXTENTS).unwrap().get(id).unwrap().is_none());
    }
}

/// Small files made through the primary's open metadata batch (more than one batch of
/// changes), with failing changes in between (an existing name, absent xattrs, a missing
/// rename source, a write to a directory), are all there at once, through a fresh read
/// transaction (readdir) and after reopening; the failed changes left nothing behind.
#[test]
fn failed_changes_between_small_files_lose_nothing() {
    use dynfs_core::fs::POLICY_XATTR;
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let n = 400u64;
    let failing = |fs: &dynfs_core::Fs, name: &str| {
        let e = fs.mknod(ROOT_INO, name.as_bytes(), Kind::File, 0o644, 0, 0, 0, b"");
        assert!(matches!(e, Err(Error::Errno(libc::EEXIST))));
        let ino = fs.lookup(ROOT_INO, name.as_bytes()).unwrap().0;
        let e = fs.removexattr(ino, b"user.none");
        assert!(matches!(e, Err(Error::Errno(libc::ENODATA))));
        // Fails inside the metadata change, after reading the inode.
        let e = fs.removexattr(ino, POLICY_XATTR);
        assert!(matches!(e, Err(Error::Errno(libc::ENODATA))));
        let e = fs.rename(ROOT_INO, b"missing", ROOT_INO, b"x", 0);
        assert!(matches!(e, Err(Error::Errno(libc::ENOENT))));
        assert!(fs.write(ROOT_INO, 0, b"x").is_err());
    };
    {
        let fs = tp.open();
        for i in 0..n {
            let name = format!("f{i}");
            put_file(&fs, &name, &bytes(i, 1000 + i as usize));
            if i % 40 == 0 {
                failing(&fs, &name);
            }
        }
        for i in 0..n {
            assert_eq!(get_file(&fs, &format!("f{i}")), bytes(i, 1000 + i as usize));
        }
        let mut names = 0;
        let mut off = 0;
        loop {
            let entries = fs.readdir(ROOT_INO, off, 100).unwrap();
            let Some(last) = entries.last() else { break };
            off = last.next;
            names += entries.iter().filter(|e| e.name.starts_with(b"f")).count();
        }
        assert_eq!(names, n as usize);
        assert!(fs.lookup(ROOT_INO, b"x").is_err());
    }
    let fs = tp.open();
    for i in 0..n {
        let name = format!("f{i}");
        assert_eq!(get_file(&fs, &name), bytes(i, 1000 + i as usize), "{name}");
        let ino = fs.lookup(ROOT_INO, name.as_bytes()).unwrap().0;
        assert!(fs.listxattr(ino).unwrap().is_empty());
    }
    assert!(fs.lookup(ROOT_INO, b"x").is_err());
}
