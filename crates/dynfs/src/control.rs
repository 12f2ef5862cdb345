//! The control channel of a mounted pool: a Unix socket `POOL/control.sock` (mode 0600, and
//! only clients running as root or as the daemon's user are served) through which `dynfs`
//! admin commands act on the mounted daemon instead of opening the pool themselves.
//!
//! Protocol: the client sends one request as a JSON object on one line; the daemon answers
//! with JSON lines: any number of `{"progress":{"job":..,"done":..,"total":..}}`, then exactly
//! one `{"ok":VALUE}` or `{"error":"message"}`, and closes the connection. A client that
//! disconnects stops its job (the job's checkpoint is kept, so it resumes later).

use crate::jobs::{ClientHooks, Jobs};
use anyhow::{anyhow, bail, Context, Result};
use dynfs_core::scrub::{self, ScrubOptions};
use dynfs_core::{snapshot, Fs, Health};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the socket in the pool directory.
pub const SOCKET: &str = "control.sock";

/// A path naming `POOL/control.sock` that fits in a Unix socket address (108 bytes). A longer
/// pool path is reached through `/proc/self/fd/N/` of a descriptor of the pool directory,
/// which is returned alongside and must stay open while the path is used.
fn socket_path(pool: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let direct = pool.join(SOCKET);
    if direct.as_os_str().len() < 100 {
        return Ok((direct, None));
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(pool)?;
    let p = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()));
    Ok((p, Some(dir)))
}

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Full status (with the running job and the background scrub).
    Status,
    /// Scrub every fragment now (the background scrub pauses meanwhile).
    Scrub {
        /// Rewrite bad fragments.
        repair: bool,
        /// Rate in MB/s (default: pool.toml's `scrub_rate_mb_s`; 0 = unlimited).
        rate_mb_s: Option<f64>,
    },
    /// Rebuild fragments on missing, failed or draining disks.
    Rebuild,
    /// Mark a disk draining and move its fragments elsewhere.
    Drain {
        /// Disk id.
        disk: u32,
    },
    /// Set a disk's health.
    SetHealth {
        /// Disk id.
        disk: u32,
        /// New health.
        health: String,
    },
    /// Add a disk (absolute path).
    AddDisk {
        /// Disk directory.
        dir: PathBuf,
    },
    /// Remove a drained or failed disk that holds no fragments.
    RemoveDisk {
        /// Disk id.
        disk: u32,
    },
    /// Orphan collection.
    Gc,
    /// Create a snapshot.
    SnapshotCreate {
        /// Snapshot name.
        name: String,
    },
    /// List snapshots.
    SnapshotList,
    /// Restore a snapshot (replaces the live tree).
    SnapshotRestore {
        /// Snapshot name.
        name: String,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Snapshot name.
        name: String,
    },
}

/// One line of the daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Progress of a long job.
    Progress {
        /// `scrub`, `rebuild` or `drain`.
        job: String,
        /// Extents done in this pass.
        done: u64,
        /// Extents in the pool.
        total: u64,
    },
    /// Final answer: success with a value.
    Ok(serde_json::Value),
    /// Final answer: failure.
    Error(String),
}

/// The result of a drain, as sent by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainResult {
    /// The rebuild report.
    pub report: scrub::RebuildReport,
    /// Fragments still on the disk.
    pub remaining: u64,
}

/// A running control server.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// Uid of the peer of a connected Unix socket.
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, as
    // SO_PEERCRED requires; the descriptor is owned by `s` and open for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bind `POOL/control.sock` and serve requests from a background thread. The caller holds the
/// pool lock, so a socket file left by a dead daemon is stale and is replaced.
pub fn start(fs: Arc<Fs>, jobs: Arc<Jobs>, kernel: Option<fuser::Notifier>) -> Result<Server> {
    use std::os::unix::fs::PermissionsExt;
    let path = fs.pool().dir().join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let (addr, _dir) =
        socket_path(fs.pool().dir()).with_context(|| format!("binding {}", path.display()))?;
    let listener =
        UnixListener::bind(&addr).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let (stop2, active2) = (stop.clone(), active.clone());
    let thread = std::thread::Builder::new()
        .name("dynfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let c = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "control accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let (fs, jobs, active) = (fs.clone(), jobs.clone(), active2.clone());
                let kernel = kernel.clone();
                active.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new()
                    .name("dynfs-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_conn(c, &fs, &jobs, kernel.as_ref()) {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    active2.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(error = %e, "cannot start a control connection thread");
                }
            }
        })?;
    tracing::info!(socket = %path.display(), "control socket ready");
    Ok(Server {
        path,
        stop,
        active,
        thread: Some(thread),
    })
}

impl Server {
    /// Stop accepting, remove the socket, and wait (up to 30 s) for running requests; the
    /// caller should have asked the jobs to shut down first so long jobs stop promptly.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        if let Ok((addr, _dir)) = socket_path(self.path.parent().unwrap_or(Path::new("/"))) {
            let _ = UnixStream::connect(addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let start = Instant::now();
        while self.active.load(Ordering::SeqCst) > 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn send(w: &Mutex<UnixStream>, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line)
}

fn serve_conn(
    c: UnixStream,
    fs: &Arc<Fs>,
    jobs: &Jobs,
    kernel: Option<&fuser::Notifier>,
) -> std::io::Result<()> {
    let uid = peer_uid(&c)?;
    let writer = Mutex::new(c.try_clone()?);
    if uid != 0 && uid != euid() {
        return send(
            &writer,
            &Reply::Error(format!(
                "permission denied: uid {uid} may not control this pool"
            )),
        );
    }
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new((&c).take(MAX_REQUEST)).read_line(&mut line)?;
    let req: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => return send(&writer, &Reply::Error(format!("bad request: {e}"))),
    };
    tracing::info!(request = ?req, uid, "control request");
    let gone = AtomicBool::new(false);
    let last = Mutex::new(Instant::now());
    let job = match &req {
        Request::Scrub { .. } => "scrub",
        Request::Drain { .. } => "drain",
        _ => "rebuild",
    };
    let position = |done: u64, total: u64| {
        let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
        if l.elapsed() < Duration::from_millis(500) {
            return;
        }
        *l = Instant::now();
        let p = Reply::Progress {
            job: job.into(),
            done,
            total,
        };
        if send(&writer, &p).is_err() {
            gone.store(true, Ordering::Relaxed);
        }
    };
    let is_gone = || gone.load(Ordering::Relaxed);
    let hooks = ClientHooks {
        gone: &is_gone,
        position: &position,
    };
    let reply = match handle(&req, fs, jobs, &hooks, kernel) {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(format!("{e:#}")),
    };
    send(&writer, &reply)
}

fn interrupted(jobs: &Jobs, what: &str) -> anyhow::Error {
    if jobs.shutting_down() {
        anyhow!("{what} interrupted: the pool is being unmounted; it resumes from its checkpoint")
    } else {
        anyhow!("{what} interrupted; it resumes from its checkpoint")
    }
}

fn handle(
    req: &Request,
    fs: &Arc<Fs>,
    jobs: &Jobs,
    hooks: &ClientHooks<'_>,
    kernel: Option<&fuser::Notifier>,
) -> Result<serde_json::Value> {
    let pool = jobs.pool();
    let msg = |s: String| Ok(serde_json::Value::String(s));
    match req {
        Request::Status => Ok(serde_json::to_value(jobs.status()?)?),
        Request::Scrub { repair, rate_mb_s } => {
            let rate = rate_mb_s.unwrap_or(pool.config().scrub_rate_mb_s);
            if rate < 0.0 || !rate.is_finite() {
                bail!("the rate must be a number >= 0");
            }
            let opts = ScrubOptions {
                repair: *repair,
                rate_mb_s: rate,
                max_extents: None,
            };
            let r = jobs.run_exclusive("scrub", Some(hooks), |obs| {
                scrub::scrub_with(pool, opts, obs, &mut |_, _| {})
            })?;
            if !r.complete {
                return Err(interrupted(jobs, "scrub"));
            }
            Ok(serde_json::to_value(r)?)
        }
        Request::Rebuild => {
            let r = jobs.run_exclusive("rebuild", Some(hooks), |obs| {
                scrub::rebuild_with(pool, None, obs, &mut |_, _| {})
            })?;
            if scrub::rebuild_checkpoint(pool)?.is_some() {
                return Err(interrupted(jobs, "rebuild"));
            }
            Ok(serde_json::to_value(r)?)
        }
        Request::Drain { disk } => {
            let r = jobs.run_exclusive("drain", Some(hooks), |obs| {
                scrub::drain_with(pool, *disk, obs, &mut |_, _| {})
            })?;
            if scrub::rebuild_checkpoint(pool)?.is_some() {
                return Err(interrupted(jobs, "drain"));
            }
            let remaining = pool.fragments_on(*disk)?;
            Ok(serde_json::to_value(DrainResult {
                report: r,
                remaining,
            })?)
        }
        Request::SetHealth { disk, health } => {
            let h: Health = health.parse()?;
            pool.set_health(*disk, h)?;
            msg(format!("disk {disk} is now {h}"))
        }
        Request::AddDisk { dir } => {
            if !dir.is_absolute() {
                bail!("the disk directory must be an absolute path");
            }
            let id = pool.add_disk(dir)?;
            msg(format!("added disk {id}: {}", dir.display()))
        }
        Request::RemoveDisk { disk } => {
            let d = pool
                .disks()
                .into_iter()
                .find(|d| d.id == *disk)
                .ok_or_else(|| anyhow!("no disk with id {disk} in this pool"))?;
            if d.present && !d.health().evacuate() {
                bail!(
                    "disk {disk} is {}: on a mounted pool, drain it first (`dynfs disk drain`) \
                     or mark it failed, so that no new fragment lands on it while it is removed",
                    d.health()
                );
            }
            // No drain or rebuild may move fragments meanwhile.
            jobs.run_exclusive("remove", Some(hooks), |_| pool.remove_disk(*disk))?;
            msg(format!("removed disk {disk}"))
        }
        Request::Gc => {
            // No scrub, rebuild or drain may move fragments meanwhile.
            let r = jobs.run_exclusive("gc", Some(hooks), |_| fs.gc())?;
            Ok(serde_json::to_value(r)?)
        }
        Request::SnapshotCreate { name } => {
            fs.flush_all()?;
            let s = snapshot::create(pool, name)?;
            msg(format!("created snapshot {} (tree {})", s.name, s.tree))
        }
        Request::SnapshotList => {
            let list: Vec<serde_json::Value> = snapshot::list(pool)?
                .into_iter()
                .map(|s| serde_json::json!({"name": s.name, "created": s.created.secs}))
                .collect();
            Ok(serde_json::Value::Array(list))
        }
        Request::SnapshotRestore { name } => {
            // The names the kernel may have cached in the root before the restore.
            let before = kernel.map(|_| crate::fuse::root_names(fs)).transpose()?;
            jobs.run_exclusive("restore", Some(hooks), |_| fs.restore_snapshot(name))?;
            if let Some(k) = kernel {
                crate::fuse::invalidate_tree(k, fs, before.unwrap_or_default());
            }
            msg(format!("restored snapshot {name}"))
        }
        Request::SnapshotDelete { name } => {
            snapshot::delete(pool, name)?;
            msg(format!("deleted snapshot {name}"))
        }
    }
}

/// A connection to a mounted pool's daemon.
pub struct Client {
    stream: UnixStream,
}

/// Connect to the daemon of `pool` if it is mounted. `Ok(None)` when there is no socket or
/// nobody listens on it (the pool is not mounted, or its daemon died).
pub fn connect(pool: &Path) -> Result<Option<Client>> {
    let path = pool.join(SOCKET);
    let (addr, _dir) = match socket_path(pool) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", pool.display())),
    };
    match UnixStream::connect(&addr) {
        Ok(stream) => Ok(Some(Client { stream })),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(anyhow!(
            "the pool is mounted, and its control socket {} is only open to root and the \
             daemon's user",
            path.display()
        )),
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

impl Client {
    /// Send `req` and wait for the final answer, passing progress lines to `progress(job,
    /// done, total)`. A daemon error becomes an `Err` with its message.
    pub fn call(
        self,
        req: &Request,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<serde_json::Value> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        (&self.stream)
            .write_all(&line)
            .context("sending the request to the daemon")?;
        let mut rd = BufReader::new(&self.stream);
        loop {
            let mut l = String::new();
            let n = rd
                .read_line(&mut l)
                .context("reading the daemon's answer")?;
            if n == 0 {
                bail!("the daemon closed the connection without answering");
            }
            let r: Reply = serde_json::from_str(l.trim_end())
                .with_context(|| format!("malformed answer from the daemon: {}", l.trim_end()))?;
            match r {
                Reply::Progress { job, done, total } => progress(&job, done, total),
                Reply::Ok(v) => return Ok(v),
                Reply::Error(e) => bail!("{e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json_lines() {
        let r = Request::Scrub {
            repair: true,
            rate_mb_s: Some(5.0),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"scrub","repair":true,"rate_mb_s":5.0}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let s = serde_json::to_string(&Request::Drain { disk: 3 }).unwrap();
        assert_eq!(s, r#"{"op":"drain","disk":3}"#);
        let p = Reply::Progress {
            job: "scrub".into(),
            done: 1,
            total: 2,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"progress":{"job":"scrub","done":1,"total":2}}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Error("x".into())).unwrap(),
            r#"{"error":"x"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }
}
