//! Platform I/O: filesystem and socket operations over io_uring or a blocking thread pool.
//!
//! Tools never touch io_uring directly. They create a [`Runtime`] per thread and use its [`Io`]
//! handle: every operation is an `async fn` that works the same on both backends.
//!
//! - **io_uring** (via `arsync-ring`): operations with an opcode run in the ring; those without
//!   one (getdents64, utimensat, fchmodat, fchownat, mknodat, copy_file_range, FICLONE,
//!   listxattr, removexattr, l*xattr, readlinkat, SEEK_DATA/SEEK_HOLE) run on the pool.
//! - **threads**: every operation runs as a blocking syscall on a shared worker pool; futures are
//!   completed through wakers.
//!
//! The backend is chosen by [`IoConfig::from_env`]: `ARSYNC_IO=threads` forces the pool,
//! `ARSYNC_IO=uring` forces io_uring (failing with a clear message where it cannot be set up),
//! unset or `auto` tries io_uring and falls back to the pool (ENOSYS, EPERM under Docker's
//! seccomp profile, `kernel.io_uring_disabled`).
//!
//! ```
//! use arsync_io::{Runtime, AT_FDCWD};
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let rt = Runtime::new()?;
//! let io = rt.io();
//! let path = dir.path().join("hello.txt");
//! rt.block_on(async {
//!     let f = io.open(AT_FDCWD, &path, libc::O_CREAT | libc::O_WRONLY, 0o644).await?;
//!     let (r, _buf) = io.write_all_at(&f, b"hello".to_vec(), 0).await;
//!     r?;
//!     io.close(f).await?;
//!     let st = io.statx(AT_FDCWD, &path, 0).await?;
//!     assert_eq!(st.size, 5);
//!     std::io::Result::Ok(())
//! })??;
//! # Ok(()) }
//! ```
//!
//! For the sync engine: [`Io::copy_small_file`] copies a small file as one linked chain
//! (open, read, close, open, write, close: one CQE on success) and [`Io::statx_many`] stats many
//! names with one submission. dynfs can issue fragment reads/writes concurrently with
//! [`arsync_ring::spawn_local`] (re-exported as [`spawn_local`]) and join the handles.
//!
//! Parallel reads of several fragments (as dynfs does for an extent): spawn one task per fragment
//! and join them; on io_uring they are all in flight in one ring.
//!
//! ```
//! use arsync_io::{spawn_local, Runtime, AT_FDCWD};
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("extent");
//! std::fs::write(&path, vec![7u8; 4 * 4096])?;
//! let rt = Runtime::new()?;
//! let io = rt.io();
//! let parts = rt.block_on(async {
//!     let f = std::rc::Rc::new(io.open(AT_FDCWD, &path, libc::O_RDONLY, 0).await?);
//!     let tasks: Vec<_> = (0..4u64)
//!         .map(|i| {
//!             let (io, f) = (io.clone(), f.clone());
//!             spawn_local(async move { io.read_full_at(&*f, Vec::with_capacity(4096), i * 4096).await })
//!                 .expect("inside block_on")
//!         })
//!         .collect();
//!     let mut parts = Vec::new();
//!     for t in tasks {
//!         let (r, buf) = t.await;
//!         r?;
//!         parts.push(buf);
//!     }
//!     std::io::Result::Ok(parts)
//! })??;
//! assert!(parts.iter().all(|p| p.len() == 4096 && p.iter().all(|&b| b == 7)));
//! # Ok(()) }
//! ```
//!
//! Things to know:
//! - Buffers are moved into operations and handed back with the result (`(io::Result<T>, Vec<u8>)`);
//!   reads fill the *spare capacity* of the `Vec` (`Vec::with_capacity(n)` reads up to `n` bytes).
//! - Dropping a future cancels the operation on io_uring, but the operation may still have taken
//!   effect; on the pool a started job always runs to the end. Memory is never at risk (the
//!   operation owns it), but an fd or dirfd given to an operation should stay open until the
//!   operation has completed, or the kernel may act on whatever file reuses that number.
//! - On the pool, a read from a pipe or socket occupies a worker until data arrives; serving many
//!   idle connections needs the io_uring backend.
#![warn(missing_docs)]

mod dir;
mod pool;
mod small;
mod stat;
mod sys;
pub mod tools;
pub mod watch;

pub use arsync_ring::{spawn_local, Features, JoinHandle};
pub use dir::{DirEntry, DirReader};
pub use pool::{pool_threads, spawn_blocking, Blocking};
pub use small::{Rename, SmallCopied, SmallCopy, SMALL_FILE_MAX};
pub use stat::{FileKind, Stat, Timestamp, STATX_MASK};

use arsync_ring::op::{self, cstr, XattrTarget};
use arsync_ring::{Executor, Handle, Opcode, Ring, SharedBuf, SqeOpts, ThreadPark};
use std::ffi::CString;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The current working directory as a `dirfd`.
pub const AT_FDCWD: RawFd = libc::AT_FDCWD;

/// Which backend a runtime uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring through `arsync-ring`.
    Uring,
    /// Blocking syscalls on a thread pool.
    Threads,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Threads => "threads",
        })
    }
}

/// The backend requested by configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Try io_uring, fall back to threads.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Threads only.
    Threads,
}

/// A function that builds a ring (injectable, to simulate setup failures in tests).
pub type RingFactory = Arc<dyn Fn(u32) -> io::Result<Ring> + Send + Sync>;

/// Runtime configuration.
#[derive(Clone)]
pub struct IoConfig {
    /// Requested backend.
    pub mode: Mode,
    /// Ring size (submission queue entries).
    pub entries: u32,
    /// Builds the ring; defaults to a ring with a 1024-slot direct descriptor table and io-wq
    /// workers capped at 4x the CPU count.
    pub ring_factory: RingFactory,
}

impl fmt::Debug for IoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoConfig")
            .field("mode", &self.mode)
            .field("entries", &self.entries)
            .finish()
    }
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            mode: Mode::Auto,
            entries: 256,
            ring_factory: Arc::new(default_ring),
        }
    }
}

fn default_ring(entries: u32) -> io::Result<Ring> {
    sized_ring(entries, 256)
}

fn sized_ring(entries: u32, files: u32) -> io::Result<Ring> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2);
    Ring::builder()
        .entries(entries)
        .files(files)
        .max_workers(cpus * 4, cpus * 4)
        .build()
}

impl IoConfig {
    /// Reads `ARSYNC_IO` (`auto`, `uring`, `threads`); anything else is an error.
    pub fn from_env() -> io::Result<IoConfig> {
        let v = std::env::var("ARSYNC_IO").unwrap_or_default();
        Ok(IoConfig {
            mode: parse_mode(&v)?,
            ..IoConfig::default()
        })
    }

    /// This configuration with another mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// This configuration for about `in_flight` operations at once: a ring of that many
    /// submission entries (rounded up to a power of two, 64 to 4096) and as many direct
    /// descriptor slots (for example, one per small file in flight in a batch copy).
    pub fn sized(mut self, in_flight: usize) -> Self {
        let n = in_flight.clamp(64, 4096) as u32;
        self.entries = n.next_power_of_two();
        self.ring_factory = Arc::new(move |entries| sized_ring(entries, n));
        self
    }

    /// This configuration with another ring factory (e.g. one that fails, for tests).
    pub fn ring_factory(
        mut self,
        f: impl Fn(u32) -> io::Result<Ring> + Send + Sync + 'static,
    ) -> Self {
        self.ring_factory = Arc::new(f);
        self
    }
}

/// Parses an `ARSYNC_IO` value.
pub fn parse_mode(v: &str) -> io::Result<Mode> {
    match v.trim() {
        "" | "auto" => Ok(Mode::Auto),
        "uring" | "io_uring" => Ok(Mode::Uring),
        "threads" | "thread" | "pool" => Ok(Mode::Threads),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ARSYNC_IO={other:?} is not valid: use auto, uring or threads"),
        )),
    }
}

struct IoInner {
    ring: Option<Handle>,
    fallback: Option<String>,
}

/// A clonable per-thread handle with an async method for every operation. Not `Send`.
#[derive(Clone)]
pub struct Io {
    inner: Rc<IoInner>,
}

enum Driver {
    Ring(Ring),
    Threads(Executor),
}

/// Owns the backend and the thread's executor. Dropping it cancels and drains everything in
/// flight on the ring.
pub struct Runtime {
    io: Io,
    driver: Driver,
}

impl Runtime {
    /// A runtime configured from the environment (`ARSYNC_IO`).
    pub fn new() -> io::Result<Runtime> {
        Runtime::with_config(IoConfig::from_env()?)
    }

    /// A runtime with an explicit configuration.
    pub fn with_config(cfg: IoConfig) -> io::Result<Runtime> {
        let threads = |fallback: Option<String>| -> io::Result<Runtime> {
            Ok(Runtime {
                io: Io {
                    inner: Rc::new(IoInner {
                        ring: None,
                        fallback,
                    }),
                },
                driver: Driver::Threads(Executor::new()?),
            })
        };
        match cfg.mode {
            Mode::Threads => threads(Some("thread pool requested (ARSYNC_IO=threads)".to_string())),
            Mode::Uring => match (cfg.ring_factory)(cfg.entries) {
                Ok(ring) => Ok(Runtime::from_ring(ring)),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "ARSYNC_IO=uring, but io_uring cannot be set up here: {e} \
                         (blocked by a seccomp profile such as Docker's default, or by the \
                         kernel.io_uring_disabled sysctl?); unset ARSYNC_IO or use ARSYNC_IO=threads"
                    ),
                )),
            },
            Mode::Auto => match (cfg.ring_factory)(cfg.entries) {
                Ok(ring) => Ok(Runtime::from_ring(ring)),
                Err(e) => threads(Some(format!("io_uring unavailable ({e}); using the thread pool"))),
            },
        }
    }

    fn from_ring(ring: Ring) -> Runtime {
        Runtime {
            io: Io {
                inner: Rc::new(IoInner {
                    ring: Some(ring.handle()),
                    fallback: None,
                }),
            },
            driver: Driver::Ring(ring),
        }
    }

    /// The I/O handle.
    pub fn io(&self) -> Io {
        self.io.clone()
    }

    /// Runs `fut` and spawned tasks to completion on this thread.
    pub fn block_on<F: Future>(&self, fut: F) -> io::Result<F::Output> {
        match &self.driver {
            Driver::Ring(r) => r.block_on(fut),
            Driver::Threads(e) => e.block_on(&ThreadPark, fut),
        }
    }

    /// Spawns a task on this runtime (runs during `block_on`).
    pub fn spawn_local<F: Future + 'static>(&self, fut: F) -> JoinHandle<F::Output> {
        match &self.driver {
            Driver::Ring(r) => r.spawn_local(fut),
            Driver::Threads(e) => e.spawn_local(fut),
        }
    }
}

impl std::ops::Deref for Runtime {
    type Target = Io;
    fn deref(&self) -> &Io {
        &self.io
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Driver::Threads(e) = &self.driver {
            e.clear();
        }
    }
}

/// Result of an operation that hands a buffer back.
pub type BufResult<T> = (io::Result<T>, Vec<u8>);

fn raw(fd: impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

impl Io {
    /// The active backend.
    pub fn backend(&self) -> Backend {
        if self.inner.ring.is_some() {
            Backend::Uring
        } else {
            Backend::Threads
        }
    }

    /// Why the thread pool is in use (requested, or the automatic choice fell back), if it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.inner.fallback.as_deref()
    }

    /// io_uring features, when that backend is active.
    pub fn features(&self) -> Option<&Features> {
        self.inner.ring.as_ref().map(|h| h.features())
    }

    /// A multi-line description of the backend (for `--version -v`).
    pub fn describe(&self) -> String {
        let mut s = format!("I/O backend: {}\n", self.backend());
        if let Some(r) = self.fallback_reason() {
            s.push_str(r);
            s.push('\n');
        }
        if let Some(f) = self.features() {
            s.push_str(&f.to_string());
            s.push('\n');
        }
        s.push_str(&format!("blocking pool threads: {}", pool_threads()));
        s
    }

    /// The ring, if the backend is io_uring and it supports `op`.
    fn ring(&self, op: Opcode) -> Option<&Handle> {
        self.inner
            .ring
            .as_ref()
            .filter(|h| h.features().supports(op))
    }

    /// The underlying ring handle (io_uring backend only), for code that needs raw operations.
    pub fn ring_handle(&self) -> Option<&Handle> {
        self.inner.ring.as_ref()
    }

    /// `statx` of `path` relative to `dirfd` (`flags`: e.g. `libc::AT_SYMLINK_NOFOLLOW`).
    pub async fn statx(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        flags: i32,
    ) -> io::Result<Stat> {
        let p = cstr(path)?;
        match self.ring(Opcode::Statx) {
            Some(h) => h
                .op(op::Statx::new(dirfd, p, flags, STATX_MASK))
                .await
                .map(Stat::from),
            None => spawn_blocking(move || sys::statx(dirfd, &p, flags, STATX_MASK))
                .await
                .map(Stat::from),
        }
    }

    /// `fstat` via `statx(fd, "", AT_EMPTY_PATH)`.
    pub async fn fstat(&self, fd: impl AsFd) -> io::Result<Stat> {
        self.statx(raw(fd), "", libc::AT_EMPTY_PATH).await
    }

    /// `openat` (`O_CLOEXEC` added).
    pub async fn open(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        let p = cstr(path)?;
        match self.ring(Opcode::OpenAt) {
            Some(h) => h.op(op::OpenAt::new(dirfd, p, flags, mode)).await,
            None => spawn_blocking(move || sys::openat(dirfd, &p, flags, mode)).await,
        }
    }

    /// `openat2` with `RESOLVE_*` flags (e.g. `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`);
    /// `O_CLOEXEC` added.
    pub async fn open2(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        flags: i32,
        mode: u32,
        resolve: u64,
    ) -> io::Result<OwnedFd> {
        let p = cstr(path)?;
        match self.ring(Opcode::OpenAt2) {
            Some(h) => {
                let op = op::OpenAt2::new(dirfd, p, flags as u64, u64::from(mode), resolve);
                h.op(op)
                    .await?
                    .ok_or_else(|| io::Error::other("openat2 returned no fd"))
            }
            None => spawn_blocking(move || sys::openat2(dirfd, &p, flags, mode, resolve)).await,
        }
    }

    /// `close`.
    pub async fn close(&self, fd: OwnedFd) -> io::Result<()> {
        match self.ring(Opcode::Close) {
            Some(h) => h.op(op::Close::new(fd)).await,
            None => {
                spawn_blocking(move || {
                    use std::os::fd::IntoRawFd;
                    // SAFETY: we own the fd and close it exactly once.
                    let r = unsafe { libc::close(fd.into_raw_fd()) };
                    if r < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                })
                .await
            }
        }
    }

    /// One `pread` into the spare capacity of `buf` (`offset` `u64::MAX`: file position).
    pub async fn read_at(&self, fd: impl AsFd, buf: Vec<u8>, offset: u64) -> BufResult<usize> {
        let fd = raw(fd);
        match self.ring(Opcode::Read) {
            Some(h) => h.read_at(fd, buf, offset).await,
            None => {
                let mut buf = buf;
                spawn_blocking(move || {
                    let r = sys::read_at(fd, &mut buf, offset);
                    (r, buf)
                })
                .await
            }
        }
    }

    /// One `pwrite` of `buf` (`offset` `u64::MAX`: file position).
    pub async fn write_at(&self, fd: impl AsFd, buf: Vec<u8>, offset: u64) -> BufResult<usize> {
        let fd = raw(fd);
        match self.ring(Opcode::Write) {
            Some(h) => h.write_at(fd, buf, offset).await,
            None => spawn_blocking(move || (sys::write_at(fd, &buf, offset), buf)).await,
        }
    }

    /// Reads until `buf` is full or end of file (short reads are resubmitted). Returns the
    /// number of bytes read by this call.
    pub async fn read_full_at(
        &self,
        fd: impl AsFd,
        mut buf: Vec<u8>,
        offset: u64,
    ) -> BufResult<usize> {
        let fd = raw(fd);
        // SAFETY: the fd is borrowed for the duration of this call by the caller's `AsFd`.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut total = 0usize;
        while buf.len() < buf.capacity() {
            let off = if offset == u64::MAX {
                offset
            } else {
                offset + total as u64
            };
            let (r, b) = self.read_at(bfd, buf, off).await;
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(total), buf)
    }

    /// Writes all of `buf` (short writes are resubmitted, never silently truncated).
    pub async fn write_all_at(&self, fd: impl AsFd, buf: Vec<u8>, offset: u64) -> BufResult<()> {
        let fd = raw(fd);
        // SAFETY: as in `read_full_at`.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut done = 0usize;
        let mut buf = buf;
        let len = buf.len();
        while done < len {
            let off = if offset == u64::MAX {
                offset
            } else {
                offset + done as u64
            };
            let chunk = if done == 0 {
                std::mem::take(&mut buf)
            } else {
                buf[done..].to_vec()
            };
            let (r, b) = self.write_at(bfd, chunk, off).await;
            if done == 0 {
                buf = b;
            }
            match r {
                Ok(0) => return (Err(io::Error::from(io::ErrorKind::WriteZero)), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// `fsync` / `fdatasync`.
    pub async fn fsync(&self, fd: impl AsFd, datasync: bool) -> io::Result<()> {
        let fd = raw(fd);
        match self.ring(Opcode::Fsync) {
            Some(h) => h.op(op::Fsync::new(fd, datasync)).await,
            None => spawn_blocking(move || sys::fsync(fd, datasync)).await,
        }
    }

    /// `fallocate`.
    pub async fn fallocate(
        &self,
        fd: impl AsFd,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let fd = raw(fd);
        match self.ring(Opcode::Fallocate) {
            Some(h) => h.op(op::Fallocate::new(fd, mode, offset, len)).await,
            None => spawn_blocking(move || sys::fallocate(fd, mode, offset, len)).await,
        }
    }

    /// `posix_fadvise`.
    pub async fn fadvise(
        &self,
        fd: impl AsFd,
        offset: u64,
        len: i64,
        advice: i32,
    ) -> io::Result<()> {
        let fd = raw(fd);
        match self.ring(Opcode::Fadvise) {
            Some(h) => h.op(op::Fadvise::new(fd, offset, len, advice)).await,
            None => spawn_blocking(move || sys::fadvise(fd, offset, len, advice)).await,
        }
    }

    /// `ftruncate`.
    pub async fn ftruncate(&self, fd: impl AsFd, len: u64) -> io::Result<()> {
        let fd = raw(fd);
        match self.ring(Opcode::Ftruncate) {
            Some(h) => h.op(op::Ftruncate::new(fd, len)).await,
            None => spawn_blocking(move || sys::ftruncate(fd, len)).await,
        }
    }

    /// `mkdirat`.
    pub async fn mkdir(&self, dirfd: RawFd, path: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let p = cstr(path)?;
        match self.ring(Opcode::MkdirAt) {
            Some(h) => h.op(op::MkdirAt::new(dirfd, p, mode)).await,
            None => spawn_blocking(move || sys::mkdirat(dirfd, &p, mode)).await,
        }
    }

    /// `symlinkat`: creates `link` (relative to `dirfd`) pointing at `target`.
    pub async fn symlink(
        &self,
        target: impl AsRef<Path>,
        dirfd: RawFd,
        link: impl AsRef<Path>,
    ) -> io::Result<()> {
        let (t, l) = (cstr(target)?, cstr(link)?);
        match self.ring(Opcode::SymlinkAt) {
            Some(h) => h.op(op::SymlinkAt::new(t, dirfd, l)).await,
            None => spawn_blocking(move || sys::symlinkat(&t, dirfd, &l)).await,
        }
    }

    /// `linkat` (`flags`: e.g. `AT_SYMLINK_FOLLOW`).
    pub async fn link(
        &self,
        olddirfd: RawFd,
        old: impl AsRef<Path>,
        newdirfd: RawFd,
        new: impl AsRef<Path>,
        flags: i32,
    ) -> io::Result<()> {
        let (o, n) = (cstr(old)?, cstr(new)?);
        match self.ring(Opcode::LinkAt) {
            Some(h) => h.op(op::LinkAt::new(olddirfd, o, newdirfd, n, flags)).await,
            None => spawn_blocking(move || sys::linkat(olddirfd, &o, newdirfd, &n, flags)).await,
        }
    }

    /// `renameat2` (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE` or 0).
    pub async fn rename(
        &self,
        olddirfd: RawFd,
        old: impl AsRef<Path>,
        newdirfd: RawFd,
        new: impl AsRef<Path>,
        flags: u32,
    ) -> io::Result<()> {
        let (o, n) = (cstr(old)?, cstr(new)?);
        match self.ring(Opcode::RenameAt) {
            Some(h) => {
                h.op(op::RenameAt::new(olddirfd, o, newdirfd, n, flags))
                    .await
            }
            None => spawn_blocking(move || sys::renameat2(olddirfd, &o, newdirfd, &n, flags)).await,
        }
    }

    /// `unlinkat` (`flags`: `AT_REMOVEDIR` for directories).
    pub async fn unlink(&self, dirfd: RawFd, path: impl AsRef<Path>, flags: i32) -> io::Result<()> {
        let p = cstr(path)?;
        match self.ring(Opcode::UnlinkAt) {
            Some(h) => h.op(op::UnlinkAt::new(dirfd, p, flags)).await,
            None => spawn_blocking(move || sys::unlinkat(dirfd, &p, flags)).await,
        }
    }

    /// `fsetxattr`.
    pub async fn fsetxattr(
        &self,
        fd: impl AsFd,
        name: &[u8],
        value: Vec<u8>,
        flags: i32,
    ) -> io::Result<()> {
        let fd = raw(fd);
        let n = op::cstr_bytes(name)?;
        match self.ring(Opcode::FSetXattr) {
            Some(h) => {
                h.op(op::SetXattr::new(
                    XattrTarget::Fd(fd.into()),
                    n,
                    value,
                    flags,
                ))
                .await
            }
            None => {
                spawn_blocking(move || sys::setxattr(&sys::XTarget::Fd(fd), &n, &value, flags))
                    .await
            }
        }
    }

    /// `fgetxattr` (values up to 64 KiB, the Linux limit).
    pub async fn fgetxattr(&self, fd: impl AsFd, name: &[u8]) -> io::Result<Vec<u8>> {
        let fd = raw(fd);
        let n = op::cstr_bytes(name)?;
        match self.ring(Opcode::FGetXattr) {
            Some(h) => ring_getxattr(h, || XattrTarget::Fd(fd.into()), n).await,
            None => spawn_blocking(move || sys::getxattr(&sys::XTarget::Fd(fd), &n)).await,
        }
    }

    /// `setxattr` / `lsetxattr` (`follow = false`: acts on a symlink itself; always on the pool,
    /// io_uring has no opcode for it).
    pub async fn setxattr(
        &self,
        path: impl AsRef<Path>,
        follow: bool,
        name: &[u8],
        value: Vec<u8>,
        flags: i32,
    ) -> io::Result<()> {
        let (p, n) = (cstr(path)?, op::cstr_bytes(name)?);
        match (follow, self.ring(Opcode::SetXattr)) {
            (true, Some(h)) => {
                h.op(op::SetXattr::new(XattrTarget::Path(p), n, value, flags))
                    .await
            }
            _ => {
                let t = if follow {
                    sys::XTarget::Path(p)
                } else {
                    sys::XTarget::LPath(p)
                };
                spawn_blocking(move || sys::setxattr(&t, &n, &value, flags)).await
            }
        }
    }

    /// `getxattr` / `lgetxattr`.
    pub async fn getxattr(
        &self,
        path: impl AsRef<Path>,
        follow: bool,
        name: &[u8],
    ) -> io::Result<Vec<u8>> {
        let (p, n) = (cstr(path)?, op::cstr_bytes(name)?);
        match (follow, self.ring(Opcode::GetXattr)) {
            (true, Some(h)) => ring_getxattr(h, || XattrTarget::Path(p.clone()), n).await,
            _ => {
                let t = if follow {
                    sys::XTarget::Path(p)
                } else {
                    sys::XTarget::LPath(p)
                };
                spawn_blocking(move || sys::getxattr(&t, &n)).await
            }
        }
    }

    /// `listxattr` / `llistxattr` (pool): the attribute names.
    pub async fn listxattr(
        &self,
        path: impl AsRef<Path>,
        follow: bool,
    ) -> io::Result<Vec<Vec<u8>>> {
        let p = cstr(path)?;
        let t = if follow {
            sys::XTarget::Path(p)
        } else {
            sys::XTarget::LPath(p)
        };
        spawn_blocking(move || sys::listxattr(&t)).await
    }

    /// `flistxattr` (pool).
    pub async fn flistxattr(&self, fd: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
        let fd = raw(fd);
        spawn_blocking(move || sys::listxattr(&sys::XTarget::Fd(fd))).await
    }

    /// `removexattr` / `lremovexattr` (pool).
    pub async fn removexattr(
        &self,
        path: impl AsRef<Path>,
        follow: bool,
        name: &[u8],
    ) -> io::Result<()> {
        let (p, n) = (cstr(path)?, op::cstr_bytes(name)?);
        let t = if follow {
            sys::XTarget::Path(p)
        } else {
            sys::XTarget::LPath(p)
        };
        spawn_blocking(move || sys::removexattr(&t, &n)).await
    }

    /// `fremovexattr` (pool).
    pub async fn fremovexattr(&self, fd: impl AsFd, name: &[u8]) -> io::Result<()> {
        let fd = raw(fd);
        let n = op::cstr_bytes(name)?;
        spawn_blocking(move || sys::removexattr(&sys::XTarget::Fd(fd), &n)).await
    }

    /// `readlinkat` (pool).
    pub async fn readlink(&self, dirfd: RawFd, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let p = cstr(path)?;
        spawn_blocking(move || sys::readlinkat(dirfd, &p)).await
    }

    /// `utimensat` (pool): `path` `None` sets the times of `dirfd` itself (`futimens`).
    /// `times` = [atime, mtime]; use `libc::UTIME_OMIT` / `UTIME_NOW` in `tv_nsec` as usual.
    pub async fn utimens(
        &self,
        dirfd: RawFd,
        path: Option<&Path>,
        times: [libc::timespec; 2],
        flags: i32,
    ) -> io::Result<()> {
        let p = path.map(cstr).transpose()?;
        spawn_blocking(move || sys::utimensat(dirfd, p.as_deref(), &times, flags)).await
    }

    /// `fchmodat` / `fchmod` (pool; `path` `None` acts on `dirfd`).
    pub async fn chmod(
        &self,
        dirfd: RawFd,
        path: Option<&Path>,
        mode: u32,
        flags: i32,
    ) -> io::Result<()> {
        let p = path.map(cstr).transpose()?;
        spawn_blocking(move || sys::fchmodat(dirfd, p.as_deref(), mode, flags)).await
    }

    /// `fchownat` / `fchown` (pool; `flags` `AT_SYMLINK_NOFOLLOW` gives `lchown`). `u32::MAX`
    /// leaves an id unchanged.
    pub async fn chown(
        &self,
        dirfd: RawFd,
        path: Option<&Path>,
        uid: u32,
        gid: u32,
        flags: i32,
    ) -> io::Result<()> {
        let p = path.map(cstr).transpose()?;
        spawn_blocking(move || sys::fchownat(dirfd, p.as_deref(), uid, gid, flags)).await
    }

    /// `mknodat` (pool): FIFOs, device nodes, sockets.
    pub async fn mknod(
        &self,
        dirfd: RawFd,
        path: impl AsRef<Path>,
        mode: u32,
        dev: u64,
    ) -> io::Result<()> {
        let p = cstr(path)?;
        spawn_blocking(move || sys::mknodat(dirfd, &p, mode, dev)).await
    }

    /// `copy_file_range` (pool): copies up to `len` bytes in the kernel; returns the count.
    pub async fn copy_file_range(
        &self,
        fd_in: impl AsFd,
        off_in: u64,
        fd_out: impl AsFd,
        off_out: u64,
        len: usize,
    ) -> io::Result<usize> {
        let (a, b) = (raw(fd_in), raw(fd_out));
        spawn_blocking(move || sys::copy_file_range(a, off_in, b, off_out, len)).await
    }

    /// `ioctl(FICLONE)` (pool): makes `dst` share `src`'s extents (reflink).
    pub async fn ficlone(&self, dst: impl AsFd, src: impl AsFd) -> io::Result<()> {
        let (d, s) = (raw(dst), raw(src));
        spawn_blocking(move || sys::ficlone(d, s)).await
    }

    /// `lseek(SEEK_DATA)` (pool): the next data offset at or after `offset`, `None` past the end.
    pub async fn seek_data(&self, fd: impl AsFd, offset: u64) -> io::Result<Option<u64>> {
        let fd = raw(fd);
        spawn_blocking(move || sys::lseek(fd, offset, libc::SEEK_DATA)).await
    }

    /// `lseek(SEEK_HOLE)` (pool): the next hole at or after `offset`, `None` past the end.
    pub async fn seek_hole(&self, fd: impl AsFd, offset: u64) -> io::Result<Option<u64>> {
        let fd = raw(fd);
        spawn_blocking(move || sys::lseek(fd, offset, libc::SEEK_HOLE)).await
    }

    /// `splice` between two fds (one must be a pipe); `None` offsets use the file position.
    pub async fn splice(
        &self,
        fd_in: impl AsFd,
        off_in: Option<u64>,
        fd_out: impl AsFd,
        off_out: Option<u64>,
        len: u32,
    ) -> io::Result<usize> {
        let (a, b) = (raw(fd_in), raw(fd_out));
        match self.ring(Opcode::Splice) {
            Some(h) => h.op(op::Splice::new(a, off_in, b, off_out, len)).await,
            None => spawn_blocking(move || sys::splice(a, off_in, b, off_out, len as usize)).await,
        }
    }

    /// `accept4` of one connection.
    pub async fn accept(&self, listener: impl AsFd) -> io::Result<OwnedFd> {
        let fd = raw(listener);
        match self.ring(Opcode::Accept) {
            Some(h) => h.op(op::Accept::new(fd)).await,
            None => spawn_blocking(move || sys::accept(fd)).await,
        }
    }

    /// `connect` a socket.
    pub async fn connect(&self, sock: impl AsFd, addr: std::net::SocketAddr) -> io::Result<()> {
        let fd = raw(sock);
        match self.ring(Opcode::Connect) {
            Some(h) => h.op(op::Connect::new(fd, addr)).await,
            None => spawn_blocking(move || sys::connect(fd, addr)).await,
        }
    }

    /// `send` of `buf` (zero-copy where supported and `zero_copy`).
    pub async fn send(&self, sock: impl AsFd, buf: Vec<u8>, zero_copy: bool) -> BufResult<usize> {
        let fd = raw(sock);
        match self.ring(Opcode::Send) {
            Some(h) => {
                let mut s = op::Send::new(fd, buf, 0);
                if zero_copy && h.features().supports(Opcode::SendZc) {
                    s = s.zero_copy();
                }
                h.op(s).await
            }
            None => spawn_blocking(move || (sys::send(fd, &buf), buf)).await,
        }
    }

    /// `recv` into the spare capacity of `buf`.
    pub async fn recv(&self, sock: impl AsFd, buf: Vec<u8>) -> BufResult<usize> {
        let fd = raw(sock);
        match self.ring(Opcode::Recv) {
            Some(h) => h.recv(fd, buf).await,
            None => {
                let mut buf = buf;
                spawn_blocking(move || {
                    let r = sys::recv(fd, &mut buf);
                    (r, buf)
                })
                .await
            }
        }
    }

    /// Sleeps for `dur`.
    pub async fn sleep(&self, dur: Duration) -> io::Result<()> {
        match self.ring(Opcode::Timeout) {
            Some(h) => h.sleep(dur).await,
            None => {
                spawn_blocking(move || std::thread::sleep(dur)).await;
                Ok(())
            }
        }
    }

    /// Streams the entries of an already open directory (opened with `O_DIRECTORY`).
    pub fn read_dir_fd(&self, dir: OwnedFd) -> DirReader {
        DirReader::new(dir)
    }

    /// Opens directory `path` (relative to `dirfd`) for streaming reads of its entries.
    pub async fn read_dir(&self, dirfd: RawFd, path: impl AsRef<Path>) -> io::Result<DirReader> {
        let fd = self
            .open(dirfd, path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .await?;
        Ok(DirReader::new(fd))
    }

    /// Copies a small file `src_dir/src_name` (expected `size` bytes) to a new file
    /// `dst_dir/dst_name` created with `mode` (`O_EXCL`: the name must not exist). On io_uring
    /// this is one linked chain on direct descriptors: open, read, close, open, write, close,
    /// with one CQE on success. If the source is shorter than `size` the result is an
    /// `UnexpectedEof` error (the destination may exist and should be removed by the caller);
    /// a source that grew since it was stat'ed is copied up to `size` bytes only (re-stat the
    /// source afterwards if that matters, as rsync does).
    pub async fn copy_small_file(
        &self,
        src_dir: RawFd,
        src_name: impl AsRef<Path>,
        size: u64,
        dst_dir: RawFd,
        dst_name: impl AsRef<Path>,
        mode: u32,
    ) -> io::Result<()> {
        let (s, d) = (cstr(src_name)?, cstr(dst_name)?);
        let dflags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let chain_ops = [Opcode::OpenAt, Opcode::Read, Opcode::Write, Opcode::Close];
        let chain_ring = self.inner.ring.as_ref().filter(|h| {
            let f = h.features();
            f.sparse_files && chain_ops.iter().all(|op| f.supports(*op))
        });
        if let Some(h) = chain_ring {
            if size > 0 && size <= (1 << 20) {
                if let (Ok(a), Ok(b)) = (h.alloc_direct(), h.alloc_direct()) {
                    return chain_copy(
                        h,
                        src_dir,
                        s,
                        size as usize,
                        dst_dir,
                        d,
                        dflags,
                        mode,
                        a,
                        b,
                    )
                    .await;
                }
            }
        }
        if self.inner.ring.is_some() && size > (1 << 20) {
            return self
                .copy_loop(src_dir, s, size, dst_dir, d, dflags, mode)
                .await;
        }
        spawn_blocking(move || {
            let src = sys::openat(src_dir, &s, libc::O_RDONLY, 0)?;
            let dst = sys::openat(dst_dir, &d, dflags, mode)?;
            let mut off = 0u64;
            let mut buf = Vec::with_capacity((size as usize).clamp(1, 1 << 20));
            while off < size {
                buf.clear();
                let n = sys::read_at(src.as_raw_fd(), &mut buf, off)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "source file shrank during copy",
                    ));
                }
                let mut w = 0;
                while w < n {
                    let k = sys::write_at(dst.as_raw_fd(), &buf[w..n], off + w as u64)?;
                    if k == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero));
                    }
                    w += k;
                }
                off += n as u64;
            }
            Ok(())
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_loop(
        &self,
        src_dir: RawFd,
        s: CString,
        size: u64,
        dst_dir: RawFd,
        d: CString,
        dflags: i32,
        mode: u32,
    ) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sp = Path::new(std::ffi::OsStr::from_bytes(s.as_bytes()));
        let dp = Path::new(std::ffi::OsStr::from_bytes(d.as_bytes()));
        let src = self.open(src_dir, sp, libc::O_RDONLY, 0).await?;
        let dst = self.open(dst_dir, dp, dflags, mode).await?;
        let mut off = 0u64;
        let mut buf = Vec::with_capacity(1 << 20);
        while off < size {
            buf.clear();
            let (r, b) = self.read_at(&src, buf, off).await;
            let n = r?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shrank during copy",
                ));
            }
            let (r, b) = self.write_all_at(&dst, b, off).await;
            r?;
            buf = b;
            off += n as u64;
        }
        self.close(dst).await?;
        Ok(())
    }

    /// `statx` of many names relative to `dirfd`, submitted together; results in input order.
    pub async fn statx_many(
        &self,
        dirfd: RawFd,
        names: Vec<CString>,
        flags: i32,
    ) -> Vec<io::Result<Stat>> {
        match self.ring(Opcode::Statx) {
            Some(h) => {
                let mut batch = h.batch();
                let tickets: Vec<_> = names
                    .into_iter()
                    .map(|n| batch.push(op::Statx::new(dirfd, n, flags, STATX_MASK)))
                    .collect();
                if let Err(e) = batch.finished().await {
                    let code = e.raw_os_error().unwrap_or(libc::EIO);
                    return (0..tickets.len())
                        .map(|_| Err(io::Error::from_raw_os_error(code)))
                        .collect();
                }
                tickets
                    .into_iter()
                    .map(|t| {
                        batch
                            .take(t)
                            .unwrap_or_else(|_| Err(io::Error::other("statx result missing")))
                            .map(Stat::from)
                    })
                    .collect()
            }
            None => {
                spawn_blocking(move || {
                    names
                        .iter()
                        .map(|n| sys::statx(dirfd, n, flags, STATX_MASK).map(Stat::from))
                        .collect()
                })
                .await
            }
        }
    }
}

/// `getxattr` through the ring: a small buffer first, then the exact size the kernel reports.
async fn ring_getxattr(
    h: &Handle,
    target: impl Fn() -> XattrTarget,
    name: CString,
) -> io::Result<Vec<u8>> {
    let mut cap = 256usize;
    for _ in 0..8 {
        let (r, v) = h
            .op(op::GetXattr::new(
                target(),
                name.clone(),
                Vec::with_capacity(cap),
            ))
            .await;
        match r {
            Ok(_) => return Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                // Capacity 0 asks for the size; the value may grow meanwhile, hence the loop.
                let (size, _) = h
                    .op(op::GetXattr::new(target(), name.clone(), Vec::new()))
                    .await;
                cap = size?.max(cap.saturating_mul(2)).min(1 << 20);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

#[allow(clippy::too_many_arguments)]
async fn chain_copy(
    h: &Handle,
    src_dir: RawFd,
    s: CString,
    size: usize,
    dst_dir: RawFd,
    d: CString,
    dflags: i32,
    mode: u32,
    a: arsync_ring::DirectSlot,
    b: arsync_ring::DirectSlot,
) -> io::Result<()> {
    let buf = SharedBuf::new(size);
    let q = SqeOpts::linked_quiet();
    let mut batch = h.batch();
    let t_open_s = batch.push_with(
        op::OpenAtDirect::new(src_dir, s, libc::O_RDONLY, 0, a.index()),
        q,
    );
    let t_read = batch.push_with(op::ReadShared::new(&a, &buf, 0), q);
    let t_close_s = batch.push_with(op::Close::direct(a.index()), q);
    let t_open_d = batch.push_with(
        op::OpenAtDirect::new(dst_dir, d, dflags, mode, b.index()),
        q,
    );
    let t_write = batch.push_with(op::Write::shared(&b, &buf, 0), q);
    let t_close_d = batch.push(op::Close::direct(b.index()));
    batch.finished().await?;
    let r_open_s = batch.take(t_open_s);
    let r_read = batch.take(t_read);
    let r_close_s = batch.take(t_close_s);
    let r_open_d = batch.take(t_open_d);
    let r_write = batch.take(t_write);
    let r_close_d = batch.take(t_close_d);
    drop(batch);
    fn missing<T>(_: T) -> io::Error {
        io::Error::other("chain result missing")
    }
    let open_s = r_open_s.map_err(missing)?;
    let read = r_read.map_err(missing)?;
    let close_s = r_close_s.map_err(missing)?;
    let open_d = r_open_d.map_err(missing)?;
    let write = r_write.map_err(missing)?;
    let close_d = r_close_d.map_err(missing)?;
    let ok =
        open_s.is_ok() && matches!(read, Ok(n) if n == size) && close_s.is_ok() && open_d.is_ok();
    if !ok || write.0.is_err() || close_d.is_err() {
        // Release whatever the broken chain left installed (errors: slot already empty).
        if open_s.is_ok() && close_s.is_err() {
            let _ = h.op(op::Close::direct(a.index())).await;
        }
        if open_d.is_ok() && close_d.is_err() {
            let _ = h.op(op::Close::direct(b.index())).await;
        }
        open_s?;
        match read {
            Ok(n) if n < size => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("source file shorter than expected ({n} of {size} bytes)"),
                ))
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        close_s?;
        open_d?;
        let (w, _) = write;
        match w {
            Ok(n) if n < size => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write ({n} of {size} bytes)"),
                ))
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        close_d?;
    }
    Ok(())
}
