//! Scrub (verify every fragment, optionally repair) and rebuild/drain (restore every extent's
//! policy onto usable disks). Both walk the extent table in id order and record a checkpoint in
//! the metadata, so an interrupted run resumes where it stopped.

use crate::codec;
use crate::error::{Error, Result};
use crate::meta::{self, Extent, STATE};
use crate::pool::Pool;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Per-disk scrub figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskScrub {
    /// Fragments checked on this disk.
    pub fragments: u64,
    /// Fragments that verified.
    pub ok: u64,
    /// Fragments missing, unreadable or corrupt.
    pub bad: u64,
    /// Bad fragments rewritten (in place or elsewhere).
    pub repaired: u64,
}

/// Result of a scrub.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScrubReport {
    /// Extents verified.
    pub extents: u64,
    /// Fragment bytes read.
    pub bytes: u64,
    /// Per disk id.
    pub disks: BTreeMap<u32, DiskScrub>,
    /// Extents that could not be reconstructed at all.
    pub unrecoverable: u64,
    /// Extent id the run resumed from (0 for a fresh run).
    pub resumed_from: u64,
    /// Seconds the run took (this invocation).
    pub seconds: f64,
}

impl ScrubReport {
    /// No problem remains: every fragment verified, or was repaired.
    pub fn clean(&self) -> bool {
        self.unrecoverable == 0 && self.disks.values().all(|d| d.bad == d.repaired)
    }
}

/// Options for [`scrub`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubOptions {
    /// Rewrite bad fragments.
    pub repair: bool,
    /// Rate limit in MB/s of fragment data (0 = unlimited).
    pub rate_mb_s: f64,
    /// Stop after this many extents (the checkpoint is kept; for tests and time-boxed runs).
    pub max_extents: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint<R> {
    next: u64,
    report: R,
}

const SCRUB_KEY: &str = "scrub";
const SCRUB_LAST_KEY: &str = "scrub_last";
const REBUILD_KEY: &str = "rebuild";
const REBUILD_LAST_KEY: &str = "rebuild_last";

fn load_state<T: for<'de> Deserialize<'de>>(pool: &Pool, key: &str) -> Result<Option<T>> {
    let tx = pool.meta.read()?;
    let t = match tx.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = t.get(key)?.map(|g| g.value().to_vec());
    match v {
        Some(b) => Ok(serde_json::from_slice(&b).ok()),
        None => Ok(None),
    }
}

fn store_state<T: Serialize>(pool: &Pool, key: &str, v: Option<&T>) -> Result<()> {
    let bytes = match v {
        Some(v) => Some(serde_json::to_vec(v).map_err(|e| Error::Meta(e.to_string()))?),
        None => None,
    };
    pool.meta.write(|tx| {
        let mut t = tx.open_table(STATE)?;
        match &bytes {
            Some(b) => {
                t.insert(key, b.as_slice())?;
            }
            None => {
                t.remove(key)?;
            }
        }
        Ok(())
    })
}

/// The next extent with id >= `from`.
pub fn next_extent(pool: &Pool, from: u64) -> Result<Option<(u64, Extent)>> {
    let tx = pool.meta.read()?;
    let t = tx.open_table(meta::EXTENTS)?;
    let mut r = t.range(from..)?;
    match r.next() {
        Some(row) => {
            let (k, v) = row?;
            Ok(Some((k.value(), meta::dec(v.value())?)))
        }
        None => Ok(None),
    }
}

/// Saved state of an unfinished scrub, if any.
pub fn scrub_checkpoint(pool: &Pool) -> Result<Option<(u64, ScrubReport)>> {
    Ok(load_state::<Checkpoint<ScrubReport>>(pool, SCRUB_KEY)?.map(|c| (c.next, c.report)))
}

/// Report of the last completed scrub, if any.
pub fn last_scrub(pool: &Pool) -> Result<Option<ScrubReport>> {
    load_state(pool, SCRUB_LAST_KEY)
}

/// Verify every fragment of every extent; with `repair`, rewrite bad fragments (in place when
/// their disk is usable, otherwise on another disk). Resumes from a checkpoint if one exists.
/// `progress(done_extents, next_extent_id)` is called periodically.
pub fn scrub(
    pool: &Pool,
    opts: ScrubOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ScrubReport> {
    let started = Instant::now();
    let (mut next, mut rep) = match scrub_checkpoint(pool)? {
        Some((n, mut r)) => {
            r.resumed_from = n;
            (n, r)
        }
        None => (0, ScrubReport::default()),
    };
    let rate = opts.rate_mb_s * 1e6;
    let mut bytes_this_run = 0u64;
    let mut done = 0u64;
    let mut last_ckpt = Instant::now();
    while let Some((id, ext)) = next_extent(pool, next)? {
        if opts.max_extents.is_some_and(|m| done >= m) {
            store_state(
                pool,
                SCRUB_KEY,
                Some(&Checkpoint {
                    next,
                    report: rep.clone(),
                }),
            )?;
            rep.seconds = started.elapsed().as_secs_f64();
            return Ok(rep);
        }
        next = id + 1;
        done += 1;
        rep.extents += 1;
        let unusable: Vec<usize> = ext
            .frags
            .iter()
            .enumerate()
            .filter(|(_, f)| !pool.disks().iter().any(|d| d.id == f.disk && d.readable()))
            .map(|(i, _)| i)
            .collect();
        let result = pool.read_extent_verified(id, &ext, opts.repair, true);
        let (bad, mut repaired) = match &result {
            Ok((_, o)) => (o.bad.clone(), o.repaired.clone()),
            Err(e) => {
                tracing::error!(extent = id, error = %e, "extent unrecoverable");
                rep.unrecoverable += 1;
                ((0..ext.frags.len()).collect(), Vec::new())
            }
        };
        if opts.repair && result.is_ok() {
            let needs_move = bad.iter().any(|i| !repaired.contains(i));
            if needs_move {
                match rebuild_extent(pool, id, &ext, true) {
                    Ok(moved) => repaired.extend(moved),
                    Err(e) => {
                        tracing::warn!(extent = id, error = %e, "cannot relocate bad fragments")
                    }
                }
            }
        }
        let _ = unusable;
        for (i, f) in ext.frags.iter().enumerate() {
            let d = rep.disks.entry(f.disk).or_default();
            d.fragments += 1;
            if bad.contains(&i) {
                d.bad += 1;
                if repaired.contains(&i) {
                    d.repaired += 1;
                }
            } else {
                d.ok += 1;
            }
        }
        let b = ext.frag_len as u64 * ext.frags.len() as u64;
        rep.bytes += b;
        bytes_this_run += b;
        if rate > 0.0 {
            let due = Duration::from_secs_f64(bytes_this_run as f64 / rate);
            let el = started.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
        if last_ckpt.elapsed() > Duration::from_secs(2) {
            store_state(
                pool,
                SCRUB_KEY,
                Some(&Checkpoint {
                    next,
                    report: rep.clone(),
                }),
            )?;
            last_ckpt = Instant::now();
            progress(done, next);
        }
    }
    rep.seconds = started.elapsed().as_secs_f64();
    store_state::<()>(pool, SCRUB_KEY, None)?;
    store_state(pool, SCRUB_LAST_KEY, Some(&rep))?;
    progress(done, next);
    Ok(rep)
}

/// Move the fragments of one extent that sit on unusable disks (missing, failed, draining), or
/// (with `include_bad`) that fail verification, onto other healthy disks. Commits the new
/// locations, then deletes the old fragments. Returns the fragment indexes moved.
pub fn rebuild_extent(pool: &Pool, id: u64, ext: &Extent, include_bad: bool) -> Result<Vec<usize>> {
    let disks = pool.disks();
    let usable = |disk: u32| {
        disks
            .iter()
            .any(|d| d.id == disk && d.readable() && !d.health().evacuate())
    };
    let (data, outcome) = pool.read_extent_verified(id, ext, false, include_bad)?;
    let mut move_idx: Vec<usize> = (0..ext.frags.len())
        .filter(|&i| !usable(ext.frags[i].disk))
        .collect();
    if include_bad {
        for i in outcome.bad {
            if !move_idx.contains(&i) {
                move_idx.push(i);
            }
        }
    }
    if move_idx.is_empty() {
        return Ok(Vec::new());
    }
    let frags = codec::encode(ext.policy, &data)?;
    let mut updated = ext.clone();
    let mut old = Vec::new();
    let mut moved = Vec::new();
    for &i in &move_idx {
        if codec::checksum(&frags[i]) != ext.frags[i].sum {
            return Err(Error::Meta(format!(
                "extent {id}: re-encoded fragment {i} does not match its checksum"
            )));
        }
        match pool.relocate_fragment(id, &updated, i, &frags[i]) {
            Ok(d) => {
                old.push((ext.frags[i].disk, i));
                updated.frags[i].disk = d;
                moved.push(i);
            }
            Err(e) => {
                if moved.is_empty() {
                    return Err(e);
                }
                tracing::warn!(extent = id, fragment = i, error = %e, "cannot relocate fragment");
            }
        }
    }
    let frags_new = updated.frags.clone();
    pool.meta.write(|tx| {
        let mut t = tx.open_table(meta::EXTENTS)?;
        let cur: Option<Extent> = match t.get(id)? {
            Some(g) => Some(meta::dec(g.value())?),
            None => None,
        };
        if let Some(mut cur) = cur {
            cur.frags = frags_new.clone();
            t.insert(id, meta::enc(&cur)?.as_slice())?;
        }
        Ok(())
    })?;
    for (disk, i) in old {
        pool.remove_fragment(disk, id, i);
    }
    Ok(moved)
}

/// Result of a rebuild or drain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RebuildReport {
    /// Extents examined.
    pub extents: u64,
    /// Extents that had fragments moved or rebuilt.
    pub rebuilt: u64,
    /// Fragments written elsewhere.
    pub fragments: u64,
    /// Extents that could not be restored (unreadable or no room).
    pub failed: u64,
    /// Extent id the run resumed from.
    pub resumed_from: u64,
}

/// Saved state of an unfinished rebuild, if any.
pub fn rebuild_checkpoint(pool: &Pool) -> Result<Option<(u64, RebuildReport)>> {
    Ok(load_state::<Checkpoint<RebuildReport>>(pool, REBUILD_KEY)?.map(|c| (c.next, c.report)))
}

/// Report of the last completed rebuild.
pub fn last_rebuild(pool: &Pool) -> Result<Option<RebuildReport>> {
    load_state(pool, REBUILD_LAST_KEY)
}

/// Restore every extent's policy: fragments on missing, failed or draining disks are rebuilt on
/// healthy disks. Resumes from a checkpoint. `max_extents` stops early (keeping the checkpoint).
pub fn rebuild(
    pool: &Pool,
    max_extents: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebuildReport> {
    let (mut next, mut rep) = match rebuild_checkpoint(pool)? {
        Some((n, mut r)) => {
            r.resumed_from = n;
            (n, r)
        }
        None => (0, RebuildReport::default()),
    };
    let total = meta::table_len(&pool.meta.read()?, meta::EXTENTS)?;
    let mut done = 0u64;
    let mut last = Instant::now();
    while let Some((id, ext)) = next_extent(pool, next)? {
        if max_extents.is_some_and(|m| done >= m) {
            store_state(
                pool,
                REBUILD_KEY,
                Some(&Checkpoint {
                    next,
                    report: rep.clone(),
                }),
            )?;
            return Ok(rep);
        }
        next = id + 1;
        done += 1;
        rep.extents += 1;
        match rebuild_extent(pool, id, &ext, false) {
            Ok(m) if !m.is_empty() => {
                rep.rebuilt += 1;
                rep.fragments += m.len() as u64;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(extent = id, error = %e, "cannot rebuild extent");
                rep.failed += 1;
            }
        }
        if last.elapsed() > Duration::from_secs(1) {
            store_state(
                pool,
                REBUILD_KEY,
                Some(&Checkpoint {
                    next,
                    report: rep.clone(),
                }),
            )?;
            progress(rep.extents, total);
            last = Instant::now();
        }
    }
    store_state::<()>(pool, REBUILD_KEY, None)?;
    store_state(pool, REBUILD_LAST_KEY, Some(&rep))?;
    progress(rep.extents, total);
    Ok(rep)
}

/// Mark a disk draining and move all its fragments elsewhere.
pub fn drain(pool: &Pool, disk: u32, progress: &mut dyn FnMut(u64, u64)) -> Result<RebuildReport> {
    if !pool.disks().iter().any(|d| d.id == disk) {
        return Err(Error::Invalid(format!(
            "no disk with id {disk} in this pool"
        )));
    }
    if pool
        .disks()
        .iter()
        .any(|d| d.id == disk && d.health() != crate::Health::Draining)
    {
        pool.set_health(disk, crate::Health::Draining)?;
    }
    rebuild(pool, None, progress)
}
