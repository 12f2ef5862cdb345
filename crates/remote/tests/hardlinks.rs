//! Hard links (-H) against the real rsync, both directions.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn linked_tree(src: &Path) {
    make_tree(src, 100_000);
    std::fs::hard_link(src.join("a/one.bin"), src.join("z.dir/one-again")).unwrap();
    std::fs::hard_link(src.join("a/one.bin"), src.join("one-more")).unwrap();
    std::fs::hard_link(src.join("small.txt"), src.join("a/b/small-link")).unwrap();
}

fn check(src: &Path, dst: &Path, nsec: bool, dir_nsec: bool) {
    assert_same_tree_ns(src, dst, nsec, dir_nsec);
    let i = ino(&dst.join("a/one.bin"));
    assert_eq!(ino(&dst.join("z.dir/one-again")), i);
    assert_eq!(ino(&dst.join("one-more")), i);
    assert_eq!(
        ino(&dst.join("a/b/small-link")),
        ino(&dst.join("small.txt"))
    );
    assert_ne!(ino(&dst.join("small.txt")), i);
}

#[test]
fn pull_preserves_hard_links() {
    for protocol in [None, Some(30)] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        linked_tree(&src);
        let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
        o.command.flags = "logDtprH".into();
        o.command.protocol = protocol;
        let s = pull(&o).unwrap_or_else(|e| panic!("{e}"));
        // Followers are linked, not transferred.
        assert_eq!(s.files_transferred, 8);
        check(&src, &dst, protocol.is_none(), true);
        // Re-run: nothing to do, links stay.
        let s = pull(&o).unwrap();
        assert_eq!(s.files_transferred, 0);
        check(&src, &dst, protocol.is_none(), true);
    }
}

#[test]
fn push_preserves_hard_links() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    linked_tree(&src);
    let mut o = PushOptions::new(&src, format!("{}/", dst.display()));
    o.command.flags = "logDtprH".into();
    let s = push(&o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.files_transferred, 8);
    check(&src, &dst, true, false);
}
