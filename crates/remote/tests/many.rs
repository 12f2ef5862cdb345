//! Many files with sparse updates: file indices far apart exercise every
//! ndx delta form, against the real rsync in both directions.

mod common;

use std::path::Path;

use arsync_remote::pull::{pull, PullOptions};
use arsync_remote::push::{push, PushOptions};
use common::*;

fn tree(root: &Path) {
    for d in 0..3 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..350 {
            std::fs::write(
                dir.join(format!("f{f:04}")),
                bytes(d * 1000 + f, 100 + (f as usize % 7) * 50),
            )
            .unwrap();
            set_mtime(&dir.join(format!("f{f:04}")), 1_600_000_000 + f as i64, 0);
        }
    }
}

fn touch_sparse(root: &Path) {
    for (d, f) in [(0, 3), (1, 300), (2, 349)] {
        let p = root.join(format!("d{d}/f{f:04}"));
        std::fs::write(&p, bytes(99_999 + f, 333)).unwrap();
        set_mtime(&p, 1_700_000_000, 0);
    }
}

#[test]
fn pull_many_sparse() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let o = PullOptions::new(format!("{}/", src.display()), &dst);
    assert_eq!(pull(&o).unwrap().files_transferred, 1050);
    touch_sparse(&src);
    assert_eq!(pull(&o).unwrap().files_transferred, 3);
    assert_same_tree(&src, &dst);
}

#[test]
fn push_many_sparse() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let o = PushOptions::new(&src, format!("{}/", dst.display()));
    assert_eq!(push(&o).unwrap().files_transferred, 1050);
    touch_sparse(&src);
    assert_eq!(push(&o).unwrap().files_transferred, 3);
    assert_same_tree_ns(&src, &dst, true, false);
}
