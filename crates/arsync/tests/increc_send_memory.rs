//! Memory of sending an incremental file list: the sending arsync holds the
//! lists the receiver is working through and the directories still to
//! list, not the tree (in a test binary of its own, so that the peak RSS
//! measured is not the test process's: a spawned child starts with its
//! parent's).

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
/// the largest of the process and the descendants it waited for: for the
/// pushing arsync also the rsync server behind the stand-in ssh, for an
/// rsync client the arsync server).
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

/// 100,000 empty files in 1,000 directories, sent by arsync to rsync: a
/// push (arsync the client) and a pull by rsync (arsync the sending
/// server). Sending the whole list (before; still so with `--no-i-r`)
/// took about 50 MiB in a debug build; incremental lists stay under half.
#[test]
fn sending_a_large_tree_keeps_memory_bounded() {
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
