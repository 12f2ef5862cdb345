//! Transports: a child process over pipes (a local `rsync --server`, or a
//! remote shell such as ssh running it), and the session's I/O watchdog
//! (`--timeout` with keepalives, `--stop-at`).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{RemoteError, Result};

/// A running child process speaking the protocol on its stdin/stdout.
#[derive(Debug)]
pub struct ChildTransport {
    child: Child,
    /// Writes to the child's stdin.
    pub stdin: Option<ChildStdin>,
    /// Reads from the child's stdout.
    pub stdout: Option<ChildStdout>,
}

impl ChildTransport {
    /// Spawns `argv[0]` with the remaining arguments; stderr is inherited so
    /// the server's own diagnostics reach the user.
    pub fn spawn(argv: &[std::ffi::OsString]) -> Result<ChildTransport> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| RemoteError::Usage("empty remote command".into()))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| RemoteError::io(format!("starting {}", prog.to_string_lossy()), e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        Ok(ChildTransport {
            child,
            stdin,
            stdout,
        })
    }

    /// Closes our end of stdin and waits for the child.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        self.child
            .wait()
            .map_err(|e| RemoteError::io("waiting for the remote command", e))
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child (used on local errors so it cannot hang).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a stream on a helper thread so the peer's output is always drained,
/// even while the caller is blocked writing (the full-duplex deadlock trap).
#[derive(Debug)]
pub struct PumpedReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
    handle: Option<JoinHandle<()>>,
}

impl PumpedReader {
    /// Starts pumping `inner` on a new thread.
    pub fn new<R: Read + Send + 'static>(mut inner: R) -> Self {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match inner.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        PumpedReader {
            rx,
            pending: Vec::new(),
            pos: 0,
            eof: false,
            handle: Some(handle),
        }
    }
}

impl Read for PumpedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.pending.len() {
            if self.eof {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.eof = true,
                Ok(Ok(chunk)) => {
                    self.pending = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => self.eof = true,
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for PumpedReader {
    fn drop(&mut self) {
        // The thread ends at EOF or when the send fails; do not block on it here.
        drop(self.handle.take());
    }
}

/// rsync's name for the role whose I/O timed out (`[sender] io timeout`).
const WHO: [&str; 4] = ["sender", "receiver", "generator", "Receiver"];

/// The role a session's [`IoClock`] reports in its timeout message, as
/// rsync's `who_am_i` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The sending side.
    Sender = 0,
    /// A receiving side's receiver.
    Receiver = 1,
    /// A receiving side's generator (once the file list is in).
    Generator = 2,
    /// A receiving side before the file list is in (rsync's pre-forked
    /// receiver, spelled `Receiver`).
    Starting = 3,
}

/// When a session's connection last moved data, for `--timeout`: the
/// streams note every read and write ([`crate::conn::InStream::set_clock`],
/// [`crate::conn::OutStream::set_clock`]); a [`Watchdog`] looks at it.
/// It also orders the output stream's writes with the watchdog's
/// keepalives, so that one never lands inside a frame.
#[derive(Debug)]
pub struct IoClock {
    start: Instant,
    /// Milliseconds since `start` of the last read and the last write.
    last_in: AtomicU64,
    last_out: AtomicU64,
    /// Until when (ms) the session is busy without I/O (a `--bwlimit`
    /// pause): not idle then.
    busy_until: AtomicU64,
    /// The output is multiplexed (keepalives may be sent).
    out_multiplexed: AtomicBool,
    /// Held while frames go to the transport.
    writing: Mutex<()>,
    who: AtomicU8,
}

impl IoClock {
    /// A clock for a session starting now, reporting as `who`.
    pub fn new(who: Who) -> Arc<IoClock> {
        Arc::new(IoClock {
            start: Instant::now(),
            last_in: AtomicU64::new(0),
            last_out: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            out_multiplexed: AtomicBool::new(false),
            writing: Mutex::new(()),
            who: AtomicU8::new(who as u8),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Data was read from the peer.
    #[inline]
    pub fn saw_input(&self) {
        self.last_in.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Data was written to the peer.
    #[inline]
    pub fn saw_output(&self) {
        self.last_out.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The session works for `d` without moving data (as rsync's
    /// `--bwlimit` pauses and its "working hard" keepalive fudge): not
    /// idle meanwhile; keepalives still go out.
    pub fn busy_for(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
        self.busy_until.fetch_max(until, Ordering::Relaxed);
    }

    /// The role named in a timeout message from now on.
    pub fn set_who(&self, who: Who) {
        self.who.store(who as u8, Ordering::Relaxed);
    }

    /// The output stream now sends frames.
    pub fn set_out_multiplexed(&self) {
        self.out_multiplexed.store(true, Ordering::Relaxed);
    }

    /// Held by the output stream while it writes frames.
    pub fn write_guard(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since data last moved either way.
    fn idle_ms(&self) -> u64 {
        let now = self.now_ms();
        let last = self
            .last_in
            .load(Ordering::Relaxed)
            .max(self.last_out.load(Ordering::Relaxed))
            .max(self.busy_until.load(Ordering::Relaxed).min(now));
        now.saturating_sub(last)
    }
}

/// What a [`Watchdog`] does when the session's time is up (after printing
/// rsync's message for it).
#[derive(Debug)]
pub enum OnExpiry {
    /// End the process with rsync's exit code, killing the child `kill`
    /// (the remote shell) first: a client, or a server over a remote shell.
    Exit {
        /// A child process to kill first.
        kill: Option<u32>,
    },
    /// Shut the socket down so the session's blocked reads and writes fail
    /// (a daemon's connection, which runs on a thread of the daemon).
    Shutdown(OwnedFd),
}

/// The session limits a [`Watchdog`] enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--timeout`: seconds without I/O before giving up (exit 30).
    pub timeout: Option<u32>,
    /// `--stop-at` / `--stop-after`: when to stop (exit 30).
    pub stop_at: Option<SystemTime>,
}

impl Limits {
    /// True when there is nothing to enforce.
    pub fn is_none(&self) -> bool {
        self.timeout.is_none() && self.stop_at.is_none()
    }
}

/// How often the watchdog looks at the clock.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// rsync's `--timeout` and `--stop-at` for one session, on a thread of its
/// own: when no data moved either way for the timeout, or the stop time
/// came, it prints rsync's message and acts ([`OnExpiry`]). While the
/// session's output is quiet for half the timeout, it sends keepalives
/// (empty DATA frames, as rsync's `maybe_send_keepalive`), so that the
/// peer's timeout does not fire during a long quiet phase of ours.
/// Dropping it stops the thread.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    expired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts watching `clock` (`None` when `limits` set nothing).
    /// Keepalives go to `keepalive_fd` (the transport's descriptor the
    /// output stream writes to, duplicated) once the output is multiplexed.
    pub fn start(
        clock: &Arc<IoClock>,
        limits: Limits,
        keepalive_fd: Option<OwnedFd>,
        on_expiry: OnExpiry,
    ) -> Option<Watchdog> {
        if limits.is_none() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let expired = Arc::new(AtomicBool::new(false));
        let (st, ex, clock) = (Arc::clone(&stop), Arc::clone(&expired), Arc::clone(clock));
        std::thread::spawn(move || {
            watch(&clock, limits, keepalive_fd, on_expiry, &st, &ex);
        });
        Some(Watchdog { stop, expired })
    }

    /// True once the limits expired (a daemon session's I/O error is then
    /// reported as the timeout).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The watchdog thread's loop.
fn watch(
    clock: &IoClock,
    limits: Limits,
    keepalive_fd: Option<OwnedFd>,
    on_expiry: OnExpiry,
    stop: &AtomicBool,
    expired: &AtomicBool,
) {
    let timeout_ms = limits.timeout.map(|t| u64::from(t) * 1000);
    // rsync's allowed_lull: half the timeout, rounded up.
    let lull_ms = limits.timeout.map(|t| u64::from(t).div_ceil(2) * 1000);
    // When the last keepalive went out (ms on the clock).
    let mut kept = 0;
    loop {
        std::thread::sleep(WATCH_TICK);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let message = if limits.stop_at.is_some_and(|t| SystemTime::now() >= t) {
            Some("stopping at requested limit".to_string())
        } else {
            match timeout_ms {
                Some(t) if clock.idle_ms() >= t => {
                    let who = WHO[usize::from(clock.who.load(Ordering::Relaxed)) % WHO.len()];
                    Some(format!(
                        "[{who}] io timeout after {} seconds -- exiting",
                        clock.idle_ms() / 1000
                    ))
                }
                _ => None,
            }
        };
        if let Some(m) = message {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            expired.store(true, Ordering::Relaxed);
            eprintln!("{m}");
            match on_expiry {
                OnExpiry::Exit { kill } => {
                    if let Some(pid) = kill.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                    eprintln!("arsync error: timeout in data send/receive (code 30)");
                    std::process::exit(30);
                }
                OnExpiry::Shutdown(fd) => {
                    let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Both);
                    return;
                }
            }
        }
        if let (Some(lull), Some(fd)) = (lull_ms, &keepalive_fd) {
            let quiet_since = clock.last_out.load(Ordering::Relaxed).max(kept);
            if clock.now_ms().saturating_sub(quiet_since) >= lull && send_keepalive(clock, fd) {
                kept = clock.now_ms();
            }
        }
    }
}

/// An empty DATA frame (rsync's keepalive), little-endian.
const KEEPALIVE: [u8; 4] = ((arsync_proto::mux::MPLEX_BASE as u32) << 24).to_le_bytes();

/// Sends a keepalive when the output is multiplexed, is not being
/// written (the stream writes whole frames under the clock's guard) and
/// has room (a full pipe is left alone: the writer is blocked on it, and
/// the timeout decides). Returns whether it went out.
///
/// A keepalive is not progress: unlike rsync, whose keepalives count as
/// output, a peer that takes them but sends nothing still times out.
fn send_keepalive(clock: &IoClock, fd: &OwnedFd) -> bool {
    if !clock.out_multiplexed.load(Ordering::Relaxed) {
        return false;
    }
    let Ok(_guard) = clock.writing.try_lock() else {
        return false;
    };
    let mut pfd = [rustix::event::PollFd::new(
        fd,
        rustix::event::PollFlags::OUT,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut pfd, Some(&zero)) {
        Ok(1) if pfd[0].revents().contains(rustix::event::PollFlags::OUT) => {}
        _ => return false,
    }
    // Room for a page: four bytes go in one write.
    let mut at = 0;
    while at < KEEPALIVE.len() {
        match rustix::io::write(fd, &KEEPALIVE[at..]) {
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn keepalives_while_quiet_then_shutdown_when_idle() {
        // Our end writes nothing: once multiplexed, keepalives (empty DATA
        // frames) arrive about every half timeout; they are not progress,
        // so the timeout still fires and shuts the socket down.
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let clock = IoClock::new(Who::Sender);
        clock.set_out_multiplexed();
        let limits = Limits {
            timeout: Some(2),
            stop_at: None,
        };
        let fd = OwnedFd::from(ours.try_clone().unwrap());
        let down = OnExpiry::Shutdown(OwnedFd::from(ours.try_clone().unwrap()));
        let start = Instant::now();
        let w = Watchdog::start(&clock, limits, Some(fd), down).unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        let took = start.elapsed();
        assert!(w.expired());
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert!(!got.is_empty() && got.len() % 4 == 0, "{got:?}");
        assert!(got.chunks(4).all(|c| c == KEEPALIVE), "{got:?}");
        assert_eq!(KEEPALIVE, [0, 0, 0, 7]);
    }

    #[test]
    fn activity_and_busy_time_hold_the_timeout_off() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let clock = IoClock::new(Who::Generator);
        let limits = Limits {
            timeout: Some(1),
            stop_at: None,
        };
        let down = OnExpiry::Shutdown(OwnedFd::from(ours.try_clone().unwrap()));
        // Not multiplexed: no keepalives at all.
        let w = Watchdog::start(&clock, limits, Some(OwnedFd::from(ours)), down).unwrap();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(300));
            clock.saw_input();
        }
        assert!(!w.expired(), "reads kept it alive");
        clock.busy_for(Duration::from_millis(1500));
        std::thread::sleep(Duration::from_millis(1300));
        assert!(!w.expired(), "a --bwlimit pause is not idle");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert!(w.expired());
        assert!(got.is_empty(), "{got:?}");
        assert!(Limits::default().is_none());
        assert!(Watchdog::start(
            &clock,
            Limits::default(),
            None,
            OnExpiry::Exit { kill: None }
        )
        .is_none());
    }
}
