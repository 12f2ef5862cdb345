//! Writes waiting for room in the write buffer budget.
//!
//! A write that needs a new extent buffer while the buffers of all open files fill the pool's
//! `write_buffer_mib` ([`Fs::write_nowait`] answers `None`) is parked here, with its data and
//! its reply, instead of waiting on a worker: the workers stay free for the requests that give
//! buffer bytes back (writes that fill a buffer and commit it, closes, fsyncs). The admission
//! thread hands parked writes back to the workers when a file gives bytes back, oldest first
//! and about as many as the room allows, and when no bytes come back for a while it commits
//! the oldest idle partly written buffer ([`Fs::wait_for_buffer`]), so no write waits forever.
//!
//! Memory: besides the budget, the data of the parked writes (one request per waiting writer,
//! at most [`crate::fuse::MAX_WRITE`] bytes each).

use dynfs_core::Fs;
use fuser::ReplyWrite;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A job for the data-path workers.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Longest the admission thread waits for a release before it looks at the queue again.
const RESCAN: Duration = Duration::from_millis(10);

/// A parked write.
struct Parked {
    ino: u64,
    off: u64,
    data: Vec<u8>,
    reply: ReplyWrite,
    /// The release generation ([`Fs::buffer_generation`]) before the attempt that found no
    /// room: the write is tried again once it has changed.
    seen: u64,
    /// When the write was first parked.
    since: Instant,
}

#[derive(Default)]
struct Queue {
    parked: VecDeque<Parked>,
    stop: bool,
}

struct Shared {
    fs: Arc<Fs>,
    /// When a parked write last went through (or the first one was parked).
    admitted: Mutex<Instant>,
    queue: Mutex<Queue>,
    cv: Condvar,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

/// The parked writes and the thread that admits them.
pub(crate) struct Admission {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Admission {
    /// Start the admission thread; admitted writes go to `jobs` (the workers).
    pub(crate) fn start(fs: Arc<Fs>, jobs: Option<mpsc::Sender<Job>>) -> Self {
        let shared = Arc::new(Shared {
            fs,
            admitted: Mutex::new(Instant::now()),
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            jobs: Mutex::new(jobs),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("dynfs-admit".into())
                .spawn(move || run(&shared))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the admission thread"))
                .ok()
        };
        Admission { shared, thread }
    }

    /// A handle for jobs (writes from a worker).
    pub(crate) fn handle(&self) -> AdmissionHandle {
        AdmissionHandle(self.shared.clone())
    }
}

/// Parks writes from a worker job.
pub(crate) struct AdmissionHandle(Arc<Shared>);

impl AdmissionHandle {
    /// Write `data` at `off` of `ino` and reply, or park the write if it must wait for room
    /// (run on a worker).
    pub(crate) fn write(&self, ino: u64, off: u64, data: Vec<u8>, reply: ReplyWrite) {
        attempt(&self.0, ino, off, data, reply, None);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.stop = true;
        }
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Without the thread (it could not start), what is parked is written here.
        let left = std::mem::take(
            &mut self
                .shared
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .parked,
        );
        for p in left {
            finish(&self.shared.fs, p);
        }
        *self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn reply(r: dynfs_core::Result<usize>, reply: ReplyWrite) {
    match r {
        Ok(n) => reply.written(n as u32),
        Err(e) => reply.error(crate::fuse::err_code(&e)),
    }
}

/// Write, waiting as long as needed (at shutdown, or without an admission thread).
fn finish(fs: &Fs, p: Parked) {
    reply(fs.write(p.ino, p.off, &p.data), p.reply);
}

/// Try a write (`parked`: when it was first parked, for a parked one); park it if it must
/// wait for room.
fn attempt(
    shared: &Shared,
    ino: u64,
    off: u64,
    data: Vec<u8>,
    r: ReplyWrite,
    parked: Option<Instant>,
) {
    let seen = shared.fs.buffer_generation();
    match shared.fs.write_nowait(ino, off, &data) {
        Ok(Some(n)) => {
            if parked.is_some() {
                *shared.admitted.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            r.written(n as u32)
        }
        Err(e) => reply(Err(e), r),
        Ok(None) => {
            let p = Parked {
                ino,
                off,
                data,
                reply: r,
                seen,
                since: parked.unwrap_or_else(Instant::now),
            };
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.stop {
                drop(q);
                return finish(&shared.fs, p);
            }
            if q.parked.is_empty() {
                *shared.admitted.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            q.parked.push_back(p);
            drop(q);
            shared.cv.notify_all();
        }
    }
}

fn dispatch(shared: &Arc<Shared>, p: Parked) {
    let jobs = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let s = shared.clone();
    let job: Job = Box::new(move || attempt(&s, p.ino, p.off, p.data, p.reply, Some(p.since)));
    match jobs {
        Some(tx) => {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                job();
            }
        }
        None => job(),
    }
}

fn run(shared: &Arc<Shared>) {
    let fs = &shared.fs;
    let es = usize::try_from(fs.pool().extent_size()).unwrap_or(usize::MAX);
    // The release generation of the last round that admitted writes.
    let mut admitted_at: Option<u64> = None;
    loop {
        let gen = fs.buffer_generation();
        let (ready, oldest) = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while q.parked.is_empty() && !q.stop {
                q = shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.stop {
                let left: Vec<Parked> = q.parked.drain(..).collect();
                drop(q);
                for p in left {
                    finish(fs, p);
                }
                return;
            }
            // Writes that failed before the latest release, oldest first, as many as the
            // room takes (at least one per release).
            let mut ready = Vec::new();
            if admitted_at != Some(gen) {
                let room = fs.buffer_budget().saturating_sub(fs.buffered_bytes());
                let want = (room / es.max(1)).max(1);
                let mut i = 0;
                while i < q.parked.len() && ready.len() < want {
                    if q.parked[i].seen != gen {
                        if let Some(p) = q.parked.remove(i) {
                            ready.push(p);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            let oldest = q.parked.iter().map(|p| p.since).min();
            (ready, oldest)
        };
        if !ready.is_empty() {
            admitted_at = Some(gen);
            for p in ready {
                dispatch(shared, p);
            }
            continue;
        }
        // No parked write went through for the stall time: the writers that hold buffers are
        // not filling them (idle, or waiting themselves, as the kernel's writeback does when
        // its requests in flight are all parked here). Commit the oldest idle buffer.
        let stall = fs.buffer_stall();
        let admitted = *shared.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if oldest.is_some_and(|t| t.elapsed() >= stall) && admitted.elapsed() >= stall {
            fs.commit_stalled_buffer(stall);
            *shared.admitted.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            admitted_at = None;
            continue;
        }
        // New parked writes wake the queue's condition variable, not the budget's: look at
        // the queue again every few milliseconds.
        fs.wait_buffer_release(gen, RESCAN);
    }
}
