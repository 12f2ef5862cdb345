//! The per-file request path: inode numbers handed out from memory (a range reserved in the
//! metadata at a time), the last-inode cache that answers the requests following a create, and
//! deleting an unlinked file at its last release.

mod common;

use common::*;
use dynfs_core::fs::{get_inode, put_inode, SetAttr};
use dynfs_core::meta::{self, Kind, LIVE, ROOT_INO, SUPER, XATTRS};
use dynfs_core::Fs;
use std::collections::HashSet;
use std::sync::Arc;

/// The errno a failed call reports to the kernel.
fn errno(r: dynfs_core::Result<impl std::fmt::Debug>) -> i32 {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The `next_ino` counter as committed.
fn counter(fs: &Fs) -> u64 {
    let tx = fs.pool().meta.read().unwrap();
    let t = tx.open_table(SUPER).unwrap();
    let v = t.get("next_ino").unwrap().map(|g| g.value()).unwrap();
    v
}

#[test]
fn inode_numbers_stay_unique_across_reservations_and_reopens() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let mut seen = HashSet::new();
    // More than one reserved range.
    for i in 0..1100 {
        let (ino, _) = fs
            .create(ROOT_INO, format!("f{i}").as_bytes(), 0o644, 0, 0)
            .unwrap();
        assert!(seen.insert(ino), "inode {ino} handed out twice");
        fs.release(ino).unwrap();
    }
    let max = *seen.iter().max().unwrap();
    // The committed counter covers every number handed out, without being written per create.
    fs.sync().unwrap();
    let c = counter(&fs);
    assert!(c > max, "counter {c} does not cover inode {max}");
    assert!(
        c <= max + 1 + 1024,
        "counter {c} is more than one range past {max}"
    );
    drop(fs);
    let fs = tp.open();
    for i in 0..5 {
        let (ino, _) = fs
            .mknod(
                ROOT_INO,
                format!("d{i}").as_bytes(),
                Kind::Dir,
                0o755,
                0,
                0,
                0,
                b"",
            )
            .unwrap();
        assert!(
            ino >= c,
            "after reopen, inode {ino} is below the counter {c}"
        );
        assert!(seen.insert(ino), "inode {ino} handed out twice");
    }
    for i in (0..1100).step_by(97) {
        let (ino, attr) = fs.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        assert_eq!(attr.kind, Kind::File);
        assert!(seen.contains(&ino));
    }
}

#[test]
fn a_counter_behind_the_inodes_never_lets_a_create_overwrite_one() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let pool = Arc::new(dynfs_core::Pool::open(&tp.pool).unwrap());
    let first = Fs::from_arc(pool.clone());
    let a = put_file(&first, "a", b"file a");
    let b = put_file(&first, "b", b"file b");
    // Damage: the counter goes back to the start.
    pool.meta
        .write(|tx| meta::set_counter(tx, "next_ino", 2))
        .unwrap();
    // A filesystem starting now hands out numbers past the largest live inode.
    let second = Fs::from_arc(pool.clone());
    let c = put_file(&second, "c", b"file c");
    assert!(c > a.max(b), "inode {c} reuses a live number");
    assert_eq!(c, b + 1);
    // The first one still hands out from its range, whose next number is `c`'s: the create is
    // refused rather than overwriting `c`, and the next one starts past it.
    let r = first.mknod(ROOT_INO, b"d", Kind::File, 0o644, 0, 0, 0, b"");
    assert_eq!(errno(r), libc::EIO);
    assert_eq!(errno(first.lookup(ROOT_INO, b"d")), libc::ENOENT);
    let (e, _) = first
        .mknod(ROOT_INO, b"e", Kind::File, 0o644, 0, 0, 0, b"")
        .unwrap();
    assert!(![a, b, c].contains(&e), "inode {e} reused");
    assert_eq!(get_file(&first, "c"), b"file c");
    assert_eq!(get_file(&second, "a"), b"file a");
    assert_eq!(first.lookup(ROOT_INO, b"c").unwrap().0, c);
}

#[test]
fn cached_inode_follows_changes_made_around_the_filesystem() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let (ino, i) = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    assert_eq!(i.perm, 0o644);
    // A fresh file has no xattrs; a missing inode is ENOENT, not ENODATA.
    assert_eq!(
        errno(fs.getxattr(ino, b"security.capability")),
        libc::ENODATA
    );
    assert_eq!(errno(fs.removexattr(ino, b"user.x")), libc::ENODATA);
    assert_eq!(errno(fs.getxattr(ino + 1000, b"user.x")), libc::ENOENT);
    // Changes committed to the metadata directly, not through `fs`.
    fs.pool()
        .meta
        .write_lazy(move |tx| {
            let mut i = get_inode(tx, LIVE, ino)?;
            i.perm = 0o600;
            put_inode(tx, LIVE, ino, &i)
        })
        .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().perm, 0o600);
    fs.pool()
        .meta
        .write_lazy(move |tx| {
            tx.open_table(XATTRS)?
                .insert((LIVE, ino, &b"user.x"[..]), &b"v"[..])?;
            Ok(())
        })
        .unwrap();
    assert_eq!(fs.getxattr(ino, b"user.x").unwrap(), b"v");
    // Changes through `fs`, while writes are buffered and after they are committed.
    fs.write(ino, 0, b"data").unwrap();
    let a = fs
        .setattr(
            ino,
            SetAttr {
                mode: Some(0o4755),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.size), (0o4755, 4));
    fs.setxattr(ino, b"user.y", b"w", 0).unwrap();
    assert_eq!(fs.getxattr(ino, b"user.y").unwrap(), b"w");
    fs.release(ino).unwrap();
    let i = fs.getattr(ino).unwrap();
    assert_eq!((i.perm, i.size), (0o4755, 4));
    fs.link(ino, ROOT_INO, b"g").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().nlink, 2);
    fs.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().nlink, 1);
    assert_eq!(get_file(&fs, "g"), b"data");
}

#[test]
fn an_unlinked_file_goes_at_its_last_release() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    let (ino, _) = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    fs.open(ino).unwrap();
    fs.write(ino, 0, b"still here").unwrap();
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.release(ino).unwrap();
    assert_eq!(fs.read(ino, 0, 100).unwrap(), b"still here");
    fs.release(ino).unwrap();
    assert_eq!(errno(fs.getattr(ino)), libc::ENOENT);
    // Another link keeps it.
    let (ino, _) = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap();
    fs.write(ino, 0, b"linked").unwrap();
    fs.link(ino, ROOT_INO, b"h").unwrap();
    fs.unlink(ROOT_INO, b"g").unwrap();
    fs.release(ino).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().nlink, 1);
    assert_eq!(get_file(&fs, "h"), b"linked");
    // Unlinked while closed: gone at once.
    fs.unlink(ROOT_INO, b"h").unwrap();
    assert_eq!(errno(fs.getattr(ino)), libc::ENOENT);
}

/// The committed `next_extent` counter.
fn extent_counter(fs: &Fs) -> u64 {
    let tx = fs.pool().meta.read().unwrap();
    let t = tx.open_table(SUPER).unwrap();
    let v = t.get("next_extent").unwrap().map(|g| g.value()).unwrap();
    v
}

/// Every extent id in the live metadata.
fn extent_ids(fs: &Fs) -> HashSet<u64> {
    use redb::ReadableTable;
    let tx = fs.pool().meta.read().unwrap();
    let t = tx.open_table(meta::EXTENTS).unwrap();
    t.iter().unwrap().map(|r| r.unwrap().0.value()).collect()
}

#[test]
fn extent_ids_stay_below_the_counter_raised_a_range_at_a_time() {
    let tp = TestPool::new(2, "replicate:2", 65536);
    let fs = tp.open();
    // Inline extents (small files) and fragment extents, more than one reserved range.
    for i in 0..1100u32 {
        let (ino, _) = fs
            .create(ROOT_INO, format!("f{i}").as_bytes(), 0o644, 0, 0)
            .unwrap();
        let len = if i % 100 == 0 { 70_000 } else { 100 };
        let data = vec![(i % 251) as u8 + 1; len];
        fs.write(ino, 0, &data).unwrap();
        fs.flush(ino).unwrap();
        fs.release(ino).unwrap();
    }
    fs.sync().unwrap();
    let ids = extent_ids(&fs);
    assert!(ids.len() >= 1100, "only {} extents", ids.len());
    let max = *ids.iter().max().unwrap();
    let c = extent_counter(&fs);
    assert!(c > max, "counter {c} does not cover extent {max}");
    assert!(
        c <= max + 1024,
        "counter {c} is more than one range past {max}"
    );
    drop(fs);
    // After reopening, new extents take ids past every committed one, and old data reads back.
    let fs = tp.open();
    let (ino, _) = fs.create(ROOT_INO, b"after", 0o644, 0, 0).unwrap();
    fs.write(ino, 0, b"new data").unwrap();
    fs.flush(ino).unwrap();
    fs.release(ino).unwrap();
    fs.sync().unwrap();
    let new: Vec<u64> = extent_ids(&fs).difference(&ids).copied().collect();
    assert_eq!(new.len(), 1, "one new extent expected, got {new:?}");
    assert!(new[0] >= c, "new extent {} below the counter {c}", new[0]);
    for i in (0..1100u32).step_by(50) {
        let (ino, attr) = fs.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        let len = if i % 100 == 0 { 70_000 } else { 100 };
        assert_eq!(attr.size, len as u64);
        let got = fs.read(ino, 0, len).unwrap();
        assert_eq!(&got[..], &vec![(i % 251) as u8 + 1; len][..], "file f{i}");
    }
}
