//! Pushes to the real rsync (`rsync --server`) at protocols 32, 31, 30.

mod common;

use arsync_remote::push::{push, PushOptions};
use common::*;

fn push_to(
    src: &std::path::Path,
    dst: &std::path::Path,
    protocol: Option<i32>,
) -> arsync_remote::pull::TransferSummary {
    let mut opts = PushOptions::new(src, format!("{}/", dst.display()));
    opts.command.protocol = protocol;
    push(&opts).unwrap_or_else(|e| panic!("push failed: {e}"))
}

fn push_then_delta(protocol: Option<i32>) {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let big = make_tree(&src, 4 << 20);
    let s = push_to(&src, &dst, protocol);
    assert_eq!(s.protocol, protocol.unwrap_or(32));
    assert_eq!(s.files_transferred, 8);
    assert_eq!(s.matched_bytes, 0);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let ns = protocol.unwrap_or(32) >= 31;
    assert_same_tree_ns(&src, &dst, ns, false);

    let s = push_to(&src, &dst, protocol);
    assert_eq!(s.files_transferred, 0);
    assert_same_tree_ns(&src, &dst, ns, false);

    touch_up_one_percent(&big);
    let s = push_to(&src, &dst, protocol);
    assert_eq!(s.files_transferred, 1);
    let size = (4 << 20) as u64;
    assert!(
        s.literal_bytes < size / 10,
        "literal {} of {size}",
        s.literal_bytes
    );
    assert_eq!(s.literal_bytes + s.matched_bytes, size);
    assert_same_tree_ns(&src, &dst, ns, false);
}

#[test]
fn push_protocol_32() {
    push_then_delta(None);
}

#[test]
fn push_protocol_31() {
    push_then_delta(Some(31));
}

#[test]
fn push_protocol_30() {
    push_then_delta(Some(30));
}

#[test]
fn push_compressed_zlibx() {
    for protocol in [None, Some(30)] {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let big = make_tree(&src, 1 << 20);
        std::fs::write(src.join("text.txt"), "compressible text ".repeat(20_000)).unwrap();
        let s = push_z(&src, &dst, protocol);
        assert_eq!(s.files_transferred, 9);
        // 360 KB of text must have been sent compressed.
        assert!(
            s.bytes_written < (1 << 20) + 150_000,
            "{} bytes on the wire",
            s.bytes_written
        );
        assert_same_tree_ns(&src, &dst, protocol.is_none(), false);
        touch_up_one_percent(&big);
        let s = push_z(&src, &dst, protocol);
        assert_eq!(s.files_transferred, 1);
        assert!(s.matched_bytes > 900_000, "{s:?}");
        assert_same_tree_ns(&src, &dst, protocol.is_none(), false);
    }
}

fn push_z(
    src: &std::path::Path,
    dst: &std::path::Path,
    protocol: Option<i32>,
) -> arsync_remote::pull::TransferSummary {
    let mut opts = PushOptions::new(src, format!("{}/", dst.display()));
    opts.command.protocol = protocol;
    opts.command.flags = "logDtprz".into();
    push(&opts).unwrap_or_else(|e| panic!("push failed: {e}"))
}

#[test]
fn push_directory_itself_and_a_single_file() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 10_000);
    let mut o = PushOptions::new(&src, format!("{}/", dst.display()));
    o.contents = false;
    push(&o).unwrap_or_else(|e| panic!("{e}"));
    assert_same_tree_ns(&src, &dst.join("src"), true, false);

    let single = PushOptions::new(src.join("a/one.bin"), format!("{}/", dst.display()));
    push(&single).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(dst.join("one.bin")).unwrap(),
        std::fs::read(src.join("a/one.bin")).unwrap()
    );
}

#[test]
fn pull_directory_itself() {
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    make_tree(&src, 10_000);
    let o = arsync_remote::pull::PullOptions::new(src.display().to_string(), &dst);
    arsync_remote::pull::pull(&o).unwrap_or_else(|e| panic!("{e}"));
    assert_same_tree(&src, &dst.join("src"));
}
