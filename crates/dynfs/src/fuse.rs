//! The FUSE adaptor: translates kernel requests into [`dynfs_core::Fs`] calls.
//!
//! Metadata requests are answered on the session thread. Data requests (read, write, flush,
//! fsync, release, fallocate) go to a small worker pool and reply from there, so several can be
//! in flight at once; per-file ordering is kept by the engine's per-file lock.
//!
//! The close (`FLUSH`) of a small file (inline-sized data) is answered at once and its metadata
//! commit is left to the closer thread ([`Fs::defer_flush`]), which runs it after the next
//! `CREATE`: the requests that follow a create until the new file's close (`GETXATTR`,
//! `WRITE`, `SETATTR`, `SETXATTR`) need no metadata lock, so the commit of one file runs beside
//! the copy of the next instead of between them.

use dynfs_core::fs::{is_view, is_view_name, NewNode, SetAttr, StatFs, SNAPDIR_INO};
use dynfs_core::meta::{Inode, Kind, Ts};
use dynfs_core::{Error, Fs};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes and entries.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Data-path worker threads.
const WORKERS: usize = 4;
/// `FUSE_HANDLE_KILLPRIV_V2` (protocol 7.33; fuser 0.15 names flags up to 7.31): the filesystem
/// clears set-user-ID / set-group-ID bits on write, truncate and chown itself, so the kernel no
/// longer asks for `security.capability` before writing a file it has not checked yet.
const FUSE_HANDLE_KILLPRIV_V2: u32 = 1 << 28;
/// Write flag under [`FUSE_HANDLE_KILLPRIV_V2`]: the writer may not keep set-ID bits.
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Longest a deferred close commit waits for the next create ([`Closer`]).
const CLOSE_DELAY: Duration = Duration::from_millis(2);

type Job = Box<dyn FnOnce() + Send>;

/// Answer a change under `/.snapshots` (read-only snapshot views) with `EROFS`.
macro_rules! read_only {
    ($reply:expr, $($under_snapshots:expr),+) => {
        if $($under_snapshots)||+ {
            return $reply.error(libc::EROFS);
        }
    };
}

/// The mounted filesystem.
pub struct DynFuse {
    fs: Arc<Fs>,
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// [`FUSE_HANDLE_KILLPRIV_V2`] was negotiated.
    killpriv: bool,
    /// Commits deferred closes (`None`: the thread could not start; closes commit at once).
    closer: Option<Closer>,
}

/// The thread that commits deferred closes ([`Fs::commit_deferred`]): after the next create
/// (told by [`Closer::created`]), or [`CLOSE_DELAY`] after a close when no create follows.
struct Closer {
    tx: Option<mpsc::Sender<()>>,
    /// The thread is waiting for a create (or its delay), not asleep: a deferred close need
    /// not wake it.
    armed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Closer {
    fn start(fs: Arc<Fs>) -> Option<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let armed = Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        let thread = std::thread::Builder::new()
            .name("dynfs-close".into())
            .spawn(move || Self::run(&fs, &rx, &flag))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the close thread"))
            .ok()?;
        Some(Closer {
            tx: Some(tx),
            armed,
            thread: Some(thread),
        })
    }

    fn run(fs: &Fs, rx: &mpsc::Receiver<()>, armed: &AtomicBool) {
        // Errors are logged by `commit_deferred`; the files keep their data buffered.
        let mut stay_armed = false;
        loop {
            if !stay_armed {
                // Asleep until a close is deferred (checked again after saying so: a close
                // that saw the thread armed sent nothing).
                armed.store(false, Ordering::SeqCst);
                if !fs.has_deferred() && rx.recv().is_err() {
                    break;
                }
                armed.store(true, Ordering::SeqCst);
            }
            // Armed: commit at the next create, or once the delay is over.
            let deadline = Instant::now() + CLOSE_DELAY;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(()) if fs.has_deferred() => break,
                    Ok(()) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = fs.commit_deferred();
                        return;
                    }
                }
            }
            // Stay armed while files keep being closed, so that a close need not wake us.
            stay_armed = fs.has_deferred();
            let _ = fs.commit_deferred();
        }
        let _ = fs.commit_deferred();
    }

    /// A close was deferred: wake the thread unless it is armed already.
    fn deferred(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// A file was created: commit the deferred closes now, beside the new file's requests.
    fn created(&self, fs: &Fs) {
        if self.armed.load(Ordering::SeqCst) && fs.has_deferred() {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn to_time(t: Ts) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(t.nanos as u64)
    }
}

fn from_time(t: SystemTime) -> Ts {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Ts {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Ts { secs, nanos }
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Ts {
    match t {
        TimeOrNow::Now => Ts::now(),
        TimeOrNow::SpecificTime(t) => from_time(t),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// Convert an inode record into kernel attributes.
pub fn attr(ino: u64, i: &Inode) -> FileAttr {
    let blocks = match i.kind {
        Kind::File => i.alloc.div_ceil(512),
        _ => 0,
    };
    FileAttr {
        ino,
        size: i.size,
        blocks,
        atime: to_time(i.atime),
        mtime: to_time(i.mtime),
        ctime: to_time(i.ctime),
        crtime: to_time(i.crtime),
        kind: file_type(i.kind),
        perm: (i.perm & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn err_code(e: &Error) -> i32 {
    let code = e.errno();
    if code == libc::EIO || code == libc::ENOSPC {
        tracing::warn!(error = %e, "request failed");
    } else {
        tracing::debug!(error = %e, "request failed");
    }
    code
}

impl DynFuse {
    /// Wrap a filesystem, starting the data-path workers.
    pub fn new(fs: Arc<Fs>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers: Vec<_> = (0..WORKERS)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("dynfs-io-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    })
                    .map_err(|e| tracing::warn!(error = %e, "cannot start a worker thread"))
                    .ok()
            })
            .collect();
        // Without workers, requests run on the session thread.
        let jobs = if workers.is_empty() { None } else { Some(tx) };
        let closer = Closer::start(fs.clone());
        DynFuse {
            fs,
            jobs,
            workers,
            killpriv: false,
            closer,
        }
    }

    /// Runs `f` on the session thread when `light` (nothing to encode or write to disks: a
    /// worker hand-off would cost more than the request), else on a worker.
    fn run_or_spawn(&self, light: bool, f: impl FnOnce(&Fs) + Send + 'static) {
        if light {
            f(&self.fs)
        } else {
            self.spawn(f)
        }
    }

    fn spawn(&self, f: impl FnOnce(&Fs) + Send + 'static) {
        let fs = self.fs.clone();
        let job: Job = Box::new(move || f(&fs));
        match &self.jobs {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    job();
                }
            }
            None => job(),
        }
    }

    /// The permission bits of `ino` once the set-ID bits a write, truncate or chown must clear
    /// are cleared (`None` if nothing changes): set-user-ID always; set-group-ID if the group
    /// may execute, or, for a write or truncate by a caller of group `caller_gid`, if the caller
    /// is not in the file's group (as the kernel decides, by the caller's primary group here).
    fn killed_mode(&self, ino: u64, caller_gid: Option<u32>) -> Option<u32> {
        let i = self.fs.getattr(ino).ok()?;
        if i.kind == Kind::Dir {
            return None;
        }
        let mut p = i.perm & !libc::S_ISUID;
        if p & libc::S_ISGID != 0
            && (p & libc::S_IXGRP != 0 || caller_gid.is_some_and(|g| g != i.gid))
        {
            p &= !libc::S_ISGID;
        }
        (p != i.perm).then_some(p)
    }

    fn readdir_any(
        &self,
        ino: u64,
        offset: u64,
        max: usize,
    ) -> dynfs_core::Result<Vec<dynfs_core::fs::DirEntry>> {
        match is_view(ino) {
            true => self.fs.view_readdir(ino, offset, max),
            false => self.fs.readdir(ino, offset, max),
        }
    }

    fn entry(&self, r: dynfs_core::Result<(u64, Inode)>, reply: ReplyEntry) {
        match r {
            Ok((ino, i)) => reply.entry(&TTL, &attr(ino, &i), self.fs.generation()),
            Err(e) => reply.error(err_code(&e)),
        }
    }
}

/// The names in the root directory of the live tree, read in batches.
pub(crate) fn root_names(fs: &Fs) -> dynfs_core::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let batch = fs.readdir(dynfs_core::meta::ROOT_INO, offset, 1024)?;
        let Some(last) = batch.last() else {
            return Ok(names);
        };
        offset = last.next;
        names.extend(
            batch
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n.as_slice() != b"." && n.as_slice() != b".."),
        );
    }
}

/// After the live tree was replaced (a snapshot restore): drop what the kernel cached of it.
/// Every name of the root, from before (`before`) and after, is invalidated (which drops the
/// cached names below it too), and so are the attributes and cached pages of the root and of
/// every file the filesystem holds state for (open files). Lookups answer with the new inode
/// generation ([`Fs::generation`]) from then on, so the kernel takes every inode it still
/// caches for stale (its size, which the kernel's writeback cache keeps to itself, included)
/// and makes a new one; handles opened before fail with `EIO`. Errors (a name the kernel had
/// not cached) are ignored.
pub(crate) fn invalidate_tree(k: &fuser::Notifier, fs: &Fs, before: Vec<Vec<u8>>) {
    let root = dynfs_core::meta::ROOT_INO;
    let after = root_names(fs).unwrap_or_default();
    for name in before.iter().chain(after.iter()) {
        let _ = k.inval_entry(root, OsStr::from_bytes(name));
    }
    let _ = k.inval_inode(root, 0, 0);
    for ino in fs.open_inodes() {
        let _ = k.inval_inode(ino, 0, 0);
    }
}

impl Drop for DynFuse {
    fn drop(&mut self) {
        // The closer commits what is deferred as it stops.
        self.closer = None;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Err(e) = self.fs.flush_all().and_then(|_| self.fs.sync()) {
            tracing::error!(error = %e, "flushing at unmount failed");
        }
    }
}

fn empty(r: dynfs_core::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err_code(&e)),
    }
}

/// The kernel writeback cache: the kernel sends a file's dirty pages as concurrent background
/// requests, in any order. It was off for a while because a read-back came out wrong about one
/// run in six: a write read the committed size before taking the file's lock, and when a
/// concurrent flush committed a larger size meanwhile, the write set the buffered size back to
/// the stale one (the file lost its tail). Writes, reads and getattr now read the committed size
/// under the file's lock (`tests/mount.rs` concurrent_writes_to_one_file_through_the_mount and
/// `dynfs-core/tests/concurrent.rs` hammer one file from many threads).
const WRITEBACK_CACHE: bool = true;

impl Filesystem for DynFuse {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // Writeback cache: write(2) returns once the page cache holds the data, and the kernel
        // sends it in large background requests (up to MAX_WRITE), several in flight. close and
        // fsync still write every dirty page back before the FLUSH / FSYNC request, so what is
        // committed at close and made durable by fsync is unchanged.
        if WRITEBACK_CACHE
            && config
                .add_capabilities(fuser::consts::FUSE_WRITEBACK_CACHE)
                .is_ok()
        {
            let _ = config.set_max_background(64);
            let _ = config.set_congestion_threshold(48);
        }
        // POSIX ACLs: the kernel enforces them and keeps the mode in sync when an ACL is set;
        // ACLs are stored as the usual system.posix_acl_* xattrs.
        let _ = config.add_capabilities(fuser::consts::FUSE_POSIX_ACL);
        // New nodes inherit a parent's default ACL, which the filesystem applies (the kernel
        // leaves it to FUSE filesystems): it needs the mode before the umask, and the umask.
        let _ = config.add_capabilities(fuser::consts::FUSE_DONT_MASK);
        self.killpriv = config.add_capabilities(FUSE_HANDLE_KILLPRIV_V2).is_ok();
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.flush_all().and_then(|_| self.fs.sync()) {
            tracing::error!(error = %e, "flushing at unmount failed");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        if is_view_name(parent, name) {
            // Snapshots come and go by `dynfs snapshot`, not through the kernel: names in
            // `.snapshots` are not cached, so the listing and lookups agree at once.
            return match self.fs.view_lookup(parent, name) {
                Ok((ino, i)) if parent == SNAPDIR_INO => {
                    reply.entry(&Duration::ZERO, &attr(ino, &i), self.fs.generation())
                }
                r => self.entry(r, reply),
            };
        }
        self.entry(self.fs.lookup(parent, name), reply)
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let r = match is_view(ino) {
            true => self.fs.view_getattr(ino),
            false => self.fs.getattr(ino),
        };
        match r {
            Ok(i) => reply.attr(&TTL, &attr(ino, &i)),
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        read_only!(reply, is_view(ino));
        let mut a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(from_time),
        };
        // Under KILLPRIV_V2 the kernel leaves clearing set-ID bits to us, and fuser hides the
        // request's FATTR_KILL_SUIDGID flag: apply the kernel's rule for setting it. A chown
        // always clears them (of a non-directory), a truncate unless the caller may keep them
        // (CAP_FSETID; taken as being root). A request changing nothing is what the kernel
        // sends for its own clearing (before an unprivileged fallocate, say).
        if self.killpriv && mode.is_none() {
            let chown = uid.is_some() || gid.is_some();
            let nothing =
                a.size.is_none() && a.atime.is_none() && a.mtime.is_none() && a.ctime.is_none();
            let unprivileged = req.uid() != 0 && (size.is_some() || nothing);
            if chown || unprivileged {
                let caller_gid = (!chown).then(|| req.gid());
                a.mode = self.killed_mode(ino, caller_gid);
            }
        }
        let run = move |fs: &Fs| match fs.setattr(ino, a) {
            Ok(i) => reply.attr(&TTL, &attr(ino, &i)),
            Err(e) => reply.error(err_code(&e)),
        };
        let light = size.is_none() && self.fs.is_light(ino);
        self.run_or_spawn(light, run)
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let r = match is_view(ino) {
            true => self.fs.view_readlink(ino),
            false => self.fs.readlink(ino),
        };
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        read_only!(reply, is_view_name(parent, name.as_bytes()));
        let Some(kind) = Kind::from_mode(mode) else {
            return reply.error(libc::EINVAL);
        };
        if kind == Kind::Dir || kind == Kind::Symlink {
            return reply.error(libc::EINVAL);
        }
        let node = NewNode {
            kind,
            perm: mode,
            umask,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            target: b"",
        };
        let r = self.fs.make_node(parent, name.as_bytes(), &node);
        self.entry(r, reply)
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        read_only!(reply, is_view_name(parent, name.as_bytes()));
        let node = NewNode {
            kind: Kind::Dir,
            perm: mode,
            umask,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            target: b"",
        };
        let r = self.fs.make_node(parent, name.as_bytes(), &node);
        self.entry(r, reply)
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply, is_view_name(parent, name.as_bytes()));
        empty(self.fs.unlink(parent, name.as_bytes()), reply)
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply, is_view_name(parent, name.as_bytes()));
        empty(self.fs.rmdir(parent, name.as_bytes()), reply)
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        read_only!(reply, is_view_name(parent, link_name.as_bytes()));
        let r = self.fs.mknod(
            parent,
            link_name.as_bytes(),
            Kind::Symlink,
            0o777,
            req.uid(),
            req.gid(),
            0,
            target.as_os_str().as_bytes(),
        );
        self.entry(r, reply)
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        read_only!(
            reply,
            is_view_name(parent, name.as_bytes()),
            is_view_name(newparent, newname.as_bytes())
        );
        empty(
            self.fs.rename(
                parent,
                name.as_bytes(),
                newparent,
                newname.as_bytes(),
                flags,
            ),
            reply,
        )
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        read_only!(
            reply,
            is_view(ino),
            is_view_name(newparent, newname.as_bytes())
        );
        let r = self
            .fs
            .link(ino, newparent, newname.as_bytes())
            .map(|i| (ino, i));
        self.entry(r, reply)
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if is_view(ino) {
            let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
            read_only!(reply, writing);
            return match self.fs.view_getattr(ino) {
                Ok(_) => reply.opened(0, 0),
                Err(e) => reply.error(err_code(&e)),
            };
        }
        match self.fs.open(ino) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if is_view(ino) {
            return self.spawn(move |fs| match fs.view_read(ino, off, size as usize) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(err_code(&e)),
            });
        }
        self.spawn(move |fs| match fs.read(ino, off, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err_code(&e)),
        })
    }

    fn write(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        read_only!(reply, is_view(ino));
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        // The kernel sends this (writing through, past its cache) only for a file with set-ID
        // bits, written by a caller that may not keep them.
        if self.killpriv && write_flags & FUSE_WRITE_KILL_SUIDGID != 0 {
            if let Some(mode) = self.killed_mode(ino, Some(req.gid())) {
                let kill = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                if let Err(e) = self.fs.setattr(ino, kill) {
                    return reply.error(err_code(&e));
                }
            }
        }
        let reply_write = |r: dynfs_core::Result<usize>, reply: ReplyWrite| match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err_code(&e)),
        };
        // A small write into a small file is a copy into its buffer: answer it here rather
        // than hand it to a worker (two thread switches per request).
        if self.fs.write_is_light(ino, off, data.len()) {
            match self.fs.write_nowait(ino, off, data) {
                Ok(Some(n)) => return reply_write(Ok(n), reply),
                Err(e) => return reply_write(Err(e), reply),
                // No room in the write buffer budget: a worker writes it.
                Ok(None) => {}
            }
        }
        // Most writes of a sequential writer only copy into the file's extent buffer: do that
        // here, straight from the request (no copy of the request, no hand-off to a worker).
        // The writes that fill the buffer and start its flush go to a worker.
        if let Some(r) = self.fs.try_write_buffered(ino, off, data) {
            return reply_write(r, reply);
        }
        let data = data.to_vec();
        // No waiting for room in the write buffer budget here (see `Fs::write_committing`).
        self.spawn(move |fs| {
            let r = match fs.write_nowait(ino, off, &data) {
                Ok(Some(n)) => Ok(n),
                Ok(None) => fs.write_committing(ino, off, &data),
                Err(e) => Err(e),
            };
            reply_write(r, reply)
        })
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        if is_view(ino) {
            return reply.ok();
        }
        // A small file's commit is left to the closer thread (see the module doc).
        if let Some(c) = &self.closer {
            if self.fs.defer_flush(ino) {
                reply.ok();
                return c.deferred();
            }
        }
        let light = self.fs.is_light(ino);
        self.run_or_spawn(light, move |fs| empty(fs.flush(ino), reply))
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if is_view(ino) {
            return reply.ok();
        }
        let light = self.fs.is_light(ino);
        self.run_or_spawn(light, move |fs| empty(fs.release(ino), reply))
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if is_view(ino) {
            return reply.ok();
        }
        self.spawn(move |fs| empty(fs.fsync(ino), reply))
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        match self.readdir_any(ino, offset.max(0) as u64, 256) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        e.ino,
                        e.next as i64,
                        file_type(e.inode.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.readdir_any(ino, offset.max(0) as u64, 128) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        e.ino,
                        e.next as i64,
                        OsStr::from_bytes(&e.name),
                        &TTL,
                        &attr(e.ino, &e.inode),
                        self.fs.generation(),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Make every namespace change so far durable.
        self.spawn(move |fs| empty(fs.sync(), reply))
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(StatFs {
                bsize,
                blocks,
                bfree,
                files,
                ffree,
            }) => reply.statfs(blocks, bfree, bfree, files, ffree, bsize, 255, bsize),
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        read_only!(reply, is_view(ino));
        let name = name.as_bytes().to_vec();
        let value = value.to_vec();
        // Setting the policy may restripe a large file: keep it off the session thread. Other
        // xattrs (such as the ACL `cp -a` sets on every file) of a file whose buffered writes
        // are cheap to commit are answered here.
        let light = name != dynfs_core::fs::POLICY_XATTR && self.fs.is_light(ino);
        self.run_or_spawn(light, move |fs| {
            empty(fs.setxattr(ino, &name, &value, flags), reply)
        })
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let r = match is_view(ino) {
            true => self.fs.view_getxattr(ino, name.as_bytes()),
            false => self.fs.getxattr(ino, name.as_bytes()),
        };
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(libc::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let r = match is_view(ino) {
            true => self.fs.view_listxattr(ino),
            false => self.fs.listxattr(ino),
        };
        match r {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(libc::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(err_code(&e)),
        }
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        read_only!(reply, is_view(ino));
        empty(self.fs.removexattr(ino, name.as_bytes()), reply)
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Permission checks are done by the kernel (default_permissions).
        if is_view(ino) {
            return empty(self.fs.view_getattr(ino).map(|_| ()), reply);
        }
        empty(self.fs.getattr(ino).map(|_| ()), reply)
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        read_only!(reply, is_view_name(parent, name.as_bytes()));
        let r = self
            .fs
            .create_masked(parent, name.as_bytes(), mode, umask, req.uid(), req.gid());
        match r {
            Ok((ino, i)) => reply.created(&TTL, &attr(ino, &i), self.fs.generation(), 0, 0),
            Err(e) => reply.error(err_code(&e)),
        }
        if let Some(c) = &self.closer {
            c.created(&self.fs);
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        read_only!(reply, is_view(ino));
        let (Ok(off), Ok(len)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        self.spawn(move |fs| empty(fs.fallocate(ino, off, len, mode), reply))
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        if is_view(ino) {
            return match self.fs.view_seek(ino, off, whence) {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(err_code(&e)),
            };
        }
        self.spawn(move |fs| match fs.seek(ino, off, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(err_code(&e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        for t in [
            Ts { secs: 0, nanos: 0 },
            Ts {
                secs: 1_700_000_000,
                nanos: 5,
            },
            Ts {
                secs: -5,
                nanos: 250,
            },
        ] {
            assert_eq!(from_time(to_time(t)), t);
        }
    }
}
