//! Running the tools under test and measuring them.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `prog` with `args` (stdout discarded) and returns its peak RSS in KiB: `ru_maxrss`
/// from `wait4`, the largest of the process and the descendants it waited for (for a client
/// behind a stand-in ssh, also the server it ran). Panics, with the program's stderr, when
/// it cannot run or does not exit with 0.
pub fn peak_rss_kib(prog: &Path, args: &[OsString]) -> u64 {
    let errs = tempfile::tempfile().expect("a file for stderr");
    let child = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(errs.try_clone().expect("stderr handle"))
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", prog.display()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for the call. The child is
    // reaped here, so `child` is only dropped afterwards (dropping a Child never waits).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut errs = errs;
        let _ = errs.rewind().and_then(|()| errs.read_to_string(&mut text));
        panic!(
            "{} {args:?} failed (status {status}): {text}",
            prog.display()
        );
    }
    usage.ru_maxrss as u64
}

/// `dirs` directories `dir0000`... under `root`, each with `files` empty files with long
/// names: a wide tree whose file list is large and whose data is nothing.
pub fn wide_tree(root: &Path, dirs: usize, files: usize) -> std::io::Result<()> {
    for d in 0..dirs {
        let dir = root.join(format!("dir{d:04}"));
        fs::create_dir_all(&dir)?;
        for f in 0..files {
            fs::File::create(dir.join(format!("file-with-a-longish-name-{f:03}")))?;
        }
    }
    Ok(())
}

/// The number of entries one level below `root`'s directories (the files of a
/// [`wide_tree`] copy).
pub fn count_second_level(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(root)? {
        n += fs::read_dir(e?.path())?.count();
    }
    Ok(n)
}
