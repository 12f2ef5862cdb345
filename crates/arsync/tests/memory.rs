//! Peak memory of a sync of one huge flat directory.
//!
//! The target is a peak RSS under 100 MiB for a 1M-file tree. A flat directory is the
//! worst case: its whole listing is held while its entries are handled. Syncing a million
//! files takes minutes on a 2-core CI machine, so the test syncs `N` files, measures the
//! peak RSS of that run and of a run over a small directory, and projects the cost per entry
//! to a million entries.

mod common;

use arsync_testutil::peak_rss_kib;
use common::*;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Entries in the large directory.
const N: usize = 100_000;
/// Entries in the small directory the large run is compared with.
const SMALL: usize = 1_000;
/// The target: peak RSS for a million entries.
const LIMIT_KIB: u64 = 100 * 1024;

/// Creates `n` empty files `f0000000`... in `dir` with `mknodat` (one system call each),
/// on two threads.
fn make_flat(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    let d = File::open(dir).unwrap();
    std::thread::scope(|s| {
        for part in 0..2 {
            let d = &d;
            s.spawn(move || {
                for i in (part..n).step_by(2) {
                    let name = CString::new(format!("f{i:07}")).unwrap();
                    // SAFETY: `d` is an open directory descriptor and `name` a NUL-terminated
                    // string, both alive for the call.
                    let r = unsafe {
                        libc::mknodat(d.as_raw_fd(), name.as_ptr(), libc::S_IFREG | 0o644, 0)
                    };
                    assert_eq!(r, 0, "mknodat: {}", std::io::Error::last_os_error());
                }
            });
        }
    });
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn flat_directory_memory_projects_under_100_mib_for_a_million_files() {
    let w = scratch();
    let (small, big) = (w.path().join("small"), w.path().join("big"));
    make_flat(&small, SMALL);
    make_flat(&big, N);
    let run = |src: &Path, dst: &Path| {
        peak_rss_kib(
            &arsync_bin(),
            &[
                OsString::from("-a"),
                "--delete".into(),
                slash(src),
                slash(dst),
            ],
        )
    };
    let (ds, db) = (w.path().join("ds"), w.path().join("db"));
    let base = run(&small, &ds);
    let copy = run(&big, &db);
    assert_eq!(count(&db), N);
    // A no-op re-run with one extraneous file: the destination listing is streamed and only
    // names to delete are kept.
    fs::write(db.join("extra"), b"x").unwrap();
    let again = run(&big, &db);
    assert_eq!(count(&db), N);
    assert!(!db.join("extra").exists());

    for (what, peak) in [("copy", copy), ("no-op --delete", again)] {
        let per_entry = (peak.saturating_sub(base) * 1024) as f64 / (N - SMALL) as f64;
        let projected = base as f64 + per_entry * 1e6 / 1024.0;
        eprintln!(
            "{what}: {peak} KiB for {N} entries, {base} KiB for {SMALL}: \
             {per_entry:.0} bytes/entry, {projected:.0} KiB projected for 1M"
        );
        assert!(
            projected < LIMIT_KIB as f64,
            "{what}: peak {peak} KiB for {N} entries ({base} KiB for {SMALL}) projects to \
             {projected:.0} KiB for a million ({per_entry:.0} bytes per entry)"
        );
    }
    // The listing really holds every name (a bytewise arena): spot-check one.
    assert!(db.join(std::ffi::OsStr::from_bytes(b"f0098765")).exists());
}
