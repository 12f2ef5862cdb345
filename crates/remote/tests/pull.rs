//! Pulls from the real rsync (`rsync --server --sender`) at protocols 32, 31, 30.

mod common;

use arsync_remote::pull::{pull, PullOptions};
use common::*;

fn pull_from(
    src: &std::path::Path,
    dst: &std::path::Path,
    protocol: Option<i32>,
) -> arsync_remote::pull::TransferSummary {
    let mut opts = PullOptions::new(format!("{}/", src.display()), dst);
    opts.command.protocol = protocol;
    pull(&opts).unwrap_or_else(|e| panic!("pull failed: {e}"))
}

fn pull_then_delta(protocol: Option<i32>) {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let big = make_tree(&src, 4 << 20);
    let s = pull_from(&src, &dst, protocol);
    assert_eq!(s.protocol, protocol.unwrap_or(32));
    assert_eq!(s.checksum, "xxh128");
    assert_eq!(s.files_transferred, 8);
    assert_eq!(s.matched_bytes, 0);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_same_tree_ns(&src, &dst, protocol.unwrap_or(32) >= 31, true);

    // Nothing changed: the quick check skips every file.
    let s = pull_from(&src, &dst, protocol);
    assert_eq!(s.files_transferred, 0);
    assert_same_tree_ns(&src, &dst, protocol.unwrap_or(32) >= 31, true);

    // ~1% of the large file changes: a delta against the old copy.
    touch_up_one_percent(&big);
    let s = pull_from(&src, &dst, protocol);
    assert_eq!(s.files_transferred, 1);
    let size = (4 << 20) as u64;
    assert!(
        s.literal_bytes < size / 10,
        "literal {} of {size}",
        s.literal_bytes
    );
    assert_eq!(s.literal_bytes + s.matched_bytes, size);
    assert_same_tree_ns(&src, &dst, protocol.unwrap_or(32) >= 31, true);
}

#[test]
fn pull_protocol_32() {
    pull_then_delta(None);
}

#[test]
fn pull_protocol_31() {
    pull_then_delta(Some(31));
}

#[test]
fn pull_protocol_30() {
    pull_then_delta(Some(30));
}

#[test]
fn pull_compressed_zlibx() {
    for protocol in [None, Some(30)] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let big = make_tree(&src, 1 << 20);
        std::fs::write(src.join("text.txt"), "compressible text ".repeat(20_000)).unwrap();
        let s = pull_z(&src, &dst, protocol);
        assert_eq!(s.files_transferred, 9);
        // 360 KB of text must have been sent compressed.
        assert!(
            s.bytes_read < (1 << 20) + 150_000,
            "{} bytes on the wire",
            s.bytes_read
        );
        assert_same_tree_ns(&src, &dst, protocol.is_none(), true);
        touch_up_one_percent(&big);
        let s = pull_z(&src, &dst, protocol);
        assert_eq!(s.files_transferred, 1);
        assert!(s.matched_bytes > 900_000, "{s:?}");
        assert_same_tree_ns(&src, &dst, protocol.is_none(), true);
    }
}

fn pull_z(
    src: &std::path::Path,
    dst: &std::path::Path,
    protocol: Option<i32>,
) -> arsync_remote::pull::TransferSummary {
    let mut opts = PullOptions::new(format!("{}/", src.display()), dst);
    opts.command.protocol = protocol;
    opts.command.flags = "logDtprz".into();
    pull(&opts).unwrap_or_else(|e| panic!("pull failed: {e}"))
}

#[test]
fn numeric_ids_both_directions() {
    for push_mode in [false, true] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        make_tree(&src, 1000);
        // An owner with no name on this system.
        std::os::unix::fs::lchown(src.join("small.txt"), Some(54_321), Some(54_322)).unwrap();
        if push_mode {
            let mut o = arsync_remote::push::PushOptions::new(&src, format!("{}/", dst.display()));
            o.command.numeric_ids = true;
            arsync_remote::push::push(&o).unwrap_or_else(|e| panic!("{e}"));
        } else {
            let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
            o.command.numeric_ids = true;
            pull(&o).unwrap_or_else(|e| panic!("{e}"));
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dst.join("small.txt")).unwrap();
        assert_eq!((m.uid(), m.gid()), (54_321, 54_322));
        assert_same_tree_ns(&src, &dst, true, !push_mode);
    }
}

#[test]
fn atimes_both_directions() {
    use std::os::unix::fs::MetadataExt;
    for push_mode in [false, true] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        make_tree(&src, 1000);
        let f = std::fs::File::options()
            .write(true)
            .open(src.join("a/one.bin"))
            .unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
        f.set_times(std::fs::FileTimes::new().set_accessed(when))
            .unwrap();
        drop(f);
        if push_mode {
            let mut o = arsync_remote::push::PushOptions::new(&src, format!("{}/", dst.display()));
            o.command.flags.push('U');
            arsync_remote::push::push(&o).unwrap_or_else(|e| panic!("{e}"));
        } else {
            let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
            o.command.flags.push('U');
            pull(&o).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            std::fs::metadata(dst.join("a/one.bin")).unwrap().atime(),
            1_500_000_000,
            "push={push_mode}"
        );
        assert_same_tree_ns(&src, &dst, true, !push_mode);
    }
}

#[test]
fn filter_rules_are_applied_by_the_sender() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 1000);
    let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
    o.filters = vec!["- *.bin".into(), "- /z.dir/".into()];
    pull(&o).unwrap_or_else(|e| panic!("{e}"));
    assert!(!dst.join("a/one.bin").exists());
    assert!(!dst.join("a/b/two.bin").exists());
    assert!(!dst.join("z.dir").exists());
    assert!(dst.join("a/b/c/three").exists());
    assert_eq!(
        std::fs::read(dst.join("small.txt")).unwrap(),
        b"hello world\n"
    );
}

/// A remote shell that behaves like ssh: it joins the command words with
/// spaces and runs the line with `sh -c`.
fn ssh_like(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-ssh");
    std::fs::write(&p, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

#[test]
fn remote_shell_quoting() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let src = t.path().join("my src's dir");
    let dst = t.path().join("dst");
    make_tree(&src, 1000);
    let mut o = PullOptions::new(format!("{}/", src.display()), &dst);
    o.command.remote_shell = vec![ssh_like(t.path()), "somehost".into()];
    pull(&o).unwrap_or_else(|e| panic!("{e}"));
    assert_same_tree(&src, &dst);
    let mut p = arsync_remote::push::PushOptions::new(
        &src,
        format!("{}/", t.path().join("pushed dir").display()),
    );
    p.command.remote_shell = vec![ssh_like(t.path()), "somehost".into()];
    arsync_remote::push::push(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_same_tree_ns(&src, &t.path().join("pushed dir"), true, false);
}
