//! Building a file list from a local source directory (the sending side).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use arsync_proto::flist::{compare_entries, FileEntry, FileType, FlistOptions, HardLink};
use arsync_proto::stats::{IOERR_GENERAL, IOERR_VANISHED};

use arsync_proto::checksum::{ChecksumAlgo, FileHasher};

use arsync_filter::FilterRules;

use std::sync::Arc;

use crate::attrs::{self, Target};
use crate::error::{RemoteError, Result};
use crate::fsys::{open_source, read_chunk};
use crate::opts::TransferOpts;
use crate::session::am_root;

/// A sorted file list with the local path of each entry.
#[derive(Debug, Clone, Default)]
pub struct LocalList {
    /// Entries in file-list order (their index is the wire ndx).
    pub entries: Vec<FileEntry>,
    /// The source directory the names are relative to.
    pub root: PathBuf,
    /// io_error flags collected while walking.
    pub io_error: i32,
    /// Problems met while walking (unreadable dirs, vanished entries).
    pub warnings: Vec<String>,
    /// With several sources: the directory each entry's name is relative
    /// to, as an index into `roots` (empty: every entry uses `root`).
    pub entry_roots: Vec<u32>,
    /// The source directories of a list built from several sources.
    pub roots: Vec<PathBuf>,
    /// Symlinks were followed (`-L`, `--copy-unsafe-links`): a listed
    /// file may be reached through one.
    pub follow_links: bool,
}

impl LocalList {
    /// The local path of entry `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        let name = &self.entries[i].name;
        let root = match self.entry_roots.get(i) {
            Some(&r) => &self.roots[r as usize],
            None => &self.root,
        };
        if name == b"." {
            root.clone()
        } else {
            root.join(OsStr::from_bytes(name))
        }
    }
}

/// A daemon module's `exclude`/`include`/`filter` rules, matched against
/// paths relative to the module's root (as rsync's daemon does).
#[derive(Debug, Clone)]
pub struct DaemonFilter {
    /// The module's rules (transfer root set to `/`).
    pub rules: Arc<FilterRules>,
    /// The module's directory (`/` when chrooted into it).
    pub module_root: PathBuf,
}

impl DaemonFilter {
    /// True when the local `path` is hidden by the module's rules.
    pub fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        let Ok(rel) = path.strip_prefix(&self.module_root) else {
            return false;
        };
        let rel = rel.as_os_str().as_encoded_bytes();
        !rel.is_empty() && rel != b"." && self.rules.excluded_for_transfer(rel, is_dir)
    }
}

/// One source argument of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The path as given.
    pub path: PathBuf,
    /// A directory's contents (`SRC/`) rather than the directory itself.
    pub contents: bool,
}

impl SourceSpec {
    /// From a source argument as typed (a trailing `/` means contents).
    pub fn parse(arg: impl AsRef<OsStr>) -> SourceSpec {
        let arg = arg.as_ref();
        let b = arg.as_bytes();
        SourceSpec {
            path: PathBuf::from(arg),
            contents: b.ends_with(b"/") || b == b"." || b.ends_with(b"/."),
        }
    }
}

/// The file list for several sources (rsync's `SRC1 SRC2/ ... DEST`), or
/// with `relative` (`-R`) the sources' paths kept in the names: the part
/// after a `/./` marker (or the whole path without its leading `/`), with
/// its parent directories sent as implied (no-content) directories.
/// Entries with the same name are all sent; the receiver keeps the first.
pub fn build_list_multi(
    sources: &[SourceSpec],
    relative: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Option<&FilterRules>,
) -> Result<LocalList> {
    build_list_scoped(sources, relative, fopts, checksum_algo, filter, None)
}

/// [`build_list_multi`] leaving out what a daemon module's rules hide.
pub fn build_list_scoped(
    sources: &[SourceSpec],
    relative: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Option<&FilterRules>,
    daemon: Option<&DaemonFilter>,
) -> Result<LocalList> {
    build_list_with(
        sources,
        relative,
        fopts,
        checksum_algo,
        filter,
        daemon,
        &TransferOpts::default(),
    )
}

/// [`build_list_scoped`] with the sender's options: which symlinks are
/// followed (`-L`, `--copy-unsafe-links`, `-k`), `-x`, and `--chmod`
/// applied to the modes sent.
pub fn build_list_with(
    sources: &[SourceSpec],
    relative: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Option<&FilterRules>,
    daemon: Option<&DaemonFilter>,
    opts: &TransferOpts,
) -> Result<LocalList> {
    let f = Filters {
        client: filter,
        daemon,
        opts: Some(opts),
    };
    let mut list = build_sources(sources, relative, fopts, checksum_algo, f)?;
    list.follow_links = opts.copy_links || opts.copy_unsafe_links;
    if !opts.chmod.is_empty() {
        for e in list.entries.iter_mut() {
            if e.file_type() != Some(FileType::Symlink) && e.mode != 0 {
                e.mode = (e.mode & !0o7777) | opts.chmod_perms(e.mode & 0o7777, e.is_dir());
            }
        }
    }
    Ok(list)
}

fn build_sources(
    sources: &[SourceSpec],
    relative: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    f: Filters<'_>,
) -> Result<LocalList> {
    if sources.len() == 1 && !relative {
        let s = &sources[0];
        return build_one(&s.path, s.contents, fopts, checksum_algo, f);
    }
    let mut out = LocalList::default();
    let mut keyed: Vec<(FileEntry, u32)> = Vec::new();
    for s in sources {
        let list = if relative {
            build_relative(&s.path, fopts, checksum_algo, f)?
        } else {
            build_one(&s.path, s.contents, fopts, checksum_algo, f)?
        };
        let r = out.roots.len() as u32;
        out.roots.push(list.root);
        out.io_error |= list.io_error;
        out.warnings.extend(list.warnings);
        // Hard-link groups are renumbered below; names stay.
        keyed.extend(list.entries.into_iter().map(|e| (e, r)));
    }
    keyed.sort_by(|a, b| compare_entries(&a.0, &b.0));
    // Leaders are re-resolved by inode after the merge.
    let mut leaders: HashMap<(u64, u64), i32> = HashMap::new();
    for (i, (e, r)) in keyed.iter_mut().enumerate() {
        if e.hardlink == HardLink::None {
            continue;
        }
        let path = out.roots[*r as usize].join(OsStr::from_bytes(&e.name));
        let Ok(m) = fs::symlink_metadata(&path) else {
            e.hardlink = HardLink::None;
            continue;
        };
        match leaders.get(&(m.dev(), m.ino())) {
            Some(&l) => e.hardlink = HardLink::Follower(l),
            None => {
                leaders.insert((m.dev(), m.ino()), i as i32);
                e.hardlink = HardLink::Leader;
            }
        }
    }
    // A leader left alone (its partners were duplicates) is plain.
    let followed: std::collections::HashSet<i32> = keyed
        .iter()
        .filter_map(|(e, _)| match e.hardlink {
            HardLink::Follower(l) => Some(l),
            _ => None,
        })
        .collect();
    for (i, (e, _)) in keyed.iter_mut().enumerate() {
        if e.hardlink == HardLink::Leader && !followed.contains(&(i as i32)) {
            e.hardlink = HardLink::None;
        }
    }
    out.root = out.roots.first().cloned().unwrap_or_default();
    let (entries, roots): (Vec<FileEntry>, Vec<u32>) = keyed.into_iter().unzip();
    out.entries = entries;
    out.entry_roots = roots;
    Ok(out)
}

/// One `-R` source: names relative to the directory before `/./` (or `/`
/// for an absolute path, the current directory otherwise).
fn build_relative(
    source: &Path,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Filters<'_>,
) -> Result<LocalList> {
    let text = source.as_os_str().as_bytes();
    let path_of = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
    let (base, rel) = match text.windows(3).position(|w| w == b"/./") {
        Some(i) => (path_of(&text[..i.max(1)]), &text[i + 3..]),
        None if text.starts_with(b"/") => (PathBuf::from("/"), &text[1..]),
        None => (PathBuf::from("."), text),
    };
    let base = if text.starts_with(b"/./") {
        PathBuf::from("/")
    } else {
        base
    };
    // Clean components: no empty, `.` or `..` parts.
    let comps: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.contains(&&b".."[..]) {
        return Err(RemoteError::Usage(format!(
            "source {}: \"..\" is not allowed with --relative",
            source.display()
        )));
    }
    if comps.is_empty() {
        let mut l = walk(&base, fopts, checksum_algo, filter, b"")?;
        l.root = base;
        return Ok(l);
    }
    let mut list = LocalList {
        root: base.clone(),
        ..LocalList::default()
    };
    // Implied parent directories.
    for k in 1..comps.len() {
        let name = comps[..k].join(&b'/');
        let p = base.join(OsStr::from_bytes(&name));
        let m = fs::symlink_metadata(&p)
            .map_err(|e| RemoteError::io(format!("source {}", p.display()), e))?;
        if let Some(mut e) = entry_for(name, &p, &m, fopts, checksum_algo)? {
            e.no_content_dir = e.is_dir();
            list.entries.push(e);
        }
    }
    let name = comps.join(&b'/');
    let p = base.join(OsStr::from_bytes(&name));
    let m = fs::symlink_metadata(&p)
        .map_err(|e| RemoteError::io(format!("source {}", p.display()), e))?;
    if filter.daemon.is_some_and(|d| d.excluded(&p, m.is_dir())) {
        list.warnings
            .push(format!("skipping daemon-excluded file {}", p.display()));
        return Ok(list);
    }
    if m.is_dir() && filter.recurse() {
        let sub = walk(&p, fopts, checksum_algo, filter, &name)?;
        list.io_error |= sub.io_error;
        list.warnings.extend(sub.warnings);
        for mut e in sub.entries {
            let mut n = name.clone();
            if e.name != b"." {
                n.push(b'/');
                n.extend_from_slice(&e.name);
            }
            e.name = n;
            e.hardlink = match e.hardlink {
                HardLink::None => HardLink::None,
                // Renumbered by build_list_multi.
                _ => HardLink::Leader,
            };
            list.entries.push(e);
        }
    } else if let Some(mut e) = entry_for(name, &p, &m, fopts, checksum_algo)? {
        // -d without -r (as --files-from implies): the directory only.
        e.no_content_dir = e.is_dir();
        list.entries.push(e);
    }
    Ok(list)
}

fn entry_for(
    name: Vec<u8>,
    path: &Path,
    m: &fs::Metadata,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
) -> Result<Option<FileEntry>> {
    let ft = m.file_type();
    let mut e = FileEntry {
        name,
        mode: m.mode(),
        mtime: m.mtime(),
        mtime_nsec: if fopts.protocol >= 31 {
            m.mtime_nsec() as u32
        } else {
            0
        },
        atime: if fopts.atimes && !m.is_dir() {
            m.atime()
        } else {
            0
        },
        uid: m.uid(),
        gid: m.gid(),
        ..FileEntry::default()
    };
    if ft.is_file() {
        e.size = m.len() as i64;
        if fopts.checksum_len.is_some() {
            e.checksum = Some(file_checksum(path, checksum_algo)?);
        }
    } else if ft.is_symlink() {
        if !fopts.preserve_links {
            // rsync lists it without its target (a receiver skips it).
            e.size = m.len() as i64;
            return Ok(Some(e));
        }
        let t = fs::read_link(path)
            .map_err(|err| RemoteError::io(format!("readlink {}", path.display()), err))?;
        let t = t.into_os_string().into_encoded_bytes();
        e.size = t.len() as i64;
        e.link_target = Some(t);
    } else if ft.is_dir() {
        // Sent as rsync sends it (listings show it).
        e.size = m.len() as i64;
    } else {
        // Devices, FIFOs, sockets.
        if !fopts.preserve_devices {
            return Ok(None);
        }
        let rdev = m.rdev();
        e.rdev = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    }
    let who = path.display().to_string();
    if fopts.preserve_acls && !ft.is_symlink() {
        let (acc, def) = attrs::read_acls(Target::Path(path), e.mode, ft.is_dir(), &who)?;
        e.acl = (!acc.is_empty()).then(|| Arc::new(acc));
        e.def_acl = (!def.is_empty()).then(|| Arc::new(def));
    }
    if fopts.preserve_xattrs {
        let set = attrs::xattr_set(Target::Path(path), am_root(), &who)?;
        e.xattrs = (!set.items.is_empty()).then(|| Arc::new(set));
    }
    Ok(Some(e))
}

/// Opens a listed regular file: a symlink at `path` was followed on
/// purpose (`-L`, `--copy-unsafe-links`) when `follow`.
pub(crate) fn open_listed(path: &Path, follow: bool) -> Result<std::fs::File> {
    match follow {
        true => std::fs::File::open(path)
            .map_err(|e| RemoteError::io(format!("opening {}", path.display()), e)),
        false => open_source(path),
    }
}

/// Opens listed files for sending relative to their directory, which
/// stays open while consecutive files share it (a file list lists a
/// directory's files together): a lookup of one name instead of the whole
/// path per file. The directory is opened by its path as [`open_listed`]
/// would walk it (following symlinks in it), the file itself as
/// [`open_listed`] does.
#[derive(Debug, Default)]
pub(crate) struct SourceOpener {
    dir: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
    /// `--open-noatime`: files are opened with `O_NOATIME` (where the
    /// kernel allows it: files of other users need privileges).
    pub(crate) noatime: bool,
}

impl SourceOpener {
    /// Opens `path` (a listed regular file) for reading; `follow`: a
    /// final symlink is followed (see [`open_listed`]).
    pub(crate) fn open(&mut self, path: &Path, follow: bool) -> Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags};
        let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
            return open_listed(path, follow);
        };
        if self.fd.is_none() || self.dir != dir {
            self.fd = None;
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let Ok(fd) = rustix::fs::open(dir, flags, Mode::empty()) else {
                return open_listed(path, follow);
            };
            self.dir.clear();
            self.dir.push(dir);
            self.fd = Some(fd);
        }
        let Some(fd) = &self.fd else {
            return open_listed(path, follow);
        };
        let flags = match follow {
            true => OFlags::RDONLY | OFlags::CLOEXEC,
            false => OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        };
        let opened = match self.noatime {
            true => match rustix::fs::openat(fd, base, flags | OFlags::NOATIME, Mode::empty()) {
                Err(rustix::io::Errno::PERM) => rustix::fs::openat(fd, base, flags, Mode::empty()),
                other => other,
            },
            false => rustix::fs::openat(fd, base, flags, Mode::empty()),
        };
        opened
            .map(std::fs::File::from)
            .map_err(|e| RemoteError::io(format!("opening {}", path.display()), e.into()))
    }
}

/// The unseeded whole-file checksum sent with `-c` (the metadata said
/// regular file, so a symlink here was followed on purpose).
pub(crate) fn file_checksum(path: &Path, algo: ChecksumAlgo) -> Result<Vec<u8>> {
    let follow = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let mut f = open_listed(path, follow)?;
    let mut h = FileHasher::new(algo);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = read_chunk(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish().as_bytes().to_vec())
}

/// The file list for a source argument, as rsync reads one: a directory's
/// contents when `contents` (rsync's `SRC/`), otherwise the directory itself
/// under its own name (`SRC`); a non-directory is sent as itself.
pub fn build_list_for(
    source: &Path,
    contents: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
) -> Result<LocalList> {
    build_list_filtered(source, contents, fopts, checksum_algo, None)
}

/// [`build_list_for`] leaving out what `filter` excludes on the sending
/// side (names are matched relative to the transfer root, as rsync does;
/// an excluded directory is not descended into).
pub fn build_list_filtered(
    source: &Path,
    contents: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Option<&FilterRules>,
) -> Result<LocalList> {
    let f = Filters {
        client: filter,
        daemon: None,
        opts: None,
    };
    build_one(source, contents, fopts, checksum_algo, f)
}

/// The client's rules (relative to the transfer root) and a daemon
/// module's (relative to the module root).
#[derive(Clone, Copy, Default)]
struct Filters<'a> {
    client: Option<&'a FilterRules>,
    daemon: Option<&'a DaemonFilter>,
    /// The sender's options (which symlinks to follow, `-x`).
    opts: Option<&'a TransferOpts>,
}

impl Filters<'_> {
    /// The metadata the sender lists for `path` (named `name` in the
    /// list): the symlink itself, or with `-L`, `--copy-unsafe-links`
    /// (for a link leaving the transfer) or `-k` (for a link to a
    /// directory) what it points to. A followed link without a referent
    /// is reported as such. With `de` (the entry as read from its
    /// directory) the entry itself is looked up relative to that directory
    /// (one name, not the whole path).
    fn stat(
        &self,
        path: &Path,
        name: &[u8],
        de: Option<&fs::DirEntry>,
    ) -> std::io::Result<fs::Metadata> {
        let own = || match de {
            Some(de) => de.metadata(),
            None => fs::symlink_metadata(path),
        };
        let Some(o) = self.opts else {
            return own();
        };
        let m = own()?;
        if !m.file_type().is_symlink() {
            return Ok(m);
        }
        let follow = o.copy_links
            || (o.copy_unsafe_links
                && fs::read_link(path).is_ok_and(|t| {
                    crate::opts::unsafe_symlink(t.as_os_str().as_encoded_bytes(), name)
                }));
        if follow {
            return fs::metadata(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::io::Error::other(format!("symlink has no referent: {}", path.display()))
                } else {
                    e
                }
            });
        }
        if o.copy_dirlinks {
            if let Ok(t) = fs::metadata(path) {
                if t.is_dir() {
                    return Ok(t);
                }
            }
        }
        Ok(m)
    }

    /// False with `-d` without `-r`: directories below a source are listed
    /// without their contents.
    fn recurse(&self) -> bool {
        !self.opts.is_some_and(|o| o.dirs_only)
    }

    /// `-x`: how to treat a directory on device `dev` below a root on `root_dev`.
    fn mount_point(&self, dev: u64, root_dev: u64) -> u8 {
        match self.opts {
            Some(o) if dev != root_dev => o.one_file_system,
            _ => 0,
        }
    }
}

fn build_one(
    source: &Path,
    contents: bool,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Filters<'_>,
) -> Result<LocalList> {
    let m = filter
        .stat(source, source.as_os_str().as_bytes(), None)
        .map_err(|e| RemoteError::io(format!("source {}", source.display()), e))?;
    if filter
        .daemon
        .is_some_and(|d| d.excluded(source, m.is_dir()))
    {
        return Ok(LocalList {
            root: source.to_path_buf(),
            warnings: vec![format!(
                "skipping daemon-excluded file {}",
                source.display()
            )],
            ..LocalList::default()
        });
    }
    if m.is_dir() && contents {
        return walk(source, fopts, checksum_algo, filter, b"");
    }
    let dir_entry_only = m.is_dir() && !filter.recurse();
    let base = source
        .file_name()
        .map(|b| b.as_bytes().to_vec())
        .ok_or_else(|| {
            RemoteError::Usage(format!("source {} has no usable name", source.display()))
        })?;
    let parent = match source.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if m.is_dir() && !dir_entry_only {
        let mut list = walk(source, fopts, checksum_algo, filter, &base)?;
        for e in &mut list.entries {
            let mut n = base.clone();
            if e.name != b"." {
                n.push(b'/');
                n.extend_from_slice(&e.name);
            }
            e.name = n;
        }
        list.root = parent;
        return Ok(list);
    }
    let mut e = entry_for(base, source, &m, fopts, checksum_algo)?.ok_or_else(|| {
        RemoteError::Usage(format!(
            "source {}: this file type is not sent with these options",
            source.display()
        ))
    })?;
    e.no_content_dir = dir_entry_only;
    Ok(LocalList {
        entries: vec![e],
        root: parent,
        ..LocalList::default()
    })
}

/// `prefix/name` (just `name` when `prefix` is empty); names are bytes.
fn join_name(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        v.extend_from_slice(prefix);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Walks `root` (the contents of the directory, as `SRC/` in rsync) into a
/// sorted file list. Unreadable entries set io_error and are skipped.
pub fn build_list(
    root: &Path,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
) -> Result<LocalList> {
    walk(root, fopts, checksum_algo, Filters::default(), b"")
}

/// The walk behind [`build_list`]; `filter_prefix` is prepended (with `/`)
/// to names for filter matching when the directory is sent under its name.
fn walk(
    root: &Path,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filters: Filters<'_>,
    filter_prefix: &[u8],
) -> Result<LocalList> {
    let m =
        fs::metadata(root).map_err(|e| RemoteError::io(format!("source {}", root.display()), e))?;
    if !m.is_dir() {
        return Err(RemoteError::Usage(format!(
            "source {} is not a directory",
            root.display()
        )));
    }
    let root_dev = m.dev();
    let mut list = LocalList {
        root: root.to_path_buf(),
        ..LocalList::default()
    };
    let mut top = entry_for(b".".to_vec(), root, &m, fopts, checksum_algo)?
        .ok_or_else(|| RemoteError::Usage("source root".into()))?;
    top.top_dir = true;
    list.entries.push(top);
    // (dev, ino) of hard-linked non-directories, parallel to `entries`.
    let mut inodes: Vec<Option<(u64, u64)>> = vec![None];
    // The client's rules for each directory to list: with per-directory
    // merge files, a state per directory (its files read on entering it).
    let per_dir = filters.client.filter(|f| f.has_dir_merge());
    let root_rules = match per_dir {
        Some(f) => Some(crate::dirrules::entered(f, root, filter_prefix)?),
        None => None,
    };
    let mut stack: Vec<(PathBuf, Vec<u8>, Option<FilterRules>)> =
        vec![(root.to_path_buf(), Vec::new(), root_rules)];
    while let Some((dir, prefix, rules)) = stack.pop() {
        let mut out = DirScan::default();
        scan_dir(
            &dir,
            &prefix,
            filter_prefix,
            rules.as_ref(),
            ScanCtx {
                fopts,
                checksum_algo,
                filters,
                root_dev,
            },
            &mut out,
        )?;
        list.io_error |= out.io_error;
        list.warnings.append(&mut out.warnings);
        for (e, ino) in out.entries {
            inodes.push(ino);
            list.entries.push(e);
        }
        stack.extend(out.subdirs);
    }
    // Sort (with each entry's inode alongside), then mark hard-link groups:
    // the first of a group in list order leads, later ones follow it.
    let mut keyed: Vec<(FileEntry, Option<(u64, u64)>)> = std::mem::take(&mut list.entries)
        .into_iter()
        .zip(inodes)
        .collect();
    keyed.sort_by(|a, b| compare_entries(&a.0, &b.0));
    let mut leaders: HashMap<(u64, u64), i32> = HashMap::new();
    for (i, (e, ino)) in keyed.iter_mut().enumerate() {
        if let Some(key) = ino {
            match leaders.get(key) {
                Some(&l) => e.hardlink = HardLink::Follower(l),
                None => {
                    leaders.insert(*key, i as i32);
                    e.hardlink = HardLink::Leader;
                }
            }
        }
    }
    list.entries = keyed.into_iter().map(|(e, _)| e).collect();
    Ok(list)
}

/// What [`scan_dir`] needs besides the directory: the options and filters
/// of the walk, and the device of its root (`-x`).
#[derive(Clone, Copy)]
struct ScanCtx<'a> {
    fopts: &'a FlistOptions,
    checksum_algo: ChecksumAlgo,
    filters: Filters<'a>,
    root_dev: u64,
}

/// One directory's entries as read (unsorted), with the (dev, ino) of
/// hard-linked non-directories, and the subdirectories to descend into
/// (path, name, their per-directory rules).
#[derive(Default)]
struct DirScan {
    entries: Vec<(FileEntry, Option<(u64, u64)>)>,
    subdirs: Vec<(PathBuf, Vec<u8>, Option<FilterRules>)>,
    io_error: i32,
    warnings: Vec<String>,
}

/// Reads directory `dir` (its entries are named `prefix/NAME`, matched
/// against the rules as `filter_prefix/prefix/NAME`): the entries the
/// filters and options keep. Unreadable entries set io_error and are
/// skipped.
fn scan_dir(
    dir: &Path,
    prefix: &[u8],
    filter_prefix: &[u8],
    rules: Option<&FilterRules>,
    cx: ScanCtx<'_>,
    out: &mut DirScan,
) -> Result<()> {
    let ScanCtx {
        fopts,
        checksum_algo,
        filters,
        root_dev,
    } = cx;
    let filter = rules.or(filters.client);
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.io_error |= IOERR_GENERAL;
            out.warnings.push(format!("opendir {}: {e}", dir.display()));
            return Ok(());
        }
    };
    for de in rd {
        let de = match de {
            Ok(d) => d,
            Err(e) => {
                out.io_error |= IOERR_GENERAL;
                out.warnings.push(format!("readdir {}: {e}", dir.display()));
                continue;
            }
        };
        let fname = de.file_name();
        let rel = join_name(prefix, fname.as_bytes());
        let path = de.path();
        let listed = join_name(filter_prefix, &rel);
        let m = match filters.stat(&path, &listed, Some(&de)) {
            Ok(m)
                if filters
                    .daemon
                    .is_some_and(|d| d.excluded(&path, m.is_dir())) =>
            {
                continue
            }
            Ok(m) if filter.is_some_and(|f| f.excluded_for_transfer(&listed, m.is_dir())) => {
                continue
            }
            Ok(m) => m,
            Err(e) => {
                out.io_error |= if e.kind() == std::io::ErrorKind::NotFound {
                    IOERR_VANISHED
                } else {
                    IOERR_GENERAL
                };
                out.warnings.push(format!("stat {}: {e}", path.display()));
                continue;
            }
        };
        // -x: a directory on another file system is sent without its
        // contents (-xx: not at all).
        let mount = match m.is_dir() {
            true => filters.mount_point(m.dev(), root_dev),
            false => 0,
        };
        if mount >= 2 {
            continue;
        }
        if let Some(mut e) = entry_for(rel.clone(), &path, &m, fopts, checksum_algo)? {
            if m.is_dir() && mount == 0 && filters.recurse() {
                let sub = match rules {
                    Some(f) => Some(crate::dirrules::entered(f, &path, &listed)?),
                    None => None,
                };
                out.subdirs.push((path, rel, sub));
            } else if m.is_dir() {
                e.no_content_dir = true;
            }
            let linked = fopts.preserve_hard_links && !m.is_dir() && m.nlink() > 1;
            out.entries.push((e, linked.then(|| (m.dev(), m.ino()))));
        }
    }
    Ok(())
}

/// A directory whose list an [`IncWalk`] has yet to send.
struct PendingDir {
    /// Its index among the directories listed so far (rsync's `dir_flist`).
    dir_ndx: i32,
    /// Its entry as listed in its parent's list.
    entry: FileEntry,
    /// Where it is.
    path: PathBuf,
    /// Its per-directory rules (with merge files).
    rules: Option<FilterRules>,
}

/// One directory's list of an incremental recursion.
#[derive(Debug)]
pub(crate) struct DirList {
    /// The directory's index among the directories listed (the wire's
    /// `NDX_FLIST_OFFSET - dir_ndx`).
    pub dir_ndx: i32,
    /// The directory's own entry (the receiver may name it by the index
    /// before the list's first).
    pub dir: FileEntry,
    /// Its entries, sorted (names relative to the transfer root).
    pub entries: Vec<FileEntry>,
}

/// The sending side of an incremental recursion (rsync's
/// `send_file_list` with `inc_recurse`, then `send_extra_file_list`): the
/// top level first, then one directory at a time, depth first in list
/// order. Only the directories still to list are held (the pending
/// siblings along the current path), never the tree.
pub(crate) struct IncWalk<'a> {
    root: PathBuf,
    fopts: FlistOptions,
    checksum_algo: ChecksumAlgo,
    filters: Filters<'a>,
    root_dev: u64,
    /// Directories to list, the next on top.
    pending: Vec<PendingDir>,
    /// Directories listed so far (the next one's index).
    dirs: i32,
    /// The rules of the subdirectories of the directory just read.
    pending_rules: HashMap<Vec<u8>, FilterRules>,
    /// io_error flags collected while walking.
    pub io_error: i32,
    /// Problems met while walking, to report.
    pub warnings: Vec<String>,
}

impl<'a> IncWalk<'a> {
    /// Starts the walk of one source (`contents`: rsync's `SRC/`) and
    /// returns it with the first list: the source itself and, for a
    /// directory's contents, its top-level entries (sorted).
    pub(crate) fn start(
        source: &SourceSpec,
        fopts: &FlistOptions,
        checksum_algo: ChecksumAlgo,
        filter: Option<&'a FilterRules>,
        daemon: Option<&'a DaemonFilter>,
        opts: &'a TransferOpts,
    ) -> Result<(IncWalk<'a>, Vec<FileEntry>)> {
        let filters = Filters {
            client: filter,
            daemon,
            opts: Some(opts),
        };
        let src = &source.path;
        let m = filters
            .stat(src, src.as_os_str().as_bytes(), None)
            .map_err(|e| RemoteError::io(format!("source {}", src.display()), e))?;
        let is_dir = m.is_dir() && filters.recurse();
        let excluded = filters.daemon.is_some_and(|d| d.excluded(src, m.is_dir()));
        let mut w = IncWalk {
            root: src.to_path_buf(),
            fopts: fopts.clone(),
            checksum_algo,
            filters,
            root_dev: 0,
            pending: Vec::new(),
            dirs: 0,
            pending_rules: HashMap::new(),
            io_error: 0,
            warnings: Vec::new(),
        };
        if !is_dir || excluded {
            // A file (or what a module hides): the list as a whole.
            let list = build_one(src, source.contents, fopts, checksum_algo, filters)?;
            w.root = list.root;
            w.warnings = list.warnings;
            w.io_error = list.io_error;
            let mut entries = list.entries;
            w.finish(&mut entries);
            return Ok((w, entries));
        }
        let dm = fs::metadata(src)
            .map_err(|e| RemoteError::io(format!("source {}", src.display()), e))?;
        w.root_dev = dm.dev();
        let per_dir = filter.filter(|f| f.has_dir_merge());
        if source.contents {
            let mut top = entry_for(b".".to_vec(), src, &dm, fopts, checksum_algo)?
                .ok_or_else(|| RemoteError::Usage("source root".into()))?;
            top.top_dir = true;
            let rules = match per_dir {
                Some(f) => Some(crate::dirrules::entered(f, src, b"")?),
                None => None,
            };
            let mut entries = w.scan(src, b"", rules.as_ref())?;
            entries.insert(0, top);
            w.finish(&mut entries);
            return Ok((w, entries));
        }
        let base = src
            .file_name()
            .map(|b| b.as_bytes().to_vec())
            .ok_or_else(|| {
                RemoteError::Usage(format!("source {} has no usable name", src.display()))
            })?;
        w.root = match src.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut top = entry_for(base.clone(), src, &dm, fopts, checksum_algo)?
            .ok_or_else(|| RemoteError::Usage("source root".into()))?;
        top.top_dir = true;
        if let Some(f) = per_dir {
            let rules = crate::dirrules::entered(f, src, &base)?;
            w.pending_rules.insert(base, rules);
        }
        let mut entries = vec![top];
        w.finish(&mut entries);
        Ok((w, entries))
    }

    /// The directory the names are relative to.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Symlinks are followed (`-L`, `--copy-unsafe-links`): a listed file
    /// may be reached through one.
    pub(crate) fn follow_links(&self) -> bool {
        self.filters
            .opts
            .is_some_and(|o| o.copy_links || o.copy_unsafe_links)
    }

    /// True once every directory's list was returned.
    pub(crate) fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next directory's list (`None` when all were sent).
    pub(crate) fn next_list(&mut self) -> Result<Option<DirList>> {
        let Some(d) = self.pending.pop() else {
            return Ok(None);
        };
        let mut entries = match d.entry.no_content_dir {
            // Listed without its contents (-x): an empty list.
            true => Vec::new(),
            false => self.scan(&d.path, &d.entry.name, d.rules.as_ref())?,
        };
        self.finish(&mut entries);
        Ok(Some(DirList {
            dir_ndx: d.dir_ndx,
            dir: d.entry,
            entries,
        }))
    }

    /// Reads one directory (entries named `name/...`).
    fn scan(
        &mut self,
        dir: &Path,
        name: &[u8],
        rules: Option<&FilterRules>,
    ) -> Result<Vec<FileEntry>> {
        let mut out = DirScan::default();
        let cx = ScanCtx {
            fopts: &self.fopts,
            checksum_algo: self.checksum_algo,
            filters: self.filters,
            root_dev: self.root_dev,
        };
        scan_dir(dir, name, b"", rules, cx, &mut out)?;
        self.io_error |= out.io_error;
        self.warnings.append(&mut out.warnings);
        // With merge files, each subdirectory's rules, taken by `finish`.
        self.pending_rules = out
            .subdirs
            .into_iter()
            .filter_map(|(_, n, r)| Some((n, r?)))
            .collect();
        Ok(out.entries.into_iter().map(|(e, _)| e).collect())
    }

    /// Sorts a list, applies `--chmod`, and queues its directories (in
    /// list order, the first on top) with their indices.
    fn finish(&mut self, entries: &mut [FileEntry]) {
        entries.sort_by(compare_entries);
        if let Some(o) = self.filters.opts.filter(|o| !o.chmod.is_empty()) {
            for e in entries.iter_mut() {
                if e.file_type() != Some(FileType::Symlink) && e.mode != 0 {
                    e.mode = (e.mode & !0o7777) | o.chmod_perms(e.mode & 0o7777, e.is_dir());
                }
            }
        }
        let mut rules = std::mem::take(&mut self.pending_rules);
        let mut queued = Vec::new();
        for e in entries.iter().filter(|e| e.is_dir()) {
            let dir_ndx = self.dirs;
            self.dirs += 1;
            if e.name == b"." {
                // The top directory's contents are in the first list.
                continue;
            }
            queued.push(PendingDir {
                dir_ndx,
                entry: e.clone(),
                path: match e.name.as_slice() {
                    b"." => self.root.clone(),
                    n => self.root.join(OsStr::from_bytes(n)),
                },
                rules: rules.remove(&e.name),
            });
        }
        self.pending.extend(queued.into_iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_opener_opens_like_open_listed() {
        use std::io::Read;
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        fs::create_dir(t.path().join("b")).unwrap();
        for n in ["a/x", "a/y", "b/z", "top"] {
            fs::write(t.path().join(n), n).unwrap();
        }
        std::os::unix::fs::symlink("x", t.path().join("a/link")).unwrap();
        let mut o = SourceOpener::default();
        let read = |f: std::io::Result<std::fs::File>| {
            let mut s = String::new();
            f.unwrap().read_to_string(&mut s).unwrap();
            s
        };
        for n in ["a/x", "a/y", "b/z", "a/x", "top"] {
            let f = o
                .open(&t.path().join(n), false)
                .map_err(std::io::Error::other);
            assert_eq!(read(f), n);
        }
        // A final symlink: refused unless followed, as open_listed does.
        let link = t.path().join("a/link");
        assert!(o.open(&link, false).is_err());
        assert!(open_listed(&link, false).is_err());
        let f = o.open(&link, true).map_err(std::io::Error::other);
        assert_eq!(read(f), "a/x");
        // A vanished file is reported as not found (counted as vanished).
        fs::remove_file(t.path().join("a/y")).unwrap();
        match o.open(&t.path().join("a/y"), false) {
            Err(RemoteError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
        assert!(o.open(&t.path().join("gone/f"), false).is_err());
    }

    #[test]
    fn incremental_walk_lists_directories_depth_first_in_list_order() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        for d in ["a/b", "a/c", "d"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in ["top", "a/x", "a/b/y", "d/z"] {
            fs::write(t.path().join(f), f).unwrap();
        }
        let fopts = FlistOptions::archive(31);
        let opts = TransferOpts::default();
        let names = |l: &[FileEntry]| -> Vec<String> {
            l.iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect()
        };
        // SRC/: "." and the top level first; directories are numbered in
        // the order the lists name them ("." is 0), each listed right
        // after its parent's list, before the parent's next sibling.
        let src = SourceSpec::parse(format!("{}/", t.path().display()));
        let (mut w, first) =
            IncWalk::start(&src, &fopts, ChecksumAlgo::Md5, None, None, &opts).unwrap();
        assert_eq!(names(&first), [".", "top", "a", "d"]);
        assert!(first[0].top_dir);
        let mut got = Vec::new();
        while let Some(l) = w.next_list().unwrap() {
            got.push((l.dir_ndx, names(&[l.dir]), names(&l.entries)));
        }
        let want: [(i32, [&str; 1], &[&str]); 4] = [
            (1, ["a"], &["a/x", "a/b", "a/c"]),
            (3, ["a/b"], &["a/b/y"]),
            (4, ["a/c"], &[]),
            (2, ["d"], &["d/z"]),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0);
            assert_eq!(g.1, w.1);
            assert_eq!(g.2, w.2);
        }
        assert!(w.done() && w.io_error == 0);
        assert_eq!(w.root(), t.path());
        // SRC: the directory alone first, its contents in the list of
        // directory 0, named under it.
        let src = SourceSpec::parse(t.path().join("a"));
        let (mut w, first) =
            IncWalk::start(&src, &fopts, ChecksumAlgo::Md5, None, None, &opts).unwrap();
        assert_eq!(names(&first), ["a"]);
        let l = w.next_list().unwrap().unwrap();
        assert_eq!(
            (l.dir_ndx, names(&l.entries)),
            (0, vec!["a/x".into(), "a/b".into(), "a/c".into()])
        );
        assert_eq!(w.root(), t.path());
        // A file: one list, no directories.
        let src = SourceSpec::parse(t.path().join("top"));
        let (w, first) =
            IncWalk::start(&src, &fopts, ChecksumAlgo::Md5, None, None, &opts).unwrap();
        assert_eq!(names(&first), ["top"]);
        assert!(w.done());
    }

    #[test]
    fn lists_names_that_are_not_utf8_as_bytes_in_byte_order() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let on_disk = |n: &[u8]| t.path().join(OsStr::from_bytes(n));
        fs::create_dir(on_disk(b"caf\xe9")).unwrap();
        for n in [&b"caf\xe9/x\xff"[..], b"a\xffb", b"z", b"\xc3\xa9t\xe9"] {
            fs::write(on_disk(n), n).unwrap();
        }
        let fopts = FlistOptions::archive(31);
        let list = build_list(t.path(), &fopts, ChecksumAlgo::Md5).unwrap();
        let names: Vec<&[u8]> = list.entries.iter().map(|e| e.name.as_slice()).collect();
        // rsync's order: bytes compared unsigned, a directory's contents after its files.
        let want: [&[u8]; 6] = [
            b".",
            b"a\xffb",
            b"z",
            b"\xc3\xa9t\xe9",
            b"caf\xe9",
            b"caf\xe9/x\xff",
        ];
        assert_eq!(names, want);
        assert!(list.warnings.is_empty(), "{:?}", list.warnings);
        assert_eq!(list.path(5), on_disk(b"caf\xe9/x\xff"));
        let read = fs::read(list.path(5)).unwrap();
        assert_eq!(read, b"caf\xe9/x\xff");
    }
}
