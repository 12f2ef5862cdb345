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
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use arsync_proto::checksum::{block_sum, weak_sum, ChecksumAlgo, FileHasher};
use arsync_proto::compress::TokenSource;
use arsync_proto::filter::encode_filter_list;
use arsync_proto::flist::{
    clear_duplicates, sort_entries, FileEntry, FileType, FlistDecoder, FlistItem, FlistOptions,
    HardLink, IdListDecoder,
};
use arsync_proto::handshake::{Negotiated, PROTOCOL_VERSION};
use arsync_proto::item::{decode_item, encode_del_stats, ItemAttrs, NdxItem};
use arsync_proto::mux::MsgTag;
use arsync_proto::ndx::{NdxCodec, NDX_DONE};
use arsync_proto::phase::{GeneratorSchedule, MAX_PHASE};
use arsync_proto::stats::{exit_code_for_io_error, ExitCode, Stats};
use arsync_proto::sums::SumHead;
use arsync_proto::token::Token;
use arsync_proto::wire::put_i32;

use crate::args::ServerCommand;
use crate::conn::{join_errors, InStream, OutStream};
use crate::daemon::DaemonTarget;
use crate::error::{RemoteError, Result};
use crate::events::{EventSink, FileEvent};
use crate::filewriter::FileWriter;
use crate::fsys::{read_basis, DestRoot, Meta};
use crate::ids::{IdMap, IdNames};
use crate::session::{am_root, flist_options, start_client, token_compression};
use crate::transport::ChildTransport;

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
    /// `+ /keep/`, `P name`, ...); the server applies them.
    pub filters: Vec<String>,
}

impl PullOptions {
    /// Pull `remote_path` into `dest` with `-logDtpr`.
    pub fn new(remote_path: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        PullOptions {
            command: ServerCommand::archive(true, remote_path),
            dest: dest.into(),
            protocol: PROTOCOL_VERSION,
            echo_messages: true,
            daemon: None,
            events: None,
            filters: Vec::new(),
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
    Phase0Done,
    Finish,
}

/// Builds rules from wire-form rule texts (`None` when there are none).
pub fn filter_from_wire(rules: &[String], protocol: i32) -> Result<Option<FilterRules>> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut f = FilterRules::new();
    for r in rules {
        f.add_wire_rule(r.as_bytes(), protocol.max(0) as u32)
            .map_err(|e| RemoteError::Usage(format!("filter rule {r:?}: {e}")))?;
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
    let dest = DestRoot::open(&opts.dest)?;
    if let Some(t) = &opts.daemon {
        let (r, w) = t.connect()?;
        return run_pull(opts, dest, r, w);
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
    let res = run_pull(opts, dest, stdout, stdin);
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
    dest: DestRoot,
    input: R,
    output: W,
) -> Result<TransferSummary> {
    let mut ins = InStream::new(input);
    ins.echo_messages = opts.echo_messages;
    let mut outs = OutStream::new(output);
    let neg = start_client(
        &mut ins,
        &mut outs,
        opts.protocol,
        &opts.command,
        opts.daemon.as_ref(),
    )?;
    let compressed = token_compression(&neg)?.is_some();
    let fopts = flist_options(&opts.command.flags, opts.command.numeric_ids, &neg)?;
    if fopts.inc_recurse {
        return Err(RemoteError::Refused(
            "server enabled incremental recursion, which we did not offer".into(),
        ));
    }
    ins.start_multiplex()?;
    outs.start_multiplex()?;
    let mut filt = Vec::new();
    let rules: Vec<Vec<u8>> = opts.filters.iter().map(|r| r.as_bytes().to_vec()).collect();
    encode_filter_list(&rules, &mut filt)?;
    outs.write(&filt)?;
    outs.flush()?;

    let mode = ReceiveMode {
        delete: opts.command.delete,
        read_stats: true,
        compressed,
        drain_eof: true,
        events: opts.events.clone(),
        whole_file: opts.command.flags.contains('W'),
        filter: filter_from_wire(&opts.filters, neg.protocol)?.map(Arc::new),
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
    /// Tokens are zlibx-compressed.
    pub compressed: bool,
    /// Read to the end of input after the goodbye (a client: the server
    /// exits then). A server must not: the client waits for it to exit.
    pub drain_eof: bool,
    /// Per-entry notifications.
    pub events: Option<EventSink>,
    /// `-W`: whole-file transfers, no delta against the basis.
    pub whole_file: bool,
    /// Rules protecting local entries from `--delete`.
    pub filter: Option<Arc<FilterRules>>,
}

/// The receiving half of a session after setup: file list, id lists, the
/// generator thread and the receiver, the end-of-run exchange.
pub(crate) fn receive_session<R: Read, W: Write + Send + 'static>(
    mut ins: InStream<R>,
    outs: OutStream<W>,
    neg: &Negotiated,
    fopts: &FlistOptions,
    dest: DestRoot,
    mode: ReceiveMode,
) -> Result<TransferSummary> {
    let (neg, fopts) = (neg.clone(), fopts.clone());
    // File list.
    let mut dec = FlistDecoder::new(fopts.clone(), 0);
    let mut entries = Vec::new();
    let io_error = loop {
        match ins.decode(|r| dec.decode(r))? {
            FlistItem::Entry(e) => entries.push(e),
            FlistItem::End { io_error } => break io_error,
        }
    };
    let names = IdNames::load();
    let (mut uid_map, mut gid_map) = (IdMap::default(), IdMap::default());
    if fopts.id_lists_follow() {
        if fopts.preserve_uid {
            let mut d = IdListDecoder::new(fopts.id0_names);
            let l = ins.decode_partial(|r| d.feed(r))?;
            uid_map = IdMap::new(&l, |n| names.uid_of(n));
        }
        if fopts.preserve_gid {
            let mut d = IdListDecoder::new(fopts.id0_names);
            let l = ins.decode_partial(|r| d.feed(r))?;
            gid_map = IdMap::new(&l, |n| names.gid_of(n));
        }
    }
    // Hard-link followers name their leader by receive-order index: resolve
    // to names before sorting.
    let links: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .filter_map(|e| match e.hardlink {
            HardLink::Follower(i) => entries
                .get(i as usize)
                .map(|l| (e.name.clone(), l.name.clone())),
            _ => None,
        })
        .collect();
    sort_entries(&mut entries);
    let active = clear_duplicates(&entries);
    let root = am_root();
    for e in &mut entries {
        e.uid = uid_map.map(e.uid);
        e.gid = gid_map.map(e.gid);
    }
    let requested: Arc<Vec<AtomicBool>> =
        Arc::new(entries.iter().map(|_| AtomicBool::new(false)).collect());
    let files = Arc::new(entries);
    let active = Arc::new(active);

    let (tx, rx) = channel();
    let gen = {
        let files = Arc::clone(&files);
        let active = Arc::clone(&active);
        let dest = dest.clone();
        let neg = neg.clone();
        let fopts = fopts.clone();
        let gen_ctx = GenCtx {
            dest,
            neg,
            fopts,
            root,
            links,
            delete: mode.delete,
            events: mode.events.clone(),
            whole_file: mode.whole_file,
            filter: mode.filter.clone(),
            requested: Arc::clone(&requested),
        };
        std::thread::spawn(move || generator_thread(outs, &files, &active, &gen_ctx, rx))
    };
    let recv = receiver(
        &mut ins,
        &files,
        &active,
        &requested,
        &dest,
        &neg,
        &fopts,
        root,
        mode.clone(),
        &tx,
    );
    let _ = tx.send(ToGen::Finish);
    let gen_res = gen
        .join()
        .map_err(|_| RemoteError::Usage("generator thread panicked".into()))?;
    // A generator failure is the root cause of whatever the receiver saw.
    let (gen_errors, bytes_written) = gen_res?;
    let mut summary = recv?;
    if mode.drain_eof {
        ins.drain_to_eof()?;
    }
    summary.errors.extend(gen_errors);
    summary.errors.extend(ins.reports.errors.iter().cloned());
    summary.protocol = neg.protocol;
    summary.checksum = neg.checksum.name().to_string();
    summary.files_total = files.len();
    summary.io_error = io_error | ins.reports.io_error;
    summary.bytes_read = ins.total_read();
    summary.bytes_written = bytes_written;
    Ok(summary)
}

fn meta_of(e: &FileEntry, fopts: &FlistOptions, root: bool) -> Meta {
    Meta {
        perms: e.mode & 0o7777,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        uid: (root && fopts.preserve_uid).then_some(e.uid),
        gid: (root && fopts.preserve_gid).then_some(e.gid),
        atime: (fopts.atimes && !e.is_dir()).then_some(e.atime),
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
fn request<W: Write>(
    outs: &mut OutStream<W>,
    codec: &mut NdxCodec,
    ndx: i32,
    basis: Option<&File>,
    redo: bool,
    neg: &Negotiated,
) -> Result<()> {
    let mut buf = Vec::new();
    ItemAttrs::transfer(ndx).encode(codec, &mut buf)?;
    let len = match basis {
        Some(f) => f
            .metadata()
            .map_err(|e| RemoteError::io("stat basis", e))?
            .len(),
        None => 0,
    };
    // No basis: an all-zero head, as rsync sends (whole-file transfer).
    let head = match basis {
        Some(_) => SumHead::for_file(len, redo, neg.checksum.digest_len())?,
        None => SumHead::default(),
    };
    head.encode(&mut buf);
    outs.write(&buf)?;
    if let (Some(f), true) = (basis, head.count > 0) {
        // Read the basis in large pieces (whole blocks) rather than one
        // `pread` per block, and queue the sums of each piece at once.
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
            for (j, block) in data[..bytes].chunks(blen).enumerate() {
                debug_assert_eq!(block.len(), head.block_len(i + j as i32));
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
    /// `-W`: request whole files (no block sums of the basis).
    whole_file: bool,
    /// Rules protecting local entries from `--delete`.
    filter: Option<Arc<FilterRules>>,
    /// Set (before the request is written) for every index we ask for; the
    /// receiver refuses data nobody asked for.
    requested: Arc<Vec<AtomicBool>>,
}

/// Deletes, in every transferred directory that exists locally, the entries
/// the sender did not list. Returns rsync's deletion counts.
fn delete_extraneous(
    files: &[FileEntry],
    active: &[bool],
    dest: &DestRoot,
    events: Option<&EventSink>,
    filter: Option<&FilterRules>,
    errors: &mut Vec<String>,
) -> Result<[i32; 5]> {
    let names: std::collections::HashSet<&[u8]> = files
        .iter()
        .zip(active)
        .filter(|(_, a)| **a)
        .map(|(e, _)| e.name.as_slice())
        .collect();
    let mut counts = [0i32; 5];
    for (e, _) in files
        .iter()
        .zip(active)
        .filter(|(e, a)| **a && e.is_dir() && !e.no_content_dir)
    {
        let Some(children) = dest.list_dir(&e.name)? else {
            continue;
        };
        for c in children {
            let full = if e.name == b"." {
                c
            } else {
                let mut f = e.name.clone();
                f.push(b'/');
                f.extend_from_slice(&c);
                f
            };
            if names.contains(full.as_slice()) {
                continue;
            }
            if let Some(f) = filter {
                let is_dir = dest
                    .lstat(&full)?
                    .is_some_and(|m| m.file_type == rustix::fs::FileType::Directory);
                if f.protected_from_delete(&full, is_dir) {
                    continue;
                }
            }
            match dest.remove_tree(&full) {
                Ok(n) => {
                    for (t, k) in counts.iter_mut().zip(n) {
                        *t += k;
                    }
                    if let Some(ev) = events {
                        ev.emit(&FileEvent::Deleted { name: &full });
                    }
                }
                Err(err) => errors.push(format!("{}: {err}", String::from_utf8_lossy(&full))),
            }
        }
    }
    Ok(counts)
}

/// When the generator hands queued requests to the transport: after the
/// first, then after twice as many each time up to [`FlushPacer::MAX`], so
/// the sender starts at once and later requests still go out in batches.
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
    files: &[FileEntry],
    active: &[bool],
    ctx: &GenCtx,
    rx: Receiver<ToGen>,
) -> Result<(Vec<String>, u64)> {
    match generator(&mut outs, files, active, ctx, rx) {
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

fn generator<W: Write>(
    outs: &mut OutStream<W>,
    files: &[FileEntry],
    active: &[bool],
    ctx: &GenCtx,
    rx: Receiver<ToGen>,
) -> Result<(Vec<String>, u64)> {
    let (dest, neg, fopts, root) = (&ctx.dest, &ctx.neg, &ctx.fopts, ctx.root);
    let followers: std::collections::HashSet<&[u8]> =
        ctx.links.iter().map(|(f, _)| f.as_slice()).collect();
    let mut codec = NdxCodec::new();
    let mut errors = Vec::new();
    let mut dirs = Vec::new();
    let mut pacer = FlushPacer::default();
    let del_counts = if ctx.delete {
        Some(delete_extraneous(
            files,
            active,
            dest,
            ctx.events.as_ref(),
            ctx.filter.as_deref(),
            &mut errors,
        )?)
    } else {
        None
    };
    for (i, e) in files.iter().enumerate() {
        if !active[i] {
            continue;
        }
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let step: Result<()> = (|| {
            match e.file_type() {
                Some(FileType::Dir) => {
                    dest.ensure_dir(&e.name)?;
                    dirs.push(i);
                }
                Some(FileType::Symlink) if fopts.preserve_links => {
                    let target = e.link_target.as_deref().unwrap_or_default();
                    dest.make_symlink(&e.name, target)?;
                    dest.set_meta(&e.name, &meta_of(e, fopts, root))?;
                }
                Some(FileType::Device) | Some(FileType::Special)
                    if fopts.preserve_devices
                        && (root || e.file_type() == Some(FileType::Special)) =>
                {
                    dest.make_node(&e.name, e.mode, e.rdev)?;
                    dest.set_meta(&e.name, &meta_of(e, fopts, root))?;
                }
                Some(FileType::Regular) if followers.contains(e.name.as_slice()) => {
                    // Linked to its leader once everything is received.
                }
                Some(FileType::Regular) => {
                    if let Some(m) = dest.lstat(&e.name)? {
                        let same = m.file_type == rustix::fs::FileType::RegularFile
                            && m.size == e.size as u64
                            && match &e.checksum {
                                // -c: compare content sums instead of mtimes.
                                Some(sum) => {
                                    local_sum(dest, &e.name, neg.checksum)?.as_deref()
                                        == Some(sum.as_slice())
                                }
                                None => m.mtime == e.mtime,
                            };
                        if same {
                            // Quick check passed: only fix metadata.
                            dest.set_meta(&e.name, &meta_of(e, fopts, root))?;
                            return Ok(());
                        }
                    }
                    let basis = match ctx.whole_file {
                        true => None,
                        false => dest.open_basis(&e.name)?,
                    };
                    ctx.requested[i].store(true, Ordering::Release);
                    request(outs, &mut codec, i as i32, basis.as_ref(), false, neg)?;
                    pacer.requested(outs)?;
                }
                _ => {}
            }
            Ok(())
        })();
        match step {
            Ok(()) => {}
            Err(err @ RemoteError::Io { .. }) => errors.push(format!("{name}: {err}")),
            Err(err) => return Err(err),
        }
    }
    let sched = GeneratorSchedule::new(neg.protocol, false, false)?;
    let mut done = Vec::new();
    for _ in 0..sched.after_phase0 {
        codec.encode(NDX_DONE, &mut done);
    }
    outs.write(&done)?;
    outs.flush()?;
    loop {
        match rx.recv() {
            Ok(ToGen::Redo(ndx)) => {
                let e = &files[ndx as usize];
                let basis = match ctx.whole_file {
                    true => None,
                    false => dest.open_basis(&e.name)?,
                };
                request(outs, &mut codec, ndx, basis.as_ref(), true, neg)?;
                outs.flush()?;
            }
            Ok(ToGen::Phase0Done) => {
                let mut done = Vec::new();
                for k in 0..sched.after_redo {
                    // At protocol >= 31 the deletion stats precede the
                    // delete phase's NDX_DONE (the last of this group).
                    if let (Some(c), true) =
                        (del_counts, neg.protocol >= 31 && k + 1 == sched.after_redo)
                    {
                        encode_del_stats(&mut codec, c, &mut done);
                    }
                    codec.encode(NDX_DONE, &mut done);
                }
                outs.write(&done)?;
                outs.flush()?;
            }
            Ok(ToGen::Finish) | Err(_) => break,
        }
    }
    for (follower, leader) in &ctx.links {
        if let Err(err) = dest.hard_link(leader, follower) {
            errors.push(format!("{}: {err}", String::from_utf8_lossy(follower)));
        }
    }
    // Directory metadata last, deepest first, so nothing touches them afterwards.
    for &i in dirs.iter().rev() {
        let e = &files[i];
        if let Err(err) = dest.set_meta(&e.name, &meta_of(e, fopts, root)) {
            errors.push(format!("{}: {err}", String::from_utf8_lossy(&e.name)));
        }
    }
    let mut bye = Vec::new();
    for _ in 0..sched.goodbye {
        codec.encode(NDX_DONE, &mut bye);
    }
    outs.write(&bye)?;
    outs.flush()?;
    outs.flush()?;
    Ok((errors, outs.total_written()))
}

#[allow(clippy::too_many_arguments)]
fn receiver<R: Read>(
    ins: &mut InStream<R>,
    files: &[FileEntry],
    active: &[bool],
    requested: &[AtomicBool],
    dest: &DestRoot,
    neg: &Negotiated,
    fopts: &FlistOptions,
    root: bool,
    mode: ReceiveMode,
    tx: &Sender<ToGen>,
) -> Result<TransferSummary> {
    let compressed = mode.compressed;
    let mut codec = NdxCodec::new();
    let mut phase = 0u32;
    let mut summary = TransferSummary::default();
    let mut redo_sent = vec![false; files.len()];
    let mut bufs = RecvBuffers {
        writer: FileWriter::start(dest.clone(), mode.events.clone()),
        out: Vec::new(),
        window: BasisWindow::default(),
    };
    loop {
        match ins.decode(|r| decode_item(&mut codec, r))? {
            NdxItem::Done => {
                phase += 1;
                if phase == 1 {
                    let _ = tx.send(ToGen::Phase0Done);
                }
                if phase > MAX_PHASE {
                    break;
                }
            }
            NdxItem::DelStats(_) => {}
            NdxItem::File(a) => {
                let ndx = a.ndx;
                let ok = (ndx as usize) < files.len()
                    && active[ndx as usize]
                    && files[ndx as usize].file_type() == Some(FileType::Regular)
                    && requested[ndx as usize].load(Ordering::Acquire);
                if !ok || a.iflags & arsync_proto::item::iflags::TRANSFER == 0 {
                    return Err(RemoteError::Refused(format!(
                        "unexpected file index {ndx} (iflags {:#x})",
                        a.iflags
                    )));
                }
                let e = &files[ndx as usize];
                let (good, lit, matched) =
                    receive_file(ins, e, dest, neg.checksum, compressed, &mut bufs)?;
                summary.literal_bytes += lit;
                summary.matched_bytes += matched;
                if !good {
                    bufs.writer.discard()?;
                    if phase == 0 && !redo_sent[ndx as usize] {
                        redo_sent[ndx as usize] = true;
                        summary.files_redone += 1;
                        let _ = tx.send(ToGen::Redo(ndx));
                    } else {
                        return Err(RemoteError::Verification(
                            String::from_utf8_lossy(&e.name).into_owned(),
                        ));
                    }
                } else {
                    // The writer applies metadata and renames into place.
                    bufs.writer.commit(meta_of(e, fopts, root), lit, matched)?;
                    summary.files_transferred += 1;
                }
            }
            other => {
                return Err(RemoteError::Refused(format!(
                    "unexpected index marker {other:?} without incremental recursion"
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
    writer: FileWriter,
    /// File data collected for the next write (a buffer of the writer's).
    out: Vec<u8>,
    /// Where matched blocks are read from.
    window: BasisWindow,
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

/// Receives one file's data and hands it to the writer (which creates the
/// temporary file). Returns whether the whole-file checksum matched, and
/// the literal/matched byte counts; the caller then commits or discards.
fn receive_file<R: Read>(
    ins: &mut InStream<R>,
    e: &FileEntry,
    dest: &DestRoot,
    algo: ChecksumAlgo,
    compressed: bool,
    bufs: &mut RecvBuffers,
) -> Result<(bool, u64, u64)> {
    let dlen = algo.digest_len();
    let head = ins.decode(|r| SumHead::decode(r, dlen))?;
    let basis = if head.count > 0 {
        dest.open_basis(&e.name)?
    } else {
        None
    };
    // A new basis: forget the old window.
    bufs.window.window_len = 0;
    bufs.writer.begin(&e.name)?;
    let res: Result<(bool, u64, u64)> = (|| {
        let mut hasher = FileHasher::new(algo);
        let mut offset = 0u64;
        let (mut lit, mut matched) = (0u64, 0u64);
        if bufs.out.capacity() == 0 {
            bufs.out = bufs.writer.buffer();
        }
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
            Ok(())
        };
        let block = |i: u32, bufs: &mut RecvBuffers, hasher: &mut FileHasher| -> Result<u64> {
            let Some(bf) = basis.as_ref() else {
                return Err(RemoteError::Refused(format!(
                    "block match with no basis file for {}",
                    String::from_utf8_lossy(&e.name)
                )));
            };
            let n = head.block_len(i as i32);
            let data = bufs.window.get(bf, i as u64 * head.blength as u64, n)?;
            hasher.update(data);
            bufs.out.extend_from_slice(data);
            Ok(n as u64)
        };
        if compressed {
            let mut dec = TokenSource::new(true, head.count as u32);
            loop {
                match ins.decode(|r| dec.decode(r))? {
                    Token::Literal(b) => {
                        hasher.update(&b);
                        bufs.out.extend_from_slice(&b);
                        lit += b.len() as u64;
                    }
                    Token::Block(i) => matched += block(i, bufs, &mut hasher)?,
                    Token::End => break,
                }
                if bufs.out.len() >= WRITE_BATCH {
                    write_out(bufs, &mut offset)?;
                }
            }
        } else {
            // Plain tokens, decoded here so literal data is hashed and
            // batched straight from the input buffer (no copy per token).
            loop {
                let t = ins.decode(|r| r.i32())?;
                if t == 0 {
                    break;
                }
                if t > 0 {
                    let mut left = t as usize;
                    while left > 0 {
                        let data = ins.take(left.min(WRITE_BATCH - bufs.out.len()))?;
                        hasher.update(data);
                        bufs.out.extend_from_slice(data);
                        left -= data.len();
                        lit += data.len() as u64;
                        if bufs.out.len() >= WRITE_BATCH {
                            write_out(bufs, &mut offset)?;
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
                    matched += block(i as u32, bufs, &mut hasher)?;
                    if bufs.out.len() >= WRITE_BATCH {
                        write_out(bufs, &mut offset)?;
                    }
                }
            }
        }
        write_out(bufs, &mut offset)?;
        let theirs = ins.decode(|r| Ok(r.bytes(dlen)?.to_vec()))?;
        Ok((
            hasher.finish().as_bytes() == theirs.as_slice(),
            lit,
            matched,
        ))
    })();
    res
}
