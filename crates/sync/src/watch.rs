//! `--watch`: keep a destination in sync with its sources.
//!
//! The sources are watched first (so nothing changed during the first sync is missed), then
//! the command line runs once exactly as without `--watch` (same output, same errors). After
//! that, changes under the sources are collected by the platform watcher
//! ([`arsync_io::watch::TreeWatcher`]) and debounced ([`arsync_io::watch::Debouncer`],
//! `--watch-delay`, default 200 ms); each settled batch re-runs the same command line (parsed
//! again, so filter files are re-read). When the options allow it (see `partial_plan`), the
//! re-run covers only the outermost changed directories, each as a named directory with its
//! subtree; otherwise (`-H`, `-m`, `-R`, per-directory filter files, a change in a source
//! root itself, an inotify queue overflow, ...) it is a full pass over the sources. Either way
//! it is the normal engine with rsync's quick check, so unchanged files cost one `stat` each
//! and everything rsync would do is done: `--delete` removes what was deleted, filters apply,
//! directory metadata is set after the directory's entries. Output per re-sync is that of a
//! normal run (`-v`, `-i`, `--out-format`, `--stats`, `--log-file`); the totals of a partial
//! re-sync count the directories it re-synced. Re-syncs compare modification times to the
//! nanosecond (as `--modify-window=-1`) unless `--modify-window` is given: a file rewritten
//! within one second with the same size is then still seen as changed.
//!
//! A re-sync that fails (a vanished file, an unreadable directory, a full disk) is reported as
//! a normal run would report it, and watching goes on. SIGINT, SIGTERM or SIGHUP ends the
//! watch: an interrupted re-sync removes its temporary files as a normal run does, and the
//! exit code is 20, as rsync's on a signal (the watch never ends on its own, so a signal is
//! its normal end; scripts can treat 20 as success). `--stop-after`/`--stop-at` end it with
//! code 30 (the first sync is stopped mid-way, later re-syncs are allowed to finish).
//!
//! inotify needs one watch per directory: when `fs.inotify.max_user_watches` is reached, the
//! watch goes on with the directories it has and adds a full re-sync every `--watch-interval`
//! seconds (30 when not given), after a warning. `--watch-interval` also adds periodic
//! re-syncs when the limit is not reached, e.g. for network filesystems whose remote changes
//! inotify does not see. `ARSYNC_WATCH_MAX_DIRS=N` caps arsync's own watches at N (leaving
//! the rest of the kernel's limit to other programs), with the same fallback.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arsync_io::watch::{Batch, Debouncer, TreeWatcher, WatchError};

use crate::cli::{self, Parsed};
use crate::engine::{exit, Engine};
use crate::filter::{PathFilter, RulesFilter};
use crate::fsops::{self, Kind};
use crate::plan::{self, Plan, TopItem};

/// Full re-syncs every this many seconds after the watch limit was hit and no
/// `--watch-interval` was given.
pub const LIMIT_FALLBACK_INTERVAL_SECS: u64 = 30;

/// How often an idle watch checks for a signal.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Runs a `--watch` command line: `args` is the whole argument vector (re-parsed for every
/// re-sync), `parsed` its first parse. Returns when `stop` becomes true (exit code 20), at
/// `--stop-at`/`--stop-after` (30), or when the first sync fails in a way that leaves nothing
/// to watch (its exit code).
pub fn run(args: &[OsString], parsed: Parsed, stop: Arc<AtomicBool>) -> i32 {
    if parsed.opts.list_only || parsed.dest.is_none() {
        eprintln!("arsync: --watch needs a destination (it cannot watch a listing)");
        eprintln!("arsync error: syntax or usage error (code 1)");
        return exit::SYNTAX;
    }
    let verbose = parsed.opts.verbose;
    let missing_ok = parsed.opts.ignore_missing_args || parsed.opts.delete_missing_args;
    let stop_at = parsed.opts.stop_at;
    let delay = Duration::from_millis(parsed.opts.watch_delay_ms);
    let mut interval = parsed.opts.watch_interval.map(Duration::from_secs);

    let mut watcher = match TreeWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("arsync: cannot set up file change notification (inotify): {e}");
            return exit::FILE_IO;
        }
    };
    watcher.set_max_watches(max_watches_from_env());
    if let Some(d) = parsed.dest.as_deref() {
        // A destination inside a source must not trigger re-syncs of its own writes.
        watcher.ignore(&absolute(Path::new(d)));
    }
    let mut roots_missing = false;
    for root in watch_roots(&parsed) {
        match watcher.watch_tree(&root) {
            Ok(()) => {}
            // Recorded by the watcher; handled below.
            Err(WatchError::Limit { .. }) => {}
            // The sync below reports a missing source as a normal run does.
            Err(WatchError::Io(_)) => roots_missing = true,
        }
    }
    let mut limited = false;
    limit_fallback(&mut watcher, &mut limited, &mut interval);

    let first = cli::run_parsed(parsed, Arc::clone(&stop));
    if stop.load(Ordering::Relaxed) || !matches!(first, 0 | exit::PARTIAL | exit::VANISHED) {
        return first;
    }
    if roots_missing && (!missing_ok || (watcher.watched() == 0 && interval.is_none())) {
        // A missing source ends the run as without --watch (with --ignore-missing-args, only
        // when nothing at all is left to watch).
        return first;
    }
    if verbose > 1 {
        eprintln!(
            "arsync: watching {} directories for changes",
            watcher.watched()
        );
    }

    let mut debouncer = Debouncer::new(delay);
    let mut next_full = interval.map(|i| Instant::now() + i);
    loop {
        if stop_at.is_some_and(|t| SystemTime::now() >= t) {
            eprintln!(
                "arsync error: timeout in data send/receive: stopped at the requested time (code 30)"
            );
            return exit::TIMEOUT;
        }
        if stop.load(Ordering::Relaxed) {
            eprintln!("arsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)");
            return exit::SIGNAL;
        }
        let now = Instant::now();
        if let (Some(t), Some(i)) = (next_full, interval) {
            if now >= t {
                debouncer.add_everything(now);
                next_full = Some(now + i);
            }
        }
        if let Some(batch) = debouncer.take_ready(now) {
            if batch.everything {
                // Events may have been lost: directories made meanwhile need their watches.
                // (Reaching the limit is recorded by the watcher.)
                let _ = watcher.rewatch_all();
            }
            if limit_fallback(&mut watcher, &mut limited, &mut interval) {
                next_full = next_full.or(interval.map(|i| now + i));
            }
            if verbose > 1 {
                eprintln!(
                    "arsync: re-sync: {} changed directories, {} new trees{}",
                    batch.dirs.len(),
                    batch.trees.len(),
                    if batch.everything { ", full" } else { "" }
                );
            }
            let code = resync(args, &stop, &batch);
            if stop.load(Ordering::Relaxed) {
                // An interrupted run has cleaned up and reported the signal; one that ended
                // just before it arrived has not.
                if code != exit::SIGNAL {
                    eprintln!("arsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)");
                }
                return exit::SIGNAL;
            }
            continue;
        }
        let mut wait = POLL_SLICE;
        if let Some(d) = debouncer.deadline() {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if let Some(t) = next_full {
            wait = wait.min(t.saturating_duration_since(now));
        }
        match watcher.read_changes(Some(wait)) {
            Ok(changes) => {
                let at = Instant::now();
                for c in changes {
                    debouncer.add(c, at);
                }
            }
            Err(e) => {
                eprintln!("arsync: reading file change events failed: {e}");
                return exit::FILE_IO;
            }
        }
    }
}

/// One re-sync: the command line parsed again (filter files are re-read) and run over the
/// changed directories when that is equivalent to a full pass, else over everything.
fn resync(args: &[OsString], stop: &Arc<AtomicBool>, batch: &Batch) -> i32 {
    let mut parsed = match cli::parse(args.iter().cloned()) {
        Ok(p) => p,
        Err(e) => {
            if !e.msg.is_empty() {
                eprintln!("{}", e.msg);
            }
            return e.code;
        }
    };
    // The deadline is the first run's (--stop-after counts from the start); the watch loop
    // checks it between re-syncs.
    parsed.opts.stop_at = None;
    if !modify_window_given(args) {
        // A file rewritten within the same second with the same size must still be seen:
        // compare nanoseconds (the destination's times were set to the nanosecond).
        parsed.opts.modify_window = -1;
    }
    if !batch.everything {
        match partial_plan(&parsed, batch) {
            Some(Scope::Nothing) => return exit::OK,
            Some(Scope::Part(plan)) => return run_plan(parsed, plan, stop),
            None => {}
        }
    }
    cli::run_parsed(parsed, Arc::clone(stop))
}

/// True when the command line sets `--modify-window` (before any `--`).
fn modify_window_given(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a.as_bytes().starts_with(b"--modify-window"))
}

/// What a batch of changes needs re-synced, when less than everything.
#[derive(Debug)]
enum Scope {
    /// Nothing that is transferred changed (e.g. only excluded directories).
    Nothing,
    /// These directories (each with its whole subtree).
    Part(Plan),
}

/// Above this many changed directories a batch re-syncs everything.
const MAX_PARTIAL_DIRS: usize = 256;

/// The plan that re-syncs only the changed directories, each as a named directory item with
/// its subtree (so `--delete` removes what vanished from it and its own metadata is set after
/// its entries), or `None` when only a full pass is right: options whose meaning depends on
/// the whole tree (`-H`, `-m`, `-x`, `--max-delete`, `-R`, `--files-from`, `-L`, `-k`),
/// filters that may read per-directory merge files of parent directories, a change of a
/// source root itself, or too many directories.
fn partial_plan(parsed: &Parsed, batch: &Batch) -> Option<Scope> {
    let o = &parsed.opts;
    let eligible = o.recursive
        && !o.relative
        && o.files_from.is_none()
        && !o.hard_links
        && !o.prune_empty_dirs
        && o.one_file_system == 0
        && o.max_delete.is_none()
        && !o.delete_missing_args
        && !o.copy_links
        && !o.copy_dirlinks
        && !o.list_only
        && !parsed.per_dir_rules;
    if !eligible {
        return None;
    }
    let full = plan::build(o, &parsed.sources, parsed.dest.as_deref()?, None).ok()?;
    if !full.errors.is_empty() || !full.missing.is_empty() || full.create_dest {
        return None;
    }
    let roots: Vec<(PathBuf, &TopItem)> = full
        .items
        .iter()
        .filter(|i| !i.implied && i.meta.kind() == Kind::Dir)
        .map(|i| (absolute(&i.src), i))
        .collect();
    // Paths sort component by component, so a directory's descendants follow it: keep the
    // outermost changed directories only (each is synced with its subtree).
    let changed: BTreeSet<&PathBuf> = batch.dirs.iter().chain(&batch.trees).collect();
    let mut outer: Vec<&PathBuf> = Vec::new();
    for c in changed {
        if !outer.last().is_some_and(|l| c.starts_with(l)) {
            outer.push(c);
        }
    }
    if outer.len() > MAX_PARTIAL_DIRS {
        return None;
    }
    let mut items = Vec::new();
    for c in outer {
        let (root, item) = roots.iter().find(|(r, _)| c.starts_with(r))?;
        let sub = c.strip_prefix(root).ok()?;
        if sub.as_os_str().is_empty() {
            return None;
        }
        // Gone or replaced: the change of its parent directory covers it.
        let Ok(meta) = fsops::lstat(c) else {
            continue;
        };
        if meta.kind() != Kind::Dir {
            continue;
        }
        let sub_bytes = sub.as_os_str().as_bytes();
        let display = join_rel(&item.display, sub_bytes);
        if parent_excluded(&parsed.filter, &display) {
            continue;
        }
        let rel = join_rel(&item.rel, sub_bytes);
        // The destination's parent directory must be there (it is, unless someone changed
        // the destination): else only a full pass rebuilds the path.
        let dst_parent = plan::join(&full.dest, &rel);
        if !dst_parent.parent().is_some_and(Path::is_dir) {
            return None;
        }
        items.push(TopItem {
            src: item.src.join(sub),
            rel,
            display,
            meta,
            contents: false,
            implied: false,
        });
    }
    if items.is_empty() {
        return Some(Scope::Nothing);
    }
    Some(Scope::Part(Plan { items, ..full }))
}

/// `base/sub` for transfer-relative paths (`.` is the root).
fn join_rel(base: &[u8], sub: &[u8]) -> Vec<u8> {
    if base == b"." || base.is_empty() {
        return sub.to_vec();
    }
    let mut v = base.to_vec();
    v.push(b'/');
    v.extend_from_slice(sub);
    v
}

/// True when a directory above `rel` is excluded (the walk would never reach `rel`; the
/// engine checks `rel` itself).
fn parent_excluded(filter: &RulesFilter, rel: &[u8]) -> bool {
    if filter.is_empty() {
        return false;
    }
    rel.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .any(|(i, _)| filter.excluded(&rel[..i], true))
}

/// Runs `plan` with the parsed options, as [`cli::run_parsed`] runs a full one.
fn run_plan(parsed: Parsed, plan: Plan, stop: &Arc<AtomicBool>) -> i32 {
    let Parsed { opts, filter, .. } = parsed;
    let out = match cli::open_output(&opts) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let engine = Arc::new(Engine::new(opts, Box::new(filter), out, Arc::clone(stop)));
    engine.run(plan)
}

/// When the watcher ran out of watches since the last call: warns (once per watch) and
/// makes sure periodic full re-syncs are on; returns true when it ran out.
fn limit_fallback(
    watcher: &mut TreeWatcher,
    warned: &mut bool,
    interval: &mut Option<Duration>,
) -> bool {
    if !watcher.take_limit_hit() {
        return false;
    }
    let i = *interval.get_or_insert(Duration::from_secs(LIMIT_FALLBACK_INTERVAL_SECS));
    if !std::mem::replace(warned, true) {
        let e = WatchError::Limit {
            watched: watcher.watched(),
        };
        eprintln!(
            "arsync warning: {e}; changes in unwatched directories are picked up by a full \
             re-sync every {} seconds (--watch-interval)",
            i.as_secs()
        );
    }
    true
}

/// `ARSYNC_WATCH_MAX_DIRS`: at most this many inotify watches (directories) for this run,
/// leaving the rest of `fs.inotify.max_user_watches` to other programs; beyond it, watching
/// falls back as at the kernel's limit.
fn max_watches_from_env() -> Option<usize> {
    std::env::var("ARSYNC_WATCH_MAX_DIRS")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The directories (or files) to watch: each source as an absolute path, without the
/// trailing slash; with `--files-from`, the base directory.
fn watch_roots(parsed: &Parsed) -> Vec<PathBuf> {
    let sources: &[OsString] = if parsed.opts.files_from.is_some() {
        &parsed.sources[..parsed.sources.len().min(1)]
    } else {
        &parsed.sources
    };
    sources.iter().map(|s| absolute(Path::new(s))).collect()
}

/// `p` made absolute without resolving symbolic links, with `.` components dropped (so a
/// `-R` source `dir/./sub` is `dir/sub`).
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs.components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_absolute_and_clean() {
        let p = cli::parse(["arsync", "-a", "--watch", "/s/./t/", "/u", "/d"]);
        let p = p.unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(
            watch_roots(&p),
            vec![PathBuf::from("/s/t"), PathBuf::from("/u")]
        );
        let cwd = std::env::current_dir().unwrap_or_default();
        assert_eq!(absolute(Path::new("x/")), cwd.join("x"));
    }

    #[test]
    fn explicit_modify_window_is_found() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(modify_window_given(&v(&[
            "arsync",
            "--modify-window=2",
            "s",
            "d"
        ])));
        assert!(modify_window_given(&v(&[
            "arsync",
            "--modify-window",
            "0",
            "s",
            "d"
        ])));
        assert!(!modify_window_given(&v(&["arsync", "-a", "s", "d"])));
        assert!(!modify_window_given(&v(&[
            "arsync",
            "--",
            "--modify-window=1",
            "d"
        ])));
    }

    #[test]
    fn watch_options_parse() {
        let p = cli::parse(["arsync", "-a", "--watch", "s", "d"]);
        let p = p.unwrap_or_else(|e| panic!("{}", e.msg));
        assert!(p.opts.watch);
        assert_eq!(p.opts.watch_delay_ms, cli::DEFAULT_WATCH_DELAY_MS);
        assert_eq!(p.opts.watch_interval, None);
        let p = cli::parse([
            "arsync",
            "-a",
            "--watch",
            "--watch-delay=50",
            "--watch-interval",
            "9",
            "s",
            "d",
        ]);
        let p = p.unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(
            (p.opts.watch_delay_ms, p.opts.watch_interval),
            (50, Some(9))
        );
        for bad in [
            &["--watch", "--watch-delay=x"][..],
            &["--watch", "--watch-interval=0"],
            &["--watch-delay=10"],
        ] {
            let argv = ["arsync", "-a"].iter().chain(bad).chain(&["s", "d"]);
            assert_eq!(cli::parse(argv.copied()).err().map(|e| e.code), Some(1));
        }
        let p = cli::parse(["arsync", "-a", "--watch", "--no-watch", "s", "d"]);
        assert!(p.is_ok_and(|p| !p.opts.watch));
    }

    fn parsed(extra: &[&str], src: &Path, dst: &Path) -> Parsed {
        let mut argv: Vec<OsString> = vec!["arsync".into(), "-a".into(), "--delete".into()];
        argv.extend(extra.iter().map(OsString::from));
        argv.push(format!("{}/", src.display()).into());
        argv.push(format!("{}/", dst.display()).into());
        cli::parse(argv).unwrap_or_else(|e| panic!("{}", e.msg))
    }

    fn batch(dirs: &[PathBuf]) -> Batch {
        Batch {
            dirs: dirs.iter().cloned().collect(),
            ..Batch::default()
        }
    }

    fn displays(scope: Option<Scope>) -> Option<Vec<String>> {
        match scope? {
            Scope::Nothing => Some(Vec::new()),
            Scope::Part(plan) => Some(
                plan.items
                    .iter()
                    .map(|i| String::from_utf8_lossy(&i.display).into_owned())
                    .collect(),
            ),
        }
    }

    #[test]
    fn partial_plans_cover_the_outermost_changed_directories() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let (src, dst) = (absolute(&t.path().join("s")), absolute(&t.path().join("d")));
        for d in ["s/a/b", "s/c", "s/x/y", "d/a", "d/c"] {
            std::fs::create_dir_all(t.path().join(d))?;
        }
        let p = parsed(&["--exclude=x/"], &src, &dst);
        let changed = [
            src.join("a"),
            src.join("a/b"),
            src.join("c"),
            src.join("x/y"),
            src.join("gone"),
        ];
        assert_eq!(
            displays(partial_plan(&p, &batch(&changed))),
            Some(vec!["a".to_string(), "c".to_string()])
        );
        // Only an excluded directory changed: nothing to do.
        assert_eq!(
            displays(partial_plan(&p, &batch(&[src.join("x/y")]))),
            Some(Vec::new())
        );
        // A change of the root itself, or outside every source: a full pass.
        assert!(partial_plan(&p, &batch(std::slice::from_ref(&src))).is_none());
        assert!(partial_plan(&p, &batch(&[t.path().join("elsewhere")])).is_none());
        // Options that depend on the whole tree: a full pass.
        for extra in [&["-H"][..], &["-m"], &["-F"], &["--filter=- x/"], &["-x"]] {
            let p = parsed(extra, &src, &dst);
            assert!(
                partial_plan(&p, &batch(&[src.join("c")])).is_none(),
                "{extra:?}"
            );
        }
        // The destination lost the parent directory: a full pass rebuilds it.
        std::fs::remove_dir_all(t.path().join("d/a"))?;
        assert!(partial_plan(&p, &batch(&[src.join("a/b")])).is_none());
        Ok(())
    }

    #[test]
    fn watch_without_destination_is_a_usage_error() {
        let p = cli::parse(["arsync", "-a", "--watch", "s"]);
        let p = p.unwrap_or_else(|e| panic!("{}", e.msg));
        let code = run(&[], p, Arc::new(AtomicBool::new(false)));
        assert_eq!(code, exit::SYNTAX);
    }
}
