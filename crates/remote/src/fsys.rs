//! Every file-system access of the remote roles, rooted at one directory.
//!
//! Names come from the peer; they are validated by `arsync-proto` (relative,
//! no `..`) and, before every operation, each ancestor directory below the
//! root is checked to be a real directory (not a symlink), so nothing is ever
//! created or written outside the root. Kept in one module so it can move to
//! the platform I/O layer later.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{lchown, symlink, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arsync_proto::flist::validate_name;
use rustix::fs::{AtFlags, Timespec, Timestamps, CWD, UTIME_OMIT};

use crate::error::{RemoteError, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Metadata to apply to a received entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (07777).
    pub perms: u32,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
    /// Owner to set (None: leave).
    pub uid: Option<u32>,
    /// Group to set (None: leave).
    pub gid: Option<u32>,
}

/// A destination directory tree.
#[derive(Debug, Clone)]
pub struct DestRoot {
    root: PathBuf,
}

fn name_str(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl DestRoot {
    /// Uses `root` (created if missing, like rsync's destination).
    pub fn open(root: &Path) -> Result<Self> {
        match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RemoteError::Usage(format!(
                    "destination {} is not a directory",
                    root.display()
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir_all(root)
                .map_err(|e| RemoteError::io(format!("creating {}", root.display()), e))?,
            Err(e) => return Err(RemoteError::io(format!("stat {}", root.display()), e)),
        }
        Ok(DestRoot {
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local path of `name`, after checking that the name is clean and
    /// that every ancestor inside the root is a real directory.
    pub fn path(&self, name: &[u8]) -> Result<PathBuf> {
        validate_name(name).map_err(|e| RemoteError::Refused(e.to_string()))?;
        if name == b"." {
            return Ok(self.root.clone());
        }
        let s = std::str::from_utf8(name)
            .map_err(|_| RemoteError::Refused(format!("non-UTF-8 name {:?}", name_str(name))))?;
        let mut p = self.root.clone();
        let comps: Vec<&str> = s.split('/').collect();
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            if i + 1 < comps.len() {
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(RemoteError::Refused(format!(
                            "{s}: parent {} is not a directory",
                            p.display()
                        )))
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(RemoteError::io(format!("stat {}", p.display()), e)),
                }
            }
        }
        Ok(p)
    }

    /// `lstat` of an entry, `None` if it does not exist.
    pub fn lstat(&self, name: &[u8]) -> Result<Option<fs::Metadata>> {
        let p = self.path(name)?;
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RemoteError::io(format!("stat {}", p.display()), e)),
        }
    }

    fn remove_non_dir(p: &Path) -> Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => Err(RemoteError::io(
                format!("replacing directory {}", p.display()),
                std::io::Error::from(ErrorKind::IsADirectory),
            )),
            Ok(_) => fs::remove_file(p)
                .map_err(|e| RemoteError::io(format!("removing {}", p.display()), e)),
            Err(_) => Ok(()),
        }
    }

    /// Makes sure `name` is a directory (user-writable until [`DestRoot::set_meta`]).
    pub fn ensure_dir(&self, name: &[u8]) -> Result<()> {
        let p = self.path(name)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => Self::remove_non_dir(&p)?,
            Err(_) => {}
        }
        fs::create_dir(&p)
            .map_err(|e| RemoteError::io(format!("creating directory {}", p.display()), e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
            .map_err(|e| RemoteError::io(format!("chmod {}", p.display()), e))
    }

    /// Creates (or replaces) a symlink.
    pub fn make_symlink(&self, name: &[u8], target: &[u8]) -> Result<()> {
        let p = self.path(name)?;
        if let Ok(cur) = fs::read_link(&p) {
            if cur.as_os_str().as_encoded_bytes() == target {
                return Ok(());
            }
        }
        Self::remove_non_dir(&p)?;
        let t = std::ffi::OsStr::new(
            std::str::from_utf8(target)
                .map_err(|_| RemoteError::Refused("non-UTF-8 symlink target".into()))?,
        );
        symlink(t, &p).map_err(|e| RemoteError::io(format!("symlink {}", p.display()), e))
    }

    /// Creates a FIFO, socket or device node (devices need privileges).
    pub fn make_node(&self, name: &[u8], mode: u32, rdev: (u32, u32)) -> Result<()> {
        let p = self.path(name)?;
        Self::remove_non_dir(&p)?;
        let ft = rustix::fs::FileType::from_raw_mode(mode);
        let dev = rustix::fs::makedev(rdev.0, rdev.1);
        rustix::fs::mknodat(
            CWD,
            &p,
            ft,
            rustix::fs::Mode::from_raw_mode(mode & 0o7777),
            dev,
        )
        .map_err(|e| RemoteError::io(format!("mknod {}", p.display()), e.into()))
    }

    /// Opens an existing regular file to use as a delta basis.
    pub fn open_basis(&self, name: &[u8]) -> Result<Option<File>> {
        let p = self.path(name)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {}
            _ => return Ok(None),
        }
        match OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&p)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RemoteError::io(format!("opening basis {}", p.display()), e)),
        }
    }

    /// Creates a new temporary file next to `name` (`.name.XXXXXX`).
    pub fn create_temp(&self, name: &[u8]) -> Result<(File, PathBuf)> {
        let p = self.path(name)?;
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        let base = p
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short: String = base.chars().take(200).collect();
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(
                ".{short}.{:06}{}",
                std::process::id() % 1_000_000,
                n
            ));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => return Ok((f, tmp)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RemoteError::io(format!("creating {}", tmp.display()), e)),
            }
        }
    }

    /// Renames a finished temporary file over `name`.
    pub fn commit(&self, tmp: &Path, name: &[u8]) -> Result<()> {
        let p = self.path(name)?;
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.is_dir() {
                let _ = fs::remove_file(tmp);
                return Err(RemoteError::io(
                    format!("replacing directory {}", p.display()),
                    std::io::Error::from(ErrorKind::IsADirectory),
                ));
            }
        }
        fs::rename(tmp, &p)
            .map_err(|e| RemoteError::io(format!("renaming into {}", p.display()), e))
    }

    /// Applies owner, permissions and mtime to `path` (an entry path or a
    /// temporary file). Symlinks get owner and time only.
    pub fn set_meta(path: &Path, meta: &Meta, is_symlink: bool) -> Result<()> {
        if meta.uid.is_some() || meta.gid.is_some() {
            lchown(path, meta.uid, meta.gid)
                .map_err(|e| RemoteError::io(format!("chown {}", path.display()), e))?;
        }
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.perms & 0o7777))
                .map_err(|e| RemoteError::io(format!("chmod {}", path.display()), e))?;
        }
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: meta.mtime,
                tv_nsec: meta.mtime_nsec as _,
            },
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| RemoteError::io(format!("setting times on {}", path.display()), e.into()))
    }

    /// Deletes a temporary file (best effort).
    pub fn remove_temp(tmp: &Path) {
        let _ = fs::remove_file(tmp);
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of a basis file.
pub fn read_basis(f: &File, offset: u64, buf: &mut [u8]) -> Result<()> {
    f.read_exact_at(buf, offset)
        .map_err(|e| RemoteError::io("reading the basis file", e))
}

/// Reads a whole small source chunk-wise; used by the sender.
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
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| RemoteError::io(format!("opening {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let d = DestRoot::open(&t.path().join("dst")).unwrap();
        assert!(matches!(d.path(b"../x"), Err(RemoteError::Refused(_))));
        assert!(matches!(
            d.path(b"/etc/passwd"),
            Err(RemoteError::Refused(_))
        ));
        // A symlinked parent is refused.
        std::os::unix::fs::symlink(t.path(), d.root().join("up")).unwrap();
        assert!(matches!(d.path(b"up/file"), Err(RemoteError::Refused(_))));
        assert!(d.path(b"up").is_ok());
    }

    #[test]
    fn temp_commit_and_meta() {
        let t = tempfile::tempdir().unwrap();
        let d = DestRoot::open(t.path()).unwrap();
        d.ensure_dir(b"sub").unwrap();
        let (f, tmp) = d.create_temp(b"sub/f").unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        let meta = Meta {
            perms: 0o640,
            mtime: 1_000_000_000,
            mtime_nsec: 5,
            uid: None,
            gid: None,
        };
        DestRoot::set_meta(&tmp, &meta, false).unwrap();
        d.commit(&tmp, b"sub/f").unwrap();
        let m = fs::metadata(t.path().join("sub/f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
        d.make_symlink(b"sub/l", b"f").unwrap();
        DestRoot::set_meta(&t.path().join("sub/l"), &Meta { mtime: 7, ..meta }, true).unwrap();
        assert_eq!(
            fs::symlink_metadata(t.path().join("sub/l"))
                .unwrap()
                .mtime(),
            7
        );
    }
}
