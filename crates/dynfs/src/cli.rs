//! Command-line interface: argument parsing and the subcommands.

use crate::control::{self, DrainResult, Request};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dynfs_core::policy::parse_size;
use dynfs_core::scrub::{self, RebuildReport, ScrubOptions, ScrubReport};
use dynfs_core::status::Status;
use dynfs_core::{snapshot, Fs, Health, InitOptions, Policy, Pool};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// DynamicFS: a checksummed, erasure-coded filesystem across several disks, mounted with FUSE.
#[derive(Parser, Debug)]
#[command(name = "dynfs", version, about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `dynfs_core=debug`.
    #[arg(
        long,
        default_value = "info,fuser::mnt=off",
        global = true,
        env = "DYNFS_LOG"
    )]
    pub log: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a pool over the given disk directories.
    Init {
        /// Pool directory (created; holds pool.toml).
        pool: PathBuf,
        /// A disk directory (repeat; must exist and not belong to a pool).
        #[arg(long = "disk", required = true)]
        disks: Vec<PathBuf>,
        /// Default policy: replicate:N or rs:K+M.
        #[arg(long, default_value = "replicate:2")]
        policy: String,
        /// Extent size (e.g. 4MiB, 256K): bytes of file data per extent.
        #[arg(long, default_value = "4MiB")]
        extent_size: String,
    },
    /// Mount the pool (detaches once mounted unless --foreground).
    Mount {
        /// Pool directory.
        pool: PathBuf,
        /// Mount point.
        mountpoint: PathBuf,
        /// Stay in the foreground.
        #[arg(long)]
        foreground: bool,
        /// Append logs to this file (otherwise a detached daemon discards them).
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9108.
        #[arg(long)]
        metrics: Option<String>,
        /// Pause between background scrub passes, e.g. 30s, 12h, 7d (0 = continuous). The
        /// background scrub runs at pool.toml's scrub_rate_mb_s; a rate of 0 turns it off.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        scrub_interval: Duration,
    },
    /// Show disks, health, capacity, policies, degraded extents, scrub and rebuild state.
    Status {
        /// Pool directory.
        pool: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify every fragment; exit 0 when clean.
    Scrub {
        /// Pool directory.
        pool: PathBuf,
        /// Rewrite bad fragments.
        #[arg(long)]
        repair: bool,
        /// Rate limit in MB/s (default from pool.toml; 0 = unlimited).
        #[arg(long)]
        rate: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore every extent's policy (rebuild fragments from missing, failed or draining disks).
    Rebuild {
        /// Pool directory.
        pool: PathBuf,
    },
    /// Remove orphan fragments and unlinked inodes left by a crash.
    Gc {
        /// Pool directory.
        pool: PathBuf,
    },
    /// Manage disks.
    Disk {
        /// The disk operation.
        #[command(subcommand)]
        op: DiskOp,
    },
    /// Manage snapshots.
    Snapshot {
        /// The snapshot operation.
        #[command(subcommand)]
        op: SnapOp,
    },
}

/// Disk operations.
#[derive(Subcommand, Debug)]
pub enum DiskOp {
    /// Add a disk directory to the pool.
    Add {
        /// Pool directory.
        pool: PathBuf,
        /// New disk directory.
        dir: PathBuf,
    },
    /// Move every fragment off a disk (resumable).
    Drain {
        /// Pool directory.
        pool: PathBuf,
        /// Disk id (see `dynfs status`).
        id: u32,
    },
    /// Remove a drained disk from the pool.
    Remove {
        /// Pool directory.
        pool: PathBuf,
        /// Disk id.
        id: u32,
    },
    /// Set a disk's health: healthy, degraded, suspect, draining or failed.
    SetHealth {
        /// Pool directory.
        pool: PathBuf,
        /// Disk id.
        id: u32,
        /// New health.
        health: String,
    },
}

/// Snapshot operations.
#[derive(Subcommand, Debug)]
pub enum SnapOp {
    /// Create a snapshot of the live filesystem (copies no data).
    Create {
        /// Pool directory.
        pool: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots.
    List {
        /// Pool directory.
        pool: PathBuf,
    },
    /// Replace the live filesystem with a snapshot's contents.
    Restore {
        /// Pool directory.
        pool: PathBuf,
        /// Snapshot name.
        name: String,
    },
    /// Delete a snapshot.
    Delete {
        /// Pool directory.
        pool: PathBuf,
        /// Snapshot name.
        name: String,
    },
}

/// Install the tracing subscriber.
pub fn init_logging(format: LogFormat, filter: &str, file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Arc::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person reading a terminal, not in files or pipes.
        .with_ansi(file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let r = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("installing logger: {e}"))
}

fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    move |done, total| eprintln!("{label}: {done} of {total} extents")
}

/// Parse a duration: a number of seconds, or a number followed by `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86400),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90, 30s, 10m, 12h or 7d"))?;
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Send `req` to the daemon of a mounted pool, printing its progress on stderr.
fn remote(c: control::Client, req: &Request) -> Result<serde_json::Value> {
    c.call(req, &mut |job, done, total| {
        eprintln!("{job}: {done} of {total} extents")
    })
}

/// Open an unmounted pool for an admin command (a mounted one is reached through its control
/// socket before this is called).
fn open_unmounted(pool: &Path) -> Result<Pool> {
    open_waiting(pool, || Pool::open(pool))
}

/// How long an admin command waits for the pool lock before reporting the pool busy. A daemon
/// goes on for a moment after `fusermount3 -u` returns (stopping its jobs, closing the pool),
/// and a process that just closed the pool may have a forked child still holding the lock
/// until it execs; neither should make `fusermount3 -u MNT && dynfs gc POOL` fail.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Run `open` until it does not fail with [`dynfs_core::Error::InUse`] (at most
/// [`LOCK_WAIT`]), then turn that error into a clear message.
fn open_waiting(pool: &Path, open: impl Fn() -> dynfs_core::Result<Pool>) -> Result<Pool> {
    let start = std::time::Instant::now();
    loop {
        match open() {
            Err(dynfs_core::Error::InUse(_)) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(dynfs_core::Error::InUse(_)) => bail!("{}", in_use(pool)),
            r => return r.with_context(|| format!("opening pool {}", pool.display())),
        }
    }
}

fn in_use(pool: &Path) -> String {
    format!(
        "pool {} is in use by another dynfs process, and no daemon answers on its control \
         socket {} (an admin command may be running; try again when it ends)",
        pool.display(),
        pool.join(control::SOCKET).display()
    )
}

fn print_scrub(r: &ScrubReport, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "scrubbed {} extents ({} bytes) in {:.1}s{}",
            r.extents,
            r.bytes,
            r.seconds,
            if r.resumed_from > 0 {
                format!(", resumed at extent {}", r.resumed_from)
            } else {
                String::new()
            }
        );
        println!(
            "{:>4} {:>10} {:>10} {:>6} {:>8}",
            "disk", "fragments", "ok", "bad", "repaired"
        );
        for (id, d) in &r.disks {
            println!(
                "{:>4} {:>10} {:>10} {:>6} {:>8}",
                id, d.fragments, d.ok, d.bad, d.repaired
            );
        }
        if r.unrecoverable > 0 {
            println!("{} extents unrecoverable", r.unrecoverable);
        }
        println!(
            "{}",
            if r.clean() {
                "clean"
            } else {
                "PROBLEMS FOUND (run with --repair)"
            }
        );
    }
    Ok(if r.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_rebuild(r: &RebuildReport) -> ExitCode {
    println!(
        "rebuilt {} extents ({} fragments), {} failed",
        r.rebuilt, r.fragments, r.failed
    );
    if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_drain(id: u32, r: &DrainResult) -> ExitCode {
    println!(
        "drained disk {id}: moved {} fragments of {} extents, {} failed",
        r.report.fragments, r.report.rebuilt, r.report.failed
    );
    if r.remaining > 0 || r.report.failed > 0 {
        println!("{} fragments remain on disk {id}", r.remaining);
        return ExitCode::from(1);
    }
    println!("disk {id} is empty; `dynfs disk remove` can remove it");
    ExitCode::SUCCESS
}

/// Print a status (human or JSON).
fn print_status(st: &Status, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(st)?);
    } else {
        print!("{}", st.render());
    }
    Ok(())
}

/// What the daemon last published to `POOL/status.json`, with its age in seconds.
fn published_status(pool: &Path) -> Result<(Status, u64)> {
    let f = pool.join(dynfs_core::status::STATUS_FILE);
    let body = std::fs::read(&f).with_context(|| {
        format!(
            "pool {} is in use and has not published a status yet",
            pool.display()
        )
    })?;
    let age = std::fs::metadata(&f)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    let st = serde_json::from_slice(&body).context("reading the published status")?;
    Ok((st, age))
}

/// Parse arguments and run; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_file = match &cli.command {
        Command::Mount { log_file, .. } => log_file.clone(),
        _ => None,
    };
    if let Err(e) = init_logging(cli.log_format, &cli.log, log_file.as_deref()) {
        eprintln!("dynfs: {e:#}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dynfs: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run one subcommand.
pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Init {
            pool,
            disks,
            policy,
            extent_size,
        } => {
            let policy: Policy = policy.parse()?;
            let extent_size = parse_size(&extent_size)?;
            Pool::init(
                &pool,
                &InitOptions {
                    disks,
                    policy,
                    extent_size,
                },
            )?;
            println!(
                "created pool {} ({policy}, extent size {extent_size})",
                pool.display()
            );
        }
        Command::Mount {
            pool,
            mountpoint,
            foreground,
            metrics,
            scrub_interval,
            ..
        } => {
            let opts = crate::mount::MountOptions {
                foreground,
                metrics,
                scrub_interval,
            };
            crate::mount::mount(&pool, &mountpoint, &opts)?;
        }
        Command::Status { pool, json } => {
            let daemon = match control::connect(&pool) {
                Ok(d) => d,
                Err(e) => {
                    // Mounted, but the socket is not ours to use: show the published status.
                    let (st, age) = published_status(&pool).context(format!("{e:#}"))?;
                    if !json {
                        println!("(pool is mounted; status published by the daemon {age}s ago)");
                    }
                    print_status(&st, json)?;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let st: Status = match daemon {
                Some(c) => {
                    let st = serde_json::from_value(remote(c, &Request::Status)?)
                        .context("reading the daemon's status")?;
                    if !json {
                        println!("(pool is mounted; live status from the daemon)");
                    }
                    st
                }
                // Read-only: inspecting a pool changes nothing on its disks.
                None => match Pool::open_inspect(&pool) {
                    Ok(p) => Status::gather(&p)?,
                    Err(dynfs_core::Error::InUse(_)) => {
                        let (st, age) = published_status(&pool)?;
                        if !json {
                            println!("(pool is in use; status published by the daemon {age}s ago)");
                        }
                        st
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("opening pool {}", pool.display())))
                    }
                },
            };
            print_status(&st, json)?;
        }
        Command::Scrub {
            pool,
            repair,
            rate,
            json,
        } => {
            if rate.is_some_and(|r| r < 0.0 || !r.is_finite()) {
                bail!("--rate must be a number >= 0");
            }
            if let Some(c) = control::connect(&pool)? {
                let v = remote(
                    c,
                    &Request::Scrub {
                        repair,
                        rate_mb_s: rate,
                    },
                )?;
                let r: ScrubReport =
                    serde_json::from_value(v).context("reading the daemon's scrub report")?;
                return print_scrub(&r, json);
            }
            let p = open_unmounted(&pool)?;
            let rate_mb_s = rate.unwrap_or(p.config().scrub_rate_mb_s);
            let r = scrub::scrub(
                &p,
                ScrubOptions {
                    repair,
                    rate_mb_s,
                    max_extents: None,
                },
                &mut progress("scrub"),
            )?;
            return print_scrub(&r, json);
        }
        Command::Rebuild { pool } => {
            if let Some(c) = control::connect(&pool)? {
                let r: RebuildReport = serde_json::from_value(remote(c, &Request::Rebuild)?)
                    .context("reading the daemon's rebuild report")?;
                return Ok(print_rebuild(&r));
            }
            let p = open_unmounted(&pool)?;
            let r = scrub::rebuild(&p, None, &mut progress("rebuild"))?;
            return Ok(print_rebuild(&r));
        }
        Command::Gc { pool } => {
            if let Some(c) = control::connect(&pool)? {
                let v = remote(c, &Request::Gc)?;
                let r: dynfs_core::pool::GcReport =
                    serde_json::from_value(v).context("reading the daemon's gc report")?;
                println!(
                    "removed {} orphan fragments ({} bytes) and {} unlinked inodes",
                    r.fragments, r.bytes, r.inodes
                );
                return Ok(ExitCode::SUCCESS);
            }
            let p = open_waiting(&pool, || {
                Pool::open_no_gc(&pool, Arc::new(dynfs_core::io::StdIo))
            })?;
            let r = p.gc()?;
            println!(
                "removed {} orphan fragments ({} bytes) and {} unlinked inodes",
                r.fragments, r.bytes, r.inodes
            );
        }
        Command::Disk { op } => return disk(op),
        Command::Snapshot { op } => return snap(op),
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a daemon's answer that is a message.
fn print_message(v: &serde_json::Value) {
    match v.as_str() {
        Some(m) => println!("{m}"),
        None => println!("{v}"),
    }
}

fn disk(op: DiskOp) -> Result<ExitCode> {
    let pool = match &op {
        DiskOp::Add { pool, .. }
        | DiskOp::Drain { pool, .. }
        | DiskOp::Remove { pool, .. }
        | DiskOp::SetHealth { pool, .. } => pool.clone(),
    };
    if let DiskOp::SetHealth { health, .. } = &op {
        health.parse::<Health>()?;
    }
    if let Some(c) = control::connect(&pool)? {
        let req = match &op {
            DiskOp::Add { dir, .. } => Request::AddDisk {
                dir: std::fs::canonicalize(dir)
                    .with_context(|| format!("disk directory {}", dir.display()))?,
            },
            DiskOp::Drain { id, .. } => Request::Drain { disk: *id },
            DiskOp::Remove { id, .. } => Request::RemoveDisk { disk: *id },
            DiskOp::SetHealth { id, health, .. } => Request::SetHealth {
                disk: *id,
                health: health.clone(),
            },
        };
        let v = remote(c, &req)?;
        if let DiskOp::Drain { id, .. } = op {
            let r: DrainResult =
                serde_json::from_value(v).context("reading the daemon's drain report")?;
            return Ok(print_drain(id, &r));
        }
        print_message(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let p = open_unmounted(&pool)?;
    match op {
        DiskOp::Add { dir, .. } => {
            let id = p.add_disk(&dir)?;
            println!("added disk {id}: {}", dir.display());
        }
        DiskOp::Drain { id, .. } => {
            let report = scrub::drain(&p, id, &mut progress("drain"))?;
            let remaining = p.fragments_on(id)?;
            return Ok(print_drain(id, &DrainResult { report, remaining }));
        }
        DiskOp::Remove { id, .. } => {
            p.remove_disk(id)?;
            println!("removed disk {id}");
        }
        DiskOp::SetHealth { id, health, .. } => {
            let h: Health = health.parse()?;
            p.set_health(id, h)?;
            println!("disk {id} is now {h}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn snap(op: SnapOp) -> Result<ExitCode> {
    let pool = match &op {
        SnapOp::Create { pool, .. }
        | SnapOp::List { pool }
        | SnapOp::Restore { pool, .. }
        | SnapOp::Delete { pool, .. } => pool.clone(),
    };
    if let Some(c) = control::connect(&pool)? {
        let req = match &op {
            SnapOp::Create { name, .. } => Request::SnapshotCreate { name: name.clone() },
            SnapOp::List { .. } => Request::SnapshotList,
            SnapOp::Restore { name, .. } => Request::SnapshotRestore { name: name.clone() },
            SnapOp::Delete { name, .. } => Request::SnapshotDelete { name: name.clone() },
        };
        let v = remote(c, &req)?;
        match v.as_array() {
            Some(list) => {
                for s in list {
                    println!(
                        "{}\t{}",
                        s["name"].as_str().unwrap_or_default(),
                        s["created"].as_u64().unwrap_or_default()
                    );
                }
            }
            None => print_message(&v),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let p = open_unmounted(&pool)?;
    match op {
        SnapOp::Create { name, .. } => {
            let s = snapshot::create(&p, &name)?;
            println!("created snapshot {} (tree {})", s.name, s.tree);
        }
        SnapOp::List { .. } => {
            for s in snapshot::list(&p)? {
                println!("{}\t{}", s.name, s.created.secs);
            }
        }
        SnapOp::Restore { name, .. } => {
            snapshot::restore(&p, &name)?;
            println!("restored snapshot {name}");
        }
        SnapOp::Delete { name, .. } => {
            snapshot::delete(&p, &name)?;
            println!("deleted snapshot {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Open a pool and wrap it in a filesystem (used by `mount`).
pub fn open_fs(pool: &Path) -> Result<Arc<Fs>> {
    let p = Pool::open(pool).with_context(|| format!("opening pool {}", pool.display()))?;
    Ok(Arc::new(Fs::new(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "d", "1w", "-1s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
