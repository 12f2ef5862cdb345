//! Pool status for `dynfs status`: disks, health, capacity, policy, degraded extents, and the
//! state of scrub and rebuild.

use crate::error::Result;
use crate::meta::{self, Extent};
use crate::pool::Pool;
use crate::scrub::{self, RebuildReport, ScrubReport};
use redb::ReadableTable;
use serde::Serialize;
use std::collections::BTreeMap;

/// One disk's status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DiskStatus {
    /// Disk id.
    pub id: u32,
    /// Directory.
    pub path: String,
    /// Health (`missing` if the directory or its identity is gone).
    pub health: String,
    /// Capacity in bytes recorded when the disk joined.
    pub capacity: u64,
    /// Bytes available on the underlying filesystem now.
    pub available: u64,
    /// Fragments stored.
    pub fragments: u64,
    /// Fragment bytes stored.
    pub bytes: u64,
    /// Holds a metadata replica.
    pub metadata_replica: bool,
}

/// Whole-pool status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// Pool id.
    pub pool_id: String,
    /// Default policy.
    pub default_policy: String,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Metadata generation.
    pub generation: u64,
    /// Metadata replicas the pool needs (the highest policy tolerance in use + 1).
    #[serde(default)]
    pub metadata_replicas_needed: usize,
    /// Disks holding a live metadata replica, by id.
    #[serde(default)]
    pub metadata_replica_disks: Vec<u32>,
    /// Disks.
    pub disks: Vec<DiskStatus>,
    /// Extents stored.
    pub extents: u64,
    /// Extents with a fragment on a missing, failed or draining disk.
    pub degraded_extents: u64,
    /// Extents with fewer usable fragments than they need.
    pub unavailable_extents: u64,
    /// Extents per policy.
    pub policies: BTreeMap<String, u64>,
    /// Inodes in the live tree.
    pub inodes: u64,
    /// Snapshot names.
    pub snapshots: Vec<String>,
    /// Unfinished scrub: next extent id.
    pub scrub_in_progress: Option<u64>,
    /// Last completed scrub.
    pub last_scrub: Option<ScrubReport>,
    /// Unfinished rebuild: next extent id.
    pub rebuild_in_progress: Option<u64>,
    /// Last completed rebuild.
    pub last_rebuild: Option<RebuildReport>,
    /// The scrub, rebuild or drain running now (only known to a mounted daemon).
    #[serde(default)]
    pub activity: Option<Activity>,
    /// The background scrub of a mounted pool (`None` when not mounted).
    #[serde(default)]
    pub background_scrub: Option<BackgroundScrub>,
}

/// A scrub, rebuild or drain running in a mounted daemon.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Activity {
    /// `scrub`, `rebuild` or `drain`.
    pub job: String,
    /// `background` (the daemon's own scrub) or `client` (asked for over the control socket).
    pub origin: String,
    /// Extents done in this pass, including any before the checkpoint it resumed from.
    pub done: u64,
    /// Extents in the pool when the run started.
    pub total: u64,
    /// Seconds since the run started.
    pub seconds: f64,
}

/// State of the background scrub of a mounted pool.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BackgroundScrub {
    /// Rate in MB/s (`scrub_rate_mb_s` of pool.toml; 0 = background scrub off).
    pub rate_mb_s: f64,
    /// Seconds between the end of one pass and the start of the next.
    pub interval_s: u64,
    /// Passes completed since the mount.
    pub passes: u64,
    /// Fragments found bad since the mount (by any scrub).
    pub bad_fragments: u64,
    /// Fragments repaired since the mount (by any scrub).
    pub repaired_fragments: u64,
    /// Seconds until the next pass starts (`None` while a pass runs or when off).
    pub next_pass_in_s: Option<u64>,
}

/// File in the pool directory where a mounted daemon publishes its status.
pub const STATUS_FILE: &str = "status.json";

impl Status {
    /// Write this status durably to `POOL/status.json` (done periodically by a mounted daemon,
    /// so that `dynfs status` can report on a pool it cannot open).
    pub fn publish(&self, pool_dir: &std::path::Path) -> Result<()> {
        use crate::io::DiskIo;
        let p = pool_dir.join(STATUS_FILE);
        let body =
            serde_json::to_vec_pretty(self).map_err(|e| crate::Error::Meta(e.to_string()))?;
        crate::io::StdIo
            .write_durable(&p, &body)
            .map_err(|e| crate::Error::io(p, e))
    }

    /// Gather the status of an open pool (scans the extent table).
    pub fn gather(pool: &Pool) -> Result<Status> {
        let cfg = pool.config();
        let disks = pool.disks();
        let mut replicas = pool.meta.replica_disks();
        replicas.sort_unstable();
        let mut per: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let (mut extents, mut degraded, mut unavailable) = (0, 0, 0);
        let mut policies = BTreeMap::new();
        let tx = pool.meta.read()?;
        {
            let t = tx.open_table(meta::EXTENTS)?;
            for row in t.iter()? {
                let (_, v) = row?;
                let e: Extent = meta::dec(v.value())?;
                extents += 1;
                *policies.entry(e.policy.to_string()).or_insert(0) += 1;
                let mut usable = 0;
                let mut bad = false;
                for f in &e.frags {
                    let s = per.entry(f.disk).or_default();
                    s.0 += 1;
                    s.1 += e.frag_len as u64;
                    let d = disks.iter().find(|d| d.id == f.disk);
                    let ok = d.is_some_and(|d| d.readable());
                    if ok {
                        usable += 1;
                    }
                    if !d.is_some_and(|d| d.readable() && !d.health().evacuate()) {
                        bad = true;
                    }
                }
                if bad {
                    degraded += 1;
                }
                // Inline extents (data in the metadata) have no fragments to lose.
                if usable < e.policy.needed() && !e.is_inline() {
                    unavailable += 1;
                }
            }
        }
        #[allow(clippy::let_and_return)] // the binding ends the borrow of `t` first
        let inodes = {
            let t = tx.open_table(meta::INODES)?;
            let n = t.range((meta::LIVE, 0)..(meta::LIVE + 1, 0))?.count() as u64;
            n
        };
        drop(tx);
        Ok(Status {
            pool_id: cfg.pool_id.clone(),
            default_policy: cfg.default_policy.to_string(),
            extent_size: cfg.extent_size,
            generation: pool.meta.generation()?,
            metadata_replicas_needed: pool.meta_replicas_needed(),
            metadata_replica_disks: replicas.clone(),
            disks: disks
                .iter()
                .map(|d| {
                    let (fragments, bytes) = per.get(&d.id).copied().unwrap_or_default();
                    DiskStatus {
                        id: d.id,
                        path: d.path.to_string_lossy().into_owned(),
                        health: if d.present {
                            d.health().to_string()
                        } else {
                            "missing".into()
                        },
                        capacity: d.capacity,
                        available: crate::disk::fs_space(&d.path).map(|s| s.1).unwrap_or(0),
                        fragments,
                        bytes,
                        metadata_replica: replicas.contains(&d.id),
                    }
                })
                .collect(),
            extents,
            degraded_extents: degraded,
            unavailable_extents: unavailable,
            policies,
            inodes,
            snapshots: crate::snapshot::list(pool)?
                .into_iter()
                .map(|s| s.name)
                .collect(),
            scrub_in_progress: scrub::scrub_checkpoint(pool)?.map(|c| c.0),
            last_scrub: scrub::last_scrub(pool)?,
            rebuild_in_progress: scrub::rebuild_checkpoint(pool)?.map(|c| c.0),
            last_rebuild: scrub::last_rebuild(pool)?,
            activity: None,
            background_scrub: None,
        })
    }

    /// Human-readable rendering.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pool {}  policy {}  extent size {}  generation {}",
            self.pool_id, self.default_policy, self.extent_size, self.generation
        );
        let _ = writeln!(
            s,
            "{:>4}  {:<9} {:>10} {:>14} {:>14}  meta  path",
            "disk", "health", "fragments", "bytes", "available"
        );
        for d in &self.disks {
            let _ = writeln!(
                s,
                "{:>4}  {:<9} {:>10} {:>14} {:>14}  {:<4}  {}",
                d.id,
                d.health,
                d.fragments,
                d.bytes,
                d.available,
                if d.metadata_replica { "yes" } else { "no" },
                d.path
            );
        }
        let _ = writeln!(
            s,
            "metadata replicas: {} of {} needed, on disks {}",
            self.metadata_replica_disks.len(),
            self.metadata_replicas_needed,
            self.metadata_replica_disks
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "extents {}  degraded {}  unavailable {}  inodes {}",
            self.extents, self.degraded_extents, self.unavailable_extents, self.inodes
        );
        for (p, n) in &self.policies {
            let _ = writeln!(s, "  {p}: {n} extents");
        }
        if !self.snapshots.is_empty() {
            let _ = writeln!(s, "snapshots: {}", self.snapshots.join(", "));
        }
        match (&self.scrub_in_progress, &self.last_scrub) {
            (Some(n), _) => {
                let _ = writeln!(s, "scrub: interrupted, resumes at extent {n}");
            }
            (None, Some(r)) => {
                let (bad, repaired) = r
                    .disks
                    .values()
                    .fold((0, 0), |(b, f), d| (b + d.bad, f + d.repaired));
                let ago = r.finished_at.map_or(String::new(), |t| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    format!(", finished {}s ago", now.saturating_sub(t))
                });
                let _ = writeln!(
                    s,
                    "scrub: last run checked {} extents, {} ({bad} bad, {repaired} repaired fragments{ago})",
                    r.extents,
                    if r.clean() { "clean" } else { "problems found" }
                );
            }
            (None, None) => {
                let _ = writeln!(s, "scrub: never run");
            }
        }
        match (&self.rebuild_in_progress, &self.last_rebuild) {
            (Some(n), _) => {
                let _ = writeln!(s, "rebuild: interrupted, resumes at extent {n}");
            }
            (None, Some(r)) => {
                let _ = writeln!(
                    s,
                    "rebuild: last run moved {} fragments of {} extents, {} failed",
                    r.fragments, r.rebuilt, r.failed
                );
            }
            (None, None) => {}
        }
        if let Some(a) = &self.activity {
            let _ = writeln!(
                s,
                "running: {} ({}), {} of {} extents, {:.0}s",
                a.job, a.origin, a.done, a.total, a.seconds
            );
        }
        if let Some(b) = &self.background_scrub {
            if b.rate_mb_s > 0.0 {
                let _ = write!(
                    s,
                    "background scrub: {} MB/s, every {}s; {} passes, {} bad and {} repaired fragments since mount",
                    b.rate_mb_s, b.interval_s, b.passes, b.bad_fragments, b.repaired_fragments
                );
                match b.next_pass_in_s {
                    Some(n) => {
                        let _ = writeln!(s, "; next pass in {n}s");
                    }
                    None => {
                        let _ = writeln!(s);
                    }
                }
            } else {
                let _ = writeln!(s, "background scrub: off (scrub_rate_mb_s = 0)");
            }
        }
        s
    }
}
