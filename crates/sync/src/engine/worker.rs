//! The worker side of the engine: every worker thread owns an `arsync-io` runtime (io_uring
//! with `ARSYNC_IO=uring`, else the thread-pool backend) and works on batches of entries.
//!
//! On the thread-pool backend (the default) the worker does a batch's syscalls itself, one
//! batch at a time, relative to directory fds, and creates new files unnamed (`O_TMPFILE`)
//! before linking them into place: see `direct`. On io_uring it keeps several batches in
//! flight, up to `--queue-depth` files, as follows.
//!
//! How a batch of entries flows on io_uring:
//! 1. The destinations of entries whose directory already existed are stat'ed in one
//!    submission (`statx_many`), for the quick check.
//! 2. Each entry is decided in order, exactly as the walker would (itemize output captured
//!    per entry and sequenced). A small regular file to copy (up to 1 MiB, plain options) is
//!    collected instead of copied at once; anything else is done on the spot.
//! 3. The collected files are copied together (`copy_small_files`: per file one chain to open
//!    and read the source, one to create the temporary `.name.XXXXXX` with its final mode,
//!    write and close it; one submission per stage for the whole batch).
//! 4. One pool job applies what has no io_uring opcode: xattrs/ACLs (`-X`/`-A`), owner, mode
//!    and times. Owner and mode calls are skipped when creation already got them right; what
//!    creation gives is learned per destination directory by probing the first file made there
//!    (its owner, group, mode and xattrs: set-group-ID directories, default ACLs or security
//!    labels make it differ), so a directory that behaves plainly costs one probe per worker.
//! 5. The temporary files are renamed into place in one submission.
//!
//! Anything unusual (a source that grew past its listed size, a temporary name taken, options
//! such as `--inplace`, `--backup`, `--partial`, `--progress`, basis directories) goes through
//! the one-file-at-a-time path, `Engine::run_job`.

use super::direct::Direct;
use super::{Engine, EntryJob, FileJob, JobBatch};
use crate::fsops::{self, Kind, Meta, Time};
use crate::meta::{self, Wanted};
use crate::report;
use arsync_io::{Backend, Io, IoConfig, Mode, Rename, Runtime, SmallCopied, SmallCopy, AT_FDCWD};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    /// While a worker decides a batch: the small files to copy together afterwards.
    static SMALL: RefCell<Option<Vec<FileJob>>> = const { RefCell::new(None) };
}

/// What creating a file in a destination directory gives, learned from the first one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The mode is exactly the requested one minus the umask, and no selected xattr appeared.
    pub(super) plain: bool,
}

/// Per-worker cache of [`Probe`]s by destination directory (bounded).
type Probes = Rc<RefCell<HashMap<PathBuf, Probe>>>;

/// Most directories a worker remembers probes for.
pub(super) const PROBES_MAX: usize = 1024;

/// A copied temporary file waiting for its attributes and its rename.
struct Copied {
    job: FileJob,
    tmp: PathBuf,
    written: u64,
}

/// What the attribute pass needs for one file (sent to the pool).
struct AttrWork {
    src: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    wanted: Wanted,
    create_mode: u32,
}

/// The I/O configuration of a local-sync worker. An explicit `ARSYNC_IO=uring|threads` is
/// obeyed; by default (`auto`) the workers use the blocking pool. For this workload (many
/// small files in the page cache) io_uring punts every create, rename and statx to its io-wq
/// threads, and a worker on the ring measured about 40% more CPU per file than one pool job
/// per batch (docs/BENCHMARKS.md, "Local sync": the backend comparison).
pub(crate) fn worker_io_config() -> io::Result<IoConfig> {
    let c = IoConfig::from_env()?;
    Ok(match c.mode {
        Mode::Auto => c.mode(Mode::Threads),
        _ => c,
    })
}

/// True if `job` is a regular file of more than one copy range (see `bigcopy::RANGE`).
fn holds_large_file(job: &EntryJob) -> bool {
    job.meta.kind() == Kind::File && job.meta.size > crate::bigcopy::RANGE
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Engine {
    /// A worker thread: runs batches of entries from `rx` until the walker is done.
    pub(super) fn serve_worker(self: &Arc<Self>, rx: crossbeam_channel::Receiver<JobBatch>) {
        let in_flight = self.opts.queue_depth.max(1);
        let rt = worker_io_config().and_then(|c| Runtime::with_config(c.sized(in_flight + 16)));
        let rt = match rt {
            Ok(rt) => rt,
            Err(e) => {
                // Without a runtime the entries are still done, one at a time.
                self.error(format!("arsync: cannot start the I/O runtime: {e}"));
                self.run_one_at_a_time(&rx);
                return;
            }
        };
        let probes: Probes = Rc::default();
        let direct: Rc<RefCell<Direct>> = Rc::default();
        let served = rt.block_on(Arc::clone(self).serve_batches(&rt, rx.clone(), probes, direct));
        if let Err(e) = served {
            self.error(format!("arsync: I/O runtime failed: {e}"));
            self.run_one_at_a_time(&rx);
        }
    }

    /// Without a runtime: every entry on this thread, one at a time (still helping with the
    /// ranges of large files when idle).
    fn run_one_at_a_time(self: &Arc<Self>, rx: &crossbeam_channel::Receiver<JobBatch>) {
        self.big.worker_loop(rx, |batch| self.run_entries(batch));
    }

    /// Keeps up to `--queue-depth` files in flight, in batches as the walker sent them.
    async fn serve_batches(
        self: Arc<Self>,
        rt: &Runtime,
        rx: crossbeam_channel::Receiver<JobBatch>,
        probes: Probes,
        direct: Rc<RefCell<Direct>>,
    ) {
        let io = rt.io();
        // On the thread-pool backend a batch runs to completion on this thread (`direct`):
        // taking more batches from the channel before running them would only keep them from
        // an idle worker.
        let limit = match io.backend() {
            Backend::Threads => 1,
            Backend::Uring => self.opts.queue_depth.max(1),
        };
        let mut running: VecDeque<(usize, arsync_io::JoinHandle<()>)> = VecDeque::new();
        let mut files = 0;
        let mut busy = false;
        loop {
            let batch = if running.is_empty() {
                // Nothing in flight: waiting here blocks nobody, and idle time goes to helping
                // with the ranges of large files other workers met.
                if std::mem::take(&mut busy) {
                    self.big.idle();
                }
                match self.big.next_job(&rx) {
                    Some(b) => {
                        busy = true;
                        b
                    }
                    None => break,
                }
            } else {
                match (files < limit).then(|| rx.try_recv()) {
                    Some(Ok(b)) => b,
                    _ => {
                        if let Some((n, task)) = running.pop_front() {
                            task.await;
                            files -= n;
                        }
                        continue;
                    }
                }
            };
            // A batch holding a large file counts as a full load: its copy occupies this
            // thread, so more batches taken meanwhile (another large file among them) would
            // only wait here while another worker idles.
            let n = if batch.jobs.iter().any(holds_large_file) {
                limit
            } else {
                batch.jobs.len()
            };
            let task =
                Arc::clone(&self).run_batch(io.clone(), batch, probes.clone(), direct.clone());
            files += n;
            running.push_back((n, rt.spawn_local(task)));
        }
        for (_, task) in running {
            task.await;
        }
    }

    /// Decides every entry of a batch (in order), then copies its small files together.
    async fn run_batch(
        self: Arc<Self>,
        io: Io,
        batch: JobBatch,
        probes: Probes,
        direct: Rc<RefCell<Direct>>,
    ) {
        let JobBatch { seq, jobs } = batch;
        let mut pre = if io.backend() == Backend::Threads {
            // On this thread, relative to the destination directory: no pool job.
            match direct.try_borrow_mut() {
                Ok(mut d) => self.stat_destinations_direct(&jobs, &mut d),
                Err(_) => self.stat_destinations_direct(&jobs, &mut Direct::default()),
            }
        } else {
            self.stat_destinations(&io, &jobs).await
        };
        // No await from here to the end of the capture: it is this thread's alone.
        SMALL.with(|s| *s.borrow_mut() = Some(Vec::with_capacity(jobs.len())));
        report::begin_capture();
        for (job, pre) in jobs.into_iter().zip(pre.iter_mut()) {
            self.run_entry_job_with(job, pre.take());
        }
        self.seq.complete(&self.out, seq, report::end_capture());
        let small = SMALL.with(|s| s.borrow_mut().take()).unwrap_or_default();
        if small.is_empty() {
            return;
        }
        match io.backend() {
            // On the thread-pool backend the worker copies them itself: a pool job per
            // stage would only add thread hand-offs.
            Backend::Threads => match direct.try_borrow_mut() {
                Ok(mut d) => self.copy_small_direct(small, &mut d),
                Err(_) => self.copy_small_direct(small, &mut Direct::default()),
            },
            Backend::Uring => self.copy_small(&io, small, &probes).await,
        }
    }

    /// `lstat` of the destinations that may exist, in one submission.
    async fn stat_destinations(
        &self,
        io: &Io,
        jobs: &[EntryJob],
    ) -> Vec<Option<io::Result<Option<Meta>>>> {
        let mut pre: Vec<Option<io::Result<Option<Meta>>>> = jobs.iter().map(|_| None).collect();
        let mut which = Vec::new();
        let mut names = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.dir.virtual_new || self.opts.list_only {
                continue;
            }
            if let Ok(c) = cpath(job.paths.dst()) {
                which.push(i);
                names.push(c);
            }
        }
        if names.is_empty() {
            return pre;
        }
        let stats = io
            .statx_many(AT_FDCWD, names, libc::AT_SYMLINK_NOFOLLOW)
            .await;
        for (i, st) in which.into_iter().zip(stats) {
            pre[i] = match st {
                // A destination with other links may change under an earlier entry of this
                // batch (its attributes updated through another name): stat it when its turn
                // comes instead.
                Ok(st) if st.nlink > 1 => None,
                Ok(st) => Some(Ok(Some(meta_of(&st)))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Ok(None)),
                Err(e) => Some(Err(e)),
            };
        }
        pre
    }

    /// Collects `job` for the batch copy when this thread is deciding a batch and the file
    /// qualifies; otherwise transfers it now.
    pub(super) fn queue_or_run(&self, job: FileJob) {
        let job = if self.batch_copy_ok(&job) {
            match SMALL.with(|s| match s.borrow_mut().as_mut() {
                Some(list) => {
                    list.push(job);
                    None
                }
                None => Some(job),
            }) {
                Some(job) => job,
                None => return,
            }
        } else {
            job
        };
        self.run_job(job);
    }

    /// True if `job` can be copied by the batch path: a small file, and no option that needs
    /// the one-file-at-a-time path.
    fn batch_copy_ok(&self, job: &FileJob) -> bool {
        let o = &self.opts;
        job.meta.size <= arsync_io::SMALL_FILE_MAX
            && job.existing.is_none_or(|e| e.kind() == Kind::File)
            && !(o.dry_run
                || o.inplace
                || o.append
                || o.append_verify
                || o.backup
                || o.delay_updates
                || o.partial
                || o.progress
                || o.progress2
                || o.fsync
                || o.preallocate
                || o.remove_source_files
                || o.open_noatime)
            && o.temp_dir.is_none()
            && o.partial_dir.is_none()
            && o.bwlimit.is_none()
            && o.compare_dest.is_empty()
            && o.copy_dest.is_empty()
            && o.link_dest.is_empty()
    }

    /// Copies small files together: data through the ring, attributes in one pool job,
    /// renames in one submission.
    async fn copy_small(self: &Arc<Self>, io: &Io, files: Vec<FileJob>, probes: &Probes) {
        let started = Instant::now();
        let mut copies = Vec::with_capacity(files.len());
        let mut pending = Vec::with_capacity(files.len());
        for job in files {
            let wanted = meta::wanted(&self.opts, &job.meta, job.existing.as_ref(), self.am_root);
            let create_mode = self.create_mode(&wanted);
            let name = job
                .paths
                .dst()
                .file_name()
                .map_or(&b""[..], |n| n.as_bytes());
            let tmp = self.temp_path(job.paths.dst().parent().unwrap_or(Path::new(".")), name);
            match (cpath(job.paths.src()), cpath(&tmp)) {
                (Ok(src), Ok(dst)) => {
                    self.register_temp(&tmp);
                    copies.push(SmallCopy {
                        src_dir: AT_FDCWD,
                        src,
                        src_flags: 0,
                        expect: job.meta.size,
                        dst_dir: AT_FDCWD,
                        dst,
                        mode: create_mode,
                        sparse: self.opts.sparse,
                    });
                    pending.push((job, tmp, wanted, create_mode));
                }
                _ => self.run_job(job),
            }
        }
        let results = io.copy_small_files(copies).await;
        let mut copied = Vec::new();
        let mut work = Vec::new();
        for ((job, tmp, wanted, create_mode), r) in pending.into_iter().zip(results) {
            match r {
                SmallCopied::Copied(written) => {
                    work.push(AttrWork {
                        src: job.paths.src().to_path_buf(),
                        tmp: tmp.clone(),
                        dir: job
                            .paths
                            .dst()
                            .parent()
                            .unwrap_or(Path::new("."))
                            .to_path_buf(),
                        wanted,
                        create_mode,
                    });
                    copied.push(Copied { job, tmp, written });
                }
                // A source that grew past its listed size is copied as it is now, and a taken
                // temporary name replaced: both by the one-file-at-a-time path.
                SmallCopied::Grew => self.retry_alone(job, &tmp),
                SmallCopied::Create(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    self.retry_alone(job, &tmp)
                }
                SmallCopied::Source(e) | SmallCopied::Create(e) => {
                    self.unregister_temp(&tmp);
                    self.small_failed(job, None, &e);
                }
                SmallCopied::Write(e) => self.small_failed(job, Some(&tmp), &e),
            }
        }
        if copied.is_empty() {
            return;
        }
        let known: HashMap<PathBuf, Probe> = {
            let p = probes.borrow();
            work.iter()
                .filter_map(|w| p.get(&w.dir).map(|pr| (w.dir.clone(), *pr)))
                .collect()
        };
        let eng = Arc::clone(self);
        let (attrs, learned) = arsync_io::spawn_blocking(move || {
            let mut known = known;
            let r: Vec<io::Result<()>> = work
                .iter()
                .map(|w| eng.new_file_attrs(w, &mut known))
                .collect();
            (r, known)
        })
        .await;
        {
            let mut p = probes.borrow_mut();
            if p.len() > PROBES_MAX {
                p.clear();
            }
            p.extend(learned);
        }
        let mut renames = Vec::new();
        let mut ready = Vec::new();
        for (c, r) in copied.into_iter().zip(attrs) {
            let r = r.and_then(|()| {
                if self.stopped() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
                }
                Ok(Rename {
                    old_dir: AT_FDCWD,
                    old: cpath(&c.tmp)?,
                    new_dir: AT_FDCWD,
                    new: cpath(c.job.paths.dst())?,
                })
            });
            match r {
                Ok(rename) => {
                    renames.push(rename);
                    ready.push(c);
                }
                Err(e) => self.small_failed(c.job, Some(&c.tmp), &e),
            }
        }
        let renamed = io.rename_many(renames).await;
        for (c, r) in ready.into_iter().zip(renamed) {
            match r {
                Ok(()) => {
                    self.unregister_temp(&c.tmp);
                    let job = c.job;
                    let (src, rel) = (job.paths.src(), job.paths.rel());
                    self.transfer_done(src, rel, &job.meta, c.written, started);
                    self.release(&job.dir);
                }
                Err(e) => self.small_failed(c.job, Some(&c.tmp), &e),
            }
        }
    }

    /// The mode a temporary file is created with: the wanted permission bits (set-id bits are
    /// added by a `chmod` after any `chown`, which clears them). A non-root owner keeps write
    /// access until its xattrs are set (user xattrs need it).
    pub(super) fn create_mode(&self, w: &Wanted) -> u32 {
        let perms = w.perms.unwrap_or(0o600) & 0o777;
        if (self.opts.xattrs || self.opts.acls) && !self.am_root {
            perms | 0o600
        } else {
            perms
        }
    }

    /// Hands a file the batch could not copy (nothing of it was created) to `run_job`.
    fn retry_alone(&self, job: FileJob, tmp: &Path) {
        self.unregister_temp(tmp);
        self.run_job(job);
    }

    /// A batch-copied file failed: removes its temporary file (if `tmp`), reports, releases.
    fn small_failed(&self, job: FileJob, tmp: Option<&Path>, e: &io::Error) {
        if let Some(t) = tmp {
            self.unregister_temp(t);
            let _ = fsops::unlink(t);
        }
        self.transfer_failed(job.paths.src(), job.paths.dst(), e);
        self.release(&job.dir);
    }

    /// Gives a new temporary file its xattrs/ACLs, owner, mode and times (on a pool thread).
    /// `probes` holds what creation gives per directory; a directory not in it is probed with
    /// this file.
    fn new_file_attrs(&self, w: &AttrWork, probes: &mut HashMap<PathBuf, Probe>) -> io::Result<()> {
        let (x, a) = (self.opts.xattrs, self.opts.acls);
        let umask = meta::umask();
        let probe = match probes.get(&w.dir) {
            Some(p) => *p,
            None => {
                let m = fsops::lstat(&w.tmp)?;
                let extra = if x || a {
                    fsops::list_xattrs(&w.tmp)?
                        .iter()
                        .any(|n| meta::xattr_selected(n.as_bytes(), x, a))
                } else {
                    false
                };
                let p = Probe {
                    uid: m.uid,
                    gid: m.gid,
                    plain: m.perms() == w.create_mode & !umask && !extra,
                };
                probes.insert(w.dir.clone(), p);
                p
            }
        };
        let mut acl_set = false;
        if x || a {
            if probe.plain {
                acl_set = meta::copy_xattrs_to_new(&w.src, &w.tmp, x, a)?;
            } else {
                let (acl, _) = meta::sync_xattrs(&w.src, &w.tmp, x, a, false)?;
                acl_set = acl;
            }
        }
        let want = &w.wanted;
        let need_chown =
            want.uid.is_some_and(|u| u != probe.uid) || want.gid.is_some_and(|g| g != probe.gid);
        let mut chown_err = None;
        if need_chown {
            chown_err = fsops::lchown(&w.tmp, want.uid, want.gid).err();
        }
        if let Some(p) = want.perms {
            if need_chown || acl_set || !probe.plain || w.create_mode & !umask != p {
                fsops::chmod(&w.tmp, p)?;
            }
        }
        if want.mtime.is_some() || want.atime.is_some() {
            fsops::set_times(&w.tmp, want.atime, want.mtime)?;
        }
        match chown_err {
            Some(e) if e.kind() == io::ErrorKind::PermissionDenied && !self.am_root => Ok(()),
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The engine's metadata from an `arsync-io` stat.
fn meta_of(st: &arsync_io::Stat) -> Meta {
    let t = |t: arsync_io::Timestamp| Time {
        sec: t.sec,
        nsec: t.nsec,
    };
    Meta {
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        size: st.size,
        mtime: t(st.mtime),
        atime: t(st.atime),
        rdev: libc::makedev(st.rdev.0, st.rdev.1),
        dev: libc::makedev(st.dev.0, st.dev.1),
        ino: st.ino,
        nlink: st.nlink,
    }
}
