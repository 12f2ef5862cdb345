//! Metadata: redb tables, record types, and replication of the database over several disks.
//!
//! The database has replicas `meta/dynfs.redb` on R = M + 1 disks of the pool, where M is the
//! highest tolerance of any policy in use (see [`TOLERANCE`]): losing any M disks loses no
//! metadata, and small files' data, stored inline in the metadata, is as redundant as its
//! policy asks. The pool chooses the replica disks (its [`Placement`]); every replica records
//! the set of replica disks ([`put_replica_set`]) in the same durable commits that change it.
//!
//! A metadata change is a closure applied, in a redb write transaction, to every live replica
//! (lazy changes are gathered in batches, see [`MetaStore::write_lazy`]); each durable
//! transaction also increments the `generation` counter (lazy, non-durable changes do not: they
//! are lost on a crash on every replica alike, so replicas that made the same durable commits
//! always have the same generation).
//!
//! Invariants:
//! - The replica set only changes through [`MetaStore::place`]: new replicas are copies of the
//!   primary made after a durable commit, and join the set in a durable commit that every old
//!   replica (also those leaving) makes too; only then are the leaving replicas deleted. So at
//!   every instant at least min(R, old count) replicas hold the newest generation and list
//!   themselves in their recorded set.
//! - Opening the pool reads every replica file on the present disks, takes the highest
//!   generation that opens cleanly (among equal generations, one that lists itself), and adopts
//!   its recorded set: replicas of member disks that are stale, damaged or missing are copied
//!   over; files on disks outside the set are former replicas (a lower generation, or a set
//!   without them) and are deleted. Pools made before the set was recorded have a replica on
//!   every disk: all of them count as members, and the pool then converges to R replicas.
//!
//! Tables are keyed by a *tree* id: tree 0 is the live filesystem, trees >= 1 are snapshots.

use crate::disk::Health;
use crate::error::{Error, Result};
use crate::policy::Policy;
use redb::{
    Database, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Something to make durable before any durable metadata commit (the pool's unsynced fragment
/// writes).
pub type PreDurable = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// Counters: `generation`, `next_ino`, `next_extent`, `next_snap`.
pub const SUPER: TableDefinition<&str, u64> = TableDefinition::new("super");
/// `(tree, ino)` → [`Inode`].
pub const INODES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("inodes");
/// `(tree, parent ino, name)` → child ino.
pub const DIRENTS: TableDefinition<(u64, u64, &[u8]), u64> = TableDefinition::new("dirents");
/// `(tree, ino, extent index)` → extent id.
pub const EXTMAP: TableDefinition<(u64, u64, u64), u64> = TableDefinition::new("extmap");
/// `(tree, ino, name)` → value.
pub const XATTRS: TableDefinition<(u64, u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
/// extent id → [`Extent`].
pub const EXTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("extents");
/// extent id → BLAKE3 of the data, then the data, for extents stored inline in the metadata
/// (small files; see [`Extent::is_inline`]).
pub const INLINE: TableDefinition<u64, &[u8]> = TableDefinition::new("inline");
/// disk id → [`DiskRec`].
pub const DISKS: TableDefinition<u32, &[u8]> = TableDefinition::new("disks");
/// snapshot tree id → [`SnapRec`].
pub const SNAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// Named state blobs (scrub and rebuild checkpoints).
pub const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// [`SUPER`] counter: the highest tolerance (M) of any policy the pool uses or has used (the
/// default policy and every `user.dynfs.policy` override). The metadata is kept on M + 1 disks.
pub const TOLERANCE: &str = "meta_tolerance";

/// [`STATE`] key of the disk ids holding metadata replicas (postcard `Vec<u32>`).
pub const REPLICA_SET: &str = "meta_replicas";

/// The live filesystem's tree id.
pub const LIVE: u64 = 0;
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// A timestamp (seconds and nanoseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ts {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

thread_local! {
    /// The time of the metadata change being applied on this thread, so that every replica
    /// records the same timestamps even when it applies the change later (group commit).
    static CHANGE_TIME: std::cell::Cell<Option<Ts>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with [`Ts::now`] returning `t` on this thread.
fn at_time<R>(t: Ts, f: impl FnOnce() -> R) -> R {
    let prev = CHANGE_TIME.with(|c| c.replace(Some(t)));
    let r = f();
    CHANGE_TIME.with(|c| c.set(prev));
    r
}

impl Ts {
    /// The current time (inside a metadata change: the time the change was made).
    pub fn now() -> Self {
        if let Some(t) = CHANGE_TIME.with(|c| c.get()) {
            return t;
        }
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ts {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// File type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    CharDev,
    /// Block device.
    BlockDev,
}

impl Kind {
    /// The `S_IFMT` bits for this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    /// The kind for `S_IFMT` bits of a mode, if any.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// An inode record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    /// File type.
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files), target length (symlinks).
    pub size: u64,
    /// Hard link count.
    pub nlink: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Access time.
    pub atime: Ts,
    /// Modification time.
    pub mtime: Ts,
    /// Status change time.
    pub ctime: Ts,
    /// Creation time.
    pub crtime: Ts,
    /// Parent directory (directories only; the root is its own parent).
    pub parent: u64,
    /// Policy override (`user.dynfs.policy`), inherited by new children of a directory.
    pub policy: Option<Policy>,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Bytes of data held in extents (what `st_blocks` reports; holes cost nothing).
    pub alloc: u64,
}

/// Location and checksum of one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frag {
    /// Disk holding the fragment.
    pub disk: u32,
    /// BLAKE3 of the fragment bytes.
    pub sum: [u8; 32],
}

/// An immutable extent: its policy, data length and fragments (index = position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Redundancy policy of this extent.
    pub policy: Policy,
    /// Bytes of file data.
    pub len: u32,
    /// Bytes per fragment.
    pub frag_len: u32,
    /// Fragments: copies, or data shards then parity shards.
    pub frags: Vec<Frag>,
    /// Number of (tree, file, index) references; the extent is freed when it drops to zero.
    pub refs: u32,
}

impl Extent {
    /// Whether the extent's data is stored in the metadata ([`INLINE`]) rather than in
    /// fragment files: it then has no fragments. The metadata has replicas on M + 1 disks for
    /// the highest tolerance M of any policy in use, so inline data is as redundant as its
    /// policy asks.
    pub fn is_inline(&self) -> bool {
        self.frags.is_empty()
    }
}

/// A disk as recorded in the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRec {
    /// Disk id.
    pub id: u32,
    /// Directory path.
    pub path: String,
    /// Health.
    pub health: Health,
    /// Capacity in bytes when added.
    pub capacity: u64,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRec {
    /// Tree id holding the snapshot.
    pub tree: u64,
    /// User-given name.
    pub name: String,
    /// Creation time.
    pub created: Ts,
}

/// Create every table (in a new database).
pub fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(SUPER)?;
    tx.open_table(INODES)?;
    tx.open_table(DIRENTS)?;
    tx.open_table(EXTMAP)?;
    tx.open_table(XATTRS)?;
    tx.open_table(EXTENTS)?;
    tx.open_table(INLINE)?;
    tx.open_table(DISKS)?;
    tx.open_table(SNAPS)?;
    tx.open_table(STATE)?;
    Ok(())
}

/// Encode a record.
pub fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(postcard::to_allocvec(v)?)
}

/// Decode a record.
pub fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    Ok(postcard::from_bytes(b)?)
}

/// Read a counter from [`SUPER`] (0 if absent).
pub fn counter(tx: &WriteTransaction, name: &str) -> Result<u64> {
    let t = tx.open_table(SUPER)?;
    let v = t.get(name)?.map(|g| g.value()).unwrap_or(0);
    Ok(v)
}

/// Set a counter in [`SUPER`].
pub fn set_counter(tx: &WriteTransaction, name: &str, v: u64) -> Result<()> {
    tx.open_table(SUPER)?.insert(name, v)?;
    Ok(())
}

/// Allocate the next value of a counter (starting at `first`).
pub fn alloc(tx: &WriteTransaction, name: &str, first: u64) -> Result<u64> {
    let v = counter(tx, name)?.max(first);
    set_counter(tx, name, v + 1)?;
    Ok(v)
}

/// In a metadata transaction: record the disks holding metadata replicas.
pub fn put_replica_set(tx: &WriteTransaction, disks: &[u32]) -> Result<()> {
    let mut v = disks.to_vec();
    v.sort_unstable();
    tx.open_table(STATE)?
        .insert(REPLICA_SET, enc(&v)?.as_slice())?;
    Ok(())
}

/// The recorded replica disks of a database (`None` for pools made before it was recorded).
fn replica_set_of(tx: &ReadTransaction) -> Result<Option<Vec<u32>>> {
    let t = match tx.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = t.get(REPLICA_SET)?;
    v.map(|g| dec(g.value())).transpose()
}

/// A lazy metadata change waiting to be applied to a secondary replica.
type Op = Arc<dyn Fn(&WriteTransaction) -> Result<()> + Send + Sync>;

/// Lazy changes queued for the secondaries before the writer applies them itself (the
/// background catch-up has fallen this far behind).
const MAX_PENDING: usize = 4096;

/// Queued lazy changes that wake the background catch-up of the secondaries.
const CATCH_UP_BATCH: usize = 256;

struct Replica {
    disk: u32,
    path: PathBuf,
    db: Database,
    /// Sequence number ([`Queue`]) of the next lazy change this replica has to apply
    /// (secondaries only). Held while changes are applied to the replica.
    applied: Mutex<u64>,
}

impl Replica {
    fn new(disk: u32, path: PathBuf, db: Database, applied: u64) -> Arc<Self> {
        Arc::new(Replica {
            disk,
            path,
            db,
            applied: Mutex::new(applied),
        })
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, u64> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lazy changes the primary has applied and some secondary may not have applied yet, in
/// commit order: change `base + i` is `ops[i]`; and the primary's open write transaction.
#[derive(Default)]
struct Queue {
    ops: std::collections::VecDeque<Op>,
    base: u64,
    /// The primary's open (not yet committed) write transaction holding the latest lazy changes.
    batch: Option<Batch>,
}

/// Lazy changes applied to the primary replica in one open write transaction, committed
/// (non-durably) when [`BATCH_MAX`] changes have gathered, before any read transaction begins
/// ([`MetaStore::read`]), and folded into the next durable commit. One redb commit per batch
/// instead of one per change: a commit writes every page the transaction dirtied and cannot
/// free pages until a durable commit, so per-change commits cost most of the metadata path.
/// Point reads of the hot path ([`MetaStore::view`]) go through the open transaction itself.
struct Batch {
    tx: WriteTransaction,
    /// The changes in `tx`, to apply again to a fresh transaction when a change fails midway
    /// (its partial writes must not stay: the transaction is dropped and rebuilt).
    ops: Vec<Op>,
}

/// Changes gathered in the primary's open transaction before it is committed.
const BATCH_MAX: usize = 256;

impl Queue {
    /// Sequence number of the next change to be queued.
    fn end(&self) -> u64 {
        self.base + self.ops.len() as u64
    }

    /// The changes from sequence number `from` on.
    fn since(&self, from: u64) -> Vec<Op> {
        let skip = from.saturating_sub(self.base) as usize;
        self.ops.iter().skip(skip).cloned().collect()
    }

    /// Forget the changes every replica in `secondaries` has applied.
    fn trim(&mut self, secondaries: &[Arc<Replica>]) {
        let done = secondaries
            .iter()
            .map(|r| *r.applied())
            .min()
            .unwrap_or(self.end());
        while self.base < done && self.ops.pop_front().is_some() {
            self.base += 1;
        }
    }
}

/// What the writers and the background catch-up thread share.
struct Shared {
    replicas: RwLock<Vec<Arc<Replica>>>,
    /// Held for every write; the queue of lazy changes the secondaries have not all applied.
    queue: Mutex<Queue>,
    /// Wakes the catch-up thread.
    wake: std::sync::Condvar,
    /// Set when the store is dropped: the catch-up thread exits.
    closing: AtomicBool,
    /// Disks whose replica failed since the store was opened: dropped from the live set and
    /// kept out of placement until the next open.
    lost: Mutex<Vec<u32>>,
    /// A replica was lost: the next durable commit places a new one ([`MetaStore::place`]).
    short: AtomicBool,
}

impl Shared {
    fn live(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_replicas(&self, failed: &[u32]) {
        if !failed.is_empty() {
            self.replicas
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|r| !failed.contains(&r.disk));
            self.lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(failed);
            self.short.store(true, Ordering::Release);
        }
    }

    fn lost(&self) -> Vec<u32> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Background catch-up: apply the queued lazy changes to each secondary in one
    /// non-durable transaction, without holding the queue (writers go on committing to the
    /// primary meanwhile), so that a durable commit finds little left to do.
    fn catch_up_in_background(&self) {
        let (ops, base, end) = {
            let q = self.lock_queue();
            (q.since(q.base), q.base, q.end())
        };
        let live = self.live();
        let mut failed = Vec::new();
        for r in live.iter().skip(1) {
            let mut applied = r.applied();
            if *applied >= end || *applied < base {
                continue;
            }
            let from = (*applied - base) as usize;
            match commit::<()>(r, &ops[from..], None, false) {
                Ok(_) => *applied = end,
                Err(e) => {
                    tracing::error!(disk = r.disk, error = %e, "metadata replica failed; replaced at the next durable commit");
                    failed.push(r.disk);
                }
            }
        }
        self.drop_replicas(&failed);
        let live = self.live();
        self.lock_queue().trim(live.get(1..).unwrap_or_default());
    }

    /// Apply every queued change to every secondary (the queue lock held by the caller).
    fn catch_up(&self, q: &mut Queue) {
        let live = self.live();
        let mut failed = Vec::new();
        for r in live.iter().skip(1) {
            let mut applied = r.applied();
            let ops = q.since(*applied);
            if ops.is_empty() {
                continue;
            }
            match commit::<()>(r, &ops, None, false) {
                Ok(_) => *applied = q.end(),
                Err(e) => {
                    tracing::error!(disk = r.disk, error = %e, "metadata replica failed; replaced at the next durable commit");
                    failed.push(r.disk);
                }
            }
        }
        self.drop_replicas(&failed);
        let live = self.live();
        q.trim(live.get(1..).unwrap_or_default());
    }
}

/// Start the thread that keeps the secondaries close behind the primary; it exits when
/// [`Shared::closing`] is set (the store joins it when dropped).
fn spawn_catch_up(shared: &Arc<Shared>) -> Option<std::thread::JoinHandle<()>> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("dynfs-meta-sync".into())
        .spawn(move || loop {
            {
                let q = shared.lock_queue();
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                if q.ops.len() < CATCH_UP_BATCH {
                    let (q, _) = shared
                        .wake
                        .wait_timeout(q, std::time::Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner());
                    if shared.closing.load(Ordering::Acquire) {
                        return;
                    }
                    if q.ops.is_empty() {
                        continue;
                    }
                }
            }
            shared.catch_up_in_background();
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot start the metadata catch-up thread"))
        .ok()
}

/// A metadata change applied once per replica.
type Change<'a, T> = &'a (dyn Fn(&WriteTransaction) -> Result<T> + Sync);

/// One write transaction on `r`: the queued `ops`, then `f`; a durable one also bumps the
/// generation.
fn commit<T>(
    r: &Replica,
    ops: &[Op],
    f: Option<Change<'_, T>>,
    durable: bool,
) -> Result<Option<T>> {
    let mut tx = r.db.begin_write()?;
    if !durable {
        tx.set_durability(redb::Durability::None);
    }
    for op in ops {
        op(&tx)?;
    }
    let out = match f {
        Some(f) => Some(f(&tx)?),
        None => None,
    };
    if durable {
        let g = counter(&tx, "generation")?;
        set_counter(&tx, "generation", g + 1)?;
    }
    tx.commit()?;
    Ok(out)
}

impl Queue {
    /// The primary's open transaction, begun (non-durable) if there is none.
    fn batch(&mut self, primary: &Replica) -> Result<&mut Batch> {
        if self.batch.is_none() {
            let mut tx = primary.db.begin_write()?;
            tx.set_durability(redb::Durability::None);
            self.batch = Some(Batch {
                tx,
                ops: Vec::new(),
            });
        }
        self.batch
            .as_mut()
            .ok_or_else(|| Error::Meta("no open metadata transaction".into()))
    }

    /// Commit the primary's open transaction (non-durably), if it holds changes.
    fn commit_batch(&mut self) -> Result<()> {
        if let Some(b) = self.batch.take() {
            if b.ops.is_empty() {
                b.tx.abort()?;
            } else {
                b.tx.commit()?;
            }
        }
        Ok(())
    }

    /// After a change failed midway in the open transaction: drop the transaction (and the
    /// change's partial writes) and apply the batch's earlier changes to a fresh one.
    fn rebuild_batch(&mut self, primary: &Replica) -> Result<()> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let ops = b.ops;
        b.tx.abort()?;
        let batch = self.batch(primary)?;
        for op in &ops {
            if let Err(e) = op(&batch.tx) {
                tracing::error!(error = %e, "re-applying metadata changes failed");
                self.batch = None;
                return Err(e);
            }
        }
        batch.ops = ops;
        Ok(())
    }
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        // Leave the secondaries exactly as up to date as the primary, as before group commit.
        {
            let mut q = self.shared.lock_queue();
            if let Err(e) = q.commit_batch() {
                tracing::error!(error = %e, "committing metadata changes failed");
            }
            self.shared.closing.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.catch_up_thread.take() {
            let _ = t.join();
        }
        let mut q = self.shared.lock_queue();
        self.shared.catch_up(&mut q);
    }
}

/// Outcome of opening replicas, for logs and `status`.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Generation chosen.
    pub generation: u64,
    /// Disk whose replica was chosen.
    pub source_disk: u32,
    /// Disks whose replica was stale, damaged or missing and was replaced.
    pub resynced: Vec<u32>,
    /// Disks in the recorded replica set (every disk for a pool made before the set was
    /// recorded).
    pub members: Vec<u32>,
    /// Disks holding a former replica (outside the recorded set), which was deleted.
    pub stale_removed: Vec<u32>,
}

/// Chooses the disks that should hold metadata replicas: given the disks holding live
/// replicas (the primary first) and disks to leave out, returns the disks (with the path of
/// their replica file) that should hold them. Must be deterministic.
pub type Placement = Arc<dyn Fn(&[u32], &[u32]) -> Vec<(u32, PathBuf)> + Send + Sync>;

/// A replicated redb database.
pub struct MetaStore {
    /// Replicas (the primary first) and the queue of lazy changes (in commit order; the
    /// primary has applied them all), shared with the background catch-up thread.
    shared: Arc<Shared>,
    catch_up_thread: Option<std::thread::JoinHandle<()>>,
    pre_durable: OnceLock<PreDurable>,
    placement: OnceLock<Placement>,
    dirty: AtomicBool,
    commits: std::sync::atomic::AtomicU64,
    /// The value of `commits` right after the last durable commit: every change numbered up
    /// to it is on stable storage ([`MetaStore::durable_commits`]).
    durable: std::sync::atomic::AtomicU64,
}

fn open_db(path: &Path) -> Result<Database> {
    let mut db = Database::builder().set_cache_size(32 << 20).open(path)?;
    if !db
        .check_integrity()
        .map_err(|e| Error::Meta(e.to_string()))?
    {
        return Err(Error::Meta(format!(
            "{}: integrity check repaired damage",
            path.display()
        )));
    }
    Ok(db)
}

fn generation_of(db: &Database) -> Result<u64> {
    let tx = db.begin_read()?;
    let t = tx.open_table(SUPER)?;
    let v = t.get("generation")?.map(|g| g.value());
    v.ok_or_else(|| Error::Meta("no generation counter".into()))
}

/// What opening reads from one replica file.
struct Found {
    db: Database,
    generation: u64,
    set: Option<Vec<u32>>,
}

fn read_replica(path: &Path) -> Result<Found> {
    let db = open_db(path)?;
    let generation = generation_of(&db)?;
    let set = replica_set_of(&db.begin_read()?)?;
    Ok(Found {
        db,
        generation,
        set,
    })
}

fn copy_durable(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = crate::io::temp_path(to);
    std::fs::copy(from, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))?;
    if let Some(parent) = to.parent() {
        crate::io::sync_dir(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}

impl MetaStore {
    /// Create fresh replicas at `paths` (disk id, file path) and run `init` on each.
    pub fn create(
        paths: &[(u32, PathBuf)],
        init: impl Fn(&WriteTransaction) -> Result<()> + Sync,
    ) -> Result<Self> {
        let mut replicas = Vec::new();
        for (disk, path) in paths {
            if path.exists() {
                return Err(Error::Invalid(format!("{} already exists", path.display())));
            }
            let db = Database::builder().set_cache_size(32 << 20).create(path)?;
            replicas.push(Replica::new(*disk, path.clone(), db, 0));
        }
        let store = MetaStore::with_replicas(replicas);
        let disks: Vec<u32> = paths.iter().map(|(d, _)| *d).collect();
        store.write(|tx| {
            init(tx)?;
            put_replica_set(tx, &disks)
        })?;
        Ok(store)
    }

    /// Open the replica files at `paths` (every present disk of the pool: disk id, file path),
    /// choose the newest valid generation, adopt its recorded replica set, resync the members'
    /// stale, damaged or missing replicas and delete former replicas outside the set.
    ///
    /// A member whose replica cannot be resynced is left out (and reported in the log); the
    /// pool then places a replacement ([`MetaStore::place`]).
    pub fn open(paths: &[(u32, PathBuf)]) -> Result<(Self, OpenReport)> {
        let mut found: Vec<Option<Found>> = Vec::with_capacity(paths.len());
        for (disk, path) in paths {
            if !path.exists() {
                found.push(None);
                continue;
            }
            match read_replica(path) {
                Ok(f) => found.push(Some(f)),
                Err(e) => {
                    tracing::warn!(disk, path = %path.display(), error = %e, "metadata replica unusable");
                    found.push(None);
                }
            }
        }
        // The newest generation; among equals, a replica that lists itself (a replica that
        // left the set made the commit recording its departure, with the same content).
        let lists_self = |i: usize| {
            found[i]
                .as_ref()
                .is_some_and(|f| f.set.as_ref().is_none_or(|s| s.contains(&paths[i].0)))
        };
        let src = (0..paths.len())
            .filter_map(|i| found[i].as_ref().map(|f| (f.generation, lists_self(i), i)))
            .max_by_key(|&(g, own, i)| (g, own, std::cmp::Reverse(i)))
            .map(|(_, _, i)| i)
            .ok_or_else(|| {
                Error::Meta("no readable metadata replica on any disk of the pool".into())
            })?;
        let (generation, members) = match &found[src] {
            Some(f) => (
                f.generation,
                f.set
                    .clone()
                    .unwrap_or_else(|| paths.iter().map(|(d, _)| *d).collect()),
            ),
            None => return Err(Error::Meta("chosen metadata replica vanished".into())),
        };
        let mut report = OpenReport {
            generation,
            source_disk: paths[src].0,
            members: members.clone(),
            ..Default::default()
        };
        let current = |f: &Found| {
            f.generation == generation
                && f.set.as_ref().is_none_or(|s| {
                    let mut s = s.clone();
                    s.sort_unstable();
                    let mut m = members.clone();
                    m.sort_unstable();
                    s == m
                })
        };
        let src_path = paths[src].1.clone();
        let mut replicas = Vec::new();
        // The chosen replica first: it is the one reads use.
        let order = std::iter::once(src).chain((0..paths.len()).filter(|&i| i != src));
        for i in order {
            let (disk, path) = &paths[i];
            if !members.contains(disk) {
                continue;
            }
            let db = match found[i].take() {
                Some(f) if current(&f) => f.db,
                other => {
                    drop(other);
                    tracing::info!(
                        disk,
                        "resyncing metadata replica from disk {}",
                        paths[src].0
                    );
                    match copy_durable(&src_path, path).and_then(|()| {
                        Ok(Database::builder().set_cache_size(32 << 20).open(path)?)
                    }) {
                        Ok(db) => {
                            report.resynced.push(*disk);
                            db
                        }
                        Err(e) => {
                            tracing::error!(disk, error = %e, "cannot resync metadata replica; left out");
                            continue;
                        }
                    }
                }
            };
            replicas.push(Replica::new(*disk, path.clone(), db, 0));
        }
        if replicas.is_empty() {
            // No member could be opened or resynced, but the newest replica (which had left
            // the set in its last commit) holds everything: it serves until placement runs.
            if let Some(f) = found[src].take() {
                tracing::warn!(disk = paths[src].0, "no member of the metadata replica set is usable; using a former replica of the newest generation");
                replicas.push(Replica::new(paths[src].0, src_path.clone(), f.db, 0));
                report.members.push(paths[src].0);
            }
        }
        // Replicas outside the set are former ones (an older generation, or the commit that
        // recorded their departure): delete them. Damaged files are left alone.
        for (i, (disk, path)) in paths.iter().enumerate() {
            if report.members.contains(disk) {
                continue;
            }
            if found[i].take().is_none() {
                if path.exists() {
                    tracing::warn!(disk, path = %path.display(), "unreadable metadata file outside the replica set left in place");
                }
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(disk, "removed a former metadata replica");
                    report.stale_removed.push(*disk);
                }
                Err(e) => {
                    tracing::warn!(disk, error = %e, "cannot remove a former metadata replica")
                }
            }
        }
        Ok((MetaStore::with_replicas(replicas), report))
    }

    fn with_replicas(replicas: Vec<Arc<Replica>>) -> Self {
        let shared = Arc::new(Shared {
            replicas: RwLock::new(replicas),
            queue: Mutex::new(Queue::default()),
            wake: std::sync::Condvar::new(),
            closing: AtomicBool::new(false),
            lost: Mutex::new(Vec::new()),
            short: AtomicBool::new(false),
        });
        MetaStore {
            catch_up_thread: spawn_catch_up(&shared),
            shared,
            pre_durable: OnceLock::new(),
            placement: OnceLock::new(),
            dirty: AtomicBool::new(false),
            commits: Default::default(),
            durable: Default::default(),
        }
    }

    fn live(&self) -> Vec<Arc<Replica>> {
        self.shared.live()
    }

    /// Disk ids holding live replicas.
    pub fn replica_disks(&self) -> Vec<u32> {
        self.live().iter().map(|r| r.disk).collect()
    }

    /// Begin a read transaction on the primary replica.
    ///
    /// The primary's open batch of lazy changes is committed first (non-durably), so the
    /// transaction sees every change made before the call. Point reads on the hot path use
    /// [`MetaStore::view`] instead, which reads the open batch without committing it.
    pub fn read(&self) -> Result<ReadTransaction> {
        let mut q = self.shared.lock_queue();
        // An open transaction without changes stays open: it sees the committed state.
        if q.batch.as_ref().is_some_and(|b| !b.ops.is_empty()) {
            q.commit_batch()?;
        }
        drop(q);
        let r = self.primary()?;
        Ok(r.db.begin_read()?)
    }

    /// Run `f` on the primary replica's open write transaction: it sees every change so far,
    /// committed or not, without committing anything. `f` must only read (writes go through
    /// [`MetaStore::write_lazy`] or [`MetaStore::write`]) and should be short: writers wait
    /// meanwhile.
    pub fn view<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let mut q = self.shared.lock_queue();
        let primary = self.primary()?;
        let b = q.batch(&primary)?;
        f(&b.tx)
    }

    fn primary(&self) -> Result<Arc<Replica>> {
        self.live()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Meta("no live metadata replica".into()))
    }

    /// Register what must be made durable before any durable commit (set once by the pool).
    pub fn set_pre_durable(&self, f: PreDurable) {
        let _ = self.pre_durable.set(f);
    }

    /// Apply `f` durably: like [`MetaStore::write_lazy`], but the pool's unsynced fragments are
    /// synced first and the commit (with every lazy commit before it) is on stable storage when
    /// this returns.
    pub fn write<T>(&self, f: impl Fn(&WriteTransaction) -> Result<T> + Sync) -> Result<T> {
        self.apply(f)
    }

    /// Apply `f` without waiting for stable storage: the change is visible at once and becomes
    /// durable with the next durable commit ([`MetaStore::write`] or [`MetaStore::sync`]); a
    /// crash before that rolls it back. Use it only for changes that free no fragment. If `f`
    /// fails, none of its writes stay.
    ///
    /// Group commit: only the primary replica (which serves reads) applies it now, in its open
    /// transaction (`Batch`, committed non-durably every `BATCH_MAX` changes); the secondaries
    /// receive the queued changes in batches, from a background thread (every
    /// [`CATCH_UP_BATCH`] changes or 200 ms) and at the next durable commit; the writer applies
    /// them itself only if [`MAX_PENDING`] have queued up. Crash safety is unchanged, since lazy
    /// commits are lost on a crash on every replica alike.
    pub fn write_lazy<T: 'static>(
        &self,
        f: impl Fn(&WriteTransaction) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        self.write_lazy_numbered(f).map(|(out, _)| out)
    }

    /// [`MetaStore::write_lazy`], also returning the change's number: the value of
    /// [`MetaStore::commits`] right after it (so the change before it left `number - 1`).
    pub fn write_lazy_numbered<T: 'static>(
        &self,
        f: impl Fn(&WriteTransaction) -> Result<T> + Send + Sync + 'static,
    ) -> Result<(T, u64)> {
        let mut q = self.shared.lock_queue();
        let replicas = self.live();
        let primary = replicas
            .first()
            .ok_or_else(|| Error::Meta("no live metadata replica".into()))?;
        let now = Ts::now();
        let b = q.batch(primary)?;
        let out = match at_time(now, || f(&b.tx)) {
            Ok(v) => v,
            Err(e) => {
                q.rebuild_batch(primary)?;
                return Err(e);
            }
        };
        let op: Op = Arc::new(move |tx: &WriteTransaction| at_time(now, || f(tx).map(|_| ())));
        b.ops.push(op.clone());
        let full = b.ops.len() >= BATCH_MAX;
        let number = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        self.dirty.store(true, Ordering::Release);
        if replicas.len() > 1 {
            q.ops.push_back(op);
            if q.ops.len() >= MAX_PENDING {
                self.shared.catch_up(&mut q);
            } else if q.ops.len() % CATCH_UP_BATCH == 0 {
                self.shared.wake.notify_one();
            }
        } else {
            q.base += 1;
        }
        if full {
            q.commit_batch()?;
        }
        Ok((out, number))
    }

    /// Make every earlier commit durable (no-op if there is nothing pending).
    pub fn sync(&self) -> Result<()> {
        if self.dirty.load(Ordering::Acquire) {
            self.apply(|_| Ok(()))?;
        } else if let Some(pre) = self.pre_durable.get() {
            pre()?;
        }
        Ok(())
    }

    /// Apply `f` durably to every live replica (the secondaries first catch up on queued lazy
    /// changes in the same transaction). `f` must be deterministic. It runs on the primary
    /// first; if it fails there nothing is committed anywhere. The other replicas then commit
    /// in parallel; a replica that fails is dropped from the live set (it is resynced at the
    /// next open).
    fn apply<T>(&self, f: impl Fn(&WriteTransaction) -> Result<T> + Sync) -> Result<T> {
        let mut q = self.shared.lock_queue();
        let out = self.apply_locked(&mut q, f)?;
        if self.shared.short.load(Ordering::Acquire) {
            // A replica failed (in this commit or a background catch-up): replace it now,
            // so that the count is short for as little time as possible.
            if let Err(e) = self.place_locked(&mut q, &[]) {
                tracing::error!(error = %e, "cannot replace a lost metadata replica");
            }
        }
        Ok(out)
    }

    /// [`MetaStore::apply`] with the queue lock held by the caller.
    fn apply_locked<T>(
        &self,
        q: &mut Queue,
        f: impl Fn(&WriteTransaction) -> Result<T> + Sync,
    ) -> Result<T> {
        if let Some(pre) = self.pre_durable.get() {
            pre()?;
        }
        let replicas = self.live();
        let primary = replicas
            .first()
            .ok_or_else(|| Error::Meta("no live metadata replica".into()))?;
        let now = Ts::now();
        let f = |tx: &WriteTransaction| at_time(now, || f(tx));
        // On the primary, `f` joins the open batch of lazy changes, and the batch commits
        // durably.
        let b = q.batch(primary)?;
        let result = match f(&b.tx) {
            Ok(v) => v,
            Err(e) => {
                q.rebuild_batch(primary)?;
                return Err(e);
            }
        };
        let Some(Batch { mut tx, ops }) = q.batch.take() else {
            return Err(Error::Meta("no open metadata transaction".into()));
        };
        let committed = counter(&tx, "generation")
            .and_then(|g| set_counter(&tx, "generation", g + 1))
            .and_then(|()| {
                tx.set_durability(redb::Durability::Immediate);
                Ok(tx.commit()?)
            });
        if let Err(e) = committed {
            // The batch's lazy changes stay applied on the primary (they are queued for the
            // secondaries too); `f` is not.
            q.batch = Some(Batch {
                tx: primary.db.begin_write()?,
                ops,
            });
            q.rebuild_batch(primary)?;
            return Err(e);
        }
        let number = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        let queue: &Queue = q;
        let end = queue.end() + 1;
        let failed: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = replicas[1..]
                .iter()
                .map(|r| {
                    let f = &f;
                    (
                        r.disk,
                        s.spawn(move || {
                            // Waits for a background catch-up of this replica to finish.
                            let mut applied = r.applied();
                            commit(r, &queue.since(*applied), Some(f), true)?;
                            *applied = end;
                            Ok::<(), Error>(())
                        }),
                    )
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|(disk, h)| match h.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        tracing::error!(disk, error = %e, "metadata replica failed; replaced after this commit");
                        Some(disk)
                    }
                    Err(_) => Some(disk),
                })
                .collect()
        });
        // Every live secondary has applied the queue and `f`, which took sequence number
        // `end - 1`.
        q.ops.clear();
        q.base = end;
        self.shared.drop_replicas(&failed);
        self.dirty.store(false, Ordering::Release);
        self.durable.store(number, Ordering::Release);
        Ok(result)
    }

    /// Metadata transactions committed on the primary replica since the store was opened
    /// (lazy or durable).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The change number ([`MetaStore::commits`], as returned by
    /// [`MetaStore::write_lazy_numbered`]) up to which every change is durable: the count
    /// right after the last durable commit (0 before the first one).
    pub fn durable_commits(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Current generation of the primary replica (the number of durable commits).
    pub fn generation(&self) -> Result<u64> {
        let tx = self.read()?;
        let t = tx.open_table(SUPER)?;
        let v = t.get("generation")?.map(|g| g.value()).unwrap_or(0);
        Ok(v)
    }

    /// The replica set recorded in the primary (what the last durable commit wrote).
    pub fn recorded_replica_disks(&self) -> Result<Vec<u32>> {
        let tx = self.read()?;
        Ok(replica_set_of(&tx)?.unwrap_or_default())
    }

    /// Register how replica disks are chosen (set once by the pool, before the first
    /// [`MetaStore::place`]).
    pub fn set_placement(&self, p: Placement) {
        let _ = self.placement.set(p);
    }

    /// Move the replicas to the disks the placement chooses, leaving out `exclude` (and disks
    /// whose replica failed since open): new replicas are copied from the primary and join
    /// the set in a durable commit before any replica leaves it, so there are never fewer
    /// valid replicas than before or than needed. A no-op when the live replicas, the recorded
    /// set and the placement agree. Takes the write lock (writers wait meanwhile).
    pub fn place(&self, exclude: &[u32]) -> Result<()> {
        let mut q = self.shared.lock_queue();
        self.place_locked(&mut q, exclude)
    }

    fn place_locked(&self, q: &mut Queue, exclude: &[u32]) -> Result<()> {
        let Some(placement) = self.placement.get() else {
            return Ok(());
        };
        let mut excluded = exclude.to_vec();
        // Each round either ends or leaves out one more disk (whose copy or commit failed).
        for _ in 0..64 {
            self.shared.short.store(false, Ordering::Release);
            excluded.extend(self.shared.lost());
            let live = self.live();
            let live_ids: Vec<u32> = live.iter().map(|r| r.disk).collect();
            let desired = placement(&live_ids, &excluded);
            if desired.is_empty() {
                return Err(Error::Meta(
                    "no disk can hold a metadata replica (every disk is missing or failed)".into(),
                ));
            }
            let want: Vec<u32> = desired.iter().map(|(d, _)| *d).collect();
            let recorded = {
                let primary = self.primary()?;
                let b = q.batch(&primary)?;
                let t = b.tx.open_table(STATE)?;
                let v = t.get(REPLICA_SET)?;
                v.map(|g| dec::<Vec<u32>>(g.value())).transpose()?
            };
            if same_disks(&want, &live_ids) && recorded.is_some_and(|r| same_disks(&r, &want)) {
                return Ok(());
            }
            let new: Vec<&(u32, PathBuf)> = desired
                .iter()
                .filter(|(d, _)| !live_ids.contains(d))
                .collect();
            if !new.is_empty() {
                // A durable commit first: the primary's file then holds every change, and every
                // live replica has the same generation as the copies.
                self.apply_locked(q, |_| Ok(()))?;
                // Any live replica is a good source: copy from one that stays (its disk is
                // not on its way out), falling back to the others.
                let mut sources = self.live();
                sources.sort_by_key(|r| !want.contains(&r.disk));
                let mut failed = false;
                for (disk, path) in new {
                    let mut copied = Err(Error::Meta("no live metadata replica".into()));
                    for src in &sources {
                        copied = copy_durable(&src.path, path).and_then(|()| {
                            Ok(Database::builder().set_cache_size(32 << 20).open(path)?)
                        });
                        match &copied {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(disk, from = src.disk, error = %e, "copying a metadata replica failed")
                            }
                        }
                    }
                    match copied {
                        Ok(db) => {
                            tracing::info!(disk, "metadata replica created");
                            self.shared
                                .replicas
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Replica::new(*disk, path.clone(), db, q.end()));
                        }
                        Err(e) => {
                            tracing::error!(disk, error = %e, "cannot create a metadata replica; trying another disk");
                            let _ = std::fs::remove_file(path);
                            excluded.push(*disk);
                            failed = true;
                        }
                    }
                }
                if failed {
                    continue;
                }
            }
            // Every replica, also those leaving, records the new set (leaving ones then know
            // they are former replicas, should they survive their deletion).
            self.apply_locked(q, |tx| put_replica_set(tx, &want))?;
            if self.shared.short.load(Ordering::Acquire) {
                continue;
            }
            let leaving: Vec<Arc<Replica>> = {
                let mut replicas = self
                    .shared
                    .replicas
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                let (stay, leave) = replicas.drain(..).partition(|r| want.contains(&r.disk));
                *replicas = stay;
                leave
            };
            for r in leaving {
                tracing::info!(disk = r.disk, "metadata replica removed");
                let path = r.path.clone();
                // Waits for a background catch-up of this replica, then closes it.
                drop(r.applied());
                drop(r);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a former metadata replica");
                }
            }
            return Ok(());
        }
        Err(Error::Meta(
            "metadata replicas could not be placed: too many disks failed".into(),
        ))
    }
}

/// Whether two lists hold the same disk ids.
fn same_disks(a: &[u32], b: &[u32]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Number of rows in a table of a read transaction (0 if the table does not exist yet).
pub fn table_len<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64> {
    match tx.open_table(def) {
        Ok(t) => Ok(t.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Read and decode a record from a table keyed by `K` in a read transaction.
pub fn get_rec<T: DeserializeOwned>(
    t: &impl ReadableTable<u64, &'static [u8]>,
    key: u64,
) -> Result<Option<T>> {
    match t.get(key)? {
        Some(g) => Ok(Some(dec(g.value())?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn key(i: u64) -> String {
        format!("k{i}")
    }

    /// Lazy changes reach the secondaries from the background thread (with durable commits
    /// racing it), and every replica ends up with every change and the same generation, which
    /// only durable commits bump.
    #[test]
    fn secondaries_catch_up_in_the_background_and_match_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<(u32, PathBuf)> = (1..=3)
            .map(|d| (d, dir.path().join(format!("r{d}.redb"))))
            .collect();
        let store = MetaStore::create(&paths, create_tables).unwrap();
        let first_gen = store.generation().unwrap();
        let first_commits = store.commits();
        const N: u64 = 2000;
        let mut durable = 0;
        for i in 0..N {
            store
                .write_lazy(move |tx| set_counter(tx, &key(i), i))
                .unwrap();
            if i % 300 == 299 {
                store.write(|tx| set_counter(tx, "durable", i)).unwrap();
                durable += 1;
            }
        }
        // No durable commit since the last one: the background thread empties the queue.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !store.shared.lock_queue().ops.is_empty() {
            assert!(Instant::now() < deadline, "the secondaries never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
        store.sync().unwrap();
        let gen = store.generation().unwrap();
        assert_eq!(
            gen,
            first_gen + durable + 1,
            "lazy commits bumped the generation"
        );
        assert_eq!(store.commits(), first_commits + N + durable + 1);
        drop(store);
        for (disk, path) in &paths {
            let db = Database::open(path).unwrap();
            assert_eq!(generation_of(&db).unwrap(), gen, "replica {disk}");
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(SUPER).unwrap();
            for i in 0..N {
                let v = t.get(key(i).as_str()).unwrap().map(|g| g.value());
                assert_eq!(v, Some(i), "replica {disk}, change {i}");
            }
        }
    }

    fn read_key(tx: &ReadTransaction, k: &str) -> Option<u64> {
        let t = tx.open_table(SUPER).unwrap();
        let v = t.get(k).unwrap().map(|g| g.value());
        v
    }

    /// Lazy changes gather in the primary's open transaction: visible through `view` and `read`
    /// at once, committed every `BATCH_MAX` changes; a change that fails midway leaves none of
    /// its writes and the batch's earlier changes stay, lazy or durable, on every replica.
    #[test]
    fn failed_change_in_the_open_batch_drops_only_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<(u32, PathBuf)> = (1..=2)
            .map(|d| (d, dir.path().join(format!("r{d}.redb"))))
            .collect();
        let store = MetaStore::create(&paths, create_tables).unwrap();
        let primary = store.primary().unwrap();
        let n = BATCH_MAX as u64 + 10;
        for i in 0..n {
            store
                .write_lazy(move |tx| set_counter(tx, &key(i), i))
                .unwrap();
        }
        // The first BATCH_MAX changes were committed; the last ten are in the open batch.
        let committed = primary.db.begin_read().unwrap();
        assert_eq!(read_key(&committed, &key(0)), Some(0));
        assert_eq!(read_key(&committed, &key(n - 1)), None);
        drop(committed);
        assert_eq!(store.view(|tx| counter(tx, &key(n - 1))).unwrap(), n - 1);
        let failing = |tx: &WriteTransaction| -> Result<()> {
            set_counter(tx, "partial", 1)?;
            Err(Error::Errno(libc::EEXIST))
        };
        assert!(matches!(
            store.write_lazy(failing),
            Err(Error::Errno(libc::EEXIST))
        ));
        assert_eq!(store.view(|tx| counter(tx, "partial")).unwrap(), 0);
        assert_eq!(store.view(|tx| counter(tx, &key(n - 1))).unwrap(), n - 1);
        // A read transaction sees the whole batch.
        let tx = store.read().unwrap();
        assert_eq!(read_key(&tx, &key(n - 1)), Some(n - 1));
        assert_eq!(read_key(&tx, "partial"), None);
        drop(tx);
        store
            .write_lazy(move |tx| set_counter(tx, "after", 7))
            .unwrap();
        assert!(store.write(failing).is_err());
        assert_eq!(store.view(|tx| counter(tx, "after")).unwrap(), 7);
        store.sync().unwrap();
        drop((store, primary));
        for (disk, path) in &paths {
            let db = Database::open(path).unwrap();
            let tx = db.begin_read().unwrap();
            for i in 0..n {
                assert_eq!(read_key(&tx, &key(i)), Some(i), "replica {disk}");
            }
            assert_eq!(read_key(&tx, "after"), Some(7), "replica {disk}");
            assert_eq!(read_key(&tx, "partial"), None, "replica {disk}");
        }
    }

    /// A placement over disk ids 1..=n, `count` replicas, lowest ids first; `paths[d]` is the
    /// replica file of disk `d`.
    fn placement(paths: Vec<PathBuf>, count: usize) -> Placement {
        Arc::new(move |_live: &[u32], exclude: &[u32]| {
            (1..paths.len() as u32)
                .filter(|d| !exclude.contains(d))
                .take(count)
                .map(|d| (d, paths[d as usize].clone()))
                .collect()
        })
    }

    fn recorded(path: &Path) -> Vec<u32> {
        let db = Database::open(path).unwrap();
        let tx = db.begin_read().unwrap();
        replica_set_of(&tx).unwrap().unwrap()
    }

    /// A copy that cannot be made (disk 2's meta directory is a file) leaves that disk out and
    /// places the replica on the next one; the old replicas stay until the new set commits.
    #[test]
    fn place_skips_a_disk_where_the_copy_fails() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..=4)
            .map(|d| dir.path().join(format!("d{d}")).join("meta").join("r.redb"))
            .collect();
        for p in &paths {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        std::fs::remove_dir(paths[2].parent().unwrap()).unwrap();
        std::fs::write(paths[2].parent().unwrap(), b"not a directory").unwrap();
        let store =
            MetaStore::create(&[(1, paths[1].clone())], |tx| set_counter(tx, "x", 7)).unwrap();
        store.set_placement(placement(paths.clone(), 2));
        store.place(&[]).unwrap();
        assert_eq!(store.replica_disks(), vec![1, 3]);
        assert_eq!(store.recorded_replica_disks().unwrap(), vec![1, 3]);
        store.write(|tx| set_counter(tx, "x", 8)).unwrap();
        drop(store);
        let (store, report) =
            MetaStore::open(&[(1, paths[1].clone()), (3, paths[3].clone())]).unwrap();
        assert_eq!(report.members, vec![1, 3]);
        assert!(report.resynced.is_empty());
        assert_eq!(store.view(|tx| counter(tx, "x")).unwrap(), 8);
        drop(store);
        assert_eq!(recorded(&paths[3]), vec![1, 3]);
    }

    /// A replica dropped after a failure (as a failed commit drops it) is replaced by the next
    /// durable commit, on a disk the placement chooses without the lost one.
    #[test]
    fn a_lost_replica_is_replaced_at_the_next_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..=4)
            .map(|d| dir.path().join(format!("r{d}.redb")))
            .collect();
        let initial: Vec<(u32, PathBuf)> =
            (1..=3).map(|d| (d, paths[d as usize].clone())).collect();
        let store = MetaStore::create(&initial, |_| Ok(())).unwrap();
        store.set_placement(placement(paths.clone(), 3));
        store.place(&[]).unwrap();
        assert_eq!(store.replica_disks(), vec![1, 2, 3]);
        store.write_lazy(|tx| set_counter(tx, "lazy", 1)).unwrap();
        store.shared.drop_replicas(&[2]);
        assert_eq!(store.replica_disks(), vec![1, 3]);
        store.write(|tx| set_counter(tx, "durable", 2)).unwrap();
        assert_eq!(store.replica_disks(), vec![1, 3, 4]);
        assert_eq!(store.recorded_replica_disks().unwrap(), vec![1, 3, 4]);
        drop(store);
        // Disk 2's file is a former replica (older generation, a set with itself) and is
        // deleted at open; the new replica has every change.
        let all: Vec<(u32, PathBuf)> = (1..=4).map(|d| (d, paths[d as usize].clone())).collect();
        let (store, report) = MetaStore::open(&all).unwrap();
        assert_eq!(report.stale_removed, vec![2]);
        assert!(!paths[2].exists());
        drop(store);
        let db = Database::open(&paths[4]).unwrap();
        let tx = db.begin_read().unwrap();
        assert_eq!(read_key(&tx, "lazy"), Some(1));
        assert_eq!(read_key(&tx, "durable"), Some(2));
    }
}
