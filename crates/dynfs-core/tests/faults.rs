//! Fault injection through `FaultyIo`: an I/O error never returns wrong data, failed writes leave
//! no committed reference to missing fragments, and scrub/gc clean up afterwards.

mod common;

use common::*;
use dynfs_core::io::{Fault, FaultKind, FaultOp, FaultyIo};
use dynfs_core::meta::{Kind, ROOT_INO};
use dynfs_core::scrub::{self, ScrubOptions};
use dynfs_core::{Error, Pool};
use std::sync::Arc;

fn fault(op: FaultOp, nth: u64, repeat: bool, kind: FaultKind, path: Option<String>) -> Fault {
    Fault {
        op,
        path_contains: path,
        nth,
        repeat,
        kind,
    }
}

#[test]
fn failed_fragment_write_moves_to_a_spare_disk() {
    // Flush stores several extents at once, so the two failing writes may hit the same extent:
    // five disks leave a spare for each of them either way.
    let tp = TestPool::new(5, "rs:2+1", 65536);
    let io = Arc::new(FaultyIo::new());
    io.add(fault(FaultOp::Write, 2, false, FaultKind::Eio, None));
    io.add(fault(FaultOp::Write, 5, false, FaultKind::Enospc, None));
    let fs = tp.open_with(io.clone());
    let d = bytes(1, 200_000);
    put_file(&fs, "f", &d);
    assert_eq!(io.fired(), 2);
    assert_eq!(get_file(&fs, "f"), d);
    drop(fs);
    let pool = Pool::open(&tp.pool).unwrap();
    let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
    assert!(r.clean());
    assert_eq!(
        pool.gc().unwrap().fragments,
        0,
        "no temporaries or orphans left"
    );
}

#[test]
fn write_failure_without_spare_fails_cleanly_and_keeps_old_data() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let old = bytes(2, 100_000);
    {
        let fs = tp.open();
        put_file(&fs, "f", &old);
    }
    let frags_before = tp.fragment_files();
    let io = Arc::new(FaultyIo::new());
    io.add(fault(
        FaultOp::Write,
        1,
        true,
        FaultKind::Enospc,
        Some(tp.disks[1].to_string_lossy().into_owned()),
    ));
    let fs = tp.open_with(io.clone());
    let (ino, _) = fs.lookup(ROOT_INO, b"f").unwrap();
    fs.write(ino, 0, &bytes(3, 100_000)).unwrap();
    let err = fs.flush(ino).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    // Nothing committed: the file still reads as before, no stray fragments remain.
    drop(fs);
    assert_eq!(tp.fragment_files(), frags_before);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "f"), old);
}

#[test]
fn bit_flips_on_read_are_corrected() {
    for p in ["replicate:2", "rs:2+1"] {
        let tp = TestPool::new(3, p, 65536);
        let d = bytes(4, 600_000);
        {
            let fs = tp.open();
            put_file(&fs, "f", &d);
        }
        let io = Arc::new(FaultyIo::new());
        // At most one bad fragment per extent (M = 1). Extents are read in parallel (read-ahead),
        // so the faults name their fragment files rather than a position in the read order; a
        // normal read starts with fragment 0 (first copy, or first data shard).
        for (extent, kind) in [
            (1, FaultKind::FlipBit),
            (3, FaultKind::Eio),
            (6, FaultKind::FlipBit),
        ] {
            let frag = format!("{extent:016x}.0");
            io.add(fault(FaultOp::Read, 1, false, kind, Some(frag)));
        }
        let fs = tp.open_with(io.clone());
        assert_eq!(get_file(&fs, "f"), d, "{p}");
        assert_eq!(io.fired(), 3, "{p}");
    }
}

#[test]
fn too_many_failures_give_an_error_never_wrong_data() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let d = bytes(5, 50_000);
    {
        let fs = tp.open();
        put_file(&fs, "f", &d);
    }
    let io = Arc::new(FaultyIo::new());
    // Two of three fragments corrupt on every read.
    io.add(fault(
        FaultOp::Read,
        1,
        true,
        FaultKind::FlipBit,
        Some(tp.disks[0].to_string_lossy().into_owned()),
    ));
    io.add(fault(
        FaultOp::Read,
        1,
        true,
        FaultKind::Eio,
        Some(tp.disks[1].to_string_lossy().into_owned()),
    ));
    let fs = tp.open_with(io);
    let (ino, _) = fs.lookup(ROOT_INO, b"f").unwrap();
    let err = fs.read(ino, 0, 4096).unwrap_err();
    assert!(matches!(err, Error::Unrecoverable { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
}

#[test]
fn silent_corruption_on_write_is_found_by_scrub() {
    let tp = TestPool::new(3, "replicate:3", 65536);
    let io = Arc::new(FaultyIo::new());
    io.add(fault(FaultOp::Write, 3, false, FaultKind::FlipBit, None));
    let d = bytes(6, 100_000);
    {
        let fs = tp.open_with(io.clone());
        put_file(&fs, "f", &d);
    }
    let pool = Pool::open(&tp.pool).unwrap();
    let r = scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(r.disks.values().map(|d| d.bad).sum::<u64>(), 1);
    let r = scrub::scrub(
        &pool,
        ScrubOptions {
            repair: true,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(r.clean());
    assert!(scrub::scrub(&pool, ScrubOptions::default(), &mut |_, _| {})
        .unwrap()
        .clean());
    drop(pool);
    assert_eq!(get_file(&tp.open(), "f"), d);
}

#[test]
fn dropped_fsync_then_power_loss_is_repaired() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let io = Arc::new(FaultyIo::new());
    io.add(fault(FaultOp::Write, 2, false, FaultKind::DropFsync, None));
    let d = bytes(7, 200_000);
    {
        let fs = tp.open_with(io.clone());
        put_file(&fs, "f", &d);
    }
    io.power_loss();
    let pool = Pool::open(&tp.pool).unwrap();
    let r = scrub::scrub(
        &pool,
        ScrubOptions {
            repair: true,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.disks.values().map(|d| d.bad).sum::<u64>(), 1);
    assert!(r.clean());
    drop(pool);
    assert_eq!(get_file(&tp.open(), "f"), d);
}

#[test]
fn failed_free_leaves_orphans_that_gc_collects() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let io = Arc::new(FaultyIo::new());
    io.add(fault(FaultOp::Remove, 1, true, FaultKind::Eio, None));
    {
        let fs = tp.open_with(io.clone());
        put_file(&fs, "f", &bytes(8, 100_000));
        fs.unlink(ROOT_INO, b"f").unwrap();
        let (_, _) = fs
            .mknod(ROOT_INO, b"g", Kind::File, 0o644, 0, 0, 0, b"")
            .unwrap();
    }
    assert_eq!(tp.fragment_files().len(), 4, "frees failed");
    let pool = Pool::open_no_gc(&tp.pool, Arc::new(dynfs_core::io::StdIo)).unwrap();
    assert_eq!(pool.gc().unwrap().fragments, 4);
    assert!(tp.fragment_files().is_empty());
}

#[test]
fn failed_disk_sync_fails_the_fsync_and_a_retry_succeeds() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let io = Arc::new(FaultyIo::new());
    io.add(fault(FaultOp::Sync, 1, false, FaultKind::Eio, None));
    let fs = tp.open_with(io.clone());
    let (ino, _) = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    // Larger than the inline limit, so it goes to fragment files that need a disk sync.
    let data = bytes(9, 5000);
    fs.write(ino, 0, &data).unwrap();
    assert_eq!(fs.fsync(ino).unwrap_err().errno(), libc::EIO);
    assert_eq!(io.fired(), 1);
    fs.fsync(ino).unwrap();
    drop(fs);
    assert_eq!(get_file(&tp.open(), "f"), data);
}
