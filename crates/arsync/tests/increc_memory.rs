//! Memory of an incremental file list: the receiving arsync holds a few
//! directories' entries at a time (in a test binary of its own, so that
//! the peak RSS measured is not the test process's: a spawned child starts
//! with its parent's).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arsync_testutil::remote::FAKE_SSH;
use arsync_testutil::scratch_dir;

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

fn fake_ssh(dir: &Path) -> String {
    let p = dir.join("fake-ssh");
    fs::write(&p, FAKE_SSH).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs `prog` and returns its peak RSS in KiB (`ru_maxrss` from `wait4`:
/// the largest of the process and the descendants it waited for, so for
/// an rsync client that is the arsync server behind the stand-in ssh).
fn peak_rss_kib(prog: &Path, args: &[OsString]) -> u64 {
    let child = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for the
    // call. The child is reaped here, so `child` is only dropped afterwards
    // (dropping a Child never waits).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} {args:?}: status {status}",
        prog.display()
    );
    usage.ru_maxrss as u64
}

/// 100,000 empty files in 1,000 directories: with incremental lists the
/// receiving arsync holds a few directories' entries at a time. The whole
/// list (as arsync received it before, and still does with
/// `--delete-after`) took about 50 MiB; the bound is half that.
#[test]
fn receiving_a_large_tree_keeps_memory_bounded() {
    let tmp = scratch_dir().unwrap();
    let rsh = fake_ssh(tmp.path());
    let src = tmp.path().join("src");
    for d in 0..1000 {
        let dir = src.join(format!("dir{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::File::create(dir.join(format!("file-with-a-longish-name-{f:03}"))).unwrap();
        }
    }
    let s = format!("{}/", src.display());
    let count = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .map(|e| fs::read_dir(e.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
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
