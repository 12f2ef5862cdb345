//! The sending client (push): starts `rsync --server` on the destination,
//! sends the file list, then answers each checksum request with a delta
//! (block matching against the receiver's sums) and the whole-file checksum.
//! Input is pumped on a helper thread so the peer's output is always drained
//! while we write.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use arsync_proto::checksum::{ChecksumAlgo, FileHasher};
use arsync_proto::compress::TokenCodec;
use arsync_proto::flist::FlistOptions;
use arsync_proto::flist::{encode_id_list, FileEntry, FileType, FlistEncoder};
use arsync_proto::handshake::Negotiated;
use arsync_proto::handshake::PROTOCOL_VERSION;
use arsync_proto::item::{decode_item, iflags, NdxItem};
use arsync_proto::matcher::{DeltaEncoder, DeltaStats};
use arsync_proto::mux::MsgTag;
use arsync_proto::ndx::{NdxCodec, NDX_DONE, NDX_FLIST_EOF, NDX_FLIST_OFFSET};
use arsync_proto::phase::{goodbye_reads, SenderDoneAction, SenderPhases};
use arsync_proto::stats::{Stats, IOERR_GENERAL, IOERR_VANISHED};
use arsync_proto::sums::{SumDecoder, SumHead};
use arsync_proto::token::CHUNK_SIZE;

use arsync_proto::xattr::{decode_request, encode_reply};

use crate::args::ServerCommand;
use crate::attrs::{self, Target};
use crate::conn::{InStream, OutStream};
use crate::daemon::DaemonTarget;
use crate::error::{RemoteError, Result};
use crate::events::{EventSink, FileEvent};
use crate::fsys::read_chunk;
use crate::ids::IdNames;
use crate::pull::{filter_from_wire, TransferSummary};
use crate::session::{flist_options, start_client, token_compression};
use crate::transport::{ChildTransport, IoClock, Limits, OnExpiry, PumpedReader, Watchdog, Who};
use crate::walk::{build_list_with, IncWalk, LocalList, SourceSpec};

/// What to push and where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The server command (`server_sends` must be false).
    pub command: ServerCommand,
    /// Local source: a directory or a file.
    pub source: PathBuf,
    /// For a directory source: send its contents (rsync's `SRC/`, the
    /// default) rather than the directory itself under its name (`SRC`).
    pub contents: bool,
    /// Highest protocol we offer.
    pub protocol: i32,
    /// Print the peer's messages to stderr.
    pub echo_messages: bool,
    /// Per-entry notifications.
    pub events: Option<EventSink>,
    /// Connect to an rsync daemon instead of running `command` (only its
    /// flags and caps are used then).
    pub daemon: Option<DaemonTarget>,
    /// Filter rules in rsync's wire form (`- *.o`, `+ dir/`, `P keep`):
    /// applied to the local walk and sent to a deleting receiver (bytes:
    /// a pattern need not be UTF-8).
    pub filters: Vec<Vec<u8>>,
    /// Further sources after `source` (rsync's `SRC1 SRC2 ... DEST`).
    pub more_sources: Vec<SourceSpec>,
    /// `--files-from` with a local list: the names below `source` (an
    /// empty list sends an empty file list, as rsync does); they replace
    /// `source` and `more_sources`.
    pub files_from: Option<Vec<Vec<u8>>>,
    /// The client's own rules, when they differ from `filters` (rules
    /// kept local, `-C`'s, per-directory merge rules): used for the walk
    /// instead of `filters`.
    pub local_filter: Option<arsync_filter::FilterRules>,
    /// `--stop-at` / `--stop-after`: when the client stops (exit 30).
    pub stop_at: Option<std::time::SystemTime>,
}

impl PushOptions {
    /// Push the contents of `source` to `remote_path` with `-logDtpr`.
    pub fn new(source: impl Into<PathBuf>, remote_path: impl Into<std::ffi::OsString>) -> Self {
        PushOptions {
            command: ServerCommand::archive(false, remote_path),
            source: source.into(),
            contents: true,
            protocol: PROTOCOL_VERSION,
            echo_messages: true,
            events: None,
            daemon: None,
            filters: Vec::new(),
            more_sources: Vec::new(),
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

/// Whether a push sends its list incrementally when the receiver agrees
/// (compat flag `i`): with `-r`, one source, and options the receiving
/// side takes incrementally (see [`crate::args::receiver_allows_inc_recurse`];
/// arsync's sender also keeps whole lists for `--files-from` and
/// `--remove-source-files`), unless `--no-inc-recursive`.
pub fn push_offers_inc_recurse(opts: &PushOptions) -> bool {
    let c = &opts.command;
    !c.server_sends
        && c.inc_recurse
        && c.caps.contains('v')
        && opts.more_sources.is_empty()
        && c.opts.files_from.is_none()
        && !c.opts.remove_source_files
        && crate::args::receiver_allows_inc_recurse(
            &c.flags,
            c.delete && c.delete_after,
            c.delay_updates,
            c.opts.prune_empty_dirs,
        )
}

/// `opts` with `i` among the capabilities offered when the push can send
/// an incremental list.
fn with_inc_offer(opts: &PushOptions) -> std::borrow::Cow<'_, PushOptions> {
    match push_offers_inc_recurse(opts) && !opts.command.caps.contains('i') {
        true => {
            let mut o = opts.clone();
            o.command.caps = format!("i{}", o.command.caps);
            std::borrow::Cow::Owned(o)
        }
        false => std::borrow::Cow::Borrowed(opts),
    }
}

/// Runs a push over a spawned transport.
pub fn push(opts: &PushOptions) -> Result<TransferSummary> {
    if opts.command.server_sends {
        return Err(RemoteError::Usage(
            "push needs a server command without --sender".into(),
        ));
    }
    let opts = &*with_inc_offer(opts);
    let clock = IoClock::new(Who::Sender);
    if let Some(t) = &opts.daemon {
        let (r, w) = t.connect()?;
        let fd = w.as_fd().try_clone_to_owned().ok();
        let watch = Watchdog::start(&clock, opts.limits(), fd, OnExpiry::Exit { kill: None });
        let clock = watch.as_ref().map(|_| clock);
        return run_push_piped(opts, PumpedReader::new(r), w, None, clock);
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
    // File data can be spliced into the pipe to the transport.
    let pipe = stdin.as_fd().try_clone_to_owned().ok();
    let kill = Some(child.id());
    let fd = stdin.as_fd().try_clone_to_owned().ok();
    // Without limits the streams note nothing.
    let watch = Watchdog::start(&clock, opts.limits(), fd, OnExpiry::Exit { kill });
    let clock = watch.as_ref().map(|_| clock);
    match run_push_piped(opts, PumpedReader::new(stdout), stdin, pipe, clock) {
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

/// Runs the sending client over any pair of streams.
pub fn run_push<R: Read, W: Write>(
    opts: &PushOptions,
    input: R,
    output: W,
) -> Result<TransferSummary> {
    run_push_piped(&with_inc_offer(opts), input, output, None, None)
}

/// [`run_push`]; `pipe` is the descriptor `output` writes to, unbuffered,
/// for splicing file data into it (see [`OutStream::splice_into`]).
fn run_push_piped<R: Read, W: Write>(
    opts: &PushOptions,
    input: R,
    output: W,
    pipe: Option<OwnedFd>,
    clock: Option<Arc<IoClock>>,
) -> Result<TransferSummary> {
    let mut ins = InStream::new(input);
    ins.echo_messages = opts.echo_messages;
    ins.reports.info_on_stdout = true;
    let mut outs = OutStream::new(output);
    outs.set_bwlimit(opts.command.opts.bwlimit);
    if let Some(c) = clock {
        ins.set_clock(Arc::clone(&c));
        outs.set_clock(c);
    }
    if let Some(fd) = pipe {
        outs.splice_into(fd);
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
    if fopts.inc_recurse && !opts.command.wire_caps().contains('i') {
        return Err(RemoteError::Refused(
            "server enabled incremental recursion, which we did not offer".into(),
        ));
    }
    outs.start_multiplex()?;
    ins.start_multiplex()?;
    let filter = match &opts.local_filter {
        Some(f) => Some(f.clone()),
        None => filter_from_wire(&opts.filters, neg.protocol)?,
    };
    if opts.command.delete || opts.command.opts.prune_empty_dirs {
        // A deleting (or pruning, -m) receiver wants the filter list.
        // Sender-side rules stay here, as rsync's client elides them.
        let rules: Vec<Vec<u8>> = opts
            .filters
            .iter()
            .filter(|r| !crate::opts::sender_only_rule(r))
            .cloned()
            .collect();
        let mut f = Vec::new();
        arsync_proto::filter::encode_filter_list(&rules, &mut f)?;
        outs.write(&f)?;
    }

    let mut sources = vec![SourceSpec {
        path: opts.source.clone(),
        contents: opts.contents,
    }];
    sources.extend(opts.more_sources.iter().cloned());
    if let Some(names) = &opts.files_from {
        let relative = opts.command.flags.contains('R');
        sources = crate::opts::files_from_sources(&opts.source, names, relative);
    }
    if opts.command.opts.files_from.is_some() {
        // --files-from=HOST:LIST: the receiving server reads the list and
        // forwards its names after our filter list.
        outs.flush()?;
        let names = crate::opts::read_files_from_wire(&mut ins)?;
        let relative = opts.command.flags.contains('R');
        sources = crate::opts::files_from_sources(&opts.source, &names, relative);
    }
    let list = ListSource::new(
        &sources,
        opts.command.flags.contains('R'),
        &fopts,
        neg.file_checksum,
        (filter.as_ref(), None),
        &opts.command.opts,
    )?;
    send_session(
        ins,
        outs,
        &neg,
        &fopts,
        list,
        SendMode {
            codec,
            write_stats: false,
            events: opts.events.as_ref(),
            dry_run: opts.command.flags.contains('n'),
            remove_sent: opts.command.opts.remove_source_files,
            inplace: opts.command.opts.inplace,
            append: opts.command.opts.append,
            open_noatime: opts.command.opts.open_noatime,
            verbose: opts.command.opts.verbose,
        },
    )
}

/// Reports the deletions the receiving peer told us of (MSG_DELETED) as
/// events; a directory's name gets its `/`.
fn report_deleted(names: &mut Vec<Vec<u8>>, events: Option<&EventSink>) {
    for mut n in names.drain(..) {
        if n.last() == Some(&0) {
            n.pop();
            n.push(b'/');
        }
        if let Some(ev) = events {
            ev.emit(&FileEvent::Deleted { name: &n });
        }
    }
}

/// Sends a whole file as literal tokens (no basis, no compression): the
/// file is read straight into the framed output and hashed there (no read
/// buffer, one user-space copy less per byte). Each token fills the rest
/// of a DATA frame (32,764 bytes in a fresh one), so token boundaries
/// differ from the delta encoder's, which any receiver accepts.
///
/// `size` is the file's listed size: each token asks for no more than
/// what is expected (plus one byte, to see a grown file), so that the
/// room [`OutStream::literal_token`] prepares for the read, and the read
/// that finds the end, stay small for small files.
/// `progress` gets the bytes sent so far after each token.
fn send_whole<W: Write>(
    f: &mut std::fs::File,
    outs: &mut OutStream<W>,
    algo: ChecksumAlgo,
    size: u64,
    mut progress: impl FnMut(u64),
) -> Result<DeltaStats> {
    let mut sent = 0u64;
    send_literal_tokens(outs, algo, |outs, hasher| {
        let want = match size.checked_sub(sent) {
            Some(left) if left > 0 => (left + 1).min(CHUNK_SIZE as u64) as usize,
            // At or past the listed size: a short read for the end, full
            // chunks once the file turned out to have grown.
            _ if sent == size => END_PROBE,
            _ => CHUNK_SIZE,
        };
        let n = outs.literal_token(want, |buf| {
            let n = read_chunk(f, buf)?;
            hasher.update(&buf[..n]);
            Ok(n)
        })?;
        sent += n as u64;
        progress(sent);
        Ok(n)
    })
}

/// What [`send_whole`] reads once the listed size is sent (normally
/// nothing: the end of the file).
const END_PROBE: usize = 4096;

/// Sends literal tokens made by `token` (which returns the bytes it sent, 0 at the end of the
/// file, and hashes them), then the end token and the whole-file checksum.
fn send_literal_tokens<W: Write>(
    outs: &mut OutStream<W>,
    algo: ChecksumAlgo,
    mut token: impl FnMut(&mut OutStream<W>, &mut FileHasher) -> Result<usize>,
) -> Result<DeltaStats> {
    let mut hasher = FileHasher::new(algo);
    let mut st = DeltaStats::default();
    loop {
        let n = token(outs, &mut hasher)?;
        if n == 0 {
            break;
        }
        st.literal += n as u64;
    }
    outs.write(&0i32.to_le_bytes())?;
    outs.write(hasher.finish().as_bytes())?;
    Ok(st)
}

/// Files at least this large are spliced ([`send_whole_spliced`]): below
/// it the two system calls per 32 KiB token cost more than copying the
/// data into batched pipe writes.
const SPLICE_MIN: i64 = 256 * 1024;

/// [`send_whole`] with the data moved from the file into the pipe by
/// `splice(2)` ([`OutStream::literal_token_spliced`]): read once for the
/// checksum, never copied into the pipe. One token per DATA frame.
fn send_whole_spliced<W: Write>(
    f: &std::fs::File,
    outs: &mut OutStream<W>,
    algo: ChecksumAlgo,
    scratch: &mut Vec<u8>,
    mut progress: impl FnMut(u64),
) -> Result<DeltaStats> {
    let mut offset = 0u64;
    send_literal_tokens(outs, algo, |outs, hasher| {
        let n =
            outs.literal_token_spliced(f, &mut offset, CHUNK_SIZE, scratch, |b| hasher.update(b))?;
        progress(offset);
        Ok(n)
    })
}

/// `--append`: the part of the file the receiver has (its length is in
/// `head`) is not sent; `--append-verify` (2) hashes it into the
/// whole-file checksum.
fn skip_appended(
    f: &mut std::fs::File,
    delta: &mut DeltaEncoder,
    head: &SumHead,
    append: u8,
) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut have = crate::opts::append_offset(head);
    if append < 2 {
        let len = f
            .metadata()
            .map_err(|e| RemoteError::io("stat for --append", e))?
            .len();
        f.seek(SeekFrom::Start(have.min(len)))
            .map_err(|e| RemoteError::io("seek for --append", e))?;
        return Ok(());
    }
    let mut chunk = vec![0u8; have.min(256 * 1024) as usize];
    while have > 0 {
        let want = chunk.len().min(have as usize);
        let n = read_chunk(f, &mut chunk[..want])?;
        if n == 0 {
            break;
        }
        delta.hash_only(&chunk[..n]);
        have -= n as u64;
    }
    Ok(())
}

/// How the sending half behaves.
pub(crate) struct SendMode<'a> {
    /// The session's token compression.
    pub codec: TokenCodec,
    /// Write the final stats and do not wait for EOF (a server sender).
    pub write_stats: bool,
    /// Per-entry notifications.
    pub events: Option<&'a EventSink>,
    /// `-n`: transfer requests come without sums and get no data.
    pub dry_run: bool,
    /// `--remove-source-files`: remove what the receiver confirmed.
    pub remove_sent: bool,
    /// `--inplace`: the receiver rewrites its file (block matches are
    /// limited, see `DeltaEncoder::set_in_place`).
    pub inplace: bool,
    /// `--append` (1) / `--append-verify` (2), see [`crate::opts::TransferOpts::append`].
    pub append: u8,
    /// `--open-noatime`: files are read without updating their atime.
    pub open_noatime: bool,
    /// `-v` level: from 2 on, rsync's `total: matches=...` line at the end.
    pub verbose: u8,
}

/// What a sender sends: the whole list at once, or (incremental
/// recursion) a walk's lists as the receiver gets on.
pub(crate) enum ListSource<'a> {
    /// Every entry, built before anything is sent.
    Whole(LocalList),
    /// The first list of a walk, then the walk's further lists.
    Incremental(IncWalk<'a>, Vec<FileEntry>),
}

impl<'a> ListSource<'a> {
    /// The sender's list of `sources`: a walk one directory at a time when
    /// the list is incremental (one source only), else the whole list.
    pub(crate) fn new(
        sources: &[SourceSpec],
        relative: bool,
        fopts: &FlistOptions,
        checksum: ChecksumAlgo,
        (filter, daemon): (
            Option<&'a arsync_filter::FilterRules>,
            Option<&'a crate::walk::DaemonFilter>,
        ),
        opts: &'a crate::opts::TransferOpts,
    ) -> Result<Self> {
        match (fopts.inc_recurse, sources) {
            (true, [source]) => {
                let (walk, first) = IncWalk::start(source, fopts, checksum, filter, daemon, opts)?;
                Ok(ListSource::Incremental(walk, first))
            }
            (true, _) => Err(RemoteError::Refused(
                "incremental recursion with several sources".into(),
            )),
            (false, _) => Ok(ListSource::Whole(build_list_with(
                sources, relative, fopts, checksum, filter, daemon, opts,
            )?)),
        }
    }
}

/// How many entries the sender keeps listed beyond the list the receiver
/// is on (rsync's `MIN_FILECNT_LOOKAHEAD`).
const LOOKAHEAD: usize = 1000;

/// One list sent and not yet done with (incremental recursion).
struct LiveList {
    /// Index of its first entry.
    start: i32,
    /// The directory whose contents it holds, named by `start - 1`.
    dir: Option<FileEntry>,
    entries: Vec<FileEntry>,
    /// Entries whose data was sent (a second request is a redo).
    sent: Vec<bool>,
}

/// The file lists of a sending session: one whole list, or with
/// incremental recursion the lists sent that the receiver is not done
/// with (rsync's `first_flist` chain), the walk that makes the next ones,
/// and the encoder whose compression state spans them all.
struct SentLists<'a> {
    /// The whole list (incremental: only its root and options).
    whole: LocalList,
    walk: Option<IncWalk<'a>>,
    live: std::collections::VecDeque<LiveList>,
    /// Entries in `live`.
    live_entries: usize,
    /// Where the next list starts (rsync leaves a gap of one for the
    /// directory's own index).
    next_start: i32,
    /// NDX_FLIST_EOF was sent.
    eof: bool,
    enc: FlistEncoder,
    /// Ids whose names were sent (inline, the first time each is listed).
    uids: std::collections::HashSet<u32>,
    gids: std::collections::HashSet<u32>,
    names: Option<IdNames>,
    /// The io_error flags the receiver was told of with the lists.
    reported: i32,
    /// Entries listed, and the size of the files and symlinks among them.
    total: usize,
    total_size: i64,
}

impl<'a> SentLists<'a> {
    fn new(fopts: &FlistOptions, source: ListSource<'a>) -> (Self, Vec<FileEntry>) {
        let (whole, walk, first) = match source {
            ListSource::Whole(l) => (l, None, Vec::new()),
            ListSource::Incremental(w, first) => {
                let whole = LocalList {
                    root: w.root().to_path_buf(),
                    follow_links: w.follow_links(),
                    ..LocalList::default()
                };
                (whole, Some(w), first)
            }
        };
        let names = (fopts.inc_recurse && !fopts.numeric_ids).then(IdNames::load);
        let lists = SentLists {
            whole,
            walk,
            live: std::collections::VecDeque::new(),
            live_entries: 0,
            next_start: 1,
            eof: false,
            enc: FlistEncoder::new(fopts.clone()),
            uids: std::collections::HashSet::new(),
            gids: std::collections::HashSet::new(),
            names,
            reported: 0,
            total: 0,
            total_size: 0,
        };
        (lists, first)
    }

    /// The entry the receiver names by `ndx`, among the lists held.
    fn entry(&self, ndx: i32) -> Option<&FileEntry> {
        if self.walk.is_none() {
            return usize::try_from(ndx)
                .ok()
                .and_then(|i| self.whole.entries.get(i));
        }
        let at = self.live.partition_point(|l| l.start - 1 <= ndx);
        let l = self.live.get(at.checked_sub(1)?)?;
        match usize::try_from(ndx - l.start) {
            Ok(j) => l.entries.get(j),
            Err(_) => l.dir.as_ref(),
        }
    }

    /// Which live list holds entry `ndx`, and where (incremental
    /// recursion).
    fn slot(&self, ndx: i32) -> Option<(usize, usize)> {
        let at = self
            .live
            .partition_point(|l| l.start <= ndx)
            .checked_sub(1)?;
        let l = self.live.get(at)?;
        let j = usize::try_from(ndx - l.start).ok()?;
        (j < l.entries.len()).then_some((at, j))
    }

    /// Whether the data of entry `ndx` was sent before (incremental
    /// recursion; the whole list's redo comes in its own phase).
    fn was_sent(&self, ndx: i32) -> bool {
        self.slot(ndx).is_some_and(|(at, j)| self.live[at].sent[j])
    }

    /// Notes that the data of entry `ndx` was sent.
    fn mark_sent(&mut self, ndx: i32) {
        if let Some((at, j)) = self.slot(ndx) {
            self.live[at].sent[j] = true;
        }
    }

    /// The local path of the entry `ndx` names.
    fn path(&self, ndx: i32) -> Option<PathBuf> {
        if self.walk.is_none() {
            let i = usize::try_from(ndx).ok()?;
            return (i < self.whole.entries.len()).then(|| self.whole.path(i));
        }
        let e = self.entry(ndx)?;
        Some(match e.name.as_slice() {
            b"." => self.whole.root.clone(),
            n => self.whole.root.join(std::ffi::OsStr::from_bytes(n)),
        })
    }

    /// Names the owner and group of entries whose ids were not listed
    /// before (incremental recursion sends them inline, no id lists).
    fn name_ids(&mut self, fopts: &FlistOptions, entries: &mut [FileEntry]) {
        let Some(names) = &self.names else {
            return;
        };
        for e in entries {
            if fopts.preserve_uid && self.uids.insert(e.uid) {
                e.user_name = names.user(e.uid).map(<[u8]>::to_vec);
            }
            if fopts.preserve_gid && self.gids.insert(e.gid) {
                e.group_name = names.group(e.gid).map(<[u8]>::to_vec);
            }
        }
    }

    /// Encodes one list starting at index `start` and its end marker.
    fn encode_list<W: Write>(
        &mut self,
        outs: &mut OutStream<W>,
        entries: &[FileEntry],
        start: i32,
        io_error: i32,
        mut buf: Vec<u8>,
    ) -> Result<()> {
        for e in entries {
            self.enc.encode(e, start, &mut buf)?;
            if buf.len() > 32 * 1024 {
                outs.write(&buf)?;
                buf.clear();
            }
            self.total += 1;
            if matches!(
                e.file_type(),
                Some(FileType::Regular) | Some(FileType::Symlink)
            ) {
                self.total_size += e.size;
            }
        }
        // A list's end tells of io_error flags new since the last (rsync's
        // safe incremental lists); without that, a message does.
        let new_error = io_error != self.reported;
        let safe = self.enc.options().safe_flist || !self.enc.options().inc_recurse;
        self.enc.encode_end(
            match new_error && safe {
                true => io_error,
                false => 0,
            },
            &mut buf,
        );
        outs.write(&buf)?;
        if new_error && !safe {
            outs.message(MsgTag::IoError, &io_error.to_le_bytes())?;
        }
        self.reported = io_error;
        Ok(())
    }

    /// Incremental recursion: sends the walk's next lists until `LOOKAHEAD`
    /// entries are listed beyond the list the receiver is on, then
    /// NDX_FLIST_EOF after the last.
    fn send_ahead<W: Write>(
        &mut self,
        outs: &mut OutStream<W>,
        wcodec: &mut NdxCodec,
        events: Option<&EventSink>,
    ) -> Result<()> {
        while !self.eof && self.ahead() < LOOKAHEAD {
            let Some(walk) = self.walk.as_mut() else {
                return Ok(());
            };
            let Some(list) = walk.next_list()? else {
                self.end_lists(outs, wcodec)?;
                break;
            };
            for w in walk.warnings.drain(..) {
                eprintln!("arsync: {w}");
            }
            let io_error = walk.io_error;
            let done = walk.done();
            let mut entries = list.entries;
            let fopts = self.enc.options().clone();
            self.name_ids(&fopts, &mut entries);
            let mut buf = Vec::new();
            wcodec.encode(NDX_FLIST_OFFSET - list.dir_ndx, &mut buf);
            let start = self.next_start;
            self.encode_list(outs, &entries, start, io_error, buf)?;
            if let Some(ev) = events {
                ev.emit(&FileEvent::List {
                    entries: &entries,
                    incremental: true,
                    first: false,
                });
            }
            self.hold(start, Some(list.dir), entries);
            if done {
                self.end_lists(outs, wcodec)?;
            }
        }
        Ok(())
    }

    /// Keeps a list sent until the receiver is done with it.
    fn hold(&mut self, start: i32, dir: Option<FileEntry>, entries: Vec<FileEntry>) {
        self.next_start = start + entries.len() as i32 + 1;
        self.live_entries += entries.len();
        self.live.push_back(LiveList {
            start,
            dir,
            sent: vec![false; entries.len()],
            entries,
        });
    }

    /// Sends NDX_FLIST_EOF: no more lists.
    fn end_lists<W: Write>(
        &mut self,
        outs: &mut OutStream<W>,
        wcodec: &mut NdxCodec,
    ) -> Result<()> {
        let mut b = Vec::new();
        wcodec.encode(NDX_FLIST_EOF, &mut b);
        outs.write(&b)?;
        self.eof = true;
        Ok(())
    }

    /// Entries listed beyond the list the receiver is on.
    fn ahead(&self) -> usize {
        self.live_entries - self.live.front().map_or(0, |l| l.entries.len())
    }

    /// The receiver's NDX_DONE in phase 0: with incremental recursion it
    /// is done with the oldest list, which is dropped. True when that
    /// NDX_DONE ends a list but not the phase (more lists follow).
    fn list_done(&mut self) -> Result<bool> {
        if self.walk.is_none() {
            return Ok(false);
        }
        let more = self.live.len() > 1 || !self.eof;
        if let Some(l) = self.live.pop_front() {
            self.live_entries -= l.entries.len();
        }
        if more && self.live.is_empty() {
            return Err(RemoteError::Refused(
                "the receiver ended every file list before the last was sent".into(),
            ));
        }
        Ok(more)
    }

    /// io_error flags of the walk so far.
    fn io_error(&self) -> i32 {
        match &self.walk {
            Some(w) => w.io_error,
            None => self.whole.io_error,
        }
    }
}

/// The sending half of a session after setup: file list, id lists, the
/// file loop, (server only) the final stats, and the goodbye.
pub(crate) fn send_session<R: Read, W: Write>(
    mut ins: InStream<R>,
    mut outs: OutStream<W>,
    neg: &Negotiated,
    fopts: &FlistOptions,
    source: ListSource<'_>,
    mode: SendMode<'_>,
) -> Result<TransferSummary> {
    let SendMode {
        codec,
        write_stats,
        events,
        dry_run,
        remove_sent,
        inplace,
        append,
        open_noatime,
        verbose,
    } = mode;
    // rsync's match_report totals (-vv).
    let mut deltas = DeltaStats::default();
    let flist_start = std::time::Instant::now();
    let (mut lists, mut first) = SentLists::new(fopts, source);
    let (mut rcodec, mut wcodec) = (NdxCodec::new(), NdxCodec::new());
    if let Some(walk) = lists.walk.as_mut() {
        // Incremental recursion: the first list (indices from 1), no id
        // lists (names go inline); NDX_FLIST_EOF at once if it holds no
        // directory to list.
        for w in walk.warnings.drain(..) {
            eprintln!("arsync: {w}");
        }
        let (io_error, done) = (walk.io_error, walk.done());
        lists.name_ids(fopts, &mut first);
        if let Some(ev) = events {
            ev.emit(&FileEvent::List {
                entries: &first,
                incremental: true,
                first: true,
            });
        }
        lists.encode_list(&mut outs, &first, 1, io_error, Vec::new())?;
        // The first list's directory is the top one when it starts with ".".
        let dir = first.first().filter(|e| e.name == b".").cloned();
        lists.hold(1, dir, first);
        if done {
            lists.end_lists(&mut outs, &mut wcodec)?;
        }
    } else {
        send_whole_list(&mut outs, fopts, &mut lists, events)?;
    }
    outs.flush()?;
    let flist_ms = flist_start.elapsed().as_millis() as i64;

    let mut summary = TransferSummary {
        protocol: neg.protocol,
        checksum: neg.checksum.name().to_string(),
        ..TransferSummary::default()
    };
    if lists.whole.entries.is_empty() && write_stats && !fopts.inc_recurse {
        // As rsync's sending server: an empty list (e.g. an empty
        // --files-from) ends the session; the client then ends too.
        summary.bytes_written = outs.total_written();
        return Ok(summary);
    }
    let seed_fix = neg.md5_seed_first();
    let dlen = neg.checksum.digest_len();
    let mut phases = SenderPhases::new();
    // The read buffer of spliced whole-file sends.
    let mut scratch = Vec::new();
    // --progress: the data sent of the file being sent.
    let mut ticker = EventSink::ticker(events);
    let mut sources = crate::walk::SourceOpener::default();
    sources.noatime = open_noatime;
    // io_error flags of files that could not be opened.
    let mut io_error = 0;
    // Bytes read per call into the delta encoder's input (whole-file
    // sends read straight into the framed output instead).
    const DELTA_READ: usize = 256 * 1024;
    loop {
        // Incremental recursion: the next lists, before waiting for the peer.
        if phases.phase() == 0 {
            lists.send_ahead(&mut outs, &mut wcodec, events)?;
        }
        // Never wait for the peer with our own output still buffered.
        if !ins.has_buffered()? {
            outs.flush()?;
        }
        let item = ins.decode(|r| decode_item(&mut rcodec, r))?;
        report_deleted(&mut ins.reports.deleted, events);
        match item {
            NdxItem::Done => {
                let list_ended = phases.phase() == 0 && lists.list_done()?;
                let mut b = Vec::new();
                wcodec.encode(NDX_DONE, &mut b);
                outs.write(&b)?;
                outs.flush()?;
                if list_ended {
                    continue;
                }
                if phases.on_done() == SenderDoneAction::EndOfFiles {
                    break;
                }
            }
            // rsync's sending server passes the generator's deletion counts
            // on to the receiving client (which prints them with --stats).
            NdxItem::DelStats(counts) if write_stats => {
                let mut b = Vec::new();
                arsync_proto::item::encode_del_stats(&mut wcodec, counts, &mut b);
                outs.write(&b)?;
            }
            NdxItem::DelStats(_) => {}
            NdxItem::File(a) => {
                let Some(entry) = lists.entry(a.ndx) else {
                    return Err(RemoteError::Refused(format!(
                        "file index {} out of range (not in a file list held)",
                        a.ndx
                    )));
                };
                // What the peer's generator says of the entry (rsync's
                // sender logs it for -i/-v), once: not again on a redo.
                // A file sent before is asked for again (its checksum
                // failed): in the redo phase, or with incremental
                // recursion at once (rsync's FLAG_FILE_SENT).
                let redo = phases.is_redo() || lists.was_sent(a.ndx);
                if let (Some(ev), false) = (events, redo) {
                    ev.emit(&FileEvent::Item {
                        ndx: a.ndx,
                        iflags: a.iflags,
                        entry,
                    });
                }
                // The receiver asks for full values of abbreviated xattrs.
                // rsync skips the exchange for local-change items that name
                // another file unless the receiver asked it not to (`x`).
                let optim_skip = neg.protocol >= 31
                    && !neg
                        .compat
                        .has(arsync_proto::handshake::CompatFlags::AVOID_XATTR_OPTIM)
                    && a.iflags & (iflags::XNAME_FOLLOWS | iflags::LOCAL_CHANGE)
                        == iflags::XNAME_FOLLOWS | iflags::LOCAL_CHANGE;
                let xattr_reply = match (
                    fopts.preserve_xattrs
                        && a.iflags & iflags::REPORT_XATTR != 0
                        && !dry_run
                        && !optim_skip,
                    &entry.xattrs,
                ) {
                    (true, set) => {
                        let max = set.as_ref().map_or(0, |s| s.items.len() as u32);
                        let nums = ins.decode(|r| decode_request(r, max))?;
                        let mut b = Vec::new();
                        let path = lists.path(a.ndx).unwrap_or_default();
                        let t = Target::Path(&path);
                        let values: Vec<(u32, Vec<u8>)> = nums
                            .iter()
                            .filter_map(|&n| set.as_ref().and_then(|s| s.by_num(n)))
                            .map(|it| (it.num, attrs::read_value(t, &it.name).unwrap_or_default()))
                            .collect();
                        let refs: Vec<(u32, &[u8])> =
                            values.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                        encode_reply(&refs, &mut b);
                        Some(b)
                    }
                    (false, _) => None,
                };
                if a.iflags & iflags::TRANSFER == 0 || dry_run {
                    if a.iflags & iflags::TRANSFER != 0 && phases.phase() >= 2 {
                        return Err(RemoteError::Refused(format!(
                            "transfer request for {} in phase 2",
                            a.ndx
                        )));
                    }
                    let mut b = Vec::new();
                    a.encode(&mut wcodec, &mut b)?;
                    b.extend_from_slice(xattr_reply.as_deref().unwrap_or_default());
                    outs.write(&b)?;
                    if a.iflags & iflags::TRANSFER != 0 {
                        summary.files_transferred += 1;
                        if let Some(ev) = events {
                            ev.emit(&FileEvent::Transferred {
                                name: &entry.name,
                                literal: 0,
                                matched: 0,
                            });
                        }
                    }
                    continue;
                }
                if phases.phase() >= 2 {
                    return Err(RemoteError::Refused(format!(
                        "transfer request for {} in phase 2",
                        a.ndx
                    )));
                }
                let head = ins.decode(|r| SumHead::decode(r, dlen))?;
                // --append (not in the redo phase): the head gives the
                // receiver's length and no sums follow.
                let appending = append > 0 && !redo;
                let sums = match appending {
                    true => arsync_proto::sums::SumSet {
                        head: SumHead::default(),
                        blocks: Vec::new(),
                    },
                    false => {
                        let mut sd = SumDecoder::new(head);
                        ins.decode_partial(|r| sd.feed(r))?
                    }
                };
                let Some(e) = lists.entry(a.ndx) else {
                    return Err(RemoteError::Refused(format!(
                        "file index {} out of range",
                        a.ndx
                    )));
                };
                if e.file_type() != Some(FileType::Regular) {
                    return Err(RemoteError::Refused(format!(
                        "transfer request for non-file index {}",
                        a.ndx
                    )));
                }
                let path = lists.path(a.ndx).unwrap_or_default();
                let mut f = match sources.open(&path, lists.whole.follow_links) {
                    Ok(f) => f,
                    Err(err) => {
                        let vanished = matches!(&err, RemoteError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                        io_error |= if vanished {
                            IOERR_VANISHED
                        } else {
                            IOERR_GENERAL
                        };
                        eprintln!("arsync: {err}");
                        outs.message(MsgTag::NoSend, &a.ndx.to_le_bytes())?;
                        continue;
                    }
                };
                let mut b = Vec::new();
                a.encode(&mut wcodec, &mut b)?;
                b.extend_from_slice(xattr_reply.as_deref().unwrap_or_default());
                head.encode(&mut b);
                outs.write(&b)?;
                if let Some(t) = &mut ticker {
                    t.start();
                }
                let size = e.size.max(0) as u64;
                let mut progress = |done: u64| {
                    if let Some(t) = &mut ticker {
                        t.tick(&e.name, done, size);
                    }
                };
                let st = if sums.blocks.is_empty() && !codec.is_compressed() && !appending {
                    // Spliced into the pipe when it is one and the file is
                    // large (small files' data is batched into larger
                    // pipe writes instead), but not when resending a file
                    // that failed its check (it may be changing: then what
                    // was read is what is sent).
                    let large = e.size >= SPLICE_MIN;
                    match outs.can_splice() && large && !redo {
                        true => {
                            send_whole_spliced(&f, &mut outs, neg.checksum, &mut scratch, progress)?
                        }
                        false => send_whole(&mut f, &mut outs, neg.checksum, size, progress)?,
                    }
                } else {
                    let mut delta = DeltaEncoder::with_sink(
                        sums,
                        neg.checksum,
                        neg.seed,
                        seed_fix,
                        codec.sink()?,
                    );
                    if verbose >= 2 {
                        delta.count_hash_hits();
                    }
                    if appending {
                        skip_appended(&mut f, &mut delta, &head, append)?;
                    } else if crate::opts::receiver_in_place(inplace, a.basis_type, neg) {
                        delta.set_in_place();
                    }
                    let mut out = Vec::new();
                    let mut read = 0u64;
                    loop {
                        // Read straight into the encoder's buffer.
                        let n = read_chunk(&mut f, delta.input(DELTA_READ))?;
                        if n == 0 {
                            break;
                        }
                        delta.commit_input(n, &mut out)?;
                        read += n as u64;
                        progress(read);
                        if out.len() >= 64 * 1024 {
                            outs.write(&out)?;
                            out.clear();
                        }
                    }
                    let st = delta.finish(&mut out)?;
                    outs.write(&out)?;
                    st
                };
                summary.literal_bytes += st.literal;
                summary.matched_bytes += st.matched;
                deltas.add(&st);
                summary.files_transferred += 1;
                if let Some(ev) = events {
                    ev.emit(&FileEvent::Transferred {
                        name: &e.name,
                        literal: st.literal,
                        matched: st.matched,
                    });
                }
                lists.mark_sent(a.ndx);
                if redo {
                    summary.files_redone += 1;
                }
            }
            other => {
                return Err(RemoteError::Refused(format!(
                    "unexpected index marker {other:?}"
                )))
            }
        }
    }
    if verbose >= 2 {
        // rsync's sender, when its files are done (-vv: debug=deltasum).
        let line = format!(
            "total: matches={}  hash_hits={}  false_alarms={} data={}\n",
            deltas.matches, deltas.hash_hits, deltas.false_alarms, deltas.literal
        );
        match (write_stats, events) {
            (true, _) => outs.message(arsync_proto::mux::MsgTag::Info, line.as_bytes())?,
            (false, Some(ev)) => ev.emit(&FileEvent::Info {
                text: line.as_bytes(),
                ordered: true,
            }),
            (false, None) => {}
        }
    }
    if write_stats {
        // A server sender reports its totals (the client swaps read/written).
        let total_size = lists.total_size;
        let mut b = Vec::new();
        Stats {
            total_read: ins.total_read() as i64,
            total_written: outs.total_written() as i64,
            total_size,
            flist_buildtime: 1,
            flist_xfertime: flist_ms.max(1),
        }
        .encode(&mut b);
        outs.write(&b)?;
        outs.flush()?;
    }
    let io_error = io_error | lists.io_error();
    if io_error != lists.reported {
        outs.message(MsgTag::IoError, &io_error.to_le_bytes())?;
    }
    // Goodbye: at protocol >= 31 echo one NDX_DONE, then read the last.
    for k in 0..goodbye_reads(neg.protocol) {
        let mut item = ins.decode(|r| decode_item(&mut rcodec, r))?;
        while let NdxItem::DelStats(counts) = item {
            if write_stats {
                // Passed on to the receiving client, as above.
                let mut b = Vec::new();
                arsync_proto::item::encode_del_stats(&mut wcodec, counts, &mut b);
                outs.write(&b)?;
            }
            item = ins.decode(|r| decode_item(&mut rcodec, r))?;
        }
        match item {
            NdxItem::Done => {}
            other => {
                return Err(RemoteError::Refused(format!(
                    "expected NDX_DONE at the end of the run, got {other:?}"
                )))
            }
        }
        if k + 1 < goodbye_reads(neg.protocol) {
            let mut b = Vec::new();
            wcodec.encode(NDX_DONE, &mut b);
            outs.write(&b)?;
            outs.flush()?;
        }
    }
    outs.flush()?;
    summary.bytes_written = outs.total_written();
    drop(outs.into_inner()?);
    // A client reads to the end (the server exits after the goodbye); a
    // server must not wait, the client waits for it to exit.
    if !write_stats {
        ins.drain_to_eof()?;
    }
    summary.bytes_read = ins.total_read();
    report_deleted(&mut ins.reports.deleted, events);
    summary.io_error = io_error | ins.reports.io_error;
    summary.files_total = lists.total;
    summary.errors.extend(ins.reports.errors.iter().cloned());
    if remove_sent && !dry_run {
        let errs = crate::opts::remove_sent(&lists.whole, &ins.reports.success);
        for e in &errs {
            eprintln!("arsync: {e}");
        }
        summary.errors.extend(errs);
    }
    Ok(summary)
}

/// Sends the whole list at once, then the id lists.
fn send_whole_list<W: Write>(
    outs: &mut OutStream<W>,
    fopts: &FlistOptions,
    lists: &mut SentLists<'_>,
    events: Option<&EventSink>,
) -> Result<()> {
    let list = std::mem::take(&mut lists.whole);
    if let Some(ev) = events {
        ev.emit(&FileEvent::List {
            entries: &list.entries,
            incremental: false,
            first: true,
        });
    }
    for w in &list.warnings {
        eprintln!("arsync: {w}");
    }
    let mut buf = Vec::new();
    for e in &list.entries {
        lists.enc.encode(e, 0, &mut buf)?;
        if buf.len() > 32 * 1024 {
            outs.write(&buf)?;
            buf.clear();
        }
    }
    lists.enc.encode_end(list.io_error, &mut buf);
    lists.reported = list.io_error;
    lists.total = list.entries.len();
    if fopts.id_lists_follow() {
        let names = IdNames::load();
        if fopts.uid_list_follows() {
            let mut ids: Vec<u32> = list
                .entries
                .iter()
                .filter(|_| fopts.preserve_uid)
                .map(|e| e.uid)
                .chain(acl_ids(&list, true))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let l: Vec<(u32, Vec<u8>)> = ids
                .iter()
                .filter_map(|&id| names.user(id).map(|n| (id, n.to_vec())))
                .collect();
            encode_id_list(&l, names.user(0), fopts.id0_names, &mut buf);
        }
        if fopts.gid_list_follows() {
            let mut ids: Vec<u32> = list
                .entries
                .iter()
                .filter(|_| fopts.preserve_gid)
                .map(|e| e.gid)
                .chain(acl_ids(&list, false))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let l: Vec<(u32, Vec<u8>)> = ids
                .iter()
                .filter_map(|&id| names.group(id).map(|n| (id, n.to_vec())))
                .collect();
            encode_id_list(&l, names.group(0), fopts.id0_names, &mut buf);
        }
    }
    outs.write(&buf)?;
    lists.total_size = list
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.file_type(),
                Some(FileType::Regular) | Some(FileType::Symlink)
            )
        })
        .map(|e| e.size)
        .sum();
    lists.whole = list;
    Ok(())
}

/// The ids named in the list's ACL entries (users or groups): rsync adds
/// them to the id lists so the receiver can map them by name.
fn acl_ids(list: &LocalList, users: bool) -> impl Iterator<Item = u32> + '_ {
    list.entries
        .iter()
        .flat_map(|e| e.acl.iter().chain(e.def_acl.iter()))
        .flat_map(move |a| {
            a.names
                .iter()
                .filter(move |n| n.is_user == users)
                .map(|n| n.id)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsync_proto::checksum::file_sum;

    /// What a receiver reads of one file: the literal data and the
    /// whole-file checksum after the end token.
    fn received(stream: Vec<u8>, algo: ChecksumAlgo) -> (Vec<u8>, Vec<u8>) {
        let mut i = InStream::new(std::io::Cursor::new(stream));
        i.start_multiplex().unwrap();
        let mut data = Vec::new();
        loop {
            let len = i.decode(|r| r.i32()).unwrap();
            assert!((0..=CHUNK_SIZE as i32).contains(&len), "token length {len}");
            if len == 0 {
                break;
            }
            data.extend_from_slice(&i.decode(|r| Ok(r.bytes(len as usize)?.to_vec())).unwrap());
        }
        let sum = i
            .decode(|r| Ok(r.bytes(algo.digest_len())?.to_vec()))
            .unwrap();
        (data, sum)
    }

    #[test]
    fn whole_files_are_sent_as_they_are_read_whatever_size_was_listed() {
        // The listed size only shapes the reads: a file that grew or
        // shrank since it was listed is sent as it is now.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("f");
        let algo = ChecksumAlgo::Xxh128;
        for size in [0usize, 1, 4095, 4097, 16_384, 32_764, 32_765, 100_000] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i * 7 % 253) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            for listed in [
                size as u64,
                (size as u64).saturating_sub(10),
                size as u64 + 10,
                0,
            ] {
                let mut f = std::fs::File::open(&path).unwrap();
                let mut o = OutStream::new(Vec::new());
                o.start_multiplex().unwrap();
                let st = send_whole(&mut f, &mut o, algo, listed, |_| {}).unwrap();
                assert_eq!(st.literal, size as u64);
                let (got, sum) = received(o.into_inner().unwrap(), algo);
                assert!(got == data, "{size} bytes listed as {listed}");
                assert_eq!(sum, file_sum(algo, &data).as_bytes());
            }
        }
    }
}
