//! The receiver's file writer: a thread that creates each temporary file,
//! writes the received data into it and commits (or discards) it, so disk
//! writes and per-file system calls overlap with reading and verifying the
//! wire data on the receiving thread.
//!
//! Jobs are handed over in batches (a thread wake-up per job costs more
//! than a small file's whole write) through a bounded queue, so memory
//! stays bounded: at most [`QUEUE_DEPTH`] batches of about [`BATCH_BYTES`]
//! in flight; emptied buffers come back for reuse. A failure to create or
//! write a file is fatal, as it is when the receiver writes itself: the
//! writer keeps the first such error, skips the rest of the work, and the
//! next hand-over (or [`FileWriter::finish`]) returns it. Failures to commit
//! a verified file (metadata, rename) are per-file errors.
//!
//! What "commit" means (attributes, rename or delayed rename) is up to the
//! caller's [`Committer`], which runs on the writer thread.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{RemoteError, Result};
use crate::fsys::{DestRoot, ParentCache, TempFile};

/// Batches queued ahead of the writer at most.
pub const QUEUE_DEPTH: usize = 4;

/// A batch is handed over once it holds this much data...
pub const BATCH_BYTES: usize = 1 << 20;

/// ... or this many jobs.
pub const BATCH_JOBS: usize = 128;

/// Capacity of a fresh data buffer.
pub const BUFFER_SIZE: usize = 512 * 1024;

/// A data buffer of the writer: the first [`DataBuf::len`] bytes are
/// data; room after them ([`DataBuf::spare_mut`]) can be read into
/// directly, e.g. from the transport, without a copy. That room is
/// initialized (zeroed) only as far as it is ever asked for, once per
/// buffer: emptied buffers come back for reuse.
#[derive(Debug, Default)]
pub struct DataBuf {
    /// Initialized bytes (data, then reusable room).
    bytes: Vec<u8>,
    len: usize,
}

impl DataBuf {
    fn new() -> Self {
        DataBuf {
            bytes: Vec::with_capacity(BUFFER_SIZE),
            len: 0,
        }
    }

    /// Bytes it can hold without growing (0 for a default one).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// `want` bytes of room after the data, to be filled and then
    /// [`DataBuf::advance`]d (grows the buffer if needed).
    pub fn spare_mut(&mut self, want: usize) -> &mut [u8] {
        let end = self.len + want;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        &mut self.bytes[self.len..end]
    }

    /// Adds the first `n` bytes of [`DataBuf::spare_mut`] to the data.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.bytes.len());
    }

    /// Appends `b` (growing if needed).
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        let end = self.len + b.len();
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.bytes[self.len..end].copy_from_slice(b);
        self.len = end;
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

impl std::ops::Deref for DataBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The commit step of a verified file, run where the writer runs.
pub trait Committer: Send + 'static {
    /// Finishes the verified temporary file `tmp` of entry `ndx` (named
    /// `name`): attributes, then a rename into place (or keeping it for
    /// [`Committer::end_phase`]). An error is a per-file error.
    fn commit(
        &mut self,
        dest: &DestRoot,
        tmp: TempFile,
        ndx: usize,
        name: &[u8],
        literal: u64,
        matched: u64,
    ) -> Result<()>;

    /// The end of a phase (all files of it are committed): e.g. the
    /// delayed renames of `--delay-updates`. Returns per-file errors.
    fn end_phase(&mut self, dest: &DestRoot) -> Vec<String>;

    /// A cut-off file of `name` is about to be kept (`--partial`, or in
    /// a `--partial-dir` with `in_partial_dir`): its attributes, best
    /// effort. By default nothing.
    fn keep_partial(&mut self, _tmp: &TempFile, _name: &[u8], _in_partial_dir: bool) {}
}

/// Where a cut-off file is kept ([`FileWriter::abort`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Under this name in the destination: the target itself
    /// (`--partial`) or its name in a relative `--partial-dir`.
    Named(Vec<u8>),
    /// At this path in an absolute `--partial-dir`, outside the
    /// destination (its directory is created if missing, mode 0700).
    Outside(PathBuf),
}

impl Keep {
    /// Keeps `t` (the temporary file of `name`, whose attributes the
    /// committer has set) as this; removes it when that fails.
    fn place<C: Committer>(&self, dest: &DestRoot, committer: &mut C, t: TempFile, name: &[u8]) {
        match self {
            Keep::Named(k) => {
                committer.keep_partial(&t, name, k != name);
                let placed = match k == name {
                    true => Ok(()),
                    false => dest.ensure_partial_dir(k),
                };
                match placed {
                    Ok(()) => {
                        let _ = dest.commit(t, k);
                    }
                    Err(_) => DestRoot::remove_temp(t),
                }
            }
            Keep::Outside(path) => {
                committer.keep_partial(&t, name, true);
                let dir_and_base = path
                    .parent()
                    .zip(path.file_name())
                    .map(|(d, b)| (d, b.as_encoded_bytes()));
                let placed = dir_and_base.and_then(|(dir, base)| {
                    ensure_dir_0700(dir)?;
                    Some((DestRoot::open(dir).ok()?, base))
                });
                match placed {
                    Some((root, base)) => {
                        let _ = root.commit(t, base);
                    }
                    None => DestRoot::remove_temp(t),
                }
            }
        }
    }
}

/// Makes sure `dir` is a directory, as rsync's receiver does for a
/// partial directory: a non-directory there is removed, a missing one is
/// created with mode 0700 (its parent must exist). `None` on failure.
fn ensure_dir_0700(dir: &std::path::Path) -> Option<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Some(()),
        Ok(_) => std::fs::remove_file(dir).ok()?,
        Err(_) => {}
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Some(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(()),
        Err(_) => None,
    }
}

enum Job {
    /// Create the temporary file for `name` (`in_place`: open `name` itself).
    Begin { name: Vec<u8>, in_place: bool },
    /// Set the current file's length (a file written in place).
    SetLen(u64),
    /// Reserve this many bytes for the current file (`--preallocate`).
    Preallocate(u64),
    /// Flush the current file to stable storage (`--fsync`).
    Sync,
    /// Write `buf` at `offset` of the current file.
    Data { offset: u64, buf: DataBuf },
    /// Commit the current (verified) file.
    Commit {
        ndx: usize,
        literal: u64,
        matched: u64,
    },
    /// Delete the current file (it failed verification).
    Discard,
    /// The transfer of the current file broke off: with `keep` (`--partial`,
    /// `--partial-dir`) a non-empty file is kept there, else it is deleted
    /// (a file written in place stays as it is).
    Abort { keep: Option<Keep> },
    /// Run [`Committer::end_phase`] and answer with the per-file errors
    /// collected so far.
    EndPhase(SyncSender<Vec<String>>),
}

/// The writing itself, on whichever thread runs it.
struct Worker<C> {
    dest: DestRoot,
    /// The directory of the last temporary file (see [`ParentCache`]).
    parents: ParentCache,
    committer: C,
    cur: Option<(TempFile, Vec<u8>)>,
    errors: Vec<String>,
    fatal: Option<RemoteError>,
}

fn shown(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

impl<C: Committer> Worker<C> {
    fn new(dest: DestRoot, committer: C) -> Self {
        Worker {
            dest,
            parents: ParentCache::default(),
            committer,
            cur: None,
            errors: Vec::new(),
            fatal: None,
        }
    }

    /// Runs one job; returns a data buffer to reuse.
    fn apply(&mut self, job: Job) -> Option<DataBuf> {
        if self.fatal.is_some() {
            return match job {
                Job::Data { buf, .. } => Some(buf),
                Job::EndPhase(reply) => {
                    let _ = reply.send(std::mem::take(&mut self.errors));
                    None
                }
                _ => None,
            };
        }
        let mut recycled = None;
        match job {
            Job::Begin { name, in_place } => {
                self.drop_current();
                let t = match in_place {
                    true => self.dest.open_in_place(&name),
                    false => self.dest.create_temp_cached(&mut self.parents, &name),
                };
                match t {
                    Ok(t) => self.cur = Some((t, name)),
                    Err(e) => self.fatal = Some(e),
                }
            }
            Job::SetLen(len) => {
                if let Some((t, name)) = &self.cur {
                    if let Err(e) = t.file.set_len(len) {
                        self.fatal =
                            Some(RemoteError::io(format!("truncating {}", shown(name)), e));
                    }
                }
            }
            Job::Preallocate(len) => {
                if let Some((t, name)) = &self.cur {
                    if let Err(e) = arsync_sync::fsops::preallocate(&t.file, len) {
                        self.fatal =
                            Some(RemoteError::io(format!("preallocating {}", shown(name)), e));
                    }
                }
            }
            Job::Sync => {
                if let Some((t, name)) = &self.cur {
                    if let Err(e) = t.file.sync_all() {
                        self.fatal = Some(RemoteError::io(format!("fsync {}", shown(name)), e));
                    }
                }
            }
            Job::Data { offset, buf } => {
                if let Some((t, name)) = &self.cur {
                    if let Err(e) = t.file.write_all_at(&buf, offset) {
                        self.fatal = Some(RemoteError::io(format!("writing {}", shown(name)), e));
                    }
                }
                recycled = Some(buf);
            }
            Job::Commit {
                ndx,
                literal,
                matched,
            } => {
                if let Some((t, name)) = self.cur.take() {
                    let r = self
                        .committer
                        .commit(&self.dest, t, ndx, &name, literal, matched);
                    if let Err(err) = r {
                        self.errors.push(format!("{}: {err}", shown(&name)));
                    }
                }
            }
            Job::Discard => self.drop_current(),
            Job::Abort { keep } => {
                if let Some((t, name)) = self.cur.take() {
                    match keep {
                        Some(k) if t.file.metadata().is_ok_and(|m| m.len() > 0) => {
                            k.place(&self.dest, &mut self.committer, t, &name)
                        }
                        _ => DestRoot::remove_temp(t),
                    }
                }
            }
            Job::EndPhase(reply) => {
                let more = self.committer.end_phase(&self.dest);
                self.errors.extend(more);
                let _ = reply.send(std::mem::take(&mut self.errors));
            }
        }
        if self.fatal.is_some() {
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

    /// Per-file errors, or the fatal error.
    fn into_outcome(mut self) -> Result<Vec<String>> {
        self.drop_current();
        match self.fatal {
            Some(e) => Err(e),
            None => Ok(self.errors),
        }
    }
}

/// Where jobs run.
enum Mode<C> {
    /// On the writer thread, in batches.
    Thread {
        tx: Option<SyncSender<Vec<Job>>>,
        batch: Vec<Job>,
        batch_bytes: usize,
        pool: Receiver<DataBuf>,
        failed: Arc<AtomicBool>,
        handle: Option<JoinHandle<Result<Vec<String>>>>,
    },
    /// At once on the calling thread.
    Inline {
        worker: Option<Box<Worker<C>>>,
        pool: Vec<DataBuf>,
    },
}

/// Hands received files to the disk (see the module documentation).
pub struct FileWriter<C: Committer> {
    mode: Mode<C>,
}

impl<C: Committer> std::fmt::Debug for FileWriter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let threaded = matches!(self.mode, Mode::Thread { .. });
        f.debug_struct("FileWriter")
            .field("threaded", &threaded)
            .finish()
    }
}

fn stopped() -> RemoteError {
    RemoteError::Usage("file writer stopped".into())
}

impl<C: Committer> FileWriter<C> {
    /// Starts a writer thread for files under `dest`.
    pub fn start(dest: DestRoot, committer: C) -> Self {
        let (tx, rx) = sync_channel::<Vec<Job>>(QUEUE_DEPTH);
        let (pool_tx, pool) = channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let mut worker = Worker::new(dest, committer);
        let handle = std::thread::spawn(move || {
            for job in rx.into_iter().flatten() {
                if let Some(mut buf) = worker.apply(job) {
                    buf.clear();
                    let _ = pool_tx.send(buf);
                }
                if worker.fatal.is_some() {
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
    pub fn inline(dest: DestRoot, committer: C) -> Self {
        FileWriter {
            mode: Mode::Inline {
                worker: Some(Box::new(Worker::new(dest, committer))),
                pool: Vec::new(),
            },
        }
    }

    /// A writer thread when the machine has more than one CPU, else inline.
    /// `ARSYNC_WRITER_THREAD=0` in the environment forces inline writing
    /// (for A/B measurements of the thread).
    pub fn for_machine(dest: DestRoot, committer: C) -> Self {
        let disabled = std::env::var_os("ARSYNC_WRITER_THREAD").is_some_and(|v| v == "0");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match disabled || cpus == 1 {
            true => Self::inline(dest, committer),
            false => Self::start(dest, committer),
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
                    return Err(stopped());
                };
                if let Some(mut buf) = w.apply(job) {
                    buf.clear();
                    pool.push(buf);
                }
                match w.fatal.is_some() {
                    true => Err(self.stop().err().unwrap_or_else(stopped)),
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
        Err(self.stop().err().unwrap_or_else(stopped))
    }

    /// An empty buffer for the next [`FileWriter::data`].
    pub fn buffer(&mut self) -> DataBuf {
        let reused = match &mut self.mode {
            Mode::Thread { pool, .. } => pool.try_recv().ok(),
            Mode::Inline { pool, .. } => pool.pop(),
        };
        reused.unwrap_or_else(DataBuf::new)
    }

    /// Starts a new file (the previous one must be committed or
    /// discarded); `in_place` (`--inplace`) writes into `name` itself.
    pub fn begin(&mut self, name: &[u8], in_place: bool) -> Result<()> {
        self.send(Job::Begin {
            name: name.to_vec(),
            in_place,
        })
    }

    /// Sets the current file's length (after writing a file in place).
    pub fn set_len(&mut self, len: u64) -> Result<()> {
        self.send(Job::SetLen(len))
    }

    /// Reserves `len` bytes for the current file (`--preallocate`; the
    /// file's length is not changed, a file system without support is not
    /// an error).
    pub fn preallocate(&mut self, len: u64) -> Result<()> {
        self.send(Job::Preallocate(len))
    }

    /// Flushes the current file's data to stable storage before it is
    /// committed (`--fsync`).
    pub fn sync(&mut self) -> Result<()> {
        self.send(Job::Sync)
    }

    /// Queues `buf` to be written at `offset` of the current file.
    pub fn data(&mut self, offset: u64, buf: DataBuf) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.send(Job::Data { offset, buf })
    }

    /// Commits the current file as entry `ndx` (see [`Committer::commit`]).
    pub fn commit(&mut self, ndx: usize, literal: u64, matched: u64) -> Result<()> {
        self.send(Job::Commit {
            ndx,
            literal,
            matched,
        })
    }

    /// Deletes the current file.
    pub fn discard(&mut self) -> Result<()> {
        self.send(Job::Discard)
    }

    /// The current file's transfer broke off: keep what was written as
    /// `keep` (for `--partial`: the target; for `--partial-dir`: the file
    /// in that directory, created if needed) or delete it. Everything
    /// queued before is written first.
    pub fn abort(&mut self, keep: Option<Keep>) -> Result<()> {
        self.send(Job::Abort { keep })?;
        self.hand_over()
    }

    /// Waits until everything queued is done, runs
    /// [`Committer::end_phase`] there, and returns the per-file errors
    /// collected so far (or the fatal error).
    pub fn end_phase(&mut self) -> Result<Vec<String>> {
        let (reply_tx, reply_rx) = sync_channel(1);
        self.send(Job::EndPhase(reply_tx))?;
        self.hand_over()?;
        reply_rx.recv().map_err(|_| {
            self.stop()
                .err()
                .unwrap_or_else(|| RemoteError::Usage("file writer thread ended".into()))
        })
    }

    /// Waits for all queued work; returns the per-file commit errors, or
    /// the fatal error that stopped the writer.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.hand_over()?;
        self.stop()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        match &mut self.mode {
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
                None => Ok(Vec::new()),
            },
        }
    }
}

impl<C: Committer> Drop for FileWriter<C> {
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
    use crate::fsys::{DelayedFile, Meta};
    use std::sync::Mutex;

    /// What the committer saw: (index, name, literal, matched).
    type Seen = Arc<Mutex<Vec<(usize, Vec<u8>, u64, u64)>>>;

    /// Sets a mode and renames; with `delay`, renames at the phase end.
    struct TestCommit {
        seen: Seen,
        delay: bool,
        delayed: Vec<(Vec<u8>, DelayedFile)>,
    }

    impl Committer for TestCommit {
        fn commit(
            &mut self,
            dest: &DestRoot,
            tmp: TempFile,
            ndx: usize,
            name: &[u8],
            literal: u64,
            matched: u64,
        ) -> Result<()> {
            let meta = Meta {
                perms: Some(0o640),
                mtime: Some((1_600_000_000, 0)),
                uid: None,
                gid: None,
                atime: None,
            };
            DestRoot::set_file_meta(&tmp.file, &meta)?;
            self.seen
                .lock()
                .unwrap()
                .push((ndx, name.to_vec(), literal, matched));
            match self.delay {
                true => {
                    self.delayed.push((name.to_vec(), DestRoot::delay(tmp)));
                    Ok(())
                }
                false => dest.commit(tmp, name),
            }
        }

        fn end_phase(&mut self, dest: &DestRoot) -> Vec<String> {
            self.delayed
                .drain(..)
                .filter_map(|(n, d)| dest.commit_delayed(&d, &n).err())
                .map(|e| e.to_string())
                .collect()
        }
    }

    type Make = fn(DestRoot, TestCommit) -> FileWriter<TestCommit>;

    fn committer(delay: bool) -> (TestCommit, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let c = TestCommit {
            seen: Arc::clone(&seen),
            delay,
            delayed: Vec::new(),
        };
        (c, seen)
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn write(w: &mut FileWriter<TestCommit>, offset: u64, data: &[u8]) {
        let mut b = w.buffer();
        b.extend_from_slice(data);
        w.data(offset, b).unwrap();
    }

    #[test]
    fn data_buf_fills_in_place_and_grows() {
        let mut b = DataBuf::new();
        assert_eq!((b.len(), b.capacity()), (0, BUFFER_SIZE));
        b.spare_mut(3).copy_from_slice(b"abc");
        b.advance(3);
        b.extend_from_slice(b"de");
        assert_eq!(&b[..], b"abcde");
        assert_eq!(b.spare_mut(100).len(), 100);
        // Only the room asked for counts: advancing past it stops there.
        b.advance(1000);
        assert_eq!(b.len(), 105);
        // Past the capacity it grows, keeping the data.
        let big = vec![7u8; BUFFER_SIZE];
        b.extend_from_slice(&big);
        assert_eq!(b.len(), BUFFER_SIZE + 105);
        assert_eq!(&b[..5], b"abcde");
        b.clear();
        assert!(b.is_empty());
        // Reused room keeps its old bytes until overwritten.
        assert_eq!(b.spare_mut(5), b"abcde");
        assert_eq!(DataBuf::default().capacity(), 0);
    }

    #[test]
    fn preallocated_and_synced_files_keep_their_length() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, _seen) = committer(false);
            let mut w = make(dest, c);
            w.begin(b"p", false).unwrap();
            w.preallocate(1 << 20).unwrap();
            write(&mut w, 0, b"hello");
            w.sync().unwrap();
            w.commit(1, 5, 0).unwrap();
            assert!(w.finish().unwrap().is_empty());
            // The reservation does not change the file's length.
            assert_eq!(std::fs::read(dir.path().join("p")).unwrap(), b"hello");
        }
    }

    #[test]
    fn writes_commits_and_discards() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, seen) = committer(false);
            let mut w = make(dest, c);
            w.begin(b"a", false).unwrap();
            write(&mut w, 0, b"hello ");
            write(&mut w, 6, b"world");
            w.commit(7, 11, 0).unwrap();
            w.begin(b"b", false).unwrap();
            write(&mut w, 0, b"bad");
            w.discard().unwrap();
            assert!(w.finish().unwrap().is_empty());
            assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello world");
            assert_eq!(names(dir.path()), ["a"], "the discarded temporary is gone");
            assert_eq!(*seen.lock().unwrap(), [(7, b"a".to_vec(), 11, 0)]);
        }
    }

    #[test]
    fn end_phase_waits_for_queued_work_and_runs_delayed_renames() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, _) = committer(true);
            let mut w = make(dest, c);
            for (i, n) in [b"x", b"y"].iter().enumerate() {
                w.begin(*n, false).unwrap();
                write(&mut w, 0, *n);
                w.commit(i, 1, 0).unwrap();
            }
            // Nothing renamed yet: two temporaries (maybe still queued).
            assert!(!dir.path().join("x").exists());
            let errors = w.end_phase().unwrap();
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(names(dir.path()), ["x", "y"]);
            assert_eq!(std::fs::read(dir.path().join("y")).unwrap(), b"y");
            assert!(w.finish().unwrap().is_empty());
        }
    }

    #[test]
    fn abort_keeps_partial_data_only_when_asked() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("kept"), b"old").unwrap();
            std::fs::write(dir.path().join("dropped"), b"old").unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, seen) = committer(false);
            let mut w = make(dest, c);
            w.begin(b"kept", false).unwrap();
            write(&mut w, 0, b"part");
            w.abort(Some(Keep::Named(b"kept".to_vec()))).unwrap();
            w.begin(b"dropped", false).unwrap();
            write(&mut w, 0, b"part");
            w.abort(None).unwrap();
            // --partial-dir: kept in that directory, created on demand.
            w.begin(b"aside", false).unwrap();
            write(&mut w, 0, b"partial data");
            w.abort(Some(Keep::Named(b".part/aside".to_vec()))).unwrap();
            // An absolute --partial-dir: outside the destination.
            let outside = tempfile::tempdir().unwrap();
            let pdir = outside.path().join("pd");
            w.begin(b"far", false).unwrap();
            write(&mut w, 0, b"far away");
            w.abort(Some(Keep::Outside(pdir.join("far")))).unwrap();
            // --inplace: the file itself is written and stays.
            w.begin(b"dropped", true).unwrap();
            write(&mut w, 1, b"X");
            w.abort(None).unwrap();
            assert!(w.finish().unwrap().is_empty());
            assert_eq!(names(dir.path()), [".part", "dropped", "kept"]);
            assert_eq!(std::fs::read(dir.path().join("kept")).unwrap(), b"part");
            assert_eq!(std::fs::read(dir.path().join("dropped")).unwrap(), b"oXd");
            let aside = dir.path().join(".part/aside");
            assert_eq!(std::fs::read(aside).unwrap(), b"partial data");
            assert_eq!(std::fs::read(pdir.join("far")).unwrap(), b"far away");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&pdir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            assert!(seen.lock().unwrap().is_empty(), "nothing was committed");
        }
    }

    #[test]
    fn commit_failure_is_a_per_file_error() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("d")).unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, _) = committer(false);
            let mut w = make(dest, c);
            // A directory of that name cannot be replaced by the file.
            w.begin(b"d", false).unwrap();
            write(&mut w, 0, b"data");
            w.commit(0, 4, 0).unwrap();
            w.begin(b"f", false).unwrap();
            write(&mut w, 0, b"data");
            w.commit(1, 4, 0).unwrap();
            let errors = w.finish().unwrap();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("d: "), "{errors:?}");
            assert_eq!(names(dir.path()), ["d", "f"]);
        }
    }

    #[test]
    fn create_failure_is_fatal() {
        for make in [FileWriter::start as Make, FileWriter::inline] {
            let dir = tempfile::tempdir().unwrap();
            let dest = DestRoot::open(dir.path()).unwrap();
            let (c, _) = committer(false);
            let mut w = make(dest, c);
            // The parent directory does not exist.
            let mut r = w.begin(b"missing/x", false);
            for _ in 0..1000 {
                if r.is_err() {
                    break;
                }
                let b = w.buffer();
                r = w.data(0, b).and_then(|_| w.begin(b"missing/y", false));
            }
            let err = match r {
                Err(e) => e,
                Ok(()) => w.finish().unwrap_err(),
            };
            assert!(matches!(err, RemoteError::Io { .. }), "{err}");
            assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        }
    }
}
