//! Extents replaced by a rewrite are deleted after the next durable commit, not in a durable
//! commit of their own; a crash in between leaves orphans that the garbage collection at the
//! next open removes.

mod common;

use common::*;
use dynfs_core::io::StdIo;
use dynfs_core::{Fs, Pool};
use std::path::Path;
use std::sync::Arc;

const ES: u64 = 64 << 10;

/// A 4-extent file under rs:2+1 (3 fragments per extent), durable; then part of its second
/// extent rewritten and committed. Returns the filesystem, the file's new content and the
/// metadata generation before the rewrite.
fn rewritten(tp: &TestPool) -> (Fs, Vec<u8>, u64) {
    let fs = tp.open();
    let mut data = bytes(1, 4 * ES as usize);
    let ino = put_file(&fs, "f", &data);
    fs.sync().unwrap();
    assert_eq!(tp.fragment_files().len(), 4 * 3);
    let generation = fs.pool().meta.generation().unwrap();
    let patch = bytes(2, 1000);
    let at = ES as usize + 100;
    fs.open(ino).unwrap();
    fs.write(ino, at as u64, &patch).unwrap();
    fs.release(ino).unwrap();
    data[at..at + patch.len()].copy_from_slice(&patch);
    (fs, data, generation)
}

#[test]
fn replaced_extents_are_freed_at_the_next_durable_commit() {
    let tp = TestPool::new(3, "rs:2+1", ES);
    let (fs, data, generation) = rewritten(&tp);
    // The rewrite committed lazily, and its replaced extent waits for a durable commit: the
    // old fragments are still on disk, next to the new ones.
    assert_eq!(fs.pool().meta.generation().unwrap(), generation);
    assert_eq!(fs.queued_frees(), 1);
    assert_eq!(tp.fragment_files().len(), 5 * 3);
    assert_eq!(get_file(&fs, "f"), data);
    fs.sync().unwrap();
    assert_eq!(fs.pool().meta.generation().unwrap(), generation + 1);
    assert_eq!(fs.queued_frees(), 0);
    assert_eq!(tp.fragment_files().len(), 4 * 3);
    assert_eq!(get_file(&fs, "f"), data);
    drop(fs);
    assert_eq!(get_file(&tp.open(), "f"), data);
}

#[test]
fn a_durable_commit_of_any_kind_releases_the_queue() {
    // The periodic commit makes the metadata durable without going through the filesystem:
    // the next rewrite (or sync, or close of the filesystem) deletes what it covered.
    let tp = TestPool::new(3, "rs:2+1", ES);
    let (fs, data, _) = rewritten(&tp);
    fs.pool().meta.sync().unwrap();
    assert_eq!(fs.queued_frees(), 1);
    drop(fs);
    assert_eq!(tp.fragment_files().len(), 4 * 3);
    assert_eq!(get_file(&tp.open(), "f"), data);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_crash_before_the_deletion_leaves_orphans_that_gc_collects() {
    let tp = TestPool::new(3, "rs:2+1", ES);
    let (fs, data, _) = rewritten(&tp);
    // The periodic commit makes the rewrite durable; then the daemon dies before deleting
    // the replaced fragments: the state on disk is copied now, as a crash would leave it.
    fs.pool().meta.sync().unwrap();
    assert_eq!(fs.queued_frees(), 1);
    let image = tp.root.path().join("image");
    let dirs: Vec<_> = std::iter::once(&tp.pool).chain(&tp.disks).collect();
    for (i, d) in dirs.iter().enumerate() {
        copy_tree(d, &image.join(i.to_string()));
    }
    drop(fs);
    for (i, d) in dirs.iter().enumerate() {
        std::fs::remove_dir_all(d).unwrap();
        std::fs::rename(image.join(i.to_string()), d).unwrap();
    }
    assert_eq!(tp.fragment_files().len(), 5 * 3);
    let pool = Pool::open_no_gc(&tp.pool, Arc::new(StdIo)).unwrap();
    // The replaced extent's record went with the durable commit: its fragments are orphans.
    assert_eq!(pool.gc().unwrap().fragments, 3);
    assert_eq!(pool.gc().unwrap().fragments, 0);
    let fs = Fs::new(pool);
    assert_eq!(tp.fragment_files().len(), 4 * 3);
    assert_eq!(get_file(&fs, "f"), data);
}
