//! Exact comparison of two directory trees.
//!
//! The walk goes directory by directory (entries sorted by name), so memory grows with the
//! largest directory, plus one record per multiply-linked file for the hard-link check.
//! Metadata is read with `lstat` before any content is read, and content is read with
//! `O_NOATIME`, so comparing does not disturb the access times it compares.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::meta::{self, AclKind, FileTime, ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR};

/// How to compare sparseness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseCheck {
    /// Do not compare.
    Off,
    /// Compare allocated blocks (`st_blocks`).
    AllocatedBlocks,
    /// Compare the data/hole map (`SEEK_DATA` / `SEEK_HOLE`). Files whose sizes differ are
    /// reported only for their size.
    HoleMap,
}

/// Which properties [`compare_trees`] checks. `Default` checks everything except access
/// times and sparseness; each field can be switched off.
#[derive(Clone, Debug)]
pub struct CompareOpts {
    /// Regular file content (and size).
    pub content: bool,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: bool,
    /// User and group ids.
    pub owner: bool,
    /// Modification times of files and (see `dir_mtime`, `symlink_mtime`) others.
    pub mtime: bool,
    /// Also compare directory modification times.
    pub dir_mtime: bool,
    /// Also compare symlink modification times.
    pub symlink_mtime: bool,
    /// Allowed mtime (and atime) difference in nanoseconds.
    pub time_tolerance_ns: u64,
    /// Access times of files other than directories (whose atimes change whenever they are
    /// listed) and symlinks (which copiers commonly leave alone).
    pub atime: bool,
    /// Extended attributes of every readable namespace (ACL xattrs are left to `acls`).
    pub xattrs: bool,
    /// POSIX access and default ACLs.
    pub acls: bool,
    /// The partition of paths into inode groups.
    pub hard_links: bool,
    /// Sparseness.
    pub sparse: SparseCheck,
    /// Symlink targets.
    pub symlink_targets: bool,
    /// Device numbers of character and block devices.
    pub devices: bool,
    /// Also compare the two root directories' own metadata.
    pub root_metadata: bool,
    /// Relative paths left out of the comparison on both sides (with everything below them).
    pub skip: Vec<PathBuf>,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            content: true,
            mode: true,
            owner: true,
            mtime: true,
            dir_mtime: true,
            symlink_mtime: true,
            time_tolerance_ns: 0,
            atime: false,
            xattrs: true,
            acls: true,
            hard_links: true,
            sparse: SparseCheck::Off,
            symlink_targets: true,
            devices: true,
            root_metadata: true,
            skip: Vec::new(),
        }
    }
}

impl CompareOpts {
    /// Every check, including access times and the hole map.
    pub fn all() -> Self {
        CompareOpts {
            atime: true,
            sparse: SparseCheck::HoleMap,
            ..CompareOpts::default()
        }
    }

    /// Presence, file type, content and symlink targets only.
    pub fn content_only() -> Self {
        CompareOpts {
            mode: false,
            owner: false,
            mtime: false,
            dir_mtime: false,
            symlink_mtime: false,
            atime: false,
            xattrs: false,
            acls: false,
            hard_links: false,
            devices: false,
            root_metadata: false,
            ..CompareOpts::default()
        }
    }

    /// Without owner checks.
    pub fn without_owners(mut self) -> Self {
        self.owner = false;
        self
    }

    /// Without any time checks.
    pub fn without_times(mut self) -> Self {
        self.mtime = false;
        self.atime = false;
        self
    }

    /// Without directory mtimes.
    pub fn without_dir_mtimes(mut self) -> Self {
        self.dir_mtime = false;
        self
    }

    /// With access times.
    pub fn with_atime(mut self) -> Self {
        self.atime = true;
        self
    }

    /// With a time tolerance.
    pub fn with_time_tolerance_ns(mut self, ns: u64) -> Self {
        self.time_tolerance_ns = ns;
        self
    }

    /// With a sparseness check.
    pub fn with_sparse(mut self, check: SparseCheck) -> Self {
        self.sparse = check;
        self
    }

    /// Without xattr and ACL checks.
    pub fn without_xattrs(mut self) -> Self {
        self.xattrs = false;
        self.acls = false;
        self
    }

    /// Leaves `rel` (and everything below it) out of the comparison.
    pub fn skipping(mut self, rel: impl Into<PathBuf>) -> Self {
        self.skip.push(rel.into());
        self
    }

    /// Without the hard-link check.
    pub fn without_hard_links(mut self) -> Self {
        self.hard_links = false;
        self
    }
}

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

impl Kind {
    /// The kind of `m` (from `lstat`).
    pub fn of(m: &Metadata) -> Kind {
        let t = m.file_type();
        if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_char_device() {
            Kind::CharDevice
        } else if t.is_block_device() {
            Kind::BlockDevice
        } else {
            Kind::File
        }
    }
}

/// Which tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first tree given.
    A,
    /// The second tree given.
    B,
}

/// One difference between the trees; `path` is relative to the roots (`.` for the roots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// Present in one tree only.
    Missing { path: PathBuf, only_in: Side },
    /// Different file types.
    Type { path: PathBuf, a: Kind, b: Kind },
    /// Different sizes.
    Size { path: PathBuf, a: u64, b: u64 },
    /// Different bytes; `offset` is the first difference.
    Content { path: PathBuf, offset: u64 },
    /// Different mode bits (`0o7777` part).
    Mode { path: PathBuf, a: u32, b: u32 },
    /// Different owner or group.
    Owner {
        path: PathBuf,
        a: (u32, u32),
        b: (u32, u32),
    },
    /// Different modification times.
    Mtime {
        path: PathBuf,
        a: FileTime,
        b: FileTime,
    },
    /// Different access times.
    Atime {
        path: PathBuf,
        a: FileTime,
        b: FileTime,
    },
    /// An xattr differs or is missing on one side.
    Xattr {
        path: PathBuf,
        name: String,
        a: Option<Vec<u8>>,
        b: Option<Vec<u8>>,
    },
    /// An ACL differs (as text; `None` when the file has no extended ACL).
    Acl {
        path: PathBuf,
        kind: AclKind,
        a: Option<String>,
        b: Option<String>,
    },
    /// Paths that share an inode in one tree do not in the other.
    HardLinks {
        path: PathBuf,
        a: Vec<PathBuf>,
        b: Vec<PathBuf>,
    },
    /// Different allocated blocks.
    Blocks { path: PathBuf, a: u64, b: u64 },
    /// Different data/hole maps.
    Holes {
        path: PathBuf,
        a: Vec<(u64, u64)>,
        b: Vec<(u64, u64)>,
    },
    /// Different symlink targets.
    SymlinkTarget {
        path: PathBuf,
        a: PathBuf,
        b: PathBuf,
    },
    /// Different device numbers.
    Device {
        path: PathBuf,
        a: (u32, u32),
        b: (u32, u32),
    },
    /// Something could not be read.
    Error { path: PathBuf, message: String },
}

impl Difference {
    /// The path the difference is about.
    pub fn path(&self) -> &Path {
        match self {
            Difference::Missing { path, .. }
            | Difference::Type { path, .. }
            | Difference::Size { path, .. }
            | Difference::Content { path, .. }
            | Difference::Mode { path, .. }
            | Difference::Owner { path, .. }
            | Difference::Mtime { path, .. }
            | Difference::Atime { path, .. }
            | Difference::Xattr { path, .. }
            | Difference::Acl { path, .. }
            | Difference::HardLinks { path, .. }
            | Difference::Blocks { path, .. }
            | Difference::Holes { path, .. }
            | Difference::SymlinkTarget { path, .. }
            | Difference::Device { path, .. }
            | Difference::Error { path, .. } => path,
        }
    }

    /// A short name for the kind of difference (`"mode"`, `"mtime"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::Missing { .. } => "missing",
            Difference::Type { .. } => "type",
            Difference::Size { .. } => "size",
            Difference::Content { .. } => "content",
            Difference::Mode { .. } => "mode",
            Difference::Owner { .. } => "owner",
            Difference::Mtime { .. } => "mtime",
            Difference::Atime { .. } => "atime",
            Difference::Xattr { .. } => "xattr",
            Difference::Acl { .. } => "acl",
            Difference::HardLinks { .. } => "hardlinks",
            Difference::Blocks { .. } => "blocks",
            Difference::Holes { .. } => "holes",
            Difference::SymlinkTarget { .. } => "symlink",
            Difference::Device { .. } => "device",
            Difference::Error { .. } => "error",
        }
    }
}

fn show_bytes(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "<absent>".into(),
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path().display();
        match self {
            Difference::Missing { only_in, .. } => write!(f, "{p}: only in {only_in:?}"),
            Difference::Type { a, b, .. } => write!(f, "{p}: type {a:?} != {b:?}"),
            Difference::Size { a, b, .. } => write!(f, "{p}: size {a} != {b}"),
            Difference::Content { offset, .. } => {
                write!(f, "{p}: content differs at byte {offset}")
            }
            Difference::Mode { a, b, .. } => write!(f, "{p}: mode {a:04o} != {b:04o}"),
            Difference::Owner { a, b, .. } => {
                write!(f, "{p}: owner {}:{} != {}:{}", a.0, a.1, b.0, b.1)
            }
            Difference::Mtime { a, b, .. } => write!(f, "{p}: mtime {a} != {b}"),
            Difference::Atime { a, b, .. } => write!(f, "{p}: atime {a} != {b}"),
            Difference::Xattr { name, a, b, .. } => {
                write!(
                    f,
                    "{p}: xattr {name} {} != {}",
                    show_bytes(a),
                    show_bytes(b)
                )
            }
            Difference::Acl { kind, a, b, .. } => write!(f, "{p}: {kind:?} ACL {a:?} != {b:?}"),
            Difference::HardLinks { a, b, .. } => write!(f, "{p}: hard-link group {a:?} != {b:?}"),
            Difference::Blocks { a, b, .. } => write!(f, "{p}: allocated blocks {a} != {b}"),
            Difference::Holes { a, b, .. } => write!(f, "{p}: data segments {a:?} != {b:?}"),
            Difference::SymlinkTarget { a, b, .. } => {
                write!(f, "{p}: symlink target {} != {}", a.display(), b.display())
            }
            Difference::Device { a, b, .. } => {
                write!(f, "{p}: device {}:{} != {}:{}", a.0, a.1, b.0, b.1)
            }
            Difference::Error { message, .. } => write!(f, "{p}: {message}"),
        }
    }
}

/// Asserts that every tree in `results` equals the first one (the reference run, e.g. what
/// rsync wrote), naming the run that differs: `results` pairs a run's label with its tree.
pub fn assert_trees_match_first<L: std::fmt::Display, P: AsRef<Path>>(
    results: &[(L, P)],
    opts: &CompareOpts,
) {
    let Some(((_, reference), rest)) = results.split_first() else {
        return;
    };
    for (what, dst) in rest {
        let diffs = compare_trees(reference.as_ref(), dst.as_ref(), opts);
        assert!(diffs.is_empty(), "{what}: differs from rsync's: {diffs:#?}");
    }
}

/// Compares trees `a` and `b` and returns every difference the options ask for.
pub fn compare_trees(a: &Path, b: &Path, opts: &CompareOpts) -> Vec<Difference> {
    let mut cmp = Comparer {
        opts,
        diffs: Vec::new(),
        links: Vec::new(),
    };
    let root = PathBuf::from(".");
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(ma), Ok(mb)) => {
            if opts.root_metadata {
                cmp.compare_entry(&root, a, b, &ma, &mb, false);
            } else if Kind::of(&ma) == Kind::Dir && Kind::of(&mb) == Kind::Dir {
                cmp.compare_dirs(&root, a, b);
            } else {
                cmp.compare_entry(&root, a, b, &ma, &mb, false);
            }
        }
        (ra, rb) => {
            for (side, r, p) in [(Side::A, ra, a), (Side::B, rb, b)] {
                if let Err(e) = r {
                    cmp.diffs.push(Difference::Error {
                        path: root.clone(),
                        message: format!("cannot stat root {:?} {}: {e}", side, p.display()),
                    });
                }
            }
        }
    }
    if opts.hard_links {
        cmp.check_links();
    }
    cmp.diffs
}

/// Panics with a readable list when [`compare_trees`] finds any difference.
#[track_caller]
pub fn assert_trees_equal(a: &Path, b: &Path, opts: &CompareOpts) {
    let diffs = compare_trees(a, b, opts);
    if !diffs.is_empty() {
        let mut msg = format!(
            "trees differ: {} (A) vs {} (B), {} difference(s):\n",
            a.display(),
            b.display(),
            diffs.len()
        );
        for d in diffs.iter().take(200) {
            msg.push_str("  ");
            msg.push_str(&d.to_string());
            msg.push('\n');
        }
        if diffs.len() > 200 {
            msg.push_str(&format!("  ... and {} more\n", diffs.len() - 200));
        }
        panic!("{msg}");
    }
}

/// (device, inode).
type InodeKey = (u64, u64);

struct Comparer<'a> {
    opts: &'a CompareOpts,
    diffs: Vec<Difference>,
    /// (relative path, inode key in A, inode key in B) for multiply-linked files.
    links: Vec<(PathBuf, InodeKey, InodeKey)>,
}

fn time_of(sec: i64, nsec: i64) -> FileTime {
    FileTime::new(sec, nsec as u32)
}

/// `rel/name`, where the roots are `.`.
fn child_path(rel: &Path, name: &OsString) -> PathBuf {
    if rel == Path::new(".") {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort();
    Ok(names)
}

impl Comparer<'_> {
    fn err(&mut self, rel: &Path, what: &str, e: io::Error) {
        self.diffs.push(Difference::Error {
            path: rel.to_path_buf(),
            message: format!("{what}: {e}"),
        });
    }

    fn compare_dirs(&mut self, rel: &Path, a: &Path, b: &Path) {
        let names_a = match sorted_names(a) {
            Ok(n) => n,
            Err(e) => return self.err(rel, "reading directory in A", e),
        };
        let names_b = match sorted_names(b) {
            Ok(n) => n,
            Err(e) => return self.err(rel, "reading directory in B", e),
        };
        let (mut names_a, mut names_b) = (names_a, names_b);
        if !self.opts.skip.is_empty() {
            let keep = |n: &OsString| !self.opts.skip.iter().any(|s| *s == child_path(rel, n));
            names_a.retain(keep);
            names_b.retain(keep);
        }
        let (mut i, mut j) = (0, 0);
        while i < names_a.len() || j < names_b.len() {
            let order = match (names_a.get(i), names_b.get(j)) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let child_rel = |n: &OsString| child_path(rel, n);
            match order {
                std::cmp::Ordering::Less => {
                    self.diffs.push(Difference::Missing {
                        path: child_rel(&names_a[i]),
                        only_in: Side::A,
                    });
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.diffs.push(Difference::Missing {
                        path: child_rel(&names_b[j]),
                        only_in: Side::B,
                    });
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let name = &names_a[i];
                    let crel = child_rel(name);
                    let pa = a.join(name);
                    let pb = b.join(name);
                    match (fs::symlink_metadata(&pa), fs::symlink_metadata(&pb)) {
                        (Ok(ma), Ok(mb)) => self.compare_entry(&crel, &pa, &pb, &ma, &mb, true),
                        (Err(e), _) => self.err(&crel, "stat in A", e),
                        (_, Err(e)) => self.err(&crel, "stat in B", e),
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    fn compare_entry(
        &mut self,
        rel: &Path,
        a: &Path,
        b: &Path,
        ma: &Metadata,
        mb: &Metadata,
        track_links: bool,
    ) {
        let (ka, kb) = (Kind::of(ma), Kind::of(mb));
        if ka != kb {
            self.diffs.push(Difference::Type {
                path: rel.to_path_buf(),
                a: ka,
                b: kb,
            });
            return;
        }
        let opts = self.opts;
        let path = rel.to_path_buf();
        if opts.mode && ka != Kind::Symlink && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            self.diffs.push(Difference::Mode {
                path: path.clone(),
                a: ma.mode() & 0o7777,
                b: mb.mode() & 0o7777,
            });
        }
        if opts.owner && (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            self.diffs.push(Difference::Owner {
                path: path.clone(),
                a: (ma.uid(), ma.gid()),
                b: (mb.uid(), mb.gid()),
            });
        }
        let check_mtime = opts.mtime
            && match ka {
                Kind::Dir => opts.dir_mtime,
                Kind::Symlink => opts.symlink_mtime,
                _ => true,
            };
        let tol = i128::from(opts.time_tolerance_ns);
        if check_mtime {
            let (ta, tb) = (
                time_of(ma.mtime(), ma.mtime_nsec()),
                time_of(mb.mtime(), mb.mtime_nsec()),
            );
            if (ta.as_nanos() - tb.as_nanos()).abs() > tol {
                self.diffs.push(Difference::Mtime {
                    path: path.clone(),
                    a: ta,
                    b: tb,
                });
            }
        }
        if opts.atime && ka != Kind::Dir && ka != Kind::Symlink {
            let (ta, tb) = (
                time_of(ma.atime(), ma.atime_nsec()),
                time_of(mb.atime(), mb.atime_nsec()),
            );
            if (ta.as_nanos() - tb.as_nanos()).abs() > tol {
                self.diffs.push(Difference::Atime {
                    path: path.clone(),
                    a: ta,
                    b: tb,
                });
            }
        }
        if opts.xattrs {
            self.compare_xattrs(rel, a, b);
        }
        if opts.acls && ka != Kind::Symlink {
            for kind in [AclKind::Access, AclKind::Default] {
                let ra = meta::read_acl(a, kind);
                let rb = meta::read_acl(b, kind);
                match (ra, rb) {
                    (Ok(x), Ok(y)) if x != y => self.diffs.push(Difference::Acl {
                        path: path.clone(),
                        kind,
                        a: x,
                        b: y,
                    }),
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => self.err(rel, "reading ACL", e),
                }
            }
        }
        if track_links && ka != Kind::Dir && (ma.nlink() > 1 || mb.nlink() > 1) {
            self.links
                .push((path.clone(), (ma.dev(), ma.ino()), (mb.dev(), mb.ino())));
        }
        match ka {
            Kind::File => self.compare_file(rel, a, b, ma, mb),
            Kind::Symlink if opts.symlink_targets => match (fs::read_link(a), fs::read_link(b)) {
                (Ok(x), Ok(y)) if x != y => {
                    self.diffs
                        .push(Difference::SymlinkTarget { path, a: x, b: y })
                }
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => self.err(rel, "reading symlink", e),
            },
            Kind::CharDevice | Kind::BlockDevice if opts.devices && ma.rdev() != mb.rdev() => {
                let split = |d: u64| (rustix::fs::major(d), rustix::fs::minor(d));
                self.diffs.push(Difference::Device {
                    path,
                    a: split(ma.rdev()),
                    b: split(mb.rdev()),
                });
            }
            Kind::Dir => self.compare_dirs(rel, a, b),
            _ => {}
        }
    }

    fn compare_xattrs(&mut self, rel: &Path, a: &Path, b: &Path) {
        let (la, lb) = match (meta::list_xattrs(a), meta::list_xattrs(b)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => return self.err(rel, "listing xattrs", e),
        };
        let mut names: Vec<Vec<u8>> = la.into_iter().chain(lb).collect();
        names.sort();
        names.dedup();
        for name in names {
            if name == ACL_ACCESS_XATTR.as_bytes() || name == ACL_DEFAULT_XATTR.as_bytes() {
                continue;
            }
            match (meta::get_xattr(a, &name), meta::get_xattr(b, &name)) {
                (Ok(x), Ok(y)) if x != y => self.diffs.push(Difference::Xattr {
                    path: rel.to_path_buf(),
                    name: String::from_utf8_lossy(&name).into_owned(),
                    a: x,
                    b: y,
                }),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => self.err(rel, "reading xattr", e),
            }
        }
    }

    fn compare_file(&mut self, rel: &Path, a: &Path, b: &Path, ma: &Metadata, mb: &Metadata) {
        let path = rel.to_path_buf();
        let opts = self.opts;
        if opts.content {
            if ma.len() != mb.len() {
                self.diffs.push(Difference::Size {
                    path: path.clone(),
                    a: ma.len(),
                    b: mb.len(),
                });
            } else {
                match first_difference(a, b) {
                    Ok(Some(offset)) => self.diffs.push(Difference::Content {
                        path: path.clone(),
                        offset,
                    }),
                    Ok(None) => {}
                    Err(e) => self.err(rel, "reading content", e),
                }
            }
        }
        // Allocation of files of different sizes differs anyway: the size difference says it.
        let sparse = if ma.len() == mb.len() {
            opts.sparse
        } else {
            SparseCheck::Off
        };
        match sparse {
            SparseCheck::Off => {}
            SparseCheck::AllocatedBlocks => {
                if ma.blocks() != mb.blocks() {
                    self.diffs.push(Difference::Blocks {
                        path,
                        a: ma.blocks(),
                        b: mb.blocks(),
                    });
                }
            }
            SparseCheck::HoleMap => match (meta::data_segments(a), meta::data_segments(b)) {
                (Ok(x), Ok(y)) if x != y => self.diffs.push(Difference::Holes { path, a: x, b: y }),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => self.err(rel, "mapping holes", e),
            },
        }
    }

    /// Reports each path whose set of same-inode companions differs between the trees.
    fn check_links(&mut self) {
        let mut group_a: BTreeMap<InodeKey, Vec<PathBuf>> = BTreeMap::new();
        let mut group_b: BTreeMap<InodeKey, Vec<PathBuf>> = BTreeMap::new();
        for (p, ka, kb) in &self.links {
            group_a.entry(*ka).or_default().push(p.clone());
            group_b.entry(*kb).or_default().push(p.clone());
        }
        let mut reported: std::collections::BTreeSet<Vec<PathBuf>> = Default::default();
        for (p, ka, kb) in &self.links {
            let ga = &group_a[ka];
            let gb = &group_b[kb];
            if ga != gb && reported.insert(ga.clone()) {
                self.diffs.push(Difference::HardLinks {
                    path: p.clone(),
                    a: ga.clone(),
                    b: gb.clone(),
                });
            }
        }
    }
}

/// The first offset at which two equally long files differ, if any.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = meta::open_noatime(a)?;
    let mut fb = meta::open_noatime(b)?;
    let mut ba = vec![0u8; 256 * 1024];
    let mut bb = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
