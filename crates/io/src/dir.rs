//! Streaming directory reader (getdents64 on the pool; io_uring has no opcode for it).

use crate::pool::spawn_blocking;
use crate::stat::FileKind;
use crate::sys;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

/// One directory entry (never `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// File name.
    pub name: OsString,
    /// Inode number.
    pub ino: u64,
    /// Kind from `d_type` (`Unknown` on file systems that do not report it: stat then).
    pub kind: FileKind,
}

/// Reads a directory in batches of entries, holding one 32 KiB buffer: memory stays bounded
/// however large the directory is.
pub struct DirReader {
    fd: Arc<OwnedFd>,
    buf: Option<Vec<u8>>,
    done: bool,
}

const BUF: usize = 32 * 1024;

impl DirReader {
    pub(crate) fn new(fd: OwnedFd) -> DirReader {
        DirReader {
            fd: Arc::new(fd),
            buf: Some(vec![0u8; BUF]),
            done: false,
        }
    }

    /// The directory's fd (for `*at` calls on its entries).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next batch of entries; `None` at the end.
    pub async fn next_batch(&mut self) -> io::Result<Option<Vec<DirEntry>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let fd = self.fd.clone();
            let mut buf = self.buf.take().unwrap_or_else(|| vec![0u8; BUF]);
            let (r, buf) = spawn_blocking(move || {
                let r = sys::getdents64(fd.as_raw_fd(), &mut buf);
                (r, buf)
            })
            .await;
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    self.buf = Some(buf);
                    return Err(e);
                }
            };
            if n == 0 {
                self.done = true;
                self.buf = Some(buf);
                return Ok(None);
            }
            let entries = parse(&buf[..n]);
            self.buf = Some(buf);
            if !entries.is_empty() {
                return Ok(Some(entries));
            }
        }
    }
}

/// Parses `linux_dirent64` records: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
fn parse(mut b: &[u8]) -> Vec<DirEntry> {
    let mut out = Vec::new();
    while b.len() >= 19 {
        let ino = u64::from_ne_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([b[16], b[17]]) as usize;
        if reclen < 19 || reclen > b.len() {
            break;
        }
        let dtype = b[18];
        let name = &b[19..reclen];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        if name != b"." && name != b".." {
            out.push(DirEntry {
                name: OsString::from_vec(name.to_vec()),
                ino,
                kind: FileKind::from_dtype(dtype),
            });
        }
        b = &b[reclen..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, dtype: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut r = vec![0u8; reclen];
        r[0..8].copy_from_slice(&ino.to_ne_bytes());
        r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        r[18] = dtype;
        r[19..19 + name.len()].copy_from_slice(name);
        r
    }

    #[test]
    fn parses_records_and_skips_dot_entries() {
        let mut b = record(1, libc::DT_DIR, b".");
        b.extend(record(2, libc::DT_DIR, b".."));
        b.extend(record(42, libc::DT_REG, b"file.txt"));
        b.extend(record(43, libc::DT_LNK, b"l"));
        let e = parse(&b);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].ino, e[0].kind, e[0].name.as_os_str()),
            (42, FileKind::File, std::ffi::OsStr::new("file.txt"))
        );
        assert_eq!(e[1].kind, FileKind::Symlink);
    }

    #[test]
    fn malformed_records_do_not_panic() {
        let good = record(7, libc::DT_REG, b"ok");
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&3u16.to_ne_bytes()); // reclen too small
        assert!(parse(&bad).is_empty());
        let mut huge = good;
        huge[16..18].copy_from_slice(&u16::MAX.to_ne_bytes()); // reclen past the end
        assert!(parse(&huge).is_empty());
    }
}
