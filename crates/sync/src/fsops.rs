//! Every filesystem system call the sync engine makes goes through this module.
//!
//! Keeping them in one place lets the platform layer (`arsync-io`, io_uring with a
//! thread-pool fallback) replace the implementation later without touching the
//! engine. Paths are handled as `Path`/`OsStr` (raw bytes), never lossily.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::hash::BuildHasherDefault;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, SeekFrom, Timespec, Timestamps, CWD};

/// The kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// True for devices (character or block).
    pub fn is_device(self) -> bool {
        matches!(self, Kind::CharDev | Kind::BlockDev)
    }

    /// True for FIFOs and sockets.
    pub fn is_special(self) -> bool {
        matches!(self, Kind::Fifo | Kind::Socket)
    }
}

/// A time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// The stat fields the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Time,
    /// Access time.
    pub atime: Time,
    /// Device number for devices.
    pub rdev: u64,
    /// Device of the filesystem holding the entry.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of hard links (saturating).
    pub nlink: u32,
}

impl Meta {
    /// The entry kind.
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode)
    }

    /// Permission bits including setuid, setgid and sticky.
    pub fn perms(&self) -> u32 {
        self.mode & 0o7777
    }

    fn from_std(m: &std::fs::Metadata) -> Meta {
        Meta {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: Time {
                sec: m.mtime(),
                nsec: m.mtime_nsec() as u32,
            },
            atime: Time {
                sec: m.atime(),
                nsec: m.atime_nsec() as u32,
            },
            rdev: m.rdev(),
            dev: m.dev(),
            ino: m.ino(),
            nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
        }
    }
}

impl Meta {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        Meta {
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: Time {
                sec: st.st_mtime as i64,
                nsec: st.st_mtime_nsec as u32,
            },
            atime: Time {
                sec: st.st_atime as i64,
                nsec: st.st_atime_nsec as u32,
            },
            rdev: st.st_rdev as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        }
    }
}

/// `lstat`: metadata of the entry itself (symlinks not followed).
pub fn lstat(path: &Path) -> io::Result<Meta> {
    std::fs::symlink_metadata(path).map(|m| Meta::from_std(&m))
}

/// `lstat` of `name` in the open directory `dir` (one name to resolve, not a whole path).
pub fn lstat_at(dir: impl rustix::fd::AsFd, name: &OsStr) -> io::Result<Meta> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| Meta::from_stat(&st))
        .map_err(io::Error::from)
}

/// `stat`: metadata following symlinks.
pub fn stat(path: &Path) -> io::Result<Meta> {
    std::fs::metadata(path).map(|m| Meta::from_std(&m))
}

/// Metadata of an open file.
pub fn fstat(file: &File) -> io::Result<Meta> {
    file.metadata().map(|m| Meta::from_std(&m))
}

/// The names in a directory (without `.` and `..`), unsorted.
pub fn read_dir_names(path: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for_each_name(path, |name| {
        names.push(OsStr::from_bytes(name).to_os_string());
        true
    })?;
    Ok(names)
}

/// Names held compactly (one byte arena, 8 bytes per name): the names of one directory,
/// however many.
#[derive(Debug, Default)]
pub struct Names {
    bytes: Vec<u8>,
    /// Arena offset (high 48 bits) and length (low 16 bits) of each name.
    index: Vec<u64>,
}

impl Names {
    /// Adds a name (names longer than 65,535 bytes, which no Linux filesystem has, are
    /// refused).
    pub fn push(&mut self, name: &[u8]) -> io::Result<()> {
        let off = self.bytes.len() as u64;
        if name.len() > 0xffff || off >= 1 << 48 {
            return Err(io::Error::other("directory listing too large"));
        }
        self.bytes.extend_from_slice(name);
        self.index.push((off << 16) | name.len() as u64);
        Ok(())
    }

    fn at(&self, packed: u64) -> &[u8] {
        let off = (packed >> 16) as usize;
        &self.bytes[off..off + (packed & 0xffff) as usize]
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Sorts the names bytewise, last first (the order rsync deletes in).
    pub fn sort_descending(&mut self) {
        let mut index = std::mem::take(&mut self.index);
        index.sort_unstable_by(|&a, &b| self.at(b).cmp(self.at(a)));
        self.index = index;
    }

    /// The names in their current order.
    pub fn iter(&self) -> impl Iterator<Item = &OsStr> + '_ {
        self.index.iter().map(|&p| OsStr::from_bytes(self.at(p)))
    }
}

/// The names in a directory (without `.` and `..`), unsorted, packed.
pub fn read_dir_names_packed(path: &Path) -> io::Result<Names> {
    let mut names = Names::default();
    let mut err = None;
    for_each_name(path, |name| match names.push(name) {
        Ok(()) => true,
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    err.map_or(Ok(names), Err)
}

/// True if the directory has no entries (other than `.` and `..`).
pub fn dir_is_empty(path: &Path) -> io::Result<bool> {
    let mut empty = true;
    for_each_name(path, |_| {
        empty = false;
        false
    })?;
    Ok(empty)
}

/// Opens a directory for listing and `*at` calls.
fn open_dir(path: &Path) -> io::Result<rustix::fd::OwnedFd> {
    rustix::fs::openat(
        CWD,
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Bytes of `getdents64` output read per call.
const DENTS_BUF: usize = 64 * 1024;

/// Calls `f` with each name in the directory `path` (without `.` and `..`) until it returns
/// false; one buffer for the whole directory, no allocation per entry.
pub fn for_each_name(path: &Path, f: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    let fd = open_dir(path)?;
    for_each_name_fd(&fd, f)
}

fn for_each_name_fd(fd: &rustix::fd::OwnedFd, mut f: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
    let mut buf = Vec::with_capacity(DENTS_BUF);
    let mut dir = rustix::fs::RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if !f(name) {
            break;
        }
    }
    Ok(())
}

/// Owner, group, mode and the other fields many entries of a directory share, kept once
/// per listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SharedAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    dev: u64,
    rdev: u64,
}

/// A quick hasher for [`SharedAttrs`]: its fields come from the local filesystem, so the
/// flooding resistance of the default hasher buys nothing here.
#[derive(Default)]
struct AttrHasher(u64);

impl AttrHasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for AttrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
}

/// One entry of a [`Listing`]: 40 bytes, the name in the listing's arena.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Arena offset (high 48 bits) and length (low 16 bits) of the name.
    name: u64,
    size: u64,
    mtime_sec: i64,
    ino: u64,
    mtime_nsec: u32,
    /// Index into the listing's shared attributes.
    attrs: u32,
}

/// One entry of a [`Listing`], as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    /// The name (raw bytes).
    pub name: &'a OsStr,
    /// Its metadata (symlinks not followed).
    pub meta: Meta,
}

/// A directory's entries with their metadata, and the entries whose `lstat` failed.
///
/// Packed for huge directories: all names live in one byte arena, each entry is a 40-byte
/// record, and owner/group/mode/device/link count are interned per listing (entries of one
/// directory share few of them). About 50 bytes per entry plus the name, against ~180 for a
/// vector of `(OsString, Meta)`. Access time is kept only when asked for (`--atimes`).
///
/// The entries keep the directory's order until [`Listing::retain`] / [`Listing::sort`],
/// which act on an index of positions, so records never move.
#[derive(Debug, Default)]
pub struct Listing {
    names: Vec<u8>,
    records: Vec<Record>,
    attrs: Vec<SharedAttrs>,
    attr_index: HashMap<SharedAttrs, u32, BuildHasherDefault<AttrHasher>>,
    /// Access times by record, when kept.
    atimes: Vec<Time>,
    /// Record numbers of the entries, in listing order.
    order: Vec<u32>,
    /// Entries that could not be stat'ed.
    pub failed: Vec<(OsString, io::Error)>,
}

impl Listing {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The entry at position `i` (listing order).
    pub fn get(&self, i: usize) -> Option<DirEntry<'_>> {
        self.order.get(i).map(|&r| self.entry(r))
    }

    /// The entries in listing order.
    pub fn iter(&self) -> impl Iterator<Item = DirEntry<'_>> + '_ {
        self.order.iter().map(|&r| self.entry(r))
    }

    fn name_of(&self, r: u32) -> &[u8] {
        let packed = self.records[r as usize].name;
        let off = (packed >> 16) as usize;
        let len = (packed & 0xffff) as usize;
        &self.names[off..off + len]
    }

    fn entry(&self, r: u32) -> DirEntry<'_> {
        let rec = &self.records[r as usize];
        let a = self.attrs[rec.attrs as usize];
        let mtime = Time {
            sec: rec.mtime_sec,
            nsec: rec.mtime_nsec,
        };
        DirEntry {
            name: OsStr::from_bytes(self.name_of(r)),
            meta: Meta {
                mode: a.mode,
                uid: a.uid,
                gid: a.gid,
                size: rec.size,
                mtime,
                atime: self.atimes.get(r as usize).copied().unwrap_or(mtime),
                rdev: a.rdev,
                dev: a.dev,
                ino: rec.ino,
                nlink: a.nlink,
            },
        }
    }

    fn intern(&mut self, m: &Meta) -> u32 {
        let key = SharedAttrs {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            nlink: m.nlink,
            dev: m.dev,
            rdev: m.rdev,
        };
        // Neighbours in a directory mostly share them: no hashing then.
        if let Some(last) = self.attrs.len().checked_sub(1) {
            if self.attrs[last] == key {
                return last as u32;
            }
        }
        if let Some(&i) = self.attr_index.get(&key) {
            return i;
        }
        let i = self.attrs.len() as u32;
        self.attrs.push(key);
        self.attr_index.insert(key, i);
        i
    }

    fn record(&mut self, name_off: usize, name_len: usize, m: &Meta) -> Record {
        Record {
            name: ((name_off as u64) << 16) | name_len as u64,
            size: m.size,
            mtime_sec: m.mtime.sec,
            ino: m.ino,
            mtime_nsec: m.mtime.nsec,
            attrs: self.intern(m),
        }
    }

    /// Adds an entry (keeping its access time if `keep_atime`).
    fn push(&mut self, name: &[u8], m: &Meta, keep_atime: bool) -> io::Result<()> {
        let off = self.names.len();
        if off as u64 >= 1 << 48 || name.len() > 0xffff || self.records.len() >= u32::MAX as usize {
            return Err(io::Error::other("directory listing too large"));
        }
        self.names.extend_from_slice(name);
        let rec = self.record(off, name.len(), m);
        self.order.push(self.records.len() as u32);
        self.records.push(rec);
        if keep_atime {
            self.atimes.push(m.atime);
        }
        Ok(())
    }

    /// Keeps the entries for which `f` returns true; `f` may change an entry's metadata
    /// (a followed symlink takes its target's).
    pub fn retain(&mut self, mut f: impl FnMut(&OsStr, &mut Meta) -> bool) {
        let mut order = std::mem::take(&mut self.order);
        order.retain(|&r| {
            let DirEntry { name, meta } = self.entry(r);
            let mut new = meta;
            let keep = f(name, &mut new);
            if keep && new != meta {
                let packed = self.records[r as usize].name;
                let rec = self.record((packed >> 16) as usize, (packed & 0xffff) as usize, &new);
                self.records[r as usize] = rec;
                if let Some(t) = self.atimes.get_mut(r as usize) {
                    *t = new.atime;
                }
            }
            keep
        });
        self.order = order;
    }

    /// Sorts the entries as the engine walks them: non-directories, then directories, each
    /// by name (bytewise).
    pub fn sort(&mut self) {
        let mut order = std::mem::take(&mut self.order);
        // Names in a directory are unique, so an unstable sort is exact (and allocates nothing).
        order.sort_unstable_by(|&a, &b| {
            (self.is_dir(a), self.name_of(a)).cmp(&(self.is_dir(b), self.name_of(b)))
        });
        self.order = order;
    }

    /// Approximate heap memory held, in bytes.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.names.capacity()
            + self.records.capacity() * size_of::<Record>()
            + self.attrs.capacity() * size_of::<SharedAttrs>()
            + self.attr_index.capacity() * (size_of::<SharedAttrs>() + 8)
            + self.atimes.capacity() * size_of::<Time>()
            + self.order.capacity() * size_of::<u32>()
    }

    fn is_dir(&self, r: u32) -> bool {
        let a = self.attrs[self.records[r as usize].attrs as usize];
        Kind::from_mode(a.mode) == Kind::Dir
    }

    /// True if the listing, sorted by [`Listing::sort`], has an entry called `name`.
    pub fn contains_sorted(&self, name: &[u8]) -> bool {
        let split = self.order.partition_point(|&r| !self.is_dir(r));
        let find = |part: &[u32]| {
            part.binary_search_by(|&r| self.name_of(r).cmp(name))
                .is_ok()
        };
        find(&self.order[..split]) || find(&self.order[split..])
    }

    /// Gives back spare capacity (after [`Listing::retain`] dropped many entries the records
    /// stay, but the index shrinks).
    fn shrink(&mut self) {
        self.names.shrink_to_fit();
        self.records.shrink_to_fit();
        self.atimes.shrink_to_fit();
        self.order.shrink_to_fit();
    }
}

/// Lists a directory and stats every entry (relative to the directory: one path lookup for
/// the listing, not one per entry). Access times are kept only with `keep_atime`.
pub fn list_with_stats(path: &Path, keep_atime: bool) -> io::Result<Listing> {
    let fd = open_dir(path)?;
    let mut out = Listing::default();
    let mut err = None;
    for_each_name_fd(&fd, |name| {
        let stat = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW);
        let r = match stat {
            Ok(st) => out.push(name, &Meta::from_stat(&st), keep_atime),
            Err(e) => {
                let name = OsStr::from_bytes(name).to_os_string();
                out.failed.push((name, e.into()));
                Ok(())
            }
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    out.shrink();
    // The interning table is only needed while entries are added or changed; keep it small.
    out.attr_index.shrink_to_fit();
    Ok(out)
}

/// The target of a symlink, as raw bytes.
pub fn read_link(path: &Path) -> io::Result<OsString> {
    std::fs::read_link(path).map(|p| p.into_os_string())
}

/// Creates a directory with `mode` (subject to the umask).
pub fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(mode)).map_err(io::Error::from)
}

/// Creates a directory and any missing parents (mode 0777 minus the umask).
pub fn mkdir_all(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)
}

/// Removes a directory tree without following symlinks inside it.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(path)
}

/// Copies one file's bytes and permission bits to a new path.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<u64> {
    std::fs::copy(from, to)
}

/// Reads a whole (small) file, such as a `--files-from` list.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Creates a symlink at `path` pointing to `target`.
pub fn symlink(target: &OsStr, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

/// Creates a hard link `new` to `existing` (symlinks are linked, not followed).
pub fn hard_link(existing: &Path, new: &Path) -> io::Result<()> {
    rustix::fs::linkat(CWD, existing, CWD, new, AtFlags::empty()).map_err(io::Error::from)
}

/// Creates a device node, FIFO or socket node.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = FileType::from_raw_mode(mode);
    rustix::fs::mknodat(CWD, path, kind, Mode::from_raw_mode(mode & 0o7777), rdev)
        .map_err(io::Error::from)
}

/// Renames `from` to `to`, replacing `to` if it is not a directory.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)
}

/// Removes a non-directory.
pub fn unlink(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)
}

/// Removes an empty directory.
pub fn rmdir(path: &Path) -> io::Result<()> {
    std::fs::remove_dir(path)
}

/// Sets permission bits (never follows a symlink: symlink modes are not settable on Linux).
pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    rustix::fs::chmodat(
        CWD,
        path,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// Sets owner and/or group without following symlinks.
pub fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
}

/// A time for `utimensat`/`futimens`: `None` leaves it unchanged (`UTIME_OMIT`).
pub(crate) fn timespec(t: Option<Time>) -> Timespec {
    match t {
        Some(t) => Timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec as _,
        },
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    }
}

/// Sets access and modification times without following symlinks. `None` leaves a time unchanged.
pub fn set_times(path: &Path, atime: Option<Time>, mtime: Option<Time>) -> io::Result<()> {
    let times = Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

/// Sets owner and/or group of an open file.
pub fn fchown(file: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::fchown(file, uid, gid)
}

/// Sets permission bits of an open file.
pub fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode & 0o7777)).map_err(io::Error::from)
}

/// Sets times of an open file. `None` leaves a time unchanged.
pub fn futimes(file: &File, atime: Option<Time>, mtime: Option<Time>) -> io::Result<()> {
    let times = Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::futimens(file, &times).map_err(io::Error::from)
}

/// Extended attribute names of an entry (symlinks not followed).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| OsStr::from_bytes(s).to_os_string())
                    .collect())
            }
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).map_err(io::Error::from)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of one extended attribute (symlinks not followed).
pub fn get_xattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::lgetxattr_query(path, name).map_err(io::Error::from)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets one extended attribute (symlinks not followed).
pub fn set_xattr(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(io::Error::from)
}

/// Removes one extended attribute (symlinks not followed).
pub fn remove_xattr(path: &Path, name: &OsStr) -> io::Result<()> {
    rustix::fs::lremovexattr(path, name).map_err(io::Error::from)
}

/// True if the directory can be listed and entered by this process.
pub fn can_list(path: &Path) -> bool {
    rustix::fs::accessat(
        CWD,
        path,
        rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .is_ok()
}

/// Opens a file for reading without following a final symlink unless `follow`.
pub fn open_read(path: &Path, follow: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    if !follow {
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Like [`open_read`] with `O_NOATIME` (`--open-noatime`); falls back to a plain open
/// where the flag is not allowed (files of other users, for non-root).
pub fn open_read_noatime(path: &Path, follow: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    let mut flags = libc::O_NOATIME;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    o.custom_flags(flags);
    match o.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_read(path, follow),
        other => other,
    }
}

/// Creates a new file that must not exist yet (`O_EXCL`), mode `mode`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Opens an existing file for writing in place (no truncation), creating it if missing.
pub fn open_inplace(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Flushes a file's data and metadata to stable storage.
pub fn fsync(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// Sets a file's length.
pub fn set_len(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)
}

/// Reserves space for `len` bytes (`--preallocate`). Unsupported filesystems are not an error.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How a file's bytes were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Shared extents (`FICLONE`).
    Reflink,
    /// In-kernel copy (`copy_file_range`).
    CopyRange,
    /// Userspace read/write.
    ReadWrite,
}

/// Called after each chunk with the bytes just copied; returning true aborts the copy
/// (interrupt handling, `--bwlimit` pacing, progress).
pub type StopCheck<'a> = &'a dyn Fn(u64) -> bool;

pub(crate) fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "transfer interrupted")
}

/// The last source filesystem (st_dev) whose FICLONE was refused: the ioctl is skipped there
/// from then on.
static NO_REFLINK_DEV: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Shares `src`'s extents with the empty file `dst` (`FICLONE`). Returns false where the
/// filesystem cannot (then the caller copies).
pub(crate) fn try_reflink(src: &File, src_dev: u64, dst: &File) -> io::Result<bool> {
    use std::sync::atomic::Ordering;
    if NO_REFLINK_DEV.load(Ordering::Relaxed) == src_dev {
        return Ok(false);
    }
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => Ok(true),
        Err(
            rustix::io::Errno::OPNOTSUPP
            | rustix::io::Errno::NOTTY
            | rustix::io::Errno::XDEV
            | rustix::io::Errno::INVAL,
        ) => {
            NO_REFLINK_DEV.store(src_dev, Ordering::Relaxed);
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

/// Copies `len` bytes of `src` into the empty file `dst`, trying a reflink, then
/// `copy_file_range`, then read/write. Returns the method used.
pub fn copy_whole(
    src: &File,
    src_dev: u64,
    dst: &File,
    len: u64,
    plain: bool,
    stop: StopCheck,
) -> io::Result<CopyMethod> {
    if plain {
        copy_read_write(src, dst, 0, len, false, stop)?;
        return Ok(CopyMethod::ReadWrite);
    }
    if len > 0 && try_reflink(src, src_dev, dst)? {
        if stop(len) {
            return Err(interrupted());
        }
        return Ok(CopyMethod::Reflink);
    }
    let mut done = 0u64;
    let mut in_off = 0u64;
    let mut out_off = 0u64;
    let mut range_ok = true;
    while done < len && range_ok {
        let chunk = (len - done).min(8 << 20) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), chunk) {
            Ok(0) => break,
            Ok(n) => {
                done += n as u64;
                if stop(n as u64) {
                    return Err(interrupted());
                }
            }
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) if done == 0 => range_ok = false,
            Err(e) => return Err(e.into()),
        }
    }
    if range_ok {
        if done < len {
            // The source shrank while copying: the copy ends early.
            set_len(dst, done)?;
        }
        return Ok(CopyMethod::CopyRange);
    }
    copy_read_write(src, dst, 0, len, false, stop)?;
    Ok(CopyMethod::ReadWrite)
}

/// Copies `[offset, offset+len)` with positional reads and writes. With `sparse`, all-zero
/// 4 KiB blocks are skipped (left as holes) instead of written; runs of data blocks are
/// written with one call each. Returns the bytes read (the copy ends early at end of file).
pub(crate) fn copy_read_write(
    src: &File,
    dst: &File,
    offset: u64,
    len: u64,
    sparse: bool,
    stop: StopCheck,
) -> io::Result<u64> {
    with_buffer(len.clamp(1, 1 << 20) as usize, |buf| {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let want = (end - pos).min(buf.len() as u64) as usize;
            let n = read_full_at(src, &mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            if sparse {
                write_data_blocks(dst, &buf[..n], pos)?;
            } else {
                write_all_at(dst, &buf[..n], pos)?;
            }
            pos += n as u64;
            if stop(n as u64) {
                return Err(interrupted());
            }
            if n < want {
                break;
            }
        }
        Ok(pos - offset)
    })
}

/// Files up to this size are copied sparse with one read, without `SEEK_DATA`/`SEEK_HOLE`
/// (holes read as zeros and are skipped like any zero block).
pub const SMALL_SPARSE: u64 = 1 << 20;

/// Runs `f` with a zeroed-or-reused per-thread buffer of at least `len` bytes.
fn with_buffer<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0);
            }
            f(&mut v[..len])
        }
        // Re-entered (cannot happen: `f` never copies): use a fresh buffer.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// `pread` until `buf` is full or end of file; returns the bytes read.
fn read_full_at(src: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match src.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn write_all_at(dst: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    dst.write_all_at(buf, offset)
}

/// True if every byte is zero.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    // Data usually differs from zero in its first bytes: look there before scanning it all.
    let head = block.len().min(16);
    block[..head].iter().all(|&b| b == 0) && block[head..].iter().fold(0u8, |a, &b| a | b) == 0
}

/// Writes the 4 KiB blocks of `data` (which belongs at `offset`) that are not all zero,
/// one write per run of such blocks. Returns the end offset of the last block written
/// (`offset` if none was).
fn write_data_blocks(dst: &File, data: &[u8], offset: u64) -> io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut run_start: Option<usize> = None;
    let mut written_end = offset;
    let mut at = 0;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        if is_zero(&data[at..end]) {
            if let Some(s) = run_start.take() {
                write_all_at(dst, &data[s..at], offset + s as u64)?;
                written_end = offset + at as u64;
            }
        } else if run_start.is_none() {
            run_start = Some(at);
        }
        at = end;
    }
    if let Some(s) = run_start {
        write_all_at(dst, &data[s..], offset + s as u64)?;
        written_end = offset + data.len() as u64;
    }
    Ok(written_end)
}

/// Copies a small file (expected `expect` bytes, less than [`SMALL_SPARSE`]) into the empty
/// file `dst` like [`copy_sparse`], with one read of up to `expect + 1` bytes instead of
/// asking its size first: the copy has the source's length at the time it was read (a short
/// read of a regular file means its end). Returns `None`, with nothing written, if the source
/// grew past that read; the caller then copies it by its current size.
pub fn copy_sparse_small(
    src: &File,
    dst: &File,
    expect: u64,
    stop: StopCheck,
) -> io::Result<Option<u64>> {
    // One byte more than expected tells a grown file apart in the same read.
    let cap = (expect.max(4096) + 1).min(SMALL_SPARSE) as usize;
    let copied = with_buffer(cap, |buf| -> io::Result<Option<u64>> {
        use std::os::unix::fs::FileExt;
        // One read: a regular file's read comes back short only at its end.
        let n = loop {
            match src.read_at(buf, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if n == buf.len() {
            return Ok(None);
        }
        let data_end = write_data_blocks(dst, &buf[..n], 0)?;
        if data_end < n as u64 {
            set_len(dst, n as u64)?;
        }
        Ok(Some(n as u64))
    })?;
    if let Some(n) = copied {
        if stop(n) {
            return Err(interrupted());
        }
    }
    Ok(copied)
}

/// Copies `src` into the empty file `dst` keeping holes: only the data extents found with
/// `SEEK_DATA`/`SEEK_HOLE` are read, and zero blocks inside them are skipped too (`-S`).
/// Small files are read whole at once instead (one read, one write per data run).
pub fn copy_sparse(src: &File, dst: &File, len: u64, stop: StopCheck) -> io::Result<u64> {
    if len <= SMALL_SPARSE {
        let (n, data_end) = with_buffer(len as usize, |buf| -> io::Result<(usize, u64)> {
            let n = read_full_at(src, buf, 0)?;
            let data_end = write_data_blocks(dst, &buf[..n], 0)?;
            Ok((n, data_end))
        })?;
        // A source that shrank since it was listed ends the copy where it ended.
        if data_end < n as u64 {
            set_len(dst, n as u64)?;
        }
        if stop(n as u64) {
            return Err(interrupted());
        }
        return Ok(n as u64);
    }
    let mut pos = 0u64;
    let mut copied = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        copied += copy_read_write(src, dst, data, hole - data, true, stop)?;
        pos = hole;
    }
    // Trailing holes up to the listed length, but not past the source's end if it shrank.
    set_len(dst, len.min(src.metadata()?.len()))?;
    Ok(copied)
}

/// Writes `src` over the existing file `dst` in place, rewriting only the blocks that differ,
/// then truncates to `len`. Returns the number of bytes written.
pub fn copy_inplace(mut src: &File, mut dst: &File, len: u64, stop: StopCheck) -> io::Result<u64> {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let cap = len.clamp(1, 128 * 1024) as usize;
    let mut a = vec![0u8; cap];
    let mut b = vec![0u8; cap];
    let mut off = 0u64;
    let mut written = 0u64;
    src.seek(io::SeekFrom::Start(0))?;
    while off < len {
        let want = (len - off).min(a.len() as u64) as usize;
        let n = src.read(&mut a[..want])?;
        if n == 0 {
            break;
        }
        let mut m = 0;
        while m < n {
            let r = dst.read_at(&mut b[m..n], off + m as u64)?;
            if r == 0 {
                break;
            }
            m += r;
        }
        if m < n || a[..n] != b[..n] {
            dst.write_all_at(&a[..n], off)?;
            written += n as u64;
        }
        off += n as u64;
        if stop(n as u64) {
            return Err(interrupted());
        }
    }
    dst.flush()?;
    set_len(dst, off)?;
    Ok(written)
}

/// Appends `src[from..len]` to `dst` (which holds `from` bytes). Returns bytes written.
pub fn copy_append(
    src: &File,
    dst: &File,
    from: u64,
    len: u64,
    stop: StopCheck,
) -> io::Result<u64> {
    let mut in_off = from;
    let mut out_off = from;
    while in_off < len {
        let chunk = (len - in_off).min(8 << 20) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), chunk) {
            Ok(0) => break,
            Ok(n) => {
                if stop(n as u64) {
                    return Err(interrupted());
                }
            }
            Err(e) if in_off == from => {
                let _ = e;
                return copy_read_write(src, dst, from, len - from, false, stop);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(in_off - from)
}

/// True if the first `n` bytes of two files are identical.
pub fn same_prefix(a: &Path, b: &Path, n: u64) -> io::Result<bool> {
    let mut fa = open_read(a, true)?;
    let mut fb = open_read(b, true)?;
    let cap = n.clamp(1, 128 * 1024) as usize;
    let mut ba = vec![0u8; cap];
    let mut bb = vec![0u8; cap];
    let mut left = n;
    while left > 0 {
        let want = left.min(cap as u64) as usize;
        let x = read_full(&mut fa, &mut ba[..want])?;
        let y = read_full(&mut fb, &mut bb[..want])?;
        if x != want || y != want || ba[..want] != bb[..want] {
            return Ok(false);
        }
        left -= want as u64;
    }
    Ok(true)
}

/// True if two files have identical contents (used by `--checksum` locally: an exact
/// comparison is cheaper and stronger than hashing both sides).
pub fn same_contents(a: &Path, b: &Path, size_hint: u64) -> io::Result<bool> {
    let mut fa = open_read(a, true)?;
    let mut fb = open_read(b, true)?;
    // One byte more than expected, so that a grown file is noticed in the first round.
    let cap = (size_hint + 1).min(128 * 1024) as usize;
    let mut ba = vec![0u8; cap];
    let mut bb = vec![0u8; cap];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Random bits for temporary names: a per-thread xorshift generator seeded once from the
/// kernel (names only need to be unlikely to collide; `O_EXCL` makes them safe).
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed_u64() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn seed_u64() -> u64 {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::NONBLOCK).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ (std::process::id() as u64) << 32;
    }
    u64::from_le_bytes(b)
}

/// The current effective user id.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Looks up a user id by name in the system database.
pub fn uid_by_name(name: &str) -> Option<u32> {
    lookup_db("/etc/passwd", name)
}

/// Looks up a group id by name in the system database.
pub fn gid_by_name(name: &str) -> Option<u32> {
    lookup_db("/etc/group", name)
}

/// The user name of `uid`, from the system database.
pub fn user_name(uid: u32) -> Option<String> {
    name_in_db("/etc/passwd", uid)
}

/// The group name of `gid`, from the system database.
pub fn group_name(gid: u32) -> Option<String> {
    name_in_db("/etc/group", gid)
}

fn name_in_db(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_string())
    })
}

fn lookup_db(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// Returns the filesystem device of `path` (following symlinks), for `-x`.
pub fn device_of(path: &Path) -> io::Result<u64> {
    stat(path).map(|m| m.dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        {
            let f = File::create(&a).unwrap();
            f.set_len(8 << 20).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"hello", 4 << 20).unwrap();
        }
        let src = open_read(&a, false).unwrap();
        let dst = create_new(&b, 0o600).unwrap();
        copy_sparse(&src, &dst, 8 << 20, &|_| false).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            std::fs::metadata(&b).unwrap().blocks() < 1024,
            "holes were filled"
        );
    }

    /// A source listed longer than it now is (it shrank before the copy): `-S` ends the copy
    /// at the source's end, both on the small-file path and the extent path, instead of
    /// padding it with zeros to the listed length.
    #[test]
    fn sparse_copy_of_a_shrunk_source_ends_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        for (real, listed) in [(5000usize, 9000u64), (3 << 20, 40 << 20)] {
            let a = dir.path().join("a");
            let b = dir.path().join("b");
            let _ = std::fs::remove_file(&b);
            let content: Vec<u8> = (0..real).map(|i| (i % 253) as u8 | 1).collect();
            std::fs::write(&a, &content).unwrap();
            let src = open_read(&a, false).unwrap();
            let dst = create_new(&b, 0o600).unwrap();
            let n = copy_sparse(&src, &dst, listed, &|_| false).unwrap();
            assert_eq!(n, real as u64, "listed {listed}");
            assert_eq!(std::fs::read(&b).unwrap(), content, "listed {listed}");
        }
    }

    /// Small files: zero blocks (and a zero tail) become holes, data runs are kept, the
    /// length is the source's; a file that grew past the small limit is refused untouched.
    #[test]
    fn small_sparse_copy_skips_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut content = vec![0u8; 5 * 4096 + 100];
        content[4096..4096 + 10].copy_from_slice(b"0123456789");
        content[3 * 4096] = 7;
        std::fs::write(&a, &content).unwrap();
        let src = open_read(&a, false).unwrap();
        let b = dir.path().join("b");
        let dst = create_new(&b, 0o600).unwrap();
        let copied = copy_sparse_small(&src, &dst, content.len() as u64, &|_| false).unwrap();
        assert_eq!(copied, Some(content.len() as u64));
        assert_eq!(std::fs::read(&b).unwrap(), content);
        // Two data blocks of 4 KiB (tmpfs/ext4 allocate per block).
        assert!(std::fs::metadata(&b).unwrap().blocks() <= 2 * 8 + 8);

        // Shrunk since listed: the copy has the current length.
        let c = dir.path().join("c");
        let dst = create_new(&c, 0o600).unwrap();
        let copied = copy_sparse_small(&src, &dst, content.len() as u64 + 50, &|_| false).unwrap();
        assert_eq!(copied, Some(content.len() as u64));
        assert_eq!(std::fs::read(&c).unwrap(), content);

        // Grown since listed: nothing is written, the caller copies it by its new size.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; SMALL_SPARSE as usize + 10]).unwrap();
        let src = open_read(&big, false).unwrap();
        let d = dir.path().join("d");
        let dst = create_new(&d, 0o600).unwrap();
        assert_eq!(copy_sparse_small(&src, &dst, 10, &|_| false).unwrap(), None);
        assert_eq!(std::fs::metadata(&d).unwrap().len(), 0);

        // An all-zero small file is all hole.
        let z = dir.path().join("z");
        std::fs::write(&z, vec![0u8; 3 * 4096]).unwrap();
        let src = open_read(&z, false).unwrap();
        let e = dir.path().join("e");
        let dst = create_new(&e, 0o600).unwrap();
        copy_sparse_small(&src, &dst, 3 * 4096, &|_| false).unwrap();
        assert_eq!(std::fs::read(&e).unwrap(), vec![0u8; 3 * 4096]);
        assert_eq!(std::fs::metadata(&e).unwrap().blocks(), 0);
    }

    /// Large sparse copies write each run of data blocks once, and leave zero blocks inside
    /// data extents as holes.
    #[test]
    fn large_sparse_copy_skips_zero_blocks_inside_data() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let len = 3 * SMALL_SPARSE as usize;
        let mut content = vec![0u8; len];
        for (i, b) in content.iter_mut().enumerate().take(SMALL_SPARSE as usize) {
            *b = (i % 251) as u8 | 1;
        }
        content[len - 1] = 9;
        std::fs::write(&a, &content).unwrap();
        let src = open_read(&a, false).unwrap();
        let b = dir.path().join("b");
        let dst = create_new(&b, 0o600).unwrap();
        let seen = std::cell::Cell::new(0u64);
        let copied = copy_sparse(&src, &dst, len as u64, &|n| {
            seen.set(seen.get() + n);
            false
        })
        .unwrap();
        assert_eq!(copied, len as u64);
        assert_eq!(seen.get(), len as u64, "progress hook sees every byte read");
        assert_eq!(std::fs::read(&b).unwrap(), content);
        // 1 MiB of data plus the last block; the 2 MiB of zeros written by the source are holes.
        let blocks = std::fs::metadata(&b).unwrap().blocks();
        assert!(blocks <= (SMALL_SPARSE / 512) + 64, "{blocks} blocks");
    }

    /// The packed listing gives back each entry's name and metadata exactly, filters with
    /// metadata changes, sorts non-directories first, and finds names.
    #[test]
    fn packed_listing_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("b"), b"12345").unwrap();
        std::fs::write(p.join("a"), b"").unwrap();
        std::fs::create_dir(p.join("c")).unwrap();
        std::fs::create_dir(p.join("0dir")).unwrap();
        symlink(OsStr::new("b"), &p.join("link")).unwrap();
        let name = OsStr::from_bytes(b"\xff\xfe raw");
        std::fs::write(p.join(name), b"x").unwrap();
        let mut l = list_with_stats(p, true).unwrap();
        assert_eq!(l.len(), 6);
        assert!(l.failed.is_empty());
        for e in l.iter() {
            assert_eq!(e.meta, lstat(&p.join(e.name)).unwrap(), "{:?}", e.name);
        }
        // Without --atimes the access time is not kept (it reads as the mtime).
        let no_atime = list_with_stats(p, false).unwrap();
        let e = no_atime.iter().find(|e| e.name == "b").unwrap();
        assert_eq!(e.meta.atime, e.meta.mtime);
        // A followed symlink takes its target's metadata.
        let target = lstat(&p.join("b")).unwrap();
        l.retain(|name, meta| {
            if name == "link" {
                *meta = target;
            }
            name != "a"
        });
        l.sort();
        let names: Vec<&[u8]> = l.iter().map(|e| e.name.as_bytes()).collect();
        assert_eq!(
            names,
            [&b"b"[..], b"link", b"\xff\xfe raw", b"0dir", b"c"],
            "non-directories first, then directories, each bytewise"
        );
        assert_eq!(l.get(1).unwrap().meta, target);
        for n in [&b"b"[..], b"link", b"c", b"0dir", b"\xff\xfe raw"] {
            assert!(l.contains_sorted(n), "{n:?}");
        }
        assert!(!l.contains_sorted(b"a"));
        assert!(l.heap_bytes() > 0);
        assert!(list_with_stats(&p.join("missing"), false).is_err());
    }

    #[test]
    fn packed_names_sort_descending() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["m", "a", "zz", "b"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let mut names = read_dir_names_packed(dir.path()).unwrap();
        assert_eq!(names.len(), 4);
        names.sort_descending();
        let v: Vec<&OsStr> = names.iter().collect();
        assert_eq!(v, ["zz", "m", "b", "a"]);
        assert!(dir_is_empty(dir.path()).is_ok_and(|e| !e));
        let empty = tempfile::tempdir().unwrap();
        assert!(dir_is_empty(empty.path()).unwrap());
        assert!(Names::default().is_empty());
        assert!(Names::default().push(&vec![b'x'; 70_000]).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4096]));
        let mut v = vec![0u8; 4096];
        v[4095] = 1;
        assert!(!is_zero(&v));
        v[4095] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn inplace_rewrites_only_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"new content").unwrap();
        std::fs::write(&b, b"old content that is longer").unwrap();
        let src = open_read(&a, false).unwrap();
        let dst = open_inplace(&b, 0o600).unwrap();
        copy_inplace(&src, &dst, 11, &|_| false).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new content");
    }

    #[test]
    fn xattr_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        let name = OsStr::new("user.test");
        if set_xattr(&a, name, b"v").is_err() {
            return; // filesystem without user xattrs
        }
        assert!(list_xattrs(&a).unwrap().iter().any(|n| n == name));
        assert_eq!(get_xattr(&a, name).unwrap(), b"v");
        remove_xattr(&a, name).unwrap();
        assert!(list_xattrs(&a).unwrap().is_empty());
    }
}

#[cfg(test)]
mod size_tests {
    /// Listings of huge directories are held in memory: keep entries small.
    #[test]
    fn entry_stays_small() {
        assert!(std::mem::size_of::<super::Meta>() <= 80);
        assert_eq!(std::mem::size_of::<super::Record>(), 40);
    }
}
