//! The receiving client (pull): starts `rsync --server --sender`, receives
//! the file list and the files, and writes them under a destination.
//!
//! Like rsync, the work is split in two: a generator thread walks the file
//! list, creates directories and symlinks, and sends a checksum request for
//! each file that needs updating (with block sums of the existing file as the
//! delta basis); the calling thread is the receiver, which reads file data
//! from the sender, rebuilds each file into a temporary name, verifies the
//! whole-file checksum, applies metadata and renames it into place. A file
//! that fails verification is requested once more with full-length sums
//! (the redo phase). The receiver always drains the peer's output, so the
//! generator can block on writes without deadlocking the connection.

use arsync_filter::FilterRules;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use arsync_proto::checksum::{block_sum, weak_sum, ChecksumAlgo, FileHasher};
use arsync_proto::compress::TokenCodec;
use arsync_proto::filter::encode_filter_list;
use arsync_proto::flist::{
    clear_duplicates, sort_entries, FileEntry, FileType, FlistDecoder, FlistItem, FlistOptions,
    HardLink, IdListDecoder,
};
use arsync_proto::handshake::{Negotiated, PROTOCOL_VERSION};
use arsync_proto::item::{decode_item, encode_del_stats, ItemAttrs, NdxItem};
use arsync_proto::mux::MsgTag;
use arsync_proto::ndx::{NdxCodec, NDX_DONE, NDX_FLIST_OFFSET};
use arsync_proto::phase::{GenStep, GeneratorSchedule, MAX_PHASE};
use arsync_proto::stats::{exit_code_for_io_error, ExitCode, Stats};
use arsync_proto::sums::SumHead;
use arsync_proto::token::Token;
use arsync_proto::wire::put_i32;

use arsync_proto::item::iflags;
use arsync_proto::xattr::{decode_reply, encode_request};

use crate::args::ServerCommand;
use crate::attrs::{self, Target, XattrStore};
use crate::conn::{join_errors, InStream, OutStream, MAX_OUT_FRAME};
use crate::daemon::DaemonTarget;
use crate::error::{RemoteError, Result};
use crate::events::{change_flags, EventSink, FileEvent, ProgressTicker, SIGNIFICANT_ITEM_FLAGS};
use crate::filewriter::{Committer, DataBuf, FileWriter, Keep};
use crate::fsys::{
    punch_zero_blocks, read_basis, DelayedFile, DestRoot, DestSpec, Meta, Settled, TempFile,
};
use crate::ids::{IdMap, IdNames};
use crate::opts::{AltMatch, DeleteLimit, TransferOpts};
use crate::session::{am_root, flist_options, start_client, token_compression};
use crate::transport::{ChildTransport, IoClock, Limits, OnExpiry, Watchdog, Who};
use crate::walk::DaemonFilter;

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The server command (`server_sends` must be true).
    pub command: ServerCommand,
    /// Local destination directory.
    pub dest: PathBuf,
    /// Highest protocol we offer.
    pub protocol: i32,
    /// Print the peer's messages to stderr.
    pub echo_messages: bool,
    /// Connect to an rsync daemon instead of running `command` (only its
    /// flags and caps are used then).
    pub daemon: Option<DaemonTarget>,
    /// Per-entry notifications.
    pub events: Option<EventSink>,
    /// Filter rules for the sender, in rsync's wire form (`- *.o`,
    /// `+ /keep/`, `P name`, ...; bytes: a pattern need not be UTF-8);
    /// the server applies them.
    pub filters: Vec<Vec<u8>>,
    /// `--files-from` names sent to the server after the filter list
    /// (the command carries `--files-from=-`).
    pub files_from: Option<Vec<Vec<u8>>>,
    /// The client's own rules, when they differ from `filters` (rules
    /// kept local, `-C`'s): used for deletion instead of `filters`.
    pub local_filter: Option<FilterRules>,
    /// `--stop-at` / `--stop-after`: when the client stops (exit 30).
    pub stop_at: Option<std::time::SystemTime>,
}

impl PullOptions {
    /// Pull `remote_path` into `dest` with `-logDtpr`.
    pub fn new(remote_path: impl Into<std::ffi::OsString>, dest: impl Into<PathBuf>) -> Self {
        PullOptions {
            command: ServerCommand::archive(true, remote_path),
            dest: dest.into(),
            protocol: PROTOCOL_VERSION,
            echo_messages: true,
            daemon: None,
            events: None,
            filters: Vec::new(),
            files_from: None,
            local_filter: None,
            stop_at: None,
        }
    }

    /// The session limits the client enforces.
    fn limits(&self) -> Limits {
        Limits {
            timeout: self.command.opts.timeout,
            stop_at: self.stop_at,
        }
    }
}

/// Outcome of a transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferSummary {
    /// Negotiated protocol.
    pub protocol: i32,
    /// Negotiated checksum name.
    pub checksum: String,
    /// Entries in the file list.
    pub files_total: usize,
    /// Regular files whose data was transferred.
    pub files_transferred: usize,
    /// Files requested again after a checksum mismatch.
    pub files_redone: usize,
    /// Literal bytes received or sent.
    pub literal_bytes: u64,
    /// Bytes reconstructed from (or matched in) the basis.
    pub matched_bytes: u64,
    /// Raw bytes read from the connection.
    pub bytes_read: u64,
    /// Raw bytes written to the connection.
    pub bytes_written: u64,
    /// The sender's final statistics (pull only).
    pub stats: Stats,
    /// The sender's io_error flags.
    pub io_error: i32,
    /// Non-fatal errors (the run still completed; exit code 23).
    pub errors: Vec<String>,
}

impl TransferSummary {
    /// rsync's exit code for this outcome.
    pub fn exit_code(&self) -> ExitCode {
        if !self.errors.is_empty() {
            ExitCode::Partial
        } else {
            exit_code_for_io_error(self.io_error)
        }
    }
}

enum ToGen {
    Redo(i32),
    /// A requested file was received and verified (incremental recursion:
    /// its list can end once none is outstanding).
    Received(i32),
    /// The next list of an incremental recursion.
    List(Arc<SubList>),
    /// No more lists follow (NDX_FLIST_EOF).
    ListsEnd,
    /// A received file is in place (MSG_SUCCESS, `--remove-source-files`).
    Success(i32),
    Phase0Done,
    RedoDone,
    Finish,
}

/// One file list: the whole list, or with incremental recursion one
/// directory's part of it (rsync's `struct file_list`).
#[derive(Debug)]
pub(crate) struct SubList {
    /// Index of the first entry.
    start: i32,
    /// The entries, sorted.
    entries: Vec<FileEntry>,
    /// False for a duplicate (or an entry the options drop).
    active: Vec<bool>,
    /// Set (before the request is written) for every index we ask for; the
    /// receiver refuses data nobody asked for.
    requested: Vec<AtomicBool>,
    /// Incremental recursion: the directory these entries are in, when
    /// its extraneous entries are to be looked for (it has content).
    parent: Option<Vec<u8>>,
    /// Incremental recursion: the first entry is that directory itself, at
    /// the index before the list's (rsync's generator handles a directory
    /// there, right before its contents, and the sender knows the index).
    head: bool,
}

impl SubList {
    fn new(
        start: i32,
        entries: Vec<FileEntry>,
        active: Vec<bool>,
        parent: Option<Vec<u8>>,
    ) -> Self {
        let requested = entries.iter().map(|_| AtomicBool::new(false)).collect();
        SubList {
            start,
            entries,
            active,
            requested,
            parent,
            head: false,
        }
    }

    /// The list of directory `dir` (its entry first, at `start - 1`;
    /// `dir_active`: handled, false in a listing).
    fn with_head(
        start: i32,
        (dir, dir_active): (FileEntry, bool),
        entries: Vec<FileEntry>,
        active: Vec<bool>,
        parent: Option<Vec<u8>>,
    ) -> Self {
        let entries: Vec<FileEntry> = std::iter::once(dir).chain(entries).collect();
        let active = std::iter::once(dir_active).chain(active).collect();
        SubList {
            head: true,
            ..SubList::new(start - 1, entries, active, parent)
        }
    }

    /// The position of index `ndx` in this list.
    fn slot(&self, ndx: i32) -> Option<usize> {
        let j = usize::try_from(i64::from(ndx) - i64::from(self.start)).ok()?;
        (j < self.entries.len()).then_some(j)
    }

    /// The index after this list's last, plus one: where the next list
    /// of an incremental recursion starts (rsync leaves a gap of one).
    fn next_start(&self) -> i32 {
        self.start + self.entries.len() as i32 + 1
    }
}

/// The lists the receiver holds: one without incremental recursion; with
/// it, the lists received and not yet finished (each is freed once the
/// sender confirms it is done).
#[derive(Debug, Default)]
pub(crate) struct FileTable {
    lists: std::sync::Mutex<std::collections::VecDeque<Arc<SubList>>>,
}

impl FileTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Arc<SubList>>> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, l: Arc<SubList>) {
        self.lock().push_back(l);
    }

    /// The list holding index `ndx`, and its position there.
    fn find(&self, ndx: i32) -> Option<(Arc<SubList>, usize)> {
        let lists = self.lock();
        let at = lists.partition_point(|l| l.start <= ndx);
        let l = lists.get(at.checked_sub(1)?)?;
        l.slot(ndx).map(|j| (Arc::clone(l), j))
    }

    /// The entry named `name` (in any list held).
    fn find_name(&self, name: &[u8]) -> Option<(Arc<SubList>, usize)> {
        let lists = self.lock();
        lists.iter().find_map(|l| {
            let at = l.entries.binary_search_by(|f| {
                arsync_proto::flist::compare_names(&f.name, f.is_dir(), name, false)
            });
            at.ok().map(|j| (Arc::clone(l), j))
        })
    }

    /// Drops the list starting at `start`.
    fn remove(&self, start: i32) {
        self.lock().retain(|l| l.start != start);
    }
}

/// Builds rules from wire-form rule texts (`None` when there are none).
pub fn filter_from_wire<R: AsRef<[u8]>>(rules: &[R], protocol: i32) -> Result<Option<FilterRules>> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut f = FilterRules::new();
    for r in rules {
        // Bytes: a pattern need not be UTF-8, as the names it matches.
        let r = r.as_ref();
        f.add_wire_rule(r, protocol.max(0) as u32).map_err(|e| {
            RemoteError::Usage(format!("filter rule {:?}: {e}", String::from_utf8_lossy(r)))
        })?;
    }
    Ok(Some(f))
}

/// Runs a pull over a spawned transport.
pub fn pull(opts: &PullOptions) -> Result<TransferSummary> {
    if !opts.command.server_sends {
        return Err(RemoteError::Usage(
            "pull needs a server command with --sender".into(),
        ));
    }
    // Settled once the file list is in (rsync's get_local_name).
    let dest = DestSpec {
        path: opts.dest.clone(),
        dry: opts.command.flags.contains('n') || opts.command.opts.list_only,
        temp_dir: opts.command.opts.temp_dir.clone().map(|t| (t, false)),
        keep_dirlinks: opts.command.opts.keep_dirlinks,
    };
    let clock = IoClock::new(Who::Starting);
    if let Some(t) = &opts.daemon {
        let (r, w) = t.connect()?;
        let fd = w.as_fd().try_clone_to_owned().ok();
        let watch = Watchdog::start(&clock, opts.limits(), fd, OnExpiry::Exit { kill: None });
        let clock = watch.as_ref().map(|_| clock);
        return run_pull_with(opts, dest, r, w, clock);
    }
    let mut child = ChildTransport::spawn(&opts.command.argv())?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| RemoteError::Usage("no stdin".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| RemoteError::Usage("no stdout".into()))?;
    let kill = Some(child.id());
    let fd = stdin.as_fd().try_clone_to_owned().ok();
    // Without limits the streams note nothing.
    let watch = Watchdog::start(&clock, opts.limits(), fd, OnExpiry::Exit { kill });
    let clock = watch.as_ref().map(|_| clock);
    let res = run_pull_with(opts, dest, stdout, stdin, clock);
    match res {
        Ok(summary) => {
            let status = child.wait()?;
            if !status.success() {
                return Err(RemoteError::RemoteExit {
                    code: status.code().unwrap_or(-1),
                    messages: String::new(),
                });
            }
            Ok(summary)
        }
        Err(RemoteError::Eof(messages)) => {
            // The peer hung up: its exit status says why.
            let status = child.wait()?;
            match status.code() {
                Some(code) if code != 0 => Err(RemoteError::RemoteExit { code, messages }),
                _ => Err(RemoteError::Eof(messages)),
            }
        }
        Err(e) => {
            child.kill();
            Err(e)
        }
    }
}

/// Runs the receiving client over any pair of streams (for tests and other transports).
pub fn run_pull<R: Read, W: Write + Send + 'static>(
    opts: &PullOptions,
    dest: DestSpec,
    input: R,
    output: W,
) -> Result<TransferSummary> {
    run_pull_with(opts, dest, input, output, None)
}

/// [`run_pull`], noting the session's I/O on `clock` (`--timeout`).
fn run_pull_with<R: Read, W: Write + Send + 'static>(
    opts: &PullOptions,
    dest: DestSpec,
    input: R,
    output: W,
    clock: Option<Arc<IoClock>>,
) -> Result<TransferSummary> {
    let mut ins = InStream::new(input);
    ins.echo_messages = opts.echo_messages;
    ins.reports.info_on_stdout = true;
    if let (Some(ev), true) = (&opts.events, opts.command.opts.verbose >= 2) {
        // The sender's -vv lines (`total: matches=...`) come after the
        // names of files the writer may not have committed yet.
        let ev = ev.clone();
        ins.reports.info_hook = Some(crate::conn::InfoHook(Arc::new(move |text| {
            ev.emit(&FileEvent::Info {
                text,
                ordered: true,
            })
        })));
    }
    let mut outs = OutStream::new(output);
    if let Some(c) = &clock {
        ins.set_clock(Arc::clone(c));
        outs.set_clock(Arc::clone(c));
    }
    let neg = start_client(
        &mut ins,
        &mut outs,
        opts.protocol,
        &opts.command,
        opts.daemon.as_ref(),
    )?;
    let codec = token_compression(&neg)?;
    let fopts = flist_options(&opts.command.flags, opts.command.numeric_ids, &neg)?;
    ins.start_multiplex()?;
    outs.start_multiplex()?;
    let mut filt = Vec::new();
    let rules: Vec<Vec<u8>> = opts.filters.clone();
    encode_filter_list(&rules, &mut filt)?;
    if let Some(names) = &opts.files_from {
        // Each name ends with a NUL; an empty name ends the list.
        for n in names {
            filt.extend_from_slice(n);
            filt.push(0);
        }
        filt.push(0);
    }
    outs.write(&filt)?;
    outs.flush()?;
    if let Some(c) = &clock {
        // rsync's client forks its generator about now.
        c.set_who(Who::Generator);
    }

    let mode = ReceiveMode {
        delete: opts.command.delete,
        read_stats: true,
        codec,
        drain_eof: true,
        events: opts.events.clone(),
        whole_file: opts.command.flags.contains('W'),
        filter: match &opts.local_filter {
            Some(f) => Some(Arc::new(f.clone())),
            None => filter_from_wire(&opts.filters, neg.protocol)?.map(Arc::new),
        },
        dry_run: opts.command.flags.contains('n'),
        sparse: opts.command.flags.contains('S'),
        delay_updates: opts.command.delay_updates,
        late_delete: opts.command.delete && opts.command.delete_after,
        daemon_filter: None,
        partial: opts.command.partial,
        perms: opts.command.flags.contains('p'),
        times: opts.command.flags.contains('t'),
        opts: opts.command.opts.clone(),
        listing: None,
    };
    receive_session(ins, outs, &neg, &fopts, dest, mode)
}

/// How the receiving half behaves.
#[derive(Clone)]
pub(crate) struct ReceiveMode {
    /// Delete extraneous local entries.
    pub delete: bool,
    /// Read the sender's final stats (a client receiver does, a server does not).
    pub read_stats: bool,
    /// The session's token compression.
    pub codec: TokenCodec,
    /// Read to the end of input after the goodbye (a client: the server
    /// exits then). A server must not: the client waits for it to exit.
    pub drain_eof: bool,
    /// Per-entry notifications.
    pub events: Option<EventSink>,
    /// `-W`: whole-file transfers, no delta against the basis.
    pub whole_file: bool,
    /// Rules protecting local entries from `--delete`.
    pub filter: Option<Arc<FilterRules>>,
    /// `-n`: change nothing, only report what would be transferred.
    pub dry_run: bool,
    /// `-S`: zero blocks of received files become holes.
    pub sparse: bool,
    /// `--delay-updates`: rename received files into place after the redo phase.
    pub delay_updates: bool,
    /// `--delete-after`: delete once every file is received.
    pub late_delete: bool,
    /// A daemon module's rules: hidden entries are skipped and kept.
    pub daemon_filter: Option<Arc<DaemonFilter>>,
    /// `--partial`: a file cut off by an error keeps what arrived.
    pub partial: bool,
    /// `-p`: the source's permissions (else rsync's rules for new and
    /// existing entries, see [`MetaRules`]).
    pub perms: bool,
    /// `-t`: the source's mtimes.
    pub times: bool,
    /// Quick-check variants and other generator options.
    pub opts: TransferOpts,
    /// A receiving server's `--list-only` lines (put there by `events`),
    /// which the generator sends to the client as MSG_INFO, as rsync's
    /// generator prints its listing.
    pub listing: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
}

/// ACL and xattr state shared by the generator and the receiver.
#[derive(Clone)]
struct AttrCtx {
    /// `-A`
    acls: bool,
    /// `-X`: the sender's sets, completed as full values arrive.
    xstore: Option<Arc<XattrStore>>,
    /// The sender's uids and gids mapped to ours (for ACL entries).
    ids: Arc<(IdMap, IdMap)>,
    root: bool,
}

impl AttrCtx {
    /// Applies `e`'s ACLs to `t` (after its mode was set).
    fn apply_acls(&self, t: Target<'_>, e: &FileEntry) -> Result<()> {
        if !self.acls || e.file_type() == Some(FileType::Symlink) {
            return Ok(());
        }
        let Some(acc) = &e.acl else { return Ok(()) };
        let def = if e.is_dir() {
            e.def_acl.as_deref()
        } else {
            None
        };
        let who = String::from_utf8_lossy(&e.name);
        attrs::apply_acls(t, e.mode, acc, def, (&self.ids.0, &self.ids.1), &who)
    }
}

/// The receiving half of a session after setup: file list, id lists, the
/// generator thread and the receiver, the end-of-run exchange.
pub(crate) fn receive_session<R: Read, W: Write + Send + 'static>(
    mut ins: InStream<R>,
    mut outs: OutStream<W>,
    neg: &Negotiated,
    fopts: &FlistOptions,
    dest: DestSpec,
    mut mode: ReceiveMode,
) -> Result<TransferSummary> {
    let (neg, fopts) = (neg.clone(), fopts.clone());
    let inc = fopts.inc_recurse;
    // File list (with incremental recursion, its first part: the top
    // level, indices from 1).
    let start = i32::from(inc);
    let mut dec = FlistDecoder::new(fopts.clone(), start);
    let (entries, io_error) = read_list(&mut ins, &mut dec)?;
    if let Some(e) = entries.iter().find(|e| inc && e.name.contains(&b'/')) {
        // The first incremental list holds the top level only.
        return Err(RemoteError::Refused(format!(
            "invalid path from the sender: {} in the top-level list",
            String::from_utf8_lossy(&e.name)
        )));
    }
    let root = am_root();
    let xstore = fopts
        .preserve_xattrs
        .then(|| Arc::new(XattrStore::new(dec.xattr_sets(), root)));
    let names = IdNames::load();
    let (mut uid_map, mut gid_map) = (IdMap::default(), IdMap::default());
    let (mut uid_list, mut gid_list) = (Vec::new(), Vec::new());
    if fopts.id_lists_follow() {
        if fopts.uid_list_follows() {
            let mut d = IdListDecoder::new(fopts.id0_names);
            uid_list = ins.decode_partial(|r| d.feed(r))?;
            uid_map = IdMap::new(&uid_list, |n| names.uid_of(n));
        }
        if fopts.gid_list_follows() {
            let mut d = IdListDecoder::new(fopts.id0_names);
            gid_list = ins.decode_partial(|r| d.feed(r))?;
            gid_map = IdMap::new(&gid_list, |n| names.gid_of(n));
        }
    }
    if entries.is_empty() && !inc && mode.read_stats {
        // An empty list (e.g. an empty --files-from) ends the run: rsync's
        // sender exits after it and its client only waits for that.
        if let Some(ev) = &mode.events {
            ev.emit(&FileEvent::List {
                entries: &[],
                incremental: false,
                first: true,
            });
        }
        ins.drain_to_eof()?;
        return Ok(TransferSummary {
            protocol: neg.protocol,
            checksum: neg.checksum.name().to_string(),
            io_error: io_error | ins.reports.io_error,
            bytes_read: ins.total_read(),
            bytes_written: outs.total_written(),
            ..TransferSummary::default()
        });
    }
    // Where the entries go (rsync's get_local_name), and rsync's note of a
    // destination directory it made (a server's goes to the client).
    let Settled {
        root: dest,
        created,
    } = dest.settle(&entries)?;
    mode.opts.dest_created = created;
    if created {
        // As rsync names it: without the trailing slash.
        let path = dest.root().as_os_str().as_bytes();
        let path = match path.strip_suffix(b"/") {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        match (&mode.events, mode.read_stats) {
            (Some(ev), true) => ev.emit(&FileEvent::CreatedDir { path }),
            (_, false) if mode.opts.report_deletions => {
                let text = [&b"created directory "[..], path, b"\n"].concat();
                outs.message(MsgTag::Info, &text)?;
            }
            _ => {}
        }
    }
    // --usermap/--groupmap (and --chown) come before the name mapping.
    let (user_rules, group_rules) = mode.opts.id_rules()?;
    // Hard-link followers name their leader by receive-order index: resolve
    // to names before sorting.
    let links: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .filter_map(|e| match e.hardlink {
            HardLink::Follower(i) => entries
                .get(i as usize)
                .map(|l| (relative_name(&e.name), relative_name(&l.name))),
            _ => None,
        })
        .collect();
    let mut prep = ListPrep {
        opts: mode.opts.clone(),
        events: mode.events.clone(),
        user_rules,
        group_rules,
        uid_list,
        gid_list,
        uid_map,
        gid_map,
        names,
        inc,
        first: true,
        relative: fopts.relative_paths,
    };
    let (entries, active) = prep.prepare(entries);
    // An incremental list that starts with "." is that directory's own
    // list (rsync's parent_ndx 0): extraneous entries there are deleted.
    let top_parent = match entries.first() {
        Some(e) if inc && e.name == b"." && e.is_dir() && !e.no_content_dir => Some(e.name.clone()),
        _ => None,
    };
    let listing = mode.opts.list_only;
    let mut incr = inc.then(|| IncState::new(dec, &entries, &active, listing));
    let (uid_map, gid_map) = (prep.uid_map.clone(), prep.gid_map.clone());
    let meta = MetaRules::new(
        mode.perms,
        mode.times,
        mode.opts.executability,
        &fopts,
        root,
    );
    let attr = AttrCtx {
        acls: fopts.preserve_acls,
        xstore,
        ids: Arc::new((uid_map, gid_map)),
        root,
    };
    let first = Arc::new(match (&top_parent, entries.first()) {
        (Some(_), Some(dot)) => {
            let dot = (dot.clone(), active[0]);
            SubList::with_head(start, dot, entries, active, top_parent)
        }
        _ => SubList::new(start, entries, active, top_parent),
    });
    let files = Arc::new(FileTable::default());
    files.push(Arc::clone(&first));
    if let Some(st) = &mut incr {
        st.next_start = first.next_start();
        st.live.push_back(first.start);
    }

    let (tx, rx) = channel();
    if inc {
        // A file the sender could not send is done as far as its list goes.
        let t = std::sync::Mutex::new(tx.clone());
        ins.reports.no_send_hook = Some(crate::conn::NoSendHook(Arc::new(move |n| {
            let _ = t
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(ToGen::Received(n));
        })));
    }
    let gen = {
        let dest = dest.clone();
        let neg = neg.clone();
        let fopts = fopts.clone();
        // --checksum-choice=none: no block sums to match with.
        let whole_file = mode.whole_file || neg.checksum == ChecksumAlgo::None;
        let gen_ctx = GenCtx {
            dest,
            neg,
            fopts,
            root,
            links,
            delete: mode.delete,
            events: mode.events.clone(),
            listing: mode.listing.clone(),
            whole_file,
            filter: mode.filter.clone(),
            table: Arc::clone(&files),
            inc,
            dry_run: mode.dry_run,
            attr: attr.clone(),
            delay_updates: mode.delay_updates,
            late_delete: mode.late_delete,
            daemon_filter: mode.daemon_filter.clone(),
            opts: mode.opts.clone(),
            warn_peer: !mode.read_stats,
            meta,
        };
        std::thread::spawn(move || generator_thread(outs, first, &gen_ctx, rx))
    };
    let recv = receiver(
        &mut ins,
        &files,
        incr.as_mut(),
        &mut prep,
        &dest,
        &neg,
        &fopts,
        &attr,
        mode.clone(),
        &tx,
    );
    let _ = tx.send(ToGen::Finish);
    let gen_res = gen
        .join()
        .map_err(|_| RemoteError::Usage("generator thread panicked".into()))?;
    // A generator failure is the root cause of whatever the receiver saw.
    let (gen_errors, bytes_written, deletions_skipped) = gen_res?;
    let mut summary = recv?;
    if deletions_skipped > 0 {
        // As rsync: a warning (the server's generator sent it to the
        // client already) and exit code 25.
        if mode.read_stats {
            eprintln!("{}", crate::opts::max_delete_warning(deletions_skipped));
        }
    }
    if mode.drain_eof {
        ins.drain_to_eof()?;
    }
    summary.errors.extend(gen_errors);
    summary.errors.extend(ins.reports.errors.iter().cloned());
    summary.protocol = neg.protocol;
    summary.checksum = neg.checksum.name().to_string();
    summary.files_total = match &incr {
        Some(st) => st.total,
        None => files.find(0).map_or(0, |(l, _)| l.entries.len()),
    };
    summary.io_error |= io_error | ins.reports.io_error;
    if deletions_skipped > 0 {
        summary.io_error |= arsync_proto::stats::IOERR_DEL_LIMIT;
    }
    summary.bytes_read = ins.total_read();
    summary.bytes_written = bytes_written;
    Ok(summary)
}

/// Reads one file list up to its end marker; returns the entries as
/// received and the sender's io_error flags.
fn read_list<R: Read>(
    ins: &mut InStream<R>,
    dec: &mut FlistDecoder,
) -> Result<(Vec<FileEntry>, i32)> {
    let mut entries = Vec::new();
    loop {
        match ins.decode(|r| dec.decode(r))? {
            FlistItem::Entry(e) => entries.push(e),
            FlistItem::End { io_error } => return Ok((entries, io_error)),
        }
    }
}

/// A received name without the leading slashes an `-R` list may carry
/// (`.` for a name of slashes only); other names unchanged.
fn relative_name(name: &[u8]) -> Vec<u8> {
    match arsync_proto::flist::strip_root(name) {
        Some([]) => b".".to_vec(),
        Some(rest) => rest.to_vec(),
        None => name.to_vec(),
    }
}

/// What the receiver does to each list that arrives: sort it, clear
/// duplicates, apply `--chmod`/`-m`, map owners, report it.
struct ListPrep {
    opts: TransferOpts,
    events: Option<EventSink>,
    user_rules: Vec<arsync_sync::options::IdMapRule>,
    group_rules: Vec<arsync_sync::options::IdMapRule>,
    uid_list: Vec<(u32, Vec<u8>)>,
    gid_list: Vec<(u32, Vec<u8>)>,
    uid_map: IdMap,
    gid_map: IdMap,
    names: IdNames,
    /// Incremental recursion: names come with the entries, not in lists.
    inc: bool,
    /// The next list is the first.
    first: bool,
    /// `-R`: names may start with `/`, stripped once the list is sorted.
    relative: bool,
}

impl ListPrep {
    fn prepare(&mut self, mut entries: Vec<FileEntry>) -> (Vec<FileEntry>, Vec<bool>) {
        sort_entries(&mut entries);
        let mut active = clear_duplicates(&entries);
        if self.relative {
            // As rsync's receiver: an absolute source path (`-R /a/b`) is
            // sent whole and lands below the destination.
            for e in &mut entries {
                e.name = relative_name(&e.name);
            }
        }
        // --chmod and -m on what arrived.
        self.opts.adjust_received(&mut entries, &mut active);
        if self.opts.list_only {
            // A listing: report the entries, then let the generator skip them all.
            for (e, a) in entries.iter().zip(active.iter_mut()) {
                // Incremental: a directory is listed when its own list
                // comes, as rsync's generator lists it.
                let later = self.inc && e.is_dir() && e.name != b".";
                if let (true, false, Some(ev)) = (*a, later, &self.events) {
                    ev.emit(&FileEvent::Listed { entry: e });
                }
                *a = false;
            }
        }
        if self.inc {
            // Each name is sent once, with the first entry of its id.
            let (mut new_u, mut new_g) = (false, false);
            for e in &entries {
                if let Some(n) = &e.user_name {
                    if !self.uid_list.iter().any(|(id, _)| *id == e.uid) {
                        self.uid_list.push((e.uid, n.clone()));
                        new_u = true;
                    }
                }
                if let Some(n) = &e.group_name {
                    if !self.gid_list.iter().any(|(id, _)| *id == e.gid) {
                        self.gid_list.push((e.gid, n.clone()));
                        new_g = true;
                    }
                }
            }
            let names = &self.names;
            if new_u {
                self.uid_map = IdMap::new(&self.uid_list, |n| names.uid_of(n));
            }
            if new_g {
                self.gid_map = IdMap::new(&self.gid_list, |n| names.gid_of(n));
            }
        }
        for e in &mut entries {
            e.uid = crate::opts::map_owner(
                &self.user_rules,
                e.uid,
                &self.uid_list,
                &self.uid_map,
                &self.names,
                true,
            );
            e.gid = crate::opts::map_owner(
                &self.group_rules,
                e.gid,
                &self.gid_list,
                &self.gid_map,
                &self.names,
                false,
            );
        }
        if let Some(ev) = &self.events {
            ev.emit(&FileEvent::List {
                entries: &entries,
                incremental: self.inc,
                first: self.first,
            });
        }
        self.first = false;
        (entries, active)
    }
}

/// A directory an incremental list may be sent for (rsync's `dir_flist`:
/// every directory received, in the order of the lists, sorted within
/// each).
#[derive(Debug)]
struct DirSlot {
    /// Its entry (as received, with `--chmod` and owners applied).
    entry: FileEntry,
    /// Not a duplicate: a list may come for it.
    active: bool,
    /// Its list came already.
    got_list: bool,
    /// Its contents are transferred (not `XMIT_NO_CONTENT_DIR`).
    content: bool,
}

/// The receiver's side of an incremental recursion.
struct IncState {
    /// Decodes every list (its compression state spans them all).
    dec: FlistDecoder,
    /// Every directory received so far.
    dirs: Vec<DirSlot>,
    /// Where the next list starts.
    next_start: i32,
    /// Lists received and not yet confirmed done by the sender.
    live: std::collections::VecDeque<i32>,
    /// Lists done, dropped once the writer committed every file handed
    /// to it before (the start, and the count of commits issued then).
    retiring: std::collections::VecDeque<(i32, u64)>,
    /// NDX_FLIST_EOF came.
    eof: bool,
    /// Entries received in all lists.
    total: usize,
}

impl IncState {
    fn new(dec: FlistDecoder, entries: &[FileEntry], active: &[bool], listing: bool) -> Self {
        let mut st = IncState {
            dec,
            dirs: Vec::new(),
            next_start: 1,
            live: std::collections::VecDeque::new(),
            retiring: std::collections::VecDeque::new(),
            eof: false,
            total: 0,
        };
        st.add_dirs(entries, active, listing);
        st
    }

    /// Adds the directories of a list that arrived (`listing`: every
    /// entry was made inactive for `--list-only`, duplicates or not).
    fn add_dirs(&mut self, entries: &[FileEntry], active: &[bool], listing: bool) {
        self.total += entries.len();
        for (e, a) in entries.iter().zip(active) {
            if e.is_dir() {
                self.dirs.push(DirSlot {
                    entry: e.clone(),
                    active: (*a || listing) && e.name != b".",
                    got_list: false,
                    content: !e.no_content_dir,
                });
            }
        }
    }

    /// Reads the list of directory `dir_ndx` (after its NDX_FLIST_OFFSET
    /// marker), refusing what rsync refuses: an index out of range, a
    /// directory that was cleared or already had its list, an entry that
    /// is not directly inside that directory.
    fn read_sublist<R: Read>(
        &mut self,
        ins: &mut InStream<R>,
        dir_ndx: i32,
        prep: &mut ListPrep,
    ) -> Result<(SubList, i32)> {
        let slot = usize::try_from(dir_ndx)
            .ok()
            .filter(|&d| d < self.dirs.len())
            .ok_or_else(|| {
                RemoteError::Refused(format!(
                    "invalid directory index {dir_ndx} for an incremental file list ({} directories known)",
                    self.dirs.len()
                ))
            })?;
        let d = &mut self.dirs[slot];
        if !d.active || d.got_list {
            return Err(RemoteError::Refused(format!(
                "refusing a file list for directory {dir_ndx} ({}): {}",
                String::from_utf8_lossy(&d.entry.name),
                if d.got_list {
                    "it had one already"
                } else {
                    "it was cleared"
                }
            )));
        }
        d.got_list = true;
        let (head, content) = (d.entry.clone(), d.content);
        let parent = head.name.clone();
        self.dec.start_list(self.next_start);
        let (entries, io_error) = read_list(ins, &mut self.dec)?;
        for e in &entries {
            let dir = match e.name.iter().rposition(|&b| b == b'/') {
                Some(i) => &e.name[..i],
                None => &b""[..],
            };
            if dir != parent.as_slice() {
                return Err(RemoteError::Refused(format!(
                    "invalid path from the sender: {} in the list of {}",
                    String::from_utf8_lossy(&e.name),
                    String::from_utf8_lossy(&parent)
                )));
            }
        }
        if let (true, Some(ev)) = (prep.opts.list_only, &prep.events) {
            ev.emit(&FileEvent::Listed { entry: &head });
        }
        let (entries, active) = prep.prepare(entries);
        self.add_dirs(&entries, &active, prep.opts.list_only);
        let list = SubList::with_head(
            self.next_start,
            (head, !prep.opts.list_only),
            entries,
            active,
            content.then_some(parent),
        );
        self.next_start = list.next_start();
        self.live.push_back(list.start);
        Ok((list, io_error))
    }
}

/// What the receiver sets on an entry, as rsync's `set_file_attrs` with
/// `dest_mode` decides: the source's permissions with `-p`; without it a
/// new entry gets the source's permissions masked by the umask (special
/// bits dropped) and an existing one keeps its own (with `-E` a regular
/// file takes the source's executability); the mtime only with `-t`;
/// owners only as root with `-o`/`-g`; atimes with `-U`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaRules {
    perms: bool,
    times: bool,
    executability: bool,
    /// Permission bits a new entry may have without `-p` (0777 & ~umask).
    default_perms: u32,
    uid: bool,
    gid: bool,
    atimes: bool,
}

impl MetaRules {
    /// The rules for `-p` (`perms`), `-t` (`times`), `-E` and the file-list options.
    pub(crate) fn new(
        perms: bool,
        times: bool,
        executability: bool,
        fopts: &FlistOptions,
        root: bool,
    ) -> Self {
        MetaRules {
            perms,
            times,
            executability: executability && !perms,
            default_perms: 0o777 & !crate::fsys::umask(),
            uid: root && fopts.preserve_uid,
            gid: root && fopts.preserve_gid,
            atimes: fopts.atimes,
        }
    }

    /// Whether the permissions of the entry already there matter (they
    /// are kept without `-p`).
    fn needs_existing(&self) -> bool {
        !self.perms
    }

    /// The permission bits for `e`; `existing` is the permission bits of
    /// the entry already at its name (rsync's `dest_mode`).
    fn perms_for(&self, e: &FileEntry, existing: Option<u32>) -> u32 {
        if self.perms {
            return e.mode & 0o7777;
        }
        match existing {
            Some(st) => {
                let mut m = st & 0o7777;
                if self.executability && e.file_type() == Some(FileType::Regular) {
                    if e.mode & 0o111 == 0 {
                        m &= !0o111;
                    } else if st & 0o111 == 0 {
                        m |= (m & 0o444) >> 2;
                    }
                }
                m
            }
            None => e.mode & 0o7777 & self.default_perms,
        }
    }

    /// The metadata for `e` at its place under `dest`: like
    /// [`MetaRules::meta`], but a new entry without `-p` takes its
    /// permission bits from the parent directory's default ACL if it has
    /// one (else the umask), as rsync's receiver does.
    fn meta_at(&self, dest: &DestRoot, e: &FileEntry, existing: Option<u32>) -> Meta {
        if self.perms || existing.is_some() {
            return self.meta(e, existing);
        }
        let parent = match e.name.iter().rposition(|&b| b == b'/') {
            Some(i) => &e.name[..i],
            None => &b"."[..],
        };
        let acl = dest
            .with_attr_target(parent, |t| Ok(attrs::default_acl_perms(t)))
            .ok()
            .flatten();
        match acl {
            Some(p) => MetaRules {
                default_perms: p,
                ..*self
            }
            .meta(e, None),
            None => self.meta(e, None),
        }
    }

    /// The metadata to apply to `e` (see [`MetaRules::perms_for`]).
    fn meta(&self, e: &FileEntry, existing: Option<u32>) -> Meta {
        Meta {
            perms: Some(self.perms_for(e, existing)),
            mtime: self.times.then_some((e.mtime, e.mtime_nsec)),
            uid: self.uid.then_some(e.uid),
            gid: self.gid.then_some(e.gid),
            atime: (self.atimes && !e.is_dir()).then_some(e.atime),
        }
    }
}

/// The whole-file checksum of a local regular file (for `-c`).
fn local_sum(dest: &DestRoot, name: &[u8], algo: ChecksumAlgo) -> Result<Option<Vec<u8>>> {
    let Some(f) = dest.open_basis(name)? else {
        return Ok(None);
    };
    let mut h = FileHasher::new(algo);
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = f
            .read_at(&mut buf, off)
            .map_err(|e| RemoteError::io("reading for -c", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Some(h.finish().as_bytes().to_vec()))
}

/// Bytes of basis read at once while computing block sums.
const SUM_READ: usize = 128 << 10;

/// Writes a transfer request for `ndx` with block sums of the basis (if any).
#[allow(clippy::too_many_arguments)]
fn request<W: Write>(
    outs: &mut OutStream<W>,
    codec: &mut NdxCodec,
    ndx: i32,
    basis: Option<&File>,
    redo: bool,
    neg: &Negotiated,
    xattr_request: Option<&[u32]>,
    dry_run: bool,
    how: RequestKind,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut item = ItemAttrs::transfer(ndx);
    if how.is_new.unwrap_or(basis.is_none()) {
        item.iflags |= iflags::IS_NEW;
    }
    item.basis_type = how.basis_type;
    item.iflags |= how.report;
    if xattr_request.is_some() {
        item.iflags |= iflags::REPORT_XATTR;
    }
    item.encode(codec, &mut buf)?;
    if dry_run {
        // rsync's dry run: the item only, no sums, no xattr request.
        outs.write(&buf)?;
        return Ok(());
    }
    if let Some(nums) = xattr_request {
        encode_request(nums, &mut buf);
    }
    let len = match basis {
        Some(f) => f
            .metadata()
            .map_err(|e| RemoteError::io("stat basis", e))?
            .len(),
        None => 0,
    };
    // No basis: an all-zero head, as rsync sends (whole-file transfer).
    let head = match basis {
        Some(_) => SumHead::for_file_with(len, redo, neg.checksum.digest_len(), how.block_size)?,
        None => SumHead::default(),
    };
    head.encode(&mut buf);
    outs.write(&buf)?;
    // --append: the head says how long the file is; no sums follow.
    if let (Some(f), true, false) = (basis, head.count > 0, how.append) {
        // Read the basis in large pieces (whole blocks) rather than one `pread` per block,
        // and queue the sums of each piece at once.
        let seed_fix = neg.md5_seed_first();
        let blen = head.blength as usize;
        let per_read = (SUM_READ / blen).max(1);
        let mut data = vec![0u8; per_read * blen];
        let s2 = head.s2length as usize;
        let mut entries = Vec::with_capacity(per_read * (4 + s2));
        let mut i = 0;
        while i < head.count {
            let k = (head.count - i).min(per_read as i32);
            let bytes: usize = (i..i + k).map(|j| head.block_len(j)).sum();
            read_basis(f, i as u64 * blen as u64, &mut data[..bytes])?;
            entries.clear();
            for block in data[..bytes].chunks(blen) {
                put_i32(&mut entries, weak_sum(block) as i32);
                entries.extend_from_slice(
                    &block_sum(neg.checksum, block, neg.seed, seed_fix).as_bytes()[..s2],
                );
            }
            outs.write(&entries)?;
            i += k;
        }
    }
    Ok(())
}

/// Details of a transfer request beyond the basis.
#[derive(Debug, Clone, Copy, Default)]
struct RequestKind {
    /// The item's basis type (`None`: the file itself).
    basis_type: Option<u8>,
    /// Whether the file is new here (`None`: when there is no basis).
    is_new: Option<bool>,
    /// `--append`: the sum head only.
    append: bool,
    /// rsync's change bits for the item (`ITEM_REPORT_*`).
    report: u16,
    /// `-B`: the block length of the sums (else derived from the size).
    block_size: Option<u32>,
}

/// What the generator thread needs besides the file list.
struct GenCtx {
    dest: DestRoot,
    neg: Negotiated,
    fopts: FlistOptions,
    root: bool,
    /// Hard-link (follower, leader) names.
    links: Vec<(Vec<u8>, Vec<u8>)>,
    /// `--delete`: remove local entries that are not in the list.
    delete: bool,
    /// Per-entry notifications.
    events: Option<EventSink>,
    /// A receiving server's `--list-only` lines for the client.
    listing: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
    /// `-W`: request whole files (no block sums of the basis).
    whole_file: bool,
    /// Rules protecting local entries from `--delete`.
    filter: Option<Arc<FilterRules>>,
    /// The lists held (each entry's "requested" flag is set before the
    /// request is written; the receiver refuses data nobody asked for).
    table: Arc<FileTable>,
    /// Incremental recursion: lists arrive while the transfer runs.
    inc: bool,
    /// `-n`: change nothing.
    dry_run: bool,
    /// ACLs and xattrs.
    attr: AttrCtx,
    /// `--delay-updates`.
    delay_updates: bool,
    /// `--delete-after`.
    late_delete: bool,
    /// A daemon module's rules.
    daemon_filter: Option<Arc<DaemonFilter>>,
    /// Quick-check variants (`-u`, `--existing`, `--size-only`, ...).
    opts: TransferOpts,
    /// A server's generator: warnings go to the client.
    warn_peer: bool,
    /// What metadata the options ask for.
    meta: MetaRules,
}

/// A `--partial-dir` file: `dir/<partial-dir>/base` in the destination,
/// or for an absolute partial directory `<partial-dir>/base` (one
/// directory for the files of every directory, as rsync has it).
#[derive(Debug, Clone)]
enum PartialFile {
    /// A name relative to the destination root.
    Inside(Vec<u8>),
    /// A path in an absolute `--partial-dir`.
    Outside(PathBuf),
}

impl PartialFile {
    /// The partial file of entry `name` for `--partial-dir` `dir`.
    fn of(name: &[u8], dir: &str) -> Option<PartialFile> {
        if !dir.starts_with('/') {
            return DestRoot::partial_name(name, dir).map(PartialFile::Inside);
        }
        let base = name
            .rsplit(|&b| b == b'/')
            .next()
            .filter(|b| !b.is_empty())?;
        if name == b"." || base == b"." || base == b".." {
            return None;
        }
        let base = std::ffi::OsStr::from_bytes(base);
        Some(PartialFile::Outside(std::path::Path::new(dir).join(base)))
    }

    /// True when it is there as a regular file.
    fn exists(&self, dest: &DestRoot) -> bool {
        match self {
            PartialFile::Inside(p) => dest
                .lstat(p)
                .is_ok_and(|m| m.is_some_and(|m| m.file_type == rustix::fs::FileType::RegularFile)),
            PartialFile::Outside(p) => std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()),
        }
    }

    /// Opens it as a delta basis.
    fn open(&self, dest: &DestRoot) -> Result<Option<File>> {
        match self {
            PartialFile::Inside(p) => dest.open_basis(p),
            PartialFile::Outside(p) => match File::open(p) {
                Ok(f) => Ok(Some(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(RemoteError::io(format!("opening {}", p.display()), e)),
            },
        }
    }

    /// Removes it (it served its purpose), and a relative partial
    /// directory if that is empty now, as rsync does (an absolute one
    /// stays, as with rsync).
    fn remove(&self, dest: &DestRoot) {
        match self {
            PartialFile::Inside(p) => {
                dest.remove_file(p);
                dest.remove_partial_dir(p);
            }
            PartialFile::Outside(p) => {
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// Where the writer keeps a cut-off transfer.
    fn keep(self) -> Keep {
        match self {
            PartialFile::Inside(p) => Keep::Named(p),
            PartialFile::Outside(p) => Keep::Outside(p),
        }
    }
}

impl GenCtx {
    /// A line rsync's generator prints from `-vv` on: a server sends it to
    /// the client (MSG_INFO), a client reports it in order with its output.
    fn info_line<W: Write>(&self, outs: &mut OutStream<W>, text: &[u8]) -> Result<()> {
        if self.warn_peer {
            // At once, as rsync's generator (a process of its own) sends it:
            // the client prints it while it sends the file asked for before.
            outs.message(MsgTag::Info, text)?;
            return outs.flush();
        }
        if let Some(ev) = &self.events {
            ev.emit(&FileEvent::Info {
                text,
                ordered: false,
            });
        }
        Ok(())
    }

    /// Notes that index `i` is asked for (before the request goes out).
    fn mark_requested(&self, i: usize) {
        if let Some((l, j)) = i32::try_from(i).ok().and_then(|n| self.table.find(n)) {
            l.requested[j].store(true, Ordering::Release);
        }
    }

    /// `--partial-dir`: `e`'s partial file if one is there.
    fn partial_file(&self, e: &FileEntry) -> Option<PartialFile> {
        let p = PartialFile::of(&e.name, self.opts.partial_dir.as_deref()?)?;
        p.exists(&self.dest).then_some(p)
    }

    /// The delta basis for `e` and its basis type: a `--partial-dir` file
    /// if there is one, else the file itself when it `exists` (nothing
    /// with `-W` or in a dry run).
    fn basis(&self, e: &FileEntry, exists: bool, dry: bool) -> Result<(Option<File>, Option<u8>)> {
        if let Some(p) = self.partial_file(e) {
            let f = match self.whole_file || dry {
                true => None,
                false => p.open(&self.dest)?,
            };
            return Ok((f, Some(crate::opts::BASIS_PARTIAL_DIR)));
        }
        match (self.whole_file || dry, exists) {
            (false, true) => Ok((self.dest.open_basis(&e.name)?, None)),
            _ => Ok((None, None)),
        }
    }

    /// Brings the xattrs of an existing entry that is not transferred in
    /// line (before its mode is set: a read-only mode would forbid it).
    /// When values must first come from the sender, sends an item with
    /// ITEM_REPORT_XATTR and the request; the receiver applies them.
    /// `extra` item flags (a new entry) go into that item; returns true
    /// when an item was sent.
    /// Sends rsync's item for an entry that is not transferred, when it is
    /// significant and no item went out for it yet (the sender logs and
    /// echoes it), and reports it to the events.
    fn report_item<W: Write>(
        &self,
        outs: &mut OutStream<W>,
        codec: &mut NdxCodec,
        i: usize,
        e: &FileEntry,
        report: u16,
        sent: bool,
    ) -> Result<()> {
        // A transfer's item is its request.
        let transfer = report & iflags::TRANSFER != 0;
        // -vv without %i: rsync's set_file_attrs names an entry that was
        // already there (not a directory): `NAME is uptodate`, or just the
        // name when its attributes changed.
        if self.opts.verbose >= 2
            && !self.opts.itemizing
            && !transfer
            && !e.is_dir()
            && report & (iflags::IS_NEW | iflags::LOCAL_CHANGE) == 0
        {
            let mut line = arsync_sync::report::escape_name(&e.name);
            if report & SIGNIFICANT_ITEM_FLAGS == 0 {
                line.extend_from_slice(b" is uptodate");
            }
            line.push(b'\n');
            self.info_line(outs, &line)?;
        }
        if transfer || (report & SIGNIFICANT_ITEM_FLAGS == 0 && !self.opts.itemize_all) {
            return Ok(());
        }
        if !sent {
            self.mark_requested(i);
            let mut b = Vec::new();
            ItemAttrs {
                ndx: i as i32,
                iflags: report,
                basis_type: None,
                xname: None,
            }
            .encode(codec, &mut b)?;
            outs.write(&b)?;
        }
        self.itemized(i, e, report);
        Ok(())
    }

    /// Reports rsync's item for entry `i` to the events.
    fn itemized(&self, i: usize, e: &FileEntry, report: u16) {
        if let Some(ev) = &self.events {
            ev.emit(&FileEvent::Item {
                ndx: i as i32,
                iflags: report,
                entry: e,
            });
        }
    }

    /// The change bits of an existing entry of the same kind (`changing`:
    /// it is replaced here); a missing one is new.
    fn local_changes(&self, e: &FileEntry, changing: bool) -> Result<u16> {
        self.local_changes_at(e, changing, None)
    }

    /// [`GenCtx::local_changes`] with the mtime the entry had before this
    /// run changed it (`mtime`), if it did.
    fn local_changes_at(
        &self,
        e: &FileEntry,
        changing: bool,
        mtime: Option<(i64, u32)>,
    ) -> Result<u16> {
        let Some((info, mut attrs)) = self.dest.lstat_attrs(&e.name).unwrap_or(None) else {
            return Ok(iflags::IS_NEW);
        };
        if let Some(t) = mtime {
            attrs.mtime = t;
        }
        let want = self.meta.meta(e, Some(attrs.perms));
        Ok(change_flags(e, Some((&info, &attrs)), &want, changing))
    }

    /// The item of a symlink about to be made: a link with another target
    /// (or another kind of entry) is replaced (`cL.c...`).
    fn symlink_changes(&self, e: &FileEntry, target: &[u8]) -> Result<u16> {
        let now = std::fs::read_link(self.dest.path(&e.name)?).ok();
        match now {
            Some(t) if t.as_os_str().as_bytes() == target => self.local_changes(e, false),
            _ => Ok(iflags::LOCAL_CHANGE | iflags::REPORT_CHANGE | self.local_changes(e, true)?),
        }
    }

    fn fix_xattrs<W: Write>(
        &self,
        outs: &mut OutStream<W>,
        codec: &mut NdxCodec,
        i: usize,
        e: &FileEntry,
        extra: u16,
    ) -> Result<bool> {
        let (Some(store), Some(xn), false) = (&self.attr.xstore, e.xattr_ndx, self.dry_run) else {
            return Ok(false);
        };
        let who = String::from_utf8_lossy(&e.name).into_owned();
        let root = self.attr.root;
        let local = self
            .dest
            .with_attr_target(&e.name, |t| attrs::read_xattrs(t, root, &who))?;
        let plan = store.plan(xn, &local)?;
        if !plan.differs {
            return Ok(false);
        }
        if plan.wait {
            self.mark_requested(i);
            let mut b = Vec::new();
            ItemAttrs {
                ndx: i as i32,
                iflags: iflags::REPORT_XATTR | extra,
                basis_type: None,
                xname: None,
            }
            .encode(codec, &mut b)?;
            encode_request(&plan.request, &mut b);
            outs.write(&b)?;
            return Ok(true);
        }
        self.dest
            .with_attr_target(&e.name, |t| store.apply(xn, t, &local, root, &who))?;
        Ok(false)
    }

    /// The xattr request for a file about to be transferred (`None`: the
    /// attributes already match, no ITEM_REPORT_XATTR).
    fn transfer_xattrs(&self, e: &FileEntry, exists: bool) -> Result<Option<Vec<u32>>> {
        let (Some(store), Some(xn), false) = (&self.attr.xstore, e.xattr_ndx, self.dry_run) else {
            return Ok(None);
        };
        let who = String::from_utf8_lossy(&e.name).into_owned();
        let root = self.attr.root;
        let local = match exists {
            true => self
                .dest
                .with_attr_target(&e.name, |t| attrs::read_xattrs(t, root, &who))?,
            false => Vec::new(),
        };
        let plan = store.plan(xn, &local)?;
        Ok(plan.differs.then_some(plan.request))
    }

    /// `--remove-source-files`: tells the sender entry `i` is safely here.
    fn success<W: Write>(&self, outs: &mut OutStream<W>, i: usize) -> Result<()> {
        if self.opts.remove_source_files && !self.dry_run {
            outs.message(MsgTag::Success, &(i as i32).to_le_bytes())?;
        }
        Ok(())
    }

    /// Applies ACLs to an existing entry (after its mode was set).
    fn fix_acls(&self, e: &FileEntry) -> Result<()> {
        // Without -A (or an ACL to set) nothing is opened.
        if self.dry_run || !self.attr.acls || e.acl.is_none() {
            return Ok(());
        }
        self.dest
            .with_attr_target(&e.name, |t| self.attr.apply_acls(t, e))
    }
}

/// What [`delete_extraneous`] needs of the session, the same for every
/// directory it runs in.
#[derive(Clone, Copy)]
struct Deletion<'a> {
    dest: &'a DestRoot,
    dry_run: bool,
    daemon: Option<&'a DaemonFilter>,
    events: Option<&'a EventSink>,
    filter: Option<&'a FilterRules>,
    opts: &'a TransferOpts,
}

/// Deletes, in every transferred directory that exists locally, the entries
/// the sender did not list (with `only`, in that directory alone: an
/// incremental list holds the whole contents of its directory and
/// nothing below). Returns rsync's deletion counts.
fn delete_extraneous(
    files: &[FileEntry],
    active: &[bool],
    only: Option<&[u8]>,
    how: &Deletion<'_>,
    errors: &mut Vec<String>,
    limit: &mut DeleteLimit,
) -> Result<[i32; 5]> {
    let Deletion {
        dest,
        dry_run,
        daemon,
        events,
        filter,
        opts,
    } = *how;
    let names: std::collections::HashSet<&[u8]> = files
        .iter()
        .zip(active)
        .filter(|(_, a)| **a)
        .map(|(e, _)| e.name.as_slice())
        .collect();
    let mut counts = [0i32; 5];
    // Per-directory merge files are read from the destination's own tree.
    let mut perdir = filter.map(|f| crate::dirrules::DestRules::new(f, dest.root()));
    let scan: Vec<&[u8]> = match only {
        Some(d) => vec![d],
        None => files
            .iter()
            .zip(active)
            .filter(|(e, a)| **a && e.is_dir() && !e.no_content_dir)
            .map(|(e, _)| e.name.as_slice())
            .collect(),
    };
    for dir in scan {
        let Some(children) = dest.list_dir(dir)? else {
            continue;
        };
        let filter = match perdir.as_mut() {
            Some(p) => Some(p.at(dir)?),
            None => None,
        };
        // The extraneous entries in the order rsync deletes them: its list
        // order (files, then directories) reversed, so a --max-delete limit
        // spares the same ones and -v lists them as rsync does.
        let mut extra = Vec::new();
        for c in children {
            let full = if dir == b"." {
                c
            } else {
                let mut f = dir.to_vec();
                f.push(b'/');
                f.extend_from_slice(&c);
                f
            };
            if names.contains(full.as_slice()) {
                continue;
            }
            let is_dir = dest
                .lstat(&full)?
                .is_some_and(|m| m.file_type == rustix::fs::FileType::Directory);
            extra.push((is_dir, full));
        }
        extra.sort();
        for (is_dir, full) in extra.into_iter().rev() {
            // Files a module's rules hide are never deleted.
            if daemon.is_some_and(|d| dest.path(&full).is_ok_and(|p| d.excluded(&p, is_dir))) {
                continue;
            }
            if filter.is_some_and(|f| f.protected_from_delete(&full, is_dir)) {
                continue;
            }
            if !limit.allow(dest, &full)? {
                continue;
            }
            // Someone listening hears of each entry below a directory too
            // (also in a dry run, which deletes nothing).
            let done = match events {
                Some(ev) => opts.delete_reporting(dest, &full, is_dir, dry_run, &mut |n| {
                    ev.emit(&FileEvent::Deleted { name: n })
                }),
                None if dry_run => continue,
                None => opts.delete(dest, &full),
            };
            match done {
                Ok(n) => {
                    for (t, k) in counts.iter_mut().zip(n) {
                        *t += k;
                    }
                }
                Err(err) => errors.push(format!("{}: {err}", String::from_utf8_lossy(&full))),
            }
        }
    }
    Ok(counts)
}

/// Sends the names collected for MSG_DELETED (see `report_deletions`).
fn send_deleted<W: Write>(
    outs: &mut OutStream<W>,
    deleted: &std::sync::Mutex<Vec<Vec<u8>>>,
) -> Result<()> {
    let names = std::mem::take(&mut *deleted.lock().unwrap_or_else(|p| p.into_inner()));
    for mut n in names {
        // rsync marks a directory with a trailing NUL.
        if n.last() == Some(&b'/') {
            n.pop();
            n.push(0);
        }
        outs.message(MsgTag::Deleted, &n)?;
    }
    Ok(())
}

/// The late deletion pass never runs at the end of phase 0.
fn unreachable_late_delete() -> Result<Option<[i32; 5]>> {
    Err(RemoteError::Refused(
        "late deletion scheduled before the redo phase".into(),
    ))
}

/// Writes one group of end-of-run steps; `late_delete` runs the deletion
/// pass when the schedule says so.
fn run_steps<W: Write>(
    outs: &mut OutStream<W>,
    codec: &mut NdxCodec,
    steps: &[GenStep],
    del_counts: &mut Option<[i32; 5]>,
    mut late_delete: impl FnMut() -> Result<Option<[i32; 5]>>,
) -> Result<()> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            GenStep::Done => codec.encode(NDX_DONE, &mut out),
            GenStep::DelStats => {
                if let Some(c) = *del_counts {
                    encode_del_stats(codec, c, &mut out);
                }
            }
            GenStep::LateDelete => {
                // Deletions may take a while: send what is ready first.
                outs.write(&out)?;
                out.clear();
                outs.flush()?;
                *del_counts = late_delete()?;
            }
        }
    }
    outs.write(&out)?;
    outs.flush()
}

/// When the generator hands queued requests to the transport: after the first, then after
/// twice as many each time up to [`FlushPacer::MAX`], so the sender starts at once and later
/// requests still go out in batches.
#[derive(Debug)]
struct FlushPacer {
    pending: u32,
    next: u32,
}

impl Default for FlushPacer {
    fn default() -> Self {
        FlushPacer {
            pending: 0,
            next: 1,
        }
    }
}

impl FlushPacer {
    const MAX: u32 = 256;

    fn requested<W: Write>(&mut self, outs: &mut OutStream<W>) -> Result<()> {
        self.pending += 1;
        if self.pending >= self.next {
            outs.flush()?;
            self.pending = 0;
            self.next = (self.next * 2).min(Self::MAX);
        }
        Ok(())
    }
}

/// Runs the generator; on failure tells the peer (an error text and
/// MSG_ERROR_EXIT, as rsync does) so it stops instead of waiting for us.
fn generator_thread<W: Write>(
    mut outs: OutStream<W>,
    first: Arc<SubList>,
    ctx: &GenCtx,
    rx: Receiver<ToGen>,
) -> Result<(Vec<String>, u64, u64)> {
    match generator(&mut outs, first, ctx, rx) {
        Ok(v) => Ok(v),
        Err(e) => {
            let text = format!("arsync generator: {e}\n");
            let _ = outs.message(MsgTag::Error, text.as_bytes());
            let _ = outs.message(MsgTag::ErrorExit, &e.exit_code().code().to_le_bytes());
            let _ = outs.flush();
            Err(e)
        }
    }
}

/// A list the generator went through whose files are not all in yet
/// (incremental recursion).
struct OpenList {
    list: Arc<SubList>,
    /// Transfers requested and not yet received.
    left: usize,
}

/// Where the generator's lists come from, and which are still open.
struct ListFlow {
    open: std::collections::VecDeque<OpenList>,
    /// The next list to go through.
    next: Option<Arc<SubList>>,
    /// No more lists will come.
    eof: bool,
}

impl ListFlow {
    /// The open list holding index `ndx`.
    fn open_for(&mut self, ndx: i32) -> Option<&mut OpenList> {
        self.open.iter_mut().find(|o| o.list.slot(ndx).is_some())
    }

    /// Ends (NDX_DONE) every list at the front whose files are all in,
    /// except the one being worked on; returns how many ended.
    fn retire<W: Write>(
        &mut self,
        outs: &mut OutStream<W>,
        codec: &mut NdxCodec,
        working: bool,
    ) -> Result<usize> {
        let mut n = 0;
        while self.open.front().is_some_and(|o| o.left == 0) && (self.open.len() > 1 || !working) {
            self.open.pop_front();
            let mut b = Vec::new();
            codec.encode(NDX_DONE, &mut b);
            outs.write(&b)?;
            n += 1;
        }
        if n > 0 {
            outs.flush()?;
        }
        Ok(n)
    }
}

fn generator<W: Write>(
    outs: &mut OutStream<W>,
    first: Arc<SubList>,
    ctx: &GenCtx,
    rx: Receiver<ToGen>,
) -> Result<(Vec<String>, u64, u64)> {
    // The whole list (without incremental recursion) for the passes over
    // all of it.
    let whole = match ctx.inc {
        true => Arc::new(SubList::new(0, Vec::new(), Vec::new(), None)),
        false => Arc::clone(&first),
    };
    let files: &[FileEntry] = &whole.entries;
    let active: &[bool] = &whole.active;
    let (dest, neg, fopts, root) = (&ctx.dest, &ctx.neg, &ctx.fopts, ctx.root);
    send_listing(outs, ctx)?;
    if ctx.opts.verbose >= 2 {
        // rsync's generator, at its start (-vv: debug=flist); --append
        // always uses the delta.
        let line: &[u8] = match ctx.whole_file && ctx.opts.append == 0 {
            true => b"delta-transmission disabled for local transfer or --whole-file\n",
            false => b"delta-transmission enabled\n",
        };
        ctx.info_line(outs, line)?;
    }
    let followers: std::collections::HashSet<&[u8]> =
        ctx.links.iter().map(|(f, _)| f.as_slice()).collect();
    let mut codec = NdxCodec::new();
    let mut errors = Vec::new();
    let mut dirs = Vec::new();
    let mut pacer = FlushPacer::default();
    let mut limit = DeleteLimit::new(ctx.opts.max_delete);
    // Directory times before the early deletions change them: rsync
    // itemizes a directory before deleting in it.
    let dir_times: std::collections::HashMap<&[u8], (i64, u32)> =
        match ctx.delete && !ctx.late_delete && !ctx.inc {
            true => files
                .iter()
                .zip(active)
                .filter(|(e, a)| **a && e.is_dir())
                .filter_map(|(e, _)| {
                    let (_, attrs) = dest.lstat_attrs(&e.name).ok()??;
                    Some((e.name.as_slice(), attrs.mtime))
                })
                .collect(),
            false => std::collections::HashMap::new(),
        };
    // A receiving server tells a client that asked (-v, -i) what it
    // deleted (MSG_DELETED), as rsync's does.
    let deleted: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let del_events = match (ctx.opts.report_deletions, &ctx.events) {
        (true, None) => {
            let d = Arc::clone(&deleted);
            Some(EventSink::new(move |e| {
                if let FileEvent::Deleted { name } = e {
                    d.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(name.to_vec());
                }
            }))
        }
        _ => ctx.events.clone(),
    };
    let deletion = Deletion {
        dest,
        dry_run: ctx.dry_run,
        daemon: ctx.daemon_filter.as_deref(),
        events: del_events.as_ref(),
        filter: ctx.filter.as_deref(),
        opts: &ctx.opts,
    };
    let mut del_counts = if ctx.delete && !ctx.late_delete && !ctx.inc {
        Some(delete_extraneous(
            files,
            active,
            None,
            &deletion,
            &mut errors,
            &mut limit,
        )?)
    } else if ctx.delete && !ctx.late_delete {
        // Incremental: counted as each directory's list comes.
        Some([0; 5])
    } else {
        None
    };
    send_deleted(outs, &deleted)?;
    // The parent directory of the last regular file looked at.
    let mut parents = crate::fsys::ParentCache::default();
    // A directory hidden by the daemon's rules: its contents follow it.
    let mut hidden_dir: Option<Vec<u8>> = None;
    // A directory the options leave alone (`--existing`, ...): its contents follow it.
    let mut skip_dir: Option<Vec<u8>> = None;
    // Incremental recursion: directories whose contents (coming in later
    // lists) are left alone or hidden.
    let mut skipped_dirs: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut flow = ListFlow {
        open: std::collections::VecDeque::new(),
        next: Some(first),
        eof: !ctx.inc,
    };
    while let Some(list) = flow.next.take() {
        let files: &[FileEntry] = &list.entries;
        let active: &[bool] = &list.active;
        let mut list_requests = 0usize;
        // The directory these entries are in (incremental lists).
        let in_dir = match (list.head, files.first()) {
            (true, Some(h)) => Some(h.name.clone()),
            (_, f) => f.and_then(|e| {
                e.name
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map(|k| e.name[..k].to_vec())
            }),
        };
        let list_skipped = ctx.inc && in_dir.as_ref().is_some_and(|d| skipped_dirs.contains(d));
        if list_skipped {
            for e in files.iter().filter(|e| e.is_dir()) {
                skipped_dirs.insert(e.name.clone());
            }
        }
        // The deletion comes right after the directory itself (the head).
        let delete_at = usize::from(list.head);
        for j in 0..=files.len() {
            if j == delete_at {
                if let (true, false, Some(p), false) = (
                    ctx.inc && ctx.delete && !ctx.late_delete,
                    list_skipped,
                    &list.parent,
                    ctx.opts.list_only,
                ) {
                    // rsync's delete_in_dir as the list of a directory comes.
                    let n = delete_extraneous(
                        files,
                        active,
                        Some(p),
                        &deletion,
                        &mut errors,
                        &mut limit,
                    )?;
                    if let Some(c) = &mut del_counts {
                        for (t, k) in c.iter_mut().zip(n) {
                            *t += k;
                        }
                    }
                    send_deleted(outs, &deleted)?;
                }
            }
            let Some(e) = files.get(j) else { break };
            if !active[j] || list_skipped {
                continue;
            }
            let i = list.start as usize + j;
            if let Some(h) = &skip_dir {
                if e.name.starts_with(h) && e.name.get(h.len()) == Some(&b'/') {
                    continue;
                }
                skip_dir = None;
            }
            // -u, --existing, --ignore-existing, --min-size, --max-size, --safe-links.
            if ctx.opts.selects() {
                let local = dest.lstat(&e.name).unwrap_or(None);
                if ctx.opts.skip(e, local.as_ref()).is_some() {
                    if e.is_dir() {
                        // Nothing below a directory left alone is handled either.
                        skip_dir = Some(e.name.clone());
                        if ctx.inc {
                            skipped_dirs.insert(e.name.clone());
                        }
                    }
                    continue;
                }
            }
            if let Some(d) = &ctx.daemon_filter {
                if let Some(h) = &hidden_dir {
                    if e.name.starts_with(h) && e.name.get(h.len()) == Some(&b'/') {
                        continue;
                    }
                    hidden_dir = None;
                }
                if d.excluded(&dest.path(&e.name)?, e.is_dir()) {
                    if e.is_dir() {
                        hidden_dir = Some(e.name.clone());
                        if ctx.inc {
                            skipped_dirs.insert(e.name.clone());
                        }
                    }
                    // As rsync's daemon: an error for the client (exit 23).
                    let text = format!(
                        "ERROR: daemon refused to receive {} \"{}\"\n",
                        if e.is_dir() { "directory" } else { "file" },
                        String::from_utf8_lossy(&e.name)
                    );
                    outs.message(MsgTag::ErrorXfer, text.as_bytes())?;
                    errors.push(text.trim_end().to_string());
                    continue;
                }
            }
            if ctx.inc && e.is_dir() && !e.no_content_dir && !(list.head && j == 0) {
                // Done when its own list comes (rsync makes it only then
                // too, or early with -t; the metadata is set at the end).
                continue;
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let step: Result<()> = (|| {
                let dry = ctx.dry_run;
                // rsync's generator reports entries it creates (other than
                // files, which are requested) with an item the sender logs
                // (`cd+++++++++ dir/` in its -i output) and echoes.
                let created = match e.file_type() {
                    Some(FileType::Dir) => true,
                    Some(FileType::Symlink) => fopts.preserve_links,
                    Some(FileType::Device) | Some(FileType::Special) => {
                        fopts.preserve_devices && (root || e.file_type() == Some(FileType::Special))
                    }
                    _ => false,
                } && e.name != b"."
                    && match dest.lstat(&e.name) {
                        Ok(m) => m.is_none(),
                        Err(_) => dry,
                    };
                let new_flags = match created {
                    true => iflags::LOCAL_CHANGE | iflags::IS_NEW,
                    false => 0,
                };
                // Set when an item for this entry went out already.
                let mut sent = false;
                // rsync's item for the entry (its `itemize`): what changes here.
                let mut report = new_flags;
                // Without -p the permissions of what is there are kept: those
                // of a directory for a directory, of any other entry otherwise.
                let before = match ctx.meta.needs_existing() && !dry {
                    true => dest
                        .lstat(&e.name)?
                        .filter(|m| (m.file_type == rustix::fs::FileType::Directory) == e.is_dir()),
                    false => None,
                }
                .map(|m| m.perms);
                match e.file_type() {
                    Some(FileType::Dir) => {
                        if e.name == b"." && ctx.opts.dest_created {
                            report = iflags::LOCAL_CHANGE | iflags::IS_NEW;
                        } else if !created {
                            let before = dir_times.get(e.name.as_slice()).copied();
                            report = ctx.local_changes_at(e, false, before)?;
                        }
                        if !dry {
                            dest.ensure_dir(&e.name)?;
                            sent = ctx.fix_xattrs(outs, &mut codec, i, e, new_flags)?;
                        }
                        dirs.push((e.clone(), before));
                    }
                    Some(FileType::Symlink) if fopts.preserve_links && !dry => {
                        let target = e.link_target.as_deref().unwrap_or_default();
                        if !created {
                            report = ctx.symlink_changes(e, target)?;
                        }
                        dest.make_symlink(&e.name, target)?;
                        sent = ctx.fix_xattrs(outs, &mut codec, i, e, new_flags)?;
                        dest.set_meta(&e.name, &ctx.meta.meta_at(dest, e, before))?;
                        ctx.success(outs, i)?;
                    }
                    Some(FileType::Device) | Some(FileType::Special)
                        if fopts.preserve_devices
                            && !dry
                            && (root || e.file_type() == Some(FileType::Special)) =>
                    {
                        dest.make_node(&e.name, e.mode, e.rdev)?;
                        sent = ctx.fix_xattrs(outs, &mut codec, i, e, new_flags)?;
                        dest.set_meta(&e.name, &ctx.meta.meta_at(dest, e, before))?;
                        ctx.fix_acls(e)?;
                    }
                    Some(FileType::Regular) if followers.contains(e.name.as_slice()) => {
                        // Linked to its leader once everything is received.
                    }
                    Some(FileType::Regular) => {
                        // In a dry run a parent may not exist yet: treat as missing.
                        let (existing, attrs) = match dest.lstat_attrs_cached(&mut parents, &e.name)
                        {
                            Ok(m) => m.unzip(),
                            Err(_) if dry => (None, None),
                            Err(err) => return Err(err),
                        };
                        if !ctx.opts.alt_dirs.is_empty() {
                            // --compare-dest, --copy-dest, --link-dest.
                            let owners = (root && fopts.preserve_uid, root && fopts.preserve_gid);
                            let exists = existing.is_some();
                            let hit = ctx.opts.alt_match(dest, e, exists, owners, |p| {
                                Ok(crate::walk::file_checksum(p, neg.file_checksum)?.as_slice()
                                    == e.checksum.as_deref().unwrap_or_default())
                            })?;
                            let put = |r: std::io::Result<()>| {
                                r.map_err(|err| {
                                    RemoteError::io(format!("{name} from a basis dir"), err)
                                })
                            };
                            if exists && !dry {
                                // An exact match elsewhere replaces the file here
                                // (--compare-dest: removes it), as rsync does.
                                let here = dest.path(&e.name)?;
                                match &hit {
                                    Some(AltMatch::Link(p)) if crate::opts::same_file(p, &here) => {
                                        return Ok(());
                                    }
                                    Some(AltMatch::Link(_)) | Some(AltMatch::Skip) => {
                                        put(std::fs::remove_file(&here))?;
                                    }
                                    _ => {}
                                }
                            }
                            match hit {
                                Some(AltMatch::Skip) => return Ok(()),
                                Some(_) if dry => return Ok(()),
                                Some(AltMatch::Link(p)) => {
                                    put(std::fs::hard_link(&p, dest.path(&e.name)?))?;
                                    ctx.success(outs, i)?;
                                    return Ok(());
                                }
                                Some(AltMatch::Copy(p)) => {
                                    put(std::fs::copy(&p, dest.path(&e.name)?).map(|_| ()))?;
                                    dest.set_meta(&e.name, &ctx.meta.meta_at(dest, e, None))?;
                                    ctx.success(outs, i)?;
                                    return Ok(());
                                }
                                None => {}
                            }
                        }
                        if let Some(m) = existing {
                            // The quick check (-c compares content sums instead).
                            let same = ctx.opts.unchanged(e, &m, || {
                                Ok(local_sum(dest, &e.name, neg.file_checksum)?.as_deref()
                                    == e.checksum.as_deref())
                            })?;
                            if same {
                                // Quick check passed: only fix metadata (and
                                // drop a --partial-dir file, as rsync does).
                                if let (Some(p), false) = (ctx.partial_file(e), dry) {
                                    p.remove(dest);
                                }
                                // After a quick check (not -c's content check)
                                // an mtime in the same second, or within
                                // --modify-window, stays as it is (rsync's
                                // same_mtime without extra accuracy); a negative
                                // window compares nanoseconds too.
                                let keep_time = e.checksum.is_none()
                                    && ctx.opts.modify_window.is_none_or(|w| w >= 0)
                                    && ctx.opts.same_mtime(e.mtime, m.mtime);
                                let meta_of = |perms| {
                                    let mut want = ctx.meta.meta(e, Some(perms));
                                    if keep_time {
                                        want.mtime = None;
                                    }
                                    want
                                };
                                let report = attrs.map_or(0, |a| {
                                    let want = meta_of(a.perms);
                                    change_flags(e, Some((&m, &a)), &want, false)
                                });
                                if !dry {
                                    sent = ctx.fix_xattrs(outs, &mut codec, i, e, 0)?;
                                    // Only what differs is changed (most often nothing).
                                    let meta = meta_of(m.perms);
                                    if !attrs.is_some_and(|a| meta.is_applied(&a)) {
                                        dest.set_meta(&e.name, &meta)?;
                                    }
                                    ctx.fix_acls(e)?;
                                    ctx.success(outs, i)?;
                                }
                                return ctx.report_item(outs, &mut codec, i, e, report, sent);
                            }
                        }
                        // --append: a file as long as the source's is left alone.
                        if ctx.opts.append > 0
                            && existing.as_ref().is_some_and(|m| {
                                m.file_type == rustix::fs::FileType::RegularFile
                                    && m.size >= e.size.max(0) as u64
                            })
                        {
                            return Ok(());
                        }
                        let (mut basis, mut basis_type) = ctx.basis(e, existing.is_some(), dry)?;
                        if let (true, true, false, None) =
                            (ctx.opts.inplace, ctx.opts.backup, dry, basis_type)
                        {
                            // --inplace -b: the old file is copied to its backup
                            // first, which then serves as the basis.
                            if existing
                                .as_ref()
                                .is_some_and(|m| m.file_type == rustix::fs::FileType::RegularFile)
                            {
                                let copy = ctx.opts.copy_backup(dest, &e.name)?;
                                if basis.is_some() {
                                    basis = Some(File::open(&copy).map_err(|err| {
                                        RemoteError::io(format!("opening {}", copy.display()), err)
                                    })?);
                                }
                                basis_type = Some(crate::opts::BASIS_BACKUP);
                            }
                        }
                        let xreq = ctx.transfer_xattrs(e, existing.is_some())?;
                        let want = ctx.meta.meta(e, attrs.map(|a| a.perms));
                        let local = existing.as_ref().zip(attrs.as_ref());
                        report = iflags::TRANSFER | change_flags(e, local, &want, true);
                        ctx.itemized(i, e, report);
                        ctx.mark_requested(i);
                        request(
                            outs,
                            &mut codec,
                            i as i32,
                            basis.as_ref(),
                            false,
                            neg,
                            xreq.as_deref(),
                            dry,
                            RequestKind {
                                basis_type,
                                is_new: Some(existing.is_none()),
                                append: ctx.opts.append > 0,
                                report: report & !(iflags::TRANSFER | iflags::IS_NEW),
                                block_size: ctx.opts.block_size,
                            },
                        )?;
                        pacer.requested(outs)?;
                        if !dry {
                            list_requests += 1;
                        }
                    }
                    _ => {}
                }
                ctx.report_item(outs, &mut codec, i, e, report, sent)
            })();
            match step {
                Ok(()) => {}
                Err(err @ RemoteError::Io { .. }) => errors.push(format!("{name}: {err}")),
                Err(err) => return Err(err),
            }
        }
        if !ctx.inc {
            break;
        }
        outs.flush()?;
        flow.open.push_back(OpenList {
            list: Arc::clone(&list),
            left: list_requests,
        });
        drop(list);
        // Wait for the next list (or the end of them), ending the lists whose
        // files are all in, as rsync's generator does.
        while flow.next.is_none() && !flow.eof {
            flow.retire(outs, &mut codec, true)?;
            let Ok(msg) = rx.recv() else { break };
            if !gen_message(outs, &mut codec, ctx, &mut flow, msg)? {
                return Ok((errors, outs.total_written(), limit.skipped));
            }
        }
    }
    // Incremental: the last lists end once their files are in; the last
    // NDX_DONE ends phase 0.
    while ctx.inc && !flow.open.is_empty() {
        flow.retire(outs, &mut codec, false)?;
        if flow.open.is_empty() {
            break;
        }
        let Ok(msg) = rx.recv() else { break };
        if !gen_message(outs, &mut codec, ctx, &mut flow, msg)? {
            return Ok((errors, outs.total_written(), limit.skipped));
        }
    }
    send_listing(outs, ctx)?;
    let sched = GeneratorSchedule::new(neg.protocol, ctx.delay_updates, ctx.late_delete)?;
    let mut done = Vec::new();
    for _ in 0..sched.after_phase0.saturating_sub(usize::from(ctx.inc)) {
        codec.encode(NDX_DONE, &mut done);
    }
    outs.write(&done)?;
    outs.flush()?;
    loop {
        match rx.recv() {
            Ok(ToGen::Redo(ndx)) => redo(outs, &mut codec, ctx, ndx)?,
            Ok(ToGen::Received(_)) => {}
            Ok(ToGen::List(_)) | Ok(ToGen::ListsEnd) => {
                return Err(RemoteError::Refused(
                    "a file list after the end of the lists".into(),
                ))
            }
            Ok(ToGen::Phase0Done) => {
                run_steps(
                    outs,
                    &mut codec,
                    &sched.at_phase0_done,
                    &mut del_counts,
                    unreachable_late_delete,
                )?;
            }
            Ok(ToGen::RedoDone) => {
                run_steps(
                    outs,
                    &mut codec,
                    &sched.at_redo_done,
                    &mut del_counts,
                    || {
                        if !ctx.delete {
                            return Ok(None);
                        }
                        delete_extraneous(files, active, None, &deletion, &mut errors, &mut limit)
                            .map(Some)
                    },
                )?;
                send_deleted(outs, &deleted)?;
            }
            Ok(ToGen::Success(ndx)) => {
                outs.message(MsgTag::Success, &ndx.to_le_bytes())?;
            }
            Ok(ToGen::Finish) | Err(_) => break,
        }
    }
    for (follower, leader) in ctx.links.iter().filter(|_| !ctx.dry_run) {
        match dest.hard_link(leader, follower) {
            Err(err) => errors.push(format!("{}: {err}", String::from_utf8_lossy(follower))),
            // --remove-source-files: a linked follower is in place too.
            Ok(()) if ctx.opts.remove_source_files => {
                if let Some((l, j)) = ctx.table.find_name(follower) {
                    ctx.success(outs, l.start as usize + j)?;
                }
            }
            Ok(()) => {}
        }
    }
    // Directory metadata last, deepest first, so nothing touches them afterwards.
    for (e, before) in dirs.iter().rev().filter(|_| !ctx.dry_run) {
        let before = *before;
        let r = dest
            .set_dir_meta(&e.name, &ctx.meta.meta_at(dest, e, before))
            .and_then(|()| ctx.fix_acls(e));
        if let Err(err) = r {
            errors.push(format!("{}: {err}", String::from_utf8_lossy(&e.name)));
        }
    }
    if limit.skipped > 0 && ctx.warn_peer {
        let text = format!("{}\n", crate::opts::max_delete_warning(limit.skipped));
        outs.message(MsgTag::Warning, text.as_bytes())?;
    }
    let mut bye = Vec::new();
    for _ in 0..sched.goodbye {
        codec.encode(NDX_DONE, &mut bye);
    }
    outs.write(&bye)?;
    outs.flush()?;
    outs.flush()?;
    Ok((errors, outs.total_written(), limit.skipped))
}

/// Requests index `ndx` again with full-length sums (its checksum did not match).
fn redo<W: Write>(
    outs: &mut OutStream<W>,
    codec: &mut NdxCodec,
    ctx: &GenCtx,
    ndx: i32,
) -> Result<()> {
    let Some((l, j)) = ctx.table.find(ndx) else {
        return Err(RemoteError::Refused(format!("redo of unknown index {ndx}")));
    };
    let e = &l.entries[j];
    let exists = ctx.dest.lstat(&e.name)?.is_some();
    let (basis, basis_type) = ctx.basis(e, exists, false)?;
    request(
        outs,
        codec,
        ndx,
        basis.as_ref(),
        true,
        &ctx.neg,
        None,
        false,
        RequestKind {
            basis_type,
            is_new: Some(!exists),
            append: false,
            report: 0,
            block_size: ctx.opts.block_size,
        },
    )?;
    outs.flush()
}

/// Takes one message from the receiver while incremental lists are
/// still coming; false when the receiver stopped.
/// Sends the `--list-only` lines gathered so far to the client (a receiving
/// server's listing), one MSG_INFO frame per line.
fn send_listing<W: Write>(outs: &mut OutStream<W>, ctx: &GenCtx) -> Result<()> {
    let Some(queue) = &ctx.listing else {
        return Ok(());
    };
    let text = std::mem::take(&mut *queue.lock().unwrap_or_else(|p| p.into_inner()));
    // One line a message: rsync's client escapes a newline inside one.
    for line in text.split_inclusive(|&b| b == b'\n') {
        outs.message(MsgTag::Info, line)?;
    }
    if !text.is_empty() {
        outs.flush()?;
    }
    Ok(())
}

fn gen_message<W: Write>(
    outs: &mut OutStream<W>,
    codec: &mut NdxCodec,
    ctx: &GenCtx,
    flow: &mut ListFlow,
    msg: ToGen,
) -> Result<bool> {
    // The listing of a list comes before the list itself.
    send_listing(outs, ctx)?;
    match msg {
        ToGen::List(l) => flow.next = Some(l),
        ToGen::ListsEnd => flow.eof = true,
        ToGen::Received(ndx) => {
            if let Some(o) = flow.open_for(ndx) {
                o.left = o.left.saturating_sub(1);
            }
        }
        // A file that failed its check is asked for again at once (its
        // list stays open until it is in).
        ToGen::Redo(ndx) => redo(outs, codec, ctx, ndx)?,
        ToGen::Success(ndx) => {
            outs.message(MsgTag::Success, &ndx.to_le_bytes())?;
            // A transferred file's confirmation ends it for its list (a
            // symlink's comes from the generator itself, not from here).
            if let Some(o) = flow.open_for(ndx) {
                o.left = o.left.saturating_sub(1);
            }
        }
        ToGen::Phase0Done | ToGen::RedoDone => {
            return Err(RemoteError::Refused(
                "the sender ended phase 0 before every file list was done".into(),
            ))
        }
        ToGen::Finish => return Ok(false),
    }
    Ok(true)
}

/// The commit step of a verified file, run on the writer thread: holes
/// (`-S`), xattrs (before the mode, which may forbid them), mode, owner and
/// times, ACLs, then the rename (or, with `--delay-updates`, the rename at
/// the end of the redo phase).
struct CommitStep {
    files: Arc<FileTable>,
    /// Commits done (see the receiver's `issued`).
    committed: Arc<std::sync::atomic::AtomicU64>,
    meta: MetaRules,
    attr: AttrCtx,
    sparse: bool,
    delay_updates: bool,
    events: Option<EventSink>,
    /// `--delay-updates`: (index, temporary file) renamed at the phase end.
    delayed: Vec<(usize, DelayedFile)>,
    /// `-b` and friends: the old file is backed up before it is replaced.
    opts: TransferOpts,
    /// `--remove-source-files`: each file in place is confirmed to the sender.
    success: Option<Sender<ToGen>>,
    /// Incremental lists: a confirmation also ends the file for its list.
    inc: bool,
}

impl CommitStep {
    fn set_attrs(&self, dest: &DestRoot, tmp: &TempFile, e: &FileEntry) -> Result<()> {
        let root = self.attr.root;
        let fd = Target::Fd(std::os::fd::AsFd::as_fd(&tmp.file));
        if self.sparse {
            punch_zero_blocks(&tmp.file)?;
        }
        if let (Some(store), Some(xn)) = (&self.attr.xstore, e.xattr_ndx) {
            let who = String::from_utf8_lossy(&e.name).into_owned();
            // Values left abbreviated matched the old file.
            let basis = match dest.lstat(&e.name)? {
                Some(m) if m.file_type == rustix::fs::FileType::RegularFile => {
                    dest.with_attr_target(&e.name, |t| attrs::read_xattrs(t, root, &who))?
                }
                _ => Vec::new(),
            };
            store.apply(xn, fd, &basis, root, &who)?;
        }
        // Without -p an existing file keeps its permissions.
        let existing = match (self.meta.needs_existing(), tmp.in_place) {
            // Written in place: what the file had before.
            (true, Some(prior)) => prior,
            (true, None) => dest
                .lstat(&e.name)?
                .filter(|m| m.file_type == rustix::fs::FileType::RegularFile)
                .map(|m| m.perms),
            (false, _) => None,
        };
        DestRoot::set_temp_meta(tmp, &self.meta.meta_at(dest, e, existing))?;
        self.attr.apply_acls(fd, e)
    }

    /// Applies the attributes and renames the file into place.
    fn commit_file(
        &mut self,
        dest: &DestRoot,
        tmp: TempFile,
        ndx: usize,
        name: &[u8],
        literal: u64,
        matched: u64,
    ) -> Result<()> {
        let found = i32::try_from(ndx).ok().and_then(|n| self.files.find(n));
        self.committed.fetch_add(1, Ordering::AcqRel);
        let Some((list, j)) = found else {
            DestRoot::remove_temp(tmp);
            return Err(RemoteError::Usage(format!("no file list entry {ndx}")));
        };
        let e = &list.entries[j];
        if let Err(err) = self.set_attrs(dest, &tmp, e) {
            DestRoot::remove_temp(tmp);
            return Err(err);
        }
        if self.delay_updates {
            self.delayed.push((ndx, DestRoot::delay(tmp)));
            return Ok(());
        }
        // A file written in place was backed up (copied) before.
        let backup = match tmp.in_place {
            Some(_) => Ok(false),
            None => self.opts.make_backup(dest, name),
        };
        if let Err(err) = backup {
            DestRoot::remove_temp(tmp);
            return Err(err);
        }
        dest.commit(tmp, name)?;
        self.confirm(ndx);
        self.emit(name, literal, matched);
        Ok(())
    }

    /// `--remove-source-files`: tells the sender this file is in place.
    fn confirm(&self, ndx: usize) {
        if let Some(tx) = &self.success {
            let _ = tx.send(ToGen::Success(ndx as i32));
        }
    }

    fn emit(&self, name: &[u8], literal: u64, matched: u64) {
        if let Some(ev) = &self.events {
            ev.emit(&FileEvent::Transferred {
                name,
                literal,
                matched,
            });
        }
    }
}

impl Committer for CommitStep {
    fn keep_partial(&mut self, tmp: &TempFile, name: &[u8], in_partial_dir: bool) {
        // As rsync: the permissions (and owner); in a --partial-dir no
        // time, else mtime 0 so that it stands out (and -u never keeps it).
        let Some((list, j)) = self.files.find_name(name) else {
            return;
        };
        let e = &list.entries[j];
        let mut meta = self.meta.meta(e, tmp.in_place.flatten());
        meta.mtime = (!in_partial_dir).then_some((0, 0));
        meta.atime = None;
        let _ = DestRoot::set_temp_meta(tmp, &meta);
    }

    fn commit(
        &mut self,
        dest: &DestRoot,
        tmp: TempFile,
        ndx: usize,
        name: &[u8],
        literal: u64,
        matched: u64,
    ) -> Result<()> {
        let r = self.commit_file(dest, tmp, ndx, name, literal, matched);
        if let (true, Err(_), Some(tx)) = (self.inc, &r, &self.success) {
            // Incremental with --remove-source-files: the confirmation
            // ends the file for its list; a failure must end it too.
            let _ = tx.send(ToGen::Received(ndx as i32));
        }
        r
    }

    fn end_phase(&mut self, dest: &DestRoot) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, d) in std::mem::take(&mut self.delayed) {
            let Some((list, j)) = i32::try_from(i).ok().and_then(|n| self.files.find(n)) else {
                errors.push(format!("no file list entry {i}"));
                continue;
            };
            let name = &list.entries[j].name;
            let backed = self.opts.make_backup(dest, name);
            match backed.and_then(|_| dest.commit_delayed(&d, name)) {
                Ok(()) => {
                    self.confirm(i);
                    self.emit(name, 0, 0);
                }
                Err(err) => errors.push(format!("{}: {err}", String::from_utf8_lossy(name))),
            }
        }
        errors
    }
}

#[allow(clippy::too_many_arguments)]
fn receiver<R: Read>(
    ins: &mut InStream<R>,
    files: &Arc<FileTable>,
    mut incr: Option<&mut IncState>,
    prep: &mut ListPrep,
    dest: &DestRoot,
    neg: &Negotiated,
    fopts: &FlistOptions,
    attr: &AttrCtx,
    mode: ReceiveMode,
    tx: &Sender<ToGen>,
) -> Result<TransferSummary> {
    let root = attr.root;
    let tokens = mode.codec.clone();
    let mut codec = NdxCodec::new();
    let mut phase = 0u32;
    let mut summary = TransferSummary::default();
    let mut redo_sent = std::collections::HashSet::new();
    // Commits handed to the writer, and (on the writer) done: a finished
    // list is dropped once the writer is past its files.
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut issued = 0u64;
    let step = CommitStep {
        files: Arc::clone(files),
        committed: Arc::clone(&committed),
        meta: MetaRules::new(mode.perms, mode.times, mode.opts.executability, fopts, root),
        attr: attr.clone(),
        sparse: mode.sparse,
        delay_updates: mode.delay_updates,
        events: mode.events.clone(),
        delayed: Vec::new(),
        opts: mode.opts.clone(),
        success: mode.opts.remove_source_files.then(|| tx.clone()),
        inc: incr.is_some(),
    };
    let mut bufs = RecvBuffers {
        writer: FileWriter::for_machine(dest.clone(), step),
        out: DataBuf::default(),
        window: BasisWindow::default(),
        progress: EventSink::ticker(mode.events.as_ref()),
    };
    loop {
        if let Some(st) = incr.as_deref_mut() {
            // Drop the finished lists the writer is done with.
            let c = committed.load(Ordering::Acquire);
            while st.retiring.front().is_some_and(|&(_, at)| at <= c) {
                if let Some((start, _)) = st.retiring.pop_front() {
                    files.remove(start);
                }
            }
        }
        match ins.decode(|r| decode_item(&mut codec, r))? {
            NdxItem::Done if incr.as_ref().is_some_and(|st| st.live.len() > 1 || !st.eof) => {
                // Incremental: the sender is done with the first list.
                let st = incr.as_deref_mut().expect("checked above");
                let Some(start) = st.live.pop_front() else {
                    return Err(RemoteError::Refused(
                        "NDX_DONE with no file list open".into(),
                    ));
                };
                st.retiring.push_back((start, issued));
                if st.live.is_empty() {
                    return Err(RemoteError::Refused(
                        "the sender ended the last file list before NDX_FLIST_EOF".into(),
                    ));
                }
            }
            NdxItem::FlistEof if incr.is_some() => {
                let st = incr.as_deref_mut().expect("checked above");
                if st.eof {
                    return Err(RemoteError::Refused("NDX_FLIST_EOF twice".into()));
                }
                st.eof = true;
                let _ = tx.send(ToGen::ListsEnd);
            }
            NdxItem::Other(n) if incr.is_some() && n <= NDX_FLIST_OFFSET => {
                let st = incr.as_deref_mut().expect("checked above");
                if st.eof || phase > 0 {
                    return Err(RemoteError::Refused(format!(
                        "a file list (marker {n}) after the end of the lists"
                    )));
                }
                let (list, io_error) = st.read_sublist(ins, NDX_FLIST_OFFSET - n, prep)?;
                summary.io_error |= io_error;
                let list = Arc::new(list);
                files.push(Arc::clone(&list));
                let _ = tx.send(ToGen::List(list));
            }
            NdxItem::Done => {
                if let Some(st) = incr.as_deref_mut() {
                    // The last list ends phase 0.
                    if let Some(start) = st.live.pop_front() {
                        st.retiring.push_back((start, issued));
                    }
                }
                phase += 1;
                if phase == 1 {
                    let _ = tx.send(ToGen::Phase0Done);
                }
                if phase == 2 {
                    // Every file is on disk (and delayed ones renamed)
                    // before the generator's deletion pass.
                    summary.errors.extend(bufs.writer.end_phase()?);
                    let _ = tx.send(ToGen::RedoDone);
                }
                if phase > MAX_PHASE {
                    break;
                }
            }
            NdxItem::DelStats(_) => {}
            NdxItem::File(a) => {
                let ndx = a.ndx;
                let transfer = a.iflags & iflags::TRANSFER != 0;
                let found = files.find(ndx);
                let ok = found.as_ref().is_some_and(|(l, j)| {
                    l.active[*j]
                        && (!transfer || l.entries[*j].file_type() == Some(FileType::Regular))
                        && l.requested[*j].load(Ordering::Acquire)
                });
                let (Some((list, j)), true) = (found, ok) else {
                    return Err(RemoteError::Refused(format!(
                        "unexpected file index {ndx} (iflags {:#x})",
                        a.iflags
                    )));
                };
                let e = &list.entries[j];
                let xstore = match (&attr.xstore, e.xattr_ndx) {
                    (Some(s), Some(xn)) => Some((s, xn)),
                    _ => None,
                };
                if let (Some((store, xn)), true, false) =
                    (xstore, a.iflags & iflags::REPORT_XATTR != 0, mode.dry_run)
                {
                    let max = store.max_num(xn)?;
                    let values = ins.decode(|r| decode_reply(r, max))?;
                    store.fill(xn, values)?;
                }
                if !transfer {
                    // Values for an entry that is not transferred.
                    // (An item without xattr values is the echo of a report.)
                    if let (Some((store, xn)), false, true) =
                        (xstore, mode.dry_run, a.iflags & iflags::REPORT_XATTR != 0)
                    {
                        let who = String::from_utf8_lossy(&e.name).into_owned();
                        let r = dest.with_attr_target(&e.name, |t| {
                            let local = attrs::read_xattrs(t, root, &who)?;
                            store.apply(xn, t, &local, root, &who)
                        });
                        if let Err(err) = r {
                            summary.errors.push(format!("{who}: {err}"));
                        }
                    }
                    continue;
                }
                if mode.dry_run {
                    if let Some(ev) = &mode.events {
                        ev.emit(&FileEvent::Transferred {
                            name: &e.name,
                            literal: 0,
                            matched: 0,
                        });
                    }
                    summary.files_transferred += 1;
                    continue;
                }
                // A --partial-dir file from an earlier run as the basis.
                let partial_basis = match (a.basis_type, &mode.opts.partial_dir) {
                    (Some(crate::opts::BASIS_PARTIAL_DIR), Some(d)) => PartialFile::of(&e.name, d),
                    _ => None,
                };
                // --inplace -b: the generator's copy of the old file; an
                // absolute --partial-dir: the file there.
                let backup_basis = match (a.basis_type, &partial_basis) {
                    (Some(crate::opts::BASIS_BACKUP), _) if mode.opts.backup => {
                        Some(mode.opts.backup_path(dest, &e.name)?)
                    }
                    (_, Some(PartialFile::Outside(p))) => Some(p.clone()),
                    _ => None,
                };
                let how = FileRecv {
                    in_place: mode.opts.inplace,
                    // A file asked for again comes whole (incremental lists
                    // redo in phase 0: rsync's receiver goes by the file).
                    append: if phase == 0 && !redo_sent.contains(&ndx) {
                        mode.opts.append
                    } else {
                        0
                    },
                    backup_basis,
                    basis: match &partial_basis {
                        Some(PartialFile::Inside(p)) => p.clone(),
                        _ => e.name.clone(),
                    },
                    // Written in place, a cut-off file stays as it is
                    // (rsync's --inplace clears --partial).
                    keep: match (&mode.opts.partial_dir, mode.opts.inplace) {
                        (_, true) => None,
                        (Some(d), false) => PartialFile::of(&e.name, d).map(PartialFile::keep),
                        (None, false) => mode.partial.then(|| Keep::Named(e.name.clone())),
                    },
                    preallocate: mode.opts.preallocate,
                };
                let (good, lit, matched) =
                    receive_file(ins, e, dest, neg.checksum, &tokens, &how, &mut bufs)?;
                summary.literal_bytes += lit;
                summary.matched_bytes += matched;
                if let (true, Some(p)) = (good, &partial_basis) {
                    // The partial file served its purpose.
                    p.remove(dest);
                }
                if !good {
                    bufs.writer.discard()?;
                    if phase == 0 && redo_sent.insert(ndx) {
                        // (Not for a second time: insert is false then.)
                        summary.files_redone += 1;
                        let _ = tx.send(ToGen::Redo(ndx));
                    } else {
                        return Err(RemoteError::Verification(
                            String::from_utf8_lossy(&e.name).into_owned(),
                        ));
                    }
                } else {
                    // --fsync: the data is on disk before the rename.
                    if mode.opts.fsync {
                        bufs.writer.sync()?;
                    }
                    // The writer applies attributes and renames into place.
                    bufs.writer.commit(ndx as usize, lit, matched)?;
                    issued += 1;
                    summary.files_transferred += 1;
                    // (With --remove-source-files its confirmation does,
                    // once it is in place: MSG_SUCCESS goes before the
                    // list's end, as rsync's generator sends it.)
                    if incr.is_some() && !mode.opts.remove_source_files {
                        let _ = tx.send(ToGen::Received(ndx));
                    }
                }
            }
            other => {
                return Err(RemoteError::Refused(format!(
                    "unexpected index marker {other:?}{}",
                    match incr {
                        Some(_) => "",
                        None => " without incremental recursion",
                    }
                )))
            }
        }
    }
    // Every file is written and committed before the generator's final
    // steps (hard links, directory times) run.
    summary.errors.extend(bufs.writer.finish()?);
    if mode.read_stats {
        summary.stats = ins.decode(Stats::decode_as_receiver)?;
    }
    if neg.protocol >= 31 {
        // The server sender echoes our deletion stats before the last NDX_DONE.
        let mut item = ins.decode(|r| decode_item(&mut codec, r))?;
        while let NdxItem::DelStats(_) = item {
            item = ins.decode(|r| decode_item(&mut codec, r))?;
        }
        match item {
            NdxItem::Done => {}
            other => {
                return Err(RemoteError::Refused(format!(
                    "expected the final NDX_DONE, got {other:?}{}",
                    join_errors(&ins.reports.errors)
                )))
            }
        }
    }
    Ok(summary)
}

/// Bytes of received file data collected before one write.
const WRITE_BATCH: usize = crate::filewriter::BUFFER_SIZE;

/// Bytes of basis file read at once for matched blocks.
const BASIS_WINDOW: usize = 256 << 10;

/// The receiver's writer and buffers reused across received files.
#[derive(Debug)]
struct RecvBuffers {
    /// Writes, commits and discards the received files.
    writer: FileWriter<CommitStep>,
    /// File data collected for the next write (a buffer of the writer's).
    out: DataBuf,
    /// Where matched blocks are read from.
    window: BasisWindow,
    /// `--progress`: the data written of the file being received.
    progress: Option<ProgressTicker>,
}

/// A window of the basis file: matched blocks are mostly consecutive, so
/// one large `pread` serves many of them.
#[derive(Debug, Default)]
struct BasisWindow {
    window: Vec<u8>,
    window_start: u64,
    window_len: usize,
}

impl BasisWindow {
    /// The basis bytes `[off, off + n)`, reading a new window if needed.
    fn get<'a>(&'a mut self, f: &File, off: u64, n: usize) -> Result<&'a [u8]> {
        let inside = off >= self.window_start
            && off + n as u64 <= self.window_start + self.window_len as u64;
        if !inside {
            let size = BASIS_WINDOW.max(n);
            if self.window.len() < size {
                self.window.resize(size, 0);
            }
            let mut got = 0;
            while got < size {
                match f.read_at(&mut self.window[got..size], off + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(RemoteError::io("reading the basis file", e)),
                }
            }
            self.window_start = off;
            self.window_len = got;
            if got < n {
                self.window_len = 0;
                return Err(RemoteError::io(
                    "reading the basis file",
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
        }
        let at = (off - self.window_start) as usize;
        Ok(&self.window[at..at + n])
    }
}

/// How one file is received.
#[derive(Debug)]
struct FileRecv {
    /// `--inplace`: written into the file itself.
    in_place: bool,
    /// `--append`/`--append-verify` in effect (not in the redo phase).
    append: u8,
    /// The basis file's name (the file itself, or a `--partial-dir` file).
    basis: Vec<u8>,
    /// The basis is this file outside the tree instead: the backup copy
    /// (`--inplace -b`) or the file in an absolute `--partial-dir`.
    backup_basis: Option<PathBuf>,
    /// Where a cut-off transfer is kept (`--partial`, `--partial-dir`).
    keep: Option<Keep>,
    /// `--preallocate`: reserve the file's length before writing.
    preallocate: bool,
}

/// Receives one file's data and hands it to the writer (which creates the
/// temporary file). Returns whether the whole-file checksum matched, and
/// the literal/matched byte counts; the caller then commits or discards.
/// On an error the file is aborted (with `partial`, what arrived is kept
/// as the next run's basis, its mtime left alone, as rsync does).
fn receive_file<R: Read>(
    ins: &mut InStream<R>,
    e: &FileEntry,
    dest: &DestRoot,
    algo: ChecksumAlgo,
    codec: &TokenCodec,
    how: &FileRecv,
    bufs: &mut RecvBuffers,
) -> Result<(bool, u64, u64)> {
    let dlen = algo.digest_len();
    let head = ins.decode(|r| SumHead::decode(r, dlen))?;
    let basis = match (&how.backup_basis, head.count > 0) {
        (_, false) => None,
        (Some(p), true) => Some(
            File::open(p)
                .map_err(|err| RemoteError::io(format!("opening {}", p.display()), err))?,
        ),
        (None, true) => dest.open_basis(&how.basis)?,
    };
    // A new basis: forget the old window.
    bufs.window.window_len = 0;
    let in_place = how.in_place || how.append > 0;
    bufs.writer.begin(&e.name, in_place)?;
    if how.preallocate && e.size > 0 {
        bufs.writer.preallocate(e.size as u64)?;
    }
    let mut offset = 0u64;
    if let Some(t) = &mut bufs.progress {
        t.start();
    }
    let res = receive_data(
        ins,
        e,
        &head,
        basis.as_ref(),
        algo,
        codec,
        how,
        bufs,
        &mut offset,
    );
    match &res {
        Ok(_) if in_place => bufs.writer.set_len(offset)?,
        Ok(_) => {}
        Err(_) => {
            // Hand over what was verified-so-far data, then keep or drop it.
            let rest = std::mem::take(&mut bufs.out);
            let _ = bufs
                .writer
                .data(offset, rest)
                .and_then(|()| bufs.writer.abort(how.keep.clone()));
        }
    }
    res
}

/// The token loop of [`receive_file`]; `offset` is how much was handed
/// to the writer.
#[allow(clippy::too_many_arguments)]
fn receive_data<R: Read>(
    ins: &mut InStream<R>,
    e: &FileEntry,
    head: &SumHead,
    basis: Option<&File>,
    algo: ChecksumAlgo,
    codec: &TokenCodec,
    how: &FileRecv,
    bufs: &mut RecvBuffers,
    offset: &mut u64,
) -> Result<(bool, u64, u64)> {
    let dlen = algo.digest_len();
    let mut hasher = FileHasher::new(algo);
    let (mut lit, mut matched) = (0u64, 0u64);
    if bufs.out.capacity() == 0 {
        bufs.out = bufs.writer.buffer();
    }
    if how.append > 0 {
        // --append: the data goes after what the file has; with
        // --append-verify that part counts in the whole-file checksum.
        *offset = crate::opts::append_offset(head);
        if how.append > 1 && *offset > 0 {
            let Some(bf) = basis else {
                return Err(RemoteError::Refused(format!(
                    "--append-verify with no basis file for {}",
                    String::from_utf8_lossy(&e.name)
                )));
            };
            let mut at = 0u64;
            while at < *offset {
                let n = (*offset - at).min(BASIS_WINDOW as u64) as usize;
                hasher.update(bufs.window.get(bf, at, n)?);
                at += n as u64;
            }
        }
    }
    // --progress: the file's start is reported (as rsync's receiver
    // does before its first token).
    if let Some(t) = &mut bufs.progress {
        t.tick(&e.name, *offset, e.size.max(0) as u64);
    }
    // --inplace: a block at the offset it is written to is already there.
    let in_place = how.in_place || how.append > 0;
    // Data goes to the writer in batches of about WRITE_BATCH bytes.
    let write_out = |bufs: &mut RecvBuffers, offset: &mut u64| -> Result<()> {
        if bufs.out.is_empty() {
            return Ok(());
        }
        let n = bufs.out.len() as u64;
        let next = bufs.writer.buffer();
        bufs.writer
            .data(*offset, std::mem::replace(&mut bufs.out, next))?;
        *offset += n;
        if let Some(t) = &mut bufs.progress {
            t.tick(&e.name, *offset, e.size.max(0) as u64);
        }
        Ok(())
    };
    let block = |i: u32,
                 bufs: &mut RecvBuffers,
                 hasher: &mut FileHasher,
                 offset: &mut u64|
     -> Result<u64> {
        let Some(bf) = basis else {
            return Err(RemoteError::Refused(format!(
                "block match with no basis file for {}",
                String::from_utf8_lossy(&e.name)
            )));
        };
        let n = head.block_len(i as i32);
        let at = i as u64 * head.blength as u64;
        if in_place && at == *offset + bufs.out.len() as u64 {
            write_out(bufs, offset)?;
            hasher.update(bufs.window.get(bf, at, n)?);
            *offset += n as u64;
            return Ok(n as u64);
        }
        let data = bufs.window.get(bf, at, n)?;
        hasher.update(data);
        bufs.out.extend_from_slice(data);
        Ok(n as u64)
    };
    if codec.is_compressed() {
        let mut dec = codec.source(head.count as u32)?;
        loop {
            match ins.decode(|r| dec.decode(r))? {
                Token::Literal(b) => {
                    hasher.update(&b);
                    bufs.out.extend_from_slice(&b);
                    lit += b.len() as u64;
                }
                Token::Block(i) => {
                    matched += block(i, bufs, &mut hasher, offset)?;
                    // Classic zlib: the block goes into the decompressor's history.
                    if let (true, Some(bf)) = (dec.sees_blocks(), basis) {
                        let at = i as u64 * head.blength as u64;
                        dec.see_block(bufs.window.get(bf, at, head.block_len(i as i32))?)?;
                    }
                }
                Token::End => break,
            }
            if bufs.out.len() >= WRITE_BATCH {
                write_out(bufs, offset)?;
            }
        }
    } else {
        // Plain tokens, decoded here so literal data goes from the raw
        // input straight into the writer's batch (one copy) and is
        // hashed there.
        loop {
            // The token header, and (when it is literal data) its first
            // bytes, read straight into the batch where possible.
            let room = WRITE_BATCH.saturating_sub(bufs.out.len());
            let spare = bufs.out.spare_mut(room.min(MAX_OUT_FRAME));
            let (t, first) = ins.int_and_data(spare)?;
            if first > 0 {
                let at = bufs.out.len();
                bufs.out.advance(first);
                hasher.update(&bufs.out[at..]);
                lit += first as u64;
                if bufs.out.len() >= WRITE_BATCH {
                    write_out(bufs, offset)?;
                }
            }
            if t == 0 {
                break;
            }
            if t > 0 {
                let mut left = t as usize - first;
                while left > 0 {
                    let room = WRITE_BATCH.saturating_sub(bufs.out.len());
                    let at = bufs.out.len();
                    let k = left.min(room);
                    if k == 0 {
                        write_out(bufs, offset)?;
                        continue;
                    }
                    let n = ins.take_into(bufs.out.spare_mut(k))?;
                    bufs.out.advance(n);
                    hasher.update(&bufs.out[at..]);
                    left -= n;
                    lit += n as u64;
                    if bufs.out.len() >= WRITE_BATCH {
                        write_out(bufs, offset)?;
                    }
                }
            } else {
                let i = -(t as i64) - 1;
                if i >= head.count as i64 {
                    return Err(RemoteError::Proto(arsync_proto::Error::malformed(
                        "token",
                        format!("block index {i} but the basis has {} blocks", head.count),
                    )));
                }
                matched += block(i as u32, bufs, &mut hasher, offset)?;
                if bufs.out.len() >= WRITE_BATCH {
                    write_out(bufs, offset)?;
                }
            }
        }
    }
    write_out(bufs, offset)?;
    let theirs = ins.decode(|r| Ok(r.bytes(dlen)?.to_vec()))?;
    Ok((
        hasher.finish().as_bytes() == theirs.as_slice(),
        lit,
        matched,
    ))
}
