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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// The pass reached the last extent (false when it stopped early and kept a checkpoint).
    #[serde(default)]
    pub complete: bool,
    /// When the pass completed (seconds since the Unix epoch).
    #[serde(default)]
    pub finished_at: Option<u64>,
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

/// Hooks into a running scrub, rebuild or drain: the caller can stop it (its checkpoint is
/// kept, so the next run resumes there) and follow it extent by extent. Every method has a
/// default that does nothing.
pub trait Observer {
    /// Checked before every extent and while waiting for the rate limit; `true` stops the run.
    fn stop_requested(&self) -> bool {
        false
    }
    /// One extent scrubbed: fragment bytes read, fragments found bad, fragments repaired,
    /// and whether the extent could not be reconstructed at all.
    fn scrubbed(&self, _bytes: u64, _bad: u64, _repaired: u64, _unrecoverable: bool) {}
    /// One extent examined by a rebuild or drain: fragments moved, and whether it failed.
    fn rebuilt(&self, _fragments: u64, _failed: bool) {}
    /// Position in the pass: extents done so far (including those before a checkpoint it
    /// resumed from) and the number of extents in the pool when the run started.
    fn position(&self, _done: u64, _total: u64) {}
}

/// An [`Observer`] that never stops the run and ignores its progress.
pub struct Unobserved;

impl Observer for Unobserved {}

/// A token bucket limiting a byte rate. A rate of 0 means unlimited. The bucket holds at most
/// a quarter of a second of tokens, so a paused reader cannot burst far above the rate.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket admitting `bytes_per_s` bytes per second (0 or less: unlimited).
    pub fn new(bytes_per_s: f64) -> Self {
        let burst = (bytes_per_s * 0.25).max(1.0);
        TokenBucket {
            rate: bytes_per_s.max(0.0),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + add).min(self.burst);
        self.last = now;
    }

    /// Take `n` bytes' worth of tokens, sleeping (in slices of at most 100 ms) until the rate
    /// allows them. Returns `false`, without waiting further, once `stop()` turns true.
    pub fn take(&mut self, n: u64, stop: &dyn Fn() -> bool) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill();
        self.tokens -= n as f64;
        while self.tokens < 0.0 {
            if stop() {
                // Give the tokens back: nothing was read.
                self.tokens += n as f64;
                return false;
            }
            let wait = (-self.tokens / self.rate).min(0.1);
            std::thread::sleep(Duration::from_secs_f64(wait));
            self.refill();
        }
        true
    }
}

/// Number of extents in the pool.
pub fn extent_count(pool: &Pool) -> Result<u64> {
    meta::table_len(&pool.meta.read()?, meta::EXTENTS)
}

/// The current record of extent `id`, if it still exists.
fn current_record(pool: &Pool, id: u64) -> Result<Option<Extent>> {
    let tx = pool.meta.read()?;
    let t = tx.open_table(meta::EXTENTS)?;
    meta::get_rec(&t, id)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Outcome of scrubbing one extent: bad fragment indexes, repaired ones, and whether the extent
/// could not be reconstructed.
struct ExtentScrub {
    bad: Vec<usize>,
    repaired: Vec<usize>,
    unrecoverable: bool,
}

/// Verify (and with `repair`, fix) one extent. `None` when the extent was freed or moved while
/// it was being checked (a mounted pool keeps changing): then nothing is reported, and any
/// fragment rewritten for it is removed again, since no metadata refers to it.
fn scrub_extent(pool: &Pool, id: u64, ext: &Extent, repair: bool) -> Result<Option<ExtentScrub>> {
    let result = pool.read_extent_verified(id, ext, repair, true);
    let (bad, mut repaired, unrecoverable) = match &result {
        Ok((_, o)) => (o.bad.clone(), o.repaired.clone(), false),
        Err(_) => ((0..ext.frags.len()).collect(), Vec::new(), true),
    };
    if !bad.is_empty() {
        let cur = current_record(pool, id)?;
        if cur.as_ref().is_none_or(|c| c.frags != ext.frags) {
            // Rewritten fragments that the metadata does not point at are orphans: remove them.
            for &i in &repaired {
                let kept = cur
                    .as_ref()
                    .and_then(|c| c.frags.get(i))
                    .is_some_and(|f| f.disk == ext.frags[i].disk);
                if !kept {
                    pool.remove_fragment(ext.frags[i].disk, id, i);
                }
            }
            return Ok(None);
        }
    }
    if let Err(e) = &result {
        tracing::error!(extent = id, error = %e, "extent unrecoverable");
    }
    if repair && !unrecoverable && bad.iter().any(|i| !repaired.contains(i)) {
        match rebuild_extent(pool, id, ext, true) {
            Ok(moved) => repaired.extend(moved),
            Err(e) => tracing::warn!(extent = id, error = %e, "cannot relocate bad fragments"),
        }
    }
    Ok(Some(ExtentScrub {
        bad,
        repaired,
        unrecoverable,
    }))
}

/// Verify every fragment of every extent; with `repair`, rewrite bad fragments (in place when
/// their disk is usable, otherwise on another disk). Resumes from a checkpoint if one exists.
/// `progress(done_extents, total_extents)` is called periodically.
pub fn scrub(
    pool: &Pool,
    opts: ScrubOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ScrubReport> {
    scrub_with(pool, opts, &Unobserved, progress)
}

/// [`scrub`] with an [`Observer`], which can stop the run (keeping its checkpoint) and sees
/// every extent. Safe on a mounted pool: extents freed or moved while being checked are
/// skipped, and no lock is held while fragments are read, so file system requests proceed.
pub fn scrub_with(
    pool: &Pool,
    opts: ScrubOptions,
    obs: &dyn Observer,
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
    rep.complete = false;
    rep.finished_at = None;
    let total = extent_count(pool)?;
    let mut bucket = TokenBucket::new(opts.rate_mb_s * 1e6);
    let mut done = 0u64;
    let mut last_ckpt = Instant::now();
    let save = |next: u64, rep: &ScrubReport| {
        store_state(
            pool,
            SCRUB_KEY,
            Some(&Checkpoint {
                next,
                report: rep.clone(),
            }),
        )
    };
    while let Some((id, ext)) = next_extent(pool, next)? {
        let bytes = ext.frag_len as u64 * ext.frags.len() as u64;
        let stop = opts.max_extents.is_some_and(|m| done >= m)
            || obs.stop_requested()
            || !bucket.take(bytes, &|| obs.stop_requested());
        if stop {
            save(next, &rep)?;
            rep.seconds = started.elapsed().as_secs_f64();
            return Ok(rep);
        }
        next = id + 1;
        done += 1;
        let Some(x) = scrub_extent(pool, id, &ext, opts.repair)? else {
            continue;
        };
        rep.extents += 1;
        if x.unrecoverable {
            rep.unrecoverable += 1;
        }
        for (i, f) in ext.frags.iter().enumerate() {
            let d = rep.disks.entry(f.disk).or_default();
            d.fragments += 1;
            if x.bad.contains(&i) {
                d.bad += 1;
                if x.repaired.contains(&i) {
                    d.repaired += 1;
                }
            } else {
                d.ok += 1;
            }
        }
        rep.bytes += bytes;
        obs.scrubbed(
            bytes,
            x.bad.len() as u64,
            x.repaired.len() as u64,
            x.unrecoverable,
        );
        obs.position(rep.extents, total.max(rep.extents));
        if last_ckpt.elapsed() > Duration::from_secs(2) {
            save(next, &rep)?;
            last_ckpt = Instant::now();
            progress(rep.extents, total.max(rep.extents));
        }
    }
    rep.seconds = started.elapsed().as_secs_f64();
    rep.complete = true;
    rep.finished_at = Some(now_unix());
    store_state::<()>(pool, SCRUB_KEY, None)?;
    store_state(pool, SCRUB_LAST_KEY, Some(&rep))?;
    progress(rep.extents, total.max(rep.extents));
    Ok(rep)
}

/// Move the fragments of one extent that sit on unusable disks (missing, failed, draining), or
/// (with `include_bad`) that fail verification, onto other healthy disks. Commits the new
/// locations, then deletes the old fragments. Returns the fragment indexes moved. If the extent
/// is freed meanwhile (on a mounted pool), the new copies are deleted and nothing is moved.
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
    let found = pool.meta.write(|tx| {
        let mut t = tx.open_table(meta::EXTENTS)?;
        let cur: Option<Extent> = match t.get(id)? {
            Some(g) => Some(meta::dec(g.value())?),
            None => None,
        };
        match cur {
            Some(mut cur) => {
                cur.frags = frags_new.clone();
                t.insert(id, meta::enc(&cur)?.as_slice())?;
                Ok(true)
            }
            None => Ok(false),
        }
    })?;
    if !found {
        // Freed while we copied it: the new fragments are referenced by nothing.
        for &i in &moved {
            pool.remove_fragment(updated.frags[i].disk, id, i);
        }
        return Ok(Vec::new());
    }
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
    rebuild_with(pool, max_extents, &Unobserved, progress)
}

/// [`rebuild`] with an [`Observer`] that can stop it (keeping the checkpoint) and sees every
/// extent.
pub fn rebuild_with(
    pool: &Pool,
    max_extents: Option<u64>,
    obs: &dyn Observer,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebuildReport> {
    let (mut next, mut rep) = match rebuild_checkpoint(pool)? {
        Some((n, mut r)) => {
            r.resumed_from = n;
            (n, r)
        }
        None => (0, RebuildReport::default()),
    };
    let total = extent_count(pool)?;
    let mut done = 0u64;
    let mut last = Instant::now();
    while let Some((id, ext)) = next_extent(pool, next)? {
        if max_extents.is_some_and(|m| done >= m) || obs.stop_requested() {
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
        let (moved, failed) = match rebuild_extent(pool, id, &ext, false) {
            Ok(m) if !m.is_empty() => {
                rep.rebuilt += 1;
                rep.fragments += m.len() as u64;
                (m.len() as u64, false)
            }
            Ok(_) => (0, false),
            Err(e) => {
                tracing::error!(extent = id, error = %e, "cannot rebuild extent");
                rep.failed += 1;
                (0, true)
            }
        };
        obs.rebuilt(moved, failed);
        obs.position(rep.extents, total.max(rep.extents));
        if last.elapsed() > Duration::from_secs(1) {
            store_state(
                pool,
                REBUILD_KEY,
                Some(&Checkpoint {
                    next,
                    report: rep.clone(),
                }),
            )?;
            progress(rep.extents, total.max(rep.extents));
            last = Instant::now();
        }
    }
    store_state::<()>(pool, REBUILD_KEY, None)?;
    store_state(pool, REBUILD_LAST_KEY, Some(&rep))?;
    progress(rep.extents, total.max(rep.extents));
    Ok(rep)
}

/// Mark a disk draining and move all its fragments elsewhere.
pub fn drain(pool: &Pool, disk: u32, progress: &mut dyn FnMut(u64, u64)) -> Result<RebuildReport> {
    drain_with(pool, disk, &Unobserved, progress)
}

/// [`drain`] with an [`Observer`] (see [`rebuild_with`]).
pub fn drain_with(
    pool: &Pool,
    disk: u32,
    obs: &dyn Observer,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebuildReport> {
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
    rebuild_with(pool, None, obs, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_limits_the_rate() {
        // 4 MB/s: 2.5 MB is 1.5 MB beyond the initial burst of 1 MB, so about 0.375 s.
        let mut b = TokenBucket::new(4e6);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(b.take(250_000, &|| false));
        }
        let el = t.elapsed().as_secs_f64();
        assert!(el >= 0.3, "took only {el}s");
        assert!(el < 2.0, "took {el}s");
    }

    #[test]
    fn token_bucket_unlimited_and_stoppable() {
        let mut b = TokenBucket::new(0.0);
        let t = Instant::now();
        assert!(b.take(u64::MAX / 2, &|| false));
        assert!(t.elapsed() < Duration::from_millis(50));
        let mut b = TokenBucket::new(1000.0);
        let t = Instant::now();
        assert!(!b.take(1_000_000, &|| true));
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
