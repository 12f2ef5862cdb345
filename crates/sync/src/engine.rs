//! The local sync engine: a depth-first walk of the source that decides, per entry, what
//! the destination needs, and a pool of workers that copy file data.
//!
//! Invariants:
//! - Memory is bounded by the listings of the directories on the current walk path plus
//!   the bounded job queue; the tree is never held whole (hard-link and `--delay-updates`
//!   bookkeeping aside, which only grows with linked/updated files).
//! - A file's data is written under a temporary name (`.name.XXXXXX`) in its directory and
//!   renamed into place only when complete and carrying its final metadata (unless
//!   `--inplace`); interrupted transfers remove their temporary files.
//! - A directory's mode and times are applied after everything below it is done, deletions
//!   included (each directory node counts its outstanding children).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bigcopy;
use crate::filter::PathFilter;
use crate::fsops::{self, Kind, Meta, Time};
use crate::meta::{self, Wanted};
use crate::options::{DeleteMode, Options};
use crate::plan::{self, Plan, TopItem};
use crate::report::{self, Itemize, LineInfo, Output, Stats};

mod direct;
mod prefetch;
mod worker;
use prefetch::{Prefetch, WalkPos};
pub(crate) use worker::worker_io_config;

/// rsync's exit codes.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Syntax or usage error.
    pub const SYNTAX: i32 = 1;
    /// Requested action not supported.
    pub const UNSUPPORTED: i32 = 4;
    /// Error in file I/O.
    pub const FILE_IO: i32 = 11;
    /// Received SIGINT, SIGTERM or SIGHUP.
    pub const SIGNAL: i32 = 20;
    /// Partial transfer due to error.
    pub const PARTIAL: i32 = 23;
    /// Some files vanished before they could be transferred.
    pub const VANISHED: i32 = 24;
    /// Timeout (`--stop-after`, `--stop-at`).
    pub const TIMEOUT: i32 = 30;
    /// The --max-delete limit stopped deletions.
    pub const DEL_LIMIT: i32 = 25;
}

/// `strerror`-style text with the errno in parentheses, as rsync prints it.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = io::Error::from_raw_os_error(n).to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            format!("{s} ({n})")
        }
        None => e.to_string(),
    }
}

fn display(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}

/// A directory whose metadata is applied once all its children are done.
struct DirNode {
    dst: PathBuf,
    /// Source metadata to apply, or none (root of a single-file transfer, skipped dirs).
    apply: Option<(Meta, Option<Meta>)>,
    pending: AtomicUsize,
    parent: Option<Arc<DirNode>>,
    /// Nothing below this directory exists in the destination (it was created by this
    /// run, or it is a dry run's directory that does not really exist).
    virtual_new: bool,
}

/// The source path, destination path and display name (path relative to the transfer
/// root) of one entry, in one allocation: the walker builds them for every file it hands
/// out, and the worker that frees them is another thread, where each allocation costs more.
/// Where each path's directory ends and its last name starts is kept too (the workers open
/// files relative to their directory).
#[derive(Clone)]
struct JobPaths {
    buf: Box<[u8]>,
    src: PathSplit,
    dst: PathSplit,
}

/// Offsets of one path in [`JobPaths::buf`]: `start..end` is the path, `start..dir_end` its
/// directory and `name_at..name_end` its last name (the path's end, unless it is followed
/// by a `/` or a `.` component).
#[derive(Clone, Copy)]
struct PathSplit {
    start: usize,
    dir_end: usize,
    name_at: usize,
    name_end: usize,
    end: usize,
}

impl PathSplit {
    /// The offsets of `path`, which starts at `start` in the buffer.
    fn of(path: &Path, start: usize) -> PathSplit {
        let bytes = path.as_os_str().as_bytes();
        let (dir, name) = split_path(path);
        let name = name.as_bytes();
        // The directory is a prefix of `path` and a non-empty name a slice of it.
        let name_at = if name.is_empty() {
            bytes.len()
        } else {
            name.as_ptr() as usize - bytes.as_ptr() as usize
        };
        PathSplit {
            start,
            dir_end: start + dir.as_os_str().len(),
            name_at: start + name_at,
            name_end: start + name_at + name.len(),
            end: start + bytes.len(),
        }
    }
}

impl JobPaths {
    /// The paths of `src`, `dst` and `rel` as given.
    fn new(src: &Path, dst: &Path, rel: &[u8]) -> JobPaths {
        let (s, d) = (src.as_os_str().as_bytes(), dst.as_os_str().as_bytes());
        let mut buf = Vec::with_capacity(s.len() + d.len() + rel.len());
        buf.extend_from_slice(s);
        buf.extend_from_slice(d);
        buf.extend_from_slice(rel);
        JobPaths {
            buf: buf.into_boxed_slice(),
            src: PathSplit::of(src, 0),
            dst: PathSplit::of(dst, s.len()),
        }
    }

    /// The paths of the entry `name` (no `/` in it) of a directory: `src_dir.join(name)`,
    /// `dst_dir.join(name)` and [`Engine::child_rel`]`(rel_dir, name)`, built in place.
    fn child(src_dir: &Path, dst_dir: &Path, rel_dir: &[u8], name: &[u8]) -> JobPaths {
        fn join_len(dir: &[u8], name: &[u8]) -> usize {
            dir.len() + usize::from(!dir.is_empty() && !dir.ends_with(b"/")) + name.len()
        }
        /// `Path::join` of a plain name.
        fn join(buf: &mut Vec<u8>, dir: &[u8], name: &[u8]) -> PathSplit {
            let start = buf.len();
            buf.extend_from_slice(dir);
            let dir_end = buf.len();
            if !dir.is_empty() && !dir.ends_with(b"/") {
                buf.push(b'/');
            }
            let name_at = buf.len();
            buf.extend_from_slice(name);
            PathSplit {
                start,
                dir_end,
                name_at,
                name_end: buf.len(),
                end: buf.len(),
            }
        }
        let (s, d) = (
            src_dir.as_os_str().as_bytes(),
            dst_dir.as_os_str().as_bytes(),
        );
        // As `child_rel`: a name directly below the root is its own display name.
        let rel_dir: &[u8] = if rel_dir == b"." { b"" } else { rel_dir };
        let rel_len = rel_dir.len() + usize::from(!rel_dir.is_empty()) + name.len();
        let mut buf = Vec::with_capacity(join_len(s, name) + join_len(d, name) + rel_len);
        let src = join(&mut buf, s, name);
        let dst = join(&mut buf, d, name);
        buf.extend_from_slice(rel_dir);
        if !rel_dir.is_empty() {
            buf.push(b'/');
        }
        buf.extend_from_slice(name);
        JobPaths {
            buf: buf.into_boxed_slice(),
            src,
            dst,
        }
    }

    fn path(&self, at: PathSplit) -> &Path {
        Path::new(OsStr::from_bytes(&self.buf[at.start..at.end]))
    }

    /// The directory and last name of a path.
    fn parts(&self, at: PathSplit) -> (&Path, &OsStr) {
        (
            Path::new(OsStr::from_bytes(&self.buf[at.start..at.dir_end])),
            OsStr::from_bytes(&self.buf[at.name_at..at.name_end]),
        )
    }

    fn src(&self) -> &Path {
        self.path(self.src)
    }

    fn dst(&self) -> &Path {
        self.path(self.dst)
    }

    fn rel(&self) -> &[u8] {
        &self.buf[self.dst.end..]
    }

    /// The source's directory and name.
    fn src_parts(&self) -> (&Path, &OsStr) {
        self.parts(self.src)
    }

    /// The destination's directory and name.
    fn dst_parts(&self) -> (&Path, &OsStr) {
        self.parts(self.dst)
    }
}

/// A path's directory and last name. The engine builds its paths as `dir.join(name)`: those
/// are split at the last `/` without parsing every component; anything else (a trailing
/// `/` or `.`, doubled slashes, a bare root) goes through [`Path::parent`] and
/// [`Path::file_name`]. Both parts are slices of `p`.
fn split_path(p: &Path) -> (&Path, &OsStr) {
    let b = p.as_os_str().as_bytes();
    let at = b.iter().rposition(|&c| c == b'/');
    let (dir, name) = match at {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (&b[..0], b),
    };
    let plain_name = !matches!(name, b"" | b"." | b"..");
    let plain_dir = at.is_none() || (!dir.is_empty() && !dir.ends_with(b"/"));
    if plain_name && plain_dir {
        return (Path::new(OsStr::from_bytes(dir)), OsStr::from_bytes(name));
    }
    (
        p.parent().unwrap_or(Path::new("")),
        p.file_name().unwrap_or(OsStr::new("")),
    )
}

/// One file whose data must be copied.
struct FileJob {
    paths: JobPaths,
    meta: Meta,
    existing: Option<Meta>,
    dir: Arc<DirNode>,
}

/// Finished transfers added up on a worker, counted in the shared statistics once per batch
/// (the counters are shared by every thread: fewer atomic additions on them).
#[derive(Default)]
struct Tally {
    files: u64,
    size: u64,
    written: u64,
    matched: u64,
}

impl Tally {
    fn add(&mut self, size: u64, written: u64) {
        self.files += 1;
        self.size += size;
        self.written += written;
        self.matched += size.saturating_sub(written);
    }
}

/// Most entries handed to the workers in one message.
const JOB_BATCH: usize = 32;
/// A batch is sent once its files total this many bytes (so big files spread over workers).
const JOB_BATCH_BYTES: u64 = 1 << 20;

/// One source entry handed to a worker: the worker decides and acts (quick check,
/// attributes, transfer) and its output lines take position `seq`.
struct EntryJob {
    paths: JobPaths,
    meta: Meta,
    dir: Arc<DirNode>,
}

/// Entries handed to a worker together. Their output lines, in their order, take output
/// position `seq` as one piece: the walker starts a new batch whenever it printed something
/// after the batch's first entry, so the order stays rsync's.
struct JobBatch {
    seq: u64,
    jobs: Vec<EntryJob>,
}

/// What the basis directories (`--compare/copy/link-dest`) did for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alt {
    /// No basis has it.
    None,
    /// Done (skipped, linked or copied from the basis).
    Handled,
    /// `--copy-dest` of a non-regular file: create it as usual, without reporting.
    CreateQuietly,
}

/// The destination path and display name of the entry a hard-link group is linked to.
type LinkLeader = (PathBuf, Vec<u8>);

/// A hard-linked source file waiting for the last link of its group (rsync transfers the
/// last one met and links the others to it).
struct LinkMember {
    src: PathBuf,
    dst: PathBuf,
    rel: Vec<u8>,
    meta: Meta,
    /// Held open (pending count) until the link exists.
    dir: Arc<DirNode>,
    order: u64,
}

/// The links of one source inode met so far.
#[derive(Default)]
struct LinkGroup {
    members: Vec<LinkMember>,
    leader: Option<LinkLeader>,
}

/// The engine state shared by the walker and the workers.
pub struct Engine {
    opts: Options,
    filter: Box<dyn PathFilter>,
    out: Output,
    stats: Stats,
    stop: Arc<AtomicBool>,
    partial_err: AtomicBool,
    vanished: AtomicBool,
    del_limit_hit: AtomicU64,
    io_error: AtomicBool,
    delete_skip_told: AtomicBool,
    deletes_done: AtomicU64,
    temps: Mutex<HashSet<PathBuf>>,
    hlinks: Mutex<HashMap<(u64, u64), LinkGroup>>,
    deferred_links: Mutex<Vec<(LinkLeader, Vec<LinkMember>)>>,
    link_order: AtomicU64,
    delayed: Mutex<Vec<(PathBuf, PathBuf, PathBuf)>>,
    late_dirs: Mutex<Vec<(PathBuf, Meta)>>,
    /// With several top-level items: each one's destination path (relative) and source, so a
    /// deletion in a directory they share keeps what another item brings (rsync builds one
    /// file list from all of them).
    shared_items: Mutex<Vec<(Vec<u8>, PathBuf)>>,
    delayed_dirs: Mutex<HashSet<PathBuf>>,
    am_root: bool,
    fresh_dest: AtomicBool,
    checked: AtomicU64,
    fatal_io: AtomicBool,
    timed_out: Arc<AtomicBool>,
    line_format: Option<String>,
    dest_root: Mutex<PathBuf>,
    /// The destination root (`.`) was handled: several `dir/` sources share it, and rsync's
    /// file list keeps the first one's `.` only (its line and attributes).
    root_seen: AtomicBool,
    root_dev: Mutex<Option<u64>>,
    xfer_count: AtomicU64,
    bytes_done: AtomicU64,
    start: Instant,
    bw: Mutex<(Instant, u64)>,
    seq: report::Sequencer,
    prefetch: Prefetch,
    redo_lines: Mutex<Vec<Vec<u8>>>,
    /// Large files whose ranges idle workers help copy.
    big: bigcopy::Helpers,
}

const DELAY_DIR: &str = ".~tmp~";

impl Engine {
    /// A new engine for `opts`; `stop` becomes true on SIGINT/SIGTERM/SIGHUP.
    pub fn new(
        opts: Options,
        filter: Box<dyn PathFilter>,
        out: Output,
        stop: Arc<AtomicBool>,
    ) -> Engine {
        let line_format = opts.line_format();
        let dry_run = opts.dry_run;
        report::set_eight_bit(opts.eight_bit);
        // Eight listings ahead per lister keep them a few directories ahead of the walker
        // through runs of small directories; more would only hold memory (each slot is a
        // whole directory listing, and `PREFETCH_BYTES` caps them all).
        let prefetch = Prefetch::new((opts.threads * 8).max(8));
        Engine {
            am_root: opts.super_user.unwrap_or(fsops::euid() == 0),
            fresh_dest: AtomicBool::new(false),
            checked: AtomicU64::new(0),
            fatal_io: AtomicBool::new(false),
            timed_out: Arc::new(AtomicBool::new(false)),
            line_format,
            opts,
            filter,
            out,
            stats: Stats {
                dry_run: AtomicBool::new(dry_run),
                ..Stats::default()
            },
            stop,
            partial_err: AtomicBool::new(false),
            vanished: AtomicBool::new(false),
            del_limit_hit: AtomicU64::new(0),
            io_error: AtomicBool::new(false),
            delete_skip_told: AtomicBool::new(false),
            deletes_done: AtomicU64::new(0),
            temps: Mutex::new(HashSet::new()),
            hlinks: Mutex::new(HashMap::new()),
            deferred_links: Mutex::new(Vec::new()),
            link_order: AtomicU64::new(0),
            delayed: Mutex::new(Vec::new()),
            late_dirs: Mutex::new(Vec::new()),
            shared_items: Mutex::new(Vec::new()),
            delayed_dirs: Mutex::new(HashSet::new()),
            dest_root: Mutex::new(PathBuf::new()),
            root_seen: AtomicBool::new(false),
            root_dev: Mutex::new(None),
            xfer_count: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            start: Instant::now(),
            bw: Mutex::new((Instant::now(), 0)),
            seq: report::Sequencer::default(),
            prefetch,
            redo_lines: Mutex::new(Vec::new()),
            big: bigcopy::Helpers::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, msg: String) {
        self.partial_err.store(true, Ordering::Relaxed);
        self.out.error(&msg);
    }

    fn io_fail(&self, what: &str, path: &Path, e: &io::Error) {
        self.error(format!(
            "arsync: {what} \"{}\" failed: {}",
            display(path),
            errno_text(e)
        ));
    }

    /// Warns that a source file changed while it was copied (its size or modification time
    /// differ from when it was opened): the copy holds what was read, which may mix both
    /// versions. Like rsync, this is not an error.
    fn warn_if_changed(&self, path: &Path, before: &Meta, now: &Meta) {
        if now.size != before.size || now.mtime != before.mtime {
            self.out.error(&format!(
                "arsync warning: \"{}\" changed while it was copied ({} bytes when opened, {} now)",
                display(path),
                before.size,
                now.size
            ));
        }
    }

    fn vanished_file(&self, path: &Path) {
        self.vanished.store(true, Ordering::Relaxed);
        self.out
            .error(&format!("file has vanished: \"{}\"", display(path)));
    }

    fn emit(
        &self,
        name: &[u8],
        kind: Kind,
        item: Itemize,
        link: Option<(&str, &[u8])>,
        meta: &Meta,
    ) {
        self.checked.fetch_add(1, Ordering::Relaxed);
        let changed = item.update != b'.' || item.any_change();
        let info = LineInfo {
            name,
            kind,
            item: Some(item),
            link,
            length: meta.size,
            bytes: 0,
            meta: Some(meta),
            operation: "send",
        };
        if changed {
            self.out.log_item(&info, self.opts.human_readable);
        }
        let Some(fmt) = &self.line_format else {
            return;
        };
        let show = if fmt.contains("%i") {
            changed || self.opts.itemize > 1
        } else {
            item.update != b'.' || (kind == Kind::Dir && changed)
        };
        if !show && !fmt.contains("%i") && self.opts.verbose > 1 && kind != Kind::Dir {
            // -vv reports entries that needed nothing.
            let mut line = report::escape_name(name);
            line.extend_from_slice(b" is uptodate");
            self.out.line(&line);
            return;
        }
        if show {
            let line = report::format_line(fmt, &info, self.opts.human_readable);
            self.out.line(&line);
        }
    }

    fn same_time(&self, a: Time, b: Time) -> bool {
        let w = self.opts.modify_window;
        if w < 0 {
            a == b
        } else {
            (a.sec - b.sec).abs() <= w
        }
    }

    fn child_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
        if parent == b"." || parent.is_empty() {
            name.to_vec()
        } else {
            let mut v = parent.to_vec();
            v.push(b'/');
            v.extend_from_slice(name);
            v
        }
    }

    /// Whether a top-level item other than the one being walked brings the destination path
    /// `rel` (itself, a path inside it, or a parent directory of its destination).
    fn other_item_brings(&self, rel: &[u8]) -> bool {
        let items = self.shared_items.lock().unwrap_or_else(|p| p.into_inner());
        items.iter().any(|(top, src)| {
            let top: &[u8] = if top.as_slice() == b"." { b"" } else { top };
            if top.is_empty() {
                return fsops::lstat(&plan::join(src, rel)).is_ok();
            }
            if rel == top || (top.starts_with(rel) && top.get(rel.len()) == Some(&b'/')) {
                return true;
            }
            match rel.strip_prefix(top) {
                Some([b'/', inner @ ..]) => fsops::lstat(&plan::join(src, inner)).is_ok(),
                _ => false,
            }
        })
    }

    /// Runs the whole transfer described by `plan`; returns rsync's exit code.
    pub fn run(self: &Arc<Self>, plan: Plan) -> i32 {
        for e in &plan.errors {
            self.error(e.clone());
        }
        *self.dest_root.lock().unwrap_or_else(|p| p.into_inner()) = plan.dest.clone();
        if plan.items.len() > 1 {
            *self.shared_items.lock().unwrap_or_else(|p| p.into_inner()) = plan
                .items
                .iter()
                .map(|i| (i.rel.clone(), i.src.clone()))
                .collect();
        }
        self.fresh_dest.store(plan.create_dest, Ordering::Relaxed);
        // rsync says this with -v or --progress whatever the output format (-i, --out-format),
        // and at -vv the delta note follows the destination's creation.
        let announce = (self.opts.verbose > 0 || self.opts.progress) && !self.opts.list_only;
        if announce {
            self.out.line(b"sending incremental file list");
        }
        let format_has_i = self
            .opts
            .out_format
            .as_deref()
            .is_some_and(|f| f.contains("%i"));
        if plan.create_dest
            && (self.opts.verbose > 0
                || self.opts.itemize > 0
                || self.opts.progress
                || format_has_i)
            && !self.opts.list_only
        {
            let shown = display(&plan.dest);
            let shown = shown.trim_end_matches('/');
            self.out.line(
                format!(
                    "created directory {}",
                    if shown.is_empty() { "/" } else { shown }
                )
                .as_bytes(),
            );
        }
        if announce && self.opts.verbose > 1 {
            self.out
                .line(b"delta-transmission disabled for local transfer or --whole-file");
        }
        if let Some(at) = self.opts.stop_at {
            let (stop, timed_out) = (Arc::clone(&self.stop), Arc::clone(&self.timed_out));
            // Detached: the process exits when the run ends.
            std::thread::spawn(move || {
                if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
                    std::thread::sleep(wait);
                }
                timed_out.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            });
        }
        let threads = self.opts.threads.max(1);
        // Jobs travel in batches (see `JOB_BATCH`); the queue holds about `queue_depth` entries.
        let (tx, rx) =
            crossbeam_channel::bounded::<JobBatch>((self.opts.queue_depth / JOB_BATCH).max(2));
        let mut workers = Vec::new();
        if threads > 1 && !self.opts.dry_run && !self.opts.list_only {
            for _ in 0..threads {
                let rx = rx.clone();
                let eng = Arc::clone(self);
                workers.push(std::thread::spawn(move || eng.serve_worker(rx)));
            }
        }
        let sender = if workers.is_empty() { None } else { Some(tx) };
        drop(rx);
        let mut listers = Vec::new();
        if threads > 1 {
            self.prefetch.start();
            for _ in 0..threads {
                let eng = Arc::clone(self);
                listers.push(std::thread::spawn(move || {
                    eng.prefetch.serve(eng.opts.atimes)
                }));
            }
        }

        let root = Arc::new(DirNode {
            dst: plan.dest.clone(),
            apply: None,
            pending: AtomicUsize::new(1),
            parent: None,
            virtual_new: false,
        });
        let walker = Walker {
            eng: self,
            jobs: sender.as_ref(),
            segment: std::cell::Cell::new(self.seq.alloc()),
            skipped: Default::default(),
            batch: Default::default(),
            burst: Default::default(),
            top_listing: Default::default(),
            pos: Default::default(),
        };
        report::begin_capture();
        if self.opts.delete == DeleteMode::Before {
            // A whole deletion pass before anything is transferred.
            for item in &plan.items {
                walker.delete_pass(item, &plan.dest);
            }
        }
        for rel in &plan.missing {
            // --delete-missing-args: a vanished source argument removes its copy.
            let dst = plan::join(&plan.dest, rel);
            if let Ok(m) = fsops::lstat(&dst) {
                walker.delete_path(&dst, rel, &m, Del::Top);
            }
        }
        for item in &plan.items {
            if self.stopped() {
                break;
            }
            walker.top_item(item, &plan.dest, &root);
        }
        walker.close_burst();
        walker.send_batch();
        walker.finish_open_link_groups();
        walker.link_deferred();
        self.seq
            .complete(&self.out, walker.segment.get(), report::end_capture());
        drop(sender);
        for w in workers {
            let _ = w.join();
        }
        self.prefetch.close();
        let redo = self
            .redo_lines
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for line in redo {
            self.out.line(&line);
        }
        for l in listers {
            let _ = l.join();
        }
        self.release(&root);

        if !self.stopped() {
            self.finish_delayed();
            if matches!(self.opts.delete, DeleteMode::After | DeleteMode::Delay) {
                let walker = Walker {
                    eng: self,
                    jobs: None,
                    segment: std::cell::Cell::new(0),
                    skipped: Default::default(),
                    batch: Default::default(),
                    burst: Default::default(),
                    top_listing: Default::default(),
                    pos: Default::default(),
                };
                for item in &plan.items {
                    walker.delete_pass(item, &plan.dest);
                }
            }
            // Directories shared by several top-level items are finished last, deepest first.
            let mut late = self
                .late_dirs
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default();
            if plan.items.len() > 1 {
                late.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
                for (dst, m) in late {
                    self.touch_dir(&dst, &m);
                }
            }
        }
        self.finish()
    }

    fn finish(&self) -> i32 {
        let remaining: Vec<PathBuf> = self
            .temps
            .lock()
            .map(|mut t| t.drain().collect())
            .unwrap_or_default();
        for t in remaining {
            let _ = fsops::unlink(&t);
        }
        if self.fatal_io.load(Ordering::Relaxed) {
            self.out.error("arsync error: error in file IO (code 11)");
            return exit::FILE_IO;
        }
        if self.timed_out.load(Ordering::Relaxed) {
            self.out.error(
                "arsync error: timeout in data send/receive: stopped at the requested time (code 30)",
            );
            return exit::TIMEOUT;
        }
        if self.stopped() {
            self.out
                .error("arsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)");
            return exit::SIGNAL;
        }
        let skipped = self.del_limit_hit.load(Ordering::Relaxed);
        if skipped > 0 {
            self.out.error(&format!(
                "Deletions stopped due to --max-delete limit ({skipped} skipped)"
            ));
        }
        if self.opts.progress2 {
            self.out.line(b"");
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        if self.opts.stats {
            self.out.line(
                self.stats
                    .render(elapsed, self.opts.human_readable)
                    .as_bytes(),
            );
        } else if self.opts.verbose > 0 && !self.opts.list_only {
            if self.opts.verbose > 1 {
                self.out.line(
                    format!(
                        "total: matches=0  hash_hits=0  false_alarms=0 data={}",
                        self.stats.literal.load(Ordering::Relaxed)
                    )
                    .as_bytes(),
                );
            }
            self.out.line(b"");
            self.out.line(
                self.stats
                    .summary(elapsed, self.opts.human_readable)
                    .as_bytes(),
            );
        }
        if self.partial_err.load(Ordering::Relaxed) {
            self.out.error(
                "arsync error: some files/attrs were not transferred (see previous errors) (code 23)",
            );
            return exit::PARTIAL;
        }
        if skipped > 0 {
            self.out
                .error("arsync error: the --max-delete limit stopped deletions (code 25)");
            return exit::DEL_LIMIT;
        }
        if self.vanished.load(Ordering::Relaxed) {
            self.out.error(
                "arsync warning: some files vanished before they could be transferred (code 24)",
            );
            return exit::VANISHED;
        }
        exit::OK
    }

    /// Drops one hold on a directory; the last one applies its metadata.
    fn release(&self, node: &Arc<DirNode>) {
        let mut cur = Arc::clone(node);
        loop {
            if cur.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            if let Some((src, existing)) = &cur.apply {
                if !self.opts.dry_run && !self.stopped() {
                    let w = meta::wanted(&self.opts, src, existing.as_ref(), self.am_root);
                    let now = fsops::lstat(&cur.dst).ok();
                    if let Err(e) = meta::apply(&cur.dst, Kind::Dir, &w, now.as_ref()) {
                        self.attr_error(&cur.dst, &e);
                    }
                }
            }
            match &cur.parent {
                Some(p) => cur = Arc::clone(p),
                None => return,
            }
        }
    }

    fn attr_error(&self, path: &Path, e: &io::Error) {
        if e.kind() == io::ErrorKind::PermissionDenied && !self.am_root {
            // Non-root cannot give files away; rsync skips that silently.
            return;
        }
        self.io_fail("set attributes on", path, e);
    }

    /// Temporary name `.name.XXXXXX` in `dir`.
    fn temp_path(&self, dir: &Path, name: &[u8]) -> PathBuf {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut r = fsops::random_u64();
        let mut n = vec![b'.'];
        let max = 255 - 8;
        n.extend_from_slice(&name[..name.len().min(max)]);
        n.push(b'.');
        for _ in 0..6 {
            n.push(CHARS[(r % CHARS.len() as u64) as usize]);
            r /= CHARS.len() as u64;
        }
        dir.join(OsStr::from_bytes(&n))
    }

    fn register_temp(&self, p: &Path) {
        if let Ok(mut t) = self.temps.lock() {
            t.insert(p.to_path_buf());
        }
    }

    fn unregister_temp(&self, p: &Path) {
        if let Ok(mut t) = self.temps.lock() {
            t.remove(p);
        }
    }

    fn backup_path(&self, dst: &Path, rel: &[u8]) -> PathBuf {
        let suffix = self.opts.backup_suffix();
        match &self.opts.backup_dir {
            Some(dir) => {
                let base = if dir.is_absolute() {
                    dir.clone()
                } else {
                    self.dest_root
                        .lock()
                        .map(|d| d.join(dir))
                        .unwrap_or_else(|_| dir.clone())
                };
                let mut p = plan::join(&base, rel).into_os_string();
                p.push(&suffix);
                PathBuf::from(p)
            }
            None => {
                let mut p = dst.as_os_str().to_os_string();
                p.push(&suffix);
                PathBuf::from(p)
            }
        }
    }

    /// Moves an existing destination entry to its backup name.
    fn make_backup(&self, dst: &Path, rel: &[u8], copy: bool) -> io::Result<()> {
        let bp = self.backup_path(dst, rel);
        if let Some(parent) = bp.parent() {
            if self.opts.backup_dir.is_some() && fsops::lstat(parent).is_err() {
                // The directories made in the backup area take the mode and owner of the
                // destination directories they stand for, as rsync's do.
                let depth = rel.split(|&b| b == b'/').count().saturating_sub(1);
                let missing: Vec<usize> = (1..=depth)
                    .filter(|&i| {
                        bp.ancestors()
                            .nth(i)
                            .is_some_and(|a| fsops::lstat(a).is_err())
                    })
                    .collect();
                fsops::mkdir_all(parent)?;
                for i in missing {
                    let (Some(made), Some(like)) = (bp.ancestors().nth(i), dst.ancestors().nth(i))
                    else {
                        continue;
                    };
                    if let Ok(m) = fsops::lstat(like) {
                        let w = Wanted {
                            perms: Some(m.perms()),
                            uid: Some(m.uid),
                            gid: Some(m.gid),
                            mtime: None,
                            atime: None,
                        };
                        let _ = meta::apply(made, Kind::Dir, &w, None);
                    }
                }
            }
        }
        if let Ok(m) = fsops::lstat(&bp) {
            if m.kind() == Kind::Dir {
                remove_tree(&bp)?;
            }
        }
        if copy {
            // --inplace rewrites the original: the backup is a copy with its metadata.
            let tmp = self.temp_path(bp.parent().unwrap_or(Path::new(".")), b"backup");
            let orig = fsops::lstat(dst)?;
            fsops::copy_file(dst, &tmp)?;
            let w = Wanted {
                perms: Some(orig.perms()),
                uid: Some(orig.uid),
                gid: Some(orig.gid),
                mtime: Some(orig.mtime),
                atime: None,
            };
            let _ = meta::sync_xattrs(dst, &tmp, true, true, false);
            if let Err(e) = meta::apply(&tmp, Kind::File, &w, None) {
                let _ = fsops::unlink(&tmp);
                return Err(e);
            }
            return fsops::rename(&tmp, &bp);
        }
        fsops::rename(dst, &bp)
    }

    fn pace(&self, n: u64) {
        let Some(limit) = self.opts.bwlimit else {
            return;
        };
        let sleep = {
            let Ok(mut g) = self.bw.lock() else {
                return;
            };
            g.1 += n;
            let should = g.1 as f64 / limit as f64;
            let elapsed = g.0.elapsed().as_secs_f64();
            should - elapsed
        };
        if sleep > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(sleep.min(1.0)));
        }
    }

    /// Runs a batch of entries on this thread, one after the other, and prints their output
    /// in its turn.
    fn run_entries(self: &Arc<Self>, batch: JobBatch) {
        report::begin_capture();
        for job in batch.jobs {
            self.run_entry_job_with(job, None);
        }
        self.seq
            .complete(&self.out, batch.seq, report::end_capture());
    }

    /// A worker's part for one source entry: everything the walker would do for it, with the
    /// destination's `lstat` possibly done already (`pre`). Its output lines go to the
    /// batch's capture.
    fn run_entry_job_with(self: &Arc<Self>, job: EntryJob, pre: Option<io::Result<Option<Meta>>>) {
        if !self.stopped() {
            let walker = Walker {
                eng: self,
                jobs: None,
                segment: std::cell::Cell::new(0),
                skipped: Default::default(),
                batch: Default::default(),
                burst: Default::default(),
                top_listing: Default::default(),
                pos: Default::default(),
            };
            walker.handle_nondir_with(job.paths, &job.meta, &job.dir, pre);
        }
        self.release(&job.dir);
    }

    fn run_job(&self, job: FileJob) {
        let FileJob {
            paths,
            meta,
            existing,
            dir,
        } = job;
        let (src, dst, rel) = (paths.src(), paths.dst(), paths.rel());
        if !self.stopped() {
            let started = Instant::now();
            match self.transfer(src, dst, rel, &meta, existing.as_ref()) {
                Ok(written) => self.transfer_done(src, rel, &meta, written, started),
                Err(e) => self.transfer_failed(src, dst, &e),
            }
        }
        self.release(&dir);
    }

    /// Counts a finished transfer (`written` literal bytes) and does what follows it.
    fn transfer_done(&self, src: &Path, rel: &[u8], meta: &Meta, written: u64, started: Instant) {
        self.stats.transferred.fetch_add(1, Ordering::Relaxed);
        self.stats
            .transferred_size
            .fetch_add(meta.size, Ordering::Relaxed);
        self.stats.literal.fetch_add(written, Ordering::Relaxed);
        self.stats
            .matched
            .fetch_add(meta.size.saturating_sub(written), Ordering::Relaxed);
        self.after_transfer(src, rel, meta, started.elapsed().as_secs_f64());
    }

    /// Counts finished transfers added up by a worker's batch copy, which takes no file that
    /// needs anything reported or done after its transfer (progress lines, source removal).
    fn count_transfers(&self, t: &Tally) {
        let s = &self.stats;
        s.transferred.fetch_add(t.files, Ordering::Relaxed);
        s.transferred_size.fetch_add(t.size, Ordering::Relaxed);
        s.literal.fetch_add(t.written, Ordering::Relaxed);
        s.matched.fetch_add(t.matched, Ordering::Relaxed);
        self.xfer_count.fetch_add(t.files, Ordering::Relaxed);
        self.bytes_done.fetch_add(t.size, Ordering::Relaxed);
    }

    /// Reports a failed transfer as rsync does: vanished source (exit 24), full destination
    /// (ends the run, exit 11), interruption (silent), anything else (exit 23).
    fn transfer_failed(&self, src: &Path, dst: &Path, e: &io::Error) {
        match e {
            e if e.kind() == io::ErrorKind::Interrupted && self.stopped() => {}
            e if e.kind() == io::ErrorKind::NotFound && fsops::lstat(src).is_err() => {
                self.vanished_file(src)
            }
            e if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                // A full destination ends the run, as in rsync (error in file I/O).
                if !self.fatal_io.swap(true, Ordering::Relaxed) {
                    self.out.error(&format!(
                        "arsync: [receiver] write failed on \"{}\": {}",
                        display(dst),
                        errno_text(e)
                    ));
                }
                self.stop.store(true, Ordering::Relaxed);
            }
            e => self.error(format!(
                "arsync: [receiver] failed to transfer \"{}\" to \"{}\": {}",
                display(src),
                display(dst),
                errno_text(e)
            )),
        }
    }

    fn after_transfer(&self, src: &Path, rel: &[u8], meta: &Meta, took: f64) {
        let n = self.xfer_count.fetch_add(1, Ordering::Relaxed) + 1;
        let done = self.bytes_done.fetch_add(meta.size, Ordering::Relaxed) + meta.size;
        if self.opts.progress {
            let rate = meta.size as f64 / 1024.0 / took.max(1e-6);
            let secs = took as u64;
            let clock = format!("{:>4}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
            let size = report::num(meta.size, self.opts.human_readable);
            let total = self.stats.files_seen();
            let left = total.saturating_sub(self.checked.load(Ordering::Relaxed));
            self.out.line(
                format!(
                    "\r{size:>15} 100% {rate:>7.2}kB/s {clock}  \r{size:>15} 100% {rate:>7.2}kB/s {clock} (xfr#{n}, to-chk={left}/{total})"
                )
                .as_bytes(),
            );
        }
        if self.opts.progress2 {
            let secs = self.start.elapsed().as_secs_f64().max(0.001);
            let total = self.stats.total_size.load(Ordering::Relaxed).max(done);
            let pct = done * 100 / total.max(1);
            let whole = secs as u64;
            let seen = self.stats.files_seen();
            let left = seen.saturating_sub(self.checked.load(Ordering::Relaxed));
            // The totals grow while the walk goes on, as with rsync's incremental recursion.
            self.out.raw(
                format!(
                    "\r{:>15} {:>3}% {:>7.2}MB/s {:>4}:{:02}:{:02} (xfr#{n}, ir-chk={left}/{seen})",
                    report::num(done, self.opts.human_readable),
                    pct,
                    done as f64 / 1024.0 / 1024.0 / secs,
                    whole / 3600,
                    whole / 60 % 60,
                    whole % 60,
                )
                .as_bytes(),
            );
        }
        self.remove_source(src, rel, meta);
    }

    /// `--remove-source-files`: removes a synchronised non-directory from the source if it
    /// has not changed since it was listed.
    fn remove_source(&self, src: &Path, rel: &[u8], meta: &Meta) {
        if !self.opts.remove_source_files || self.opts.dry_run || meta.kind() == Kind::Dir {
            return;
        }
        if let Ok(now) = fsops::lstat(src) {
            if now.size == meta.size && now.mtime == meta.mtime && now.kind() == meta.kind() {
                if let Err(e) = fsops::unlink(src) {
                    self.io_fail("remove source file", src, &e);
                } else if self.opts.verbose > 1 {
                    self.out.line(
                        format!("sender removed {}", String::from_utf8_lossy(rel)).as_bytes(),
                    );
                }
            }
        }
    }

    /// Copies one regular file into place. Returns bytes written.
    fn transfer(
        &self,
        src: &Path,
        dst: &Path,
        rel: &[u8],
        meta: &Meta,
        existing: Option<&Meta>,
    ) -> io::Result<u64> {
        let follow = self.opts.copy_links || meta.kind() != Kind::Symlink;
        let sf = if self.opts.open_noatime {
            fsops::open_read_noatime(src, follow)?
        } else {
            fsops::open_read(src, follow)?
        };
        // Small sparse copies read the source to its end instead of asking for its size.
        let small_sparse = self.opts.sparse
            && !self.opts.preallocate
            && !self.opts.append
            && !self.opts.inplace
            && meta.size < fsops::SMALL_SPARSE;
        let smeta = if small_sparse {
            None
        } else {
            Some(fsops::fstat(&sf)?)
        };
        let len = smeta.map_or(meta.size, |m| m.size);
        let wanted = meta::wanted(&self.opts, meta, existing, self.am_root);
        let hook = |n: u64| {
            self.pace(n);
            self.stopped()
        };
        let plain = self.opts.bwlimit.is_some();
        if let Some(d) = existing.filter(|d| self.opts.append && d.kind() == Kind::File) {
            let keep =
                d.size < len && (!self.opts.append_verify || fsops::same_prefix(src, dst, d.size)?);
            if keep {
                let df = fsops::open_inplace(dst, 0o600)?;
                let written = fsops::copy_append(&sf, &df, d.size, len, &hook)?;
                if self.opts.fsync {
                    fsops::fsync(&df)?;
                }
                drop(df);
                self.finish_attrs(src, dst, &wanted)?;
                return Ok(written);
            }
        }
        if self.opts.inplace {
            if self.opts.backup && existing.is_some() {
                self.make_backup(dst, rel, true)?;
            }
            let df = fsops::open_inplace(dst, 0o600)?;
            let written = fsops::copy_inplace(&sf, &df, len, &hook)?;
            if self.opts.fsync {
                fsops::fsync(&df)?;
            }
            drop(df);
            self.finish_attrs(src, dst, &wanted)?;
            return Ok(written);
        }
        let name = dst
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let dst_dir = dst.parent().unwrap_or(Path::new(".")).to_path_buf();
        let tmp_dir = match &self.opts.temp_dir {
            Some(t) if t.is_absolute() => t.clone(),
            Some(t) => self
                .dest_root
                .lock()
                .map(|d| d.join(t))
                .unwrap_or_else(|_| t.clone()),
            None => dst_dir.clone(),
        };
        let (tmp, df) = loop {
            let tmp = self.temp_path(&tmp_dir, &name);
            match fsops::create_new(&tmp, 0o600) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        self.register_temp(&tmp);
        let result = (|| -> io::Result<u64> {
            if self.opts.preallocate {
                fsops::preallocate(&df, len)?;
            }
            let written = if small_sparse {
                match fsops::copy_sparse_small(&sf, &df, meta.size, &hook)? {
                    Some(n) => n,
                    // It grew past the small size: copy it as it is now.
                    None => fsops::copy_sparse(&sf, &df, fsops::fstat(&sf)?.size, &hook)?,
                }
            } else {
                let dev = smeta.map_or(meta.dev, |m| m.dev);
                let how = bigcopy::Method {
                    sparse: self.opts.sparse,
                    plain,
                };
                let n = bigcopy::copy(Some(&self.big), &sf, dev, &df, len, how, &hook)?;
                if let Some(before) = &smeta {
                    self.warn_if_changed(src, before, &fsops::fstat(&sf)?);
                }
                n
            };
            self.finish_attrs_fd(src, &tmp, &df, &wanted)?;
            if self.opts.fsync {
                fsops::fsync(&df)?;
            }
            drop(df);
            if self.stopped() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
            if self.opts.backup && existing.is_some() {
                self.make_backup(dst, rel, false)?;
            }
            if self.opts.delay_updates {
                let ddir = dst_dir.join(DELAY_DIR);
                if let Ok(mut dd) = self.delayed_dirs.lock() {
                    if dd.insert(ddir.clone()) {
                        match fsops::mkdir(&ddir, 0o700) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                let staged = ddir.join(OsStr::from_bytes(&name));
                self.rename_into(&tmp, &staged)?;
                if let Ok(mut d) = self.delayed.lock() {
                    d.push((staged, dst.to_path_buf(), src.to_path_buf()));
                }
            } else {
                self.rename_into(&tmp, dst)?;
            }
            Ok(written)
        })();
        match &result {
            Ok(_) => self.unregister_temp(&tmp),
            Err(_) => {
                self.unregister_temp(&tmp);
                if self.stopped() && (self.opts.partial || self.opts.partial_dir.is_some()) {
                    self.keep_partial(&tmp, dst, &name);
                } else {
                    let _ = fsops::unlink(&tmp);
                }
            }
        }
        if result.is_ok() {
            if let Some(pd) = &self.opts.partial_dir {
                let old = dst_dir.join(pd).join(OsStr::from_bytes(&name));
                if fsops::unlink(&old).is_ok() {
                    let _ = fsops::rmdir(&dst_dir.join(pd));
                }
            }
        }
        result
    }

    fn keep_partial(&self, tmp: &Path, dst: &Path, name: &[u8]) {
        match &self.opts.partial_dir {
            Some(pd) => {
                let dir = dst.parent().unwrap_or(Path::new(".")).join(pd);
                let _ = fsops::mkdir_all(&dir);
                if fsops::rename(tmp, &dir.join(OsStr::from_bytes(name))).is_err() {
                    let _ = fsops::unlink(tmp);
                }
            }
            None => {
                if fsops::rename(tmp, dst).is_err() {
                    let _ = fsops::unlink(tmp);
                }
            }
        }
    }

    /// Renames into place; across filesystems (`--temp-dir`), copies next to the target first.
    fn rename_into(&self, tmp: &Path, dst: &Path) -> io::Result<()> {
        match fsops::rename(tmp, dst) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let dir = dst.parent().unwrap_or(Path::new("."));
                let name = dst.file_name().map(|n| n.as_bytes()).unwrap_or(b"x");
                let near = self.temp_path(dir, name);
                self.register_temp(&near);
                let r = (|| {
                    let s = fsops::open_read(tmp, false)?;
                    let len = fsops::fstat(&s)?.size;
                    let d = fsops::create_new(&near, 0o600)?;
                    let dev = fsops::fstat(&s)?.dev;
                    fsops::copy_whole(&s, dev, &d, len, false, &|_| false)?;
                    drop(d);
                    let m = fsops::lstat(tmp)?;
                    let _ = meta::sync_xattrs(tmp, &near, true, true, false);
                    let w = Wanted {
                        perms: Some(m.perms()),
                        uid: Some(m.uid),
                        gid: Some(m.gid),
                        mtime: Some(m.mtime),
                        atime: None,
                    };
                    meta::apply(&near, Kind::File, &w, None)?;
                    fsops::rename(&near, dst)?;
                    fsops::unlink(tmp)
                })();
                self.unregister_temp(&near);
                if r.is_err() {
                    let _ = fsops::unlink(&near);
                }
                r
            }
            other => other,
        }
    }

    fn finish_attrs(&self, src: &Path, path: &Path, w: &Wanted) -> io::Result<()> {
        if self.opts.xattrs || self.opts.acls {
            meta::sync_xattrs(src, path, self.opts.xattrs, self.opts.acls, false)?;
        }
        match meta::apply(path, Kind::File, w, None) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !self.am_root => Ok(()),
            other => other,
        }
    }

    /// Like `finish_attrs`, on the open temporary file (saves path lookups).
    fn finish_attrs_fd(
        &self,
        src: &Path,
        path: &Path,
        file: &std::fs::File,
        w: &Wanted,
    ) -> io::Result<()> {
        if self.opts.xattrs || self.opts.acls {
            meta::sync_xattrs(src, path, self.opts.xattrs, self.opts.acls, false)?;
        }
        match meta::apply_fd(file, w) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !self.am_root => Ok(()),
            other => other,
        }
    }

    fn finish_delayed(&self) {
        let list: Vec<(PathBuf, PathBuf, PathBuf)> = self
            .delayed
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        let mut touched: HashMap<PathBuf, PathBuf> = HashMap::new();
        for (staged, dst, src) in list {
            if let Err(e) = fsops::rename(&staged, &dst) {
                self.io_fail("rename", &staged, &e);
            }
            if let (Some(dp), Some(sp)) = (dst.parent(), src.parent()) {
                touched.insert(dp.to_path_buf(), sp.to_path_buf());
            }
        }
        let dirs: Vec<PathBuf> = self
            .delayed_dirs
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
        for d in dirs {
            let _ = fsops::rmdir(&d);
        }
        for (dst_dir, src_dir) in touched {
            if let Ok(m) = fsops::lstat(&src_dir) {
                self.touch_dir(&dst_dir, &m);
            }
        }
    }

    /// Re-applies a directory's metadata after late changes inside it (deletions after the
    /// transfer, delayed updates, several top-level items sharing the destination root).
    fn touch_dir(&self, dst: &Path, src_meta: &Meta) {
        if self.opts.dry_run {
            return;
        }
        let now = fsops::lstat(dst).ok();
        let w = meta::wanted(&self.opts, src_meta, now.as_ref(), self.am_root);
        if let Err(e) = meta::apply(dst, Kind::Dir, &w, now.as_ref()) {
            self.attr_error(dst, &e);
        }
    }
}

/// Removes a whole tree (used for backups of replaced directories).
fn remove_tree(p: &Path) -> io::Result<()> {
    fsops::remove_tree(p)
}

/// Whether a symlink target stays inside the transfer (for `--safe-links`).
fn unsafe_link(target: &[u8], rel: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return true;
    }
    let mut depth: i64 = rel.iter().filter(|b| **b == b'/').count() as i64;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// The walker: runs on one thread, hands file copies to the workers.
struct Walker<'a> {
    eng: &'a Arc<Engine>,
    jobs: Option<&'a crossbeam_channel::Sender<JobBatch>>,
    /// Entries dispatched but not yet handed to the workers.
    batch: std::cell::RefCell<PendingBatch>,
    /// The output position the walker's own lines currently go to.
    segment: std::cell::Cell<u64>,
    /// Non-regular files left out of the last listing, reported after its deletions.
    skipped: std::cell::RefCell<Vec<Vec<u8>>>,
    /// The output slot that the skip and deletion lines of the current run of directory
    /// listings go to (see [`Walker::bursts_on`]).
    burst: std::cell::RefCell<Option<Burst>>,
    /// The next listing read is a top-level directory's (rsync's first file list).
    top_listing: std::cell::Cell<bool>,
    /// The walk position of the directory being walked (see [`prefetch`]): the top-level
    /// item's number, then the index of each directory among its parent's subdirectories.
    pos: std::cell::RefCell<WalkPos>,
}

/// Skip and deletion lines of a run of directory listings, printed ahead of the entries'
/// own lines (see [`Walker::bursts_on`]).
struct Burst {
    /// Output position, taken before the first listing's directory line.
    seq: u64,
    lines: Vec<Vec<u8>>,
    /// Entries in the run's listings so far.
    entries: usize,
}

/// A run of listings ends once it holds this many entries (rsync's sender sends file lists
/// ahead until 1,000 files are outstanding: `MIN_FILECNT_LOOKAHEAD`).
const BURST_ENTRIES: usize = 1000;

/// The batch the walker is filling (see [`Walker::dispatch`]).
#[derive(Default)]
struct PendingBatch {
    jobs: Vec<EntryJob>,
    /// Total size of the entries' data.
    bytes: u64,
    /// The batch's output position.
    seq: u64,
}

/// A source directory's entries, filtered and sorted (non-directories, then directories,
/// each by name).
type Entries = fsops::Listing;

/// True if the sorted listing has `name`.
fn listing_has(entries: &Entries, name: &[u8]) -> bool {
    entries.contains_sorted(name)
}

impl Walker<'_> {
    fn opts(&self) -> &Options {
        &self.eng.opts
    }

    fn top_item(&self, item: &TopItem, dest: &Path, root: &Arc<DirNode>) {
        if item.display != b"."
            && !self.eng.filter.is_empty()
            && self
                .eng
                .filter
                .excluded(&item.display, item.meta.kind() == Kind::Dir)
        {
            return;
        }
        let dst = plan::join(dest, &item.rel);
        if self.opts().no_implied_dirs && item.rel.contains(&b'/') && !self.opts().dry_run {
            // Missing path components get default attributes, as in rsync.
            if let Some(parent) = dst.parent() {
                if let Err(e) = fsops::mkdir_all(parent) {
                    self.eng.io_fail("[receiver] mkdir", parent, &e);
                    return;
                }
            }
        }
        if self.opts().one_file_system > 0 {
            if let Ok(mut d) = self.eng.root_dev.lock() {
                *d = Some(item.meta.dev);
            }
        }
        if item.meta.kind() == Kind::Dir {
            let recurse_contents = if item.implied {
                false
            } else if item.contents {
                if !self.opts().recursive && !self.opts().dirs {
                    self.eng.out.line(
                        format!(
                            "skipping directory {}",
                            String::from_utf8_lossy(&item.display)
                        )
                        .as_bytes(),
                    );
                    return;
                }
                true
            } else if self.opts().recursive {
                true
            } else if self.opts().dirs {
                false
            } else {
                self.eng.out.line(
                    format!(
                        "skipping directory {}",
                        String::from_utf8_lossy(&item.display)
                    )
                    .as_bytes(),
                );
                return;
            };
            // rsync's first file list holds a top-level directory and its contents.
            self.top_listing.set(true);
            {
                let mut pos = self.pos.borrow_mut();
                let n = pos.first().map_or(0, |n| n + 1);
                *pos = vec![n];
            }
            self.handle_dir(
                &item.src,
                &dst,
                &item.display,
                &item.meta,
                root,
                recurse_contents,
            );
            self.top_listing.set(false);
        } else {
            let paths = JobPaths::new(&item.src, &dst, &item.display);
            self.handle_nondir(paths, &item.meta, root);
        }
    }

    /// Lists, stats, filters and sorts a source directory.
    fn read_source_dir(
        &self,
        src: &Path,
        rel: &[u8],
        pre: Option<io::Result<fsops::Listing>>,
    ) -> Option<Entries> {
        let listing = match pre {
            Some(l) => l,
            None => fsops::list_with_stats(src, self.opts().atimes),
        };
        let listing = match listing {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.eng.vanished_file(src);
                return None;
            }
            Err(e) => {
                self.eng.io_error.store(true, Ordering::Relaxed);
                self.eng.io_fail("[sender] opendir", src, &e);
                return None;
            }
        };
        for (name, e) in &listing.failed {
            let path = src.join(name);
            if e.kind() == io::ErrorKind::NotFound {
                self.eng.vanished_file(&path);
            } else {
                self.eng.io_error.store(true, Ordering::Relaxed);
                self.eng.io_fail("[sender] readlink_stat", &path, e);
            }
        }
        let mut entries = listing;
        entries.failed = Vec::new();
        // Filtered in place: a huge directory is held once, not twice.
        // The entry's path and display name are built only where they are needed (most
        // entries of most transfers need neither).
        entries.retain(|name, entry_meta| {
            let child_rel = || Engine::child_rel(rel, name.as_bytes());
            if entry_meta.kind() == Kind::Symlink {
                match self.resolve_link(&src.join(name), &child_rel(), *entry_meta) {
                    Some(m) => *entry_meta = m,
                    None => return false,
                }
            }
            let meta = *entry_meta;
            if self.is_internal(name.as_bytes()) {
                return false;
            }
            if !self.eng.filter.is_empty()
                && self
                    .eng
                    .filter
                    .excluded(&child_rel(), meta.kind() == Kind::Dir)
            {
                return false;
            }
            let o = self.opts();
            let unwanted = match meta.kind() {
                Kind::Symlink => !o.links,
                Kind::CharDev | Kind::BlockDev => !o.devices,
                Kind::Fifo | Kind::Socket => !o.specials,
                _ => false,
            };
            if unwanted && !o.list_only {
                self.skipped.borrow_mut().push(child_rel());
                return false;
            }
            !(o.prune_empty_dirs
                && o.recursive
                && meta.kind() == Kind::Dir
                && !self.has_content(&src.join(name), &child_rel(), 0))
        });
        entries.sort();
        // The skip messages are in listing order in rsync.
        self.skipped.borrow_mut().sort();
        Some(entries)
    }

    /// `-m`: true if the subtree holds at least one non-directory that would be transferred.
    fn has_content(&self, dir: &Path, rel: &[u8], depth: usize) -> bool {
        let o = self.opts();
        let Ok(names) = fsops::read_dir_names(dir) else {
            // Unreadable: keep it, the walk reports the error.
            return true;
        };
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let child_rel = Engine::child_rel(rel, name.as_bytes());
            let Ok(m) = fsops::lstat(&path) else { continue };
            let is_dir = m.kind() == Kind::Dir;
            if self.is_internal(name.as_bytes())
                || (!self.eng.filter.is_empty() && self.eng.filter.excluded(&child_rel, is_dir))
            {
                continue;
            }
            let wanted = match m.kind() {
                Kind::Dir => {
                    subdirs.push((path, child_rel));
                    false
                }
                Kind::Symlink => o.links || o.copy_links,
                Kind::CharDev | Kind::BlockDev => o.devices,
                Kind::Fifo | Kind::Socket => o.specials,
                Kind::File => {
                    !(o.max_size.is_some_and(|x| m.size > x)
                        || o.min_size.is_some_and(|x| m.size < x))
                }
            };
            if wanted {
                return true;
            }
        }
        depth < 4096
            && subdirs
                .iter()
                .any(|(p, r)| self.has_content(p, r, depth + 1))
    }

    /// Names the engine itself uses inside destination directories.
    fn is_internal(&self, name: &[u8]) -> bool {
        (self.opts().delay_updates && name == DELAY_DIR.as_bytes())
            || self
                .opts()
                .partial_dir
                .as_ref()
                .is_some_and(|p| p.is_relative() && p.as_os_str().as_bytes() == name)
    }

    /// Applies `-L`, `--copy-unsafe-links`, `-k` to a symlink's metadata.
    fn resolve_link(&self, path: &Path, rel: &[u8], meta: Meta) -> Option<Meta> {
        if meta.kind() != Kind::Symlink {
            return Some(meta);
        }
        let o = self.opts();
        let follow = if o.copy_links {
            true
        } else if o.copy_unsafe_links {
            fsops::read_link(path).is_ok_and(|t| unsafe_link(t.as_bytes(), rel))
        } else {
            false
        };
        if follow {
            return match fsops::stat(path) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.eng
                        .error(format!("symlink has no referent: \"{}\"", display(path)));
                    None
                }
            };
        }
        if o.copy_dirlinks {
            if let Ok(m) = fsops::stat(path) {
                if m.kind() == Kind::Dir {
                    return Some(m);
                }
            }
        }
        Some(meta)
    }

    /// Handles the (already listed, filtered and sorted) entries of one directory:
    /// non-directories first, then each subdirectory followed by its contents.
    fn process_entries(
        &self,
        src: &Path,
        dst: &Path,
        rel: &[u8],
        node: &Arc<DirNode>,
        recurse: bool,
        entries: &Entries,
    ) {
        // The subdirectories the listers read ahead: a window of the next ones, asked for
        // before this directory's files go out and moved on as the walk enters each.
        let mut ahead = entries
            .iter()
            .filter(|e| e.meta.kind() == Kind::Dir)
            .enumerate();
        let window = self.eng.prefetch.window();
        if recurse {
            self.request_ahead(src, &mut ahead, window);
        }
        for e in entries.iter() {
            if self.eng.stopped() {
                return;
            }
            if e.meta.kind() == Kind::Dir {
                continue;
            }
            let paths = JobPaths::child(src, dst, rel, e.name.as_bytes());
            // Regular files go to the workers (hard-link leaders stay here: their followers
            // are linked to them as soon as they are met).
            let parallel =
                e.meta.kind() == Kind::File && !(self.opts().hard_links && e.meta.nlink > 1);
            match self.jobs {
                Some(tx) if parallel => self.dispatch(tx, paths, e.meta, node),
                _ => self.handle_nondir(paths, &e.meta, node),
            }
        }
        self.send_batch();
        let dirs = entries.iter().filter(|e| e.meta.kind() == Kind::Dir);
        for (i, e) in dirs.enumerate() {
            if self.eng.stopped() {
                return;
            }
            if recurse {
                self.request_ahead(src, &mut ahead, 1);
            }
            let child_rel = Engine::child_rel(rel, e.name.as_bytes());
            self.pos.borrow_mut().push(i as u32);
            self.handle_dir(
                &src.join(e.name),
                &dst.join(e.name),
                &child_rel,
                &e.meta,
                node,
                recurse,
            );
            self.pos.borrow_mut().pop();
        }
    }

    /// Asks the listers for the next `n` subdirectories of `src` (numbered by their place
    /// among its subdirectories).
    fn request_ahead<'e>(
        &self,
        src: &Path,
        ahead: &mut impl Iterator<Item = (usize, fsops::DirEntry<'e>)>,
        n: usize,
    ) {
        for (i, e) in ahead.by_ref().take(n) {
            let mut pos = self.pos.borrow().clone();
            pos.push(i as u32);
            self.eng.prefetch.request(pos, src.join(e.name));
        }
    }

    fn count_seen(&self, meta: &Meta, src: &Path) {
        let size = if meta.kind() == Kind::Symlink {
            fsops::read_link(src).map(|t| t.len() as u64).unwrap_or(0)
        } else if meta.kind() == Kind::File {
            meta.size
        } else {
            0
        };
        self.eng.stats.seen(meta.kind(), size);
    }

    fn list_only(&self, src: &Path, rel: &[u8], meta: &Meta) {
        let link = if meta.kind() == Kind::Symlink && self.opts().links {
            fsops::read_link(src).ok()
        } else {
            None
        };
        // Names and link targets are escaped as in every other output line (`\#ooo`).
        let link = link.map(|l| report::escape_name(l.as_bytes()));
        let line = report::list_line(
            meta,
            &report::escape_name(rel),
            link.as_deref(),
            self.opts().human_readable,
        );
        self.eng.out.line(&line);
    }

    fn handle_dir(
        &self,
        src: &Path,
        dst: &Path,
        rel: &[u8],
        meta: &Meta,
        parent: &Arc<DirNode>,
        recurse: bool,
    ) {
        let eng = self.eng;
        let o = self.opts();
        // A listing read ahead for this directory is taken now, whether used or not.
        let mut pre = eng.prefetch.take(src, &self.pos.borrow());
        let mut recurse_children = recurse;
        if o.one_file_system > 0 {
            let root = eng.root_dev.lock().ok().and_then(|d| *d);
            if root.is_some_and(|d| d != meta.dev) {
                if o.one_file_system > 1 {
                    return;
                }
                recurse_children = false;
            }
        }
        // A later `dir/` source into the same root adds its contents only.
        let repeat = rel == b"." && eng.root_seen.swap(true, Ordering::AcqRel);
        if !repeat {
            self.count_seen(meta, src);
        }
        if o.list_only {
            if !repeat {
                self.list_only(src, rel, meta);
            }
            if recurse_children {
                self.enter_filters(src, rel);
                if let Some(entries) = self.read_source_dir(src, rel, pre.take()) {
                    self.flush_skipped();
                    self.process_entries(src, dst, rel, parent, o.recursive, &entries);
                }
                eng.filter.leave_dir();
            }
            return;
        }
        let mut existing = if parent.virtual_new {
            None
        } else {
            fsops::lstat(dst).ok()
        };
        let fresh_root = rel == b"." && eng.fresh_dest.load(Ordering::Relaxed);
        if fresh_root {
            existing = None;
        }
        if o.keep_dirlinks && existing.is_some_and(|m| m.kind() == Kind::Symlink) {
            if let Ok(m) = fsops::stat(dst) {
                if m.kind() == Kind::Dir {
                    existing = Some(m);
                }
            }
        }
        let had_entry = existing.is_some();
        if let Some(d) = existing {
            if d.kind() != Kind::Dir && o.ignore_existing {
                // rsync keeps the existing non-directory and still visits the contents,
                // which then fail (ENOTDIR).
                if let Some(entries) = self.read_source_dir(src, rel, pre.take()) {
                    self.flush_skipped();
                    let node = Arc::new(DirNode {
                        dst: dst.to_path_buf(),
                        apply: None,
                        pending: AtomicUsize::new(1),
                        parent: None,
                        virtual_new: false,
                    });
                    self.process_entries(src, dst, rel, &node, o.recursive, &entries);
                }
                // rsync still stamps the directory's time on the kept entry.
                if o.times && !o.omit_dir_times && !o.dry_run {
                    let _ = fsops::set_times(dst, None, Some(meta.mtime));
                }
                return;
            }
            if d.kind() != Kind::Dir {
                if !self.make_way(dst, rel, &d, Kind::Dir) {
                    return;
                }
                existing = None;
            }
        }
        let is_new = existing.is_none();
        if !had_entry && o.existing {
            return;
        }
        let mut item = Itemize::new(if is_new { b'c' } else { b'.' }, Kind::Dir);
        let basis = if is_new { self.alt_dir(rel) } else { None };
        if let Some(b) = &basis {
            // Reported against the basis directory, as rsync does.
            let w = meta::wanted(o, meta, Some(b), eng.am_root);
            let diff = self.diff(&w, b);
            item.update = b'c';
            item.perms = diff.perms;
            item.owner = diff.owner;
            item.group = diff.group;
            item.time = if diff.time { b't' } else { b'.' };
            if !item.any_change() {
                item.update = b'.';
            }
        }
        if is_new {
            item.new = basis.is_none();
            if !repeat {
                eng.stats.created(Kind::Dir);
            }
            if !o.dry_run {
                if let Err(e) = fsops::mkdir(dst, 0o700) {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        eng.io_fail("[receiver] mkdir", dst, &e);
                        return;
                    }
                }
            }
        } else if let Some(d) = &existing {
            let w = meta::wanted(o, meta, Some(d), eng.am_root);
            let diff = self.diff(&w, d);
            item.perms = diff.perms;
            item.owner = diff.owner;
            item.group = diff.group;
            item.time = if diff.time { b't' } else { b'.' };
        }
        if (o.xattrs || o.acls) && !(o.dry_run && is_new) && !repeat {
            match meta::sync_xattrs(src, dst, o.xattrs, o.acls, o.dry_run) {
                Ok((a, x)) => {
                    item.acl = a && !is_new;
                    item.xattr = x && !is_new;
                }
                Err(e) => eng.io_fail("copy xattrs to", dst, &e),
            }
        }
        if !o.dry_run && (is_new || item.owner || item.group) && !repeat {
            let w = meta::wanted(o, meta, existing.as_ref(), eng.am_root);
            if w.uid.is_some() || w.gid.is_some() {
                if let Err(e) = fsops::lchown(dst, w.uid, w.gid) {
                    eng.attr_error(dst, &e);
                }
            }
        }
        // rsync lists a directory and deletes its extraneous entries before it reports the
        // directory itself.
        let entries = if recurse_children {
            self.enter_filters(src, rel);
            let e = self.read_source_dir(src, rel, pre.take());
            if e.is_none() {
                eng.filter.leave_dir();
            }
            e
        } else {
            None
        };
        // rsync's first file list (the top-level directories' contents) reports its skips
        // before the directory's line; later listings report theirs in runs (`bursts_on`).
        let top_list = self.top_listing.replace(false);
        let in_burst = entries.is_some() && !top_list && self.bursts_on();
        let saved = in_burst.then(|| {
            self.open_burst();
            let saved = report::end_capture();
            report::begin_capture();
            saved
        });
        if let Some(entries) = &entries {
            if !is_new && o.delete == DeleteMode::During {
                // rsync's sender reads ahead: an unreadable subdirectory is an I/O error
                // before this directory's deletions happen.
                for e in entries.iter().filter(|e| e.meta.kind() == Kind::Dir) {
                    if o.recursive && !fsops::can_list(&src.join(e.name)) {
                        eng.io_error.store(true, Ordering::Relaxed);
                    }
                }
                self.delete_extraneous(dst, rel, entries);
            }
        }
        let listed = entries.as_ref().map_or(0, |e| e.len()) + self.skipped.borrow().len();
        self.flush_skipped();
        if let Some(saved) = saved {
            let lines = report::end_capture();
            report::resume_capture(saved);
            self.add_to_burst(lines, listed);
        } else if top_list && o.hard_links && self.bursts_on() {
            // With -H rsync's generator holds the first list's lines back until the next
            // lists are read: the first run's skips come before this directory's line. The
            // first list counts towards the run, so a large one does not hold its lines back.
            self.open_burst();
            self.add_to_burst(Vec::new(), listed);
        }
        if !repeat {
            eng.emit(rel, Kind::Dir, item, None, meta);
        }
        if (rel == b"." && !repeat) || !recurse {
            if let Ok(mut l) = eng.late_dirs.lock() {
                l.push((dst.to_path_buf(), *meta));
            }
        }
        parent.pending.fetch_add(1, Ordering::AcqRel);
        let node = Arc::new(DirNode {
            dst: dst.to_path_buf(),
            apply: (!repeat).then_some((*meta, existing)),
            pending: AtomicUsize::new(1),
            parent: Some(Arc::clone(parent)),
            // Created just now (or, in a dry run, not really there): nothing below it exists,
            // so its entries need no destination lookups.
            virtual_new: is_new || (o.dry_run && parent.virtual_new),
        });
        if let Some(entries) = entries {
            self.process_entries(src, dst, rel, &node, o.recursive, &entries);
            eng.filter.leave_dir();
        }
        eng.release(&node);
    }

    fn diff(&self, w: &Wanted, d: &Meta) -> meta::AttrDiff {
        let mut diff = meta::diff(w, d);
        if let Some(t) = w.mtime {
            diff.time = !self.eng.same_time(t, d.mtime);
        }
        diff
    }

    /// Removes a destination entry of the wrong type (`new` is the type coming). Returns false
    /// if it could not, with rsync's messages.
    fn make_way(&self, dst: &Path, rel: &[u8], d: &Meta, new: Kind) -> bool {
        let eng = self.eng;
        let desc = match new {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::CharDev | Kind::BlockDev => "device file",
            Kind::Fifo | Kind::Socket => "special file",
        };
        let failed = || {
            eng.error(format!(
                "could not make way for new {desc}: {}",
                String::from_utf8_lossy(&report::escape_name(rel))
            ));
            false
        };
        if d.kind() == Kind::Dir {
            let empty = fsops::dir_is_empty(dst).unwrap_or(false);
            if !empty && !eng.opts.deleting() && !eng.opts.force {
                // rsync's informational line (stdout), then its error.
                self.not_empty(rel);
                return failed();
            }
            // What the directory holds is deleted (shown, counted, limited by --max-delete)
            // like any extraneous entry; the directory itself silently.
            if !self.delete_path(dst, rel, d, Del::MakeWay)
                || (!eng.opts.dry_run && fsops::lstat(dst).is_ok())
            {
                return failed();
            }
            return true;
        }
        if eng.opts.dry_run {
            return true;
        }
        if eng.opts.backup {
            if let Err(e) = eng.make_backup(dst, rel, false) {
                eng.io_fail("backup", dst, &e);
                return failed();
            }
            return true;
        }
        match fsops::unlink(dst) {
            Ok(()) => true,
            Err(e) => {
                eng.io_fail("unlink", dst, &e);
                failed()
            }
        }
    }

    /// rsync's line for a directory left in place because something in it stays.
    fn not_empty(&self, rel: &[u8]) {
        let mut info = b"cannot delete non-empty directory: ".to_vec();
        info.extend_from_slice(&report::escape_name(rel));
        self.eng.out.line(&info);
    }

    fn handle_nondir(&self, paths: JobPaths, meta: &Meta, dir: &Arc<DirNode>) {
        self.handle_nondir_with(paths, meta, dir, None);
    }

    /// [`Walker::handle_nondir`] with the destination's `lstat` possibly done already (`pre`:
    /// the entry's metadata, `None` when it does not exist).
    fn handle_nondir_with(
        &self,
        paths: JobPaths,
        meta: &Meta,
        dir: &Arc<DirNode>,
        pre: Option<io::Result<Option<Meta>>>,
    ) {
        let (src, dst, rel) = (paths.src(), paths.dst(), paths.rel());
        let eng = self.eng;
        let o = self.opts();
        let kind = meta.kind();
        if o.list_only {
            self.count_seen(meta, src);
            self.list_only(src, rel, meta);
            return;
        }
        match kind {
            Kind::Symlink if !o.links => return self.skip_nonregular(rel),
            Kind::CharDev | Kind::BlockDev if !o.devices => return self.skip_nonregular(rel),
            Kind::Fifo | Kind::Socket if !o.specials => return self.skip_nonregular(rel),
            _ => {}
        }
        if kind == Kind::File
            && (o.max_size.is_some_and(|m| meta.size > m)
                || o.min_size.is_some_and(|m| meta.size < m))
        {
            return;
        }
        // A later `dir/` source into the same root adds its contents only.
        let repeat = rel == b"." && eng.root_seen.swap(true, Ordering::AcqRel);
        if !repeat {
            self.count_seen(meta, src);
        }
        if o.list_only {
            if !repeat {
                self.list_only(src, rel, meta);
            }
            return;
        }
        // Tested before the lstat (a match guard would run only after it).
        let existing = if dir.virtual_new {
            None
        } else {
            let looked = pre.unwrap_or_else(|| match fsops::lstat(dst) {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            });
            match looked {
                Ok(m) => m,
                Err(e) => {
                    eng.io_fail("[receiver] stat", dst, &e);
                    return;
                }
            }
        };
        if existing.is_none() && o.existing {
            return;
        }
        if existing.is_some() && o.ignore_existing {
            return;
        }
        if o.hard_links && kind != Kind::Dir && meta.nlink > 1 {
            let key = (meta.dev, meta.ino);
            let Ok(mut map) = eng.hlinks.lock() else {
                return;
            };
            let group = map.entry(key).or_default();
            if let Some((leader_dst, leader_rel)) = group.leader.clone() {
                drop(map);
                self.link_follower(dst, rel, meta, existing.as_ref(), &leader_dst, &leader_rel);
                return;
            }
            if group.members.is_empty() && existing.is_some() {
                // Updating an existing copy: like rsync, the first link met is the one
                // transferred and the others are linked to it as they come.
                group.leader = Some((dst.to_path_buf(), rel.to_vec()));
                drop(map);
                self.handle_kind(paths, meta, existing, dir);
                return;
            }
            dir.pending.fetch_add(1, Ordering::AcqRel);
            group.members.push(LinkMember {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
                rel: rel.to_vec(),
                meta: *meta,
                dir: Arc::clone(dir),
                order: eng.link_order.fetch_add(1, Ordering::Relaxed),
            });
            if group.members.len() < meta.nlink as usize {
                return;
            }
            let members = std::mem::take(&mut group.members);
            drop(map);
            self.finish_link_group(key, members);
            return;
        }
        self.handle_kind(paths, meta, existing, dir);
    }

    /// Transfers the last-met link of a group and links the others to it (reported in
    /// reverse order, as rsync does).
    fn finish_link_group(&self, key: (u64, u64), members: Vec<LinkMember>) {
        let eng = self.eng;
        let Some(leader) = members.last() else {
            return;
        };
        if !eng.stopped() {
            let existing = fsops::lstat(&leader.dst).ok();
            let paths = JobPaths::new(&leader.src, &leader.dst, &leader.rel);
            self.handle_kind(paths, &leader.meta, existing, &leader.dir);
            if let Ok(mut map) = eng.hlinks.lock() {
                map.entry(key).or_default().leader = Some((leader.dst.clone(), leader.rel.clone()));
            }
        }
        eng.release(&leader.dir);
        // rsync links the others at the end of the run (last met first); their directories
        // stay open until then.
        let mut followers = members;
        let leader = followers.pop();
        followers.reverse();
        if let (Some(l), Ok(mut d)) = (leader, eng.deferred_links.lock()) {
            d.push(((l.dst, l.rel), followers));
        }
    }

    /// Links the followers of the groups finished during the walk.
    fn link_deferred(&self) {
        let groups = self
            .eng
            .deferred_links
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for ((leader_dst, leader_rel), followers) in groups {
            for m in followers {
                if !self.eng.stopped() {
                    let existing = fsops::lstat(&m.dst).ok();
                    self.link_follower(
                        &m.dst,
                        &m.rel,
                        &m.meta,
                        existing.as_ref(),
                        &leader_dst,
                        &leader_rel,
                    );
                }
                self.eng.release(&m.dir);
            }
        }
    }

    /// Groups whose other links were never met (outside the transfer): finished at the end,
    /// in the order their last member was met.
    fn finish_open_link_groups(&self) {
        let mut open: Vec<((u64, u64), Vec<LinkMember>)> = match self.eng.hlinks.lock() {
            Ok(mut map) => map
                .iter_mut()
                .filter(|(_, g)| !g.members.is_empty())
                .map(|(k, g)| (*k, std::mem::take(&mut g.members)))
                .collect(),
            Err(_) => return,
        };
        open.sort_by_key(|(_, m)| m.last().map_or(0, |x| x.order));
        for (key, members) in open {
            self.finish_link_group(key, members);
        }
    }

    /// Per-directory filter files of `src` start to apply (until `leave_dir`).
    fn enter_filters(&self, src: &Path, rel: &[u8]) {
        if let Err(e) = self.eng.filter.enter_dir(src, rel) {
            self.eng.error(format!("arsync: {e}"));
        }
    }

    /// Hands one entry to the workers. Entries are queued in batches (fewer hand-offs between
    /// threads); [`Walker::send_batch`] sends a partial batch. A batch takes one output
    /// position, between the walker's lines before its first entry and those after: if the
    /// walker printed anything since the batch began, the batch is sent first.
    fn dispatch(
        &self,
        tx: &crossbeam_channel::Sender<JobBatch>,
        paths: JobPaths,
        meta: Meta,
        dir: &Arc<DirNode>,
    ) {
        let eng = self.eng;
        let lines = report::end_capture();
        if !lines.is_empty() {
            self.send_batch_to(tx);
        }
        if self.batch.borrow().jobs.is_empty() {
            eng.seq.complete(&eng.out, self.segment.get(), lines);
            let mut b = self.batch.borrow_mut();
            b.seq = eng.seq.alloc();
            b.jobs.reserve(JOB_BATCH);
            self.segment.set(eng.seq.alloc());
        }
        report::begin_capture();
        dir.pending.fetch_add(1, Ordering::AcqRel);
        let size = meta.size;
        let job = EntryJob {
            paths,
            meta,
            dir: Arc::clone(dir),
        };
        let full = {
            let mut b = self.batch.borrow_mut();
            b.jobs.push(job);
            b.bytes += size;
            b.jobs.len() >= JOB_BATCH || b.bytes >= JOB_BATCH_BYTES
        };
        if full {
            self.send_batch_to(tx);
        }
    }

    /// Sends the entries queued by [`Walker::dispatch`] to the workers.
    fn send_batch(&self) {
        if let Some(tx) = self.jobs {
            self.send_batch_to(tx);
        }
    }

    fn send_batch_to(&self, tx: &crossbeam_channel::Sender<JobBatch>) {
        let pending = std::mem::take(&mut *self.batch.borrow_mut());
        if pending.jobs.is_empty() {
            return;
        }
        let batch = JobBatch {
            seq: pending.seq,
            jobs: pending.jobs,
        };
        if let Err(crossbeam_channel::SendError(batch)) = tx.send(batch) {
            // No worker left (cannot happen while the walker holds the sender): do it here.
            let eng = self.eng;
            let lines = report::end_capture();
            eng.run_entries(batch);
            report::begin_capture();
            for l in lines {
                eng.out.line(&l);
            }
        }
    }

    /// Whether skip and deletion lines are printed in runs ahead of the entries' lines, as
    /// rsync's incremental recursion prints them. rsync's sender sends the file lists of the
    /// next directories (depth first) until they hold 1,000 entries; its generator goes
    /// through them, and its messages ("skipping non-regular file", "deleting") overtake the
    /// entries' lines, which wait in its output buffer until it has to wait for more lists.
    /// So each run of listings prints all its skip and deletion lines (listing by listing),
    /// then its entries' lines. Only where such lines can happen, and only with incremental
    /// recursion (rsync turns it off for `-m`, `--delete-before/after` and
    /// `--delay-updates`; their messages' places depend on its buffer sizes).
    fn bursts_on(&self) -> bool {
        let o = self.opts();
        let skips = !(o.links && o.devices && o.specials);
        o.recursive
            && !o.list_only
            && !o.prune_empty_dirs
            && !o.delay_updates
            && !matches!(o.delete, DeleteMode::Before | DeleteMode::After)
            && (skips || o.delete == DeleteMode::During)
    }

    /// Takes an output position for a run of listings' skip and deletion lines, before
    /// anything the walker prints from here on (unless a run is open already).
    fn open_burst(&self) {
        if self.burst.borrow().is_some() {
            return;
        }
        let eng = self.eng;
        let lines = report::end_capture();
        // Entries queued so far come before the run's lines.
        self.send_batch();
        eng.seq.complete(&eng.out, self.segment.get(), lines);
        let seq = eng.seq.alloc();
        self.segment.set(eng.seq.alloc());
        report::begin_capture();
        *self.burst.borrow_mut() = Some(Burst {
            seq,
            lines: Vec::new(),
            entries: 0,
        });
    }

    /// Adds one listing's skip and deletion lines and its entry count to the open run, and
    /// ends the run once it holds [`BURST_ENTRIES`].
    fn add_to_burst(&self, lines: Vec<Vec<u8>>, entries: usize) {
        let full = match self.burst.borrow_mut().as_mut() {
            Some(b) => {
                b.lines.extend(lines);
                b.entries += entries;
                b.entries >= BURST_ENTRIES
            }
            None => false,
        };
        if full {
            self.close_burst();
        }
    }

    /// Ends the open run of listings: its lines print in their turn.
    fn close_burst(&self) {
        let done = self.burst.borrow_mut().take();
        if let Some(b) = done {
            self.eng.seq.complete(&self.eng.out, b.seq, b.lines);
        }
    }

    /// Prints the skip messages of the last listing.
    fn flush_skipped(&self) {
        let list = std::mem::take(&mut *self.skipped.borrow_mut());
        for rel in list {
            self.skip_nonregular(&rel);
        }
    }

    /// rsync reports skipped non-regular files by default (its NONREG info level).
    fn skip_nonregular(&self, rel: &[u8]) {
        let mut line = b"skipping non-regular file \"".to_vec();
        line.extend_from_slice(&report::escape_name(rel));
        line.push(b'"');
        self.eng.out.line(&line);
    }

    fn link_follower(
        &self,
        dst: &Path,
        rel: &[u8],
        meta: &Meta,
        existing: Option<&Meta>,
        leader_dst: &Path,
        leader_rel: &[u8],
    ) {
        let eng = self.eng;
        let leader_meta = fsops::lstat(leader_dst).ok();
        if let (Some(e), Some(l)) = (existing, leader_meta) {
            if e.dev == l.dev && e.ino == l.ino {
                eng.emit(
                    rel,
                    meta.kind(),
                    Itemize::new(b'.', meta.kind()),
                    None,
                    meta,
                );
                return;
            }
        }
        let mut item = Itemize::new(b'h', meta.kind());
        item.new = existing.is_none();
        if item.new {
            eng.stats.created(meta.kind());
        }
        if let Some(e) = existing {
            item.size = e.size != meta.size;
            let w = meta::wanted(&eng.opts, meta, Some(e), eng.am_root);
            let diff = self.diff(&w, e);
            item.time = if diff.time { b't' } else { b'.' };
            item.perms = diff.perms;
            item.owner = diff.owner;
            item.group = diff.group;
        }
        eng.emit(rel, meta.kind(), item, Some(("=>", leader_rel)), meta);
        if eng.opts.dry_run {
            return;
        }
        if let Some(e) = existing {
            if e.kind() == Kind::Dir && !self.make_way(dst, rel, e, Kind::File) {
                return;
            }
        }
        // A directory made way above is gone, so only a non-directory is backed up.
        let back_up = existing.is_some_and(|e| e.kind() != Kind::Dir);
        self.replace_via_temp(dst, rel, back_up, "hard link", |tmp| {
            fsops::hard_link(leader_dst, tmp)
        });
    }

    fn handle_kind(
        &self,
        paths: JobPaths,
        meta: &Meta,
        mut existing: Option<Meta>,
        dir: &Arc<DirNode>,
    ) {
        let (src, dst, rel) = (paths.src(), paths.dst(), paths.rel());
        let kind = meta.kind();
        // rsync looks in the basis directories only for an entry the destination lacks, not
        // for one that replaces an entry of another type.
        let had_entry = existing.is_some();
        if let Some(d) = existing {
            if d.kind() != kind && !(kind == Kind::File && d.kind() == Kind::File) {
                if !self.make_way(dst, rel, &d, kind) {
                    return;
                }
                existing = None;
            }
        }
        if kind == Kind::File {
            return self.handle_file(paths, meta, existing, dir);
        }
        let mut quiet = false;
        if !had_entry {
            match self.try_alternates(src, dst, rel, meta) {
                Alt::Handled => return,
                Alt::CreateQuietly => quiet = true,
                Alt::None => {}
            }
        }
        let act = || match kind {
            Kind::Symlink => self.handle_symlink(src, dst, rel, meta, existing, !had_entry),
            _ => self.handle_node(dst, rel, meta, existing),
        };
        if quiet {
            self.silently(act);
        } else {
            act();
        }
        if fsops::lstat(dst).is_ok_and(|d| d.kind() == kind) {
            self.eng.remove_source(src, rel, meta);
        }
    }

    /// A regular file: the quick check, the itemized line, then the transfer (queued for
    /// the worker's batch copy where it can be).
    fn handle_file(
        &self,
        paths: JobPaths,
        meta: &Meta,
        existing: Option<Meta>,
        dir: &Arc<DirNode>,
    ) {
        let (src, dst, rel) = (paths.src(), paths.dst(), paths.rel());
        let eng = self.eng;
        let o = self.opts();
        if let Some(d) = &existing {
            if o.update && d.mtime > meta.mtime {
                return;
            }
            // rsync looks in --link-dest / --compare-dest before its quick check.
            if self.exact_alternate_for_existing(src, dst, rel, meta, d) {
                return;
            }
            if self.unchanged(src, dst, meta, d) {
                self.update_attrs(src, dst, rel, meta, d);
                eng.remove_source(src, rel, meta);
                return;
            }
            if o.append && d.kind() == Kind::File && d.size >= meta.size {
                // --append never touches a changed file that is not shorter.
                return;
            }
        } else if self.try_alternates(src, dst, rel, meta) != Alt::None {
            return;
        }
        let mut item = Itemize::new(b'>', Kind::File);
        if existing.is_none() {
            eng.stats.created(Kind::File);
        }
        // A missing file with a same-named file in a basis directory is reported against it.
        let basis = match existing {
            None => self
                .basis_entry(rel)
                .filter(|(_, m)| m.kind() == Kind::File),
            Some(_) => None,
        };
        let compare_to = existing.or(basis.as_ref().map(|(_, m)| *m));
        let compare_path = basis.as_ref().map_or(dst, |(p, _)| p.as_path());
        match &compare_to {
            None => {
                item.new = true;
            }
            Some(d) => {
                let dst = compare_path;
                let w = meta::wanted(o, meta, Some(d), eng.am_root);
                let diff = self.diff(&w, d);
                item.checksum = o.checksum;
                item.size = d.size != meta.size;
                item.time = if !o.times {
                    b'T'
                } else if diff.time {
                    b't'
                } else {
                    b'.'
                };
                item.perms = diff.perms;
                item.owner = diff.owner;
                item.group = diff.group;
                if o.xattrs || o.acls {
                    if let Ok((a, x)) = meta::sync_xattrs(src, dst, o.xattrs, o.acls, true) {
                        item.acl = a;
                        item.xattr = x;
                    }
                }
            }
        }
        eng.emit(rel, Kind::File, item, None, meta);
        if let Some(d) = existing.filter(|d| o.append_verify && d.size < meta.size) {
            if !fsops::same_prefix(src, dst, d.size).unwrap_or(false) {
                // rsync's verification fails and the file is sent again in its redo phase,
                // reported at the end of the run.
                let mut redo = Itemize::new(b'>', Kind::File);
                redo.time = if o.times && !self.eng.same_time(meta.mtime, d.mtime) {
                    b't'
                } else {
                    b'.'
                };
                if let Some(fmt) = &eng.line_format {
                    let info = LineInfo {
                        name: rel,
                        kind: Kind::File,
                        item: Some(redo),
                        link: None,
                        length: meta.size,
                        bytes: 0,
                        meta: Some(meta),
                        operation: "send",
                    };
                    let line = report::format_line(fmt, &info, o.human_readable);
                    if let Ok(mut r) = eng.redo_lines.lock() {
                        r.push(line);
                    }
                }
            }
        }
        if o.dry_run {
            eng.stats.transferred.fetch_add(1, Ordering::Relaxed);
            eng.stats
                .transferred_size
                .fetch_add(meta.size, Ordering::Relaxed);
            return;
        }
        dir.pending.fetch_add(1, Ordering::AcqRel);
        let job = FileJob {
            paths,
            meta: *meta,
            existing,
            dir: Arc::clone(dir),
        };
        // Workers run this for themselves (small files in batches, see `worker`); the walker
        // only for hard-link leaders.
        eng.queue_or_run(job);
    }

    /// The quick check (or `-c`, `--size-only`, `-I`).
    fn unchanged(&self, src: &Path, dst: &Path, s: &Meta, d: &Meta) -> bool {
        let o = self.opts();
        if d.kind() != Kind::File || o.ignore_times || s.size != d.size {
            return false;
        }
        if o.checksum {
            return fsops::same_contents(src, dst, s.size).unwrap_or(false);
        }
        o.size_only || self.eng.same_time(s.mtime, d.mtime)
    }

    /// True if the basis-directory entry `alt` holds the same thing as the source.
    fn alt_matches(&self, src: &Path, alt: &Path, meta: &Meta, am: &Meta) -> bool {
        match meta.kind() {
            Kind::File => self.unchanged(src, alt, meta, am),
            Kind::Symlink => {
                am.kind() == Kind::Symlink
                    && fsops::read_link(src).ok() == fsops::read_link(alt).ok()
            }
            Kind::Dir => false,
            k => am.kind() == k && (!k.is_device() || am.rdev == meta.rdev),
        }
    }

    /// `--compare-dest`, `--copy-dest`, `--link-dest` for a missing destination entry.
    /// Returns true when the entry was handled from a basis directory.
    fn try_alternates(&self, src: &Path, dst: &Path, rel: &[u8], meta: &Meta) -> Alt {
        let o = self.opts();
        let eng = self.eng;
        if o.compare_dest.is_empty() && o.copy_dest.is_empty() && o.link_dest.is_empty() {
            return Alt::None;
        }
        let Some(root) = eng.dest_root.lock().ok().map(|r| r.clone()) else {
            return Alt::None;
        };
        let kind = meta.kind();
        let lists: [(&Vec<PathBuf>, u8); 3] =
            [(&o.compare_dest, 0), (&o.copy_dest, 1), (&o.link_dest, 2)];
        for (dirs, which) in lists {
            for base in dirs.iter() {
                let base = if base.is_absolute() {
                    base.clone()
                } else {
                    root.join(base)
                };
                let alt = plan::join(&base, rel);
                let Ok(am) = fsops::lstat(&alt) else { continue };
                if !self.alt_matches(src, &alt, meta, &am) {
                    continue;
                }
                let w = meta::wanted(o, meta, None, eng.am_root);
                let diff = self.diff(&w, &am);
                let attrs_same = !diff.any();
                match (which, kind) {
                    (0, _) if attrs_same => {
                        if o.itemize > 1 {
                            eng.emit(rel, kind, Itemize::new(b'.', kind), None, meta);
                        }
                        return Alt::Handled;
                    }
                    (2, _) if attrs_same => {
                        if o.itemize > 1 {
                            eng.emit(rel, kind, Itemize::new(b'h', kind), None, meta);
                        }
                        if !o.dry_run {
                            if let Err(e) = fsops::hard_link(&alt, dst) {
                                eng.io_fail("link", dst, &e);
                            }
                        }
                        return Alt::Handled;
                    }
                    (_, Kind::File) => {
                        // A local copy from the basis (same bytes as the source), reported
                        // against the basis file as rsync does.
                        let mut it = Itemize::new(b'c', kind);
                        it.perms = diff.perms;
                        it.owner = diff.owner;
                        it.group = diff.group;
                        it.time = if diff.time { b't' } else { b'.' };
                        if it.any_change() || o.itemize > 1 {
                            eng.emit(rel, kind, it, None, meta);
                        }
                        eng.stats.created(kind);
                        if !o.dry_run {
                            if let Err(e) = eng.transfer(&alt, dst, rel, meta, None) {
                                eng.io_fail("copy", dst, &e);
                            } else if o.xattrs || o.acls {
                                let _ = meta::sync_xattrs(src, dst, o.xattrs, o.acls, false);
                            }
                        }
                        return Alt::Handled;
                    }
                    (1, _) => return Alt::CreateQuietly,
                    _ => {}
                }
            }
        }
        Alt::None
    }

    /// A destination file (`d`) that a `--link-dest` directory holds exactly (content and
    /// attributes) is replaced by a hard link to it, unless it is that file already; with
    /// `--compare-dest` it is removed (the basis stands for it). rsync does both, even for a
    /// destination file that is up to date; true when done.
    fn exact_alternate_for_existing(
        &self,
        src: &Path,
        dst: &Path,
        rel: &[u8],
        meta: &Meta,
        d: &Meta,
    ) -> bool {
        let o = self.opts();
        let eng = self.eng;
        let (dirs, link) = match (o.link_dest.is_empty(), o.compare_dest.is_empty()) {
            (false, _) => (&o.link_dest, true),
            (true, false) => (&o.compare_dest, false),
            (true, true) => return false,
        };
        let Some(root) = eng.dest_root.lock().ok().map(|r| r.clone()) else {
            return false;
        };
        for base in dirs {
            let alt = plan::join(
                &if base.is_absolute() {
                    base.clone()
                } else {
                    root.join(base)
                },
                rel,
            );
            let Ok(am) = fsops::lstat(&alt) else { continue };
            if am.kind() != Kind::File || !self.alt_matches(src, &alt, meta, &am) {
                continue;
            }
            if self
                .diff(&meta::wanted(o, meta, None, eng.am_root), &am)
                .any()
            {
                continue;
            }
            if link && am.dev == d.dev && am.ino == d.ino {
                return false;
            }
            if o.itemize > 1 {
                let mark = if link { b'h' } else { b'.' };
                eng.emit(rel, Kind::File, Itemize::new(mark, Kind::File), None, meta);
            }
            if o.dry_run {
                return true;
            }
            let done = fsops::unlink(dst).and_then(|()| match link {
                true => fsops::hard_link(&alt, dst),
                false => Ok(()),
            });
            if let Err(e) = done {
                eng.io_fail(if link { "link" } else { "unlink" }, dst, &e);
            }
            return true;
        }
        false
    }

    /// The first basis-directory entry named `rel`, whatever it holds.
    fn basis_entry(&self, rel: &[u8]) -> Option<(PathBuf, Meta)> {
        let o = self.opts();
        if o.compare_dest.is_empty() && o.copy_dest.is_empty() && o.link_dest.is_empty() {
            return None;
        }
        let root = self.eng.dest_root.lock().ok()?.clone();
        o.compare_dest
            .iter()
            .chain(&o.copy_dest)
            .chain(&o.link_dest)
            .find_map(|base| {
                let base = if base.is_absolute() {
                    base.clone()
                } else {
                    root.join(base)
                };
                let p = plan::join(&base, rel);
                fsops::lstat(&p).ok().map(|m| (p, m))
            })
    }

    /// The first basis directory (`--compare/copy/link-dest`) that has `rel` as a directory.
    fn alt_dir(&self, rel: &[u8]) -> Option<Meta> {
        let o = self.opts();
        let root = self.eng.dest_root.lock().ok()?.clone();
        o.compare_dest
            .iter()
            .chain(&o.copy_dest)
            .chain(&o.link_dest)
            .find_map(|base| {
                let base = if base.is_absolute() {
                    base.clone()
                } else {
                    root.join(base)
                };
                fsops::lstat(&plan::join(&base, rel))
                    .ok()
                    .filter(|m| m.kind() == Kind::Dir)
            })
    }

    /// Runs `f` with its output lines dropped (entries rsync creates without reporting).
    fn silently(&self, f: impl FnOnce()) {
        let saved = report::end_capture();
        report::begin_capture();
        f();
        report::end_capture();
        report::begin_capture();
        for l in saved {
            self.eng.out.line(&l);
        }
    }

    /// Brings an unchanged file's attributes up to date.
    fn update_attrs(&self, src: &Path, dst: &Path, rel: &[u8], meta: &Meta, d: &Meta) {
        let eng = self.eng;
        let o = self.opts();
        let w = meta::wanted(o, meta, Some(d), eng.am_root);
        let diff = self.diff(&w, d);
        let mut item = Itemize::new(b'.', meta.kind());
        item.perms = diff.perms;
        item.owner = diff.owner;
        item.group = diff.group;
        item.time = if diff.time { b't' } else { b'.' };
        if o.xattrs || o.acls {
            match meta::sync_xattrs(src, dst, o.xattrs, o.acls, o.dry_run) {
                Ok((a, x)) => {
                    item.acl = a;
                    item.xattr = x;
                }
                Err(e) => eng.io_fail("copy xattrs to", dst, &e),
            }
        }
        let link_target;
        let link = if meta.kind() == Kind::Symlink {
            link_target = fsops::read_link(src).unwrap_or_default();
            Some(("->", link_target.as_bytes()))
        } else {
            None
        };
        eng.emit(rel, meta.kind(), item, link, meta);
        if !o.dry_run && diff.any() {
            // Only the differing attributes are touched; equal-within-window times stay.
            let w2 = Wanted {
                perms: w.perms.filter(|_| diff.perms || diff.owner || diff.group),
                uid: w.uid.filter(|_| diff.owner),
                gid: w.gid.filter(|_| diff.group),
                mtime: w.mtime.filter(|_| diff.time),
                atime: w.atime.filter(|_| diff.atime),
            };
            if let Err(e) = meta::apply(dst, meta.kind(), &w2, Some(d)) {
                eng.attr_error(dst, &e);
            }
        }
    }

    /// A symlink; `use_basis`: a missing destination entry is reported against a basis
    /// directory's (not when it replaces an entry of another type, as in rsync).
    fn handle_symlink(
        &self,
        src: &Path,
        dst: &Path,
        rel: &[u8],
        meta: &Meta,
        existing: Option<Meta>,
        use_basis: bool,
    ) {
        let eng = self.eng;
        let o = self.opts();
        let target = match fsops::read_link(src) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eng.vanished_file(src);
                return;
            }
            Err(e) => {
                eng.io_fail("[sender] readlink", src, &e);
                return;
            }
        };
        if o.safe_links && unsafe_link(target.as_bytes(), rel) {
            if o.verbose > 0 {
                eng.out.line(
                    format!(
                        "ignoring unsafe symlink \"{}\" -> \"{}\"",
                        display(src),
                        String::from_utf8_lossy(target.as_bytes())
                    )
                    .as_bytes(),
                );
            }
            return;
        }
        let mut item = Itemize::new(b'c', Kind::Symlink);
        let basis = match existing {
            None if use_basis => self
                .basis_entry(rel)
                .filter(|(_, m)| m.kind() == Kind::Symlink),
            _ => None,
        };
        if let Some(d) = &existing {
            let cur = fsops::read_link(dst).unwrap_or_default();
            if cur == target {
                self.update_attrs(src, dst, rel, meta, d);
                return;
            }
        } else {
            eng.stats.created(Kind::Symlink);
        }
        match existing.as_ref().or(basis.as_ref().map(|(_, m)| m)) {
            Some(d) => {
                let path = basis.as_ref().map_or(dst, |(p, _)| p.as_path());
                item.checksum = fsops::read_link(path).unwrap_or_default() != target;
                let w = meta::wanted(o, meta, Some(d), eng.am_root);
                let diff = self.diff(&w, d);
                item.time = if diff.time { b't' } else { b'.' };
                item.owner = diff.owner;
                item.group = diff.group;
            }
            None => item.new = true,
        }
        eng.emit(
            rel,
            Kind::Symlink,
            item,
            Some(("->", target.as_bytes())),
            meta,
        );
        if o.dry_run {
            return;
        }
        self.replace_via_temp(dst, rel, existing.is_some(), "[receiver] symlink", |tmp| {
            fsops::symlink(&target, tmp)?;
            if o.xattrs || o.acls {
                let _ = meta::sync_xattrs(src, tmp, o.xattrs, false, false);
            }
            let w = meta::wanted(o, meta, None, eng.am_root);
            if let Err(e) = meta::apply(tmp, Kind::Symlink, &w, None) {
                if e.kind() != io::ErrorKind::PermissionDenied || eng.am_root {
                    return Err(e);
                }
            }
            Ok(())
        });
    }

    /// Replaces `dst` by an entry that `create` makes (with its attributes) under a
    /// temporary name in the same directory, then renames into place: the old entry
    /// stays until the new one is complete. With `-b`, an `existing` entry is backed
    /// up first. On failure the temporary entry is removed and the error reported
    /// with `what`.
    fn replace_via_temp(
        &self,
        dst: &Path,
        rel: &[u8],
        existing: bool,
        what: &str,
        create: impl FnOnce(&Path) -> io::Result<()>,
    ) {
        let eng = self.eng;
        if existing && self.opts().backup {
            if let Err(e) = eng.make_backup(dst, rel, false) {
                eng.io_fail("backup", dst, &e);
                return;
            }
        }
        let dir = dst.parent().unwrap_or(Path::new("."));
        let name = dst
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let tmp = eng.temp_path(dir, &name);
        if let Err(e) = create(&tmp).and_then(|()| fsops::rename(&tmp, dst)) {
            let _ = fsops::unlink(&tmp);
            eng.io_fail(what, dst, &e);
        }
    }

    /// Devices, FIFOs and sockets.
    fn handle_node(&self, dst: &Path, rel: &[u8], meta: &Meta, existing: Option<Meta>) {
        let eng = self.eng;
        let o = self.opts();
        let kind = meta.kind();
        let mut item = Itemize::new(b'c', kind);
        if let Some(d) = &existing {
            if d.kind() == kind && (!kind.is_device() || d.rdev == meta.rdev) {
                // Same node: attributes only. The source path is not needed for nodes.
                let w = meta::wanted(o, meta, Some(d), eng.am_root);
                let diff = self.diff(&w, d);
                let mut it = Itemize::new(b'.', kind);
                it.perms = diff.perms;
                it.owner = diff.owner;
                it.group = diff.group;
                it.time = if diff.time { b't' } else { b'.' };
                eng.emit(rel, kind, it, None, meta);
                if !o.dry_run && diff.any() {
                    let w2 = Wanted {
                        mtime: w.mtime.filter(|_| diff.time),
                        ..w
                    };
                    if let Err(e) = meta::apply(dst, kind, &w2, Some(d)) {
                        eng.attr_error(dst, &e);
                    }
                }
                return;
            }
            item.checksum = true;
        } else {
            item.new = true;
            eng.stats.created(kind);
        }
        eng.emit(rel, kind, item, None, meta);
        if o.dry_run {
            return;
        }
        self.replace_via_temp(dst, rel, existing.is_some(), "[receiver] mknod", |tmp| {
            fsops::mknod(tmp, meta.mode, meta.rdev)?;
            let w = meta::wanted(o, meta, None, eng.am_root);
            meta::apply(tmp, kind, &w, None)
        });
    }

    /// Deletes destination entries of `dst` that are not in the source listing.
    fn delete_extraneous(&self, dst: &Path, rel: &[u8], keep: &Entries) -> usize {
        let eng = self.eng;
        if eng.io_error.load(Ordering::Relaxed) && !eng.opts.ignore_errors {
            if !eng.delete_skip_told.swap(true, Ordering::Relaxed) {
                eng.out
                    .error("IO error encountered -- skipping file deletion");
            }
            return 0;
        }
        // Only the names to delete are collected: a huge destination directory that matches
        // its source costs no memory here.
        let mut names = fsops::Names::default();
        let mut full = None;
        let listed = fsops::for_each_name(dst, |name| {
            if listing_has(keep, name) || self.is_internal(name) {
                return true;
            }
            match names.push(name) {
                Ok(()) => true,
                Err(e) => {
                    full = Some(e);
                    false
                }
            }
        });
        if listed.is_err() || full.is_some() {
            return 0;
        }
        eng.filter.enter_receiver_dir(dst);
        let mut deleted = 0;
        names.sort_descending();
        in_delete_order(dst, &names, |name, path, m| {
            let child_rel = Engine::child_rel(rel, name.as_bytes());
            if self.protected(&child_rel, name, m.kind() == Kind::Dir)
                || eng.other_item_brings(&child_rel)
            {
                return;
            }
            self.delete_path(path, &child_rel, m, Del::Top);
            deleted += 1;
        });
        deleted
    }

    fn protected(&self, rel: &[u8], name: &OsStr, is_dir: bool) -> bool {
        let o = self.opts();
        if o.backup && o.backup_dir.is_none() {
            let suffix = o.backup_suffix();
            if !suffix.is_empty() && name.as_bytes().ends_with(suffix.as_bytes()) {
                return true;
            }
        }
        !self.eng.filter.is_empty() && self.eng.filter.protected(rel, is_dir)
    }

    /// [`Walker::protected`] for an entry inside a directory being deleted whole.
    fn protected_inside_deleted(&self, rel: &[u8], name: &OsStr, is_dir: bool) -> bool {
        let o = self.opts();
        if o.backup && o.backup_dir.is_none() {
            let suffix = o.backup_suffix();
            if !suffix.is_empty() && name.as_bytes().ends_with(suffix.as_bytes()) {
                return true;
            }
        }
        !self.eng.filter.is_empty() && self.eng.filter.protected_in_deleted_dir(rel, is_dir)
    }

    /// Deletes one entry (directories depth-first), honouring `--max-delete` and protection.
    fn delete_path(&self, path: &Path, rel: &[u8], m: &Meta, how: Del) -> bool {
        let quiet = how == Del::MakeWay;
        let eng = self.eng;
        let o = self.opts();
        let mut all_gone = true;
        if m.kind() == Kind::Dir {
            if let Ok(mut names) = fsops::read_dir_names_packed(path) {
                names.sort_descending();
                in_delete_order(path, &names, |name, child, cm| {
                    let child_rel = Engine::child_rel(rel, name.as_bytes());
                    if self.protected_inside_deleted(&child_rel, name, cm.kind() == Kind::Dir) {
                        all_gone = false;
                        return;
                    }
                    all_gone &= self.delete_path(child, &child_rel, cm, Del::Nested);
                });
            }
            if !all_gone {
                self.not_empty(rel);
                // rsync still tries a directory inside a deleted one, which counts as a
                // skipped deletion once --max-delete is reached.
                if let (Del::Nested, Some(max)) = (how, o.max_delete) {
                    if eng.deletes_done.load(Ordering::Relaxed) >= max {
                        eng.del_limit_hit.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return false;
            }
        }
        // Making way for a new entry is not a deletion: neither limited nor counted.
        if !quiet {
            if let Some(max) = o.max_delete {
                if eng.deletes_done.load(Ordering::Relaxed) >= max {
                    eng.del_limit_hit.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
            eng.deletes_done.fetch_add(1, Ordering::Relaxed);
            eng.stats.deleted.fetch_add(1, Ordering::Relaxed);
            // --stats breaks the deletions down as "reg, dir, link, dev, special".
            let kind = match m.kind() {
                Kind::File => 0,
                Kind::Dir => 1,
                Kind::Symlink => 2,
                Kind::CharDev | Kind::BlockDev => 3,
                Kind::Fifo | Kind::Socket => 4,
            };
            eng.stats.deleted_by_kind[kind].fetch_add(1, Ordering::Relaxed);
        }
        let mut shown = rel.to_vec();
        if m.kind() == Kind::Dir {
            shown.push(b'/');
        }
        if quiet {
        } else if o.itemize > 0 || o.out_format.as_deref().is_some_and(|f| f.contains("%i")) {
            let mut line = b"*deleting   ".to_vec();
            line.extend_from_slice(&report::escape_name(&shown));
            eng.out.line(&line);
        } else if o.verbose > 0 {
            let mut line = b"deleting ".to_vec();
            line.extend_from_slice(&report::escape_name(&shown));
            eng.out.line(&line);
        }
        let mut logline = b"*deleting   ".to_vec();
        logline.extend_from_slice(&shown);
        eng.out.log_msg(&logline);
        if o.dry_run {
            return true;
        }
        let r = if m.kind() == Kind::Dir {
            fsops::rmdir(path)
        } else if o.backup {
            eng.make_backup(path, rel, false)
        } else {
            fsops::unlink(path)
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                eng.io_fail("delete", path, &e);
                false
            }
        }
    }

    /// `--delete-after` / `--delete-delay`: a second walk that only deletes.
    fn delete_pass(&self, item: &TopItem, dest: &Path) {
        if item.meta.kind() != Kind::Dir || item.implied {
            return;
        }
        if !item.contents && !self.opts().recursive {
            return;
        }
        let dst = plan::join(dest, &item.rel);
        self.delete_walk(&item.src, &dst, &item.display);
    }

    fn delete_walk(&self, src: &Path, dst: &Path, rel: &[u8]) {
        if self.eng.stopped() {
            return;
        }
        self.enter_filters(src, rel);
        self.delete_walk_inner(src, dst, rel);
        self.eng.filter.leave_dir();
    }

    fn delete_walk_inner(&self, src: &Path, dst: &Path, rel: &[u8]) {
        let entries = self.read_source_dir(src, rel, None);
        // Already reported during the transfer pass.
        self.skipped.borrow_mut().clear();
        let Some(entries) = entries else {
            return;
        };
        if fsops::lstat(dst).is_ok_and(|m| m.kind() == Kind::Dir)
            && self.delete_extraneous(dst, rel, &entries) > 0
            && self.opts().delete != DeleteMode::Before
        {
            if let Ok(m) = fsops::lstat(src) {
                self.eng.touch_dir(dst, &m);
            }
        }
        if !self.opts().recursive {
            return;
        }
        for e in entries.iter() {
            if e.meta.kind() == Kind::Dir {
                let child_rel = Engine::child_rel(rel, e.name.as_bytes());
                self.delete_walk(&src.join(e.name), &dst.join(e.name), &child_rel);
            }
        }
    }
}

/// Reads a `--files-from` list (newline- or NUL-separated; `-` is stdin).
pub fn read_files_from(path: &Path, from0: bool) -> io::Result<Vec<Vec<u8>>> {
    let data = if path == Path::new("-") {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut v)?;
        v
    } else {
        fsops::read_file(path)?
    };
    let sep = if from0 { 0 } else { b'\n' };
    Ok(data
        .split(|b| *b == sep)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && (from0 || !(l[0] == b'#' || l[0] == b';')))
        .map(|l| l.to_vec())
        .collect())
}

/// Converts bytes to an `OsString` path component.
pub fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// What a deletion is for (see [`Walker::delete_path`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Del {
    /// An extraneous entry (or a missing argument's copy).
    Top,
    /// An entry inside a directory being deleted.
    Nested,
    /// An entry of the wrong type, removed for the new one: neither shown nor counted nor
    /// limited by `--max-delete` (what it holds is).
    MakeWay,
}

/// Visits the entries `names` of `dir` (sorted last first) in the order rsync deletes them:
/// the subdirectories first, then everything else (rsync's file lists put a directory's files
/// before its subdirectories, and deletion walks them backwards). Entries gone meanwhile are
/// skipped. `visit` gets the name, the full path and the entry's `lstat`.
fn in_delete_order(dir: &Path, names: &fsops::Names, mut visit: impl FnMut(&OsStr, &Path, &Meta)) {
    let mut later = vec![false; names.len()];
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        match fsops::lstat(&path) {
            Ok(m) if m.kind() == Kind::Dir => visit(name, &path, &m),
            Ok(_) => later[i] = true,
            Err(_) => {}
        }
    }
    for (name, _) in names.iter().zip(&later).filter(|(_, l)| **l) {
        let path = dir.join(name);
        if let Ok(m) = fsops::lstat(&path) {
            visit(name, &path, &m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_links() {
        assert!(unsafe_link(b"/etc/passwd", b"a"));
        assert!(unsafe_link(b"../x", b"a"));
        assert!(!unsafe_link(b"../x", b"d/a"));
        assert!(unsafe_link(b"../../x", b"d/a"));
        assert!(!unsafe_link(b"sub/../y", b"a"));
    }

    #[test]
    fn split_path_matches_parent_and_file_name() {
        for p in [
            "f",
            "a/f",
            "/f",
            "/a/f",
            "a//f",
            "a/f/",
            "a/f/.",
            "a/./f",
            "./f",
            "a/..",
            "..",
            ".",
            "/",
            "",
            "dir with space/f.x",
        ] {
            let p = Path::new(p);
            let (dir, name) = split_path(p);
            assert_eq!(dir, p.parent().unwrap_or(Path::new("")), "{p:?}");
            assert_eq!(name, p.file_name().unwrap_or(OsStr::new("")), "{p:?}");
        }
    }

    #[test]
    fn job_paths_are_the_joined_paths() {
        for (src, dst, rel) in [
            ("src", "dst", "."),
            ("src/", "/abs/dst/", "sub/dir"),
            ("", "", ""),
            ("/", "d", "x"),
        ] {
            let (src, dst) = (Path::new(src), Path::new(dst));
            let p = JobPaths::child(src, dst, rel.as_bytes(), b"name.1");
            assert_eq!(p.src().as_os_str(), src.join("name.1").as_os_str());
            assert_eq!(p.dst().as_os_str(), dst.join("name.1").as_os_str());
            assert_eq!(p.rel(), Engine::child_rel(rel.as_bytes(), b"name.1"));
            for ((dir, name), whole) in [(p.src_parts(), p.src()), (p.dst_parts(), p.dst())] {
                assert_eq!(name, "name.1");
                assert_eq!(dir.join(name).as_os_str(), whole.as_os_str());
            }
            // The same paths given whole, and a copy, say the same.
            let q = JobPaths::new(p.src(), p.dst(), p.rel()).clone();
            assert_eq!((q.src(), q.dst(), q.rel()), (p.src(), p.dst(), p.rel()));
            assert_eq!(q.src_parts(), split_path(p.src()));
            assert_eq!(q.dst_parts(), split_path(p.dst()));
        }
        // Paths not built by a join keep `Path`'s idea of their parts.
        let q = JobPaths::new(Path::new("/top/f/."), Path::new("/"), b"f");
        assert_eq!(q.src_parts(), (Path::new("/top"), OsStr::new("f")));
        assert_eq!(q.dst_parts(), (Path::new(""), OsStr::new("")));
        assert_eq!(q.rel(), b"f");
    }

    #[test]
    fn errno_format() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(errno_text(&e), "No such file or directory (2)");
    }
}
