//! Memory of an incremental file list: the receiving arsync holds a few
//! directories' entries at a time (in a test binary of its own, so that
//! the peak RSS measured is not the test process's: a spawned child starts
//! with its parent's).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use arsync_testutil::remote::install_fake_ssh;
use arsync_testutil::{count_second_level, peak_rss_kib, scratch_dir, wide_tree};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// 100,000 empty files in 1,000 directories: with incremental lists the
/// receiving arsync holds a few directories' entries at a time. The whole
/// list (as arsync received it before, and still does with
/// `--delete-after`) took about 50 MiB; the bound is half that.
#[test]
fn receiving_a_large_tree_keeps_memory_bounded() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    wide_tree(&src, 1000, 100).unwrap();
    let s = format!("{}/", src.display());
    let count = |d: &Path| count_second_level(d).unwrap();
    let limit = 25 * 1024;
    // A pull from rsync: arsync is the client receiver.
    let dst = tmp.path().join("pulled");
    let args: Vec<OsString> = vec![
        "-a".into(),
        "-e".into(),
        rsh.clone().into(),
        format!("h:{s}").into(),
        dst.clone().into(),
    ];
    let pulled = peak_rss_kib(&arsync_bin(), &args);
    assert_eq!(count(&dst), 100_000);
    fs::remove_dir_all(&dst).unwrap();
    // A push from rsync: arsync is the receiving server.
    let dst = tmp.path().join("pushed");
    let args: Vec<OsString> = vec![
        "-a".into(),
        "-e".into(),
        rsh.into(),
        "--rsync-path".into(),
        arsync_bin().into(),
        s.into(),
        format!("h:{}", dst.display()).into(),
    ];
    let pushed = peak_rss_kib(Path::new("rsync"), &args);
    assert_eq!(count(&dst), 100_000);
    eprintln!("peak RSS receiving 100k files: pull {pulled} KiB, push (server) {pushed} KiB");
    assert!(pulled < limit, "pull: {pulled} KiB");
    assert!(pushed < limit, "push: {pushed} KiB");
}
