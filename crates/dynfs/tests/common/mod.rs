//! Helpers for tests that run the `dynfs` binary and mount pools with FUSE.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dynfs");

/// True when FUSE mounting is possible; prints why not otherwise.
pub fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        println!("SKIP: /dev/fuse is absent; FUSE integration tests not run");
        return false;
    }
    true
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running dynfs")
}

pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dynfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pool with disks on /dev/shm and a mount point under /tmp.
pub struct Mounted {
    pub tmp: tempfile::TempDir,
    pub mnt_dir: tempfile::TempDir,
    pub pool: PathBuf,
    pub disks: Vec<PathBuf>,
    pub mounted: bool,
    pub child: Option<Child>,
}

impl Mounted {
    pub fn new(ndisks: usize, policy: &str, extent: &str) -> Self {
        let tmp = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let mnt_dir = tempfile::Builder::new()
            .prefix("dynfs-mnt")
            .tempdir_in("/tmp")
            .unwrap();
        let disks: Vec<PathBuf> = (0..ndisks)
            .map(|i| {
                let d = tmp.path().join(format!("disk{i}"));
                std::fs::create_dir(&d).unwrap();
                d
            })
            .collect();
        let pool = tmp.path().join("pool");
        let mut args = vec!["init".to_string(), pool.to_string_lossy().into_owned()];
        for d in &disks {
            args.push("--disk".into());
            args.push(d.to_string_lossy().into_owned());
        }
        args.extend([
            "--policy".into(),
            policy.into(),
            "--extent-size".into(),
            extent.into(),
        ]);
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        run_ok(&a);
        Mounted {
            tmp,
            mnt_dir,
            pool,
            disks,
            mounted: false,
            child: None,
        }
    }

    pub fn mnt(&self) -> &Path {
        self.mnt_dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// Mount as a detached daemon (returns once the mount is ready).
    pub fn mount(&mut self) {
        let log = self.tmp.path().join("mount.log");
        run_ok(&[
            "mount",
            self.pool.to_str().unwrap(),
            self.mnt().to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ]);
        self.mounted = true;
    }

    /// Mount in the foreground as a child process (so the test can kill it).
    pub fn mount_foreground(&mut self) {
        let child = Command::new(BIN)
            .args([
                "mount",
                self.pool.to_str().unwrap(),
                self.mnt().to_str().unwrap(),
                "--foreground",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.mounted = true;
        let start = Instant::now();
        while !is_mounted(self.mnt()) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the foreground daemon with SIGKILL. The dead mount stays in place (so writers see
    /// `ENOTCONN` instead of writing into the directory underneath) until [`Mounted::detach_dead`].
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Detach a dead mount and wait until the pool is free.
    pub fn detach_dead(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(self.mnt())
            .status();
        self.mounted = false;
        self.wait_released();
    }

    /// Unmount cleanly and wait until the daemon has released the pool.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        // Tests run in parallel threads, and a child process another test forks holds
        // inherited descriptors (also ones into this mount) until it execs: an unmount can
        // meet a transient EBUSY. Retry for a while before failing.
        let start = Instant::now();
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(self.mnt())
                .output()
                .expect("fusermount3");
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("busy") && start.elapsed() < Duration::from_secs(10),
                "fusermount3 -u failed: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.mounted = false;
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
        self.wait_released();
    }

    /// Wait until the pool lock is free (the daemon has exited). `dynfs status`
    /// cannot tell: it also answers for a mounted pool.
    pub fn wait_released(&self) {
        let start = Instant::now();
        while !lock_is_free(&self.pool.join("pool.lock")) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon did not release the pool"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether nobody holds the pool's flock (taking it briefly to find out).
fn lock_is_free(lock: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(lock) else {
        return true;
    };
    // SAFETY: flock on a descriptor owned by `f`, which stays open for the call;
    // the lock is released when `f` is dropped at the end of this function.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.mnt())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.to_string_lossy();
    m.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Build a tree with every metadata kind: files of many sizes (including sparse and empty),
/// nested directories, symlinks, hard links, a FIFO, xattrs, odd modes and old mtimes.
pub fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    for (i, len) in [
        0usize, 1, 100, 4095, 4096, 65535, 65536, 65537, 300_000, 1_100_000,
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(root.join(format!("a/f{i}")), bytes(i as u64, *len)).unwrap();
    }
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    std::os::unix::fs::symlink("../f1", root.join("a/b/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("a/f3"), root.join("hard")).unwrap();
    std::fs::set_permissions(root.join("a/f2"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("a/f4"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    sh(&format!("mkfifo '{}'", root.join("fifo").display()));
    sh(&format!(
        "truncate -s 5M '{}' && printf x | dd of='{}' bs=1 seek=3000000 conv=notrunc status=none",
        root.join("sparse").display(),
        root.join("sparse").display()
    ));
    sh(&format!(
        "setfattr -n user.color -v blue '{}'",
        root.join("a/f5").display()
    ));
    sh(&format!(
        "setfattr -n user.empty '{}'",
        root.join("a/f6").display()
    ));
    sh(&format!(
        "touch -h -d '2001-02-03 04:05:06.123456789' '{}' '{}' '{}'",
        root.join("a/f7").display(),
        root.join("a/b/link").display(),
        root.join("empty-dir").display()
    ));
    sh(&format!(
        "chown 1234:5678 '{}'",
        root.join("a/f8").display()
    ));
}

/// rsync's view of differences between two trees (empty when identical in content and
/// metadata, including hard links, ACLs and xattrs).
pub fn rsync_diff(a: &Path, b: &Path) -> String {
    let out = sh(&format!(
        "rsync -aHAXc --dry-run --itemize-changes --delete '{}/' '{}/'",
        a.display(),
        b.display()
    ));
    out.trim_end().to_string()
}
