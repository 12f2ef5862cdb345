//! The sending client (push): starts `rsync --server` on the destination,
//! sends the file list, then answers each checksum request with a delta
//! (block matching against the receiver's sums) and the whole-file checksum.
//! Input is pumped on a helper thread so the peer's output is always drained
//! while we write.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use arsync_proto::checksum::{ChecksumAlgo, FileHasher};
use arsync_proto::compress::TokenCodec;
use arsync_proto::flist::FlistOptions;
use arsync_proto::flist::{encode_id_list, FileType, FlistEncoder};
use arsync_proto::handshake::Negotiated;
use arsync_proto::handshake::PROTOCOL_VERSION;
use arsync_proto::item::{decode_item, iflags, NdxItem};
use arsync_proto::matcher::{DeltaEncoder, DeltaStats};
use arsync_proto::mux::MsgTag;
use arsync_proto::ndx::{NdxCodec, NDX_DONE};
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
use crate::walk::{build_list_with, LocalList, SourceSpec};

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

/// Runs a push over a spawned transport.
pub fn push(opts: &PushOptions) -> Result<TransferSummary> {
    if opts.command.server_sends {
        return Err(RemoteError::Usage(
            "push needs a server command without --sender".into(),
        ));
    }
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
    run_push_piped(opts, input, output, None, None)
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
    if fopts.inc_recurse {
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
    let list = build_list_with(
        &sources,
        opts.command.flags.contains('R'),
        &fopts,
        neg.file_checksum,
        filter.as_ref(),
        None,
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

/// The sending half of a session after setup: file list, id lists, the
/// file loop, (server only) the final stats, and the goodbye.
pub(crate) fn send_session<R: Read, W: Write>(
    mut ins: InStream<R>,
    mut outs: OutStream<W>,
    neg: &Negotiated,
    fopts: &FlistOptions,
    list: LocalList,
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
    let mut enc = FlistEncoder::new(fopts.clone());
    let mut buf = Vec::new();
    for e in &list.entries {
        enc.encode(e, 0, &mut buf)?;
        if buf.len() > 32 * 1024 {
            outs.write(&buf)?;
            buf.clear();
        }
    }
    enc.encode_end(list.io_error, &mut buf);
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
    outs.flush()?;
    let flist_ms = flist_start.elapsed().as_millis() as i64;

    let mut summary = TransferSummary {
        protocol: neg.protocol,
        checksum: neg.checksum.name().to_string(),
        files_total: list.entries.len(),
        io_error: list.io_error,
        ..TransferSummary::default()
    };
    if list.entries.is_empty() && write_stats && !fopts.inc_recurse {
        // As rsync's sending server: an empty list (e.g. an empty
        // --files-from) ends the session; the client then ends too.
        summary.bytes_written = outs.total_written();
        return Ok(summary);
    }
    let seed_fix = neg.md5_seed_first();
    let dlen = neg.checksum.digest_len();
    let (mut rcodec, mut wcodec) = (NdxCodec::new(), NdxCodec::new());
    let mut phases = SenderPhases::new();
    // The read buffer of spliced whole-file sends.
    let mut scratch = Vec::new();
    // --progress: the data sent of the file being sent.
    let mut ticker = EventSink::ticker(events);
    let mut sources = crate::walk::SourceOpener::default();
    sources.noatime = open_noatime;
    let mut io_error = list.io_error;
    // Bytes read per call into the delta encoder's input (whole-file
    // sends read straight into the framed output instead).
    const DELTA_READ: usize = 256 * 1024;
    loop {
        // Never wait for the peer with our own output still buffered.
        if !ins.has_buffered()? {
            outs.flush()?;
        }
        let item = ins.decode(|r| decode_item(&mut rcodec, r))?;
        report_deleted(&mut ins.reports.deleted, events);
        match item {
            NdxItem::Done => {
                let mut b = Vec::new();
                wcodec.encode(NDX_DONE, &mut b);
                outs.write(&b)?;
                outs.flush()?;
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
                let i = a.ndx as usize;
                if i >= list.entries.len() {
                    return Err(RemoteError::Refused(format!(
                        "file index {} out of range",
                        a.ndx
                    )));
                }
                // What the peer's generator says of the entry (rsync's
                // sender logs it for -i/-v), once: not again on a redo.
                if let (Some(ev), false) = (events, phases.is_redo()) {
                    ev.emit(&FileEvent::Item {
                        ndx: a.ndx,
                        iflags: a.iflags,
                        entry: &list.entries[i],
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
                    &list.entries[i].xattrs,
                ) {
                    (true, set) => {
                        let max = set.as_ref().map_or(0, |s| s.items.len() as u32);
                        let nums = ins.decode(|r| decode_request(r, max))?;
                        let mut b = Vec::new();
                        let path = list.path(i);
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
                                name: &list.entries[i].name,
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
                let appending = append > 0 && !phases.is_redo();
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
                let e = &list.entries[i];
                if e.file_type() != Some(FileType::Regular) {
                    return Err(RemoteError::Refused(format!(
                        "transfer request for non-file index {}",
                        a.ndx
                    )));
                }
                let path = list.path(i);
                let mut f = match sources.open(&path, list.follow_links) {
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
                    let large = list.entries[i].size >= SPLICE_MIN;
                    match outs.can_splice() && large && !phases.is_redo() {
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
                if phases.is_redo() {
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
        let total_size = list
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
    if io_error != list.io_error {
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
    summary.errors.extend(ins.reports.errors.iter().cloned());
    if remove_sent && !dry_run {
        let errs = crate::opts::remove_sent(&list, &ins.reports.success);
        for e in &errs {
            eprintln!("arsync: {e}");
        }
        summary.errors.extend(errs);
    }
    Ok(summary)
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
