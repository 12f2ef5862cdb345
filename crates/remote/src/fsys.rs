//! Every file-system access of the remote roles, confined to one root.
//!
//! Names come from the peer. They are validated by `arsync-proto` (relative,
//! no `..`), and every operation resolves the entry's parent directory with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of the
//! root, then acts relative to that parent (`*at` calls, never following a
//! final symlink). A symlink planted by the peer can therefore never redirect
//! a write outside the root. Kept in one module so it can move to the
//! platform I/O layer later.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arsync_proto::flist::validate_name;
use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, CWD, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::error::{RemoteError, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's id, asked of the kernel once: temporary names carry it, and `getpid` is a
/// system call per file otherwise (the C library no longer caches it).
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Metadata to apply to a received entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (07777) to set (None: leave).
    pub perms: Option<u32>,
    /// mtime seconds and nanoseconds to set (`-t`; None: leave).
    pub mtime: Option<(i64, u32)>,
    /// Owner to set (None: leave).
    pub uid: Option<u32>,
    /// Group to set (None: leave).
    pub gid: Option<u32>,
    /// Access time to set (`--atimes`; None: leave).
    pub atime: Option<i64>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: match self.atime {
                Some(t) => Timespec {
                    tv_sec: t,
                    tv_nsec: 0,
                },
                None => Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
            },
            last_modification: match self.mtime {
                Some((sec, nsec)) => Timespec {
                    tv_sec: sec,
                    tv_nsec: nsec as _,
                },
                None => Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
            },
        }
    }

    /// True when no time is to be set.
    fn no_times(&self) -> bool {
        self.mtime.is_none() && self.atime.is_none()
    }

    /// True when applying this to an entry whose attributes are `now`
    /// would change nothing (so the calls can be left out, as rsync's
    /// `set_file_attrs` does). An access time to set always counts as a
    /// change.
    pub fn is_applied(&self, now: &AttrState) -> bool {
        self.perms.is_none_or(|p| p & 0o7777 == now.perms)
            && self.mtime.is_none_or(|t| t == now.mtime)
            && self.uid.is_none_or(|u| u == now.uid)
            && self.gid.is_none_or(|g| g == now.gid)
            && self.atime.is_none()
    }
}

/// The parent directory last opened by [`DestRoot::lstat_attrs_cached`] or
/// [`DestRoot::create_temp_cached`], reused while the names stay in that
/// directory (a file list lists a directory's entries together). The
/// descriptor was opened beneath the root without following symlinks; it
/// names that directory itself, so a later change of the path cannot move
/// an operation through it elsewhere.
#[derive(Debug, Default)]
pub struct ParentCache {
    /// The directory's name (empty for the root).
    dir: Vec<u8>,
    fd: Option<Arc<OwnedFd>>,
    /// The owner a new file in `dir` gets (learnt from the first temporary
    /// file created there: the process's ids, or the directory's group
    /// when it is set-group-ID).
    new_owner: Option<(u32, u32)>,
}

impl ParentCache {
    /// The confined parent of `name` (validated) and its final component,
    /// from the cache when `name` is in the cached directory.
    fn parent<'n>(
        &mut self,
        dest: &'n DestRoot,
        name: &'n [u8],
    ) -> Result<(Arc<OwnedFd>, &'n OsStr)> {
        validate_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
        if name == b"." {
            return Err(RemoteError::Refused("operation on the root itself".into()));
        }
        let (dir, base) = dest.split(name);
        if let Some(fd) = self.fd.as_ref().filter(|_| self.dir == dir) {
            return Ok((Arc::clone(fd), base));
        }
        let fd = match dir.is_empty() {
            true => Arc::clone(&dest.fd),
            false => dest.parent(name)?.0,
        };
        self.dir.clear();
        self.dir.extend_from_slice(dir);
        self.fd = Some(Arc::clone(&fd));
        self.new_owner = None;
        Ok((fd, base))
    }
}

/// `name`'s directory part (empty at the top) and final component.
fn split_name(name: &[u8]) -> (&[u8], &OsStr) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], OsStr::from_bytes(&name[i + 1..])),
        None => (&[], OsStr::from_bytes(name)),
    }
}

/// The attributes of an existing entry that [`Meta`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrState {
    /// Permission bits (07777).
    pub perms: u32,
    /// mtime seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The process's umask (read once: `/proc/self/status`, else by setting
/// and restoring it).
pub fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
        from_proc.unwrap_or_else(|| {
            let old = rustix::process::umask(Mode::from_raw_mode(0o022));
            rustix::process::umask(old);
            old.as_raw_mode() as u32
        })
    })
}

/// What kind of thing an existing entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// Type of the entry.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds (a negative `--modify-window` compares them).
    pub mtime_nsec: u32,
    /// Permission bits (07777).
    pub perms: u32,
}

/// A temporary file being received, to be committed under its final name.
#[derive(Debug)]
pub struct TempFile {
    /// The open file.
    pub file: File,
    parent: Arc<OwnedFd>,
    name: OsString,
    /// `--inplace`: this is the target itself (never renamed or removed);
    /// the permission bits it had before (`None`: it was created).
    pub in_place: Option<Option<u32>>,
    /// Created next to its target: the root it was created under and the
    /// target's directory part (`parent` is that directory), so the
    /// rename needs no second lookup.
    beside: Option<(Arc<OwnedFd>, Vec<u8>)>,
    /// The owner (uid, gid) the file was created with, when known.
    owner: Option<(u32, u32)>,
}

/// A received file waiting for the end of the transfer (`--delay-updates`):
/// its temporary name and directory.
#[derive(Debug, Clone)]
pub struct DelayedFile {
    tmp: OsString,
    dir: Arc<OwnedFd>,
}

/// A receiver's destination argument, settled once the first file list is
/// in (rsync's `get_local_name`): a directory the entries go into, or,
/// for one non-directory sent to a name that is not a directory, that
/// name itself.
#[derive(Debug, Clone, Default)]
pub struct DestSpec {
    /// The destination as given (a trailing `/` asks for a directory).
    pub path: PathBuf,
    /// `-n` or `--list-only`: nothing is created.
    pub dry: bool,
    /// `--temp-dir` and whether it must stay inside the root (a daemon).
    pub temp_dir: Option<(String, bool)>,
    /// `-K`.
    pub keep_dirlinks: bool,
}

/// How a [`DestSpec`] settled.
#[derive(Debug)]
pub struct Settled {
    /// Where the entries go.
    pub root: DestRoot,
    /// The destination directory was created (rsync says so with `-v`).
    pub created: bool,
}

impl DestSpec {
    /// A destination directory `path` (the usual case; tests).
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        DestSpec {
            path: path.into(),
            ..DestSpec::default()
        }
    }

    /// Decides, as rsync's receiver does, where the first list's `entries`
    /// go: into the destination when it is a directory (made when missing
    /// and the transfer needs one: several entries, a directory, or a
    /// trailing slash); else the one non-directory is written under the
    /// destination's name in its parent.
    pub fn settle(&self, entries: &[arsync_proto::flist::FileEntry]) -> Result<Settled> {
        let bytes = self.path.as_os_str().as_bytes();
        let trailing = bytes.ends_with(b"/");
        let lone_file = match entries {
            [e] => !e.is_dir(),
            _ => false,
        };
        let fatal = |message: &str| RemoteError::Exit {
            code: arsync_proto::stats::ExitCode::FileSelect,
            message: message.to_string(),
        };
        // rsync stats (following a symlink): a link to a directory is one.
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => return self.open_dir(false),
            Ok(_) if entries.len() > 1 => {
                return Err(fatal(
                    "ERROR: destination must be a directory when copying more than 1 file",
                ))
            }
            Ok(_) if !lone_file && !entries.is_empty() => {
                return Err(fatal(
                    "ERROR: cannot overwrite non-directory with a directory",
                ))
            }
            Ok(_) if trailing => {
                return Err(RemoteError::Exit {
                    code: arsync_proto::stats::ExitCode::Syntax,
                    message: "ERROR: destination path is not a directory".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if entries.is_empty() && !trailing {
                    // Nothing to write and no directory asked for: rsync
                    // makes nothing.
                    return self.untouched();
                }
                if !lone_file || trailing {
                    return self.open_dir(true);
                }
            }
            Err(e) => {
                return Err(RemoteError::io(
                    format!("ERROR: cannot stat destination {}", self.path.display()),
                    e,
                ))
            }
        }
        let Some(first) = entries.first() else {
            return self.untouched();
        };
        // One file under the destination's own name, in its parent.
        let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
            Some(0) => (Path::new("/"), &bytes[1..]),
            Some(i) => (Path::new(OsStr::from_bytes(&bytes[..i])), &bytes[i + 1..]),
            None => (Path::new("."), bytes),
        };
        if !parent.is_dir() {
            return Err(RemoteError::io(
                format!("change_dir {} failed", parent.display()),
                std::io::Error::from(ErrorKind::NotFound),
            ));
        }
        let mut root = DestSpec {
            path: parent.to_path_buf(),
            ..self.clone()
        }
        .open_dir(false)?
        .root;
        root.single = Some((first.name.clone(), OsStr::from_bytes(name).to_os_string()));
        Ok(Settled {
            root,
            created: false,
        })
    }

    /// An empty list: a root that finds nothing and creates nothing.
    fn untouched(&self) -> Result<Settled> {
        let root = match self.path.is_dir() {
            true => DestRoot::open(&self.path)?,
            false => DestRoot::scratch(&self.path)?,
        };
        Ok(Settled {
            root,
            created: false,
        })
    }

    /// The destination as a directory (made when `make` and missing).
    fn open_dir(&self, make: bool) -> Result<Settled> {
        let root = match (self.dry, &self.temp_dir) {
            (true, _) => DestRoot::open_dry(&self.path)?,
            (false, Some((t, beneath))) => {
                DestRoot::open(&self.path)?.with_temp_dir(t, *beneath)?
            }
            (false, None) => DestRoot::open(&self.path)?,
        };
        Ok(Settled {
            root: root.with_keep_dirlinks(self.keep_dirlinks),
            created: make && !self.dry,
        })
    }
}

/// A destination directory tree.
#[derive(Debug, Clone)]
pub struct DestRoot {
    root: PathBuf,
    fd: Arc<OwnedFd>,
    /// `--temp-dir`: where temporary files are created.
    temp_dir: Option<Arc<OwnedFd>>,
    /// `-K`: symlinks to directories are followed (inside the root only).
    keep_dirlinks: bool,
    /// A transfer of one non-directory to a destination that is not a
    /// directory: the list's name and the name it is written under in the
    /// root (rsync's "local name"; the root is then the destination's
    /// parent). See [`DestSpec::settle`].
    single: Option<(Vec<u8>, OsString)>,
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn io_err(what: String, e: Errno) -> RemoteError {
    RemoteError::io(what, e.into())
}

impl DestRoot {
    /// Uses `root` (created if missing, like rsync's destination).
    pub fn open(root: &Path) -> Result<Self> {
        match std::fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RemoteError::Usage(format!(
                    "destination {} is not a directory",
                    root.display()
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(root)
                .map_err(|e| RemoteError::io(format!("creating {}", root.display()), e))?,
            Err(e) => return Err(RemoteError::io(format!("stat {}", root.display()), e)),
        }
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(format!("opening {}", root.display()), e))?;
        Ok(DestRoot {
            root: root.to_path_buf(),
            fd: Arc::new(fd),
            temp_dir: None,
            keep_dirlinks: false,
            single: None,
        })
    }

    /// `-K`: a symlink to a directory stands for that directory (parents
    /// are resolved through symlinks, but never out of the root: a link
    /// that leaves it, or an absolute one, is refused).
    pub fn with_keep_dirlinks(mut self, on: bool) -> Self {
        self.keep_dirlinks = on;
        self
    }

    fn resolve_flags(&self) -> ResolveFlags {
        match self.keep_dirlinks {
            true => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            false => {
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
            }
        }
    }

    /// `-K`: opens `base` in `parent` as a directory, following a symlink
    /// that stays inside the root.
    fn open_dirlink(&self, parent: &OwnedFd, base: &OsStr, flags: OFlags) -> Option<OwnedFd> {
        if !self.keep_dirlinks {
            return None;
        }
        rustix::fs::openat2(
            parent,
            base,
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            self.resolve_flags(),
        )
        .ok()
    }

    /// `--temp-dir`: temporary files are created in `dir` (a relative
    /// one is relative to the root; it must exist) and renamed into place
    /// from there (copied when it is on another file system).
    /// With `beneath` (a daemon's session) it must resolve inside the root.
    pub fn with_temp_dir(mut self, dir: &str, beneath: bool) -> Result<Self> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match beneath {
            true => rustix::fs::openat2(
                &*self.fd,
                dir,
                flags,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ),
            false => rustix::fs::openat(&*self.fd, dir, flags, Mode::empty()),
        }
        .map_err(|e| io_err(format!("opening --temp-dir {dir}"), e))?;
        self.temp_dir = Some(Arc::new(fd));
        Ok(self)
    }

    /// For a dry run: like [`DestRoot::open`] but never creates `root`. A
    /// missing root is stood in for by an empty directory that is removed
    /// at once (the descriptor stays valid and every lookup finds nothing).
    pub fn open_dry(root: &Path) -> Result<Self> {
        if std::fs::symlink_metadata(root).is_ok() {
            return Self::open(root);
        }
        Self::scratch(root)
    }

    /// A root named `root` that is an empty directory removed at once:
    /// every lookup finds nothing and nothing is created at `root`.
    fn scratch(root: &Path) -> Result<Self> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let scratch =
            std::env::temp_dir().join(format!(".arsync-dry-run-{}-{n}", std::process::id()));
        std::fs::create_dir(&scratch)
            .map_err(|e| RemoteError::io(format!("creating {}", scratch.display()), e))?;
        let fd = rustix::fs::open(
            &scratch,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let _ = std::fs::remove_dir(&scratch);
        let fd = fd.map_err(|e| io_err(format!("opening {}", scratch.display()), e))?;
        Ok(DestRoot {
            root: root.to_path_buf(),
            fd: Arc::new(fd),
            temp_dir: None,
            keep_dirlinks: false,
            single: None,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local path of `name` (for messages), after validating the name.
    pub fn path(&self, name: &[u8]) -> Result<PathBuf> {
        validate_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
        if name == b"." {
            return Ok(self.root.clone());
        }
        match self.split(name) {
            (b"", base) => Ok(self.root.join(base)),
            _ => Ok(self.root.join(OsStr::from_bytes(name))),
        }
    }

    /// `name`'s directory part (empty at the top) and final component as
    /// it is written here: the one file of a single-file transfer goes
    /// under its local name.
    fn split<'a>(&'a self, name: &'a [u8]) -> (&'a [u8], &'a OsStr) {
        match &self.single {
            Some((from, to)) if from.as_slice() == name => (&[], to.as_os_str()),
            _ => split_name(name),
        }
    }

    /// Opens the parent directory of `name` beneath the root without following
    /// any symlink, and returns it with the final component.
    fn parent(&self, name: &[u8]) -> Result<(Arc<OwnedFd>, OsString)> {
        validate_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
        if name == b"." {
            return Err(RemoteError::Refused("operation on the root itself".into()));
        }
        let (dir, base) = self.split(name);
        if dir.is_empty() {
            return Ok((Arc::clone(&self.fd), base.to_os_string()));
        }
        let fd = rustix::fs::openat2(
            &*self.fd,
            OsStr::from_bytes(dir),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            self.resolve_flags(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::XDEV | Errno::NOTDIR => RemoteError::Refused(format!(
                "{}: a parent directory is a symlink or not a directory",
                shown(name)
            )),
            e => io_err(
                format!(
                    "opening the parent of {}",
                    self.root.join(OsStr::from_bytes(name)).display()
                ),
                e,
            ),
        })?;
        Ok((Arc::new(fd), base.to_os_string()))
    }

    /// Runs `f` with an attribute target for `name` that keeps the
    /// confinement: regular files and directories are opened beneath the
    /// root (without following symlinks); other entries are reached
    /// through `/proc/self/fd` from their confined parent (a final symlink
    /// is not followed).
    pub fn with_attr_target<T>(
        &self,
        name: &[u8],
        f: impl FnOnce(crate::attrs::Target<'_>) -> Result<T>,
    ) -> Result<T> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if name == b"." {
            if let Ok(fd) =
                rustix::fs::openat(&*self.fd, ".", flags | OFlags::DIRECTORY, Mode::empty())
            {
                return f(crate::attrs::Target::Fd(fd.as_fd()));
            }
            let p = crate::attrs::at_path(&self.fd, None);
            return f(crate::attrs::Target::FollowPath(&p));
        }
        let (parent, base) = self.parent(name)?;
        let st = rustix::fs::statat(&*parent, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(format!("stat {}", shown(name)), e))?;
        if matches!(
            FileType::from_raw_mode(st.st_mode),
            FileType::RegularFile | FileType::Directory
        ) {
            if let Ok(fd) = rustix::fs::openat(&*parent, base.as_os_str(), flags, Mode::empty()) {
                return f(crate::attrs::Target::Fd(fd.as_fd()));
            }
        }
        let p = crate::attrs::at_path(&parent, Some(&base));
        f(crate::attrs::Target::Path(&p))
    }

    /// `lstat` of an entry, `None` if it does not exist.
    pub fn lstat(&self, name: &[u8]) -> Result<Option<EntryInfo>> {
        Ok(self.lstat_attrs(name)?.map(|(info, _)| info))
    }

    /// `lstat` of an entry with the attributes [`Meta`] sets (for
    /// [`Meta::is_applied`]), `None` if it does not exist.
    pub fn lstat_attrs(&self, name: &[u8]) -> Result<Option<(EntryInfo, AttrState)>> {
        self.lstat_attrs_cached(&mut ParentCache::default(), name)
    }

    /// [`DestRoot::lstat_attrs`] that keeps the last parent directory
    /// opened in `cache` and reuses it while the names stay in that
    /// directory (a file list lists a directory's entries together), so
    /// most calls are one `statat`.
    pub fn lstat_attrs_cached(
        &self,
        cache: &mut ParentCache,
        name: &[u8],
    ) -> Result<Option<(EntryInfo, AttrState)>> {
        let st = if name == b"." {
            rustix::fs::fstat(&*self.fd)
        } else {
            let (p, base) = cache.parent(self, name)?;
            rustix::fs::statat(&*p, base, AtFlags::SYMLINK_NOFOLLOW)
        };
        match st {
            Ok(st) => Ok(Some((
                EntryInfo {
                    file_type: FileType::from_raw_mode(st.st_mode),
                    size: st.st_size as u64,
                    mtime: st.st_mtime,
                    mtime_nsec: st.st_mtime_nsec as u32,
                    perms: st.st_mode & 0o7777,
                },
                AttrState {
                    perms: st.st_mode & 0o7777,
                    mtime: (st.st_mtime, st.st_mtime_nsec as u32),
                    uid: st.st_uid,
                    gid: st.st_gid,
                },
            ))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(format!("stat {}", shown(name)), e)),
        }
    }

    fn remove_non_dir(p: &OwnedFd, base: &OsStr) -> Result<()> {
        match rustix::fs::statat(p, base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(RemoteError::io(
                    format!("replacing directory {}", shown(base.as_bytes())),
                    std::io::Error::from(ErrorKind::IsADirectory),
                ))
            }
            Ok(_) => rustix::fs::unlinkat(p, base, AtFlags::empty())
                .map_err(|e| io_err(format!("removing {}", shown(base.as_bytes())), e)),
            Err(_) => Ok(()),
        }
    }

    /// Makes sure `name` is a directory (user-writable until its metadata is set).
    pub fn ensure_dir(&self, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Ok(());
        }
        let (p, base) = self.parent(name)?;
        match rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => return Ok(()),
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                    && self.open_dirlink(&p, &base, OFlags::PATH).is_some() =>
            {
                // -K: kept as the directory it points to.
                return Ok(());
            }
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                    && self.keep_dirlinks
                    && std::fs::metadata(self.root.join(OsStr::from_bytes(name)))
                        .is_ok_and(|m| m.is_dir()) =>
            {
                // -K with a link out of the root: neither followed nor replaced.
                return Err(RemoteError::io(
                    format!(
                        "{}: -K does not follow a symlink that leaves the destination",
                        shown(name)
                    ),
                    std::io::Error::from(ErrorKind::PermissionDenied),
                ));
            }
            Ok(_) => Self::remove_non_dir(&p, &base)?,
            Err(_) => {}
        }
        rustix::fs::mkdirat(&*p, base.as_os_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| io_err(format!("creating directory {}", shown(name)), e))
    }

    /// Creates (or replaces) a symlink.
    pub fn make_symlink(&self, name: &[u8], target: &[u8]) -> Result<()> {
        let (p, base) = self.parent(name)?;
        if let Ok(cur) = rustix::fs::readlinkat(&*p, base.as_os_str(), Vec::new()) {
            if cur.as_bytes() == target {
                return Ok(());
            }
        }
        Self::remove_non_dir(&p, &base)?;
        let t = std::ffi::OsStr::from_bytes_checked(target)?;
        rustix::fs::symlinkat(t, &*p, base.as_os_str())
            .map_err(|e| io_err(format!("symlink {}", shown(name)), e))
    }

    /// Creates a FIFO, socket or device node (devices need privileges).
    pub fn make_node(&self, name: &[u8], mode: u32, rdev: (u32, u32)) -> Result<()> {
        let (p, base) = self.parent(name)?;
        Self::remove_non_dir(&p, &base)?;
        let ft = FileType::from_raw_mode(mode);
        rustix::fs::mknodat(
            &*p,
            base.as_os_str(),
            ft,
            Mode::from_raw_mode(mode & 0o7777),
            rustix::fs::makedev(rdev.0, rdev.1),
        )
        .map_err(|e| io_err(format!("mknod {}", shown(name)), e))
    }

    /// Opens directory `name` for reading without following symlinks;
    /// `None` if it does not exist or is not a directory.
    fn open_dir(&self, name: &[u8]) -> Result<Option<OwnedFd>> {
        let r = if name == b"." {
            rustix::fs::openat(
                &*self.fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            let (p, base) = match self.parent(name) {
                Ok(x) => x,
                // A missing parent: the directory does not exist here either.
                Err(RemoteError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            match self.open_dirlink(&p, &base, OFlags::RDONLY) {
                Some(fd) => Ok(fd),
                None => rustix::fs::openat(
                    &*p,
                    base.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
            }
        };
        match r {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => Ok(None),
            Err(e) => Err(io_err(format!("opening directory {}", shown(name)), e)),
        }
    }

    /// The names in directory `name` (`None` if it is not a directory here).
    pub fn list_dir(&self, name: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(fd) = self.open_dir(name)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let dir =
            rustix::fs::Dir::new(fd).map_err(|e| io_err(format!("reading {}", shown(name)), e))?;
        for ent in dir {
            let ent = ent.map_err(|e| io_err(format!("reading {}", shown(name)), e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(n.to_vec());
            }
        }
        Ok(Some(out))
    }

    /// Deletes `name` and everything below it (never following symlinks).
    /// Returns the counts of deleted regular files, directories, symlinks,
    /// devices and specials (the order of rsync's deletion stats).
    pub fn remove_tree(&self, name: &[u8]) -> Result<[i32; 5]> {
        let (p, base) = self.parent(name)?;
        let mut counts = [0i32; 5];
        remove_at(&p, &base, &mut counts)
            .map_err(|e| io_err(format!("deleting {}", shown(name)), e))?;
        Ok(counts)
    }

    /// Makes `name` a hard link to `target` (both inside the root), replacing
    /// a non-directory at `name` unless it already is that file.
    pub fn hard_link(&self, target: &[u8], name: &[u8]) -> Result<()> {
        let (tp, tb) = self.parent(target)?;
        let (np, nb) = self.parent(name)?;
        let what = |e: Errno| io_err(format!("hard link {} => {}", shown(name), shown(target)), e);
        let ts =
            rustix::fs::statat(&*tp, tb.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(what)?;
        if let Ok(ns) = rustix::fs::statat(&*np, nb.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            if ns.st_ino == ts.st_ino && ns.st_dev == ts.st_dev {
                return Ok(());
            }
            Self::remove_non_dir(&np, &nb)?;
        }
        rustix::fs::linkat(&*tp, tb.as_os_str(), &*np, nb.as_os_str(), AtFlags::empty())
            .map_err(what)
    }

    /// Opens an existing regular file to use as a delta basis.
    pub fn open_basis(&self, name: &[u8]) -> Result<Option<File>> {
        let (p, base) = self.parent(name)?;
        let fd = match rustix::fs::openat(
            &*p,
            base.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::LOOP) => return Ok(None),
            Err(e) => return Err(io_err(format!("opening basis {}", shown(name)), e)),
        };
        let st =
            rustix::fs::fstat(&fd).map_err(|e| io_err(format!("stat basis {}", shown(name)), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some(File::from(fd)))
    }

    /// Creates a new temporary file next to `name` (`.name.XXXXXX`), or
    /// in the `--temp-dir` (`name.XXXXXX`).
    pub fn create_temp(&self, name: &[u8]) -> Result<TempFile> {
        self.create_temp_cached(&mut ParentCache::default(), name)
    }

    /// [`DestRoot::create_temp`] with the parent directory kept in `cache`
    /// (one lookup per directory for consecutive files), which also learns
    /// the owner new files there get, so that [`DestRoot::set_temp_meta`]
    /// can leave out a `chown` that would change nothing.
    pub fn create_temp_cached(&self, cache: &mut ParentCache, name: &[u8]) -> Result<TempFile> {
        let (p, base) = cache.parent(self, name)?;
        let short = &base.as_bytes()[..base.len().min(200)];
        let (dir, dot) = match &self.temp_dir {
            Some(t) => (Arc::clone(t), &b""[..]),
            None => (p, &b"."[..]),
        };
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut tmp = dot.to_vec();
            tmp.extend_from_slice(short);
            tmp.extend_from_slice(format!(".{:06}{n}", own_pid() % 1_000_000).as_bytes());
            let tmp = OsString::from_vec(tmp);
            match rustix::fs::openat(
                &*dir,
                tmp.as_os_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    let beside = self.temp_dir.is_none();
                    let owner = match (beside, cache.new_owner) {
                        (false, _) => None,
                        (true, Some(o)) => Some(o),
                        (true, None) => rustix::fs::fstat(&fd).ok().map(|st| {
                            let o = (st.st_uid, st.st_gid);
                            cache.new_owner = Some(o);
                            o
                        }),
                    };
                    return Ok(TempFile {
                        file: File::from(fd),
                        parent: dir,
                        name: tmp,
                        in_place: None,
                        beside: beside.then(|| (Arc::clone(&self.fd), self.split(name).0.to_vec())),
                        owner,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(io_err(
                        format!("creating a temporary file for {}", shown(name)),
                        e,
                    ))
                }
            }
        }
    }

    /// `--inplace`: opens the regular file `name` itself for writing
    /// (created with mode 0600 if missing; a non-file there is replaced).
    pub fn open_in_place(&self, name: &[u8]) -> Result<TempFile> {
        let (p, base) = self.parent(name)?;
        let what = |e: Errno| io_err(format!("opening {} in place", shown(name)), e);
        let mut prior = None;
        match rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                prior = Some(st.st_mode & 0o7777);
            }
            Ok(_) => Self::remove_non_dir(&p, &base)?,
            Err(_) => {}
        }
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&*p, base.as_os_str(), flags, Mode::from_raw_mode(0o600))
        {
            Ok(fd) => fd,
            Err(Errno::ACCESS) if prior.is_some() => {
                // A read-only file (as root this does not happen): make it
                // writable for the open, as rsync does; its mode is set again
                // when the file is done.
                let mode = prior.unwrap_or(0o600) | 0o200;
                rustix::fs::chmodat(
                    &*p,
                    base.as_os_str(),
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )
                .map_err(what)?;
                rustix::fs::openat(&*p, base.as_os_str(), flags, Mode::from_raw_mode(0o600))
                    .map_err(what)?
            }
            Err(e) => return Err(what(e)),
        };
        Ok(TempFile {
            file: File::from(fd),
            parent: p,
            name: base,
            in_place: Some(prior),
            beside: None,
            owner: None,
        })
    }

    /// `--partial-dir`: the name (relative to the root) of `name`'s
    /// partial file: `dir/<partial_dir>/base`. `None` for an absolute
    /// partial directory (outside the tree; not supported here).
    pub fn partial_name(name: &[u8], partial_dir: &str) -> Option<Vec<u8>> {
        if partial_dir.starts_with('/') || name == b"." {
            return None;
        }
        let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => (&name[..=i], &name[i + 1..]),
            None => (&b""[..], name),
        };
        let mut v = dir.to_vec();
        v.extend_from_slice(partial_dir.trim_end_matches('/').as_bytes());
        v.push(b'/');
        v.extend_from_slice(base);
        Some(v)
    }

    /// Makes sure the directory holding `partial` (a name from
    /// [`DestRoot::partial_name`]) exists (mode 0700; a non-directory
    /// there is removed), as rsync's receiver does before keeping a file.
    pub fn ensure_partial_dir(&self, partial: &[u8]) -> Result<()> {
        match partial.iter().rposition(|&b| b == b'/') {
            Some(i) => {
                let dir = &partial[..i];
                if self
                    .lstat(dir)?
                    .is_some_and(|m| m.file_type == FileType::Directory)
                {
                    return Ok(());
                }
                let (p, base) = self.parent(dir)?;
                Self::remove_non_dir(&p, &base)?;
                match rustix::fs::mkdirat(&*p, base.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => Ok(()),
                    Err(e) => Err(io_err(format!("creating {}", shown(dir)), e)),
                }
            }
            None => Ok(()),
        }
    }

    /// Removes the directory holding `partial` if it is empty now.
    pub fn remove_partial_dir(&self, partial: &[u8]) {
        if let Some(i) = partial.iter().rposition(|&b| b == b'/') {
            if let Ok((p, base)) = self.parent(&partial[..i]) {
                let _ = rustix::fs::unlinkat(&*p, base.as_os_str(), AtFlags::REMOVEDIR);
            }
        }
    }

    /// Removes the regular file `name` (best effort; for a consumed
    /// partial file).
    pub fn remove_file(&self, name: &[u8]) {
        if let Ok((p, base)) = self.parent(name) {
            if let Ok(st) = rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    let _ = rustix::fs::unlinkat(&*p, base.as_os_str(), AtFlags::empty());
                }
            }
        }
    }

    /// Renames a finished temporary file over `name` (nothing to do for
    /// a file written in place). A temporary file on another file system
    /// (`--temp-dir`) is copied next to `name` first.
    pub fn commit(&self, tmp: TempFile, name: &[u8]) -> Result<()> {
        let (p, base) = match &tmp.beside {
            // Created next to `name` under this root: its directory is the
            // one to rename in.
            Some((root, dir))
                if Arc::ptr_eq(root, &self.fd) && self.split(name).0 == dir.as_slice() =>
            {
                validate_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
                (Arc::clone(&tmp.parent), self.split(name).1.to_os_string())
            }
            _ => self.parent(name)?,
        };
        if tmp.in_place.is_some() {
            return Ok(());
        }
        // A regular file never replaces a directory: rename(2) refuses
        // (EISDIR), so no stat is needed first.
        match rustix::fs::renameat(&*tmp.parent, tmp.name.as_os_str(), &*p, base.as_os_str()) {
            Err(Errno::ISDIR) => {
                Self::remove_temp(tmp);
                Err(RemoteError::io(
                    format!("replacing directory {}", shown(name)),
                    std::io::Error::from(ErrorKind::IsADirectory),
                ))
            }
            Err(Errno::XDEV) => {
                let copy = self.copy_across(&tmp, name);
                Self::remove_temp(tmp);
                let copy = copy?;
                rustix::fs::renameat(&*copy.parent, copy.name.as_os_str(), &*p, base.as_os_str())
                    .map_err(|e| {
                        let _ = rustix::fs::unlinkat(
                            &*copy.parent,
                            copy.name.as_os_str(),
                            AtFlags::empty(),
                        );
                        io_err(format!("renaming into {}", shown(name)), e)
                    })
            }
            r => r.map_err(|e| io_err(format!("renaming into {}", shown(name)), e)),
        }
    }

    /// A copy of `tmp` (data, mode, owner, times) in a new temporary file
    /// next to `name`.
    fn copy_across(&self, tmp: &TempFile, name: &[u8]) -> Result<TempFile> {
        let plain = DestRoot {
            temp_dir: None,
            ..self.clone()
        };
        let copy = plain.create_temp(name)?;
        let r = (|| -> Result<()> {
            let what = |e: std::io::Error| {
                RemoteError::io(format!("copying {} from --temp-dir", shown(name)), e)
            };
            let mut from = &tmp.file;
            std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(0)).map_err(what)?;
            let mut to = &copy.file;
            std::io::copy(&mut from, &mut to).map_err(what)?;
            let st = rustix::fs::fstat(&tmp.file).map_err(|e| io_err("stat".into(), e))?;
            let _ = rustix::fs::fchown(
                &copy.file,
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            );
            rustix::fs::fchmod(&copy.file, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(|e| io_err("chmod".into(), e))?;
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            };
            rustix::fs::futimens(&copy.file, &times).map_err(|e| io_err("setting times".into(), e))
        })();
        match r {
            Ok(()) => Ok(copy),
            Err(e) => {
                Self::remove_temp(copy);
                Err(e)
            }
        }
    }

    /// `--delay-updates`: closes a finished temporary file and remembers
    /// it for [`DestRoot::commit_delayed`] (no descriptor is kept).
    pub fn delay(tmp: TempFile) -> DelayedFile {
        DelayedFile {
            tmp: tmp.name,
            dir: tmp.parent,
        }
    }

    /// Renames a delayed temporary file over `name`.
    pub fn commit_delayed(&self, d: &DelayedFile, name: &[u8]) -> Result<()> {
        let (p, base) = self.parent(name)?;
        if let Ok(st) = rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let _ = rustix::fs::unlinkat(&*d.dir, d.tmp.as_os_str(), AtFlags::empty());
                return Err(RemoteError::io(
                    format!("replacing directory {}", shown(name)),
                    std::io::Error::from(ErrorKind::IsADirectory),
                ));
            }
        }
        rustix::fs::renameat(&*d.dir, d.tmp.as_os_str(), &*p, base.as_os_str())
            .map_err(|e| io_err(format!("renaming into {}", shown(name)), e))
    }

    /// Deletes a temporary file (best effort; a file written in place stays).
    pub fn remove_temp(tmp: TempFile) {
        if tmp.in_place.is_some() {
            return;
        }
        let _ = rustix::fs::unlinkat(&*tmp.parent, tmp.name.as_os_str(), AtFlags::empty());
    }

    /// [`DestRoot::set_file_meta`] for a temporary file: the owner is left
    /// alone when the file was created with it already (e.g. root
    /// receiving root's files), as rsync's `set_file_attrs` does.
    pub fn set_temp_meta(tmp: &TempFile, meta: &Meta) -> Result<()> {
        match tmp.owner {
            Some((uid, gid))
                if meta.uid.is_none_or(|u| u == uid) && meta.gid.is_none_or(|g| g == gid) =>
            {
                Self::set_file_meta(
                    &tmp.file,
                    &Meta {
                        uid: None,
                        gid: None,
                        ..*meta
                    },
                )
            }
            _ => Self::set_file_meta(&tmp.file, meta),
        }
    }

    /// Applies owner, permissions and mtime to an open file.
    pub fn set_file_meta(f: &File, meta: &Meta) -> Result<()> {
        if meta.uid.is_some() || meta.gid.is_some() {
            rustix::fs::fchown(f, meta.uid.map(Uid::from_raw), meta.gid.map(Gid::from_raw))
                .map_err(|e| io_err("chown".into(), e))?;
        }
        if let Some(perms) = meta.perms {
            rustix::fs::fchmod(f, Mode::from_raw_mode(perms & 0o7777))
                .map_err(|e| io_err("chmod".into(), e))?;
        }
        if meta.no_times() {
            return Ok(());
        }
        rustix::fs::futimens(f, &meta.times()).map_err(|e| io_err("setting times".into(), e))
    }

    /// Applies a directory's metadata to `name`. With `-K` and a symlink
    /// standing for the directory, the link gets the owner and times (as
    /// rsync's receiver does) and the directory it points to the mode.
    pub fn set_dir_meta(&self, name: &[u8], meta: &Meta) -> Result<()> {
        if self.keep_dirlinks && name != b"." {
            let (p, base) = self.parent(name)?;
            let st = rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(format!("stat {}", shown(name)), e))?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                if let (Some(perms), Some(fd)) =
                    (meta.perms, self.open_dirlink(&p, &base, OFlags::RDONLY))
                {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(perms & 0o7777))
                        .map_err(|e| io_err(format!("chmod {}", shown(name)), e))?;
                }
            }
        }
        self.set_meta(name, meta)
    }

    /// Applies metadata to an existing entry (directory, symlink or node).
    /// Symlinks get owner and time only.
    pub fn set_meta(&self, name: &[u8], meta: &Meta) -> Result<()> {
        let what = |e: Errno| io_err(format!("setting attributes of {}", shown(name)), e);
        if name == b"." {
            let fd = rustix::fs::openat(
                CWD,
                &self.root,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(what)?;
            return Self::set_file_meta(&File::from(fd), meta);
        }
        let (p, base) = self.parent(name)?;
        let st =
            rustix::fs::statat(&*p, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(what)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory | FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    &*p,
                    base.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(what)?;
                Self::set_file_meta(&File::from(fd), meta)
            }
            ft => {
                if meta.uid.is_some() || meta.gid.is_some() {
                    rustix::fs::chownat(
                        &*p,
                        base.as_os_str(),
                        meta.uid.map(Uid::from_raw),
                        meta.gid.map(Gid::from_raw),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(what)?;
                }
                if let (Some(perms), true) = (meta.perms, ft != FileType::Symlink) {
                    rustix::fs::chmodat(
                        &*p,
                        base.as_os_str(),
                        Mode::from_raw_mode(perms & 0o7777),
                        AtFlags::empty(),
                    )
                    .map_err(what)?;
                }
                if meta.no_times() {
                    return Ok(());
                }
                rustix::fs::utimensat(
                    &*p,
                    base.as_os_str(),
                    &meta.times(),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(what)
            }
        }
    }
}

fn remove_at(
    dir: &OwnedFd,
    base: &std::ffi::OsStr,
    counts: &mut [i32; 5],
) -> rustix::io::Result<()> {
    let st = rustix::fs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let fd = rustix::fs::openat(
                dir,
                base,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&fd)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_bytes().to_vec())
                .filter(|n| n != b"." && n != b"..")
                .collect();
            for n in names {
                remove_at(
                    &fd,
                    std::os::unix::ffi::OsStrExt::from_bytes(n.as_slice()),
                    counts,
                )?;
            }
            rustix::fs::unlinkat(dir, base, AtFlags::REMOVEDIR)?;
            counts[1] += 1;
        }
        ft => {
            rustix::fs::unlinkat(dir, base, AtFlags::empty())?;
            let k = match ft {
                FileType::RegularFile => 0,
                FileType::Symlink => 2,
                FileType::CharacterDevice | FileType::BlockDevice => 3,
                _ => 4,
            };
            counts[k] += 1;
        }
    }
    Ok(())
}

trait FromBytesChecked {
    fn from_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr>;
}

impl FromBytesChecked for std::ffi::OsStr {
    fn from_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr> {
        if b.contains(&0) {
            return Err(RemoteError::Refused("NUL byte in symlink target".into()));
        }
        Ok(std::os::unix::ffi::OsStrExt::from_bytes(b))
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of a basis file.
pub fn read_basis(f: &File, offset: u64, buf: &mut [u8]) -> Result<()> {
    f.read_exact_at(buf, offset)
        .map_err(|e| RemoteError::io("reading the basis file", e))
}

/// Reads the next chunk of a source file; used by the sender.
pub fn read_chunk(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    loop {
        match f.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(RemoteError::io("reading a source file", e)),
        }
    }
}

/// Opens a source file for reading without following a final symlink.
pub fn open_source(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(path)
        .map_err(|e| RemoteError::io(format!("opening {}", path.display()), e))
}

/// `-S`: turns every 4 KiB-aligned all-zero block of a received file into
/// a hole (as rsync's receiver skips writing runs of zeros). A file system
/// without hole punching keeps the zeros.
pub fn punch_zero_blocks(f: &File) -> Result<()> {
    const BLOCK: usize = 4096;
    let len = f
        .metadata()
        .map_err(|e| RemoteError::io("stat for --sparse", e))?
        .len();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    // The zero run being collected: (start, length).
    let mut run: Option<(u64, u64)> = None;
    let punch = |start: u64, n: u64| -> Result<()> {
        match rustix::fs::fallocate(
            f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            start,
            n,
        ) {
            Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(io_err("punching a hole for --sparse".into(), e)),
        }
    };
    while off < len {
        let want = buf.len().min((len - off) as usize);
        read_basis(f, off, &mut buf[..want])?;
        for (i, block) in buf[..want].chunks(BLOCK).enumerate() {
            let at = off + (i * BLOCK) as u64;
            if block.len() == BLOCK && block.iter().all(|&b| b == 0) {
                run = Some(match run {
                    Some((s, n)) => (s, n + BLOCK as u64),
                    None => (at, BLOCK as u64),
                });
            } else if let Some((s, n)) = run.take() {
                punch(s, n)?;
            }
        }
        off += want as u64;
    }
    if let Some((s, n)) = run {
        punch(s, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod dry_tests {
    use super::*;

    #[test]
    fn dry_root_is_empty_and_never_created() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let missing = t.path().join("not/there");
        let d = DestRoot::open_dry(&missing).unwrap();
        assert!(!missing.exists());
        assert_eq!(d.lstat(b"a").unwrap(), None);
        assert!(d.list_dir(b".").unwrap().unwrap_or_default().is_empty());
        // An existing root is used as it is.
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let d = DestRoot::open_dry(t.path()).unwrap();
        assert!(d.lstat(b"f").unwrap().is_some());
    }

    fn entry(name: &[u8], mode: u32) -> arsync_proto::flist::FileEntry {
        arsync_proto::flist::FileEntry {
            name: name.to_vec(),
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn destinations_settle_as_rsyncs_get_local_name() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let (file, dir) = (entry(b"f.txt", 0o100644), entry(b".", 0o40755));
        // One file to a new name: written under that name, nothing made.
        let s = DestSpec::dir(t.path().join("new.txt"))
            .settle(std::slice::from_ref(&file))
            .unwrap();
        assert!(!s.created && !t.path().join("new.txt").exists());
        assert_eq!(s.root.path(b"f.txt").unwrap(), t.path().join("new.txt"));
        let tmp = s.root.create_temp(b"f.txt").unwrap();
        s.root.commit(tmp, b"f.txt").unwrap();
        assert!(t.path().join("new.txt").is_file());
        // Over an existing file too; other names keep their directories.
        let s = DestSpec::dir(t.path().join("new.txt"))
            .settle(std::slice::from_ref(&file))
            .unwrap();
        assert_eq!(s.root.path(b"d/f.txt").unwrap(), t.path().join("d/f.txt"));
        // A trailing slash, a directory or several entries: a directory, made.
        let slash = t.path().join("made/");
        let s = DestSpec::dir(&slash)
            .settle(std::slice::from_ref(&file))
            .unwrap();
        assert!(s.created && t.path().join("made").is_dir());
        assert_eq!(s.root.path(b"d/f.txt").unwrap(), slash.join("d/f.txt"));
        let s = DestSpec::dir(t.path().join("tree")).settle(&[dir.clone(), file.clone()]);
        assert!(s.unwrap().created);
        // Several entries or a directory onto a file: rsync's exit 3.
        for list in [vec![dir.clone(), file.clone()], vec![dir]] {
            let e = DestSpec::dir(t.path().join("new.txt"))
                .settle(&list)
                .unwrap_err();
            assert_eq!(
                e.exit_code(),
                arsync_proto::stats::ExitCode::FileSelect,
                "{e}"
            );
        }
        // An empty list makes nothing without a trailing slash.
        let s = DestSpec::dir(t.path().join("none")).settle(&[]).unwrap();
        assert!(!s.created && !t.path().join("none").exists());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn m_ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn applied_meta_is_recognized() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let meta = Meta {
            perms: Some(0o640),
            mtime: Some((1_000_000_000, 5)),
            uid: None,
            gid: None,
            atime: None,
        };
        d.set_meta(b"f", &meta).unwrap();
        let (info, now) = d.lstat_attrs(b"f").unwrap().unwrap();
        assert_eq!((info.size, info.perms), (1, 0o640));
        assert!(meta.is_applied(&now));
        let uid = std::fs::metadata(t.path().join("f")).unwrap().uid();
        assert!(Meta {
            uid: Some(uid),
            ..meta
        }
        .is_applied(&now));
        // Any difference (or an access time to set) is a change.
        for other in [
            Meta {
                perms: Some(0o644),
                ..meta
            },
            Meta {
                mtime: Some((1_000_000_000, 6)),
                ..meta
            },
            Meta {
                uid: Some(uid + 1),
                ..meta
            },
            Meta {
                atime: Some(1),
                ..meta
            },
        ] {
            assert!(!other.is_applied(&now), "{other:?}");
        }
        assert!(d.lstat_attrs(b"missing").unwrap().is_none());
    }

    #[test]
    fn cached_parent_lookups_match_plain_ones() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        d.ensure_dir(b"a").unwrap();
        d.ensure_dir(b"a/b").unwrap();
        for (n, body) in [
            ("top", "1"),
            ("a/x", "22"),
            ("a/y", "333"),
            ("a/b/z", "4444"),
        ] {
            std::fs::write(t.path().join(n), body).unwrap();
        }
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("link")).unwrap();
        let mut cache = ParentCache::default();
        let names: [&[u8]; 8] = [
            b"a/x", b"a/y", b"a/gone", b"a/b/z", b"a/x", b"top", b".", b"a/y",
        ];
        for name in names {
            assert_eq!(
                d.lstat_attrs_cached(&mut cache, name).unwrap(),
                d.lstat_attrs(name).unwrap(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        assert_eq!(
            d.lstat_attrs_cached(&mut cache, b"a/y")
                .unwrap()
                .unwrap()
                .0
                .size,
            3
        );
        // Bad names and symlinked parents are refused with a warm cache too.
        for bad in [&b"a/../top"[..], b"/a/x", b"link/x"] {
            assert!(matches!(
                d.lstat_attrs_cached(&mut cache, bad),
                Err(RemoteError::Refused(_))
            ));
        }
    }

    #[test]
    fn cached_temp_files_commit_in_place_and_know_their_owner() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        d.ensure_dir(b"a").unwrap();
        d.ensure_dir(b"b").unwrap();
        let mut cache = ParentCache::default();
        let names: [&[u8]; 5] = [b"a/x", b"a/y", b"top", b"b/z", b"a/x"];
        for (i, name) in names.into_iter().enumerate() {
            let tmp = d.create_temp_cached(&mut cache, name).unwrap();
            tmp.file.write_all_at(&[b'0' + i as u8], 0).unwrap();
            let st = rustix::fs::fstat(&tmp.file).unwrap();
            assert_eq!(tmp.owner, Some((st.st_uid, st.st_gid)));
            // The owner it already has: no chown; the rest is applied.
            let meta = Meta {
                perms: Some(0o640),
                mtime: Some((1_000_000_000, 0)),
                uid: Some(st.st_uid),
                gid: Some(st.st_gid),
                atime: None,
            };
            DestRoot::set_temp_meta(&tmp, &meta).unwrap();
            d.commit(tmp, name).unwrap();
            let path = t.path().join(OsStr::from_bytes(name));
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!((m.mode() & 0o7777, m.mtime()), (0o640, 1_000_000_000));
            assert_eq!(std::fs::read(&path).unwrap(), [b'0' + i as u8]);
        }
        // No temporary file is left anywhere.
        let count = |dir: &str| std::fs::read_dir(t.path().join(dir)).unwrap().count();
        assert_eq!((count("."), count("a"), count("b")), (3, 2, 1));
        // A file never replaces a directory; its temporary file goes.
        d.ensure_dir(b"a/sub").unwrap();
        let tmp = d.create_temp_cached(&mut cache, b"a/sub").unwrap();
        let err = d.commit(tmp, b"a/sub").unwrap_err();
        assert!(err.to_string().contains("replacing directory"), "{err}");
        assert!(t.path().join("a/sub").is_dir());
        assert_eq!(count("a"), 3);
        // A temporary file committed under another root (an absolute
        // --partial-dir) is renamed there, not next to where it was made.
        let other = tempfile::tempdir_in("/dev/shm").unwrap();
        let o = DestRoot::open(other.path()).unwrap();
        let tmp = d.create_temp_cached(&mut cache, b"moved").unwrap();
        o.commit(tmp, b"moved").unwrap();
        assert!(other.path().join("moved").is_file());
        assert!(!t.path().join("moved").exists());
        // Bad names and symlinked parents are refused with a warm cache.
        std::os::unix::fs::symlink(other.path(), t.path().join("up")).unwrap();
        for bad in [&b"a/../x"[..], b"/a/x", b"up/x", b"a//x"] {
            assert!(matches!(
                d.create_temp_cached(&mut cache, bad),
                Err(RemoteError::Refused(_))
            ));
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        let on_disk = |n: &[u8]| t.path().join(OsStr::from_bytes(n));
        d.ensure_dir(b"caf\xe9").unwrap();
        d.ensure_dir(b"caf\xe9/sub\xff").unwrap();
        assert!(on_disk(b"caf\xe9/sub\xff").is_dir());
        let tmp = d.create_temp(b"caf\xe9/sub\xff/f\xfe\nx").unwrap();
        tmp.file.write_all_at(b"data", 0).unwrap();
        d.commit(tmp, b"caf\xe9/sub\xff/f\xfe\nx").unwrap();
        assert_eq!(
            std::fs::read(on_disk(b"caf\xe9/sub\xff/f\xfe\nx")).unwrap(),
            b"data"
        );
        d.make_symlink(b"l\xe9", b"t\xfe").unwrap();
        assert_eq!(
            std::fs::read_link(on_disk(b"l\xe9"))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"t\xfe"
        );
        d.hard_link(b"caf\xe9/sub\xff/f\xfe\nx", b"h\xff").unwrap();
        assert_eq!(std::fs::read(on_disk(b"h\xff")).unwrap(), b"data");
        let mut cache = ParentCache::default();
        let got = d.lstat_attrs_cached(&mut cache, b"caf\xe9/sub\xff/f\xfe\nx");
        assert_eq!(got.unwrap().unwrap().0.size, 4);
        assert_eq!(d.path(b"caf\xe9").unwrap(), on_disk(b"caf\xe9"));
        // No temporary file is left beside the committed one.
        assert_eq!(
            std::fs::read_dir(on_disk(b"caf\xe9/sub\xff"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(d.remove_tree(b"caf\xe9").unwrap().iter().sum::<i32>(), 3);
        assert!(!on_disk(b"caf\xe9").exists());
        // The confinement checks hold for such names too.
        for bad in [&b"../\xff"[..], b"/\xe9", b"a\xff/../../x"] {
            assert!(matches!(d.path(bad), Err(RemoteError::Refused(_))));
            assert!(matches!(d.create_temp(bad), Err(RemoteError::Refused(_))));
        }
        std::os::unix::fs::symlink("/", on_disk(b"up\xff")).unwrap();
        assert!(matches!(
            d.create_temp(b"up\xff/f"),
            Err(RemoteError::Refused(_))
        ));
    }

    #[test]
    fn refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let d = DestRoot::open(&t.path().join("dst")).unwrap();
        assert!(matches!(d.path(b"../x"), Err(RemoteError::Refused(_))));
        assert!(matches!(
            d.create_temp(b"/etc/passwd"),
            Err(RemoteError::Refused(_))
        ));
        // A symlinked parent is refused for every operation.
        std::os::unix::fs::symlink(t.path(), d.root().join("up")).unwrap();
        assert!(matches!(
            d.create_temp(b"up/file"),
            Err(RemoteError::Refused(_))
        ));
        assert!(matches!(
            d.ensure_dir(b"up/dir"),
            Err(RemoteError::Refused(_))
        ));
        assert!(matches!(
            d.make_symlink(b"up/l", b"x"),
            Err(RemoteError::Refused(_))
        ));
        assert!(matches!(
            d.open_basis(b"up/dst"),
            Err(RemoteError::Refused(_))
        ));
        // A symlink as the final component is never followed.
        assert!(d.open_basis(b"up").unwrap().is_none());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_commit_and_meta() {
        let t = tempfile::tempdir().unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        d.ensure_dir(b"sub").unwrap();
        let tmp = d.create_temp(b"sub/f").unwrap();
        tmp.file.write_all_at(b"hello", 0).unwrap();
        let meta = Meta {
            perms: Some(0o640),
            mtime: Some((1_000_000_000, 5)),
            uid: None,
            atime: Some(1_234_567),
            gid: None,
        };
        DestRoot::set_file_meta(&tmp.file, &meta).unwrap();
        d.commit(tmp, b"sub/f").unwrap();
        let m = std::fs::metadata(t.path().join("sub/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
        assert_eq!(m.atime(), 1_234_567);
        assert_eq!(d.lstat(b"sub/f").unwrap().unwrap().size, 5);
        d.make_symlink(b"sub/l", b"f").unwrap();
        d.set_meta(
            b"sub/l",
            &Meta {
                mtime: Some((7, 0)),
                ..meta
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::symlink_metadata(t.path().join("sub/l"))
                .unwrap()
                .mtime(),
            7
        );
        d.set_meta(
            b"sub",
            &Meta {
                perms: Some(0o711),
                mtime: Some((9, 0)),
                ..meta
            },
        )
        .unwrap();
        let m = std::fs::metadata(t.path().join("sub")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 9));
        d.hard_link(b"sub/f", b"h").unwrap();
        d.hard_link(b"sub/f", b"h").unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("h")).unwrap().ino(),
            m_ino(&t.path().join("sub/f"))
        );
        assert!(matches!(
            d.hard_link(b"sub/f", b"../out"),
            Err(RemoteError::Refused(_))
        ));
        d.make_node(b"fifo", 0o010644, (0, 0)).unwrap();
        // Recursive delete never follows a symlink out of the root.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        d.ensure_dir(b"gone").unwrap();
        d.ensure_dir(b"gone/deeper").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("gone/deeper/out")).unwrap();
        std::fs::write(t.path().join("gone/f"), b"x").unwrap();
        let mut names = d.list_dir(b"gone").unwrap().unwrap();
        names.sort();
        assert_eq!(names, vec![b"deeper".to_vec(), b"f".to_vec()]);
        assert_eq!(d.remove_tree(b"gone").unwrap(), [1, 2, 1, 0, 0]);
        assert!(outside.path().join("keep").exists());
        assert!(d.list_dir(b"gone").unwrap().is_none());
        assert!(d.list_dir(b"missing/child").unwrap().is_none());
        assert!(d.lstat(b"fifo").unwrap().unwrap().file_type == FileType::Fifo);
    }
}
