//! `--watch`: the real binary keeps a destination in sync while the source changes.
//!
//! Each test starts `arsync ... --watch` as a child, changes the source tree and polls (with a
//! timeout, no fixed sleeps) until the destination equals it, then stops the child with a
//! signal and checks the exit code and that no temporary files remain.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arsync_testutil::{compare_trees, scratch_dir, CompareOpts, Difference};

fn arsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arsync"))
}

/// A running `arsync --watch` whose stdout lines are collected; killed if a test fails.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Watch {
    fn start(args: &[&str], src: &Path, dst: &Path) -> Watch {
        Watch::start_with_env(args, src, dst, &[])
    }

    fn start_with_env(args: &[&str], src: &Path, dst: &Path, env: &[(&str, &str)]) -> Watch {
        let mut cmd = Command::new(arsync_bin());
        cmd.envs(env.iter().copied())
            .args(args)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", dst.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn arsync: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut v) = lines.lock() {
                        v.push(l);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&l);
                        s.push('\n');
                    }
                }
            });
        }
        Watch {
            child,
            lines,
            stderr,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number has no memory
        // effects on this process.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Sends `sig` and waits for the exit code (panics after 10 s).
    fn stop(mut self, sig: i32) -> i32 {
        self.signal(sig);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st.code().unwrap_or(-1),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("arsync did not exit after signal {sig}: {other:?}"),
            }
        }
    }

    /// Panics if the child exited (it must keep watching).
    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("arsync --watch exited early: {st}\n{}", self.stderr());
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `ok` returns no differences (at most 15 s); panics with the last ones.
fn wait_until(w: &mut Watch, what: &str, ok: impl Fn() -> Vec<Difference>) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let diffs = ok();
        if diffs.is_empty() {
            return;
        }
        w.assert_running();
        if Instant::now() > end {
            panic!(
                "{what}: destination did not catch up: {diffs:#?}\nstderr:\n{}",
                w.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_synced(w: &mut Watch, what: &str, src: &Path, dst: &Path) {
    wait_until(w, what, || compare_trees(src, dst, &CompareOpts::default()));
}

/// Entries anywhere below `root` whose names look like arsync's temporaries (`.name.XXXXXX`).
fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found
}

fn set_mtime(p: &Path, secs: i64) {
    arsync_testutil::set_mtime(p, secs, 0).unwrap();
}

#[test]
fn watch_follows_creates_changes_renames_and_deletes() -> std::io::Result<()> {
    let t = scratch_dir()?;
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(src.join("d1/d2"))?;
    std::fs::write(src.join("a"), b"alpha")?;
    std::fs::write(src.join("d1/b"), b"beta")?;
    std::fs::write(src.join("d1/d2/c"), b"gamma")?;
    std::fs::create_dir_all(src.join("old/deep"))?;
    std::fs::write(src.join("old/deep/x"), b"x")?;

    let mut w = Watch::start(
        &["-a", "--delete", "--watch", "--watch-delay=50"],
        &src,
        &dst,
    );
    wait_synced(&mut w, "initial sync", &src, &dst);

    std::fs::write(src.join("new"), b"new file")?;
    wait_synced(&mut w, "create", &src, &dst);

    std::fs::write(src.join("d1/b"), b"beta, longer now")?;
    wait_synced(&mut w, "content change", &src, &dst);
    // Rewritten at once with the same size: the same second, but not the same nanosecond.
    std::fs::write(src.join("d1/b"), b"BETA, LONGER NOW")?;
    wait_synced(&mut w, "same-size rewrite", &src, &dst);

    std::fs::set_permissions(src.join("d1/d2/c"), std::fs::Permissions::from_mode(0o600))?;
    set_mtime(&src.join("d1/d2/c"), 1_000_000_000);
    wait_synced(&mut w, "mode and mtime", &src, &dst);

    std::fs::rename(src.join("a"), src.join("d1/a-renamed"))?;
    wait_synced(&mut w, "file rename", &src, &dst);

    std::fs::rename(src.join("d1"), src.join("e1"))?;
    wait_synced(&mut w, "directory rename", &src, &dst);
    // The moved directory is still watched under its new name.
    std::fs::write(src.join("e1/d2/after-move"), b"m")?;
    wait_synced(&mut w, "change in a moved directory", &src, &dst);
    std::fs::remove_file(src.join("e1/d2/after-move"))?;
    wait_synced(&mut w, "delete in a subdirectory", &src, &dst);
    // A destination directory removed behind arsync's back comes back with the next change.
    std::fs::remove_dir_all(dst.join("e1"))?;
    std::fs::write(src.join("e1/d2/again"), b"again")?;
    wait_synced(&mut w, "destination repaired", &src, &dst);

    std::fs::remove_file(src.join("new"))?;
    std::fs::remove_dir_all(src.join("old"))?;
    wait_synced(&mut w, "deletes", &src, &dst);

    // A new directory tree filled at once, before any watch on it can exist.
    std::fs::create_dir_all(src.join("fresh/a/b/c"))?;
    for (i, p) in ["fresh/1", "fresh/a/2", "fresh/a/b/3", "fresh/a/b/c/4"]
        .iter()
        .enumerate()
    {
        std::fs::write(src.join(p), vec![b'z'; i * 1000])?;
    }
    wait_synced(&mut w, "new directory tree", &src, &dst);
    // Its directories are watched from now on.
    std::fs::write(src.join("fresh/a/b/c/5"), b"later")?;
    wait_synced(&mut w, "change in a new directory", &src, &dst);

    // A directory's own metadata.
    std::fs::set_permissions(src.join("fresh/a"), std::fs::Permissions::from_mode(0o750))?;
    wait_synced(&mut w, "directory mode", &src, &dst);

    let code = w.stop(libc::SIGTERM);
    assert_eq!(code, 20, "exit code after SIGTERM");
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new());
    let diffs = compare_trees(&src, &dst, &CompareOpts::default());
    assert!(diffs.is_empty(), "{diffs:#?}");
    Ok(())
}

#[test]
fn watch_honours_filters_and_itemizes_one_line_per_burst() -> std::io::Result<()> {
    let t = scratch_dir()?;
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("keep.txt"), b"k")?;
    std::fs::write(src.join("skip.tmp"), b"s")?;
    std::fs::create_dir_all(src.join("sub/cache"))?;
    std::fs::create_dir_all(src.join("other/anchored"))?;
    std::fs::write(src.join("sub/cache/c"), b"c")?;

    let mut w = Watch::start(
        &[
            "-a",
            "-i",
            "--delete",
            "--exclude=*.tmp",
            "--exclude=cache/",
            "--exclude=/other/anchored",
            "--watch",
            // Long enough that a loaded machine's late 10 ms sleeps do not split the burst.
            "--watch-delay=800",
        ],
        &src,
        &dst,
    );
    let opts = CompareOpts::default()
        .skipping("skip.tmp")
        .skipping("sub/cache")
        .skipping("other/anchored");
    wait_until(&mut w, "initial sync", || compare_trees(&src, &dst, &opts));
    assert!(!dst.join("skip.tmp").exists());

    // An excluded file created while watching stays out; an included one comes in.
    std::fs::write(src.join("more.tmp"), b"m")?;
    std::fs::write(src.join("more.txt"), b"m")?;
    let opts = opts.skipping("more.tmp");
    wait_until(&mut w, "filtered create", || {
        compare_trees(&src, &dst, &opts)
    });
    assert!(!dst.join("more.tmp").exists());
    // Changes inside an excluded directory are not transferred; a sibling's are.
    std::fs::write(src.join("sub/cache/c2"), b"c")?;
    std::fs::write(src.join("sub/cache/c"), b"changed")?;
    std::fs::write(src.join("other/anchored/a"), b"a")?;
    std::fs::write(src.join("other/o"), b"o")?;
    wait_until(&mut w, "excluded directory", || {
        compare_trees(&src, &dst, &opts)
    });
    assert!(!dst.join("sub/cache").exists());
    assert!(!dst.join("other/anchored").exists());

    // Twenty writes 10 ms apart settle into one re-sync: one itemized line.
    for i in 0..20u8 {
        std::fs::write(src.join("burst"), vec![i; 100 + usize::from(i)])?;
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_until(&mut w, "burst", || compare_trees(&src, &dst, &opts));
    // The destination only matches once the burst's last write was synced: a re-sync in
    // the middle of the burst would show up as a second line.
    let burst_lines = || -> Vec<String> {
        w.lines()
            .into_iter()
            .filter(|l| l.ends_with(" burst"))
            .collect()
    };
    // The itemized line may reach the pipe just after the file.
    let end = Instant::now() + Duration::from_secs(10);
    while burst_lines().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let burst_lines = burst_lines();
    assert_eq!(burst_lines.len(), 1, "{burst_lines:?}");
    assert!(burst_lines[0].starts_with(">f+++++++++"), "{burst_lines:?}");
    assert!(w.lines().iter().any(|l| l.ends_with(" more.txt")));
    assert!(!w.lines().iter().any(|l| l.contains(".tmp")));

    // SIGINT ends it like SIGTERM.
    assert_eq!(w.stop(libc::SIGINT), 20);
    Ok(())
}

#[test]
fn watch_interrupted_mid_copy_leaves_no_temporaries() -> std::io::Result<()> {
    let t = scratch_dir()?;
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("small"), b"s")?;
    let mut w = Watch::start(
        &["-a", "--bwlimit=500", "--watch", "--watch-delay=20"],
        &src,
        &dst,
    );
    wait_synced(&mut w, "initial sync", &src, &dst);
    // 8 MiB at 500 KiB/s takes seconds: stop it while the temporary file exists.
    std::fs::write(src.join("big"), vec![7u8; 8 << 20])?;
    let end = Instant::now() + Duration::from_secs(15);
    while temporaries(&dst).is_empty() {
        w.assert_running();
        assert!(Instant::now() < end, "no transfer started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(w.stop(libc::SIGTERM), 20);
    assert_eq!(temporaries(&dst), Vec::<PathBuf>::new());
    assert!(!dst.join("big").exists());
    Ok(())
}

#[test]
fn watch_limit_falls_back_to_periodic_full_resyncs() -> std::io::Result<()> {
    let t = scratch_dir()?;
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for d in ["a/b/c", "d/e", "f"] {
        std::fs::create_dir_all(src.join(d))?;
    }
    let mut cmd_env = Watch::start_with_env(
        &[
            "-a",
            "--delete",
            "--watch",
            "--watch-delay=20",
            "--watch-interval=1",
        ],
        &src,
        &dst,
        &[("ARSYNC_WATCH_MAX_DIRS", "1")],
    );
    let w = &mut cmd_env;
    wait_synced(w, "initial sync", &src, &dst);
    // Only the root is watched: changes below it come with the periodic full re-sync.
    for d in ["a/b/c", "d/e", "f"] {
        std::fs::write(src.join(d).join("late"), d.as_bytes())?;
    }
    wait_synced(w, "periodic re-sync", &src, &dst);
    let err = w.stderr();
    assert!(
        err.contains("watch limit") && err.matches("arsync warning").count() == 1,
        "{err}"
    );
    assert_eq!(cmd_env.stop(libc::SIGTERM), 20);
    Ok(())
}

#[test]
fn watch_start_errors_are_those_of_a_normal_run() -> std::io::Result<()> {
    let t = scratch_dir()?;
    let missing = t.path().join("missing");
    let dst = t.path().join("dst");
    let run = |extra: &[&str]| {
        Command::new(arsync_bin())
            .arg("-a")
            .args(extra)
            .arg(format!("{}/", missing.display()))
            .arg(&dst)
            .output()
    };
    let plain = run(&[])?;
    let watched = run(&["--watch"])?;
    assert_eq!(plain.status.code(), Some(23));
    assert_eq!(watched.status.code(), plain.status.code());
    assert!(String::from_utf8_lossy(&watched.stderr).contains("change_dir"));

    // A remote side is refused with a usage error.
    std::fs::create_dir_all(t.path().join("src"))?;
    let out = Command::new(arsync_bin())
        .args(["-a", "--watch"])
        .arg(t.path().join("src"))
        .arg("somehost:dst")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--watch"));

    // Bad values are usage errors.
    let out = Command::new(arsync_bin())
        .args(["-a", "--watch", "--watch-delay=soon"])
        .arg(t.path().join("src"))
        .arg(&dst)
        .output()?;
    assert_eq!(out.status.code(), Some(1));

    // --help documents it.
    let out = Command::new(arsync_bin()).arg("--help").output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--watch") && help.contains("--watch-delay"),
        "{help}"
    );
    Ok(())
}
