//! The server roles: what runs as `rsync --server [--sender] ...` at the
//! other end of a remote shell, so a real rsync client (or ours) can use
//! arsync remotely. The server sends (`--sender`, the client pulls) or
//! receives (the client pushes) over its stdin/stdout.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use arsync_proto::handshake::{Handshake, HandshakeConfig, Negotiated, Role, PROTOCOL_VERSION};
use arsync_proto::stats::ExitCode;

use crate::conn::{InStream, OutStream};
use crate::error::{RemoteError, Result};
use crate::fsys::DestSpec;
use crate::opts::TransferOpts;
use crate::pull::{filter_from_wire, receive_session, ReceiveMode, TransferSummary};
use crate::push::{send_session, ListSource, SendMode};
use crate::session::{flist_options, token_compression};
use crate::transport::{IoClock, Limits, OnExpiry, Watchdog, Who};
use crate::walk::{DaemonFilter, SourceSpec};
use arsync_filter::FilterRules;

/// The parsed server command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    /// `--sender`: we send.
    pub sender: bool,
    /// Packed short flags (before `e`).
    pub flags: String,
    /// Capability letters after `e.`.
    pub caps: String,
    /// `--protocol=N`.
    pub protocol: Option<i32>,
    /// `--delete` (receiving server).
    pub delete: bool,
    /// `--numeric-ids`.
    pub numeric_ids: bool,
    /// `--delay-updates`.
    pub delay_updates: bool,
    /// `--delete-after` / `--delete-delay`.
    pub delete_after: bool,
    /// `--partial`.
    pub partial: bool,
    /// `--delete-before` (which rules out an incremental file list).
    pub delete_before: bool,
    /// Further options (see [`TransferOpts`]).
    pub opts: TransferOpts,
    /// The paths after `.` (bytes: they need not be UTF-8).
    pub paths: Vec<OsString>,
}

impl ServerArgs {
    /// Parses the arguments that follow the program name (starting with `--server`).
    /// Options are read as text; the paths keep their bytes.
    pub fn parse<S: AsRef<OsStr>>(args: &[S]) -> Result<ServerArgs> {
        if args.first().map(|a| a.as_ref()) != Some(OsStr::new("--server")) {
            return Err(RemoteError::Usage(
                "server arguments must start with --server".into(),
            ));
        }
        let mut a = ServerArgs {
            sender: false,
            flags: String::new(),
            caps: String::new(),
            protocol: None,
            delete: false,
            numeric_ids: false,
            delay_updates: false,
            delete_after: false,
            partial: false,
            delete_before: false,
            opts: TransferOpts::default(),
            paths: Vec::new(),
        };
        let mut saw_dot = false;
        let raw = &args[1..];
        let rest: Vec<String> = raw
            .iter()
            .map(|r| r.as_ref().to_string_lossy().into_owned())
            .collect();
        let mut k = 0;
        while k < rest.len() {
            let arg = &rest[k];
            k += 1;
            if saw_dot {
                a.paths.push(raw[k - 1].as_ref().to_os_string());
                continue;
            }
            if arg.starts_with("--") && arg != "--" {
                // Values keep their bytes (a backup directory need not be UTF-8).
                let this = raw[k - 1].as_ref();
                let mut next = || {
                    let v = raw.get(k).map(|r| r.as_ref().to_os_string());
                    k += 1;
                    v
                };
                if a.opts.parse_server_arg_os(this, &mut next)? {
                    continue;
                }
            }
            match arg.as_str() {
                "." => saw_dot = true,
                "--sender" => a.sender = true,
                "--numeric-ids" => a.numeric_ids = true,
                "--delete" | "--delete-during" => a.delete = true,
                "--delete-before" => {
                    a.delete = true;
                    a.delete_before = true;
                }
                "--delete-after" | "--delete-delay" => {
                    a.delete = true;
                    a.delete_after = true;
                }
                "--delay-updates" => a.delay_updates = true,
                "--partial" => a.partial = true,
                // rsync implies this partial dir with --delay-updates; our
                // delayed files wait under temporary names instead.
                "--partial-dir=.~tmp~" => {}
                // Diagnostics options of the peer do not change the protocol.
                "--msgs2stderr" | "--no-msgs2stderr" => {}
                s if s.starts_with("--debug=") || s.starts_with("--info=") => {}
                s if s.starts_with("--protocol=") => {
                    let v = &s["--protocol=".len()..];
                    a.protocol = Some(
                        v.parse()
                            .map_err(|_| RemoteError::Usage(format!("bad {s}")))?,
                    );
                }
                // Options that only affect the client's output or are
                // defaults here.
                "--stats" | "--force" | "--ignore-errors" | "--no-i-r" | "--no-inc-recursive" => {}
                // rsync adds it for --inplace --sparse (an old peers' bug); -W
                // is off unless the packed flags say otherwise.
                "--no-W" | "--no-whole-file" => {}
                // What the packed flags already say (rsync adds them for
                // -d with --delete, and --files-from without -R).
                "--no-r" | "--no-recursive" | "--no-relative" | "--no-R" => {}
                // The client logs (rsync's client sends this to a receiver).
                s if s.starts_with("--log-format=") => {
                    a.opts.report_deletions = true;
                    a.opts.itemize_all |= s.contains("%I");
                    a.opts.itemizing |= s.contains("%i");
                }
                s if s.starts_with("--out-format=") => {}
                s if s.starts_with("--") => return Err(unsupported(format!("server option {s}"))),
                // rsync's client sends -B and a negative -@ as short
                // options with the value attached (or in the next word).
                s if s.starts_with("-B") || s.starts_with("-@") => {
                    let value = match &s[2..] {
                        "" => {
                            k += 1;
                            rest.get(k - 1)
                                .cloned()
                                .ok_or_else(|| RemoteError::Usage(format!("{s} needs a value")))?
                        }
                        v => v.to_string(),
                    };
                    let long = match &s[..2] {
                        "-B" => "--block-size",
                        _ => "--modify-window",
                    };
                    a.opts
                        .parse_server_arg(&format!("{long}={value}"), &mut || None)?;
                }
                s if s.starts_with('-') => {
                    let packed = &s[1..];
                    match packed.split_once('e') {
                        Some((flags, caps)) => {
                            a.flags.push_str(flags);
                            // Skip an optional "<proto>.<sub>" prefix before the letters.
                            let digits = |c: char| c.is_ascii_digit();
                            let caps = caps.trim_start_matches(digits);
                            let caps = caps.strip_prefix('.').unwrap_or(caps);
                            a.caps = caps.trim_start_matches(digits).to_string();
                        }
                        None => a.flags.push_str(packed),
                    }
                }
                s => {
                    return Err(RemoteError::Usage(format!(
                        "unexpected server argument {s:?}"
                    )))
                }
            }
        }
        if let Some(c) = a.flags.chars().find(|c| !SUPPORTED_FLAGS.contains(*c)) {
            return Err(unsupported(format!("server flag -{c}")));
        }
        a.opts = std::mem::take(&mut a.opts).with_flags(&a.flags);
        if let Some(msg) = a.opts.conflict(a.delay_updates, a.flags.contains('W')) {
            return Err(RemoteError::Usage(msg));
        }
        // --delete-excluded implies --delete.
        a.delete |= a.opts.delete_excluded;
        if a.paths.is_empty() {
            return Err(RemoteError::Usage("no path after \".\"".into()));
        }
        Ok(a)
    }
}

/// Packed short flags this server implements (`v`/`i` only change output).
const SUPPORTED_FLAGS: &str = "logDtprdHcWzUviOJAXnSRuILkmxbEKC";

fn unsupported(what: String) -> RemoteError {
    RemoteError::Proto(arsync_proto::Error::Unsupported(format!(
        "{what} (not implemented by the arsync server)"
    )))
}

/// A fresh checksum seed (rsync uses time ^ pid << 6).
fn seed() -> i32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (t as i32) ^ ((std::process::id() as i32) << 6)
}

fn server_handshake<R: Read, W: Write>(
    ins: &mut InStream<R>,
    outs: &mut OutStream<W>,
    args: &ServerArgs,
    known_remote: Option<i32>,
    inc_recurse: bool,
) -> Result<Negotiated> {
    let mut cfg = HandshakeConfig::client(
        args.protocol
            .map_or(PROTOCOL_VERSION, |p| p.min(PROTOCOL_VERSION)),
        &args.caps,
    );
    cfg.role = Role::Server;
    // An incremental file list as rsync's server allows it (when the
    // client offers it), within what our sending or receiving side does.
    cfg.allow_inc_recurse = inc_recurse
        && !args.opts.remove_source_files
        && match args.sender {
            true => sender_allows_inc_recurse(args),
            false => crate::args::receiver_allows_inc_recurse(
                &args.flags,
                args.delete && (args.delete_after || args.delete_before),
                args.delay_updates,
                args.opts.prune_empty_dirs,
            ),
        };
    // --checksum-seed=NUM from the client, else one from the time (rsync's rule).
    cfg.seed = args.opts.checksum_seed.unwrap_or_else(seed);
    cfg.known_remote = known_remote;
    args.opts
        .compress
        .with_z(args.flags.contains('z'))
        .configure(&mut cfg)?;
    cfg.checksum_choice = match &args.opts.checksum_choice {
        Some(c) => crate::opts::parse_checksum_choice(c)?,
        None => None,
    };
    let mut hs = Handshake::new(cfg)?;
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            outs.write(&out)?;
            outs.flush()?;
        }
        if let Some(n) = hs.result() {
            return Ok(n.clone());
        }
        ins.decode_partial(|r| {
            let n = hs.feed(r.rest())?;
            r.bytes(n)?;
            Ok((n > 0 || hs.result().is_some()).then_some(()))
        })?;
    }
}

/// Whether a sending server sends its list incrementally: with `-r` and
/// one source, not with what arsync's incremental lists do not carry (`-H`,
/// `-A`, `-X`, `-R` and `--files-from`, which keep the whole list).
fn sender_allows_inc_recurse(args: &ServerArgs) -> bool {
    args.flags.contains('r')
        && !args.flags.contains('R')
        && !args.flags.contains('H')
        && !args.flags.contains('A')
        && !args.flags.contains('X')
        && args.paths.len() == 1
        && args.opts.files_from.is_none()
}

/// Reads the client's filter list into rules (`None` when empty).
/// Through a daemon (`confined`) rules that would read files of the
/// daemon's host are refused: a `merge` rule (rsync's client expands them,
/// so only a hostile one sends them) and a per-directory merge file named
/// with a directory part (which would be looked for outside the module);
/// `-F`'s `/.rsync-filter` is read from the module's parents too (with
/// `use chroot`, the module is the root).
fn read_filter_rules<R: Read>(
    ins: &mut InStream<R>,
    protocol: i32,
    confined: bool,
) -> Result<Option<FilterRules>> {
    let rules = ins.decode(arsync_proto::filter::decode_filter_list)?;
    if confined {
        if let Some(r) = rules.iter().find(|r| reads_host_files(r)) {
            return Err(RemoteError::Refused(format!(
                "filter rule {:?}: merge files outside the module are not read",
                String::from_utf8_lossy(r)
            )));
        }
    }
    filter_from_wire(&rules, protocol)
}

/// Whether a wire rule is a `merge` rule, or a `dir-merge` rule whose file
/// name has a directory part other than `-F`'s leading `/` (rule words as
/// rsync's `parse_rule_tok` reads them: a long name with `,modifiers`, or
/// `.`/`:` with modifiers, then a space or `_` before the name).
fn reads_host_files(rule: &[u8]) -> bool {
    let (per_dir, rest) = if let Some(r) = rule.strip_prefix(b"dir-merge") {
        (true, r)
    } else if let Some(r) = rule.strip_prefix(b"merge") {
        (false, r)
    } else if let Some(r) = rule.strip_prefix(b":") {
        (true, r)
    } else if let Some(r) = rule.strip_prefix(b".") {
        (false, r)
    } else {
        return false;
    };
    if !matches!(rest.first(), None | Some(b',' | b' ' | b'_')) && rule[0].is_ascii_alphabetic() {
        // Another rule word that starts the same way.
        return false;
    }
    let name = match rest.iter().position(|&c| c == b' ' || c == b'_') {
        Some(i) => &rest[i + 1..],
        None => &[][..],
    };
    let name = name.strip_prefix(b"/").unwrap_or(name);
    !per_dir || name.contains(&b'/')
}

/// Serves one session over `input`/`output` (the process's stdin/stdout).
pub fn run_server<R: Read, W: Write + Send + 'static>(
    args: &ServerArgs,
    input: R,
    output: W,
) -> Result<TransferSummary> {
    run_server_known(args, input, output, None)
}

/// [`run_server`] with the client's protocol already known (`known_remote`,
/// from a daemon greeting: no version ints are exchanged then).
pub fn run_server_known<R: Read, W: Write + Send + 'static>(
    args: &ServerArgs,
    input: R,
    output: W,
    known_remote: Option<i32>,
) -> Result<TransferSummary> {
    run_server_scoped(args, input, output, known_remote, None)
}

/// [`run_server_known`] for a daemon module with `exclude`/`include`/
/// `filter` rules: hidden files are not sent, not received (no transfer
/// is requested for them) and not deleted.
pub fn run_server_scoped<R: Read, W: Write + Send + 'static>(
    args: &ServerArgs,
    input: R,
    output: W,
    known_remote: Option<i32>,
    daemon: Option<DaemonFilter>,
) -> Result<TransferSummary> {
    serve(args, input, output, known_remote, daemon, None, None)
}

/// [`run_server_scoped`] on a daemon's connection: `--timeout` is
/// enforced by shutting the socket down (the daemon's other connections
/// go on), and reported with rsync's exit code 30.
pub fn run_server_socket(
    args: &ServerArgs,
    socket: std::net::TcpStream,
    known_remote: Option<i32>,
    daemon: Option<DaemonFilter>,
) -> Result<TransferSummary> {
    let clone = |s: &std::net::TcpStream| {
        s.try_clone()
            .map_err(|e| RemoteError::io("cloning the socket", e))
    };
    let w = clone(&socket)?;
    let watch = match args.opts.timeout {
        None => None,
        Some(_) => Some((
            Some(OwnedFd::from(clone(&socket)?)),
            OnExpiry::Shutdown(OwnedFd::from(clone(&socket)?)),
        )),
    };
    serve(args, socket, w, known_remote, daemon, None, watch)
}

/// [`run_server_scoped`]; `pipe` is the descriptor `output` writes to,
/// unbuffered, for splicing file data into it (see
/// [`OutStream::splice_into`]).
fn serve<R: Read, W: Write + Send + 'static>(
    args: &ServerArgs,
    input: R,
    output: W,
    known_remote: Option<i32>,
    daemon: Option<DaemonFilter>,
    pipe: Option<std::os::fd::OwnedFd>,
    watch: Option<(Option<OwnedFd>, OnExpiry)>,
) -> Result<TransferSummary> {
    let mut ins = InStream::new(input);
    let mut outs = OutStream::new(output);
    outs.set_bwlimit(args.opts.bwlimit);
    if let Some(fd) = pipe {
        outs.splice_into(fd);
    }
    // --timeout from the client: a receiving server's generator decides,
    // as rsync's does.
    let who = if args.sender {
        Who::Sender
    } else {
        Who::Generator
    };
    let limits = Limits {
        timeout: args.opts.timeout,
        stop_at: None,
    };
    let watchdog = match watch {
        Some((fd, on_expiry)) if !limits.is_none() => {
            let clock = IoClock::new(who);
            ins.set_clock(Arc::clone(&clock));
            outs.set_clock(Arc::clone(&clock));
            Watchdog::start(&clock, limits, fd, on_expiry)
        }
        _ => None,
    };
    let res = serve_session(args, ins, outs, known_remote, daemon);
    match (res, watchdog) {
        (Err(e), Some(w)) if w.expired() => Err(RemoteError::Timeout {
            code: ExitCode::Timeout,
            message: format!("io timeout: {e}"),
        }),
        (res, _) => res,
    }
}

/// The session of [`serve`] once its streams are set up.
fn serve_session<R: Read, W: Write + Send + 'static>(
    args: &ServerArgs,
    mut ins: InStream<R>,
    mut outs: OutStream<W>,
    known_remote: Option<i32>,
    daemon: Option<DaemonFilter>,
) -> Result<TransferSummary> {
    let neg = server_handshake(&mut ins, &mut outs, args, known_remote, daemon.is_none())?;
    let fopts = flist_options(&args.flags, args.numeric_ids, &neg)?;
    let codec = token_compression(&neg)?;
    outs.start_multiplex()?;
    ins.start_multiplex()?;
    let path = PathBuf::from(&args.paths[0]);
    if args.sender {
        let mut filter = read_filter_rules(&mut ins, neg.protocol, args.opts.confined)?;
        if args.flags.contains('C') {
            // -C: a sending server adds `:C` and `-C` after the client's
            // rules, with its own $HOME/.cvsignore and $CVSIGNORE (as
            // rsync's recv_filter_list does; a client receiver does not
            // send them).
            filter
                .get_or_insert_with(FilterRules::new)
                .add_cvs_exclude()
                .map_err(|e| RemoteError::Usage(format!("-C: {e}")))?;
        }
        let mut sources: Vec<SourceSpec> = args.paths.iter().map(SourceSpec::parse).collect();
        if let Some(from) = &args.opts.files_from {
            if args.opts.confined && from != "-" {
                return Err(RemoteError::Refused(
                    "--files-from with a file on the daemon's host".into(),
                ));
            }
            // --files-from: names below the (single) source directory.
            let names = match from.as_encoded_bytes() {
                b"-" if neg.protocol < 31 => {
                    return Err(unsupported("--files-from=- below protocol 31".into()))
                }
                b"-" => crate::opts::read_files_from_wire(&mut ins)?,
                _ => {
                    let f = std::path::Path::new(from);
                    arsync_sync::engine::read_files_from(f, args.opts.from0)
                        .map_err(|e| RemoteError::io(format!("--files-from {}", f.display()), e))?
                }
            };
            sources = crate::opts::files_from_sources(&path, &names, args.flags.contains('R'));
        }
        // --files-from implies -d (rsync's client does not send it).
        let mut opts = args.opts.clone();
        opts.dirs_only |= opts.files_from.is_some() && !args.flags.contains('r');
        let dirs = args.flags.contains('r') || args.flags.contains('d') || opts.dirs_only;
        if let Some(s) = sources.iter().find(|s| !dirs && s.path.is_dir()) {
            return Err(unsupported(format!(
                "sending directory {} without -r",
                s.path.display()
            )));
        }
        let list = ListSource::new(
            &sources,
            args.flags.contains('R'),
            &fopts,
            neg.file_checksum,
            (filter.as_ref(), daemon.as_ref()),
            &opts,
        )?;
        send_session(
            ins,
            outs,
            &neg,
            &fopts,
            list,
            SendMode {
                codec,
                write_stats: true,
                events: None,
                dry_run: args.flags.contains('n'),
                remove_sent: args.opts.remove_source_files,
                inplace: args.opts.inplace,
                append: args.opts.append,
                open_noatime: args.opts.open_noatime,
                verbose: args.opts.verbose,
            },
        )
    } else {
        // rsync's receiver reads the list when deleting or pruning (-m).
        let filter = match args.delete || args.opts.prune_empty_dirs {
            true => read_filter_rules(&mut ins, neg.protocol, args.opts.confined)?
                .map(std::sync::Arc::new),
            false => None,
        };
        if let Some(from) = args.opts.files_from.as_ref().filter(|f| *f != "-") {
            forward_files_from(&mut outs, from, args)?;
        }
        // --list-only: nothing is written (the destination is not made either).
        let dry = args.flags.contains('n') || args.opts.list_only;
        // Settled once the file list is in (rsync's get_local_name); the
        // receiver tells the client when it makes the directory.
        let dest = DestSpec {
            path: path.clone(),
            dry,
            temp_dir: args.opts.temp_dir.clone().map(|t| (t, args.opts.confined)),
            keep_dirlinks: args.opts.keep_dirlinks,
        };
        // --list-only: the listing goes to the client (rsync's generator
        // prints it there), the lines in file-list order.
        let listing = args
            .opts
            .list_only
            .then(|| std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
        let events = listing.clone().map(|queue| {
            crate::events::EventSink::new(move |e: &crate::events::FileEvent<'_>| {
                if let crate::events::FileEvent::Listed { entry } = e {
                    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    // rsync's server prints sizes with its default -h level.
                    q.extend_from_slice(&crate::events::list_line(entry, 1));
                    q.push(b'\n');
                }
            })
        });
        let mode = ReceiveMode {
            delete: args.delete,
            read_stats: false,
            codec,
            drain_eof: false,
            events,
            listing,
            whole_file: args.flags.contains('W'),
            filter,
            dry_run: dry,
            sparse: args.flags.contains('S'),
            delay_updates: args.delay_updates,
            late_delete: args.delete_after,
            daemon_filter: daemon.map(std::sync::Arc::new),
            partial: args.partial,
            perms: args.flags.contains('p'),
            times: args.flags.contains('t'),
            opts: args.opts.clone(),
        };
        receive_session(ins, outs, &neg, &fopts, dest, mode)
    }
}

/// `--files-from=HOST:LIST` on a push: a receiving server reads the list
/// on its own host and forwards the names to the sending client (as
/// rsync's receiver does, after the filter list).
fn forward_files_from<W: Write>(
    outs: &mut OutStream<W>,
    from: &OsStr,
    args: &ServerArgs,
) -> Result<()> {
    if args.opts.confined {
        // rsync's daemon would confine the path to the module; ours refuses.
        return Err(RemoteError::Refused(
            "--files-from with a file on the daemon's host".into(),
        ));
    }
    let f = std::path::Path::new(from);
    let names = arsync_sync::engine::read_files_from(f, args.opts.from0)
        .map_err(|e| RemoteError::io(format!("--files-from {}", f.display()), e))?;
    let mut out = Vec::new();
    crate::opts::encode_files_from(&names, &mut out);
    outs.write(&out)?;
    outs.flush()
}

/// Completes the handshake, then reports `msg` as a fatal error the way
/// rsync does once multiplexing runs (MSG_ERROR, then MSG_ERROR_EXIT with
/// `code`), so the client prints it and exits with that code.
pub fn refuse_session<R: Read, W: Write>(
    args: &ServerArgs,
    input: R,
    output: W,
    known_remote: Option<i32>,
    msg: &str,
    code: ExitCode,
) -> Result<()> {
    let mut ins = InStream::new(input);
    let mut outs = OutStream::new(output);
    server_handshake(&mut ins, &mut outs, args, known_remote, false)?;
    outs.start_multiplex()?;
    outs.message(
        arsync_proto::mux::MsgTag::Error,
        format!("@ERROR: {msg}\n").as_bytes(),
    )?;
    outs.message(
        arsync_proto::mux::MsgTag::ErrorExit,
        &code.code().to_le_bytes(),
    )?;
    outs.flush()
}

/// Runs the server on stdin/stdout and returns the process exit code.
pub fn serve_stdio<S: AsRef<OsStr>>(args: &[S]) -> ExitCode {
    let parsed = match ServerArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("arsync server: {e}");
            return e.exit_code();
        }
    };
    // The client may hand us non-blocking descriptors; we do blocking I/O.
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        if let Ok(fl) = rustix::fs::fcntl_getfl(fd) {
            let _ = rustix::fs::fcntl_setfl(fd, fl - rustix::fs::OFlags::NONBLOCK);
        }
    }
    // Raw descriptors: `Stdout` is line-buffered (it would flush at every
    // newline byte of binary data) and `Stdin` adds a second buffer.
    let fds = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|i| Ok((i, std::io::stdout().as_fd().try_clone_to_owned()?)));
    let (input, output) = match fds {
        Ok((i, o)) => (std::fs::File::from(i), std::fs::File::from(o)),
        Err(e) => {
            eprintln!("arsync server: duplicating stdin/stdout: {e}");
            return ExitCode::FileIo;
        }
    };
    let pipe = output.try_clone().ok().map(std::os::fd::OwnedFd::from);
    let keepalive = output.try_clone().ok().map(std::os::fd::OwnedFd::from);
    let watch = Some((keepalive, OnExpiry::Exit { kill: None }));
    match serve(&parsed, input, output, None, None, pipe, watch) {
        Ok(s) => s.exit_code(),
        Err(e) => {
            eprintln!("arsync server: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rules_reading_daemon_host_files() {
        for r in [
            &b"merge /etc/rules"[..],
            b". /etc/rules",
            b".e rules",
            b"merge,n- x",
            b":n- ../x/.f",
            b": /etc/.f",
            b"dir-merge,e /etc/.f",
            b"dir-merge_a/b",
        ] {
            assert!(reads_host_files(r), "{:?}", String::from_utf8_lossy(r));
        }
        for r in [
            &b": .rsync-filter"[..],
            b": /.rsync-filter",
            b":C",
            b"dir-merge,n- .excl",
            b"- *.o",
            b"+ /keep/",
            b"P x/y",
            b"mergeable",
        ] {
            assert!(!reads_host_files(r), "{:?}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn parses_per_file_options() {
        let a = ServerArgs::parse(&v(&[
            "--server",
            "-logDtpre.LsfxCIvu",
            "-B2048",
            "--checksum-choice=md5,xxh3",
            "-@-1",
            "--fsync",
            "--preallocate",
            "--open-noatime",
            ".",
            "d/",
        ]))
        .unwrap();
        assert_eq!(a.flags, "logDtpr");
        assert_eq!(a.opts.block_size, Some(2048));
        assert_eq!(a.opts.modify_window, Some(-1));
        assert_eq!(a.opts.checksum_choice.as_deref(), Some("md5,xxh3"));
        assert!(a.opts.fsync && a.opts.preallocate && a.opts.open_noatime);
        // The split forms, and the long ones.
        let a = ServerArgs::parse(&v(&[
            "--server", "-B", "1k", "-@", "3", "--cc", "xxh64", ".", "d/",
        ]))
        .unwrap();
        assert_eq!(a.opts.block_size, Some(1024));
        assert_eq!(a.opts.modify_window, Some(3));
        assert_eq!(a.opts.checksum_choice.as_deref(), Some("xxh64"));
        let a = ServerArgs::parse(&v(&["--server", "--modify-window=2", ".", "d/"])).unwrap();
        assert_eq!(a.opts.modify_window, Some(2));
        // rsync's bounds and names.
        for (bad, code) in [
            ("-B131073", ExitCode::Syntax),
            ("-Bxyz", ExitCode::Syntax),
            ("--checksum-choice=bogus", ExitCode::Unsupported),
        ] {
            let e = ServerArgs::parse(&v(&["--server", bad, ".", "d/"])).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(code), "{bad}");
        }
        assert!(ServerArgs::parse(&v(&["--server", "-B"])).is_err());
    }

    #[test]
    fn parses_server_argv() {
        let a = ServerArgs::parse(&v(&[
            "--server",
            "--sender",
            "-logDtpre.iLsfxCIvu",
            ".",
            "src/",
        ]))
        .unwrap();
        assert!(a.sender);
        assert_eq!(a.flags, "logDtpr");
        assert_eq!(a.caps, "iLsfxCIvu");
        assert_eq!(a.paths, ["src/"]);
        let a = ServerArgs::parse(&v(&[
            "--server",
            "-logDtprze31.0LsfxCIvu",
            "--delete",
            "--protocol=30",
            ".",
            "d/",
        ]))
        .unwrap();
        assert!(!a.sender && a.delete);
        assert_eq!(
            (a.flags.as_str(), a.caps.as_str(), a.protocol),
            ("logDtprz", "LsfxCIvu", Some(30))
        );
        assert!(ServerArgs::parse(&v(&["--sender", ".", "x"])).is_err());
        assert!(ServerArgs::parse(&v(&["--server", "--only-write-batch=x", ".", "x"])).is_err());
        let a = ServerArgs::parse(&v(&["--server", "--files-from=-", "--from0", ".", "x"]));
        assert_eq!(
            a.ok().and_then(|a| a.opts.files_from),
            Some(OsString::from("-"))
        );
        assert!(ServerArgs::parse(&v(&["--server", "-logDtpr", "."])).is_err());
        let e = ServerArgs::parse(&v(&["--server", "-Ylogdtpr", ".", "x"])).err();
        assert_eq!(e.map(|e| e.exit_code()), Some(ExitCode::Unsupported));
        // Options rsync's client splits over two words, and packed ones.
        let a = ServerArgs::parse(&v(&[
            "--server",
            "-blogDtpruxe.LsfxCIvu",
            "--backup-dir",
            "old files",
            "--max-delete=-1",
            "--delete-excluded",
            ".",
            "x",
        ]))
        .unwrap();
        assert!(a.opts.backup && a.opts.update && a.opts.one_file_system == 1);
        assert_eq!(a.opts.backup_dir.as_deref(), Some(OsStr::new("old files")));
        assert_eq!(a.opts.max_delete, Some(0));
        assert!(a.delete && a.opts.delete_excluded);
        assert_eq!(a.paths, ["x"]);
        let a = ServerArgs::parse(&v(&[
            "--server",
            "-nlogDtprAXSR",
            "--delete-after",
            "--delay-updates",
            "--partial-dir=.~tmp~",
            ".",
            "x",
            "y",
        ]))
        .unwrap();
        assert_eq!(a.flags, "nlogDtprAXSR");
        assert!(a.delete && a.delete_after && a.delay_updates);
        assert_eq!(a.paths, ["x", "y"]);
        // Paths keep their bytes; options are text.
        use std::os::unix::ffi::OsStrExt;
        let raw = [
            OsStr::new("--server"),
            OsStr::new("--sender"),
            OsStr::new("-logDtpr"),
            OsStr::new("."),
            OsStr::from_bytes(b"caf\xe9/"),
        ];
        let a = ServerArgs::parse(&raw).unwrap();
        assert!(a.sender);
        assert_eq!(a.paths[0].as_bytes(), b"caf\xe9/");
        assert!(SourceSpec::parse(&a.paths[0]).contents);
        let a = ServerArgs::parse(&v(&["--server", "-vlogDtpr", "--stats", ".", "x"]));
        assert!(a.is_ok());
    }
}
