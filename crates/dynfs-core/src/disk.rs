//! Disks: identity files, health states and on-disk layout.
//!
//! A disk is a directory. It holds:
//! - `dynfs-disk.toml`: the identity (disk id, pool id, health, capacity at init);
//! - `meta/dynfs.redb`: a replica of the pool metadata;
//! - `data/XX/EEEEEEEEEEEEEEEE.I`: fragment `I` of extent `E` (hex), `XX` = low byte of `E`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Name of the identity file at the root of every disk.
pub const IDENTITY_FILE: &str = "dynfs-disk.toml";

/// Health of a disk. Only `Healthy` disks receive new fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Fully usable.
    Healthy,
    /// Readable; receives no new fragments (e.g. nearly full or recovered from errors).
    Degraded,
    /// Repeated I/O errors: readable as a last resort, no new fragments.
    Suspect,
    /// Being emptied: its fragments are moved elsewhere, then it can be removed.
    Draining,
    /// Unusable: never read or written; its fragments are rebuilt elsewhere.
    Failed,
}

impl Health {
    /// May new fragments be placed on this disk?
    pub fn writable(self) -> bool {
        self == Health::Healthy
    }

    /// May fragments be read from this disk?
    pub fn readable(self) -> bool {
        self != Health::Failed
    }

    /// Should fragments on this disk be moved or rebuilt elsewhere?
    pub fn evacuate(self) -> bool {
        matches!(self, Health::Draining | Health::Failed)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Suspect => "suspect",
            Health::Draining => "draining",
            Health::Failed => "failed",
        })
    }
}

impl FromStr for Health {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "healthy" => Health::Healthy,
            "degraded" => Health::Degraded,
            "suspect" => Health::Suspect,
            "draining" => Health::Draining,
            "failed" => Health::Failed,
            _ => {
                return Err(Error::Invalid(format!(
                    "invalid health {s:?}: expected healthy, degraded, suspect, draining or failed"
                )))
            }
        })
    }
}

/// Contents of a disk's identity file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    /// Disk id, unique within the pool.
    pub disk_id: u32,
    /// Id of the pool the disk belongs to.
    pub pool_id: String,
    /// Last recorded health.
    pub health: Health,
    /// Capacity in bytes of the filesystem holding the disk, at the time it joined the pool.
    pub capacity: u64,
}

impl DiskIdentity {
    /// Read the identity file of the disk at `dir`, if it has one.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&p) {
            Ok(s) => toml::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// Write the identity file durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let p = dir.join(IDENTITY_FILE);
        let text = toml::to_string(self).map_err(|e| Error::Invalid(e.to_string()))?;
        use crate::io::DiskIo;
        crate::io::StdIo
            .write_durable(&p, text.as_bytes())
            .map_err(|e| Error::io(p, e))
    }
}

/// Path of the metadata replica on a disk.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta").join("dynfs.redb")
}

/// Directory holding the fragments of extents whose id ends in the same byte.
pub fn fragment_dir(dir: &Path, extent: u64) -> PathBuf {
    dir.join("data").join(format!("{:02x}", extent & 0xff))
}

/// Path of fragment `index` of `extent` on the disk at `dir`.
pub fn fragment_path(dir: &Path, extent: u64, index: usize) -> PathBuf {
    fragment_dir(dir, extent).join(format!("{extent:016x}.{index}"))
}

/// Parse a fragment file name back into `(extent, index)`.
pub fn parse_fragment_name(name: &str) -> Option<(u64, usize)> {
    let (e, i) = name.split_once('.')?;
    if e.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(e, 16).ok()?, i.parse().ok()?))
}

/// Create the directory layout of a new disk.
pub fn create_layout(dir: &Path) -> Result<()> {
    let mk = |p: PathBuf| std::fs::create_dir_all(&p).map_err(|e| Error::io(p, e));
    mk(dir.join("meta"))?;
    for b in 0..=255u64 {
        mk(fragment_dir(dir, b))?;
    }
    Ok(())
}

/// Total and available bytes of the filesystem holding `dir`.
pub fn fs_space(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: path contains NUL", dir.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory large enough
    // for a `statvfs`; the kernel fills it completely on success, which we check before reading.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so the structure was initialised.
    let st = unsafe { st.assume_init() };
    let bs = st.f_frsize;
    Ok((st.f_blocks * bs, st.f_bavail * bs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_names_roundtrip() {
        let p = fragment_path(Path::new("/d"), 0x1234_5678_9abc, 3);
        assert_eq!(p, Path::new("/d/data/bc/0000123456789abc.3"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_fragment_name(name), Some((0x1234_5678_9abc, 3)));
        assert_eq!(parse_fragment_name("0000123456789abc.3.tmp"), None);
        assert_eq!(parse_fragment_name("junk"), None);
    }

    #[test]
    fn identity_roundtrip_and_space() {
        let d = tempfile::tempdir().unwrap();
        assert!(DiskIdentity::load(d.path()).unwrap().is_none());
        let id = DiskIdentity {
            disk_id: 7,
            pool_id: "abc".into(),
            health: Health::Suspect,
            capacity: 99,
        };
        id.store(d.path()).unwrap();
        assert_eq!(DiskIdentity::load(d.path()).unwrap(), Some(id));
        let (total, avail) = fs_space(d.path()).unwrap();
        assert!(total > 0 && avail <= total);
        assert!(fs_space(Path::new("/nonexistent/dir")).is_err());
    }
}
