//! Building a file list from a local source directory (the sending side).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use arsync_proto::flist::{compare_entries, FileEntry, FlistOptions, HardLink};
use arsync_proto::stats::{IOERR_GENERAL, IOERR_VANISHED};

use arsync_proto::checksum::{ChecksumAlgo, FileHasher};

use arsync_filter::FilterRules;

use crate::error::{RemoteError, Result};
use crate::fsys::{open_source, read_chunk};

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
}

impl LocalList {
    /// The local path of entry `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        let name = &self.entries[i].name;
        if name == b"." {
            self.root.clone()
        } else {
            self.root.join(String::from_utf8_lossy(name).as_ref())
        }
    }
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
            return Ok(None);
        }
        let t = fs::read_link(path)
            .map_err(|err| RemoteError::io(format!("readlink {}", path.display()), err))?;
        let t = t.into_os_string().into_encoded_bytes();
        e.size = t.len() as i64;
        e.link_target = Some(t);
    } else if ft.is_dir() {
    } else {
        // Devices, FIFOs, sockets.
        if !fopts.preserve_devices {
            return Ok(None);
        }
        let rdev = m.rdev();
        e.rdev = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    }
    Ok(Some(e))
}

/// The unseeded whole-file checksum sent with `-c`.
fn file_checksum(path: &Path, algo: ChecksumAlgo) -> Result<Vec<u8>> {
    let mut f = open_source(path)?;
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
    let m = fs::symlink_metadata(source)
        .map_err(|e| RemoteError::io(format!("source {}", source.display()), e))?;
    if m.is_dir() && contents {
        return walk(source, fopts, checksum_algo, filter, "");
    }
    let base = source
        .file_name()
        .and_then(|b| b.to_str())
        .ok_or_else(|| {
            RemoteError::Usage(format!("source {} has no usable name", source.display()))
        })?
        .to_string();
    let parent = match source.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if m.is_dir() {
        let mut list = walk(source, fopts, checksum_algo, filter, &base)?;
        for e in &mut list.entries {
            let mut n = base.as_bytes().to_vec();
            if e.name != b"." {
                n.push(b'/');
                n.extend_from_slice(&e.name);
            }
            e.name = n;
        }
        list.root = parent;
        return Ok(list);
    }
    let e = entry_for(base.into_bytes(), source, &m, fopts, checksum_algo)?.ok_or_else(|| {
        RemoteError::Usage(format!(
            "source {}: this file type is not sent with these options",
            source.display()
        ))
    })?;
    Ok(LocalList {
        entries: vec![e],
        root: parent,
        ..LocalList::default()
    })
}

/// Walks `root` (the contents of the directory, as `SRC/` in rsync) into a
/// sorted file list. Unreadable entries set io_error and are skipped.
pub fn build_list(
    root: &Path,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
) -> Result<LocalList> {
    walk(root, fopts, checksum_algo, None, "")
}

/// The walk behind [`build_list`]; `filter_prefix` is prepended (with `/`)
/// to names for filter matching when the directory is sent under its name.
fn walk(
    root: &Path,
    fopts: &FlistOptions,
    checksum_algo: ChecksumAlgo,
    filter: Option<&FilterRules>,
    filter_prefix: &str,
) -> Result<LocalList> {
    let m =
        fs::metadata(root).map_err(|e| RemoteError::io(format!("source {}", root.display()), e))?;
    if !m.is_dir() {
        return Err(RemoteError::Usage(format!(
            "source {} is not a directory",
            root.display()
        )));
    }
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
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                list.io_error |= IOERR_GENERAL;
                list.warnings
                    .push(format!("opendir {}: {e}", dir.display()));
                continue;
            }
        };
        for de in rd {
            let de = match de {
                Ok(d) => d,
                Err(e) => {
                    list.io_error |= IOERR_GENERAL;
                    list.warnings
                        .push(format!("readdir {}: {e}", dir.display()));
                    continue;
                }
            };
            let fname = de.file_name();
            let Some(fname) = fname.to_str() else {
                list.io_error |= IOERR_GENERAL;
                list.warnings
                    .push(format!("skipping non-UTF-8 name in {}", dir.display()));
                continue;
            };
            let rel = if prefix.is_empty() {
                fname.to_string()
            } else {
                format!("{prefix}/{fname}")
            };
            let path = de.path();
            let m = match fs::symlink_metadata(&path) {
                Ok(m)
                    if filter.is_some_and(|f| {
                        let full = if filter_prefix.is_empty() {
                            rel.clone()
                        } else {
                            format!("{filter_prefix}/{rel}")
                        };
                        f.excluded_for_transfer(full.as_bytes(), m.is_dir())
                    }) =>
                {
                    continue
                }
                Ok(m) => m,
                Err(e) => {
                    list.io_error |= if e.kind() == std::io::ErrorKind::NotFound {
                        IOERR_VANISHED
                    } else {
                        IOERR_GENERAL
                    };
                    list.warnings.push(format!("stat {}: {e}", path.display()));
                    continue;
                }
            };
            if let Some(e) = entry_for(rel.clone().into_bytes(), &path, &m, fopts, checksum_algo)? {
                if m.is_dir() {
                    stack.push((path, rel));
                }
                let linked = fopts.preserve_hard_links && !m.is_dir() && m.nlink() > 1;
                inodes.push(linked.then(|| (m.dev(), m.ino())));
                list.entries.push(e);
            }
        }
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
