//! The receiver's file writer: a thread that creates each temporary file,
//! writes the received data into it and commits (or discards) it, so disk
//! writes and per-file system calls overlap with reading and verifying the
//! wire data on the receiving thread.
//!
//! Jobs are handed over in batches (a thread wake-up per job costs more
//! than a small file's whole write) through a bounded queue, so memory
//! stays bounded: at most [`QUEUE_DEPTH`] batches of about [`BATCH_BYTES`]
//! in flight; emptied buffers come back for reuse. A failure to create or write a file is fatal, as it is when the
//! receiver writes itself: the writer keeps the first such error, skips the
//! rest of the work, and [`FileWriter::finish`] returns it. Failures to
//! commit a finished file (metadata, rename) are per-file errors.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{RemoteError, Result};
use crate::events::{EventSink, FileEvent};
use crate::fsys::{DestRoot, Meta, TempFile};

/// Batches queued ahead of the writer at most.
pub const QUEUE_DEPTH: usize = 4;

/// A batch is handed over once it holds this much data...
pub const BATCH_BYTES: usize = 1 << 20;

/// ... or this many jobs.
pub const BATCH_JOBS: usize = 128;

/// Capacity of a fresh data buffer.
pub const BUFFER_SIZE: usize = 512 * 1024;

enum Job {
    /// Create the temporary file for `name`.
    Begin { name: Vec<u8> },
    /// Write `buf` at `offset` of the current file.
    Data { offset: u64, buf: Vec<u8> },
    /// Apply `meta` and rename the current file into place.
    Commit {
        meta: Meta,
        literal: u64,
        matched: u64,
    },
    /// Delete the current file (it failed verification).
    Discard,
}

/// What the writer reports when it ends.
#[derive(Default)]
struct Outcome {
    errors: Vec<String>,
    fatal: Option<RemoteError>,
}

/// The writing itself, on whichever thread runs it.
struct Worker {
    dest: DestRoot,
    events: Option<EventSink>,
    cur: Option<(TempFile, Vec<u8>)>,
    out: Outcome,
}

impl Worker {
    /// Runs one job; returns a data buffer to reuse.
    fn apply(&mut self, job: Job) -> Option<Vec<u8>> {
        let shown = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        if self.out.fatal.is_some() {
            return match job {
                Job::Data { buf, .. } => Some(buf),
                _ => None,
            };
        }
        let mut recycled = None;
        match job {
            Job::Begin { name } => {
                self.drop_current();
                match self.dest.create_temp(&name) {
                    Ok(t) => self.cur = Some((t, name)),
                    Err(e) => self.out.fatal = Some(e),
                }
            }
            Job::Data { offset, buf } => {
                if let Some((t, name)) = &self.cur {
                    if let Err(e) = t.file.write_all_at(&buf, offset) {
                        self.out.fatal =
                            Some(RemoteError::io(format!("writing {}", shown(name)), e));
                    }
                }
                recycled = Some(buf);
            }
            Job::Commit {
                meta,
                literal,
                matched,
            } => {
                if let Some((t, name)) = self.cur.take() {
                    let r = match DestRoot::set_file_meta(&t.file, &meta) {
                        Ok(()) => self.dest.commit(t, &name),
                        Err(err) => {
                            DestRoot::remove_temp(t);
                            Err(err)
                        }
                    };
                    match r {
                        Err(err) => self.out.errors.push(format!("{}: {err}", shown(&name))),
                        Ok(()) => {
                            if let Some(ev) = &self.events {
                                ev.emit(&FileEvent::Transferred {
                                    name: &name,
                                    literal,
                                    matched,
                                });
                            }
                        }
                    }
                }
            }
            Job::Discard => self.drop_current(),
        }
        if self.out.fatal.is_some() {
            self.drop_current();
        }
        recycled
    }

    /// Removes an unfinished temporary file.
    fn drop_current(&mut self) {
        if let Some((t, _)) = self.cur.take() {
            DestRoot::remove_temp(t);
        }
    }

    fn into_outcome(mut self) -> Outcome {
        self.drop_current();
        std::mem::take(&mut self.out)
    }
}

/// Where jobs run.
enum Mode {
    /// On the writer thread, in batches.
    Thread {
        tx: Option<SyncSender<Vec<Job>>>,
        batch: Vec<Job>,
        batch_bytes: usize,
        pool: Receiver<Vec<u8>>,
        failed: Arc<AtomicBool>,
        handle: Option<JoinHandle<Outcome>>,
    },
    /// At once on the calling thread.
    Inline {
        worker: Option<Worker>,
        pool: Vec<Vec<u8>>,
    },
}

/// Hands received files to the disk (see the module documentation).
pub struct FileWriter {
    mode: Mode,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter").finish()
    }
}

impl FileWriter {
    /// Starts a writer thread for files under `dest`.
    pub fn start(dest: DestRoot, events: Option<EventSink>) -> FileWriter {
        let (tx, rx) = sync_channel::<Vec<Job>>(QUEUE_DEPTH);
        let (pool_tx, pool) = channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let mut worker = Worker {
            dest,
            events,
            cur: None,
            out: Outcome::default(),
        };
        let handle = std::thread::spawn(move || {
            for job in rx.into_iter().flatten() {
                if let Some(mut buf) = worker.apply(job) {
                    buf.clear();
                    let _ = pool_tx.send(buf);
                }
                if worker.out.fatal.is_some() {
                    flag.store(true, Ordering::Release);
                }
            }
            worker.into_outcome()
        });
        FileWriter {
            mode: Mode::Thread {
                tx: Some(tx),
                batch: Vec::with_capacity(BATCH_JOBS),
                batch_bytes: 0,
                pool,
                failed,
                handle: Some(handle),
            },
        }
    }

    /// A writer that does each job at once on the calling thread.
    pub fn inline(dest: DestRoot, events: Option<EventSink>) -> FileWriter {
        FileWriter {
            mode: Mode::Inline {
                worker: Some(Worker {
                    dest,
                    events,
                    cur: None,
                    out: Outcome::default(),
                }),
                pool: Vec::new(),
            },
        }
    }

    fn send(&mut self, job: Job) -> Result<()> {
        match &mut self.mode {
            Mode::Thread {
                batch, batch_bytes, ..
            } => {
                if let Job::Data { buf, .. } = &job {
                    *batch_bytes += buf.len();
                }
                batch.push(job);
                if *batch_bytes < BATCH_BYTES && batch.len() < BATCH_JOBS {
                    return Ok(());
                }
                self.hand_over()
            }
            Mode::Inline { worker, pool } => {
                let Some(w) = worker.as_mut() else {
                    return Err(RemoteError::Usage("file writer stopped".into()));
                };
                if let Some(mut buf) = w.apply(job) {
                    buf.clear();
                    pool.push(buf);
                }
                match w.out.fatal.is_some() {
                    true => Err(self
                        .stop()
                        .err()
                        .unwrap_or_else(|| RemoteError::Usage("file writer stopped".into()))),
                    false => Ok(()),
                }
            }
        }
    }

    /// Hands the batch to the writer thread.
    fn hand_over(&mut self) -> Result<()> {
        let Mode::Thread {
            tx,
            batch,
            batch_bytes,
            failed,
            ..
        } = &mut self.mode
        else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::replace(batch, Vec::with_capacity(BATCH_JOBS));
        *batch_bytes = 0;
        let sent = tx.as_ref().map(|tx| tx.send(jobs).is_ok());
        if sent == Some(true) && !failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // The writer failed (or is gone): collect its error.
        Err(self
            .stop()
            .err()
            .unwrap_or_else(|| RemoteError::Usage("file writer stopped".into())))
    }

    /// An empty buffer for the next [`FileWriter::data`].
    pub fn buffer(&mut self) -> Vec<u8> {
        let reused = match &mut self.mode {
            Mode::Thread { pool, .. } => pool.try_recv().ok(),
            Mode::Inline { pool, .. } => pool.pop(),
        };
        reused.unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    /// Starts a new file (the previous one must be committed or discarded).
    pub fn begin(&mut self, name: &[u8]) -> Result<()> {
        self.send(Job::Begin {
            name: name.to_vec(),
        })
    }

    /// Queues `buf` to be written at `offset` of the current file.
    pub fn data(&mut self, offset: u64, buf: Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.send(Job::Data { offset, buf })
    }

    /// Applies `meta` to the current file and renames it into place.
    pub fn commit(&mut self, meta: Meta, literal: u64, matched: u64) -> Result<()> {
        self.send(Job::Commit {
            meta,
            literal,
            matched,
        })
    }

    /// Deletes the current file.
    pub fn discard(&mut self) -> Result<()> {
        self.send(Job::Discard)
    }

    /// Waits for all queued work; returns the per-file commit errors, or
    /// the fatal error that stopped the writer.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.hand_over()?;
        self.stop()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        let out = match &mut self.mode {
            Mode::Thread { tx, handle, .. } => {
                drop(tx.take());
                let Some(h) = handle.take() else {
                    return Ok(Vec::new());
                };
                h.join()
                    .map_err(|_| RemoteError::Usage("file writer thread panicked".into()))?
            }
            Mode::Inline { worker, .. } => match worker.take() {
                Some(w) => w.into_outcome(),
                None => return Ok(Vec::new()),
            },
        };
        match out.fatal {
            Some(e) => Err(e),
            None => Ok(out.errors),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Completes what was queued, then ends the thread (it removes an
        // unfinished temporary file).
        let _ = self.hand_over();
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            perms: 0o640,
            mtime: 1_600_000_000,
            mtime_nsec: 0,
            uid: None,
            gid: None,
            atime: None,
        }
    }

    #[test]
    fn writes_commits_and_discards() {
        writes_commits_and_discards_in(FileWriter::start);
        writes_commits_and_discards_in(FileWriter::inline);
    }

    fn writes_commits_and_discards_in(make: fn(DestRoot, Option<EventSink>) -> FileWriter) {
        let dir = tempfile::tempdir().unwrap();
        let dest = DestRoot::open(dir.path()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let ev = EventSink::new(move |e| {
            if let FileEvent::Transferred { name, .. } = e {
                s2.lock().unwrap().push(name.to_vec());
            }
        });
        let mut w = make(dest, Some(ev));
        w.begin(b"a").unwrap();
        let mut b = w.buffer();
        b.extend_from_slice(b"hello ");
        w.data(0, b).unwrap();
        let mut b = w.buffer();
        b.extend_from_slice(b"world");
        w.data(6, b).unwrap();
        w.commit(meta(), 11, 0).unwrap();
        w.begin(b"b").unwrap();
        let mut b = w.buffer();
        b.extend_from_slice(b"bad");
        w.data(0, b).unwrap();
        w.discard().unwrap();
        assert!(w.finish().unwrap().is_empty());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello world");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a"], "the discarded temporary is gone");
        assert_eq!(*seen.lock().unwrap(), [b"a".to_vec()]);
    }

    #[test]
    fn create_failure_is_fatal() {
        create_failure_is_fatal_in(FileWriter::start);
        create_failure_is_fatal_in(FileWriter::inline);
    }

    fn create_failure_is_fatal_in(make: fn(DestRoot, Option<EventSink>) -> FileWriter) {
        let dir = tempfile::tempdir().unwrap();
        let dest = DestRoot::open(dir.path()).unwrap();
        let mut w = make(dest, None);
        // The parent directory does not exist.
        let mut r = w.begin(b"missing/x");
        for _ in 0..100 {
            if r.is_err() {
                break;
            }
            let b = w.buffer();
            r = w.data(0, b).and_then(|_| w.begin(b"missing/y"));
        }
        let err = match r {
            Err(e) => e,
            Ok(()) => w.finish().unwrap_err(),
        };
        assert!(matches!(err, RemoteError::Io { .. }), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
