//! Scrub, rebuild and drain inside a mounted daemon: at most one runs at a time, the
//! background scrub yields to jobs asked for over the control socket, and the counters and
//! state shown by `dynfs status` and `/metrics` are kept here.

use dynfs_core::scrub::{self, Observer, ScrubOptions};
use dynfs_core::status::{Activity, BackgroundScrub, Status};
use dynfs_core::Pool;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic counters since the mount.
#[derive(Debug, Default)]
pub struct Counters {
    /// Extents verified by any scrub.
    pub scrub_extents: AtomicU64,
    /// Fragment bytes read by any scrub.
    pub scrub_bytes: AtomicU64,
    /// Fragments found missing, unreadable or corrupt by a scrub.
    pub scrub_bad: AtomicU64,
    /// Fragments a scrub rewrote.
    pub scrub_repaired: AtomicU64,
    /// Extents a scrub could not reconstruct.
    pub scrub_unrecoverable: AtomicU64,
    /// Scrub passes completed (background or client).
    pub scrub_passes: AtomicU64,
    /// Extents examined by rebuilds and drains.
    pub rebuild_extents: AtomicU64,
    /// Fragments moved by rebuilds and drains.
    pub rebuild_fragments: AtomicU64,
    /// Extents a rebuild or drain could not restore.
    pub rebuild_failed: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What is running now.
#[derive(Debug, Clone)]
struct Running {
    job: &'static str,
    origin: &'static str,
    done: u64,
    total: u64,
    started: Instant,
}

/// Hooks of a job asked for by a client: stop when it goes away, and report progress to it.
pub struct ClientHooks<'a> {
    /// `true` once the client disconnected (the job stops; its checkpoint is kept).
    pub gone: &'a dyn Fn() -> bool,
    /// Called with (extents done, extents in the pool) after every extent.
    pub position: &'a dyn Fn(u64, u64),
}

/// Coordinates maintenance jobs of one mounted pool.
pub struct Jobs {
    pool: Arc<Pool>,
    /// Held by the running scrub, rebuild or drain.
    run_lock: Mutex<()>,
    /// Client jobs waiting for `run_lock`: the background scrub stops (keeping its checkpoint)
    /// while this is non-zero.
    waiting: AtomicUsize,
    shutdown: AtomicBool,
    /// Wakes the background thread early (shutdown).
    sleeper: (Mutex<()>, Condvar),
    current: Mutex<Option<Running>>,
    bg_rate_mb_s: f64,
    bg_interval: Duration,
    bg_next: Mutex<Option<Instant>>,
    bg_passes: AtomicU64,
    bg_thread: Mutex<Option<JoinHandle<()>>>,
    /// Counters for status and metrics.
    pub counters: Counters,
}

struct JobObserver<'a> {
    jobs: &'a Jobs,
    client: Option<&'a ClientHooks<'a>>,
}

impl Observer for JobObserver<'_> {
    fn stop_requested(&self) -> bool {
        self.jobs.shutdown.load(Ordering::Relaxed)
            || match self.client {
                Some(c) => (c.gone)(),
                None => self.jobs.waiting.load(Ordering::Relaxed) > 0,
            }
    }

    fn scrubbed(&self, bytes: u64, bad: u64, repaired: u64, unrecoverable: bool) {
        let c = &self.jobs.counters;
        add(&c.scrub_extents, 1);
        add(&c.scrub_bytes, bytes);
        add(&c.scrub_bad, bad);
        add(&c.scrub_repaired, repaired);
        add(&c.scrub_unrecoverable, u64::from(unrecoverable));
    }

    fn rebuilt(&self, fragments: u64, failed: bool) {
        let c = &self.jobs.counters;
        add(&c.rebuild_extents, 1);
        add(&c.rebuild_fragments, fragments);
        add(&c.rebuild_failed, u64::from(failed));
    }

    fn position(&self, done: u64, total: u64) {
        if let Some(r) = self
            .jobs
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            r.done = done;
            r.total = total;
        }
        if let Some(c) = self.client {
            (c.position)(done, total);
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Jobs {
    /// Jobs for `pool`. The background scrub runs at the pool's `scrub_rate_mb_s` (0 = off)
    /// and starts a new pass `interval` after the previous one completed.
    pub fn new(pool: Arc<Pool>, interval: Duration) -> Arc<Jobs> {
        let rate = pool.config().scrub_rate_mb_s;
        Arc::new(Jobs {
            pool,
            run_lock: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleeper: (Mutex::new(()), Condvar::new()),
            current: Mutex::new(None),
            bg_rate_mb_s: rate,
            bg_interval: interval,
            bg_next: Mutex::new(None),
            bg_passes: AtomicU64::new(0),
            bg_thread: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Whether the daemon is stopping (jobs stop at the next extent, keeping their checkpoint).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Start the background scrub thread (unless the rate is 0).
    pub fn start_background(self: &Arc<Self>) -> std::io::Result<()> {
        if self.bg_rate_mb_s <= 0.0 {
            tracing::info!("background scrub off (scrub_rate_mb_s = 0)");
            return Ok(());
        }
        tracing::info!(
            rate_mb_s = self.bg_rate_mb_s,
            interval_s = self.bg_interval.as_secs(),
            "background scrub on"
        );
        let me = self.clone();
        let h = std::thread::Builder::new()
            .name("dynfs-scrub".into())
            .spawn(move || me.background())?;
        *self.bg_thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        Ok(())
    }

    /// Stop every job (at its next extent; checkpoints are kept) and wait for the background
    /// scrub thread to exit.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        {
            let _g = self.sleeper.0.lock().unwrap_or_else(|e| e.into_inner());
            self.sleeper.1.notify_all();
        }
        let h = self
            .bg_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Sleep up to `d`; returns false if shutting down.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.sleeper.0.lock().unwrap_or_else(|e| e.into_inner());
        if self.shutting_down() {
            return false;
        }
        let _ = self.sleeper.1.wait_timeout(g, d);
        !self.shutting_down()
    }

    /// Run `f` as the only maintenance job. A client job (with `hooks`) makes the background
    /// scrub stop at its next extent and waits for it; the background scrub never waits for
    /// clients this way (it is only started when none is waiting).
    pub fn run_exclusive<T>(
        &self,
        job: &'static str,
        hooks: Option<&ClientHooks<'_>>,
        f: impl FnOnce(&dyn Observer) -> T,
    ) -> T {
        if hooks.is_some() {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        }
        let guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        if hooks.is_some() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            job,
            origin: if hooks.is_some() {
                "client"
            } else {
                "background"
            },
            done: 0,
            total: 0,
            started: Instant::now(),
        });
        let obs = JobObserver {
            jobs: self,
            client: hooks,
        };
        let r = f(&obs);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(guard);
        r
    }

    /// How long until the next background pass is due: at once when a pass was interrupted
    /// (it resumes from its checkpoint) or none ever completed.
    fn until_next_pass(&self) -> dynfs_core::Result<Duration> {
        if scrub::scrub_checkpoint(&self.pool)?.is_some() {
            return Ok(Duration::ZERO);
        }
        let Some(finished) = scrub::last_scrub(&self.pool)?.and_then(|r| r.finished_at) else {
            return Ok(Duration::ZERO);
        };
        let due = finished.saturating_add(self.bg_interval.as_secs());
        Ok(Duration::from_secs(due.saturating_sub(now_unix())))
    }

    fn background(&self) {
        while !self.shutting_down() {
            if self.waiting.load(Ordering::Relaxed) > 0 {
                self.sleep(Duration::from_millis(100));
                continue;
            }
            let wait = match self.until_next_pass() {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "background scrub cannot read its state");
                    Duration::from_secs(60)
                }
            };
            if !wait.is_zero() {
                let step = wait.min(Duration::from_secs(60));
                *self.bg_next.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + wait);
                self.sleep(step);
                continue;
            }
            *self.bg_next.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let opts = ScrubOptions {
                repair: true,
                rate_mb_s: self.bg_rate_mb_s,
                max_extents: None,
            };
            let r = self.run_exclusive("scrub", None, |obs| {
                // A client's scrub may have completed the pass while this thread waited for
                // the lock: then the next pass is not due yet.
                if !self.until_next_pass()?.is_zero() {
                    return Ok(None);
                }
                scrub::scrub_with(&self.pool, opts, obs, &mut |_, _| {}).map(Some)
            });
            match r {
                Ok(None) => {}
                Ok(Some(rep)) if rep.complete => {
                    self.bg_passes.fetch_add(1, Ordering::Relaxed);
                    add(&self.counters.scrub_passes, 1);
                    tracing::info!(
                        extents = rep.extents,
                        clean = rep.clean(),
                        resumed_from = rep.resumed_from,
                        "background scrub pass completed"
                    );
                }
                Ok(Some(_)) => tracing::debug!("background scrub paused at its checkpoint"),
                Err(e) => {
                    tracing::error!(error = %e, "background scrub failed");
                    self.sleep(
                        self.bg_interval
                            .clamp(Duration::from_secs(1), Duration::from_secs(60)),
                    );
                }
            }
        }
    }

    /// The running job, if any.
    pub fn activity(&self) -> Option<Activity> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| Activity {
                job: r.job.into(),
                origin: r.origin.into(),
                done: r.done,
                total: r.total,
                seconds: r.started.elapsed().as_secs_f64(),
            })
    }

    /// Background scrub state.
    pub fn background_state(&self) -> BackgroundScrub {
        let running = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|r| r.origin == "background");
        let next = *self.bg_next.lock().unwrap_or_else(|e| e.into_inner());
        BackgroundScrub {
            rate_mb_s: self.bg_rate_mb_s,
            interval_s: self.bg_interval.as_secs(),
            passes: self.bg_passes.load(Ordering::Relaxed),
            bad_fragments: self.counters.scrub_bad.load(Ordering::Relaxed),
            repaired_fragments: self.counters.scrub_repaired.load(Ordering::Relaxed),
            next_pass_in_s: match (running, next) {
                (false, Some(t)) if self.bg_rate_mb_s > 0.0 => {
                    Some(t.saturating_duration_since(Instant::now()).as_secs())
                }
                _ => None,
            },
        }
    }

    /// Full status of the mounted pool, with the running job and the background scrub.
    pub fn status(&self) -> dynfs_core::Result<Status> {
        let mut st = Status::gather(&self.pool)?;
        st.activity = self.activity();
        st.background_scrub = Some(self.background_state());
        Ok(st)
    }

    /// Prometheus text for scrub and rebuild progress (appended to the engine's counters).
    pub fn render_metrics(&self) -> String {
        let mut s = String::new();
        let c = &self.counters;
        let counters: [(&str, &AtomicU64, &str); 9] = [
            (
                "dynfs_scrub_extents_total",
                &c.scrub_extents,
                "Extents verified by scrubs since mount.",
            ),
            (
                "dynfs_scrub_bytes_total",
                &c.scrub_bytes,
                "Fragment bytes read by scrubs since mount.",
            ),
            (
                "dynfs_scrub_bad_fragments_total",
                &c.scrub_bad,
                "Fragments scrubs found missing, unreadable or corrupt.",
            ),
            (
                "dynfs_scrub_repaired_fragments_total",
                &c.scrub_repaired,
                "Fragments scrubs rewrote.",
            ),
            (
                "dynfs_scrub_unrecoverable_extents_total",
                &c.scrub_unrecoverable,
                "Extents scrubs could not reconstruct.",
            ),
            (
                "dynfs_scrub_passes_total",
                &c.scrub_passes,
                "Background scrub passes completed since mount.",
            ),
            (
                "dynfs_rebuild_extents_total",
                &c.rebuild_extents,
                "Extents examined by rebuilds and drains since mount.",
            ),
            (
                "dynfs_rebuild_fragments_total",
                &c.rebuild_fragments,
                "Fragments moved by rebuilds and drains since mount.",
            ),
            (
                "dynfs_rebuild_failed_extents_total",
                &c.rebuild_failed,
                "Extents rebuilds and drains could not restore.",
            ),
        ];
        for (name, v, help) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let act = self.activity();
        let _ = writeln!(
            s,
            "# HELP dynfs_job_running 1 while a scrub, rebuild or drain runs.\n# TYPE dynfs_job_running gauge"
        );
        let _ = writeln!(
            s,
            "# HELP dynfs_job_extents_done Extents done in the running job's pass.\n# TYPE dynfs_job_extents_done gauge"
        );
        let _ = writeln!(
            s,
            "# HELP dynfs_job_extents Extents in the pool when the running job started.\n# TYPE dynfs_job_extents gauge"
        );
        for job in ["scrub", "rebuild", "drain"] {
            let a = act.as_ref().filter(|a| a.job == job);
            let _ = writeln!(
                s,
                "dynfs_job_running{{job=\"{job}\"}} {}",
                u8::from(a.is_some())
            );
            let _ = writeln!(
                s,
                "dynfs_job_extents_done{{job=\"{job}\"}} {}",
                a.map_or(0, |a| a.done)
            );
            let _ = writeln!(
                s,
                "dynfs_job_extents{{job=\"{job}\"}} {}",
                a.map_or(0, |a| a.total)
            );
        }
        let last = scrub::last_scrub(&self.pool).ok().flatten();
        let _ = writeln!(
            s,
            "# HELP dynfs_scrub_last_completed_seconds Unix time the last scrub pass completed (0 = never).\n# TYPE dynfs_scrub_last_completed_seconds gauge\ndynfs_scrub_last_completed_seconds {}",
            last.and_then(|r| r.finished_at).unwrap_or(0)
        );
        s
    }
}
