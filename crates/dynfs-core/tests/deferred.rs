//! Deferred close commits ([`Fs::defer_flush`], [`Fs::commit_deferred`]): the close of a small
//! file returns before its metadata commit; the data stays visible meanwhile, a release leaves
//! the commit alone, `sync` commits it first, and the inode cache of the file being copied
//! next survives the commit of the previous one (but nothing else).

mod common;

use common::*;
use dynfs_core::fs::{get_inode, put_inode, SetAttr};
use dynfs_core::meta::{self, Inode, INODES, LIVE, ROOT_INO};
use dynfs_core::Fs;

/// The inode as committed to the metadata (not counting buffered writes).
fn committed(fs: &Fs, ino: u64) -> Inode {
    let tx = fs.pool().meta.read().unwrap();
    let t = tx.open_table(INODES).unwrap();
    let v = t.get((LIVE, ino)).unwrap().unwrap();
    meta::dec(v.value()).unwrap()
}

/// Create `name`, write `data` and close it with a deferred commit; the handle is released.
fn copy_deferred(fs: &Fs, name: &str, data: &[u8]) -> u64 {
    let (ino, _) = fs.create(ROOT_INO, name.as_bytes(), 0o600, 0, 0).unwrap();
    fs.write(ino, 0, data).unwrap();
    fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(fs.defer_flush(ino), "a small file's close is deferred");
    fs.release(ino).unwrap();
    ino
}

#[test]
fn a_deferred_close_is_visible_at_once_and_committed_later() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let fs = tp.open();
    let data = bytes(1, 4096);
    let ino = copy_deferred(&fs, "a", &data);
    // Neither the close nor the release committed anything...
    assert!(fs.has_deferred());
    let c = committed(&fs, ino);
    assert_eq!((c.size, c.perm), (0, 0o600));
    // ...yet every request sees the file as written.
    let (found, i) = fs.lookup(ROOT_INO, b"a").unwrap();
    assert_eq!((found, i.size, i.perm), (ino, 4096, 0o640));
    assert_eq!(get_file(&fs, "a"), data);
    let listed = fs.readdir(ROOT_INO, 0, 16).unwrap();
    let e = listed.iter().find(|e| e.name == b"a").unwrap();
    assert_eq!(e.inode.size, 4096);
    fs.commit_deferred().unwrap();
    assert!(!fs.has_deferred());
    let c = committed(&fs, ino);
    assert_eq!((c.size, c.perm), (4096, 0o640));
    assert_eq!(get_file(&fs, "a"), data);
    // The pool reopens with the file intact.
    drop(fs);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "a"), data);
}

#[test]
fn sync_commits_every_deferred_close_first() {
    let tp = TestPool::new(3, "replicate:3", 65536);
    let fs = tp.open();
    let files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("f{i}"), bytes(i, 100 + i as usize * 300)))
        .collect();
    for (name, data) in &files {
        copy_deferred(&fs, name, data);
    }
    let before = fs.pool().meta.generation().unwrap();
    fs.sync().unwrap();
    assert!(!fs.has_deferred());
    // One durable commit holds them all.
    assert_eq!(fs.pool().meta.generation().unwrap(), before + 1);
    for (name, data) in &files {
        let (ino, _) = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        assert_eq!(committed(&fs, ino).size, data.len() as u64);
    }
    drop(fs);
    let fs = tp.open();
    for (name, data) in &files {
        assert_eq!(&get_file(&fs, name), data);
    }
}

#[test]
fn only_small_buffered_files_defer_their_close() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let fs = tp.open();
    // Nothing buffered: nothing to defer.
    let (ino, _) = fs.create(ROOT_INO, b"empty", 0o644, 0, 0).unwrap();
    assert!(!fs.defer_flush(ino));
    fs.release(ino).unwrap();
    // Past the inline size the close commits (and reports errors) itself.
    let (ino, _) = fs.create(ROOT_INO, b"big", 0o644, 0, 0).unwrap();
    fs.write(ino, 0, &bytes(2, 5000)).unwrap();
    assert!(!fs.defer_flush(ino));
    fs.flush(ino).unwrap();
    fs.release(ino).unwrap();
    assert_eq!(get_file(&fs, "big"), bytes(2, 5000));
    assert!(!fs.has_deferred());
}

#[test]
fn a_file_unlinked_before_its_deferred_commit_goes_at_release() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let fs = tp.open();
    let (ino, _) = fs.create(ROOT_INO, b"gone", 0o644, 0, 0).unwrap();
    fs.write(ino, 0, b"short-lived").unwrap();
    assert!(fs.defer_flush(ino));
    fs.unlink(ROOT_INO, b"gone").unwrap();
    // Still open: readable until released.
    assert_eq!(fs.read(ino, 0, 100).unwrap(), b"short-lived");
    fs.release(ino).unwrap();
    fs.commit_deferred().unwrap();
    assert!(fs.getattr(ino).is_err());
    assert!(fs.lookup(ROOT_INO, b"gone").is_err());
    // A second deferred file in the same state commits normally.
    let data = bytes(3, 300);
    copy_deferred(&fs, "kept", &data);
    fs.commit_deferred().unwrap();
    assert_eq!(get_file(&fs, "kept"), data);
}

#[test]
fn the_next_files_cached_inode_survives_only_the_deferred_commit() {
    let tp = TestPool::new(3, "rs:2+1", 65536);
    let fs = tp.open();
    let a = copy_deferred(&fs, "a", b"first");
    // The next file is created (and cached) before the first one's commit.
    let (b, _) = fs.create(ROOT_INO, b"b", 0o600, 0, 0).unwrap();
    fs.commit_deferred().unwrap();
    assert_eq!(committed(&fs, a).size, 5);
    assert_eq!(fs.getattr(b).unwrap().perm, 0o600);
    // Any other change still invalidates the cached inode.
    fs.pool()
        .meta
        .write_lazy(move |tx| {
            let mut i = get_inode(tx, LIVE, b)?;
            i.perm = 0o604;
            put_inode(tx, LIVE, b, &i)
        })
        .unwrap();
    assert_eq!(fs.getattr(b).unwrap().perm, 0o604);
    fs.write(b, 0, b"second").unwrap();
    assert!(fs.defer_flush(b));
    fs.release(b).unwrap();
    fs.sync().unwrap();
    let i = committed(&fs, b);
    assert_eq!((i.size, i.perm), (6, 0o604));
    assert_eq!(get_file(&fs, "b"), b"second");
}

#[test]
fn a_deferred_file_renamed_by_link_and_unlink_keeps_its_data() {
    // What git does with a loose object: write a temporary file, close it, link it under its
    // final name and unlink the temporary name, then read it back.
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let data = bytes(4, 45);
    let ino = copy_deferred(&fs, "tmp_obj", &data);
    fs.link(ino, ROOT_INO, b"object").unwrap();
    fs.unlink(ROOT_INO, b"tmp_obj").unwrap();
    assert_eq!(get_file(&fs, "object"), data);
    fs.commit_deferred().unwrap();
    assert_eq!(get_file(&fs, "object"), data);
    assert_eq!(committed(&fs, ino).nlink, 1);
    // The same with a rename over an existing file, and the replaced file's last link gone.
    let old = copy_deferred(&fs, "target", b"old contents");
    fs.commit_deferred().unwrap();
    let new = copy_deferred(&fs, "target.tmp", b"new contents");
    fs.rename(ROOT_INO, b"target.tmp", ROOT_INO, b"target", 0)
        .unwrap();
    assert_eq!(get_file(&fs, "target"), b"new contents");
    assert!(fs.getattr(old).is_err());
    fs.sync().unwrap();
    assert_eq!(committed(&fs, new).size, 12);
    drop(fs);
    let fs = tp.open();
    assert_eq!(get_file(&fs, "object"), data);
    assert_eq!(get_file(&fs, "target"), b"new contents");
}
