//! Low-level metadata access: extended attributes, POSIX ACLs, hole maps, timestamps.
//!
//! All functions act on the path itself, never following a final symlink.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{OFlags, SeekFrom};

/// The xattr holding a file's access ACL.
pub const ACL_ACCESS_XATTR: &str = "system.posix_acl_access";
/// The xattr holding a directory's default ACL.
pub const ACL_DEFAULT_XATTR: &str = "system.posix_acl_default";

/// A point in time with nanoseconds, as stored in inodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileTime {
    /// Seconds since the epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, below 1 000 000 000.
    pub nsec: u32,
}

impl FileTime {
    /// A time from seconds and nanoseconds.
    pub const fn new(sec: i64, nsec: u32) -> Self {
        FileTime { sec, nsec }
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }

    pub(crate) fn to_timespec(self) -> rustix::fs::Timespec {
        rustix::fs::Timespec {
            tv_sec: self.sec,
            tv_nsec: self.nsec.into(),
        }
    }
}

impl fmt::Display for FileTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

fn not_supported(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::NOTSUP) | Some(rustix::io::Errno::NODATA)
    )
}

/// Names of all extended attributes of `path` (every namespace the caller may read).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    Ok(buf[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The value of xattr `name` on `path`, or `None` when it is not set.
pub fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = OsStr::from_bytes(name);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::lgetxattr_query(path, name)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets xattr `name` on `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = OsStr::from_bytes(name);
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).map_err(Into::into)
}

/// Removes xattr `name` from `path`; absent attributes are not an error.
pub fn remove_xattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let name = OsStr::from_bytes(name);
    match rustix::fs::lremovexattr(path, name) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Who a POSIX ACL entry applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclTag {
    /// The owning user (`user::`).
    UserObj,
    /// A named user (`user:UID:`).
    User(u32),
    /// The owning group (`group::`).
    GroupObj,
    /// A named group (`group:GID:`).
    Group(u32),
    /// The mask (`mask::`).
    Mask,
    /// Everyone else (`other::`).
    Other,
}

/// One POSIX ACL entry: a tag and `rwx` permission bits (4, 2, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclEntry {
    /// Who.
    pub tag: AclTag,
    /// Permission bits, `0..=7`.
    pub perm: u8,
}

impl AclEntry {
    /// An entry.
    pub const fn new(tag: AclTag, perm: u8) -> Self {
        AclEntry { tag, perm }
    }
}

const ACL_VERSION: u32 = 2;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// Encodes entries in the kernel's `system.posix_acl_*` xattr format (sorted as required).
pub fn encode_acl(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort();
    let mut out = Vec::with_capacity(4 + 8 * sorted.len());
    out.extend_from_slice(&ACL_VERSION.to_le_bytes());
    for e in sorted {
        let (tag, id): (u16, u32) = match e.tag {
            AclTag::UserObj => (0x01, ACL_UNDEFINED_ID),
            AclTag::User(u) => (0x02, u),
            AclTag::GroupObj => (0x04, ACL_UNDEFINED_ID),
            AclTag::Group(g) => (0x08, g),
            AclTag::Mask => (0x10, ACL_UNDEFINED_ID),
            AclTag::Other => (0x20, ACL_UNDEFINED_ID),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&u16::from(e.perm & 7).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Decodes a `system.posix_acl_*` value; `None` when it is malformed.
pub fn decode_acl(raw: &[u8]) -> Option<Vec<AclEntry>> {
    let (head, body) = raw.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != ACL_VERSION || body.len() % 8 != 0 {
        return None;
    }
    body.chunks_exact(8)
        .map(|c| {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            let tag = match tag {
                0x01 => AclTag::UserObj,
                0x02 => AclTag::User(id),
                0x04 => AclTag::GroupObj,
                0x08 => AclTag::Group(id),
                0x10 => AclTag::Mask,
                0x20 => AclTag::Other,
                _ => return None,
            };
            Some(AclEntry {
                tag,
                perm: (perm & 7) as u8,
            })
        })
        .collect()
}

/// Renders entries like `getfacl` does, comma-separated: `user::rw-,user:1234:r--,...`.
pub fn acl_to_text(entries: &[AclEntry]) -> String {
    let perm = |p: u8| {
        format!(
            "{}{}{}",
            if p & 4 != 0 { 'r' } else { '-' },
            if p & 2 != 0 { 'w' } else { '-' },
            if p & 1 != 0 { 'x' } else { '-' }
        )
    };
    entries
        .iter()
        .map(|e| match e.tag {
            AclTag::UserObj => format!("user::{}", perm(e.perm)),
            AclTag::User(u) => format!("user:{u}:{}", perm(e.perm)),
            AclTag::GroupObj => format!("group::{}", perm(e.perm)),
            AclTag::Group(g) => format!("group:{g}:{}", perm(e.perm)),
            AclTag::Mask => format!("mask::{}", perm(e.perm)),
            AclTag::Other => format!("other::{}", perm(e.perm)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Which ACL of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AclKind {
    /// The access ACL (any file).
    Access,
    /// The default ACL (directories).
    Default,
}

impl AclKind {
    /// The xattr that stores it.
    pub fn xattr_name(self) -> &'static str {
        match self {
            AclKind::Access => ACL_ACCESS_XATTR,
            AclKind::Default => ACL_DEFAULT_XATTR,
        }
    }
}

/// The extended ACL of `path` as text, or `None` when the file has none beyond its mode.
pub fn read_acl(path: &Path, kind: AclKind) -> io::Result<Option<String>> {
    Ok(
        get_xattr(path, kind.xattr_name().as_bytes())?.map(|raw| match decode_acl(&raw) {
            Some(entries) => acl_to_text(&entries),
            None => format!("<malformed ACL of {} bytes>", raw.len()),
        }),
    )
}

/// Sets an ACL by writing its xattr; the kernel derives the mode's group bits from the mask.
pub fn write_acl(path: &Path, kind: AclKind, entries: &[AclEntry]) -> io::Result<()> {
    set_xattr(path, kind.xattr_name().as_bytes(), &encode_acl(entries))
}

/// Opens a file for reading without updating its access time where permitted.
pub fn open_noatime(path: &Path) -> io::Result<File> {
    let flags = OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            File::open(path)
        }
        other => other,
    }
}

/// The data segments of a file as `(start, end)` byte ranges; everything else is a hole.
pub fn data_segments(path: &Path) -> io::Result<Vec<(u64, u64)>> {
    let file = open_noatime(path)?;
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(&file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(&file, SeekFrom::Hole(start)) {
            Ok(e) => e,
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        out.push((start, end.min(size)));
        if end <= start {
            break;
        }
        pos = end;
    }
    Ok(out)
}

/// True when `e` means "this filesystem does not do that".
pub fn is_unsupported(e: &io::Error) -> bool {
    not_supported(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_round_trip_and_text() {
        let entries = [
            AclEntry::new(AclTag::Other, 4),
            AclEntry::new(AclTag::UserObj, 6),
            AclEntry::new(AclTag::User(1234), 6),
            AclEntry::new(AclTag::GroupObj, 4),
            AclEntry::new(AclTag::Mask, 6),
        ];
        let raw = encode_acl(&entries);
        assert_eq!(raw.len(), 4 + 8 * 5);
        let back = decode_acl(&raw).expect("decodes");
        assert_eq!(
            acl_to_text(&back),
            "user::rw-,user:1234:rw-,group::r--,mask::rw-,other::r--"
        );
        assert!(decode_acl(&raw[..7]).is_none());
        assert!(decode_acl(b"\x01\0\0\0").is_none());
    }

    #[test]
    fn times_order_and_print() {
        let a = FileTime::new(1, 999_999_999);
        let b = FileTime::new(2, 0);
        assert!(a < b);
        assert_eq!(b.as_nanos() - a.as_nanos(), 1);
        assert_eq!(a.to_string(), "1.999999999");
    }
}
