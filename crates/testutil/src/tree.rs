//! [`TreeBuilder`]: creating files of every kind, with every kind of metadata.
//!
//! Paths given to the builder are relative to its root; non-UTF-8 names are written with
//! [`bytes_path`]. Every error names the path it concerns.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, CWD};

use crate::meta::{self, AclEntry, AclKind, FileTime};

/// A relative path from raw bytes (for names that are not UTF-8).
pub fn bytes_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Adds the path to an I/O error's message.
pub(crate) fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let msg = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{msg}: {e}"))
}

/// Deterministic pseudo-random bytes (SplitMix64), so content can be regenerated from a seed.
#[derive(Clone, Debug)]
pub struct SeededBytes {
    state: u64,
}

impl SeededBytes {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SeededBytes { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Creates files, directories and metadata under a root directory.
#[derive(Clone, Debug)]
pub struct TreeBuilder {
    root: PathBuf,
}

impl TreeBuilder {
    /// A builder for `root`, which is created if needed.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(ctx(&root, "creating directory"))?;
        Ok(TreeBuilder { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent_of(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(ctx(parent, "creating directory"))?;
        }
        Ok(path)
    }

    /// A directory (and its parents).
    pub fn dir(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let path = self.path(rel);
        fs::create_dir_all(&path).map_err(ctx(&path, "creating directory"))?;
        Ok(path)
    }

    /// `depth` nested directories named `name` under `rel`; returns the deepest.
    pub fn deep_dirs(
        &self,
        rel: impl AsRef<Path>,
        depth: usize,
        name: &str,
    ) -> io::Result<PathBuf> {
        let mut p = rel.as_ref().to_path_buf();
        for _ in 0..depth {
            p.push(name);
        }
        self.dir(p)
    }

    /// A regular file with `content`.
    pub fn file(&self, rel: impl AsRef<Path>, content: &[u8]) -> io::Result<PathBuf> {
        let path = self.parent_of(rel)?;
        fs::write(&path, content).map_err(ctx(&path, "writing"))?;
        Ok(path)
    }

    /// An empty regular file.
    pub fn empty_file(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        self.file(rel, b"")
    }

    /// A regular file of `size` pseudo-random bytes derived from `seed`.
    pub fn file_seeded(&self, rel: impl AsRef<Path>, size: u64, seed: u64) -> io::Result<PathBuf> {
        let path = self.parent_of(rel)?;
        let mut f = File::create(&path).map_err(ctx(&path, "creating"))?;
        let mut rng = SeededBytes::new(seed);
        let mut buf = vec![0u8; size.min(64 * 1024) as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).map_err(ctx(&path, "writing"))?;
            left -= n as u64;
        }
        Ok(path)
    }

    /// A sparse file of `size` bytes: pseudo-random data in each `(offset, len)` range, holes
    /// elsewhere. Ranges aligned to 4 KiB give the same hole map on every filesystem.
    pub fn sparse_file(
        &self,
        rel: impl AsRef<Path>,
        size: u64,
        data: &[(u64, u64)],
        seed: u64,
    ) -> io::Result<PathBuf> {
        let path = self.parent_of(rel)?;
        let f = File::create(&path).map_err(ctx(&path, "creating"))?;
        f.set_len(size).map_err(ctx(&path, "truncating"))?;
        let mut rng = SeededBytes::new(seed);
        for &(off, len) in data {
            let mut buf = vec![0u8; len as usize];
            rng.fill(&mut buf);
            // Keep every byte non-zero so no copier can turn data into holes.
            for b in &mut buf {
                *b |= 1;
            }
            f.write_all_at(&buf, off).map_err(ctx(&path, "writing"))?;
        }
        Ok(path)
    }

    /// A symbolic link `rel` pointing at `target` (relative, absolute or dangling).
    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> io::Result<PathBuf> {
        let path = self.parent_of(rel)?;
        std::os::unix::fs::symlink(target, &path).map_err(ctx(&path, "creating symlink"))?;
        Ok(path)
    }

    /// A hard link `new` to the existing `existing` (both relative to the root).
    pub fn hard_link(
        &self,
        existing: impl AsRef<Path>,
        new: impl AsRef<Path>,
    ) -> io::Result<PathBuf> {
        let from = self.path(existing);
        let to = self.parent_of(new)?;
        fs::hard_link(&from, &to).map_err(ctx(&to, "hard-linking"))?;
        Ok(to)
    }

    fn mknod(
        &self,
        rel: impl AsRef<Path>,
        kind: FileType,
        mode: u32,
        dev: u64,
    ) -> io::Result<PathBuf> {
        let path = self.parent_of(rel)?;
        rustix::fs::mknodat(CWD, &path, kind, Mode::from_raw_mode(mode), dev)
            .map_err(io::Error::from)
            .map_err(ctx(&path, "mknod"))?;
        Ok(path)
    }

    /// A named pipe.
    pub fn fifo(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        self.mknod(rel, FileType::Fifo, mode, 0)
    }

    /// A Unix socket node (created with mknod; nothing listens on it).
    pub fn socket(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        self.mknod(rel, FileType::Socket, mode, 0)
    }

    /// A character device (needs root).
    pub fn char_device(
        &self,
        rel: impl AsRef<Path>,
        major: u32,
        minor: u32,
    ) -> io::Result<PathBuf> {
        self.mknod(
            rel,
            FileType::CharacterDevice,
            0o600,
            rustix::fs::makedev(major, minor),
        )
    }

    /// A block device (needs root).
    pub fn block_device(
        &self,
        rel: impl AsRef<Path>,
        major: u32,
        minor: u32,
    ) -> io::Result<PathBuf> {
        self.mknod(
            rel,
            FileType::BlockDevice,
            0o600,
            rustix::fs::makedev(major, minor),
        )
    }

    /// Sets the full mode, including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    /// Follows symlinks (Linux cannot change a symlink's mode).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let path = self.path(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(ctx(&path, "chmod"))
    }

    /// Sets owner and group without following symlinks (needs root for other owners).
    /// Note that the kernel clears setuid/setgid bits on chown: set modes afterwards.
    pub fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
        let path = self.path(rel);
        rustix::fs::chownat(
            CWD,
            &path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
        .map_err(ctx(&path, "chown"))
    }

    /// Sets access and modification times with nanoseconds, without following symlinks.
    pub fn set_times(
        &self,
        rel: impl AsRef<Path>,
        atime: FileTime,
        mtime: FileTime,
    ) -> io::Result<()> {
        set_times(&self.path(rel), atime, mtime)
    }

    /// Sets an extended attribute (any namespace the caller may write).
    pub fn set_xattr(&self, rel: impl AsRef<Path>, name: &str, value: &[u8]) -> io::Result<()> {
        let path = self.path(rel);
        meta::set_xattr(&path, name.as_bytes(), value)
            .map_err(ctx(&path, &format!("setting xattr {name} on")))
    }

    /// Sets the access or default POSIX ACL.
    pub fn set_acl(
        &self,
        rel: impl AsRef<Path>,
        kind: AclKind,
        entries: &[AclEntry],
    ) -> io::Result<()> {
        let path = self.path(rel);
        meta::write_acl(&path, kind, entries).map_err(ctx(&path, "setting ACL on"))
    }
}

/// Sets access and modification times of `path` (not following symlinks).
pub fn set_times(path: &Path, atime: FileTime, mtime: FileTime) -> io::Result<()> {
    let ts = Timestamps {
        last_access: atime.to_timespec(),
        last_modification: mtime.to_timespec(),
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
        .map_err(ctx(path, "setting times of"))
}

/// Sets the modification time of `path` (not following symlinks) and leaves its access time.
pub fn set_mtime(path: &Path, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: FileTime::new(sec, nsec).to_timespec(),
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
        .map_err(ctx(path, "setting mtime of"))
}

/// Which entries [`settle_tree`] gives a fixed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Directories only.
    Dirs,
    /// Directories and symlinks.
    DirsAndLinks,
    /// Everything but regular files.
    AllButFiles,
}

/// Gives the chosen entries of the tree at `root` (`root` included) the access and modification
/// time `sec`, so that trees built at different moments compare equal: rsync, like arsync, does
/// not set a time that already matches to the second. A missing `root` is left alone.
pub fn settle_tree(root: &Path, which: Settle, sec: i64) -> io::Result<()> {
    let Ok(m) = fs::symlink_metadata(root) else {
        return Ok(());
    };
    let mut stack = vec![(root.to_path_buf(), m.file_type())];
    while let Some((p, ft)) = stack.pop() {
        if ft.is_dir() {
            for e in fs::read_dir(&p).map_err(ctx(&p, "listing"))? {
                let e = e.map_err(ctx(&p, "listing"))?;
                stack.push((e.path(), e.file_type().map_err(ctx(&p, "listing"))?));
            }
        }
        let stamp = match which {
            Settle::Dirs => ft.is_dir(),
            Settle::DirsAndLinks => ft.is_dir() || ft.is_symlink(),
            Settle::AllButFiles => !ft.is_file(),
        };
        if stamp {
            let t = FileTime::new(sec, 0);
            set_times(&p, t, t)?;
        }
    }
    Ok(())
}

/// The access and modification times of `path` (not following symlinks).
pub fn get_times(path: &Path) -> io::Result<(FileTime, FileTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).map_err(ctx(path, "stat"))?;
    Ok((
        FileTime::new(m.atime(), m.atime_nsec() as u32),
        FileTime::new(m.mtime(), m.mtime_nsec() as u32),
    ))
}

/// Overwrites bytes of an existing file in place (the file keeps its inode).
pub fn overwrite_at(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(ctx(path, "opening"))?;
    f.write_all_at(data, offset).map_err(ctx(path, "writing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_tree_stamps_only_the_chosen_kinds() -> io::Result<()> {
        let dir = crate::scratch_dir()?;
        let t = TreeBuilder::new(dir.path().join("r"))?;
        t.file("d/f", b"x")?;
        t.symlink("d/l", "f")?;
        t.fifo("p", 0o600)?;
        let mtime = |rel: &str| get_times(&t.path(rel)).map(|(_, m)| m.sec);
        for (which, stamped, kept) in [
            (Settle::Dirs, vec!["", "d"], vec!["d/f", "d/l", "p"]),
            (Settle::DirsAndLinks, vec!["", "d", "d/l"], vec!["d/f", "p"]),
            (Settle::AllButFiles, vec!["", "d", "d/l", "p"], vec!["d/f"]),
        ] {
            for rel in ["", "d", "d/f", "d/l", "p"] {
                set_times(&t.path(rel), FileTime::new(7, 0), FileTime::new(7, 0))?;
            }
            settle_tree(t.root(), which, 1_500_000_000)?;
            for rel in stamped {
                assert_eq!(mtime(rel)?, 1_500_000_000, "{which:?} {rel}");
            }
            for rel in kept {
                assert_eq!(mtime(rel)?, 7, "{which:?} {rel}");
            }
        }
        set_mtime(&t.path("d/f"), 9, 5)?;
        assert_eq!(get_times(&t.path("d/f"))?.1, FileTime::new(9, 5));
        settle_tree(&dir.path().join("missing"), Settle::Dirs, 1)
    }
}
