//! `-c`: content checksums decide what is transferred, both directions.

mod common;

use std::path::Path;

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

/// Changes a file's content but keeps its size and mtime (the quick check
/// cannot see it).
fn sneaky_change(p: &Path) {
    let m = std::fs::metadata(p).unwrap();
    let mut d = std::fs::read(p).unwrap();
    d[0] ^= 0xFF;
    std::fs::write(p, &d).unwrap();
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(m.modified().unwrap()).unwrap();
}

#[test]
fn pull_with_checksums() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 200_000);
    let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
    o.command.flags = "logDtprc".into();
    assert_eq!(pull(&o).unwrap().files_transferred, 8);
    sneaky_change(&src.join("a/b/two.bin"));
    // Without -c nothing is seen; with -c the one file is sent.
    let mut plain = o.clone();
    plain.command.flags = "logDtpr".into();
    assert_eq!(pull(&plain).unwrap().files_transferred, 0);
    assert_eq!(pull(&o).unwrap().files_transferred, 1);
    assert_same_tree(&src, &dst);
}

#[test]
fn push_with_checksums() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 200_000);
    let mut o = PushOptions::new(&src, format!("{}/", dst.display()));
    o.command.flags = "logDtprc".into();
    assert_eq!(push(&o).unwrap().files_transferred, 8);
    sneaky_change(&src.join("a/b/two.bin"));
    assert_eq!(push(&o).unwrap().files_transferred, 1);
    assert_same_tree_ns(&src, &dst, true, false);
}
