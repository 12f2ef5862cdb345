//! The filesystem: POSIX operations on inodes of the live tree, with per-file write buffering.
//!
//! Writes are buffered per file in whole-extent buffers and turned into new immutable extents at
//! `flush`/`fsync`/`release`, when a file has many dirty extents, or before operations that need
//! the committed state (truncate, seek, policy change). Each flush writes the new fragments
//! durably, then commits one metadata transaction that points the file at them and drops the
//! references to the extents they replace, then deletes fragments no longer referenced.
//! All-zero extents are stored as holes.

use crate::error::{Error, Result};
use crate::io::AlignedBuf;
use crate::meta::{self, Extent, Inode, Kind, Ts, DIRENTS, EXTMAP, INODES, LIVE, ROOT_INO, XATTRS};
use crate::policy::Policy;
use crate::pool::{new_inode, Pool, INLINE_MAX};
use redb::{ReadableTable, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod budget;
mod snapview;
use budget::{BufferBudget, Held};
pub use snapview::{is_view, is_view_name, SNAPDIR_INO, SNAPDIR_NAME};

/// The xattr through which users read and set a file's or directory's policy.
pub const POLICY_XATTR: &[u8] = b"user.dynfs.policy";

/// Flush a file once it has this many dirty extents (fewer when the pool-wide write buffer
/// budget is small for the extent size: see [`Fs::max_dirty`]).
const MAX_DIRTY_EXTENTS: usize = 16;
/// Extents a flush encodes and writes at the same time.
const FLUSH_PARALLEL: usize = 4;
/// Whether a full buffer is written by a background thread (see [`Pending`]).
const BACKGROUND_FLUSH: bool = true;
/// Extents read ahead of a sequential reader.
const READ_AHEAD: u64 = 4;

/// `renameat2` flag: fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// `renameat2` flag: atomically exchange source and target.
pub const RENAME_EXCHANGE: u32 = 2;

/// The xattr holding a POSIX access ACL.
pub const ACL_ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
/// The xattr holding a directory's POSIX default ACL, inherited by what is created in it.
pub const ACL_DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// Parse a `system.posix_acl_access` value: returns the permission bits it implies for the
/// file mode (owner, group-or-mask, other) and whether the ACL is minimal (equivalent to the
/// mode, so it need not be stored).
pub fn acl_to_mode(value: &[u8]) -> Result<(u32, bool)> {
    if value.len() < 4 || (value.len() - 4) % 8 != 0 || value[..4] != 2u32.to_le_bytes() {
        return Err(errno(libc::EINVAL));
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    let mut n = 0;
    for e in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]) as u32 & 7;
        match tag {
            ACL_USER_OBJ => user = Some(perm),
            ACL_GROUP_OBJ => group = Some(perm),
            ACL_MASK => mask = Some(perm),
            ACL_OTHER => other = Some(perm),
            _ => {}
        }
        n += 1;
    }
    match (user, group, other) {
        (Some(u), Some(g), Some(o)) => Ok(((u << 6) | (mask.unwrap_or(g) << 3) | o, n == 3)),
        _ => Err(errno(libc::EINVAL)),
    }
}

/// What a new node gets from its parent's default ACL `default` (as the kernel's
/// `posix_acl_create` does): the access ACL is the default ACL with its owner, mask (or group)
/// and other entries limited by the requested `mode`, and the mode's permission bits are
/// limited by those entries in turn. Returns the new mode and the access ACL, or `None` when
/// that ACL is minimal (the mode says everything).
pub fn acl_inherit(default: &[u8], mode: u32) -> Result<(u32, Option<Vec<u8>>)> {
    acl_to_mode(default)?;
    let mut v = default.to_vec();
    let mut mode = mode;
    let mut extended = false;
    let (mut group_obj, mut mask) = (None, None);
    for (k, e) in v[4..].chunks_exact_mut(8).enumerate() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]) as u32 & 7;
        let limited = match tag {
            ACL_USER_OBJ => {
                let p = perm & (mode >> 6);
                mode &= !0o700 | (p << 6);
                p
            }
            ACL_OTHER => {
                let p = perm & mode;
                mode &= !0o007 | p;
                p
            }
            ACL_GROUP_OBJ => {
                group_obj = Some(k);
                continue;
            }
            ACL_MASK => {
                mask = Some(k);
                extended = true;
                continue;
            }
            _ => {
                extended = true;
                continue;
            }
        };
        e[2..4].copy_from_slice(&(limited as u16).to_le_bytes());
    }
    // The group class: the mask when there is one, else the owning group's entry.
    if let Some(k) = mask.or(group_obj) {
        let e = &mut v[4 + 8 * k..4 + 8 * k + 8];
        let p = u16::from_le_bytes([e[2], e[3]]) as u32 & (mode >> 3) & 7;
        mode &= !0o070 | (p << 3);
        e[2..4].copy_from_slice(&(p as u16).to_le_bytes());
    }
    Ok((mode, extended.then_some(v)))
}

/// Rewrite an access ACL's owner, mask (or group) and other entries from `mode` (after chmod).
pub fn acl_chmod(value: &[u8], mode: u32) -> Vec<u8> {
    let mut v = value.to_vec();
    let has_mask = value
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .any(|e| u16::from_le_bytes([e[0], e[1]]) == ACL_MASK);
    for e in v.get_mut(4..).unwrap_or_default().chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = match tag {
            ACL_USER_OBJ => (mode >> 6) & 7,
            ACL_MASK => (mode >> 3) & 7,
            ACL_GROUP_OBJ if !has_mask => (mode >> 3) & 7,
            ACL_OTHER => mode & 7,
            _ => continue,
        };
        e[2..4].copy_from_slice(&(perm as u16).to_le_bytes());
    }
    v
}

fn errno(e: i32) -> Error {
    Error::Errno(e)
}

/// Buffered, not yet committed state of an open file.
#[derive(Default)]
struct FileState {
    /// Extent index → extent buffer, or `None` for "make this a hole". A buffer holds the
    /// extent's first bytes; the rest of the extent reads as zeros (so a small file does not
    /// cost a whole extent of memory).
    dirty: BTreeMap<u64, Option<AlignedBuf>>,
    /// Size including buffered writes, if it differs from the committed inode.
    size: Option<u64>,
    /// Pending modification time.
    mtime: Option<Ts>,
    /// Attribute changes made while writes were buffered, committed with them (one metadata
    /// commit per written file instead of one per `chown`/`chmod`/`utimes`).
    attrs: Option<PendingAttrs>,
    /// Full extents handed to a background writer, not yet committed.
    pending: Option<Pending>,
    /// Open handles.
    opens: u32,
    /// A link was dropped while the file was open: its last release deletes the inode if no
    /// link is left ([`Fs::reap`]). Other releases need not read the inode.
    unlinked_while_open: bool,
    /// Bytes of extent buffers held in `dirty` and `pending`, as counted in the filesystem's
    /// total ([`Fs::account`]).
    held: Held,
    /// A close left the commit of the buffered state to [`Fs::commit_deferred`]
    /// ([`Fs::defer_flush`]); cleared by any commit of it.
    close_deferred: bool,
    /// Created by this filesystem with no xattr set since: it has no ACL to keep in step with
    /// a buffered mode.
    no_xattrs: bool,
    /// When a write last went into the buffers ([`Fs::commit_stalled_buffer`] picks the
    /// file written longest ago).
    touched: Option<Instant>,
}

/// Extents taken out of a file's buffer when it filled up: a background thread encodes, hashes
/// and writes them while new writes fill the buffer again (a sequential writer never waits for
/// the disks unless the writer falls a whole buffer behind). The next request holding the file
/// that needs them committed (a full buffer again, a flush, a truncate) joins the thread and
/// commits its extents ([`Fs::finish_pending`]); until then reads and partial writes see the
/// data here.
struct Pending {
    /// Extent index → data (`None`: a hole), as handed to the writer.
    bufs: Arc<BTreeMap<u64, Option<AlignedBuf>>>,
    /// The file's size when the batch was taken: its commit sets this size. Nothing can make
    /// the committed size differ meanwhile, since every commit of the file (flush, truncate)
    /// first finishes this batch.
    size: u64,
    writer: std::thread::JoinHandle<Result<Stored>>,
}

/// Extents stored by a flush: extent index → the new extent, or `None` for a hole.
type Stored = Vec<(u64, Option<NewExtent>)>;

impl FileState {
    /// The buffered data of extent `idx`: `Some(None)` for a hole, `None` if not buffered.
    fn buffered(&self, idx: u64) -> Option<&Option<AlignedBuf>> {
        self.dirty
            .get(&idx)
            .or_else(|| self.pending.as_ref().and_then(|p| p.bufs.get(&idx)))
    }
}

/// Buffered [`SetAttr`] changes (mode, owner, times) with the change time they set.
#[derive(Debug, Clone, Copy)]
struct PendingAttrs {
    set: SetAttr,
    ctime: Ts,
}

impl PendingAttrs {
    /// Fold a later change into this one.
    fn merge(&mut self, a: &SetAttr, ctime: Ts) {
        let s = &mut self.set;
        s.mode = a.mode.or(s.mode);
        s.uid = a.uid.or(s.uid);
        s.gid = a.gid.or(s.gid);
        s.atime = a.atime.or(s.atime);
        s.mtime = a.mtime.or(s.mtime);
        self.ctime = ctime;
    }

    /// The inode fields these changes set (the ACL follows in [`apply_attrs`]).
    fn overlay(&self, i: &mut Inode) {
        let a = &self.set;
        if let Some(m) = a.mode {
            i.perm = m & 0o7777;
        }
        if let Some(u) = a.uid {
            i.uid = u;
        }
        if let Some(g) = a.gid {
            i.gid = g;
        }
        if let Some(t) = a.atime {
            i.atime = t;
        }
        if let Some(t) = a.mtime {
            i.mtime = t;
        }
        i.ctime = self.ctime;
    }
}

/// Apply `p` to inode `i` of `ino` inside `tx`, keeping an access ACL in step with the mode.
fn apply_attrs(tx: &WriteTransaction, ino: u64, i: &mut Inode, p: &PendingAttrs) -> Result<()> {
    apply_attrs_to(tx, ino, i, p, true)
}

/// [`apply_attrs`]; `may_have_acl` false (the inode is known to have no xattrs) skips the
/// lookup of an access ACL to keep in step.
fn apply_attrs_to(
    tx: &WriteTransaction,
    ino: u64,
    i: &mut Inode,
    p: &PendingAttrs,
    may_have_acl: bool,
) -> Result<()> {
    if let (Some(m), true) = (p.set.mode, may_have_acl) {
        let mut t = tx.open_table(XATTRS)?;
        let acl = t
            .get((LIVE, ino, ACL_ACCESS_XATTR))?
            .map(|g| g.value().to_vec());
        if let Some(acl) = acl {
            t.insert((LIVE, ino, ACL_ACCESS_XATTR), acl_chmod(&acl, m).as_slice())?;
        }
    }
    p.overlay(i);
    Ok(())
}

/// A new extent written by a flush, not yet referenced by the metadata.
struct NewExtent {
    id: u64,
    ext: Extent,
    /// The value to store in [`meta::INLINE`] for an inline extent.
    inline: Option<Vec<u8>>,
}

impl NewExtent {
    /// Record the extent (with one reference) in a metadata transaction.
    fn link(&self, tx: &WriteTransaction) -> Result<()> {
        match &self.inline {
            Some(v) => Pool::link_inline(tx, self.id, &self.ext, v, 1),
            None => Pool::link_extent(tx, self.id, &self.ext, 1),
        }
    }
}

/// Attribute changes for [`Fs::setattr`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Ts>,
    /// New modification time.
    pub mtime: Option<Ts>,
    /// New change time.
    pub ctime: Option<Ts>,
}

/// Filesystem usage for `statfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    /// Block size.
    pub bsize: u32,
    /// Total blocks (usable, after redundancy).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Inodes in use.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
}

/// A directory entry returned by [`Fs::readdir`].
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Offset to pass to continue after this entry.
    pub next: u64,
    /// Inode number.
    pub ino: u64,
    /// Entry name.
    pub name: Vec<u8>,
    /// The inode.
    pub inode: Inode,
}

/// A node to create ([`Fs::make_node`]).
pub struct NewNode<'a> {
    /// File type.
    pub kind: Kind,
    /// Permission bits asked for (before the umask).
    pub perm: u32,
    /// The creating process's file-creation mask.
    pub umask: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
    /// Symlink target (symlinks).
    pub target: &'a [u8],
}

/// The filesystem over a pool.
pub struct Fs {
    pool: Arc<Pool>,
    files: Mutex<HashMap<u64, Arc<Mutex<FileState>>>>,
    /// Extents being read ahead by background threads (to start each only once).
    prefetching: Arc<Mutex<std::collections::HashSet<u64>>>,
    /// Read-ahead threads, joined on drop (they hold the pool, and so its lock).
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Whole-extent buffers of committed writes, reused by the next writes (a fresh buffer
    /// costs a page fault per 4 KiB).
    spare: Mutex<Vec<AlignedBuf>>,
    /// Bytes of extent buffers held by all open files (buffered and handed to background
    /// writers, not the spare ones), within the write buffer budget (`write_buffer_mib` in
    /// `pool.toml`): a write that would take it past waits for room ([`Fs::write`]).
    buffered: Arc<BufferBudget>,
    /// The budget in bytes (`buffered.limit`).
    budget: usize,
    /// How long a writer waiting for room in the budget waits for a release before it commits
    /// the oldest idle partly written buffer, in milliseconds ([`Fs::set_buffer_stall`]).
    stall_ms: AtomicU64,
    /// Raised by every snapshot restore ([`Fs::generation`]).
    generation: AtomicU64,
    /// Inode numbers handed out from memory (`None` until the first create reads the counter).
    /// Held across a create's metadata change, so numbers are taken in commit order.
    inos: Mutex<Option<InoRange>>,
    /// The inode last read or created. Copying a small file sends about ten requests for it in
    /// a row, and only the create and the closing flush change the metadata: the others read
    /// it from here instead of the database.
    last: Mutex<Option<LastInode>>,
    /// Files whose close left their commit to [`Fs::commit_deferred`] ([`Fs::defer_flush`]).
    deferred: Mutex<Vec<u64>>,
    /// Held through a whole [`Fs::commit_deferred`]: a sync must not pass a commit of closed
    /// files that another thread took off `deferred` and has not made yet.
    committing: Mutex<()>,
    /// Extents that a lazy commit (numbered as [`crate::meta::MetaStore::write_lazy_numbered`]
    /// returns) stopped referencing, deleted once a durable commit covers that number
    /// ([`Fs::free_later`]).
    to_free: Mutex<Vec<QueuedFree>>,
}

/// Extents a lazy commit stopped referencing, with that commit's number ([`Fs::free_later`]).
type QueuedFree = (u64, Vec<(u64, Extent)>);

/// A committed inode as of a metadata commit count ([`crate::meta::MetaStore::commits`]): valid
/// while the count is unchanged, since every change to the metadata (lazy or durable, through
/// this filesystem or not) counts one commit under the metadata lock.
#[derive(Debug, Clone)]
struct LastInode {
    commits: u64,
    ino: u64,
    inode: Inode,
    /// Known to have no extended attributes (created by this filesystem, none set since).
    no_xattrs: bool,
}

/// Inode numbers reserved in the metadata: `next` is the next number to hand out, and every
/// number below `limit` is covered by the `next_ino` counter the metadata holds (or will hold
/// once the create that reserved it commits). A create whose number reaches `limit` raises the
/// counter by [`INO_RESERVE`] in its own change, so the counter is written once per that many
/// creates, not in every one, on every metadata replica; since changes commit in order, any
/// committed inode's number is below the committed counter, and numbers handed out after a
/// crash (from the counter) never collide with a surviving inode.
#[derive(Debug, Clone, Copy)]
struct InoRange {
    next: u64,
    limit: u64,
}

/// How long a writer waiting for room in the write buffer budget waits for a release before
/// it commits the oldest partly written buffer of a file nobody wrote to for that long
/// ([`Fs::set_buffer_stall`]). Writers that hold a buffer and keep writing release one at
/// every extent they fill, far more often than this; the fallback is for files left open and
/// idle, and for every writer waiting at once.
pub const DEFAULT_BUFFER_STALL: Duration = Duration::from_millis(200);

/// Most extents [`Fs::free_later`] keeps queued; past this many it makes the metadata durable
/// and deletes them at once (bounds the queue and the disk space the old fragments hold).
const MAX_QUEUED_FREES: usize = 1024;

/// Inode numbers reserved at a time (see [`InoRange`]).
const INO_RESERVE: u64 = 1024;

/// Most files whose close commit may wait for [`Fs::commit_deferred`]; past this many, a close
/// commits at once.
const MAX_DEFERRED: usize = 64;

/// Most spare extent buffers kept (two full file buffers: one filling, one being written),
/// and at most a quarter of the write buffer budget in bytes ([`Fs::max_spare`]).
const SPARE_BUFFERS: usize = 2 * MAX_DIRTY_EXTENTS;

impl Drop for Fs {
    fn drop(&mut self) {
        let readers = std::mem::take(self.readers.get_mut().unwrap_or_else(|e| e.into_inner()));
        for r in readers {
            let _ = r.join();
        }
        // Background writers of batches nobody committed (the owner dropped the filesystem
        // without flushing): wait for them, and remove their fragments again.
        let files = std::mem::take(self.files.get_mut().unwrap_or_else(|e| e.into_inner()));
        for s in files.into_values() {
            let pending = s.lock().unwrap_or_else(|e| e.into_inner()).pending.take();
            if let Some(Ok(new)) = pending.map(|p| p.writer.join()) {
                self.pool
                    .free_extents(&new_extents(new.unwrap_or_default()));
            }
        }
        // Replaced extents whose commit is durable; the others stay on disk, unreferenced
        // once their commit is durable, for the garbage collection of the next open.
        self.release_freed();
    }
}

// ---- transaction helpers (deterministic: they run once per metadata replica) ----

/// Read an inode in a write transaction (`ENOENT` if absent).
pub fn get_inode(tx: &WriteTransaction, tree: u64, ino: u64) -> Result<Inode> {
    let t = tx.open_table(INODES)?;
    let v = t.get((tree, ino))?;
    match v {
        Some(g) => meta::dec(g.value()),
        None => Err(errno(libc::ENOENT)),
    }
}

/// Store an inode in a write transaction.
pub fn put_inode(tx: &WriteTransaction, tree: u64, ino: u64, i: &Inode) -> Result<()> {
    tx.open_table(INODES)?
        .insert((tree, ino), meta::enc(i)?.as_slice())?;
    Ok(())
}

fn get_dirent(tx: &WriteTransaction, tree: u64, parent: u64, name: &[u8]) -> Result<Option<u64>> {
    let t = tx.open_table(DIRENTS)?;
    let v = t.get((tree, parent, name))?.map(|g| g.value());
    Ok(v)
}

fn dir_is_empty(tx: &WriteTransaction, tree: u64, dir: u64) -> Result<bool> {
    let t = tx.open_table(DIRENTS)?;
    let mut r = t.range((tree, dir, &[][..])..(tree, dir + 1, &[][..]))?;
    let empty = r.next().is_none();
    Ok(empty)
}

/// Delete an inode with its extent map and xattrs; returns the extents that became unreferenced.
/// A missing inode is not an error (nothing to do).
pub fn delete_inode_tx(tx: &WriteTransaction, tree: u64, ino: u64) -> Result<Vec<(u64, Extent)>> {
    let existed = tx.open_table(INODES)?.remove((tree, ino))?.is_some();
    if !existed {
        return Ok(Vec::new());
    }
    let mut freed = Vec::new();
    let entries: Vec<((u64, u64, u64), u64)> = {
        let t = tx.open_table(EXTMAP)?;
        let r = t.range((tree, ino, 0)..=(tree, ino, u64::MAX))?;
        r.map(|row| row.map(|(k, v)| (k.value(), v.value())))
            .collect::<std::result::Result<_, _>>()?
    };
    {
        let mut t = tx.open_table(EXTMAP)?;
        for (k, _) in &entries {
            t.remove(*k)?;
        }
    }
    for (_, id) in entries {
        if let Some(f) = Pool::decref(tx, id)? {
            freed.push(f);
        }
    }
    let names: Vec<Vec<u8>> = {
        let t = tx.open_table(XATTRS)?;
        let r = t.range((tree, ino, &[][..])..(tree, ino + 1, &[][..]))?;
        r.map(|row| row.map(|(k, _)| k.value().2.to_vec()))
            .collect::<std::result::Result<_, _>>()?
    };
    let mut t = tx.open_table(XATTRS)?;
    for n in names {
        t.remove((tree, ino, n.as_slice()))?;
    }
    Ok(freed)
}

fn touch_dir(tx: &WriteTransaction, dir: u64, nlink_delta: i32) -> Result<()> {
    let mut d = get_inode(tx, LIVE, dir)?;
    let now = Ts::now();
    d.mtime = now;
    d.ctime = now;
    d.nlink = (d.nlink as i64 + nlink_delta as i64).max(0) as u32;
    put_inode(tx, LIVE, dir, &d)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(errno(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// Copy `src` (zeros when `None`), `n` bytes, into `buf` at `at`, growing `buf` as needed (a
/// gap before `at` reads as zeros).
fn put(buf: &mut AlignedBuf, at: usize, n: usize, src: Option<&[u8]>) {
    if buf.len() < at {
        buf.resize(at, 0);
    }
    let overlap = (buf.len() - at).min(n);
    match src {
        Some(d) => {
            buf[at..at + overlap].copy_from_slice(&d[..overlap]);
            buf.extend_from_slice(&d[overlap..n]);
        }
        None => {
            buf[at..at + overlap].fill(0);
            buf.resize(buf.len().max(at + n), 0);
        }
    }
}

/// Whether `data` has a byte other than zero (word-wise, so it vectorizes).
fn has_data(data: &[u8]) -> bool {
    data.chunks(64)
        .any(|c| c.iter().fold(0u8, |acc, &b| acc | b) != 0)
}

/// Store extent `idx` of a file of `size` bytes: inline in the metadata when the whole file
/// fits in [`INLINE_MAX`] bytes, otherwise as fragments under `policy`.
fn store_extent(
    pool: &Pool,
    policy: Policy,
    idx: u64,
    size: u64,
    data: &[u8],
) -> Result<NewExtent> {
    if idx == 0 && size <= INLINE_MAX as u64 {
        let (id, ext, v) = pool.inline_extent(policy, data)?;
        return Ok(NewExtent {
            id,
            ext,
            inline: Some(v),
        });
    }
    let (id, ext) = pool.write_extent(policy, data)?;
    Ok(NewExtent {
        id,
        ext,
        inline: None,
    })
}

/// Store the extents `(index, data)` of a file of `size` bytes; no data, or only zeros, makes
/// a hole (stored as nothing). Up to [`FLUSH_PARALLEL`] threads take the next extent in turn,
/// so the encoding and hashing of one overlaps the fragment writes of others. On failure the
/// fragments written are removed and the first error is returned.
fn store_extents(
    pool: &Pool,
    policy: Policy,
    size: u64,
    items: &[(u64, Option<&[u8]>)],
) -> Result<Stored> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let store = |&(idx, data): &(u64, Option<&[u8]>)| -> Result<Option<NewExtent>> {
        match data {
            Some(d) if has_data(d) => store_extent(pool, policy, idx, size, d).map(Some),
            _ => Ok(None),
        }
    };
    let mut results: Vec<Option<Result<Option<NewExtent>>>> =
        (0..items.len()).map(|_| None).collect();
    if items.len() <= 1 {
        for (slot, item) in results.iter_mut().zip(items) {
            *slot = Some(store(item));
        }
    } else {
        let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        let worker = || {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(k) else {
                    break;
                };
                let r = store(item);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                done.push((k, r));
            }
            done
        };
        let mut panicked = false;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..FLUSH_PARALLEL.min(items.len()))
                .map(|_| s.spawn(worker))
                .collect();
            for h in handles {
                match h.join() {
                    Ok(done) => {
                        for (k, r) in done {
                            results[k] = Some(r);
                        }
                    }
                    Err(_) => panicked = true,
                }
            }
        });
        if panicked {
            // Whatever the panicked thread wrote is an orphan for gc.
            results.push(Some(Err(Error::io(
                pool.dir(),
                std::io::Error::other("extent writer panicked"),
            ))));
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut first_err = None;
    for (k, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(ext)) => out.push((items.get(k).map_or(0, |i| i.0), ext)),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => {
            pool.free_extents(&new_extents(out));
            Err(e)
        }
        None => Ok(out),
    }
}

/// The fragment-backed extents among `new` (to remove them again).
fn new_extents(new: Stored) -> Vec<(u64, Extent)> {
    new.into_iter()
        .filter_map(|(_, e)| e.filter(|n| n.inline.is_none()).map(|n| (n.id, n.ext)))
        .collect()
}

impl Fs {
    /// A filesystem over an open pool.
    pub fn new(pool: Pool) -> Self {
        Self::from_arc(Arc::new(pool))
    }

    /// A filesystem over a shared pool.
    pub fn from_arc(pool: Arc<Pool>) -> Self {
        let budget = pool.config().write_buffer_bytes();
        Fs {
            pool,
            files: Mutex::new(HashMap::new()),
            prefetching: Arc::new(Mutex::new(std::collections::HashSet::new())),
            readers: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            buffered: Arc::new(BufferBudget::new(budget)),
            budget,
            stall_ms: AtomicU64::new(DEFAULT_BUFFER_STALL.as_millis() as u64),
            generation: AtomicU64::new(0),
            inos: Mutex::new(None),
            last: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            committing: Mutex::new(()),
            to_free: Mutex::new(Vec::new()),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Delete fragments that a lazy commit stopped referencing: make that commit durable first,
    /// so a crash can never bring back metadata that points at deleted fragments.
    fn free(&self, freed: &[(u64, Extent)]) -> Result<()> {
        // Inline extents went with the commit that dropped them: no fragment to delete.
        if freed.iter().any(|(_, e)| !e.is_inline()) {
            self.pool.meta.sync()?;
            self.pool.free_extents(freed);
            self.release_freed();
        }
        Ok(())
    }

    /// Delete the fragments of `freed`, which the lazy commit numbered `number` stopped
    /// referencing, once a durable commit covers that commit: the next one of any kind (the
    /// periodic commit, an fsync, an unmount, or [`Fs::free`]); extents whose commit is durable
    /// already go at once. A rewrite of an extent thus costs no durable commit of its own. A
    /// crash before the deletion leaves the old fragments unreferenced (their records went with
    /// the commit), and the garbage collection at the next mount removes them.
    fn free_later(&self, number: u64, mut freed: Vec<(u64, Extent)>) -> Result<()> {
        // Inline extents went with the commit that dropped them: no fragment to delete.
        freed.retain(|(_, e)| !e.is_inline());
        if freed.is_empty() {
            return Ok(());
        }
        let queued = {
            let mut q = self.to_free.lock().unwrap_or_else(|e| e.into_inner());
            q.push((number, freed));
            q.iter().map(|(_, f)| f.len()).sum::<usize>()
        };
        if queued > MAX_QUEUED_FREES {
            self.pool.meta.sync()?;
        }
        self.release_freed();
        Ok(())
    }

    /// Delete the queued extents ([`Fs::free_later`]) whose commit is durable by now.
    fn release_freed(&self) {
        let durable = self.pool.meta.durable_commits();
        let ready: Vec<(u64, Extent)> = {
            let mut q = self.to_free.lock().unwrap_or_else(|e| e.into_inner());
            if q.iter().all(|(n, _)| *n > durable) {
                return;
            }
            let (ready, later) = std::mem::take(&mut *q)
                .into_iter()
                .partition::<Vec<_>, _>(|(n, _)| *n <= durable);
            *q = later;
            ready.into_iter().flat_map(|(_, f)| f).collect()
        };
        self.pool.free_extents(&ready);
    }

    /// Extents waiting for a durable commit before their fragments are deleted
    /// ([`Fs::free_later`]).
    pub fn queued_frees(&self) -> usize {
        let q = self.to_free.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().map(|(_, f)| f.len()).sum()
    }

    /// Make every change so far durable (metadata and the fragments it references), including
    /// the data of every file closed so far ([`Fs::commit_deferred`] first).
    pub fn sync(&self) -> Result<()> {
        self.commit_deferred()?;
        self.pool.sync_fragments()?;
        self.pool.meta.sync()?;
        self.release_freed();
        Ok(())
    }

    fn es(&self) -> u64 {
        self.pool.extent_size()
    }

    /// Bytes of extent buffers all open files hold right now (written data not yet committed,
    /// including batches being written by background threads). Kept near the pool's
    /// `write_buffer_mib`: a write that takes it past the budget commits its file's buffer.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.bytes()
    }

    /// The most bytes of extent buffers held (and reserved by writes about to fill them) at
    /// any one time since the filesystem was opened: within the budget unless a single write
    /// needed more than the budget while no other file held a buffer.
    pub fn peak_buffered_bytes(&self) -> usize {
        self.buffered.peak()
    }

    /// The write buffer budget in bytes (`write_buffer_mib`).
    pub fn buffer_budget(&self) -> usize {
        self.budget
    }

    /// Set how long a writer waiting for room in the write buffer budget waits for a release
    /// before it commits the oldest partly written buffer of a file not written to for that
    /// long ([`DEFAULT_BUFFER_STALL`]).
    pub fn set_buffer_stall(&self, stall: Duration) {
        let ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX).max(1);
        self.stall_ms.store(ms, Ordering::Relaxed);
    }

    /// How long a writer waits for room before the oldest idle buffer is committed
    /// ([`Fs::set_buffer_stall`]).
    pub fn buffer_stall(&self) -> Duration {
        Duration::from_millis(self.stall_ms.load(Ordering::Relaxed))
    }

    /// Bytes held in spare (reusable) extent buffers.
    pub fn spare_bytes(&self) -> usize {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.iter().map(|b| b.capacity()).sum()
    }

    /// The dirty extents after which a file's buffer is written out: [`MAX_DIRTY_EXTENTS`],
    /// fewer if two such buffers (one filling, one being written) would not fit in the budget.
    fn max_dirty(&self) -> usize {
        (self.budget / self.es() as usize / 2).clamp(2, MAX_DIRTY_EXTENTS)
    }

    /// Spare buffers kept: [`SPARE_BUFFERS`], or fewer to stay within a quarter of the budget.
    fn max_spare(&self) -> usize {
        (self.budget / 4 / self.es() as usize).min(SPARE_BUFFERS)
    }

    /// Recount what the extent buffers of `st` count against the budget ([`Fs::charge`]) into
    /// the filesystem-wide total.
    fn account(&self, st: &mut FileState) {
        let bytes = self.charge(st);
        st.held.set(&self.buffered, bytes);
    }

    /// What the extent buffers of `st` count against the write buffer budget: a whole extent
    /// each, however little it holds yet (a buffer grows to a whole extent as its extent
    /// fills, and a writer must not have to wait for room halfway through an extent), except
    /// the buffer of a file of at most [`INLINE_MAX`] bytes, which counts what it holds.
    fn charge(&self, st: &FileState) -> usize {
        let es = self.es() as usize;
        let small = st.size.is_some_and(|sz| sz <= INLINE_MAX as u64);
        let dirty: usize = st
            .dirty
            .values()
            .flatten()
            .map(|b| {
                if small {
                    b.capacity()
                } else {
                    es.max(b.capacity())
                }
            })
            .sum();
        let pending: usize = st
            .pending
            .iter()
            .flat_map(|p| p.bufs.values())
            .flatten()
            .map(|b| b.capacity())
            .sum();
        dirty + pending
    }

    fn state(&self, ino: u64) -> Arc<Mutex<FileState>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ino)
            .or_default()
            .clone()
    }

    fn existing_state(&self, ino: u64) -> Option<Arc<Mutex<FileState>>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }

    fn drop_state_if_idle(&self, ino: u64) {
        let mut m = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let idle = m.get(&ino).is_some_and(|s| {
            s.try_lock().is_ok_and(|st| {
                st.opens == 0
                    && st.dirty.is_empty()
                    && st.size.is_none()
                    && st.mtime.is_none()
                    && st.attrs.is_none()
                    && st.pending.is_none()
                    && !st.close_deferred
            })
        });
        if idle {
            m.remove(&ino);
        }
    }

    /// Whether committing `ino`'s buffered state now is cheap: nothing buffered, or a file small
    /// enough to be stored inline (one metadata commit, no fragment I/O), and no other request
    /// holds the file. The FUSE layer answers such requests on its session thread.
    pub fn is_light(&self, ino: u64) -> bool {
        let Some(s) = self.existing_state(ino) else {
            return true;
        };
        let Ok(st) = s.try_lock() else {
            return false;
        };
        st.pending.is_none()
            && (st.dirty.is_empty()
                || (st.size.is_some_and(|sz| sz <= INLINE_MAX as u64)
                    && st.dirty.keys().all(|&idx| idx == 0)))
    }

    /// Whether writing `len` bytes at `off` is cheap: the file stays within [`INLINE_MAX`]
    /// bytes, so the write only copies into its buffer (see [`Fs::is_light`]).
    pub fn write_is_light(&self, ino: u64, off: u64, len: usize) -> bool {
        if off.saturating_add(len as u64) > INLINE_MAX as u64 || !self.is_light(ino) {
            return false;
        }
        let size = self
            .existing_state(ino)
            .and_then(|s| s.try_lock().ok().and_then(|st| st.size));
        match size {
            Some(sz) => sz <= INLINE_MAX as u64,
            None => self.inode(ino).is_ok_and(|i| i.size <= INLINE_MAX as u64),
        }
    }

    /// Read a committed inode (from [`Fs::last`] if no metadata change committed since).
    fn inode(&self, ino: u64) -> Result<Inode> {
        if let Some(c) = self.cached(ino) {
            return Ok(c.inode);
        }
        let meta = &self.pool.meta;
        // The commit count is read under the metadata lock, with the inode: it tags exactly
        // the state read.
        let (commits, i) = meta.view(|tx| Ok((meta.commits(), get_inode(tx, LIVE, ino)?)))?;
        self.remember(LastInode {
            commits,
            ino,
            inode: i.clone(),
            no_xattrs: false,
        });
        Ok(i)
    }

    /// Read a committed inode like [`Fs::inode`], but leave [`Fs::last`] as it is: a commit
    /// of one file made beside requests for another (a deferred close) must not evict the
    /// inode those requests use.
    fn inode_peek(&self, ino: u64) -> Result<Inode> {
        if let Some(c) = self.cached(ino) {
            return Ok(c.inode);
        }
        self.pool.meta.view(|tx| get_inode(tx, LIVE, ino))
    }

    /// [`Fs::last`] if it holds `ino` and is still current.
    fn cached(&self, ino: u64) -> Option<LastInode> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|c| c.ino == ino && c.commits == self.pool.meta.commits())
            .cloned()
    }

    fn remember(&self, c: LastInode) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// After metadata change number `number` ([`MetaStore::write_lazy_numbered`]), which changed
    /// no inode but `ino`: [`Fs::last`], if it holds another inode and was current right before
    /// the change, is still current.
    ///
    /// [`MetaStore::write_lazy_numbered`]: crate::meta::MetaStore::write_lazy_numbered
    fn keep_last_past(&self, ino: u64, number: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last.as_mut() {
            if c.ino != ino && c.commits + 1 == number {
                c.commits = number;
            }
        }
    }

    /// Attributes of an inode, including buffered writes.
    pub fn getattr(&self, ino: u64) -> Result<Inode> {
        let Some(s) = self.existing_state(ino) else {
            return self.inode(ino);
        };
        // The committed inode is read under the file's lock: a flush commits and clears the
        // buffered size under it, so reading the inode first could miss both.
        let st = s.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = self.inode(ino)?;
        {
            if let Some(sz) = st.size {
                i.size = sz;
            }
            if let Some(p) = &st.attrs {
                p.overlay(&mut i);
            }
            if let Some(m) = st.mtime {
                i.mtime = m;
                i.ctime = m;
            }
            i.alloc += st
                .dirty
                .values()
                .chain(st.pending.iter().flat_map(|p| p.bufs.values()))
                .flatten()
                .map(|b| (b.len() as u64).next_multiple_of(4096))
                .sum::<u64>();
        }
        Ok(i)
    }

    /// Find `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Inode)> {
        let ino = {
            let v = self
                .pool
                .meta
                .view(|tx| get_dirent(tx, LIVE, parent, name))?;
            match v {
                Some(i) => i,
                None => {
                    // Distinguish "parent is not a directory".
                    let p = self.inode(parent)?;
                    if p.kind != Kind::Dir {
                        return Err(errno(libc::ENOTDIR));
                    }
                    return Err(errno(libc::ENOENT));
                }
            }
        };
        Ok((ino, self.getattr(ino)?))
    }

    /// Create a node (file, directory, symlink, FIFO, socket or device) named `name` in `parent`,
    /// with the permission bits `perm` (limited by the parent's default ACL, if it has one).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &[u8],
    ) -> Result<(u64, Inode)> {
        let node = NewNode {
            kind,
            perm,
            umask: 0,
            uid,
            gid,
            rdev,
            target,
        };
        self.make_node(parent, name, &node)
    }

    /// Create `node` named `name` in `parent` as a process with the file-creation mask
    /// `node.umask` asks for it: POSIX ACL semantics, as the kernel gives local filesystems.
    /// Under a parent with a default ACL the umask is ignored, the new node's access ACL (and a
    /// directory's default ACL) come from the parent's default ACL, and the mode is limited by
    /// it; elsewhere the mode is `perm & !umask`.
    pub fn make_node(&self, parent: u64, name: &[u8], node: &NewNode) -> Result<(u64, Inode)> {
        self.make_node_inner(parent, name, node)
            .map(|(ino, i, _)| (ino, i))
    }

    /// [`Fs::make_node`], also telling whether the new node has no xattrs (it inherited no
    /// ACL).
    fn make_node_inner(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
    ) -> Result<(u64, Inode, bool)> {
        let &NewNode {
            kind,
            perm,
            umask,
            uid,
            gid,
            rdev,
            target,
        } = node;
        check_name(name)?;
        let mut inos = self.inos.lock().unwrap_or_else(|e| e.into_inner());
        let range = match *inos {
            Some(r) => r,
            None => self.first_ino()?,
        };
        let ino = range.next;
        // The counter moves only when this number leaves the reserved range.
        let reserve = (ino >= range.limit).then(|| ino + INO_RESERVE);
        let (name, target) = (name.to_vec(), target.to_vec());
        let before = self.pool.meta.commits();
        let r = self.pool.meta.write_lazy(move |tx| {
            let (name, target) = (name.as_slice(), target.as_slice());
            // Each table is opened once: opening a table costs a lookup in redb's table tree.
            let mut inodes = tx.open_table(INODES)?;
            let mut p: Inode = match inodes.get((LIVE, parent))? {
                Some(g) => meta::dec(g.value())?,
                None => return Err(errno(libc::ENOENT)),
            };
            if p.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            let mut dirents = tx.open_table(DIRENTS)?;
            if dirents.get((LIVE, parent, name))?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            if let Some(limit) = reserve {
                meta::set_counter(tx, "next_ino", limit)?;
            }
            let mut xattrs = tx.open_table(XATTRS)?;
            let default_acl = match kind {
                Kind::Symlink => None,
                _ => xattrs
                    .get((LIVE, parent, ACL_DEFAULT_XATTR))?
                    .map(|g| g.value().to_vec()),
            };
            let (perm, access_acl) = match default_acl.as_deref().map(|d| acl_inherit(d, perm)) {
                Some(Ok(inherited)) => inherited,
                // No default ACL (or one that does not parse): the umask applies.
                _ => (perm & !(umask & 0o777), None),
            };
            let mut i = new_inode(kind, perm & 0o7777, uid, gid, parent);
            i.rdev = rdev;
            i.policy = p.policy;
            if kind == Kind::Symlink {
                i.target = target.to_vec();
                i.size = target.len() as u64;
            }
            // setgid directories pass their group on.
            if p.perm & libc::S_ISGID != 0 {
                i.gid = p.gid;
                if kind == Kind::Dir {
                    i.perm |= libc::S_ISGID;
                }
            }
            // A number already in use means the counter was behind: refuse rather than
            // overwrite (the change is dropped; the next create derives the range again).
            if inodes
                .insert((LIVE, ino), meta::enc(&i)?.as_slice())?
                .is_some()
            {
                return Err(Error::Meta(format!("inode number {ino} is already in use")));
            }
            dirents.insert((LIVE, parent, name), ino)?;
            if let Some(acl) = &access_acl {
                xattrs.insert((LIVE, ino, ACL_ACCESS_XATTR), acl.as_slice())?;
            }
            let inherits_default = kind == Kind::Dir && default_acl.is_some();
            if let (true, Some(acl)) = (inherits_default, &default_acl) {
                xattrs.insert((LIVE, ino, ACL_DEFAULT_XATTR), acl.as_slice())?;
            }
            let no_xattrs = access_acl.is_none() && !inherits_default;
            // What touch_dir does, on the table already open.
            let now = Ts::now();
            p.mtime = now;
            p.ctime = now;
            if kind == Kind::Dir {
                p.nlink += 1;
            }
            inodes.insert((LIVE, parent), meta::enc(&p)?.as_slice())?;
            Ok((ino, i, no_xattrs))
        });
        if let Ok((ino, i, no_xattrs)) = &r {
            // If this create was the only commit since `before`, the metadata now is exactly
            // as it left it.
            let commits = self.pool.meta.commits();
            if commits == before + 1 {
                self.remember(LastInode {
                    commits,
                    ino: *ino,
                    inode: i.clone(),
                    no_xattrs: *no_xattrs,
                });
            }
        }
        *inos = match &r {
            Ok(_) => Some(InoRange {
                next: ino + 1,
                limit: reserve.unwrap_or(range.limit),
            }),
            Err(Error::Meta(_)) => None,
            Err(_) => Some(range),
        };
        r
    }

    /// The inode numbers to hand out first: from the `next_ino` counter, or past the largest
    /// live inode if the counter is behind it (it never is, unless the metadata was edited).
    fn first_ino(&self) -> Result<InoRange> {
        let next = self.pool.meta.view(|tx| {
            let counter = meta::counter(tx, "next_ino")?;
            let t = tx.open_table(INODES)?;
            let last = t.range((LIVE, 0)..=(LIVE, u64::MAX))?.next_back();
            let past_last = match last {
                Some(row) => row?.0.value().1 + 1,
                None => 0,
            };
            Ok(counter.max(past_last).max(ROOT_INO + 1))
        })?;
        Ok(InoRange { next, limit: next })
    }

    /// Create a regular file and open it (one handle): [`Fs::mknod`] then [`Fs::open`],
    /// without reading back the inode just written.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(u64, Inode)> {
        self.create_masked(parent, name, perm, 0, uid, gid)
    }

    /// [`Fs::create`] under the file-creation mask `umask` (see [`Fs::make_node`]).
    pub fn create_masked(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(u64, Inode)> {
        let node = NewNode {
            kind: Kind::File,
            perm,
            umask,
            uid,
            gid,
            rdev: 0,
            target: b"",
        };
        let (ino, i, no_xattrs) = self.make_node_inner(parent, name, &node)?;
        let s = self.state(ino);
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        st.opens += 1;
        // Known to have no xattrs unless it inherited a default ACL.
        st.no_xattrs = no_xattrs;
        Ok((ino, i))
    }

    /// Create a hard link to `ino` named `name` in `parent`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Inode> {
        check_name(name)?;
        let name = name.to_vec();
        self.pool.meta.write_lazy(move |tx| {
            let name = name.as_slice();
            let mut i = get_inode(tx, LIVE, ino)?;
            if i.kind == Kind::Dir {
                return Err(errno(libc::EPERM));
            }
            let p = get_inode(tx, LIVE, parent)?;
            if p.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            if get_dirent(tx, LIVE, parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            i.nlink += 1;
            i.ctime = Ts::now();
            put_inode(tx, LIVE, ino, &i)?;
            tx.open_table(DIRENTS)?.insert((LIVE, parent, name), ino)?;
            touch_dir(tx, parent, 0)?;
            Ok(i)
        })?;
        self.getattr(ino)
    }

    /// After a commit that may have dropped an inode's last link: delete it unless it is open.
    fn reap(&self, ino: u64) -> Result<()> {
        if let Some(s) = self.existing_state(ino) {
            let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
            if st.opens > 0 {
                st.unlinked_while_open = true;
                return Ok(());
            }
        }
        // `None`: a link is left, and so is the file's buffered state (a closed file may still
        // hold data whose commit was deferred).
        let freed = self.pool.meta.write_lazy(move |tx| {
            let i = match get_inode(tx, LIVE, ino) {
                Ok(i) => i,
                Err(Error::Errno(libc::ENOENT)) => return Ok(Some(Vec::new())),
                Err(e) => return Err(e),
            };
            if i.nlink > 0 {
                return Ok(None);
            }
            delete_inode_tx(tx, LIVE, ino).map(Some)
        })?;
        let Some(freed) = freed else {
            return Ok(());
        };
        self.free(&freed)?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
        Ok(())
    }

    /// Remove a non-directory entry.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let name = name.to_vec();
        let ino = self.pool.meta.write_lazy(move |tx| {
            let name = name.as_slice();
            let ino = get_dirent(tx, LIVE, parent, name)?.ok_or(errno(libc::ENOENT))?;
            let mut i = get_inode(tx, LIVE, ino)?;
            if i.kind == Kind::Dir {
                return Err(errno(libc::EISDIR));
            }
            tx.open_table(DIRENTS)?.remove((LIVE, parent, name))?;
            i.nlink = i.nlink.saturating_sub(1);
            i.ctime = Ts::now();
            put_inode(tx, LIVE, ino, &i)?;
            touch_dir(tx, parent, 0)?;
            Ok(ino)
        })?;
        self.reap(ino)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(errno(libc::EINVAL));
        }
        let name = name.to_vec();
        let freed = self.pool.meta.write_lazy(move |tx| {
            let name = name.as_slice();
            let ino = get_dirent(tx, LIVE, parent, name)?.ok_or(errno(libc::ENOENT))?;
            let i = get_inode(tx, LIVE, ino)?;
            if i.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            if !dir_is_empty(tx, LIVE, ino)? {
                return Err(errno(libc::ENOTEMPTY));
            }
            tx.open_table(DIRENTS)?.remove((LIVE, parent, name))?;
            touch_dir(tx, parent, -1)?;
            delete_inode_tx(tx, LIVE, ino)
        })?;
        self.free(&freed)?;
        Ok(())
    }

    /// Rename, honouring `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(errno(libc::EINVAL));
        }
        let (name, newname) = (name.to_vec(), newname.to_vec());
        let replaced = self.pool.meta.write_lazy(move |tx| {
            let (name, newname) = (name.as_slice(), newname.as_slice());
            let src = get_dirent(tx, LIVE, parent, name)?.ok_or(errno(libc::ENOENT))?;
            let dst = get_dirent(tx, LIVE, newparent, newname)?;
            let np = get_inode(tx, LIVE, newparent)?;
            if np.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            let mut si = get_inode(tx, LIVE, src)?;
            let now = Ts::now();
            // A directory may not move below itself.
            let check_loop = |dir: u64, into: u64| -> Result<()> {
                let mut cur = into;
                loop {
                    if cur == dir {
                        return Err(errno(libc::EINVAL));
                    }
                    if cur == ROOT_INO {
                        return Ok(());
                    }
                    cur = get_inode(tx, LIVE, cur)?.parent;
                }
            };
            if flags & RENAME_EXCHANGE != 0 {
                let dst = dst.ok_or(errno(libc::ENOENT))?;
                let mut di = get_inode(tx, LIVE, dst)?;
                if si.kind == Kind::Dir {
                    check_loop(src, newparent)?;
                }
                if di.kind == Kind::Dir {
                    check_loop(dst, parent)?;
                }
                let mut t = tx.open_table(DIRENTS)?;
                t.insert((LIVE, parent, name), dst)?;
                t.insert((LIVE, newparent, newname), src)?;
                drop(t);
                if parent != newparent {
                    let delta = i32::from(si.kind == Kind::Dir) - i32::from(di.kind == Kind::Dir);
                    touch_dir(tx, parent, -delta)?;
                    touch_dir(tx, newparent, delta)?;
                } else {
                    touch_dir(tx, parent, 0)?;
                }
                if si.kind == Kind::Dir {
                    si.parent = newparent;
                }
                if di.kind == Kind::Dir {
                    di.parent = parent;
                }
                si.ctime = now;
                di.ctime = now;
                put_inode(tx, LIVE, src, &si)?;
                put_inode(tx, LIVE, dst, &di)?;
                return Ok((None, Vec::new()));
            }
            if let Some(dst) = dst {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(errno(libc::EEXIST));
                }
                if dst == src {
                    return Ok((None, Vec::new()));
                }
            }
            if si.kind == Kind::Dir {
                check_loop(src, newparent)?;
            }
            let mut replaced = None;
            let mut freed = Vec::new();
            if let Some(dst) = dst {
                let mut di = get_inode(tx, LIVE, dst)?;
                match (si.kind == Kind::Dir, di.kind == Kind::Dir) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) => {
                        if !dir_is_empty(tx, LIVE, dst)? {
                            return Err(errno(libc::ENOTEMPTY));
                        }
                        touch_dir(tx, newparent, -1)?;
                        freed = delete_inode_tx(tx, LIVE, dst)?;
                    }
                    (false, false) => {
                        di.nlink = di.nlink.saturating_sub(1);
                        di.ctime = now;
                        put_inode(tx, LIVE, dst, &di)?;
                        replaced = Some(dst);
                    }
                }
            }
            let mut t = tx.open_table(DIRENTS)?;
            t.remove((LIVE, parent, name))?;
            t.insert((LIVE, newparent, newname), src)?;
            drop(t);
            let is_dir = i32::from(si.kind == Kind::Dir);
            if parent != newparent {
                touch_dir(tx, parent, -is_dir)?;
                touch_dir(tx, newparent, is_dir)?;
                if is_dir == 1 {
                    si.parent = newparent;
                }
            } else {
                touch_dir(tx, parent, 0)?;
            }
            si.ctime = now;
            put_inode(tx, LIVE, src, &si)?;
            Ok((replaced, freed))
        })?;
        self.free(&replaced.1)?;
        if let Some(ino) = replaced.0 {
            self.reap(ino)?;
        }
        Ok(())
    }

    /// Up to `max` entries of directory `ino` starting at `offset` (0 = start; includes `.` and `..`).
    pub fn readdir(&self, ino: u64, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let dir = self.inode(ino)?;
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let mut out = Vec::new();
        if offset == 0 {
            out.push(DirEntry {
                next: 1,
                ino,
                name: b".".to_vec(),
                inode: dir.clone(),
            });
        }
        if offset <= 1 {
            let p = if ino == ROOT_INO { ino } else { dir.parent };
            out.push(DirEntry {
                next: 2,
                ino: p,
                name: b"..".to_vec(),
                inode: self.inode(p).unwrap_or_else(|_| dir.clone()),
            });
        }
        let skip = offset.saturating_sub(2);
        let children: Vec<(u64, Vec<u8>, u64)> = {
            let tx = self.pool.meta.read()?;
            let t = tx.open_table(DIRENTS)?;
            let r = t.range((LIVE, ino, &[][..])..(LIVE, ino + 1, &[][..]))?;
            let mut v = Vec::new();
            for (n, row) in r.enumerate().skip(skip as usize) {
                if out.len() + v.len() >= max {
                    break;
                }
                let (k, val) = row?;
                v.push((
                    skip + n as u64 - skip + 3,
                    k.value().2.to_vec(),
                    val.value(),
                ));
            }
            v
        };
        for (next, name, child) in children {
            if let Ok(inode) = self.getattr(child) {
                out.push(DirEntry {
                    next,
                    ino: child,
                    name,
                    inode,
                });
            }
        }
        Ok(out)
    }

    /// Target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind != Kind::Symlink {
            return Err(errno(libc::EINVAL));
        }
        Ok(i.target)
    }

    /// Change attributes.
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Inode> {
        if let Some(size) = a.size {
            self.truncate(ino, size)?;
        }
        let has_other = a.mode.is_some()
            || a.uid.is_some()
            || a.gid.is_some()
            || a.atime.is_some()
            || a.mtime.is_some()
            || a.ctime.is_some();
        if has_other {
            let ctime = a.ctime.unwrap_or_else(Ts::now);
            if let Some(s) = self.existing_state(ino) {
                let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
                // Pending buffered mtime must not override an explicit one.
                if a.mtime.is_some() {
                    st.mtime = None;
                }
                // Writes are buffered: commit these changes with them.
                if !st.dirty.is_empty() || st.size.is_some() {
                    match &mut st.attrs {
                        Some(p) => p.merge(&a, ctime),
                        None => st.attrs = Some(PendingAttrs { set: a, ctime }),
                    }
                    drop(st);
                    return self.getattr(ino);
                }
                // Nothing buffered: commit now, after any attributes still pending.
                self.flush_locked(ino, &mut st)?;
            }
            let p = PendingAttrs { set: a, ctime };
            self.pool.meta.write_lazy(move |tx| {
                let mut i = get_inode(tx, LIVE, ino)?;
                apply_attrs(tx, ino, &mut i, &p)?;
                put_inode(tx, LIVE, ino, &i)
            })?;
        }
        self.getattr(ino)
    }

    fn effective_policy(&self, i: &Inode) -> Policy {
        i.policy.unwrap_or(self.pool.config().default_policy)
    }

    /// Note an open handle on `ino`.
    pub fn open(&self, ino: u64) -> Result<()> {
        let i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Ok(());
        }
        self.state(ino)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .opens += 1;
        Ok(())
    }

    /// Close a handle: flush buffered data; delete the inode if it was the last handle of an
    /// unlinked file.
    pub fn release(&self, ino: u64) -> Result<()> {
        // A deferred close commit stays with [`Fs::commit_deferred`], unless this release may
        // have to delete the file.
        let deferred = self.existing_state(ino).is_some_and(|s| {
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            st.close_deferred && !st.unlinked_while_open
        });
        let r = if deferred { Ok(()) } else { self.flush(ino) };
        let mut unlinked = false;
        if let Some(s) = self.existing_state(ino) {
            let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
            st.opens = st.opens.saturating_sub(1);
            unlinked = st.unlinked_while_open && st.opens == 0;
        }
        if unlinked {
            match self.inode(ino) {
                Ok(i) if i.nlink == 0 => self.reap(ino)?,
                _ => {}
            }
        }
        self.drop_state_if_idle(ino);
        r
    }

    /// Read up to `len` bytes at `off`.
    pub fn read(&self, ino: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(errno(libc::EISDIR));
        }
        let state = self.existing_state(ino);
        let guard = state
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
        // Without a buffered size, the committed one is read under the file's lock (a flush
        // may have committed a new size since `i` was read).
        let size = match guard.as_ref().map(|g| g.size) {
            Some(Some(sz)) => sz,
            Some(None) => self.inode(ino)?.size,
            None => i.size,
        };
        if off >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(off + len as u64);
        let es = self.es();
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / es;
            let in_ext = (pos % es) as usize;
            let n = ((idx + 1) * es).min(end) - pos;
            let dst = &mut out[(pos - off) as usize..(pos - off + n) as usize];
            match guard.as_ref().and_then(|g| g.buffered(idx)) {
                Some(Some(buf)) => {
                    // Past the buffer's end the extent is zeros (`out` starts zeroed).
                    let have = buf.len().saturating_sub(in_ext).min(n as usize);
                    if have > 0 {
                        dst[..have].copy_from_slice(&buf[in_ext..in_ext + have]);
                    }
                }
                Some(None) => {}
                None => {
                    if in_ext == 0 || pos + n == end {
                        self.read_ahead(ino, idx + 1, size.div_ceil(es));
                    }
                    if let Some(data) = self.committed_extent(ino, idx)? {
                        let avail = data.len().saturating_sub(in_ext).min(n as usize);
                        if avail > 0 {
                            dst[..avail].copy_from_slice(&data[in_ext..in_ext + avail]);
                        }
                    }
                }
            }
            pos += n;
        }
        let m = &self.pool.metrics;
        crate::metrics::Metrics::add(&m.reads, 1);
        crate::metrics::Metrics::add(&m.bytes_read, out.len() as u64);
        Ok(out)
    }

    /// Start reading extents `from..from + READ_AHEAD` (below `limit`) of `ino` into the extent
    /// cache in the background, in parallel, so a sequential reader finds them decoded.
    fn read_ahead(&self, ino: u64, from: u64, limit: u64) {
        let wanted: Vec<(u64, Extent)> = (|| -> Result<Vec<(u64, Extent)>> {
            let tx = self.pool.meta.read()?;
            let m = tx.open_table(EXTMAP)?;
            let t = tx.open_table(meta::EXTENTS)?;
            let mut busy = self.prefetching.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            for idx in from..(from + READ_AHEAD).min(limit) {
                let Some(id) = m.get((LIVE, ino, idx))?.map(|g| g.value()) else {
                    continue;
                };
                if busy.contains(&id) || self.pool.is_cached(id) {
                    continue;
                }
                if let Some(ext) = meta::get_rec::<Extent>(&t, id)? {
                    busy.insert(id);
                    out.push((id, ext));
                }
            }
            Ok(out)
        })()
        .unwrap_or_default();
        for (id, ext) in wanted {
            let pool = self.pool.clone();
            let busy = self.prefetching.clone();
            let spawned = std::thread::Builder::new()
                .name("dynfs-readahead".into())
                .spawn(move || {
                    // Errors surface (and are repaired) when the reader reaches the extent.
                    pool.prefetch_extent(id, &ext);
                    busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                });
            match spawned {
                Ok(h) => {
                    let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
                    readers.retain(|r| !r.is_finished());
                    readers.push(h);
                }
                Err(_) => {
                    self.prefetching
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
            }
        }
    }

    /// The committed data of extent `idx` of live inode `ino`, if it has one.
    fn committed_extent(&self, ino: u64, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        self.committed_extent_in(LIVE, ino, idx)
    }

    /// [`Fs::committed_extent`] of inode `ino` of tree `tree` (a snapshot's, say).
    fn committed_extent_in(&self, tree: u64, ino: u64, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let found = self.pool.meta.view(|tx| {
            let m = tx.open_table(EXTMAP)?;
            let Some(id) = m.get((tree, ino, idx))?.map(|g| g.value()) else {
                return Ok(None);
            };
            let t = tx.open_table(meta::EXTENTS)?;
            let ext: Extent = meta::get_rec(&t, id)?
                .ok_or_else(|| Error::Meta(format!("extent {id} of inode {ino} missing")))?;
            Ok(Some((id, ext)))
        })?;
        let Some((id, ext)) = found else {
            return Ok(None);
        };
        Ok(Some(self.pool.read_extent(id, &ext)?))
    }

    /// Write `data` at `off` (buffered). Returns the bytes written.
    ///
    /// A write that needs a new extent buffer while the buffers of all open files fill the
    /// write buffer budget waits (before allocating) until other files give some back, as
    /// [`Fs::write_nowait`] and [`Fs::wait_for_buffer`] describe.
    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> Result<usize> {
        self.write_waiting(ino, off, data.len() as u64, Some(data), true)?;
        self.count_write(data.len());
        Ok(data.len())
    }

    /// [`Fs::write`] without waiting: `Ok(None)` (nothing written) when the write needs a new
    /// extent buffer and the budget has no room for it while other files hold buffers. This
    /// file's full extents are committed first (they are not written again), so they never
    /// wait for room. A file whose partly written extent would be committed to make room
    /// would have it read back and rewritten by its next write: instead, the caller waits for
    /// a release ([`Fs::wait_for_buffer`]) and tries again. When no other file holds a buffer
    /// (waiting would not help), this file's own partly written extents are committed and the
    /// write goes ahead, past the budget if it alone needs more.
    pub fn write_nowait(&self, ino: u64, off: u64, data: &[u8]) -> Result<Option<usize>> {
        if !self.write_inner(ino, off, data.len() as u64, Some(data), true, false)? {
            return Ok(None);
        }
        self.count_write(data.len());
        Ok(Some(data.len()))
    }

    /// [`Fs::write`] that never waits: without room in the budget the buffers are allocated
    /// anyway, and then this file gives back what it can at once, its full extents first and,
    /// if the total is still over the budget, its partly written ones too (a later write to
    /// one reads it back and rewrites it). Memory goes past the budget by at most what the
    /// writers running at the same time allocate (an extent each). The FUSE layer uses this
    /// after [`Fs::write_nowait`] found no room: the kernel's writeback sends a file's pages a
    /// chunk at a time, file after file, with few requests in flight, so a write held back
    /// for room holds back the pages that would fill the other files' buffers.
    pub fn write_committing(&self, ino: u64, off: u64, data: &[u8]) -> Result<usize> {
        self.write_inner(ino, off, data.len() as u64, Some(data), true, true)?;
        self.count_write(data.len());
        Ok(data.len())
    }

    fn count_write(&self, n: usize) {
        let m = &self.pool.metrics;
        crate::metrics::Metrics::add(&m.writes, 1);
        crate::metrics::Metrics::add(&m.bytes_written, n as u64);
    }

    /// The write buffer's release generation: it changes whenever a file gives buffer bytes
    /// back. Read it before [`Fs::write_nowait`] and pass it to [`Fs::wait_for_buffer`].
    pub fn buffer_generation(&self) -> u64 {
        self.buffered.generation()
    }

    /// Wait for room in the write buffer budget after a [`Fs::write_nowait`] found none at
    /// generation `seen`: until some file gives buffer bytes back, or at most `max`. `since`
    /// is when bytes were last given back (or the writer began to wait): once no bytes have
    /// come back for the stall time ([`Fs::set_buffer_stall`]), the oldest partly written
    /// buffer of a file nobody wrote to for that long is committed
    /// ([`Fs::commit_stalled_buffer`]) and `since` restarts. So a writer never waits forever:
    /// not behind an idle open file, and not when every writer waits.
    pub fn wait_for_buffer(&self, seen: u64, since: &mut Instant, max: Duration) {
        let stall = self.buffer_stall();
        let left = stall.saturating_sub(since.elapsed());
        if self.buffered.wait_release(seen, left.min(max)) {
            *since = Instant::now();
        } else if since.elapsed() >= stall {
            self.commit_stalled_buffer(stall);
            *since = Instant::now();
        }
    }

    /// Wait until some file gives buffer bytes back after generation `seen`
    /// ([`Fs::buffer_generation`]), or `timeout` passes; returns whether bytes came back.
    pub fn wait_buffer_release(&self, seen: u64, timeout: Duration) -> bool {
        self.buffered.wait_release(seen, timeout)
    }

    /// The state of every open file, taken out of the table (so that none is locked while
    /// the table is).
    fn open_file_states(&self) -> Vec<(u64, Arc<Mutex<FileState>>)> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&ino, s)| (ino, s.clone()))
            .collect()
    }

    /// Commit the full extents that other files hold in their buffers (and their batches with
    /// the background writer), until at least `want` bytes are given back: a full extent is not
    /// written again, so committing it early costs nothing later. Files other requests hold
    /// are skipped. Returns whether any bytes were given back. A file whose writer has filled
    /// its extents and not closed it yet (the kernel's writeback sends a file's pages in turn,
    /// and the close only when all are written) would otherwise keep them until its close.
    pub fn commit_full_buffers(&self, want: usize) -> bool {
        let states = self.open_file_states();
        let es = self.es();
        let mut given = 0;
        for (ino, s) in states {
            if given >= want {
                break;
            }
            let Ok(mut st) = s.try_lock() else {
                continue;
            };
            let Some(size) = st.size else {
                continue;
            };
            let full = st.pending.is_some()
                || st.dirty.iter().any(|(&idx, b)| {
                    (idx + 1) * es <= size && b.as_ref().is_some_and(|b| b.len() as u64 == es)
                });
            if !full {
                continue;
            }
            let Ok(i) = self.inode_peek(ino) else {
                continue;
            };
            let before = st.held.bytes();
            let policy = self.effective_policy(&i);
            let _ = self.finish_pending(ino, &mut st).is_ok()
                && self.start_pending(policy, &mut st, 1)
                && self.finish_pending(ino, &mut st).is_ok();
            given += before.saturating_sub(st.held.bytes());
        }
        given > 0
    }

    /// Commit the buffers of the file whose buffers were written to longest ago, if that was at
    /// least `idle` ago and no request holds the file. Returns whether one was committed.
    pub fn commit_stalled_buffer(&self, idle: Duration) -> bool {
        let states = self.open_file_states();
        let oldest = states
            .iter()
            .filter_map(|(ino, s)| {
                let st = s.try_lock().ok()?;
                let holds = st.held.bytes() > 0;
                let touched = st.touched?;
                (holds && touched.elapsed() >= idle).then_some((touched, *ino))
            })
            .min();
        let Some((_, ino)) = oldest else {
            return false;
        };
        let Some(s) = self.existing_state(ino) else {
            return false;
        };
        let Ok(mut st) = s.try_lock() else {
            return false;
        };
        crate::metrics::Metrics::add(&self.pool.metrics.stalled_buffer_commits, 1);
        tracing::debug!(
            ino,
            "committing an idle file's buffers to make room for a writer"
        );
        if let Err(e) = self.flush_locked(ino, &mut st) {
            tracing::warn!(ino, error = %e, "committing an idle file's buffers failed");
        }
        true
    }

    /// Write like [`Fs::write_nowait`], waiting for room in the budget as long as needed.
    fn write_waiting(
        &self,
        ino: u64,
        off: u64,
        len: u64,
        data: Option<&[u8]>,
        extend: bool,
    ) -> Result<()> {
        let mut since: Option<Instant> = None;
        loop {
            let seen = self.buffered.generation();
            if self.write_inner(ino, off, len, data, extend, false)? {
                return Ok(());
            }
            let since = since.get_or_insert_with(|| {
                crate::metrics::Metrics::add(&self.pool.metrics.buffer_waits, 1);
                Instant::now()
            });
            if self.commit_full_buffers(self.es() as usize) {
                continue;
            }
            self.wait_for_buffer(seen, since, self.buffer_stall());
        }
    }

    /// Write `data` (or zeros when `None`) over `[off, off+len)`; extend the size if `extend`.
    /// Returns `false`, having written nothing, when the buffers it needs do not fit in the
    /// budget ([`Fs::write_nowait`]), unless `commit` ([`Fs::write_committing`]).
    fn write_inner(
        &self,
        ino: u64,
        off: u64,
        len: u64,
        data: Option<&[u8]>,
        extend: bool,
        commit: bool,
    ) -> Result<bool> {
        let i = self.inode(ino)?;
        if i.kind != Kind::File {
            return Err(errno(if i.kind == Kind::Dir {
                libc::EISDIR
            } else {
                libc::EINVAL
            }));
        }
        let end = off.checked_add(len).ok_or(errno(libc::EFBIG))?;
        if end > i64::MAX as u64 {
            return Err(errno(libc::EFBIG));
        }
        let s = self.state(ino);
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        // Without a buffered size, read the committed size under the lock: a flush of another
        // request may have committed (and cleared) a larger size since `i` was read, and taking
        // the stale size would shrink the file.
        let size = match st.size {
            Some(sz) => sz,
            None => self.inode(ino)?.size,
        };
        if !self.reserve_buffers(ino, &i, &mut st, off, end, data.is_none(), size)? {
            if !commit {
                return Ok(false);
            }
            let need = self.buffer_growth(&st, off, end, data.is_none(), size);
            st.held.reserve(&self.buffered, need, true);
        }
        let filled = self.fill_buffers(ino, &mut st, off, end, data, extend, size);
        if filled.is_err() {
            // Give back what was reserved and not used.
            self.account(&mut st);
        }
        filled?;
        if st.dirty.len() >= self.max_dirty() {
            // Hand the full extents to a background writer (after committing the previous
            // batch); with few full extents (random writes), flush everything now.
            let policy = self.effective_policy(&i);
            let min_full = self.max_dirty() / 2;
            if self.finish_pending(ino, &mut st).is_err()
                || !self.start_pending(policy, &mut st, min_full)
            {
                self.flush_locked(ino, &mut st)?;
            }
        } else if commit && self.buffered_bytes() > self.budget {
            // Past the budget: give back what this file can, its full extents first (they are
            // not rewritten later), then its partly written ones.
            let policy = self.effective_policy(&i);
            let written = self.finish_pending(ino, &mut st).is_ok()
                && self.start_pending(policy, &mut st, 1)
                && self.finish_pending(ino, &mut st).is_ok();
            if !written && self.buffered_bytes() > self.budget {
                self.flush_locked(ino, &mut st)?;
            }
        }
        Ok(true)
    }

    /// Reserve room in the budget for the buffers a write over `[off, end)` of `ino` (`zeros`:
    /// of zeros) allocates. Without room, first commit the file's full extents and its batch
    /// with the background writer; still without room, return `false` if other files hold
    /// buffers (the caller waits for them to give some back), else commit this file's buffers
    /// (waiting would not help) and reserve past the budget if need be.
    #[allow(clippy::too_many_arguments)]
    fn reserve_buffers(
        &self,
        ino: u64,
        i: &Inode,
        st: &mut FileState,
        off: u64,
        end: u64,
        zeros: bool,
        size: u64,
    ) -> Result<bool> {
        let need = self.buffer_growth(st, off, end, zeros, size);
        if need == 0 || st.held.reserve(&self.buffered, need, false) {
            return Ok(true);
        }
        let policy = self.effective_policy(i);
        let _ = self.finish_pending(ino, st).is_ok()
            && self.start_pending(policy, st, 1)
            && self.finish_pending(ino, st).is_ok();
        let need = self.buffer_growth(st, off, end, zeros, size);
        if need == 0 || st.held.reserve(&self.buffered, need, false) {
            return Ok(true);
        }
        if self.buffered.bytes() > st.held.bytes() {
            return Ok(false);
        }
        if st.held.bytes() > 0 {
            self.flush_locked(ino, st)?;
        }
        let need = self.buffer_growth(st, off, end, zeros, size);
        st.held.reserve(&self.buffered, need, true);
        Ok(true)
    }

    /// The most a write over `[off, end)` (`zeros`: of zeros) of a file of `size` bytes adds
    /// to what the buffers of `st` count against the budget ([`Fs::charge`]): a whole extent
    /// for each extent it touches that has no buffer yet (and for each buffer of a small file
    /// that the write makes large).
    fn buffer_growth(&self, st: &FileState, off: u64, end: u64, zeros: bool, size: u64) -> usize {
        let es = self.es();
        if size.max(end) <= INLINE_MAX as u64 {
            // A small file's one buffer: at most twice what it holds (it grows by doubling).
            return 2 * INLINE_MAX;
        }
        let mut new = 0;
        let mut pos = off;
        while pos < end {
            let idx = pos / es;
            let in_ext = pos % es;
            let n = ((idx + 1) * es).min(end) - pos;
            pos += n;
            let hole = zeros && in_ext == 0 && n == es;
            if !hole && !matches!(st.dirty.get(&idx), Some(Some(_))) {
                new += 1;
            }
        }
        let buffers = st.dirty.values().flatten().count() + new;
        let pending: usize = st
            .pending
            .iter()
            .flat_map(|p| p.bufs.values())
            .flatten()
            .map(|b| b.capacity())
            .sum();
        (buffers * es as usize + pending).saturating_sub(st.held.bytes())
    }

    /// Write `data` at `off` into the file's buffer if that can be done right now with nothing
    /// but a copy: the file already has buffered writes, its lock is free, every extent touched
    /// is already buffered or overwritten whole (no committed extent to read), and the buffer
    /// does not fill up (no flush). Returns `None`, changing nothing, otherwise; the caller
    /// then uses [`Fs::write`]. The FUSE layer calls this on its session thread, which saves
    /// copying the request's data and handing it to a worker for most sequential writes.
    pub fn try_write_buffered(&self, ino: u64, off: u64, data: &[u8]) -> Option<Result<usize>> {
        let s = self.existing_state(ino)?;
        let mut st = s.try_lock().ok()?;
        // A buffered size means an earlier write (which checked the inode is a file) or a
        // truncate of this file is still buffered.
        let size = st.size?;
        let end = off.checked_add(data.len() as u64)?;
        if data.is_empty() || end > i64::MAX as u64 {
            return None;
        }
        let es = self.es();
        let (first, last) = (off / es, (end - 1) / es);
        let mut added = 0;
        for idx in first..=last {
            let whole = off <= idx * es && (idx + 1) * es <= end;
            // A partly written extent starts from its buffered data: in `dirty`, with the
            // background writer, or none at all when it starts at or past the buffered size
            // (which is at least the committed size, so nothing is committed there). Anything
            // else needs the committed extent read: not here.
            let pending = st
                .pending
                .as_ref()
                .is_some_and(|p| p.bufs.contains_key(&idx));
            match st.dirty.get(&idx) {
                // A hole marker: the extent starts from zeros.
                Some(_) => {}
                None if whole || pending || idx * es >= size => added += 1,
                _ => return None,
            }
        }
        if st.dirty.len() + added >= self.max_dirty() {
            return None;
        }
        let need = self.buffer_growth(&st, off, end, false, size);
        if need > 0 && !st.held.reserve(&self.buffered, need, false) {
            return None;
        }
        let r = self.fill_buffers(ino, &mut st, off, end, Some(data), true, size);
        if r.is_err() {
            self.account(&mut st);
        }
        drop(st);
        self.count_write(data.len());
        Some(r.map(|()| data.len()))
    }

    /// Copy `data` (zeros when `None`) over `[off, end)` into the buffers of `st`, starting
    /// partially written extents from their buffered or committed data; extend the buffered
    /// size past `size` (the current one) if `extend`, and set the buffered mtime.
    #[allow(clippy::too_many_arguments)]
    fn fill_buffers(
        &self,
        ino: u64,
        st: &mut FileState,
        off: u64,
        end: u64,
        data: Option<&[u8]>,
        extend: bool,
        size: u64,
    ) -> Result<()> {
        let es = self.es();
        let mut pos = off;
        while pos < end {
            let idx = pos / es;
            let in_ext = (pos % es) as usize;
            let n = (((idx + 1) * es).min(end) - pos) as usize;
            let whole = in_ext == 0 && n as u64 == es;
            if data.is_none() && whole {
                st.dirty.insert(idx, None);
            } else {
                if !matches!(st.dirty.get(&idx), Some(Some(_))) {
                    let mut buf = AlignedBuf::new();
                    if !st.dirty.contains_key(&idx) && !whole {
                        // A partial write starts from the data buffered for the background
                        // writer, or else from the committed extent (none at or past the
                        // size, which is at least the committed size).
                        match st.pending.as_ref().and_then(|p| p.bufs.get(&idx)) {
                            Some(Some(b)) => buf.extend_from_slice(b),
                            Some(None) => {}
                            None if idx * es >= size => {}
                            None => {
                                crate::metrics::Metrics::add(
                                    &self.pool.metrics.partial_readbacks,
                                    1,
                                );
                                if let Some(d) = self.committed_extent(ino, idx)? {
                                    let l = d.len().min(es as usize);
                                    buf.extend_from_slice(&d[..l]);
                                }
                            }
                        }
                    }
                    st.dirty.insert(idx, Some(buf));
                }
                if let Some(Some(buf)) = st.dirty.get_mut(&idx) {
                    if buf.capacity() < in_ext + n && in_ext + n > es as usize / 2 {
                        // A sequential writer fills the extent: allocate it whole, once.
                        let mut whole_buf = self.spare_buffer(es as usize);
                        whole_buf.extend_from_slice(buf);
                        *buf = whole_buf;
                    }
                    let from = (pos - off) as usize;
                    let src = data.map(|d| &d[from..from + n]);
                    put(buf, in_ext, n, src);
                }
            }
            pos += n as u64;
        }
        self.account(st);
        st.touched = Some(Instant::now());
        if extend && end > size {
            st.size = Some(end);
        } else if st.size.is_none() {
            st.size = Some(size);
        }
        st.mtime = Some(Ts::now());
        Ok(())
    }

    /// A buffer of capacity `cap` for new extent data: a spare one if there is one.
    fn spare_buffer(&self, cap: usize) -> AlignedBuf {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match spare {
            Some(mut b) if b.capacity() >= cap => {
                b.clear();
                b
            }
            _ => AlignedBuf::with_capacity(cap),
        }
    }

    /// Keep the whole-extent buffers of a committed batch for reuse.
    fn recycle(&self, bufs: Arc<BTreeMap<u64, Option<AlignedBuf>>>) {
        let Ok(bufs) = Arc::try_unwrap(bufs) else {
            return;
        };
        let es = self.es() as usize;
        let max = self.max_spare();
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        for b in bufs.into_values().flatten() {
            if spare.len() >= max {
                break;
            }
            if b.capacity() == es {
                spare.push(b);
            }
        }
    }

    /// Move the full extents (and holes) of the buffer to a background writer. Returns false,
    /// changing nothing, if there are fewer than `min_full` of them, a batch is already being
    /// written, or no thread can start.
    fn start_pending(&self, policy: Policy, st: &mut FileState, min_full: usize) -> bool {
        let es = self.es();
        let Some(size) = st.size else {
            return false;
        };
        let full: Vec<u64> = st
            .dirty
            .iter()
            .filter(|(&idx, b)| {
                (idx + 1) * es <= size && b.as_ref().is_none_or(|b| b.len() as u64 == es)
            })
            .map(|(&idx, _)| idx)
            .collect();
        if !BACKGROUND_FLUSH || full.is_empty() || full.len() < min_full || st.pending.is_some() {
            return false;
        }
        let bufs: BTreeMap<u64, Option<AlignedBuf>> = full
            .iter()
            .filter_map(|idx| st.dirty.remove(idx).map(|b| (*idx, b)))
            .collect();
        let bufs = Arc::new(bufs);
        let (pool, work) = (self.pool.clone(), bufs.clone());
        let spawned = std::thread::Builder::new()
            .name("dynfs-flush".into())
            .spawn(move || {
                let items: Vec<(u64, Option<&[u8]>)> =
                    work.iter().map(|(&idx, b)| (idx, b.as_deref())).collect();
                store_extents(&pool, policy, size, &items)
            });
        match spawned {
            Ok(writer) => {
                st.pending = Some(Pending { bufs, size, writer });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a flush thread; flushing in place");
                let bufs = Arc::try_unwrap(bufs).unwrap_or_else(|a| (*a).clone());
                st.dirty.extend(bufs);
                false
            }
        }
    }

    /// Wait for the background writer of `ino`, if any, and commit its extents. On failure the
    /// data goes back into the buffer (unless overwritten since), so a later flush retries it.
    fn finish_pending(&self, ino: u64, st: &mut FileState) -> Result<()> {
        let Some(p) = st.pending.take() else {
            return Ok(());
        };
        let written = p.writer.join().unwrap_or_else(|_| {
            Err(Error::io(
                self.pool.dir(),
                std::io::Error::other("extent writer panicked"),
            ))
        });
        let r = written.and_then(|new| self.commit_extents(ino, new, p.size, None, None));
        let r = match r {
            Ok(()) => {
                self.recycle(p.bufs);
                Ok(())
            }
            Err(e) => {
                let bufs = Arc::try_unwrap(p.bufs).unwrap_or_else(|a| (*a).clone());
                for (idx, b) in bufs {
                    st.dirty.entry(idx).or_insert(b);
                }
                Err(e)
            }
        };
        self.account(st);
        r
    }

    /// Commit buffered writes of `ino` (durably).
    pub fn flush(&self, ino: u64) -> Result<()> {
        if let Some(s) = self.existing_state(ino) {
            let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
            self.flush_locked(ino, &mut st)?;
        }
        Ok(())
    }

    /// Close (FUSE `FLUSH`) of a file whose buffered state is small enough to be stored inline
    /// (one metadata change, no fragment I/O): leave its commit to [`Fs::commit_deferred`], so
    /// the close returns without waiting for it. Returns `false`, changing nothing, if the file
    /// has nothing buffered, is larger, is busy, was unlinked while open, or too many closes
    /// wait already; the caller then commits with [`Fs::flush`].
    ///
    /// What a close promises is kept: the data is visible at once to every request (reads,
    /// `getattr` and `readdir` see the buffered state), [`Fs::sync`] (`fsync` of any file or
    /// directory, unmount) commits every deferred close before making anything durable, and
    /// the caller is expected to call [`Fs::commit_deferred`] within moments (the FUSE layer
    /// does it from a thread of its own, after the next create or within a few milliseconds).
    /// Only an error of the commit is no longer reported to the close (it is logged, and the
    /// data stays buffered for the next commit of the file).
    pub fn defer_flush(&self, ino: u64) -> bool {
        let Some(s) = self.existing_state(ino) else {
            return false;
        };
        let Ok(mut st) = s.try_lock() else {
            return false;
        };
        let small = st.pending.is_none()
            && st.size.is_some_and(|sz| sz <= INLINE_MAX as u64)
            && st.dirty.keys().all(|&idx| idx == 0);
        if !small || st.unlinked_while_open {
            return false;
        }
        if st.close_deferred {
            return true;
        }
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if deferred.len() >= MAX_DEFERRED {
            return false;
        }
        deferred.push(ino);
        st.close_deferred = true;
        true
    }

    /// Whether some close waits for [`Fs::commit_deferred`].
    pub fn has_deferred(&self) -> bool {
        !self
            .deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Commit the buffered state of every file whose close was deferred ([`Fs::defer_flush`]).
    /// A file that fails keeps its data buffered, and its next close or release commits it
    /// (and reports the error) again; the first error is returned.
    pub fn commit_deferred(&self) -> Result<()> {
        // Waits for a commit in progress on another thread (the closer), so that what a sync
        // makes durable includes every file closed before it began.
        let _committing = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        let inos = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first_err = None;
        for ino in inos {
            let Some(s) = self.existing_state(ino) else {
                continue;
            };
            let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
            if !st.close_deferred {
                continue;
            }
            if let Err(e) = self.flush_locked(ino, &mut st) {
                st.close_deferred = false;
                tracing::warn!(ino, error = %e, "committing a closed file failed");
                first_err.get_or_insert(e);
            }
            drop(st);
            self.drop_state_if_idle(ino);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Replace the live tree with snapshot `name` on a filesystem in use (the snapshot is
    /// kept). Buffered writes are committed and made durable first, so the tree replaced is
    /// the one every request saw. Fails with [`Error::Invalid`], changing nothing, when there
    /// is no such snapshot.
    ///
    /// Inode numbers stay: a file the snapshot also has (the same inode number) reads and
    /// writes the snapshot's content from then on, one it does not have fails with `ENOENT`.
    /// A write that races with the restore lands in the restored tree (or fails so). The
    /// inode generation ([`Fs::generation`]) goes up, so that the FUSE layer can make the
    /// kernel drop every inode it cached (and fail handles opened before with `EIO`).
    pub fn restore_snapshot(&self, name: &str) -> Result<()> {
        if !crate::snapshot::list(&self.pool)?
            .iter()
            .any(|s| s.name == name)
        {
            return Err(Error::Invalid(format!("no snapshot named {name:?}")));
        }
        self.flush_all()?;
        self.sync()?;
        crate::snapshot::restore(&self.pool, name)?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The inode generation: 0 at open, raised by every [`Fs::restore_snapshot`] (a restored
    /// inode is not the inode of that number the kernel may have cached).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Collect orphan fragments and unlinked inodes on a filesystem in use
    /// ([`Pool::gc_mounted`]): buffered writes are committed first, fragments being written
    /// are kept, and so are unlinked files still open (their last close deletes them).
    pub fn gc(&self) -> Result<crate::pool::GcReport> {
        self.flush_all()?;
        self.sync()?;
        self.pool.gc_mounted(&|ino| {
            self.existing_state(ino).is_some_and(|s| {
                let st = s.lock().unwrap_or_else(|e| e.into_inner());
                st.opens > 0 || st.pending.is_some() || !st.dirty.is_empty()
            })
        })
    }

    /// Inodes with open handles or buffered state (what the kernel may hold open).
    pub fn open_inodes(&self) -> Vec<u64> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Commit buffered writes of `ino` and make all metadata durable.
    pub fn fsync(&self, ino: u64) -> Result<()> {
        self.flush(ino)?;
        self.sync()
    }

    /// Commit every file's buffered writes.
    pub fn flush_all(&self) -> Result<()> {
        let inos: Vec<u64> = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let mut first_err = None;
        for ino in inos {
            if let Err(e) = self.flush(ino) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn flush_locked(&self, ino: u64, st: &mut FileState) -> Result<()> {
        // The background batch commits first; if it failed, its data is back in `dirty` and
        // is retried below.
        let _ = self.finish_pending(ino, st);
        if st.dirty.is_empty() && st.size.is_none() && st.mtime.is_none() && st.attrs.is_none() {
            st.close_deferred = false;
            return Ok(());
        }
        let i = match self.inode_peek(ino) {
            Ok(i) => i,
            Err(Error::Errno(libc::ENOENT)) => {
                st.dirty.clear();
                self.account(st);
                st.size = None;
                st.mtime = None;
                st.attrs = None;
                st.close_deferred = false;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let size = st.size.unwrap_or(i.size);
        let policy = self.effective_policy(&i);
        let es = self.es();
        // 1. Write new fragments (durable before any durable commit references them).
        // Buffers shorter than their extent's data end in zeros.
        for (&idx, buf) in st.dirty.iter_mut() {
            let len = size.saturating_sub(idx * es).min(es) as usize;
            if let Some(b) = buf {
                if b.len() < len {
                    b.resize(len, 0);
                }
            }
        }
        let work: Vec<(u64, Option<&[u8]>)> = st
            .dirty
            .iter()
            .map(|(&idx, buf)| {
                let len = size.saturating_sub(idx * es).min(es) as usize;
                (idx, buf.as_ref().map(|b| &b[..len]))
            })
            .collect();
        let new = store_extents(&self.pool, policy, size, &work)?;
        // 2. Commit metadata referencing them. A file created here with no xattr set since has
        // no ACL to keep in step with a buffered mode; the file's lock, held here, keeps any
        // xattr change out meanwhile.
        let may_have_acl = !(st.no_xattrs || self.cached(ino).is_some_and(|c| c.no_xattrs));
        self.commit_extents_with(ino, new, size, st.mtime, st.attrs, may_have_acl)?;
        let dirty = std::mem::take(&mut st.dirty);
        self.recycle(Arc::new(dirty));
        self.account(st);
        st.size = None;
        st.mtime = None;
        st.attrs = None;
        st.close_deferred = false;
        Ok(())
    }

    /// Commit new extents of `ino` (`None`: a hole) and its size, with the buffered mtime and
    /// attribute changes; then delete the fragments the commit stopped referencing. On
    /// failure the new extents' fragments are removed.
    fn commit_extents(
        &self,
        ino: u64,
        new: Stored,
        size: u64,
        mtime: Option<Ts>,
        attrs: Option<PendingAttrs>,
    ) -> Result<()> {
        self.commit_extents_with(ino, new, size, mtime, attrs, true)
    }

    /// [`Fs::commit_extents`]; `may_have_acl` false skips looking for an access ACL to keep in
    /// step with a buffered mode (see [`apply_attrs_to`]). The change opens the inode and
    /// extent-map tables once each (an open costs a lookup in redb's table tree, on the
    /// primary and again on every secondary replaying it).
    fn commit_extents_with(
        &self,
        ino: u64,
        new: Stored,
        size: u64,
        mtime: Option<Ts>,
        attrs: Option<PendingAttrs>,
        may_have_acl: bool,
    ) -> Result<()> {
        let new = Arc::new(new);
        let committed = self.pool.meta.write_lazy_numbered({
            let new = new.clone();
            move |tx| {
                let mut inodes = tx.open_table(INODES)?;
                let mut inode: Inode = match inodes.get((LIVE, ino))? {
                    Some(g) => meta::dec(g.value())?,
                    None => return Err(errno(libc::ENOENT)),
                };
                let mut freed = Vec::new();
                let mut m = tx.open_table(EXTMAP)?;
                for (idx, ext) in new.iter() {
                    let old = m.get((LIVE, ino, *idx))?.map(|g| g.value());
                    if let Some(old) = old {
                        let t = tx.open_table(meta::EXTENTS)?;
                        if let Some(e) = meta::get_rec::<Extent>(&t, old)? {
                            inode.alloc = inode.alloc.saturating_sub(e.len as u64);
                        }
                        drop(t);
                        if let Some(f) = Pool::decref(tx, old)? {
                            freed.push(f);
                        }
                    }
                    match ext {
                        Some(n) => {
                            m.insert((LIVE, ino, *idx), n.id)?;
                            n.link(tx)?;
                            inode.alloc += n.ext.len as u64;
                        }
                        None => {
                            m.remove((LIVE, ino, *idx))?;
                        }
                    }
                }
                drop(m);
                inode.size = size;
                if let Some(p) = &attrs {
                    apply_attrs_to(tx, ino, &mut inode, p, may_have_acl)?;
                }
                if let Some(t) = mtime {
                    inode.mtime = t;
                    inode.ctime = t;
                }
                inodes.insert((LIVE, ino), meta::enc(&inode)?.as_slice())?;
                Ok(freed)
            }
        });
        match committed {
            // 3. Delete what the commit stopped referencing only after a durable commit covers
            // it (queued: the next durable commit of any kind).
            Ok((freed, number)) => {
                self.pool
                    .extents_committed(new.iter().filter_map(|(_, e)| e.as_ref().map(|n| n.id)));
                // The change wrote no inode but this one (the extent tables, and this file's
                // ACL): the inode another request is working on stays cached.
                self.keep_last_past(ino, number);
                self.free_later(number, freed)
            }
            Err(e) => {
                let new = Arc::try_unwrap(new).unwrap_or_default();
                self.pool.free_extents(&new_extents(new));
                Err(e)
            }
        }
    }

    /// Set the size of a file, freeing extents past the end and trimming a partial last extent.
    pub fn truncate(&self, ino: u64, size: u64) -> Result<()> {
        let i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(errno(libc::EISDIR));
        }
        if i.kind != Kind::File {
            return Err(errno(libc::EINVAL));
        }
        let s = self.state(ino);
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(ino, &mut st)?;
        let i = self.inode(ino)?;
        let es = self.es();
        let policy = self.effective_policy(&i);
        // A partial last extent is rewritten so bytes past the new end read as zeros later.
        let mut partial = None;
        if size < i.size && size % es != 0 {
            let idx = size / es;
            if let Some(d) = self.committed_extent(ino, idx)? {
                let keep = ((size % es) as usize).min(d.len());
                if d.len() > keep {
                    partial = Some((idx, self.pool.write_extent(policy, &d[..keep])?));
                }
            }
        }
        let first_gone = size.div_ceil(es);
        let partial = Arc::new(partial);
        let r = self.pool.meta.write_lazy({
            let partial = partial.clone();
            move |tx| {
                let mut inode = get_inode(tx, LIVE, ino)?;
                let mut freed = Vec::new();
                if size < inode.size {
                    let gone: Vec<(u64, u64)> = {
                        let t = tx.open_table(EXTMAP)?;
                        let r = t.range((LIVE, ino, first_gone)..=(LIVE, ino, u64::MAX))?;
                        r.map(|row| row.map(|(k, v)| (k.value().2, v.value())))
                            .collect::<std::result::Result<_, _>>()?
                    };
                    for (idx, id) in gone {
                        tx.open_table(EXTMAP)?.remove((LIVE, ino, idx))?;
                        let t = tx.open_table(meta::EXTENTS)?;
                        if let Some(e) = meta::get_rec::<Extent>(&t, id)? {
                            inode.alloc = inode.alloc.saturating_sub(e.len as u64);
                        }
                        drop(t);
                        if let Some(f) = Pool::decref(tx, id)? {
                            freed.push(f);
                        }
                    }
                    if let Some((idx, (nid, next))) = &*partial {
                        let old = tx
                            .open_table(EXTMAP)?
                            .get((LIVE, ino, *idx))?
                            .map(|g| g.value());
                        if let Some(old) = old {
                            let t = tx.open_table(meta::EXTENTS)?;
                            if let Some(e) = meta::get_rec::<Extent>(&t, old)? {
                                inode.alloc = inode.alloc.saturating_sub(e.len as u64);
                            }
                            drop(t);
                            if let Some(f) = Pool::decref(tx, old)? {
                                freed.push(f);
                            }
                        }
                        tx.open_table(EXTMAP)?.insert((LIVE, ino, *idx), *nid)?;
                        Pool::link_extent(tx, *nid, next, 1)?;
                        inode.alloc += next.len as u64;
                    }
                }
                inode.size = size;
                let now = Ts::now();
                inode.mtime = now;
                inode.ctime = now;
                put_inode(tx, LIVE, ino, &inode)?;
                Ok(freed)
            }
        });
        match r {
            Ok(freed) => {
                if let Some((_, (nid, _))) = partial.as_ref() {
                    self.pool.extents_committed([*nid]);
                }
                self.free(&freed)
            }
            Err(e) => {
                if let Some((_, e2)) = partial.as_ref().clone() {
                    self.pool.free_extents(&[e2]);
                }
                Err(e)
            }
        }
    }

    /// `fallocate`: mode 0 extends the size; `PUNCH_HOLE|KEEP_SIZE` and `ZERO_RANGE` zero a range
    /// (whole extents become holes). Space is not reserved ahead of time.
    pub fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
            || (punch && !keep)
            || (punch && zero)
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let i = self.getattr(ino)?;
        if i.kind != Kind::File {
            return Err(errno(libc::ENODEV));
        }
        if punch || zero {
            let size = i.size;
            let zend = if keep {
                (off + len).min(size)
            } else {
                off + len
            };
            if zend > off {
                self.write_waiting(ino, off, zend - off, None, !keep)?;
            }
            if !keep && off + len > size {
                self.extend(ino, off + len)?;
            }
            return Ok(());
        }
        if !keep && off + len > i.size {
            self.extend(ino, off + len)?;
        }
        Ok(())
    }

    fn extend(&self, ino: u64, size: u64) -> Result<()> {
        let s = self.state(ino);
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        let cur = st
            .size
            .map_or_else(|| self.inode(ino).map(|i| i.size), Ok)?;
        if size > cur {
            st.size = Some(size);
            st.mtime = Some(Ts::now());
        }
        Ok(())
    }

    /// `lseek` with `SEEK_DATA` (3) or `SEEK_HOLE` (4); other whences return `offset`.
    pub fn seek(&self, ino: u64, offset: u64, whence: i32) -> Result<u64> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Ok(offset);
        }
        self.flush(ino)?;
        let i = self.inode(ino)?;
        self.seek_extents(LIVE, ino, i.size, offset, whence)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` over the committed extent map of inode `ino` of `tree`, of
    /// size `size`.
    fn seek_extents(
        &self,
        tree: u64,
        ino: u64,
        size: u64,
        offset: u64,
        whence: i32,
    ) -> Result<u64> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Ok(offset);
        }
        if offset >= size {
            return Err(errno(libc::ENXIO));
        }
        let es = self.es();
        let tx = self.pool.meta.read()?;
        let t = tx.open_table(EXTMAP)?;
        let first = offset / es;
        if whence == libc::SEEK_DATA {
            let mut r = t.range((tree, ino, first)..=(tree, ino, u64::MAX))?;
            match r.next() {
                Some(row) => {
                    let pos = (row?.0.value().2 * es).max(offset);
                    if pos >= size {
                        Err(errno(libc::ENXIO))
                    } else {
                        Ok(pos)
                    }
                }
                None => Err(errno(libc::ENXIO)),
            }
        } else {
            let mut expect = first;
            for row in t.range((tree, ino, first)..=(tree, ino, u64::MAX))? {
                if row?.0.value().2 != expect {
                    break;
                }
                expect += 1;
            }
            Ok((expect * es).max(offset).min(size))
        }
    }

    /// Get an xattr value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if name == POLICY_XATTR {
            return self
                .inode(ino)?
                .policy
                .map(|p| p.to_string().into_bytes())
                .ok_or(errno(libc::ENODATA));
        }
        // The kernel asks for `security.capability` before the first write to every file.
        if self.cached(ino).is_some_and(|c| c.no_xattrs) {
            return Err(errno(libc::ENODATA));
        }
        let v = self.pool.meta.view(|tx| {
            let t = tx.open_table(XATTRS)?;
            let v = t.get((LIVE, ino, name))?.map(|g| g.value().to_vec());
            if v.is_none() {
                // ENOENT rather than ENODATA for a missing inode.
                get_inode(tx, LIVE, ino)?;
            }
            Ok(v)
        })?;
        v.ok_or(errno(libc::ENODATA))
    }

    /// List xattr names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let i = self.inode(ino)?;
        let mut out = Vec::new();
        if i.policy.is_some() {
            out.push(POLICY_XATTR.to_vec());
        }
        self.pool.meta.view(|tx| {
            let t = tx.open_table(XATTRS)?;
            for row in t.range((LIVE, ino, &[][..])..(LIVE, ino + 1, &[][..]))? {
                out.push(row?.0.value().2.to_vec());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Set an xattr (`flags`: `XATTR_CREATE` = 1, `XATTR_REPLACE` = 2). Setting
    /// `user.dynfs.policy` changes the policy (restriping a file's existing data).
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(errno(libc::ERANGE));
        }
        if name == POLICY_XATTR {
            let s = std::str::from_utf8(value).map_err(|_| errno(libc::EINVAL))?;
            let p: Policy = s
                .trim_end_matches(['\0', '\n'])
                .parse()
                .map_err(|_| errno(libc::EINVAL))?;
            return self.set_policy(ino, Some(p));
        }
        let acl = if name == ACL_ACCESS_XATTR {
            Some(acl_to_mode(value)?)
        } else {
            None
        };
        if let Some((bits, true)) = acl {
            if self.defer_minimal_acl(ino, bits)? {
                return Ok(());
            }
        }
        // Buffered attribute changes (a mode) go first, so they cannot override this one.
        self.flush(ino)?;
        if let Some(s) = self.existing_state(ino) {
            s.lock().unwrap_or_else(|e| e.into_inner()).no_xattrs = false;
        }
        let (name, value) = (name.to_vec(), value.to_vec());
        self.pool.meta.write_lazy(move |tx| {
            let (name, value) = (name.as_slice(), value.as_slice());
            let mut i = get_inode(tx, LIVE, ino)?;
            let mut t = tx.open_table(XATTRS)?;
            let exists = t.get((LIVE, ino, name))?.is_some();
            if let Some((bits, minimal)) = acl {
                // The ACL's owner/group(mask)/other entries are the mode's permission bits.
                i.perm = (i.perm & !0o777) | bits;
                i.ctime = Ts::now();
                if minimal {
                    t.remove((LIVE, ino, name))?;
                } else {
                    t.insert((LIVE, ino, name), value)?;
                }
                drop(t);
                return put_inode(tx, LIVE, ino, &i);
            }
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(errno(libc::EEXIST));
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(errno(libc::ENODATA));
            }
            t.insert((LIVE, ino, name), value)?;
            drop(t);
            i.ctime = Ts::now();
            put_inode(tx, LIVE, ino, &i)
        })
    }

    /// A minimal access ACL (one equivalent to the mode, as `cp -p` sets) on a file with
    /// buffered writes and no stored ACL is just a change of the permission bits: buffer it like
    /// a `chmod`, to be committed with the data. Returns whether it was buffered.
    fn defer_minimal_acl(&self, ino: u64, bits: u32) -> Result<bool> {
        let Some(s) = self.existing_state(ino) else {
            return Ok(false);
        };
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        if st.dirty.is_empty() && st.size.is_none() {
            return Ok(false);
        }
        let stored = !self.cached(ino).is_some_and(|c| c.no_xattrs)
            && self.pool.meta.view(|tx| {
                let stored = tx
                    .open_table(XATTRS)?
                    .get((LIVE, ino, ACL_ACCESS_XATTR))?
                    .is_some();
                Ok(stored)
            })?;
        if stored {
            return Ok(false);
        }
        let mut i = self.inode(ino)?;
        if let Some(p) = &st.attrs {
            p.overlay(&mut i);
        }
        let a = SetAttr {
            mode: Some((i.perm & !0o777) | bits),
            ..Default::default()
        };
        let ctime = Ts::now();
        match &mut st.attrs {
            Some(p) => p.merge(&a, ctime),
            None => st.attrs = Some(PendingAttrs { set: a, ctime }),
        }
        Ok(true)
    }

    /// Remove an xattr (`user.dynfs.policy`: clear the override; data keeps its layout).
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        // The kernel removes the access ACL whenever a minimal one is set (`cp -p` does for every
        // file), and there usually is none: answer that from a read, since a failed change
        // costs re-applying the open metadata batch.
        if name != POLICY_XATTR {
            if self.cached(ino).is_some_and(|c| c.no_xattrs) {
                return Err(errno(libc::ENODATA));
            }
            let exists = self.pool.meta.view(|tx| {
                get_inode(tx, LIVE, ino)?;
                let t = tx.open_table(XATTRS)?;
                let exists = t.get((LIVE, ino, name))?.is_some();
                Ok(exists)
            })?;
            if !exists {
                return Err(errno(libc::ENODATA));
            }
        }
        self.flush(ino)?;
        let name = name.to_vec();
        self.pool.meta.write_lazy(move |tx| {
            let name = name.as_slice();
            let mut i = get_inode(tx, LIVE, ino)?;
            if name == POLICY_XATTR {
                if i.policy.take().is_none() {
                    return Err(errno(libc::ENODATA));
                }
            } else if tx.open_table(XATTRS)?.remove((LIVE, ino, name))?.is_none() {
                return Err(errno(libc::ENODATA));
            }
            i.ctime = Ts::now();
            put_inode(tx, LIVE, ino, &i)
        })
    }

    /// Set (or clear) the policy override of a file or directory. For a file, every existing
    /// extent not already under the policy is rewritten: new fragments are written and
    /// committed before the old ones are freed, so redundancy never drops. For a directory, the
    /// policy applies to entries created in it afterwards.
    pub fn set_policy(&self, ino: u64, policy: Option<Policy>) -> Result<()> {
        if let Some(p) = policy {
            self.pool.check_placeable(p)?;
            // The metadata (and the inline data of small files) needs replicas enough for it.
            self.pool.require_tolerance(p.tolerance())?;
        }
        self.flush(ino)?;
        let i = self.pool.meta.write_lazy(move |tx| {
            let mut i = get_inode(tx, LIVE, ino)?;
            i.policy = policy;
            i.ctime = Ts::now();
            put_inode(tx, LIVE, ino, &i)?;
            Ok(i)
        })?;
        if i.kind == Kind::File {
            self.restripe(ino, self.effective_policy(&i))?;
        }
        Ok(())
    }

    /// Rewrite every extent of `ino` that is not under `policy`.
    pub fn restripe(&self, ino: u64, policy: Policy) -> Result<u64> {
        let s = self.state(ino);
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(ino, &mut st)?;
        let mut moved = 0;
        let mut next_idx = 0u64;
        loop {
            let item = {
                let tx = self.pool.meta.read()?;
                let m = tx.open_table(EXTMAP)?;
                let t = tx.open_table(meta::EXTENTS)?;
                let mut found = None;
                for row in m.range((LIVE, ino, next_idx)..=(LIVE, ino, u64::MAX))? {
                    let (k, v) = row?;
                    let id = v.value();
                    let e: Extent = meta::get_rec(&t, id)?
                        .ok_or_else(|| Error::Meta(format!("extent {id} missing")))?;
                    // Inline data lives in the metadata, which no policy governs.
                    if e.policy != policy && !e.is_inline() {
                        found = Some((k.value().2, id, e));
                        break;
                    }
                }
                found
            };
            let Some((idx, old_id, old)) = item else {
                break;
            };
            next_idx = idx + 1;
            let data = self.pool.read_extent(old_id, &old)?;
            let (nid, next) = self.pool.write_extent(policy, &data)?;
            let link = next.clone();
            let r = self.pool.meta.write_lazy(move |tx| {
                let next = &link;
                let cur = tx
                    .open_table(EXTMAP)?
                    .get((LIVE, ino, idx))?
                    .map(|g| g.value());
                if cur != Some(old_id) {
                    return Err(Error::Meta("extent changed during restripe".into()));
                }
                tx.open_table(EXTMAP)?.insert((LIVE, ino, idx), nid)?;
                Pool::link_extent(tx, nid, next, 1)?;
                Pool::decref(tx, old_id)
            });
            match r {
                Ok(freed) => {
                    self.pool.extents_committed([nid]);
                    self.free(&freed.into_iter().collect::<Vec<_>>())?;
                    moved += 1;
                }
                Err(e) => {
                    self.pool.free_extents(&[(nid, next)]);
                    return Err(e);
                }
            }
        }
        Ok(moved)
    }

    /// Usage figures: capacity of the distinct filesystems under the disks, scaled by the default
    /// policy's efficiency.
    pub fn statfs(&self) -> Result<StatFs> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = Vec::new();
        let (mut total, mut free) = (0u64, 0u64);
        for d in self.pool.disks().iter().filter(|d| d.readable()) {
            let dev = std::fs::metadata(&d.path).map(|m| m.dev()).unwrap_or(0);
            if seen.contains(&dev) {
                continue;
            }
            seen.push(dev);
            if let Ok((t, f)) = crate::disk::fs_space(&d.path) {
                total += t;
                free += f;
            }
        }
        let p = self.pool.config().default_policy;
        let scale = |v: u64| (v as u128 * p.needed() as u128 / p.width() as u128) as u64;
        let bsize = 4096u64;
        let files = meta::table_len(&self.pool.meta.read()?, INODES)?;
        Ok(StatFs {
            bsize: bsize as u32,
            blocks: scale(total) / bsize,
            bfree: scale(free) / bsize,
            files,
            ffree: u32::MAX as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL_USER: u16 = 0x02;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// The values `setfacl -d -m u:nobody:rwx,g::r-x,o::-` then `touch` / `mkdir` give on tmpfs.
    #[test]
    fn inherited_acl_is_limited_by_the_mode_and_limits_it() {
        let u = u32::MAX;
        let default = acl(&[
            (ACL_USER_OBJ, 7, u),
            (ACL_USER, 7, 65534),
            (ACL_GROUP_OBJ, 5, u),
            (ACL_MASK, 7, u),
            (ACL_OTHER, 0, u),
        ]);
        let (mode, access) = acl_inherit(&default, libc::S_IFREG | 0o666).unwrap();
        assert_eq!(mode, libc::S_IFREG | 0o660);
        let want = acl(&[
            (ACL_USER_OBJ, 6, u),
            (ACL_USER, 7, 65534),
            (ACL_GROUP_OBJ, 5, u),
            (ACL_MASK, 6, u),
            (ACL_OTHER, 0, u),
        ]);
        assert_eq!(access.as_deref(), Some(&want[..]));
        let (mode, access) = acl_inherit(&default, 0o2777).unwrap();
        assert_eq!(mode, 0o2770, "set-ID bits stay, permissions follow the ACL");
        assert_eq!(access.as_deref(), Some(&default[..]));

        // A minimal default ACL gives a mode and no access ACL; without a mask the owning
        // group's entry is the one limited.
        let minimal = acl(&[
            (ACL_USER_OBJ, 7, u),
            (ACL_GROUP_OBJ, 5, u),
            (ACL_OTHER, 1, u),
        ]);
        assert_eq!(acl_inherit(&minimal, 0o666).unwrap(), (0o640, None));
        assert_eq!(acl_inherit(&minimal, 0o750).unwrap(), (0o750, None));
        assert!(acl_inherit(b"junk", 0o666).is_err());
    }
}
