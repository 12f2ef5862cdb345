//! Memory of sending an incremental file list: the sending arsync holds the
//! lists the receiver is working through and the directories still to
//! list, not the tree (in a test binary of its own, so that the peak RSS
//! measured is not the test process's: a spawned child starts with its
//! parent's).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use arsync_testutil::remote::install_fake_ssh;
use arsync_testutil::{count_second_level, peak_rss_kib, scratch_dir, wide_tree};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// 100,000 empty files in 1,000 directories, sent by arsync to rsync: a
/// push (arsync the client) and a pull by rsync (arsync the sending
/// server). Sending the whole list (before; still so with `--no-i-r`)
/// took about 50 MiB in a debug build; incremental lists stay under half.
#[test]
fn sending_a_large_tree_keeps_memory_bounded() {
    let tmp = scratch_dir().unwrap();
    let rsh = install_fake_ssh(tmp.path()).unwrap();
    let src = tmp.path().join("src");
    wide_tree(&src, 1000, 100).unwrap();
    let s = format!("{}/", src.display());
    let count = |d: &Path| count_second_level(d).unwrap();
    let limit = 25 * 1024;
    // A push to rsync: arsync is the sending client.
    let dst = tmp.path().join("pushed");
    let args: Vec<OsString> = vec![
        "-a".into(),
        "-e".into(),
        rsh.clone().into(),
        s.clone().into(),
        format!("h:{}", dst.display()).into(),
    ];
    let pushed = peak_rss_kib(&arsync_bin(), &args);
    assert_eq!(count(&dst), 100_000);
    fs::remove_dir_all(&dst).unwrap();
    // A pull by rsync: arsync is the sending server.
    let dst = tmp.path().join("pulled");
    let args: Vec<OsString> = vec![
        "-a".into(),
        "-e".into(),
        rsh.into(),
        "--rsync-path".into(),
        arsync_bin().into(),
        format!("h:{s}").into(),
        dst.clone().into(),
    ];
    let pulled = peak_rss_kib(Path::new("rsync"), &args);
    assert_eq!(count(&dst), 100_000);
    eprintln!(
        "peak RSS sending 100k files: push (client) {pushed} KiB, pull (server) {pulled} KiB"
    );
    assert!(pushed < limit, "push: {pushed} KiB");
    assert!(pulled < limit, "pull: {pulled} KiB");
}
