//! The pool: disks, placement, extent write/read with verification and reconstruction, orphan
//! collection, disk health and membership.

use crate::codec;
use crate::config::{check_extent_size, PoolConfig};
use crate::disk::{self, DiskIdentity, Health};
use crate::error::{Error, Result};
use crate::io::{DiskIo, StdIo};
use crate::meta::{self, DiskRec, Extent, Frag, Inode, MetaStore, OpenReport};
use crate::policy::Policy;
use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Arguments of [`Pool::init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Disk directories (must exist, must not belong to a pool).
    pub disks: Vec<PathBuf>,
    /// Default policy.
    pub policy: Policy,
    /// Extent size in bytes.
    pub extent_size: u64,
}

/// Runtime state of one disk.
#[derive(Debug)]
pub struct DiskState {
    /// Disk id.
    pub id: u32,
    /// Directory.
    pub path: PathBuf,
    health: RwLock<Health>,
    /// Its identity file was found and matches the pool.
    pub present: bool,
    errors: AtomicU32,
    /// Capacity recorded when the disk joined.
    pub capacity: u64,
}

impl DiskState {
    /// Current health.
    pub fn health(&self) -> Health {
        *self.health.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Fragments may be read from this disk.
    pub fn readable(&self) -> bool {
        self.present && self.health().readable()
    }

    /// New fragments may be written to this disk.
    pub fn writable(&self) -> bool {
        self.present && self.health().writable()
    }

    /// I/O errors counted since open.
    pub fn errors(&self) -> u32 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What [`Pool::gc`] removed.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct GcReport {
    /// Orphan fragment files (and temporaries) removed.
    pub fragments: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Unlinked inodes (link count 0, left by a crash) removed.
    pub inodes: u64,
}

/// Result of reading an extent's fragments.
#[derive(Debug, Default, Clone)]
pub struct ReadOutcome {
    /// Fragment indexes that were missing, unreadable or failed their checksum.
    pub bad: Vec<usize>,
    /// Of those, indexes rewritten in place.
    pub repaired: Vec<usize>,
}

/// Decoded extents kept for reads: at most this many...
const CACHE_EXTENTS: usize = 32;
/// ...and no more than this many bytes' worth of full extents (16 extents of 4 MiB).
const CACHE_BYTES: usize = 64 << 20;

/// Files of at most this many bytes are stored inline in the metadata instead of as fragment
/// files: the metadata has replicas on M + 1 disks for the highest tolerance M in use, and a
/// Extent ids covered by one raise of the `next_extent` counter (see [`Pool::link_extent`]).
const EXTENT_RESERVE: u64 = 1024;

/// fragment file costs at least a 4 KiB block per fragment anyway.
pub const INLINE_MAX: usize = 4096;

/// An open pool. Holds `POOL/pool.lock` until dropped.
pub struct Pool {
    dir: PathBuf,
    config: RwLock<PoolConfig>,
    io: Arc<dyn DiskIo>,
    /// Replicated metadata.
    pub meta: MetaStore,
    disks: Arc<RwLock<Vec<Arc<DiskState>>>>,
    /// Metadata replicas needed: the highest policy tolerance in use + 1 ([`meta::TOLERANCE`]).
    meta_copies: Arc<AtomicUsize>,
    next_extent: AtomicU64,
    /// Extents whose fragments are being written or are written and not yet committed (from
    /// [`Pool::write_extent`] until [`Pool::extents_committed`] or [`Pool::free_extents`]):
    /// [`Pool::gc_mounted`] leaves their fragments alone.
    uncommitted: Mutex<std::collections::HashSet<u64>>,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    read_only: AtomicBool,
    /// How metadata was chosen at open.
    pub open_report: OpenReport,
    /// Counters for monitoring.
    pub metrics: crate::metrics::Metrics,
    /// Disks with fragment writes not yet synced.
    unsynced: Arc<Mutex<std::collections::BTreeSet<PathBuf>>>,
    _lock: File,
    /// For an inspection open: the private copies of the metadata replicas it reads (removed
    /// after `meta`, declared above, is closed).
    _scratch: Option<Scratch>,
}

/// A private temporary directory, removed with its contents when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let t = meta::Ts::now();
        let dir = std::env::temp_dir().join(format!(
            "dynfs-inspect-{}-{}-{}",
            std::process::id(),
            t.secs,
            t.nanos
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let t = meta::Ts::now();
    let h = blake3::hash(&[&b[..], &t.secs.to_le_bytes(), &t.nanos.to_le_bytes()].concat());
    h.to_hex()[..32].to_string()
}

/// Sync the disks in `unsynced` (taking them out of it); on failure, the disks not known to be
/// synced go back into it.
fn sync_unsynced(
    io: &dyn DiskIo,
    unsynced: &Mutex<std::collections::BTreeSet<PathBuf>>,
) -> Result<()> {
    let disks: Vec<PathBuf> =
        std::mem::take(&mut *unsynced.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect();
    if disks.is_empty() {
        return Ok(());
    }
    io.sync_disks(&disks).map_err(|(i, e)| {
        let failed = disks.get(i).cloned().unwrap_or_default();
        unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(disks.into_iter().skip(i));
        Error::io(&failed, e)
    })
}

fn lock_pool(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let p = dir.join("pool.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    // SAFETY: flock on a file descriptor we own and keep open for the call's duration.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::InUse(dir.to_path_buf()));
    }
    Ok(f)
}

/// Make a path absolute and normalised, failing if it does not exist.
fn canonical(p: &Path) -> std::result::Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The root inode of a new filesystem.
pub fn new_inode(kind: meta::Kind, perm: u32, uid: u32, gid: u32, parent: u64) -> Inode {
    let now = meta::Ts::now();
    Inode {
        kind,
        perm,
        uid,
        gid,
        size: 0,
        nlink: if kind == meta::Kind::Dir { 2 } else { 1 },
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent,
        policy: None,
        target: Vec::new(),
        alloc: 0,
    }
}

/// A disk that may hold a metadata replica, as [`choose_meta_disks`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaCandidate {
    /// Disk id.
    pub id: u32,
    /// Preference: 0 healthy, 1 degraded, 2 suspect, 3 draining (failed and missing disks are
    /// no candidates).
    pub tier: u8,
    /// Device of the filesystem holding the disk (replicas spread over devices first).
    pub device: u64,
}

impl MetaCandidate {
    /// The candidate for a disk, if it can hold a replica (present and not failed).
    pub fn of(d: &DiskState) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let tier = match d.health() {
            _ if !d.present => return None,
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Suspect => 2,
            Health::Draining => 3,
            Health::Failed => return None,
        };
        let device = std::fs::metadata(&d.path).map_or(0, |m| m.dev());
        Some(MetaCandidate {
            id: d.id,
            tier,
            device,
        })
    }
}

/// Choose `count` disks for metadata replicas (fewer if there are fewer candidates), given the
/// disks holding replicas now (`current`). One at a time, the best remaining candidate by: its
/// health tier, whether it holds a replica now (no needless moves: adding a disk moves
/// nothing), whether its device already holds a chosen replica (spreading), and its id.
/// Deterministic; the result is sorted by id.
pub fn choose_meta_disks(cands: &[MetaCandidate], current: &[u32], count: usize) -> Vec<u32> {
    let mut left: Vec<&MetaCandidate> = cands.iter().collect();
    let mut chosen: Vec<&MetaCandidate> = Vec::new();
    while chosen.len() < count {
        let best = left.iter().enumerate().min_by_key(|(_, c)| {
            (
                c.tier,
                !current.contains(&c.id),
                chosen.iter().any(|x| x.device == c.device),
                c.id,
            )
        });
        let Some((i, _)) = best else { break };
        chosen.push(left.swap_remove(i));
    }
    let mut ids: Vec<u32> = chosen.into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

/// The placement of metadata replicas over `disks` (see [`choose_meta_disks`]).
fn meta_placement(
    disks: Arc<RwLock<Vec<Arc<DiskState>>>>,
    copies: Arc<AtomicUsize>,
) -> meta::Placement {
    Arc::new(move |live: &[u32], exclude: &[u32]| {
        let disks = disks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let cands: Vec<MetaCandidate> = disks
            .iter()
            .filter(|d| !exclude.contains(&d.id))
            .filter_map(|d| MetaCandidate::of(d))
            .collect();
        let count = copies.load(Ordering::Relaxed);
        choose_meta_disks(&cands, live, count)
            .into_iter()
            .filter_map(|id| disks.iter().find(|d| d.id == id))
            .map(|d| (d.id, disk::meta_path(&d.path)))
            .collect()
    })
}

/// The highest tolerance of any policy in the metadata: `user.dynfs.policy` overrides of any
/// tree and the policies of extents (for pools made before [`meta::TOLERANCE`] was kept).
fn scan_tolerance(tx: &redb::ReadTransaction) -> Result<usize> {
    let mut m = 0;
    for row in tx.open_table(meta::INODES)?.iter()? {
        let (_, v) = row?;
        let i: Inode = meta::dec(v.value())?;
        m = m.max(i.policy.map_or(0, |p| p.tolerance()));
    }
    for row in tx.open_table(meta::EXTENTS)?.iter()? {
        let (_, v) = row?;
        let e: Extent = meta::dec(v.value())?;
        m = m.max(e.policy.tolerance());
    }
    Ok(m)
}

fn check_new_disk(p: &Path, errs: &mut Vec<String>) -> Option<PathBuf> {
    match canonical(p) {
        Err(e) => {
            errs.push(format!("disk {e}"));
            None
        }
        Ok(c) if !c.is_dir() => {
            errs.push(format!("disk {} is not a directory", c.display()));
            None
        }
        Ok(c) => {
            match DiskIdentity::load(&c) {
                Ok(Some(id)) => errs.push(format!(
                    "disk {} already belongs to pool {} (disk id {})",
                    c.display(),
                    id.pool_id,
                    id.disk_id
                )),
                Ok(None) => {}
                Err(e) => errs.push(format!("disk {}: {e}", c.display())),
            }
            if disk::meta_path(&c).exists() {
                errs.push(format!("disk {} already holds dynfs metadata", c.display()));
            }
            Some(c)
        }
    }
}

impl Pool {
    /// Create a new pool. Validates everything first; on a validation error nothing is changed.
    pub fn init(pool_dir: &Path, opts: &InitOptions) -> Result<()> {
        let mut errs = Vec::new();
        if pool_dir.join(crate::config::CONFIG_FILE).exists() {
            errs.push(format!("{} already holds a pool", pool_dir.display()));
        }
        if let Err(e) = check_extent_size(opts.extent_size) {
            errs.push(e.to_string());
        }
        if opts.disks.len() < opts.policy.width() {
            errs.push(format!(
                "policy {} needs at least {} disks, {} given",
                opts.policy,
                opts.policy.width(),
                opts.disks.len()
            ));
        }
        let mut disks: Vec<PathBuf> = Vec::new();
        for d in &opts.disks {
            if let Some(c) = check_new_disk(d, &mut errs) {
                if disks.contains(&c) {
                    errs.push(format!("disk {} given twice", c.display()));
                } else {
                    disks.push(c);
                }
            }
        }
        if !errs.is_empty() {
            return Err(Error::Config(errs));
        }
        std::fs::create_dir_all(pool_dir).map_err(|e| Error::io(pool_dir, e))?;
        let pool_dir = canonical(pool_dir).map_err(Error::Invalid)?;
        let pool_id = random_id();
        let mut recs = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            disk::create_layout(d)?;
            let capacity = disk::fs_space(d)?.0;
            let id = i as u32 + 1;
            DiskIdentity {
                disk_id: id,
                pool_id: pool_id.clone(),
                health: Health::Healthy,
                capacity,
            }
            .store(d)?;
            recs.push(DiskRec {
                id,
                path: d.to_string_lossy().into_owned(),
                health: Health::Healthy,
                capacity,
            });
        }
        // Metadata replicas on M + 1 of the disks.
        let cands: Vec<MetaCandidate> = recs
            .iter()
            .map(|r| {
                use std::os::unix::fs::MetadataExt;
                MetaCandidate {
                    id: r.id,
                    tier: 0,
                    device: std::fs::metadata(&r.path).map_or(0, |m| m.dev()),
                }
            })
            .collect();
        let tolerance = opts.policy.tolerance();
        let chosen = choose_meta_disks(&cands, &[], tolerance + 1);
        let paths: Vec<(u32, PathBuf)> = recs
            .iter()
            .filter(|r| chosen.contains(&r.id))
            .map(|r| (r.id, disk::meta_path(Path::new(&r.path))))
            .collect();
        let store = MetaStore::create(&paths, |tx| {
            meta::create_tables(tx)?;
            meta::set_counter(tx, meta::TOLERANCE, tolerance as u64)?;
            meta::set_counter(tx, "next_ino", 2)?;
            meta::set_counter(tx, "next_extent", 1)?;
            meta::set_counter(tx, "next_snap", 1)?;
            let root = new_inode(meta::Kind::Dir, 0o755, 0, 0, meta::ROOT_INO);
            tx.open_table(meta::INODES)?
                .insert((meta::LIVE, meta::ROOT_INO), meta::enc(&root)?.as_slice())?;
            let mut t = tx.open_table(meta::DISKS)?;
            for r in &recs {
                t.insert(r.id, meta::enc(r)?.as_slice())?;
            }
            Ok(())
        })?;
        drop(store);
        PoolConfig {
            pool_id,
            default_policy: opts.policy,
            extent_size: opts.extent_size,
            disks,
            scrub_rate_mb_s: 0.0,
            suspect_after_errors: 3,
            fail_after_errors: 10,
            write_buffer_mib: crate::config::DEFAULT_WRITE_BUFFER_MIB,
        }
        .store(&pool_dir)?;
        Ok(())
    }

    /// Open a pool with the standard fragment I/O, collecting orphans.
    pub fn open(pool_dir: &Path) -> Result<Pool> {
        Self::open_with(pool_dir, Arc::new(StdIo))
    }

    /// Open a pool with a given fragment I/O implementation, collecting orphans.
    pub fn open_with(pool_dir: &Path, io: Arc<dyn DiskIo>) -> Result<Pool> {
        let pool = Self::open_no_gc(pool_dir, io)?;
        // `gc` logs what it collected.
        pool.gc()?;
        Ok(pool)
    }

    /// Open without collecting orphans.
    pub fn open_no_gc(pool_dir: &Path, io: Arc<dyn DiskIo>) -> Result<Pool> {
        Self::open_mode(pool_dir, io, false)
    }

    /// Open for inspection only (`dynfs status`): nothing on the disks changes. The metadata
    /// replicas are read from private copies in the temporary directory (redb writes its
    /// header at every open and close, and a stale replica would be resynced); there is no
    /// orphan collection, no replica placement, no counter update, and the pool is read-only
    /// ([`Pool::set_read_only`]). Costs a copy of each metadata replica.
    pub fn open_inspect(pool_dir: &Path) -> Result<Pool> {
        let pool = Self::open_mode(pool_dir, Arc::new(StdIo), true)?;
        pool.set_read_only();
        Ok(pool)
    }

    fn open_mode(pool_dir: &Path, io: Arc<dyn DiskIo>, inspect: bool) -> Result<Pool> {
        let lock = lock_pool(pool_dir)?;
        let config = PoolConfig::load(pool_dir)?;
        let mut present = Vec::new();
        for d in &config.disks {
            match DiskIdentity::load(d) {
                Ok(Some(id)) if id.pool_id == config.pool_id => {
                    present.push((id.disk_id, d.clone()))
                }
                Ok(Some(id)) => {
                    tracing::warn!(disk = %d.display(), other = %id.pool_id, "disk belongs to another pool; ignored")
                }
                Ok(None) => tracing::warn!(disk = %d.display(), "disk missing or not initialised"),
                Err(e) => {
                    tracing::warn!(disk = %d.display(), error = %e, "cannot read disk identity")
                }
            }
        }
        let mut paths: Vec<(u32, PathBuf)> = present
            .iter()
            .map(|(id, d)| (*id, disk::meta_path(d)))
            .collect();
        let scratch = if inspect {
            let s = Scratch::new()?;
            for (id, p) in paths.iter_mut() {
                let copy = s.0.join(format!("disk{id}.redb"));
                if p.exists() {
                    std::fs::copy(&*p, &copy).map_err(|e| Error::io(&*p, e))?;
                }
                *p = copy;
            }
            Some(s)
        } else {
            None
        };
        let (store, report) = MetaStore::open(&paths)?;
        let tx = store.read()?;
        let mut disks = Vec::new();
        {
            let t = tx.open_table(meta::DISKS)?;
            for row in t.iter()? {
                let (_, v) = row?;
                let r: DiskRec = meta::dec(v.value())?;
                let is_present = present.iter().any(|(id, _)| *id == r.id);
                if !is_present {
                    tracing::warn!(disk = r.id, path = %r.path, "disk not present: treated as failed until it returns");
                }
                disks.push(Arc::new(DiskState {
                    id: r.id,
                    path: PathBuf::from(&r.path),
                    health: RwLock::new(r.health),
                    present: is_present,
                    errors: AtomicU32::new(0),
                    capacity: r.capacity,
                }));
            }
        }
        let (next_extent, recorded_tolerance) = {
            let t = tx.open_table(meta::SUPER)?;
            let v = t.get("next_extent")?.map(|g| g.value()).unwrap_or(1);
            let m = t.get(meta::TOLERANCE)?.map(|g| g.value() as usize);
            (v, m)
        };
        // Pools made before the tolerance was kept: scan once. A pool whose recorded tolerance
        // is above its default policy's (an override of higher tolerance was set) is scanned
        // at every open: once no override, extent or inline file (of the live tree or of a
        // snapshot) uses that tolerance any more, it drops, and with it the replica count
        // (placement below removes the extra replicas; before any data under a higher
        // policy is committed again, `require_tolerance` raises it first). The scan reads
        // every inode and extent record, as the orphan collection at open does anyway.
        let default_tolerance = config.default_policy.tolerance();
        let scanned = match recorded_tolerance {
            Some(m) if m <= default_tolerance || inspect => None,
            _ => Some(scan_tolerance(&tx)?),
        };
        drop(tx);
        let tolerance = scanned
            .or(recorded_tolerance)
            .unwrap_or(0)
            .max(default_tolerance);
        if let Some(old) = recorded_tolerance.filter(|&m| tolerance < m) {
            tracing::info!(
                from = old + 1,
                to = tolerance + 1,
                "no policy of higher tolerance is in use any more: fewer metadata replicas"
            );
        }
        if Some(tolerance) != recorded_tolerance && !inspect {
            store.write(|tx| meta::set_counter(tx, meta::TOLERANCE, tolerance as u64))?;
        }
        let unsynced: Arc<Mutex<std::collections::BTreeSet<PathBuf>>> = Arc::default();
        {
            let (unsynced, io) = (unsynced.clone(), io.clone());
            store.set_pre_durable(Arc::new(move || sync_unsynced(&*io, &unsynced)));
        }
        let disks = Arc::new(RwLock::new(disks));
        let meta_copies = Arc::new(AtomicUsize::new(tolerance + 1));
        store.set_placement(meta_placement(disks.clone(), meta_copies.clone()));
        // Converge to the placement: replaces replicas of missing or failed disks, and moves
        // pools made before it from a replica on every disk to M + 1.
        if !inspect {
            if let Err(e) = store.place(&[]) {
                tracing::error!(error = %e, "cannot place the metadata replicas");
            }
        }
        Ok(Pool {
            dir: pool_dir.to_path_buf(),
            config: RwLock::new(config),
            io,
            meta: store,
            meta_copies,
            disks,
            next_extent: AtomicU64::new(next_extent.max(1)),
            uncommitted: Mutex::new(std::collections::HashSet::new()),
            cache: Mutex::new(VecDeque::new()),
            read_only: AtomicBool::new(false),
            open_report: report,
            metrics: Default::default(),
            unsynced: unsynced.clone(),
            _lock: lock,
            _scratch: scratch,
        })
    }

    /// Sync the disks holding fragments written since the last sync. Every durable metadata
    /// commit does this first anyway (under the metadata lock); doing it before, without the
    /// lock, leaves the commit only the fragments written meanwhile, so lazy commits of other
    /// requests do not wait for a whole `syncfs`.
    pub fn sync_fragments(&self) -> Result<()> {
        sync_unsynced(&*self.io, &self.unsynced)
    }

    /// The pool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A copy of the pool options.
    pub fn config(&self) -> PoolConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Extent size in bytes.
    pub fn extent_size(&self) -> u64 {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .extent_size
    }

    /// Snapshot of the disk list.
    pub fn disks(&self) -> Vec<Arc<DiskState>> {
        self.disks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn disk(&self, id: u32) -> Option<Arc<DiskState>> {
        self.disks().into_iter().find(|d| d.id == id)
    }

    /// Refuse further writes (set when metadata can no longer be committed).
    pub fn set_read_only(&self) {
        self.read_only.store(true, Ordering::Relaxed);
    }

    /// Number of disks that could take new fragments.
    pub fn writable_disks(&self) -> usize {
        self.disks().iter().filter(|d| d.writable()).count()
    }

    /// Check that `policy` can be placed on the current writable disks.
    pub fn check_placeable(&self, policy: Policy) -> Result<()> {
        let n = self.writable_disks();
        if n < policy.width() {
            return Err(Error::NoSpace {
                policy: policy.to_string(),
                needed: policy.width(),
                available: n,
            });
        }
        Ok(())
    }

    /// Record an I/O error against a disk, moving it to suspect or failed past the thresholds.
    pub fn note_error(&self, disk: u32) {
        let Some(d) = self.disk(disk) else { return };
        let n = d.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let cfg = self.config();
        let target = if n >= cfg.fail_after_errors {
            Health::Failed
        } else if n >= cfg.suspect_after_errors {
            Health::Suspect
        } else {
            return;
        };
        let cur = d.health();
        let worse = matches!(
            (cur, target),
            (Health::Healthy | Health::Degraded, _)
                | (Health::Suspect | Health::Draining, Health::Failed)
        );
        if worse {
            tracing::warn!(disk, errors = n, from = %cur, to = %target, "disk health changed after I/O errors");
            if let Err(e) = self.set_health(disk, target) {
                tracing::error!(disk, error = %e, "cannot record disk health");
            }
        }
    }

    /// Set a disk's health (recorded in metadata and, best effort, in its identity file).
    pub fn set_health(&self, disk: u32, health: Health) -> Result<()> {
        let d = self
            .disk(disk)
            .ok_or_else(|| Error::Invalid(format!("no disk with id {disk} in this pool")))?;
        self.meta.write(|tx| {
            let mut t = tx.open_table(meta::DISKS)?;
            let mut r: DiskRec = match t.get(disk)? {
                Some(g) => meta::dec(g.value())?,
                None => return Err(Error::Invalid(format!("no disk with id {disk}"))),
            };
            r.health = health;
            t.insert(disk, meta::enc(&r)?.as_slice())?;
            Ok(())
        })?;
        *d.health.write().unwrap_or_else(|e| e.into_inner()) = health;
        if d.present {
            if let Ok(Some(mut id)) = DiskIdentity::load(&d.path) {
                id.health = health;
                let _ = id.store(&d.path);
            }
        }
        // A replica on a disk that is no longer healthy moves elsewhere (the new one is
        // made before the old one goes).
        self.place_meta_replicas(&[]);
        Ok(())
    }

    /// Metadata replicas the pool needs: the highest tolerance of any policy in use, plus one
    /// (fewer disks may hold them if fewer can).
    pub fn meta_replicas_needed(&self) -> usize {
        self.meta_copies.load(Ordering::Relaxed)
    }

    /// Make sure the metadata has replicas enough for a policy of tolerance `tolerance` (before
    /// any data under that policy is committed): records it and adds replicas if needed.
    pub fn require_tolerance(&self, tolerance: usize) -> Result<()> {
        if tolerance < self.meta_replicas_needed() {
            return Ok(());
        }
        self.meta.write(|tx| {
            let m = meta::counter(tx, meta::TOLERANCE)?.max(tolerance as u64);
            meta::set_counter(tx, meta::TOLERANCE, m)
        })?;
        self.meta_copies.fetch_max(tolerance + 1, Ordering::Relaxed);
        self.meta.place(&[])
    }

    /// Move metadata replicas to the disks the placement chooses (errors are logged: the
    /// replicas stay where they are).
    fn place_meta_replicas(&self, exclude: &[u32]) {
        if let Err(e) = self.meta.place(exclude) {
            tracing::error!(error = %e, "cannot place the metadata replicas");
        }
    }

    fn choose_disks(&self, count: usize, seed: u64, exclude: &[u32]) -> Vec<Arc<DiskState>> {
        let mut c: Vec<_> = self
            .disks()
            .into_iter()
            .filter(|d| d.writable() && !exclude.contains(&d.id))
            .collect();
        if c.is_empty() {
            return c;
        }
        let n = c.len();
        c.rotate_left((seed % n as u64) as usize);
        c.truncate(count);
        c
    }

    fn frag_path(&self, disk: &DiskState, extent: u64, index: usize) -> PathBuf {
        disk::fragment_path(&disk.path, extent, index)
    }

    /// Encode `data` under `policy` and write its fragments to distinct healthy disks. The
    /// fragments are synced (`syncfs` of their disks) before the next durable metadata commit,
    /// which is what makes any commit referencing them durable. Returns the new extent id and
    /// record (with `refs == 0`); the caller must reference it in a metadata commit via
    /// [`Pool::link_extent`].
    ///
    /// The fragments are written one after another on the calling thread (a flush stores
    /// several extents at once on its own threads); replicas and Reed–Solomon data shards are
    /// written straight from `data`, and a replica's checksum is computed once.
    pub fn write_extent(&self, policy: Policy, data: &[u8]) -> Result<(u64, Extent)> {
        if self.read_only.load(Ordering::Relaxed) {
            return Err(Error::Errno(libc::EROFS));
        }
        let id = self.next_extent.fetch_add(1, Ordering::Relaxed);
        self.uncommitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        let r = codec::encode_borrowed(policy, data)
            .and_then(|frags| self.place_fragments(id, policy, data.len(), &frags, &[]));
        if r.is_err() {
            // Nothing of it is left on the disks (or what is left is an orphan).
            self.extents_committed([id]);
        }
        r
    }

    /// The extents `ids` ([`Pool::write_extent`]) are committed (or given up): garbage
    /// collection on a mounted pool may judge their fragments by the metadata again.
    pub fn extents_committed(&self, ids: impl IntoIterator<Item = u64>) {
        let mut u = self.uncommitted.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            u.remove(&id);
        }
    }

    /// Write the given fragments of extent `id` to distinct disks, avoiding `exclude`.
    fn place_fragments(
        &self,
        id: u64,
        policy: Policy,
        len: usize,
        frags: &[std::borrow::Cow<'_, [u8]>],
        exclude: &[u32],
    ) -> Result<(u64, Extent)> {
        let width = frags.len();
        let chosen = self.choose_disks(width, id, exclude);
        if chosen.len() < width {
            return Err(Error::NoSpace {
                policy: policy.to_string(),
                needed: width,
                available: chosen.len() + exclude.len(),
            });
        }
        let results: Vec<std::io::Result<()>> = frags
            .iter()
            .zip(&chosen)
            .enumerate()
            .map(|(i, (f, d))| self.io.write_unsynced(&self.frag_path(d, id, i), f))
            .collect();
        let mut placed: Vec<Option<u32>> = vec![None; width];
        let mut used: Vec<u32> = exclude.to_vec();
        used.extend(chosen.iter().map(|d| d.id));
        let mut last_err = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => placed[i] = Some(chosen[i].id),
                Err(e) => {
                    tracing::warn!(disk = chosen[i].id, extent = id, error = %e, "fragment write failed; trying another disk");
                    self.note_error(chosen[i].id);
                    let _ = self
                        .io
                        .remove(&crate::io::temp_path(&self.frag_path(&chosen[i], id, i)));
                    last_err = Some(Error::io(self.frag_path(&chosen[i], id, i), e));
                }
            }
        }
        for i in 0..width {
            while placed[i].is_none() {
                let Some(d) = self
                    .choose_disks(1, id + i as u64, &used)
                    .into_iter()
                    .next()
                else {
                    // Give up: remove what was written; report the failure.
                    for (j, p) in placed.iter().enumerate() {
                        if let Some(p) = p.and_then(|p| self.disk(p)) {
                            let _ = self.io.remove(&self.frag_path(&p, id, j));
                        }
                    }
                    return Err(last_err.unwrap_or(Error::NoSpace {
                        policy: policy.to_string(),
                        needed: width,
                        available: 0,
                    }));
                };
                used.push(d.id);
                let path = self.frag_path(&d, id, i);
                match self.io.write_unsynced(&path, &frags[i]) {
                    Ok(()) => placed[i] = Some(d.id),
                    Err(e) => {
                        self.note_error(d.id);
                        let _ = self.io.remove(&path);
                        last_err = Some(Error::io(path, e));
                    }
                }
            }
        }
        {
            let mut u = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            for d in placed.iter().flatten().filter_map(|d| self.disk(*d)) {
                u.insert(d.path.clone());
            }
        }
        let frag_len = frags.first().map_or(0, |f| f.len());
        crate::metrics::Metrics::add(&self.metrics.extents_written, 1);
        // Replicas are the same bytes: hash them once.
        let mut sums: Vec<[u8; 32]> = Vec::with_capacity(width);
        for (i, f) in frags.iter().enumerate() {
            let same = i > 0 && std::ptr::eq(f.as_ref(), frags[i - 1].as_ref());
            sums.push(match (same, sums.last()) {
                (true, Some(&s)) => s,
                _ => codec::checksum(f),
            });
        }
        let ext = Extent {
            policy,
            len: len as u32,
            frag_len: frag_len as u32,
            frags: sums
                .into_iter()
                .zip(placed)
                .map(|(sum, d)| Frag {
                    disk: d.unwrap_or(0),
                    sum,
                })
                .collect(),
            refs: 0,
        };
        Ok((id, ext))
    }

    /// In a metadata transaction: record a new extent with `refs` references.
    pub fn link_extent(tx: &WriteTransaction, id: u64, ext: &Extent, refs: u32) -> Result<()> {
        let mut e = ext.clone();
        e.refs = refs;
        tx.open_table(meta::EXTENTS)?
            .insert(id, meta::enc(&e)?.as_slice())?;
        // Every committed extent id stays below the committed counter (ids are handed out in
        // memory and may commit in any order), so ids handed out after a reopen never collide.
        // Raising it a range at a time writes the counter once per EXTENT_RESERVE links instead
        // of in every link, on every replica; the rule depends on `id` and the counter only,
        // so every replica replaying the change computes the same value.
        let next = meta::counter(tx, "next_extent")?;
        if next <= id {
            meta::set_counter(tx, "next_extent", id + EXTENT_RESERVE)?;
        }
        Ok(())
    }

    /// A new extent holding `data` inline in the metadata (no fragment files, no I/O): for files
    /// of at most [`INLINE_MAX`] bytes. Returns its id, its record (with `refs == 0`) and the
    /// value to store with [`Pool::link_inline`].
    pub fn inline_extent(&self, policy: Policy, data: &[u8]) -> Result<(u64, Extent, Vec<u8>)> {
        if self.read_only.load(Ordering::Relaxed) {
            return Err(Error::Errno(libc::EROFS));
        }
        if data.len() > INLINE_MAX {
            return Err(Error::Invalid(format!(
                "{} bytes is too large to store inline",
                data.len()
            )));
        }
        let id = self.next_extent.fetch_add(1, Ordering::Relaxed);
        let mut value = codec::checksum(data).to_vec();
        value.extend_from_slice(data);
        let ext = Extent {
            policy,
            len: data.len() as u32,
            frag_len: 0,
            frags: Vec::new(),
            refs: 0,
        };
        Ok((id, ext, value))
    }

    /// In a metadata transaction: record a new inline extent (from [`Pool::inline_extent`]).
    pub fn link_inline(
        tx: &WriteTransaction,
        id: u64,
        ext: &Extent,
        value: &[u8],
        refs: u32,
    ) -> Result<()> {
        tx.open_table(meta::INLINE)?.insert(id, value)?;
        Self::link_extent(tx, id, ext, refs)
    }

    /// Read and verify the data of an inline extent.
    fn read_inline(&self, id: u64, ext: &Extent) -> Result<Vec<u8>> {
        let tx = self.meta.read()?;
        let t = tx.open_table(meta::INLINE)?;
        let v = t
            .get(id)?
            .map(|g| g.value().to_vec())
            .ok_or_else(|| Error::Meta(format!("inline data of extent {id} missing")))?;
        match v.split_at_checked(32) {
            Some((sum, data)) if data.len() == ext.len as usize && codec::checksum(data) == sum => {
                Ok(data.to_vec())
            }
            _ => {
                tracing::error!(extent = id, "inline data fails its checksum");
                crate::metrics::Metrics::add(&self.metrics.fragment_errors, 1);
                Err(Error::Unrecoverable {
                    extent: id,
                    available: 0,
                    needed: 1,
                })
            }
        }
    }

    /// In a metadata transaction: add a reference to an extent.
    pub fn incref(tx: &WriteTransaction, id: u64) -> Result<()> {
        let mut t = tx.open_table(meta::EXTENTS)?;
        let mut e: Extent = match t.get(id)? {
            Some(g) => meta::dec(g.value())?,
            None => return Err(Error::Meta(format!("extent {id} referenced but missing"))),
        };
        e.refs += 1;
        t.insert(id, meta::enc(&e)?.as_slice())?;
        Ok(())
    }

    /// In a metadata transaction: drop a reference; returns the extent if it is now unreferenced
    /// (its record is removed; delete its fragments with [`Pool::free_extents`] after commit).
    pub fn decref(tx: &WriteTransaction, id: u64) -> Result<Option<(u64, Extent)>> {
        let mut t = tx.open_table(meta::EXTENTS)?;
        let mut e: Extent = match t.get(id)? {
            Some(g) => meta::dec(g.value())?,
            None => return Ok(None),
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            t.remove(id)?;
            drop(t);
            if e.is_inline() {
                tx.open_table(meta::INLINE)?.remove(id)?;
            }
            Ok(Some((id, e)))
        } else {
            t.insert(id, meta::enc(&e)?.as_slice())?;
            Ok(None)
        }
    }

    /// Delete the fragments of extents no longer referenced by committed metadata.
    pub fn free_extents(&self, freed: &[(u64, Extent)]) {
        self.extents_committed(freed.iter().map(|(id, _)| *id));
        for (id, e) in freed {
            self.evict(*id);
            for (i, f) in e.frags.iter().enumerate() {
                if let Some(d) = self.disk(f.disk).filter(|d| d.present) {
                    let p = self.frag_path(&d, *id, i);
                    if let Err(err) = self.io.remove(&p) {
                        if err.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %p.display(), error = %err, "cannot free fragment; gc will retry");
                        }
                    }
                }
            }
        }
    }

    /// Look up an extent record.
    pub fn extent(&self, id: u64) -> Result<Extent> {
        let tx = self.meta.read()?;
        let t = tx.open_table(meta::EXTENTS)?;
        meta::get_rec(&t, id)?.ok_or_else(|| Error::Meta(format!("extent {id} missing")))
    }

    fn evict(&self, id: u64) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// Whether extent `id` is in the decoded-extent cache.
    pub fn is_cached(&self, id: u64) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(i, _)| *i == id)
    }

    /// Decoded extents the read cache keeps: [`CACHE_EXTENTS`], fewer for large extents so the
    /// cache stays within [`CACHE_BYTES`] (at least 4, one read-ahead window).
    fn cache_extents(&self) -> usize {
        (CACHE_BYTES / self.extent_size().max(1) as usize).clamp(4, CACHE_EXTENTS)
    }

    /// Read extent `id` into the cache without repairing anything (read-ahead: the extent may be
    /// freed concurrently, so nothing may be rewritten; a real read repairs what is damaged).
    pub fn prefetch_extent(&self, id: u64, ext: &Extent) {
        if self.is_cached(id) {
            return;
        }
        // Damaged extents are not cached, so the reader's own read finds and repairs them.
        if let Ok((data, out)) = self.read_extent_verified(id, ext, false, false) {
            if !out.bad.is_empty() {
                return;
            }
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if !c.iter().any(|(i, _)| *i == id) {
                c.push_back((id, Arc::new(data)));
                if c.len() > self.cache_extents() {
                    c.pop_front();
                }
            }
        }
    }

    /// Read an extent's data (cached; extents are immutable), verifying and repairing fragments.
    pub fn read_extent(&self, id: u64, ext: &Extent) -> Result<Arc<Vec<u8>>> {
        if ext.is_inline() {
            // A metadata read: cheap, and verified every time.
            return Ok(Arc::new(self.read_inline(id, ext)?));
        }
        if let Some((_, d)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(i, _)| *i == id)
        {
            return Ok(d.clone());
        }
        let (data, _) = self.read_extent_verified(id, ext, true, false)?;
        crate::metrics::Metrics::add(&self.metrics.extents_read, 1);
        let data = Arc::new(data);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        c.push_back((id, data.clone()));
        if c.len() > self.cache_extents() {
            c.pop_front();
        }
        Ok(data)
    }

    fn read_frag(&self, id: u64, ext: &Extent, i: usize) -> Option<Vec<u8>> {
        let f = ext.frags.get(i)?;
        let d = self.disk(f.disk).filter(|d| d.readable())?;
        let p = self.frag_path(&d, id, i);
        match self.io.read(&p) {
            Ok(b) if b.len() == ext.frag_len as usize && codec::checksum(&b) == f.sum => Some(b),
            Ok(_) => {
                tracing::warn!(
                    disk = d.id,
                    extent = id,
                    fragment = i,
                    "fragment checksum mismatch"
                );
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(disk = d.id, extent = id, fragment = i, "fragment missing");
                None
            }
            Err(e) => {
                tracing::warn!(disk = d.id, extent = id, fragment = i, error = %e, "fragment read error");
                self.note_error(d.id);
                None
            }
        }
    }

    fn read_frags(&self, id: u64, ext: &Extent, idx: &[usize]) -> Vec<(usize, Option<Vec<u8>>)> {
        if idx.len() <= 1 {
            return idx
                .iter()
                .map(|&i| (i, self.read_frag(id, ext, i)))
                .collect();
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = idx
                .iter()
                .map(|&i| (i, s.spawn(move || self.read_frag(id, ext, i))))
                .collect();
            hs.into_iter()
                .map(|(i, h)| (i, h.join().ok().flatten()))
                .collect()
        })
    }

    /// Read an extent, verifying every fragment read. With `all`, every fragment is read and
    /// checked (scrub); otherwise only as many as needed. With `repair`, bad fragments on usable
    /// disks are rewritten in place. An I/O error never yields wrong data: the result is either
    /// the verified data or an error.
    pub fn read_extent_verified(
        &self,
        id: u64,
        ext: &Extent,
        repair: bool,
        all: bool,
    ) -> Result<(Vec<u8>, ReadOutcome)> {
        if ext.is_inline() {
            return Ok((self.read_inline(id, ext)?, ReadOutcome::default()));
        }
        let policy = ext.policy;
        let width = ext.frags.len();
        if width != policy.width() {
            return Err(Error::Meta(format!(
                "extent {id}: {width} fragments recorded for policy {policy}"
            )));
        }
        let needed = policy.needed();
        let mut good: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut out = ReadOutcome::default();
        // Order: healthy disks first, then others; suspect last.
        let rank = |i: &usize| {
            self.disk(ext.frags[*i].disk)
                .map_or(9, |d| match d.health() {
                    Health::Healthy => 0,
                    Health::Degraded | Health::Draining => 1,
                    Health::Suspect => 2,
                    Health::Failed => 9,
                })
        };
        let mut order: Vec<usize> = (0..width).collect();
        if !all {
            // Prefer data shards for Reed–Solomon (no decoding needed), then by disk health.
            order.sort_by_key(|i| {
                (
                    rank(i),
                    usize::from(*i >= needed && matches!(policy, Policy::ReedSolomon { .. })),
                )
            });
            if matches!(policy, Policy::ReedSolomon { .. }) {
                order.sort_by_key(|i| (usize::from(*i >= needed), rank(i)));
            }
        }
        let mut next = 0;
        while next < order.len() && (all || good.len() < needed) {
            let want = if all {
                order.len() - next
            } else {
                needed - good.len()
            };
            let batch: Vec<usize> = order[next..(next + want).min(order.len())].to_vec();
            next += batch.len();
            for (i, r) in self.read_frags(id, ext, &batch) {
                match r {
                    Some(b) => good.push((i, b)),
                    None => out.bad.push(i),
                }
            }
        }
        let refs: Vec<(usize, &[u8])> = good.iter().map(|(i, b)| (*i, b.as_slice())).collect();
        let data = codec::decode(policy, id, ext.len as usize, &refs)?;
        if !out.bad.is_empty() {
            crate::metrics::Metrics::add(&self.metrics.fragment_errors, out.bad.len() as u64);
            crate::metrics::Metrics::add(&self.metrics.reconstructions, 1);
        }
        if repair && !out.bad.is_empty() {
            let frags = codec::encode(policy, &data)?;
            for &i in &out.bad {
                let f = &ext.frags[i];
                if codec::checksum(&frags[i]) != f.sum {
                    tracing::error!(
                        extent = id,
                        fragment = i,
                        "re-encoded fragment does not match its checksum; not repaired"
                    );
                    continue;
                }
                let Some(d) = self
                    .disk(f.disk)
                    .filter(|d| d.readable() && !d.health().evacuate())
                else {
                    continue;
                };
                let p = self.frag_path(&d, id, i);
                match self.io.write_durable(&p, &frags[i]) {
                    Ok(()) => {
                        crate::metrics::Metrics::add(&self.metrics.fragments_repaired, 1);
                        tracing::info!(disk = d.id, extent = id, fragment = i, "fragment repaired");
                        out.repaired.push(i);
                    }
                    Err(e) => {
                        tracing::warn!(disk = d.id, extent = id, error = %e, "fragment repair failed");
                        self.note_error(d.id);
                    }
                }
            }
        }
        Ok((data, out))
    }

    /// Move fragment `index` of extent `id` (content `frag`) to a new healthy disk not used by
    /// the extent; returns the new disk id. The caller commits the new location, then deletes
    /// the old fragment.
    pub fn relocate_fragment(
        &self,
        id: u64,
        ext: &Extent,
        index: usize,
        frag: &[u8],
    ) -> Result<u32> {
        let used: Vec<u32> = ext.frags.iter().map(|f| f.disk).collect();
        let mut tried = used.clone();
        loop {
            let Some(d) = self
                .choose_disks(1, id + index as u64, &tried)
                .into_iter()
                .next()
            else {
                return Err(Error::NoSpace {
                    policy: ext.policy.to_string(),
                    needed: ext.policy.width(),
                    available: self.writable_disks(),
                });
            };
            tried.push(d.id);
            let p = self.frag_path(&d, id, index);
            match self.io.write_durable(&p, frag) {
                Ok(()) => return Ok(d.id),
                Err(e) => {
                    tracing::warn!(disk = d.id, error = %e, "relocation write failed");
                    self.note_error(d.id);
                }
            }
        }
    }

    /// Delete a fragment file (after the commit that stopped referencing it).
    pub fn remove_fragment(&self, disk: u32, id: u64, index: usize) {
        if let Some(d) = self.disk(disk).filter(|d| d.present) {
            let _ = self.io.remove(&self.frag_path(&d, id, index));
        }
    }

    /// Remove orphan fragments (not referenced by committed metadata), temporaries, and inodes
    /// with no links. Must not run concurrently with writers (it runs at open and from `dynfs gc`,
    /// both holding the pool lock before any writer starts); on a mounted pool use
    /// [`Pool::gc_mounted`].
    pub fn gc(&self) -> Result<GcReport> {
        self.collect(None)
    }

    /// [`Pool::gc`] on a pool in use (a mounted daemon): fragments of extents being written
    /// and not yet committed ([`Pool::write_extent`] until [`Pool::extents_committed`]), or
    /// handed out after the collection began, are kept, and so are unlinked inodes for which
    /// `in_use` answers true (files still open). The metadata is made durable before any
    /// fragment is deleted, so a crash cannot bring back a reference to one. Scrub, rebuild and
    /// drain, which move fragments, must not run meanwhile.
    pub fn gc_mounted(&self, in_use: &dyn Fn(u64) -> bool) -> Result<GcReport> {
        self.collect(Some(in_use))
    }

    fn collect(&self, in_use: Option<&dyn Fn(u64) -> bool>) -> Result<GcReport> {
        let mounted = in_use.is_some();
        let mut rep = GcReport::default();
        // Unlinked inodes first: their extents become orphans removed below.
        let dead: Vec<u64> = {
            let tx = self.meta.read()?;
            let t = tx.open_table(meta::INODES)?;
            let mut v = Vec::new();
            for row in t.range((meta::LIVE, 0)..(meta::LIVE + 1, 0))? {
                let (k, val) = row?;
                let ino: Inode = meta::dec(val.value())?;
                let ino_no = k.value().1;
                if ino.nlink == 0 && !in_use.is_some_and(|f| f(ino_no)) {
                    v.push(ino_no);
                }
            }
            v
        };
        for ino in dead {
            let freed = self
                .meta
                .write(|tx| crate::fs::delete_inode_tx(tx, meta::LIVE, ino))?;
            self.free_extents(&freed);
            rep.inodes += 1;
        }
        // Extents handed out from here on are not orphans, whatever the metadata says yet.
        let watermark = self.next_extent.load(Ordering::SeqCst);
        let mut doomed = Vec::new();
        for d in self.disks().iter().filter(|d| d.present) {
            for b in 0..=255u64 {
                let dir = disk::fragment_dir(&d.path, b);
                let mut names = Vec::new();
                let r = self.io.list_dir(&dir, &mut |name| {
                    names.push(name.to_string_lossy().into_owned());
                });
                if let Err(e) = r {
                    tracing::warn!(dir = %dir.display(), error = %e, "gc cannot list directory");
                }
                if names.is_empty() {
                    continue;
                }
                // Listed before looking at what is uncommitted, and that before reading the
                // metadata: a fragment being written was registered before it was created, and
                // leaves the register only once its commit is in the metadata.
                let uncommitted = self
                    .uncommitted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let tx = self.meta.read()?;
                let t = tx.open_table(meta::EXTENTS)?;
                for name in names {
                    let keep = match disk::parse_fragment_name(&name) {
                        Some((e, _)) if mounted && (e >= watermark || uncommitted.contains(&e)) => {
                            true
                        }
                        Some((e, i)) => match t.get(e) {
                            Ok(Some(g)) => meta::dec::<Extent>(g.value())
                                .map(|x| x.frags.get(i).is_some_and(|f| f.disk == d.id))
                                .unwrap_or(true),
                            Ok(None) => false,
                            Err(_) => true,
                        },
                        // A temporary of a fragment being written is no orphan yet.
                        None => mounted && name.ends_with(".tmp"),
                    };
                    if !keep {
                        doomed.push(dir.join(&*name));
                    }
                }
                if doomed.len() >= 4096 {
                    self.remove_orphans(std::mem::take(&mut doomed), mounted, &mut rep)?;
                }
            }
        }
        self.remove_orphans(doomed, mounted, &mut rep)?;
        // Every open of a pool for writing collects; say so at info level only when it found
        // something, so that admin commands stay quiet on a clean pool.
        if rep.fragments > 0 || rep.inodes > 0 {
            tracing::info!(
                fragments = rep.fragments,
                bytes = rep.bytes,
                inodes = rep.inodes,
                "gc finished"
            );
        } else {
            tracing::debug!("gc finished, nothing to collect");
        }
        Ok(rep)
    }

    /// Delete orphan fragment files; on a mounted pool, after making the metadata durable (a
    /// fragment that the durable metadata still referenced, through a change not yet durable
    /// that dropped it, must stay until that change is durable).
    fn remove_orphans(
        &self,
        doomed: Vec<PathBuf>,
        mounted: bool,
        rep: &mut GcReport,
    ) -> Result<()> {
        if doomed.is_empty() {
            return Ok(());
        }
        if mounted {
            self.sync_fragments()?;
            self.meta.sync()?;
        }
        for p in doomed {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if self.io.remove(&p).is_ok() {
                tracing::debug!(path = %p.display(), "removed orphan");
                rep.fragments += 1;
                rep.bytes += len;
            }
        }
        Ok(())
    }

    /// Add a new disk directory to the pool.
    pub fn add_disk(&self, path: &Path) -> Result<u32> {
        let mut errs = Vec::new();
        let Some(c) = check_new_disk(path, &mut errs) else {
            return Err(Error::Config(errs));
        };
        if !errs.is_empty() {
            return Err(Error::Config(errs));
        }
        let id = self.disks().iter().map(|d| d.id).max().unwrap_or(0) + 1;
        disk::create_layout(&c)?;
        let capacity = disk::fs_space(&c)?.0;
        let cfg = self.config();
        let rec = DiskRec {
            id,
            path: c.to_string_lossy().into_owned(),
            health: Health::Healthy,
            capacity,
        };
        self.meta.write(|tx| {
            tx.open_table(meta::DISKS)?
                .insert(id, meta::enc(&rec)?.as_slice())?;
            Ok(())
        })?;
        DiskIdentity {
            disk_id: id,
            pool_id: cfg.pool_id.clone(),
            health: Health::Healthy,
            capacity,
        }
        .store(&c)?;
        let mut cfg = cfg;
        cfg.disks.push(c.clone());
        cfg.store(&self.dir)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg;
        self.disks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(DiskState {
                id,
                path: c,
                health: RwLock::new(Health::Healthy),
                present: true,
                errors: AtomicU32::new(0),
                capacity,
            }));
        // Only if the metadata is short of replicas (or could spread over more devices).
        self.place_meta_replicas(&[]);
        Ok(id)
    }

    /// Remove a disk that holds no fragments (drain it first).
    pub fn remove_disk(&self, id: u32) -> Result<()> {
        let d = self
            .disk(id)
            .ok_or_else(|| Error::Invalid(format!("no disk with id {id} in this pool")))?;
        let held = self.fragments_on(id)?;
        if held > 0 {
            return Err(Error::Invalid(format!(
                "disk {id} still holds {held} fragments; run `dynfs disk drain` first"
            )));
        }
        let remaining = self.disks().len() - 1;
        let policy = self.config().default_policy;
        if remaining < policy.width() {
            return Err(Error::Invalid(format!(
                "removing disk {id} would leave {remaining} disks, fewer than the {} policy {policy} needs",
                policy.width()
            )));
        }
        // A replica on the disk moves elsewhere first (refused if none can take it).
        if self.meta.replica_disks().contains(&id) {
            let spare = self
                .disks()
                .iter()
                .filter(|x| x.id != id)
                .filter_map(|x| MetaCandidate::of(x))
                .count();
            let needed = self.meta_replicas_needed();
            if spare < needed {
                return Err(Error::Invalid(format!(
                    "disk {id} holds a metadata replica and only {spare} other disks could hold                      one, fewer than the {needed} the pool needs; add a disk first"
                )));
            }
        }
        self.meta.place(&[id])?;
        self.meta.write(|tx| {
            tx.open_table(meta::DISKS)?.remove(id)?;
            Ok(())
        })?;
        let mut cfg = self.config();
        cfg.disks.retain(|p| p != &d.path);
        cfg.store(&self.dir)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg;
        self.disks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.id != id);
        if d.present {
            let _ = std::fs::remove_file(d.path.join(disk::IDENTITY_FILE));
            let _ = std::fs::remove_file(disk::meta_path(&d.path));
        }
        Ok(())
    }

    /// Number of fragments recorded on a disk.
    pub fn fragments_on(&self, disk: u32) -> Result<u64> {
        let tx = self.meta.read()?;
        let t = tx.open_table(meta::EXTENTS)?;
        let mut n = 0;
        for row in t.iter()? {
            let (_, v) = row?;
            let e: Extent = meta::dec(v.value())?;
            n += e.frags.iter().filter(|f| f.disk == disk).count() as u64;
        }
        Ok(n)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Err(e) = self.meta.sync() {
            tracing::error!(error = %e, "final metadata sync failed");
        }
    }
}
