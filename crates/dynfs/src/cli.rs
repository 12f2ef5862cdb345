//! Command-line interface: argument parsing and the subcommands.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dynfs_core::policy::parse_size;
use dynfs_core::scrub::{self, ScrubOptions};
use dynfs_core::status::Status;
use dynfs_core::{snapshot, Fs, Health, InitOptions, Policy, Pool};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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
        /// Extent size (e.g. 1MiB, 256K).
        #[arg(long, default_value = "1MiB")]
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
        .with_ansi(file.is_none())
        .with_writer(writer);
    let r = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("installing logger: {e}"))
}

fn open(pool: &Path) -> Result<Pool> {
    Pool::open(pool).with_context(|| format!("opening pool {}", pool.display()))
}

fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    move |done, total| eprintln!("{label}: {done} extents done (of {total})")
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
            ..
        } => {
            crate::mount::mount(&pool, &mountpoint, foreground, metrics.as_deref())?;
        }
        Command::Status { pool, json } => {
            let st = match Pool::open(&pool) {
                Ok(p) => Status::gather(&p)?,
                Err(dynfs_core::Error::InUse(_)) => {
                    // Mounted: show what the daemon last published.
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
                    if !json {
                        println!("(pool is mounted; status published by the daemon {age}s ago)");
                    }
                    serde_json::from_slice(&body).context("reading the published status")?
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("opening pool {}", pool.display()))
                    )
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render());
            }
        }
        Command::Scrub {
            pool,
            repair,
            rate,
            json,
        } => {
            let p = open(&pool)?;
            let rate_mb_s = rate.unwrap_or(p.config().scrub_rate_mb_s);
            if rate_mb_s < 0.0 || !rate_mb_s.is_finite() {
                bail!("--rate must be a number >= 0");
            }
            let r = scrub::scrub(
                &p,
                ScrubOptions {
                    repair,
                    rate_mb_s,
                    max_extents: None,
                },
                &mut progress("scrub"),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
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
            return Ok(if r.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Rebuild { pool } => {
            let p = open(&pool)?;
            let r = scrub::rebuild(&p, None, &mut progress("rebuild"))?;
            println!(
                "rebuilt {} extents ({} fragments), {} failed",
                r.rebuilt, r.fragments, r.failed
            );
            return Ok(if r.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Gc { pool } => {
            let p = Pool::open_no_gc(&pool, Arc::new(dynfs_core::io::StdIo))
                .with_context(|| format!("opening pool {}", pool.display()))?;
            let r = p.gc()?;
            println!(
                "removed {} orphan fragments ({} bytes) and {} unlinked inodes",
                r.fragments, r.bytes, r.inodes
            );
        }
        Command::Disk { op } => match op {
            DiskOp::Add { pool, dir } => {
                let p = open(&pool)?;
                let id = p.add_disk(&dir)?;
                println!("added disk {id}: {}", dir.display());
            }
            DiskOp::Drain { pool, id } => {
                let p = open(&pool)?;
                let r = scrub::drain(&p, id, &mut progress("drain"))?;
                println!(
                    "drained disk {id}: moved {} fragments of {} extents, {} failed",
                    r.fragments, r.rebuilt, r.failed
                );
                let left = p.fragments_on(id)?;
                if left > 0 || r.failed > 0 {
                    println!("{left} fragments remain on disk {id}");
                    return Ok(ExitCode::from(1));
                }
                println!("disk {id} is empty; `dynfs disk remove` can remove it");
            }
            DiskOp::Remove { pool, id } => {
                let p = open(&pool)?;
                p.remove_disk(id)?;
                println!("removed disk {id}");
            }
            DiskOp::SetHealth { pool, id, health } => {
                let h: Health = health.parse()?;
                let p = open(&pool)?;
                p.set_health(id, h)?;
                println!("disk {id} is now {h}");
            }
        },
        Command::Snapshot { op } => match op {
            SnapOp::Create { pool, name } => {
                let p = open(&pool)?;
                let s = snapshot::create(&p, &name)?;
                println!("created snapshot {} (tree {})", s.name, s.tree);
            }
            SnapOp::List { pool } => {
                let p = open(&pool)?;
                for s in snapshot::list(&p)? {
                    println!("{}\t{}", s.name, s.created.secs);
                }
            }
            SnapOp::Restore { pool, name } => {
                let p = open(&pool)?;
                snapshot::restore(&p, &name)?;
                println!("restored snapshot {name}");
            }
            SnapOp::Delete { pool, name } => {
                let p = open(&pool)?;
                snapshot::delete(&p, &name)?;
                println!("deleted snapshot {name}");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Open a pool and wrap it in a filesystem (used by `mount`).
pub fn open_fs(pool: &Path) -> Result<Arc<Fs>> {
    Ok(Arc::new(Fs::new(open(pool)?)))
}
