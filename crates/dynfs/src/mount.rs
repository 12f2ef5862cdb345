//! `dynfs mount`: open the pool, mount with FUSE (via fusermount3), and serve requests; without
//! `--foreground`, fork first and let the parent exit once the child reports the mount ready.
//! Beside the FUSE session the daemon runs the background scrub ([`crate::jobs`]), the control
//! socket ([`crate::control`]), the periodic metadata commit and the status publisher.

use crate::fuse::DynFuse;
use anyhow::{bail, Context, Result};
use fuser::MountOption;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Options of a mounted daemon beyond the pool and the mount point.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Stay in the foreground.
    pub foreground: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<String>,
    /// Pause between background scrub passes (zero: scrub continuously).
    pub scrub_interval: Duration,
}

fn options() -> Vec<MountOption> {
    let mut o = vec![
        MountOption::FSName("dynfs".into()),
        MountOption::Subtype("dynfs".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        o.push(MountOption::AllowOther);
    }
    o
}

fn serve(pool: &Path, mountpoint: &Path, opts: &MountOptions, ready: impl FnOnce()) -> Result<()> {
    let fs = crate::cli::open_fs(pool)?;
    let jobs = crate::jobs::Jobs::new(fs.pool().clone(), opts.scrub_interval);
    if let Some(addr) = &opts.metrics {
        crate::metrics::spawn(addr, fs.pool(), Some(&jobs))?;
    }
    let mut session = fuser::Session::new(DynFuse::new(fs.clone()), mountpoint, &options())
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    tracing::info!(pool = %pool.display(), mountpoint = %mountpoint.display(), "mounted");
    let control = match crate::control::start(fs.clone(), jobs.clone(), Some(session.notifier())) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no control socket; admin commands cannot reach this mount");
            None
        }
    };
    jobs.start_background()
        .context("starting the background scrub")?;
    spawn_status_publisher(&jobs);
    spawn_committer(fs.pool().clone());
    ready();
    let r = session.run().context("serving FUSE requests");
    // Unmounted: stop jobs at their next extent (they keep their checkpoints), then close.
    jobs.shutdown();
    if let Some(c) = control {
        c.stop();
    }
    drop(jobs);
    if let Err(e) = fs.pool().meta.sync() {
        tracing::error!(error = %e, "final metadata commit failed");
    }
    let _ = std::fs::remove_file(pool.join(dynfs_core::status::STATUS_FILE));
    tracing::info!("unmounted");
    r
}

/// Mount `pool` at `mountpoint`.
pub fn mount(pool: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if opts.foreground {
        return serve(pool, mountpoint, opts, || {});
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded here (no pool opened, no threads started yet), so
    // the child may safely continue running Rust code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid > 0 {
        // Parent: wait until the child says the mount is ready (or fails).
        drop(wr);
        let mut msg = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut msg);
        if msg.starts_with("ok") {
            return Ok(());
        }
        if msg.is_empty() {
            bail!("mount daemon exited before the mount was ready");
        }
        bail!("{}", msg.trim_end());
    }
    // Child.
    drop(rd);
    // SAFETY: setsid has no memory-safety preconditions; detaches from the controlling terminal.
    unsafe { libc::setsid() };
    let mut wr = Some(std::fs::File::from(wr));
    let r = serve(pool, mountpoint, opts, || {
        if let Some(mut w) = wr.take() {
            let _ = w.write_all(b"ok\n");
        }
        detach_stdio();
    });
    if let (Err(e), Some(mut w)) = (&r, wr) {
        let _ = writeln!(w, "{e:#}");
    }
    r
}

/// Point stdin/stdout/stderr at /dev/null so the parent's pipes close.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors with a valid open descriptor.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Commit interval: lazy metadata commits become durable at least this often.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Every [`COMMIT_INTERVAL`], make lazy metadata commits durable (like a journal commit).
fn spawn_committer(pool: std::sync::Arc<dynfs_core::Pool>) {
    let weak = std::sync::Arc::downgrade(&pool);
    drop(pool);
    let _ = std::thread::Builder::new()
        .name("dynfs-commit".into())
        .spawn(move || loop {
            std::thread::sleep(COMMIT_INTERVAL);
            let Some(pool) = weak.upgrade() else { return };
            // Fragments first, outside the metadata lock (as `Fs::sync`), so requests that
            // commit lazily meanwhile do not wait for a whole `syncfs`.
            if let Err(e) = pool.sync_fragments().and_then(|()| pool.meta.sync()) {
                tracing::error!(error = %e, "periodic metadata commit failed");
            }
        });
}

/// Every 30 s, publish the pool status (with the running job and the background scrub) to
/// `POOL/status.json`, for `dynfs status` run by users who may not use the control socket.
fn spawn_status_publisher(jobs: &Arc<crate::jobs::Jobs>) {
    let weak = Arc::downgrade(jobs);
    let _ = std::thread::Builder::new()
        .name("dynfs-status".into())
        .spawn(move || loop {
            let Some(jobs) = weak.upgrade() else { return };
            if jobs.shutting_down() {
                return;
            }
            match jobs.status() {
                Ok(st) => {
                    if let Err(e) = st.publish(jobs.pool().dir()) {
                        tracing::warn!(error = %e, "cannot publish status");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot gather status"),
            }
            drop(jobs);
            std::thread::sleep(Duration::from_secs(30));
        });
}
