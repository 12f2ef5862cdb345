//! Read-only views of snapshots through the mount, as `/.snapshots/<name>/...` (the way ZFS
//! shows `.zfs/snapshot`).
//!
//! A snapshot is a tree of its own in the metadata (see [`crate::snapshot`]), so a view needs
//! no copy: a node of snapshot tree `t` with inode number `i` is shown under the FUSE node id
//! `VIEW_BIT | t << TREE_SHIFT | i`. Live inode numbers stay below `1 << TREE_SHIFT` (about
//! 10^12), and tree ids are small counters. `.snapshots` itself is [`SNAPDIR_INO`]; it is found
//! by lookup in the root but not listed there, and it hides a live entry of the same name.
//! Everything under it is read-only (the FUSE layer answers changes with `EROFS`).

use super::{errno, get_inode, DirEntry, Fs};
use crate::error::Result;
use crate::meta::{Inode, Kind, DIRENTS, ROOT_INO, XATTRS};
use crate::pool::new_inode;
use crate::snapshot;
use redb::ReadableTable;

/// The name of the snapshot directory in the root.
pub const SNAPDIR_NAME: &[u8] = b".snapshots";
const VIEW_BIT: u64 = 1 << 63;
const TREE_SHIFT: u32 = 40;
const INO_MASK: u64 = (1 << TREE_SHIFT) - 1;
/// The node id of `/.snapshots`.
pub const SNAPDIR_INO: u64 = VIEW_BIT;

/// Whether a FUSE node id is inside `/.snapshots` (or is it).
pub fn is_view(ino: u64) -> bool {
    ino & VIEW_BIT != 0
}

/// Whether `name` in `parent` is served by the snapshot views.
pub fn is_view_name(parent: u64, name: &[u8]) -> bool {
    is_view(parent) || (parent == ROOT_INO && name == SNAPDIR_NAME)
}

/// The node id of inode `ino` of snapshot tree `tree`.
fn join(tree: u64, ino: u64) -> Result<u64> {
    if ino > INO_MASK || tree >= (VIEW_BIT >> TREE_SHIFT) || tree == 0 {
        // Not representable: the view cannot show it.
        return Err(errno(libc::EOVERFLOW));
    }
    Ok(VIEW_BIT | tree << TREE_SHIFT | ino)
}

/// The (tree, inode) a view node id stands for; `None` for `/.snapshots` itself.
fn split(id: u64) -> Option<(u64, u64)> {
    let tree = (id & !VIEW_BIT) >> TREE_SHIFT;
    (tree != 0).then_some((tree, id & INO_MASK))
}

impl Fs {
    /// The attributes of `/.snapshots`: a read-only directory as new as the newest snapshot.
    fn snapdir_inode(&self) -> Result<Inode> {
        let snaps = snapshot::list(&self.pool)?;
        let mut i = new_inode(Kind::Dir, 0o555, 0, 0, ROOT_INO);
        let newest = snaps
            .iter()
            .map(|s| s.created)
            .max_by_key(|t| (t.secs, t.nanos))
            .unwrap_or_default();
        (i.atime, i.mtime, i.ctime, i.crtime) = (newest, newest, newest, newest);
        i.nlink = 2 + snaps.len() as u32;
        Ok(i)
    }

    /// Attributes of a view node.
    pub fn view_getattr(&self, id: u64) -> Result<Inode> {
        match split(id) {
            None => self.snapdir_inode(),
            Some((tree, ino)) => self.pool.meta.view(|tx| get_inode(tx, tree, ino)),
        }
    }

    /// Look `name` up in a view directory (or `.snapshots` in the root).
    pub fn view_lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Inode)> {
        if !is_view(parent) {
            return Ok((SNAPDIR_INO, self.snapdir_inode()?));
        }
        let Some((tree, dir)) = split(parent) else {
            let snap = snapshot::list(&self.pool)?
                .into_iter()
                .find(|s| s.name.as_bytes() == name)
                .ok_or(errno(libc::ENOENT))?;
            let id = join(snap.tree, ROOT_INO)?;
            return Ok((id, self.view_getattr(id)?));
        };
        let found = self.pool.meta.view(|tx| {
            let child = tx
                .open_table(DIRENTS)?
                .get((tree, dir, name))?
                .map(|g| g.value());
            match child {
                Some(c) => Ok(Some((c, get_inode(tx, tree, c)?))),
                None if get_inode(tx, tree, dir)?.kind != Kind::Dir => Err(errno(libc::ENOTDIR)),
                None => Ok(None),
            }
        })?;
        let (child, inode) = found.ok_or(errno(libc::ENOENT))?;
        Ok((join(tree, child)?, inode))
    }

    /// Up to `max` entries of a view directory from `offset`, as [`Fs::readdir`].
    pub fn view_readdir(&self, id: u64, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let dir = self.view_getattr(id)?;
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let parent = match split(id) {
            None => ROOT_INO,
            Some((_, ROOT_INO)) => SNAPDIR_INO,
            Some((tree, _)) => join(tree, dir.parent)?,
        };
        let mut out = Vec::new();
        for (next, name, ino) in [(1, &b"."[..], id), (2, b"..", parent)] {
            if offset < next {
                let inode = match ino {
                    ROOT_INO => self.getattr(ROOT_INO)?,
                    _ => self.view_getattr(ino)?,
                };
                out.push(DirEntry {
                    next,
                    ino,
                    name: name.to_vec(),
                    inode,
                });
            }
        }
        let skip = offset.saturating_sub(2) as usize;
        let Some((tree, dir)) = split(id) else {
            for (n, s) in snapshot::list(&self.pool)?
                .into_iter()
                .enumerate()
                .skip(skip)
            {
                if out.len() >= max {
                    break;
                }
                let ino = join(s.tree, ROOT_INO)?;
                out.push(DirEntry {
                    next: n as u64 + 3,
                    ino,
                    name: s.name.into_bytes(),
                    inode: self.view_getattr(ino)?,
                });
            }
            return Ok(out);
        };
        self.pool.meta.view(|tx| {
            let t = tx.open_table(DIRENTS)?;
            let rows = t.range((tree, dir, &[][..])..(tree, dir + 1, &[][..]))?;
            for (n, row) in rows.enumerate().skip(skip) {
                if out.len() >= max {
                    break;
                }
                let (k, v) = row?;
                let child = v.value();
                out.push(DirEntry {
                    next: n as u64 + 3,
                    ino: join(tree, child)?,
                    name: k.value().2.to_vec(),
                    inode: get_inode(tx, tree, child)?,
                });
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The tree, inode number and inode of a view node that is not `/.snapshots`.
    fn view_node(&self, id: u64) -> Result<(u64, u64, Inode)> {
        let (tree, ino) = split(id).ok_or(errno(libc::EISDIR))?;
        Ok((
            tree,
            ino,
            self.pool.meta.view(|tx| get_inode(tx, tree, ino))?,
        ))
    }

    /// Read up to `len` bytes at `off` of a file in a snapshot.
    pub fn view_read(&self, id: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let (tree, ino, i) = self.view_node(id)?;
        if i.kind == Kind::Dir {
            return Err(errno(libc::EISDIR));
        }
        if off >= i.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = i.size.min(off + len as u64);
        let es = self.es();
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / es;
            let in_ext = (pos % es) as usize;
            let n = (((idx + 1) * es).min(end) - pos) as usize;
            // The snapshot holds a reference: the extent lives while the snapshot does.
            if let Some(data) = self.committed_extent_in(tree, ino, idx)? {
                let avail = data.len().saturating_sub(in_ext).min(n);
                let at = (pos - off) as usize;
                out[at..at + avail].copy_from_slice(&data[in_ext..in_ext + avail]);
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Target of a symbolic link in a snapshot.
    pub fn view_readlink(&self, id: u64) -> Result<Vec<u8>> {
        let (_, _, i) = self.view_node(id)?;
        if i.kind != Kind::Symlink {
            return Err(errno(libc::EINVAL));
        }
        Ok(i.target)
    }

    /// An xattr of a node in a snapshot.
    pub fn view_getxattr(&self, id: u64, name: &[u8]) -> Result<Vec<u8>> {
        let Some((tree, ino)) = split(id) else {
            return Err(errno(libc::ENODATA));
        };
        if name == super::POLICY_XATTR {
            let i = self.pool.meta.view(|tx| get_inode(tx, tree, ino))?;
            return i
                .policy
                .map(|p| p.to_string().into_bytes())
                .ok_or(errno(libc::ENODATA));
        }
        let v = self.pool.meta.view(|tx| {
            Ok(tx
                .open_table(XATTRS)?
                .get((tree, ino, name))?
                .map(|g| g.value().to_vec()))
        })?;
        v.ok_or(errno(libc::ENODATA))
    }

    /// The xattr names of a node in a snapshot.
    pub fn view_listxattr(&self, id: u64) -> Result<Vec<Vec<u8>>> {
        let Some((tree, ino)) = split(id) else {
            return Ok(Vec::new());
        };
        self.pool.meta.view(|tx| {
            let i = get_inode(tx, tree, ino)?;
            let mut out = Vec::new();
            if i.policy.is_some() {
                out.push(super::POLICY_XATTR.to_vec());
            }
            let t = tx.open_table(XATTRS)?;
            for row in t.range((tree, ino, &[][..])..(tree, ino + 1, &[][..]))? {
                out.push(row?.0.value().2.to_vec());
            }
            Ok(out)
        })
    }

    /// `SEEK_DATA` / `SEEK_HOLE` in a file of a snapshot.
    pub fn view_seek(&self, id: u64, offset: u64, whence: i32) -> Result<u64> {
        let (tree, ino, i) = self.view_node(id)?;
        self.seek_extents(tree, ino, i.size, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_and_stay_apart_from_live_ones() {
        for (tree, ino) in [(1, ROOT_INO), (7, 12345), ((1 << 23) - 1, INO_MASK)] {
            let id = join(tree, ino).unwrap();
            assert!(is_view(id));
            assert_eq!(split(id), Some((tree, ino)));
        }
        assert_eq!(split(SNAPDIR_INO), None);
        assert!(join(1, INO_MASK + 1).is_err());
        assert!(join(1 << 23, 1).is_err());
        assert!(join(0, 1).is_err(), "tree 0 is the live tree");
        assert!(!is_view(INO_MASK));
        assert!(is_view_name(ROOT_INO, SNAPDIR_NAME));
        assert!(!is_view_name(ROOT_INO, b".snapshot"));
        assert!(!is_view_name(5, SNAPDIR_NAME));
    }
}
