//! Small new files copied directly on the worker thread, every call relative to an open
//! directory (the thread-pool backend's batch path; the io_uring backend has its own in
//! `worker`).
//!
//! Per file, for a destination that does not exist yet:
//! `openat(src_dir, name)`, `pread` of the listed size + 1 bytes, `flistxattr` of the open
//! source (`-X`/`-A`), `openat(dst_dir, ".", O_TMPFILE)` with the final mode, `pwrite`, the
//! xattrs and `fchown`/`fchmod` where needed, `futimens`, then `linkat` gives the finished file
//! its name: the name appears only when the file is complete, as with rsync's temporary file
//! and rename, and an interrupted copy leaves nothing behind (the unnamed file dies with its
//! descriptor). Where `O_TMPFILE` is not supported, and for a destination that exists (it must
//! be replaced), the file is written as `.name.XXXXXX` and renamed into place.
//!
//! The directories are opened once per run of files in the same directory (a batch is
//! usually one directory's files), so each call resolves one name instead of a whole path
//! from the transfer root. Nothing waits on another thread: one batch of 32 files costs no
//! thread hand-off at all.

use super::worker::{Probe, PROBES_MAX};
use super::{Engine, EntryJob, FileJob, Tally};
use crate::fsops::{self, Meta};
use crate::meta::{self, Wanted};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An open destination directory and what this worker learned about creating files in it.
struct DstDir {
    path: PathBuf,
    fd: OwnedFd,
    /// `O_TMPFILE` works here (until it fails once).
    tmpfile: bool,
    probe: Option<Probe>,
}

/// Per-worker state of the direct path: the open directories and a reused read buffer.
pub(super) struct Direct {
    src_dir: Option<(PathBuf, OwnedFd)>,
    dst_dir: Option<DstDir>,
    buf: Vec<u8>,
    names: Vec<u8>,
    /// `linkat(fd, "", AT_EMPTY_PATH)` is allowed (root); else `/proc/self/fd/N` is linked.
    link_empty_path: bool,
    /// What creation gives, per destination directory (bounded).
    probes: HashMap<PathBuf, Probe>,
}

impl Default for Direct {
    fn default() -> Self {
        Direct {
            src_dir: None,
            dst_dir: None,
            buf: Vec::new(),
            names: Vec::new(),
            link_empty_path: true,
            probes: HashMap::new(),
        }
    }
}

/// What became of one file.
enum Outcome {
    /// Copied and in place: this many bytes.
    Done(u64),
    /// Not started (the source grew, a temporary name was taken): copy it another way.
    Alone,
    /// Failed; the named temporary file to remove, if one was created.
    Failed(io::Error, Option<PathBuf>),
}

fn err(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let p = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    rustix::fs::open(
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Reads the whole file (at most `expect` bytes) into `buf`; `None` if it holds more now.
fn read_whole(fd: &OwnedFd, buf: &mut Vec<u8>, expect: u64) -> io::Result<Option<usize>> {
    let cap = expect as usize + 1;
    if buf.len() < cap {
        buf.resize(cap, 0);
    }
    let mut have = 0;
    while have < cap {
        match rustix::io::pread(fd, &mut buf[have..cap], have as u64) {
            // A regular file's read comes back short only at its end.
            Ok(0) => break,
            Ok(n) => {
                have += n;
                if have < cap {
                    break;
                }
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok((have < cap).then_some(have))
}

fn write_all_at(fd: &OwnedFd, mut data: &[u8], mut at: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                data = &data[n..];
                at += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Writes `data` into the new empty file; with `sparse`, 4 KiB blocks of zeros stay holes
/// (one write per run of data blocks, and a final truncate when the file ends in a hole).
fn write_data(fd: &OwnedFd, data: &[u8], sparse: bool) -> io::Result<()> {
    const BLOCK: usize = 4096;
    if !sparse {
        return write_all_at(fd, data, 0);
    }
    let mut run: Option<usize> = None;
    let mut written_end = 0;
    let mut at = 0;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        if fsops::is_zero(&data[at..end]) {
            if let Some(s) = run.take() {
                write_all_at(fd, &data[s..at], s as u64)?;
                written_end = at;
            }
        } else if run.is_none() {
            run = Some(at);
        }
        at = end;
    }
    if let Some(s) = run {
        write_all_at(fd, &data[s..], s as u64)?;
        written_end = data.len();
    }
    if written_end < data.len() {
        rustix::fs::ftruncate(fd, data.len() as u64).map_err(err)?;
    }
    Ok(())
}

/// The names listed by `flistxattr` of `fd` into `names` (NUL-separated), or an empty list
/// where the filesystem has no xattrs.
fn list_xattrs_fd(fd: &OwnedFd, names: &mut Vec<u8>) -> io::Result<()> {
    names.clear();
    if names.capacity() < 1024 {
        names.reserve(1024);
    }
    loop {
        // The list lands in the spare capacity (`names` grows by its length): no buffer to
        // clear first.
        match rustix::fs::flistxattr(fd, rustix::buffer::spare_capacity(names)) {
            Ok(_) => return Ok(()),
            Err(Errno::RANGE) => {
                let need = rustix::fs::flistxattr(fd, &mut [0u8; 0][..]).map_err(err)?;
                names.reserve(need.max(names.capacity() * 2));
            }
            Err(Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(err(e)),
        }
    }
}

fn get_xattr_fd(fd: &OwnedFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let name = OsStr::from_bytes(name);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let need = rustix::fs::fgetxattr(fd, name, &mut [0u8; 0][..]).map_err(err)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(err(e)),
        }
    }
}

fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|s| !s.is_empty())
}

/// Links the open file `fd` (made with `O_TMPFILE`) as `name` in `dir`: through
/// `AT_EMPTY_PATH` with `empty_path`, else through `/proc/self/fd/N`.
fn link_unnamed(fd: &OwnedFd, dir: &OwnedFd, name: &OsStr, empty_path: bool) -> Result<(), Errno> {
    if empty_path {
        rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH)
    } else {
        let proc = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
        rustix::fs::linkat(CWD, proc.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
    }
}

/// Whether `O_TMPFILE` failed because the filesystem (or kernel) does not support it.
fn tmpfile_unsupported(e: Errno) -> bool {
    matches!(e, Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL)
}

impl Direct {
    /// The source directory `path`, opened if it is not the current one.
    fn src_dir(&mut self, path: &Path) -> io::Result<&OwnedFd> {
        // Compared as bytes: `Path`'s `==` parses both into components.
        let same = |p: &PathBuf| p.as_os_str().as_bytes() == path.as_os_str().as_bytes();
        if self.src_dir.as_ref().is_none_or(|(p, _)| !same(p)) {
            self.src_dir = None;
            self.src_dir = Some((path.to_path_buf(), open_dir(path)?));
        }
        match &self.src_dir {
            Some((_, fd)) => Ok(fd),
            None => Err(io::Error::other("source directory not open")),
        }
    }

    /// Makes `path` the current destination directory.
    fn enter_dst(&mut self, path: &Path) -> io::Result<()> {
        let same = |p: &PathBuf| p.as_os_str().as_bytes() == path.as_os_str().as_bytes();
        if self.dst_dir.as_ref().is_none_or(|d| !same(&d.path)) {
            if let Some(old) = self.dst_dir.take() {
                if let Some(p) = old.probe {
                    if self.probes.len() >= PROBES_MAX {
                        self.probes.clear();
                    }
                    self.probes.insert(old.path, p);
                }
            }
            let fd = open_dir(path)?;
            self.dst_dir = Some(DstDir {
                path: path.to_path_buf(),
                fd,
                tmpfile: true,
                probe: self.probes.get(path).copied(),
            });
        }
        Ok(())
    }
}

impl Engine {
    /// `lstat` of the batch's destinations that may exist, relative to their directory
    /// (see `worker::stat_destinations`); `None` where the entry must be stat'ed later.
    pub(super) fn stat_destinations_direct(
        &self,
        jobs: &[EntryJob],
        d: &mut Direct,
    ) -> Vec<Option<io::Result<Option<Meta>>>> {
        jobs.iter()
            .map(|job| {
                if job.dir.virtual_new || self.opts.list_only {
                    return None;
                }
                let (parent, name) = job.paths.dst_parts();
                d.enter_dst(parent).ok()?;
                let dir = d.dst_dir.as_ref()?;
                match fsops::lstat_at(&dir.fd, name) {
                    // Another link may change under an earlier entry of this batch.
                    Ok(m) if m.nlink > 1 => None,
                    Ok(m) => Some(Ok(Some(m))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Ok(None)),
                    Err(e) => Some(Err(e)),
                }
            })
            .collect()
    }

    /// Copies the batch's small files on this thread (see the module docs).
    pub(super) fn copy_small_direct(&self, files: Vec<FileJob>, d: &mut Direct) {
        let mut done = Tally::default();
        for job in files {
            if self.stopped() {
                self.release(&job.dir);
                continue;
            }
            match self.new_file_direct(&job, d) {
                Outcome::Done(written) => {
                    done.add(job.meta.size, written);
                    self.release(&job.dir);
                }
                Outcome::Alone => self.run_job(job),
                Outcome::Failed(e, tmp) => {
                    if let Some(t) = &tmp {
                        self.unregister_temp(t);
                        let _ = fsops::unlink(t);
                    }
                    self.transfer_failed(job.paths.src(), job.paths.dst(), &e);
                    self.release(&job.dir);
                }
            }
        }
        self.count_transfers(&done);
    }

    /// One file: read the source, write a new unnamed (or temporary) file with its
    /// attributes, give it its name.
    fn new_file_direct(&self, job: &FileJob, d: &mut Direct) -> Outcome {
        let (src_parent, src_name) = job.paths.src_parts();
        let (dst_parent, dst_name) = job.paths.dst_parts();
        let src = match d.src_dir(src_parent).and_then(|dir| {
            rustix::fs::openat(
                dir,
                src_name,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(err)
        }) {
            Ok(fd) => fd,
            Err(e) => return Outcome::Failed(e, None),
        };
        let len = match read_whole(&src, &mut d.buf, job.meta.size) {
            Ok(Some(n)) => n,
            Ok(None) => return Outcome::Alone,
            Err(e) => return Outcome::Failed(e, None),
        };
        let (x, a) = (self.opts.xattrs, self.opts.acls);
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if x || a {
            let listed = list_xattrs_fd(&src, &mut d.names).and_then(|()| {
                for n in names(&d.names) {
                    if meta::xattr_selected(n, x, a) {
                        xattrs.push((n.to_vec(), get_xattr_fd(&src, n)?));
                    }
                }
                Ok(())
            });
            if let Err(e) = listed {
                return Outcome::Failed(e, None);
            }
        }
        drop(src);
        if let Err(e) = d.enter_dst(dst_parent) {
            return Outcome::Failed(e, None);
        }
        let wanted = meta::wanted(&self.opts, &job.meta, job.existing.as_ref(), self.am_root);
        let create_mode = self.create_mode(&wanted);
        let Some(dir) = d.dst_dir.as_mut() else {
            return Outcome::Failed(io::Error::other("destination directory not open"), None);
        };
        // The unnamed file, or the named temporary one.
        let mut tmp: Option<PathBuf> = None;
        let mut file = None;
        if job.existing.is_none() && dir.tmpfile {
            match rustix::fs::openat(
                &dir.fd,
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(create_mode),
            ) {
                Ok(fd) => file = Some(fd),
                Err(e) if tmpfile_unsupported(e) => dir.tmpfile = false,
                Err(e) => return Outcome::Failed(err(e), None),
            }
        }
        let file = match file {
            Some(f) => f,
            None => {
                let t = self.temp_path(dst_parent, dst_name.as_bytes());
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
                let name = t.file_name().unwrap_or(OsStr::new(""));
                self.register_temp(&t);
                match rustix::fs::openat(&dir.fd, name, flags, Mode::from_raw_mode(create_mode)) {
                    Ok(fd) => {
                        tmp = Some(t);
                        fd
                    }
                    Err(Errno::EXIST) => {
                        self.unregister_temp(&t);
                        return Outcome::Alone;
                    }
                    Err(e) => {
                        self.unregister_temp(&t);
                        return Outcome::Failed(err(e), None);
                    }
                }
            }
        };
        let done = write_data(&file, &d.buf[..len], self.opts.sparse)
            .and_then(|()| self.new_attrs(&file, dir, &wanted, create_mode, &xattrs))
            .and_then(|()| {
                if self.stopped() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
                }
                match &tmp {
                    Some(t) => {
                        let name = t.file_name().unwrap_or(OsStr::new(""));
                        rustix::fs::renameat(&dir.fd, name, &dir.fd, dst_name).map_err(err)
                    }
                    None => self
                        .link_tmpfile(&file, &dir.fd, dst_parent, dst_name, d.link_empty_path)
                        .map(|empty_path| d.link_empty_path = empty_path),
                }
            });
        match done {
            Ok(()) => {
                if let Some(t) = &tmp {
                    self.unregister_temp(t);
                }
                Outcome::Done(len as u64)
            }
            Err(e) => Outcome::Failed(e, tmp),
        }
    }

    /// Gives the unnamed file `fd` the name `name` in `dir`. Returns whether `AT_EMPTY_PATH`
    /// linking works (it needs `CAP_DAC_READ_SEARCH`; otherwise `/proc/self/fd/N` is linked).
    /// If the name was taken meanwhile, the file replaces it through a temporary name, as a
    /// rename would.
    fn link_tmpfile(
        &self,
        fd: &OwnedFd,
        dir: &OwnedFd,
        dir_path: &Path,
        name: &OsStr,
        empty_path: bool,
    ) -> io::Result<bool> {
        let link = |to: &OsStr, empty: bool| link_unnamed(fd, dir, to, empty);
        let mut empty = empty_path;
        let mut r = link(name, empty);
        if empty && matches!(r, Err(Errno::NOENT) | Err(Errno::PERM)) {
            // No CAP_DAC_READ_SEARCH: link through /proc, and keep doing so if that works.
            let by_proc = link(name, false);
            if matches!(by_proc, Ok(()) | Err(Errno::EXIST)) {
                empty = false;
                r = by_proc;
            }
        }
        match r {
            Ok(()) => Ok(empty),
            Err(Errno::EXIST) => {
                let t = self.temp_path(dir_path, name.as_bytes());
                let tname = t.file_name().unwrap_or(OsStr::new(""));
                self.register_temp(&t);
                let r = link(tname, empty).and_then(|()| {
                    rustix::fs::renameat(dir, tname, dir, name).inspect_err(|_| {
                        let _ = rustix::fs::unlinkat(dir, tname, AtFlags::empty());
                    })
                });
                self.unregister_temp(&t);
                r.map(|()| empty).map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Xattrs/ACLs, owner, mode and times of the new file `fd` (see `worker::new_file_attrs`
    /// for when `fchown` and `fchmod` are skipped).
    fn new_attrs(
        &self,
        fd: &OwnedFd,
        dir: &mut DstDir,
        want: &Wanted,
        create_mode: u32,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let (x, a) = (self.opts.xattrs, self.opts.acls);
        let umask = meta::umask();
        let probe = match dir.probe {
            Some(p) => p,
            None => {
                let st = rustix::fs::fstat(fd).map_err(err)?;
                let mut extra = false;
                if x || a {
                    let mut list = Vec::new();
                    list_xattrs_fd(fd, &mut list)?;
                    extra = names(&list).any(|n| meta::xattr_selected(n, x, a));
                }
                let p = Probe {
                    uid: st.st_uid,
                    gid: st.st_gid,
                    plain: st.st_mode & 0o7777 == create_mode & !umask && !extra,
                };
                dir.probe = Some(p);
                p
            }
        };
        let mut acl_set = false;
        if x || a {
            if !probe.plain {
                // Creation may have added selected xattrs (a default ACL, a security label):
                // remove those the source does not have.
                let mut list = Vec::new();
                list_xattrs_fd(fd, &mut list)?;
                for n in names(&list) {
                    if meta::xattr_selected(n, x, a) && !xattrs.iter().any(|(s, _)| s == n) {
                        rustix::fs::fremovexattr(fd, OsStr::from_bytes(n)).map_err(err)?;
                        acl_set |= meta::xattr_selected(n, false, true);
                    }
                }
            }
            for (n, v) in xattrs {
                rustix::fs::fsetxattr(fd, OsStr::from_bytes(n), v, XattrFlags::empty())
                    .map_err(err)?;
                acl_set |= meta::xattr_selected(n, false, true);
            }
        }
        let need_chown =
            want.uid.is_some_and(|u| u != probe.uid) || want.gid.is_some_and(|g| g != probe.gid);
        let mut chown_err = None;
        if need_chown {
            let uid = want.uid.map(rustix::fs::Uid::from_raw);
            let gid = want.gid.map(rustix::fs::Gid::from_raw);
            chown_err = rustix::fs::fchown(fd, uid, gid).err().map(err);
        }
        if let Some(p) = want.perms {
            if need_chown || acl_set || !probe.plain || create_mode & !umask != p {
                rustix::fs::fchmod(fd, Mode::from_raw_mode(p & 0o7777)).map_err(err)?;
            }
        }
        if want.mtime.is_some() || want.atime.is_some() {
            let times = Timestamps {
                last_access: fsops::timespec(want.atime),
                last_modification: fsops::timespec(want.mtime),
            };
            rustix::fs::futimens(fd, &times).map_err(err)?;
        }
        match chown_err {
            Some(e) if e.kind() == io::ErrorKind::PermissionDenied && !self.am_root => Ok(()),
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unnamed_in(dir: &OwnedFd, data: &[u8], sparse: bool) -> OwnedFd {
        let fd = rustix::fs::openat(
            dir,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o640),
        )
        .expect("O_TMPFILE on /dev/shm or /tmp");
        write_data(&fd, data, sparse).unwrap();
        fd
    }

    #[test]
    fn unnamed_files_get_their_name_either_way() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open_dir(t.path()).unwrap();
        for (name, by_empty_path) in [("a", true), ("b", false)] {
            let fd = unnamed_in(&dir, name.as_bytes(), false);
            link_unnamed(&fd, &dir, OsStr::new(name), by_empty_path).unwrap();
            assert_eq!(std::fs::read(t.path().join(name)).unwrap(), name.as_bytes());
            // A taken name is refused (the caller then replaces it through a rename).
            let again = link_unnamed(&fd, &dir, OsStr::new(name), by_empty_path);
            assert_eq!(again, Err(Errno::EXIST));
        }
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "nothing else appeared: {names:?}");
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_as_holes() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let dir = open_dir(t.path()).unwrap();
        // data, hole, data, trailing partial zero block.
        let mut data = vec![1u8; 4 * 4096 + 100];
        data[4096..8192].fill(0);
        data[4 * 4096..].fill(0);
        for (name, sparse) in [("sparse", true), ("dense", false)] {
            let fd = unnamed_in(&dir, &data, sparse);
            link_unnamed(&fd, &dir, OsStr::new(name), true).unwrap();
            let p = t.path().join(name);
            assert_eq!(std::fs::read(&p).unwrap(), data, "{name}");
        }
        let blocks = |n: &str| std::fs::metadata(t.path().join(n)).unwrap().blocks();
        assert!(
            blocks("sparse") < blocks("dense"),
            "{} vs {}",
            blocks("sparse"),
            blocks("dense")
        );
        // All zeros: no data block at all, length from the truncate.
        let fd = unnamed_in(&dir, &[0u8; 5000], true);
        link_unnamed(&fd, &dir, OsStr::new("zeros"), true).unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("zeros")).unwrap().len(),
            5000
        );
        assert_eq!(blocks("zeros"), 0);
    }

    #[test]
    fn reads_report_growth_past_the_expected_size() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, vec![9u8; 3000]).unwrap();
        let fd = rustix::fs::open(&p, OFlags::RDONLY, Mode::empty()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_whole(&fd, &mut buf, 3000).unwrap(), Some(3000));
        assert_eq!(read_whole(&fd, &mut buf, 5000).unwrap(), Some(3000));
        assert_eq!(read_whole(&fd, &mut buf, 2999).unwrap(), None);
        assert_eq!(read_whole(&fd, &mut buf, 0).unwrap(), None);
    }
}
