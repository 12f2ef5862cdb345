//! The remote client: `arsync [opts] SRC [user@]host:DST` (push),
//! `arsync [opts] [user@]host:SRC DST` (pull), and the daemon forms
//! `rsync://[user@]host[:port]/module/path` and `[user@]host::module/path`.
//!
//! The local engine's command-line parser validates the options (so flags,
//! usage errors and exit codes match local mode); the remote-only options it
//! does not keep (`-e`, `--rsync-path`, `--password-file`, `--port`, `-z`,
//! `--protocol`) are read here by a pre-scan of the argument vector. A
//! requested feature the remote roles do not implement exits with code 4.

use std::ffi::OsString;
use std::sync::Arc;

use arsync_proto::stats::ExitCode;
use arsync_remote::args::{ServerCommand, CLIENT_CAPS};
use arsync_remote::daemon::{DaemonTarget, DEFAULT_PORT};
use arsync_remote::error::RemoteError;
use arsync_remote::events::{EventSink, FileEvent};
use arsync_remote::opts::{AltKind, TransferOpts};
use arsync_remote::pull::{pull, PullOptions, TransferSummary};
use arsync_remote::push::{push, PushOptions};
use arsync_remote::session::CompressSpec;
use arsync_remote::walk::SourceSpec;
use arsync_sync::options::{DeleteMode, IdMapRule, IdMatch, Options};

/// Where a path argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path (bytes: it need not be UTF-8).
    Local(OsString),
    /// `[user@]host:path` through a remote shell.
    Shell {
        /// Login name, if given.
        user: Option<String>,
        /// Host name.
        host: String,
        /// Path on the host (may be empty: the login directory).
        path: OsString,
    },
    /// An rsync daemon: `rsync://...` or `host::module/path`.
    Daemon {
        /// Login name, if given.
        user: Option<String>,
        /// Host name (without port).
        host: String,
        /// Port given in the URL.
        port: Option<u16>,
        /// `module/path`.
        path: OsString,
    },
}

/// Classifies one path argument as rsync does.
pub fn classify(arg: &str) -> Location {
    if let Some(rest) = arg.strip_prefix("rsync://") {
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = split_user(hostport);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().ok()),
            _ => (hostport.to_string(), None),
        };
        return Location::Daemon {
            user,
            host,
            port,
            path: path.into(),
        };
    }
    let Some(i) = arg.find(':') else {
        return Location::Local(arg.into());
    };
    // A slash before the first colon makes it a local path (as in rsync).
    if i == 0 || arg[..i].contains('/') {
        return Location::Local(arg.into());
    }
    let (user, host) = split_user(&arg[..i]);
    let rest = &arg[i + 1..];
    match rest.strip_prefix(':') {
        Some(path) => Location::Daemon {
            user,
            host,
            port: None,
            path: path.into(),
        },
        None => Location::Shell {
            user,
            host,
            path: rest.into(),
        },
    }
}

/// [`classify`] for an argument as given: paths keep their bytes (the
/// host part is text).
pub fn classify_os(arg: &std::ffi::OsStr) -> Location {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let text = arg.to_string_lossy();
    let raw = arg.as_bytes();
    // The path is the argument's tail; its bytes are taken from the raw
    // argument when the part before it was text.
    let tail = |path: OsString| {
        let start = text.len() - path.len();
        match raw.get(..start) == Some(&text.as_bytes()[..start]) {
            true => OsString::from_vec(raw[start..].to_vec()),
            false => path,
        }
    };
    match classify(&text) {
        Location::Local(_) => Location::Local(arg.to_os_string()),
        Location::Shell { user, host, path } => Location::Shell {
            user,
            host,
            path: tail(path),
        },
        Location::Daemon {
            user,
            host,
            port,
            path,
        } => Location::Daemon {
            user,
            host,
            port,
            path: tail(path),
        },
    }
}

/// The module name of a daemon `module/path` (its first component).
fn module_of(path: &std::ffi::OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    let b = path.as_bytes();
    b.split(|&c| c == b'/').next().unwrap_or_default()
}

fn split_user(s: &str) -> (Option<String>, String) {
    match s.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, s.to_string()),
    }
}

/// True when any path argument (non-option word) is remote.
pub fn has_remote_path(args: &[OsString]) -> bool {
    scan(args)
        .paths
        .iter()
        .any(|(_, p)| !matches!(classify_os(p), Location::Local(_)))
}

/// Remote-only options found by the pre-scan, and the path arguments with
/// their positions in the argument vector.
#[derive(Debug, Default)]
struct Scan {
    rsh: Option<String>,
    rsync_path: Option<String>,
    password_file: Option<String>,
    port: Option<u16>,
    /// `-z` and the other compression options.
    compress: CompressSpec,
    protocol: Option<i32>,
    /// Indices (in the argv) of options to drop before the local parser sees them.
    drop: Vec<usize>,
    paths: Vec<(usize, OsString)>,
}

/// Long options that take a value as the next word (when not given `=`).
const LONG_WITH_VALUE: &[&str] = &[
    "rsh",
    "rsync-path",
    "password-file",
    "port",
    "protocol",
    "exclude",
    "include",
    "filter",
    "exclude-from",
    "include-from",
    "files-from",
    "max-delete",
    "max-size",
    "min-size",
    "partial-dir",
    "temp-dir",
    "backup-dir",
    "suffix",
    "link-dest",
    "compare-dest",
    "copy-dest",
    "chmod",
    "chown",
    "usermap",
    "groupmap",
    "out-format",
    "log-file",
    "log-file-format",
    "modify-window",
    "block-size",
    "timeout",
    "contimeout",
    "bwlimit",
    "stop-after",
    "stop-at",
    "info",
    "debug",
    "skip-compress",
    "max-alloc",
    "outbuf",
    "compress-choice",
    "compress-level",
    "zc",
    "zl",
    "compress-threads",
    "zt",
    "checksum-choice",
    "threads",
    "queue-depth",
    "address",
    "sockopts",
    "config",
    "iconv",
    "copy-as",
    "early-input",
    "remote-option",
    "write-batch",
    "only-write-batch",
    "read-batch",
];

/// Short options that take a value (rest of the word or the next word).
const SHORT_WITH_VALUE: &str = "eBfTM@";

fn scan(args: &[OsString]) -> Scan {
    let mut s = Scan::default();
    let mut i = 1;
    let mut only_paths = false;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if only_paths || !a.starts_with('-') || a == "-" {
            s.paths.push((i, args[i].clone()));
            i += 1;
            continue;
        }
        if a == "--" {
            only_paths = true;
            i += 1;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let takes = LONG_WITH_VALUE.contains(&name);
            let mut value = inline;
            let start = i;
            if takes && value.is_none() && i + 1 < args.len() {
                i += 1;
                value = Some(args[i].to_string_lossy().into_owned());
            }
            match name {
                "rsh" => s.rsh = value,
                "rsync-path" => s.rsync_path = value,
                "password-file" => {
                    s.password_file = value;
                    s.drop.extend(start..=i);
                }
                "port" => {
                    s.port = value.and_then(|v| v.parse().ok());
                    s.drop.extend(start..=i);
                }
                "protocol" => s.protocol = value.and_then(|v| v.parse().ok()),
                n if s.compress.parse_long(n, value.as_deref()) => {
                    // Not all of them are known to the local parser.
                    s.drop.extend(start..=i);
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        // A cluster of short options.
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            if SHORT_WITH_VALUE.contains(c) {
                let rest: String = chars[j + 1..].iter().collect();
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i).map(|v| v.to_string_lossy().into_owned())
                } else {
                    Some(rest)
                };
                if c == 'e' {
                    s.rsh = value;
                }
                break;
            }
            if c == 'z' {
                s.compress.count += 1;
            }
            j += 1;
        }
        i += 1;
    }
    s
}

/// Splits a `-e` command into words (whitespace, with '...' and "..." quoting).
pub fn split_command(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn fail(code: ExitCode, msg: impl std::fmt::Display) -> i32 {
    eprintln!("arsync: {msg}");
    eprintln!(
        "arsync error: {} (code {})",
        match code {
            ExitCode::Syntax => "syntax or usage error",
            ExitCode::Unsupported => "requested action not supported",
            ExitCode::Protocol => "protocol incompatibility",
            ExitCode::StartClient => "error starting client-server protocol",
            ExitCode::StreamIo => "error in rsync protocol data stream",
            ExitCode::FileIo => "error in file IO",
            ExitCode::Partial => "some files/attrs were not transferred",
            _ => "error",
        },
        code.code()
    );
    code.code()
}

/// The options beyond the packed flags (and `u`, `I`), for both roles.
fn transfer_opts(o: &Options) -> TransferOpts {
    TransferOpts {
        // From the pre-scan (the local parser does not keep them).
        compress: CompressSpec::default(),
        update: o.update,
        ignore_times: o.ignore_times,
        existing: o.existing,
        ignore_existing: o.ignore_existing,
        size_only: o.size_only,
        min_size: o.min_size,
        max_size: o.max_size,
        copy_links: o.copy_links,
        copy_unsafe_links: o.copy_unsafe_links,
        safe_links: o.safe_links,
        copy_dirlinks: o.copy_dirlinks,
        one_file_system: o.one_file_system,
        chmod: o.chmod.clone(),
        prune_empty_dirs: o.prune_empty_dirs,
        dirs_only: o.dirs && !o.recursive,
        max_delete: o.max_delete,
        delete_excluded: o.delete_excluded,
        remove_source_files: o.remove_source_files,
        list_only: o.list_only,
        usermap: id_spec(&o.usermap, o.chown_uid),
        groupmap: id_spec(&o.groupmap, o.chown_gid),
        backup: o.backup,
        backup_dir: o
            .backup_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        suffix: o.suffix.as_ref().map(|x| x.to_string_lossy().into_owned()),
        alt_dirs: [&o.compare_dest, &o.copy_dest, &o.link_dest]
            .into_iter()
            .flatten()
            .map(|d| d.to_string_lossy().into_owned())
            .collect(),
        alt_kind: if !o.link_dest.is_empty() {
            AltKind::Link
        } else if !o.copy_dest.is_empty() {
            AltKind::Copy
        } else {
            AltKind::Compare
        },
        // Set by `run` once it knows where the list is read.
        files_from: None,
        from0: false,
        // With -p, -E changes nothing (rsync does not send it then).
        executability: o.executability && !o.perms,
        inplace: o.inplace,
        append: if o.append_verify { 2 } else { o.append as u8 },
        partial_dir: o
            .partial_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        temp_dir: o
            .temp_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        keep_dirlinks: o.keep_dirlinks,
        confined: false,
    }
}

/// `--usermap`/`--groupmap` text for the parsed rules (`--chown` gives
/// `*:ID`), with local names already resolved to ids.
fn id_spec(rules: &[IdMapRule], chown: Option<u32>) -> Option<String> {
    if let Some(id) = chown {
        return Some(format!("*:{id}"));
    }
    let parts: Vec<String> = rules
        .iter()
        .map(|r| {
            let from = match &r.from {
                IdMatch::Id(i) => i.to_string(),
                IdMatch::Range(lo, hi) => format!("{lo}-{hi}"),
                IdMatch::Name(n) => n.clone(),
            };
            format!("{from}:{}", r.to)
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The packed short flags for the server, as rsync's `server_options` builds them.
fn server_flags(o: &Options, compress: bool) -> String {
    let mut f = String::new();
    for (on, c) in [
        (o.links, 'l'),
        (o.owner, 'o'),
        (o.group, 'g'),
        (o.devices || o.specials, 'D'),
        (o.times, 't'),
        (o.atimes, 'U'),
        (o.perms, 'p'),
        (o.recursive, 'r'),
        // --files-from implies -d without sending it (as rsync's client).
        (o.dirs && !o.recursive && o.files_from.is_none(), 'd'),
        (o.relative, 'R'),
        (o.hard_links, 'H'),
        (o.checksum, 'c'),
        (o.whole_file, 'W'),
        (o.dry_run, 'n'),
        (o.sparse, 'S'),
        (o.acls, 'A'),
        (o.xattrs, 'X'),
        (compress, 'z'),
    ] {
        if on {
            f.push(c);
        }
    }
    f
}

/// Wire-form filter rules (`- pat`, `+ pat`, rule text) from the argv, in order.
fn wire_filters(args: &[OsString]) -> Result<Vec<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut rules: Vec<Vec<u8>> = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        // The value keeps its bytes (a pattern need not be UTF-8).
        let raw = args[i].as_bytes();
        let (name, value) = match raw.iter().position(|&c| c == b'=') {
            Some(k) if raw.starts_with(b"--") => (
                String::from_utf8_lossy(&raw[..k]).into_owned(),
                Some(raw[k + 1..].to_vec()),
            ),
            _ => (a.clone(), None),
        };
        let take = |i: &mut usize| -> Option<Vec<u8>> {
            value.clone().or_else(|| {
                *i += 1;
                args.get(*i).map(|v| v.as_bytes().to_vec())
            })
        };
        let prefixed = |p: &[u8], v: Vec<u8>| [p, &v].concat();
        match name.as_str() {
            "--exclude" => rules.extend(take(&mut i).map(|v| prefixed(b"- ", v))),
            "--include" => rules.extend(take(&mut i).map(|v| prefixed(b"+ ", v))),
            "--filter" => rules.extend(take(&mut i)),
            "--exclude-from" | "--include-from" | "--cvs-exclude" => {
                return Err(format!("{name} with a remote peer"));
            }
            "-f" => rules.extend(take(&mut i)),
            s if s.starts_with("-C")
                || (s.starts_with('-') && !s.starts_with("--") && s.contains('C')) =>
            {
                return Err("--cvs-exclude (-C) with a remote peer".into());
            }
            _ => {}
        }
        i += 1;
    }
    let merge = |r: &Vec<u8>| {
        let word = r
            .split(|&c| c == b' ' || c == b',')
            .next()
            .unwrap_or_default();
        matches!(word, b"merge" | b"dir-merge" | b".")
            || word.starts_with(b":")
            || r.starts_with(b".")
    };
    if let Some(r) = rules.iter().find(|r| merge(r)) {
        return Err(format!("merge rule {:?}", String::from_utf8_lossy(r)));
    }
    Ok(rules)
}

/// `--delete-excluded`: a plain include/exclude rule becomes a sender-side
/// one (`-s`/`+s`), as rsync's client makes it, so it hides files from the
/// sender's walk but does not protect the receiver's files from deletion.
fn sender_side(rule: &[u8]) -> Vec<u8> {
    for (long, short) in [
        (&b"exclude "[..], &b"-s "[..]),
        (b"include ", b"+s "),
        (b"- ", b"-s "),
        (b"+ ", b"+s "),
    ] {
        if let Some(pat) = rule.strip_prefix(long) {
            return [short, pat].concat();
        }
    }
    rule.to_vec()
}

/// Runs a transfer with one remote side. `args` is the whole argv.
pub fn run(args: &[OsString]) -> i32 {
    let s = scan(args);
    // Let the local parser validate everything, with the remote paths
    // replaced by placeholders and the options it refuses removed.
    let mut local_args: Vec<OsString> = Vec::with_capacity(args.len());
    let path_idx: Vec<usize> = s.paths.iter().map(|(i, _)| *i).collect();
    for (i, a) in args.iter().enumerate() {
        if s.drop.contains(&i) {
            continue;
        }
        if path_idx.contains(&i) && !matches!(classify_os(a), Location::Local(_)) {
            local_args.push(OsString::from(format!("/arsync-remote-placeholder-{i}")));
        } else {
            local_args.push(a.clone());
        }
    }
    let parsed = match arsync_sync::cli::parse(local_args) {
        Ok(p) => p,
        Err(e) => {
            if !e.msg.is_empty() {
                eprintln!("{}", e.msg);
            }
            return e.code;
        }
    };
    let o = parsed.opts;
    let mut locs: Vec<Location> = s.paths.iter().map(|(_, p)| classify_os(p)).collect();
    if locs.len() == 1 && o.list_only {
        // One remote path: list it (a destination that is never created).
        let nowhere = std::env::temp_dir().join(format!(".arsync-list-{}", std::process::id()));
        locs.push(Location::Local(nowhere.into_os_string()));
    }
    if locs.len() < 2 {
        return fail(ExitCode::Syntax, "no destination given");
    }
    let (srcs, dst) = locs.split_at(locs.len() - 1);
    let dst = &dst[0];
    let src_remote = srcs.iter().any(|l| !matches!(l, Location::Local(_)));
    let dst_remote = !matches!(dst, Location::Local(_));
    if src_remote && dst_remote {
        return fail(
            ExitCode::Syntax,
            "the source and destination cannot both be remote",
        );
    }
    if o.list_only && !src_remote {
        return fail(
            ExitCode::Unsupported,
            "--list-only with a remote destination is not supported",
        );
    }
    if src_remote && srcs.iter().any(|l| matches!(l, Location::Local(_))) {
        return fail(ExitCode::Syntax, "local and remote sources cannot be mixed");
    }
    let alt_kinds = [&o.compare_dest, &o.copy_dest, &o.link_dest]
        .iter()
        .filter(|d| !d.is_empty())
        .count();
    if alt_kinds > 1 {
        return fail(
            ExitCode::Syntax,
            "only one of --compare-dest, --copy-dest, --link-dest may be used",
        );
    }
    let mut filters = match wire_filters(args) {
        Ok(f) if o.delete_excluded => f.iter().map(|r| sender_side(r)).collect(),
        Ok(f) => f,
        Err(e) => return fail(ExitCode::Unsupported, format!("{e} is not supported yet")),
    };
    if let Some(d) = o.partial_dir.as_ref().map(|d| d.to_string_lossy()) {
        // As rsync's client: a relative partial directory is hidden from
        // the walk and protected from deletion (a perishable exclude).
        if !d.starts_with('/') {
            filters.push(format!("-p {}/", d.trim_end_matches('/')).into_bytes());
        }
    }
    if o.backup && o.deleting() && o.backup_dir.is_none() && !o.delete_excluded {
        // As rsync's client: backups in the destination are not deleted.
        filters.push(format!("P *{}", o.backup_suffix().to_string_lossy()).into_bytes());
    }
    if let Err(e) = s.compress.mode() {
        // rsync's words for an unknown --compress-choice (exit code 4).
        let msg = match &e {
            RemoteError::Proto(arsync_proto::Error::Unsupported(m)) => m.clone(),
            e => e.to_string(),
        };
        return fail(e.exit_code(), msg);
    }
    let remote = if src_remote { &srcs[0] } else { dst };
    let mut cmd = ServerCommand {
        remote_shell: Vec::new(),
        rsync_path: s.rsync_path.clone().unwrap_or_else(|| "rsync".into()),
        server_sends: src_remote,
        flags: server_flags(&o, s.compress.packed_z()),
        caps: CLIENT_CAPS.into(),
        protocol: s.protocol,
        path: OsString::new(),
        more_paths: Vec::new(),
        delete: o.deleting(),
        delay_updates: o.delay_updates,
        delete_after: matches!(o.delete, DeleteMode::After | DeleteMode::Delay),
        partial: o.partial,
        numeric_ids: o.numeric_ids,
        opts: transfer_opts(&o),
    };
    cmd.opts.compress = s.compress.clone();
    // --files-from: a local list is read here (a pull sends it to the
    // server after the filter list); `host:path` on the pulling source's
    // host is read by the server.
    let mut ff_names = None;
    if let Some(ff) = &o.files_from {
        match classify_os(ff.as_ref()) {
            Location::Local(f) => {
                let f = std::path::Path::new(&f);
                match arsync_sync::engine::read_files_from(f, o.from0) {
                    Ok(n) => ff_names = Some(n),
                    Err(e) => {
                        return fail(
                            ExitCode::FileSelect,
                            format!("--files-from {}: {e}", f.display()),
                        )
                    }
                }
                if src_remote {
                    if s.protocol.is_some_and(|p| p < 31) {
                        return fail(
                            ExitCode::Unsupported,
                            "--files-from with a remote source below protocol 31",
                        );
                    }
                    cmd.opts.files_from = Some("-".into());
                }
            }
            Location::Shell { host, path, .. }
                if src_remote
                    && matches!(remote, Location::Shell { host: h, .. } if *h == host) =>
            {
                cmd.opts.files_from = Some(path.to_string_lossy().into_owned());
                cmd.opts.from0 = o.from0;
            }
            _ => {
                return fail(
                    ExitCode::Unsupported,
                    "a remote --files-from list must be on the pulling source's host",
                )
            }
        }
    }
    let mut daemon = None;
    match remote {
        Location::Shell { user, host, path } => {
            let rsh = s
                .rsh
                .clone()
                .or_else(|| std::env::var("RSYNC_RSH").ok())
                .unwrap_or_else(|| "ssh".into());
            let mut sh = split_command(&rsh);
            if sh.is_empty() {
                return fail(ExitCode::Syntax, "empty remote shell command (-e)");
            }
            if let Some(u) = user {
                sh.push("-l".into());
                sh.push(u.clone());
            }
            sh.push(host.clone());
            cmd.remote_shell = sh;
            cmd.path = if path.is_empty() {
                ".".into()
            } else {
                path.clone()
            };
            // Further remote sources: `host:a host:b` or `host:a :b`.
            for l in srcs.iter().skip(1).filter(|_| src_remote) {
                match l {
                    Location::Shell {
                        host: h, path: p, ..
                    } if h == host => cmd.more_paths.push(p.clone()),
                    _ => {
                        return fail(
                            ExitCode::Syntax,
                            "all remote sources must be on the same host",
                        )
                    }
                }
            }
        }
        Location::Daemon {
            user,
            host,
            port,
            path,
        } => {
            let port = port.or(s.port).unwrap_or(DEFAULT_PORT);
            let shown = path.to_string_lossy();
            let url = match user {
                Some(u) => format!("rsync://{u}@{host}:{port}/{shown}"),
                None => format!("rsync://{host}:{port}/{shown}"),
            };
            let mut t = match DaemonTarget::parse(&url) {
                Ok(t) => t,
                Err(e) => return fail(ExitCode::Syntax, e),
            };
            // The path's own bytes (it need not be UTF-8).
            t.path = path.clone();
            t.password = match &s.password_file {
                Some(f) => match std::fs::read_to_string(f) {
                    Ok(text) => Some(text.lines().next().unwrap_or("").to_string()),
                    Err(e) => return fail(ExitCode::FileIo, format!("password file {f}: {e}")),
                },
                None => std::env::var("RSYNC_PASSWORD").ok(),
            };
            // Further sources: the same daemon and module.
            for l in srcs.iter().skip(1).filter(|_| src_remote) {
                match l {
                    Location::Daemon {
                        host: h,
                        port: p,
                        path: more,
                        ..
                    } if h == host
                        && p.or(s.port).unwrap_or(DEFAULT_PORT) == port
                        && module_of(more) == module_of(path) =>
                    {
                        t.more_paths.push(more.clone())
                    }
                    _ => {
                        return fail(
                            ExitCode::Syntax,
                            "all daemon sources must name the same daemon and module",
                        )
                    }
                }
            }
            cmd.path = path.clone();
            daemon = Some(t);
        }
        Location::Local(_) => return fail(ExitCode::Syntax, "no remote path"),
    }
    let events = event_sink(&o);
    let res = if src_remote {
        let Location::Local(dest) = dst else {
            return fail(ExitCode::Syntax, "no local destination");
        };
        // A dry run creates nothing, not even the destination.
        if let Err(e) = match o.dry_run || o.list_only {
            true => Ok(()),
            false => std::fs::create_dir(dest),
        } {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                let dest = std::path::Path::new(dest).display();
                return fail(ExitCode::FileIo, format!("mkdir {dest}: {e}"));
            }
        }
        let mut p = PullOptions::new(cmd.path.clone(), dest);
        p.command = cmd;
        p.daemon = daemon;
        p.events = events;
        p.filters = filters;
        p.files_from = ff_names;
        p.echo_messages = !o.quiet;
        pull(&p)
    } else {
        let mut local = Vec::new();
        for l in srcs {
            let Location::Local(src) = l else {
                return fail(ExitCode::Syntax, "no local source");
            };
            if !o.recursive && !o.dirs && std::path::Path::new(src).is_dir() {
                return fail(
                    ExitCode::Unsupported,
                    format!(
                        "sending directory {} without --recursive (-r) is not supported yet",
                        std::path::Path::new(src).display()
                    ),
                );
            }
            local.push(SourceSpec::parse(src));
        }
        if let Some(names) = &ff_names {
            // --files-from: the names below the one source directory.
            if local.len() != 1 || names.is_empty() {
                return fail(
                    ExitCode::Syntax,
                    "--files-from needs one source directory and at least one name",
                );
            }
            let base = local[0].path.clone();
            local = arsync_remote::opts::files_from_sources(&base, names, o.relative);
        }
        let first = local.remove(0);
        let mut p = PushOptions::new(first.path, cmd.path.clone());
        p.contents = first.contents;
        p.more_sources = local;
        p.command = cmd;
        p.daemon = daemon;
        p.events = events;
        p.filters = filters;
        p.echo_messages = !o.quiet;
        push(&p)
    };
    match res {
        Ok(summary) => {
            if o.stats {
                print_stats(&summary);
            }
            let code = summary.exit_code();
            if code != ExitCode::Ok {
                for e in &summary.errors {
                    eprintln!("arsync: {e}");
                }
                return fail(code, "some files were not transferred");
            }
            0
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

fn event_sink(o: &Options) -> Option<EventSink> {
    if o.list_only {
        let human = o.human_readable;
        return Some(EventSink(Arc::new(move |e: &FileEvent<'_>| {
            if let FileEvent::Listed { entry } = e {
                println!("{}", list_line(entry, human));
            }
        })));
    }
    if o.quiet || (o.verbose == 0 && o.itemize == 0 && o.out_format.is_none()) {
        return None;
    }
    Some(EventSink(Arc::new(|e: &FileEvent<'_>| match e {
        FileEvent::Transferred { name, .. } => print_name(b"", name),
        FileEvent::Deleted { name } => print_name(b"deleting ", name),
        FileEvent::Listed { .. } => {}
    })))
}

/// Prints `prefix` and `name` on a line, the name escaped as rsync does
/// (`\#ooo` for bytes that are not printable UTF-8).
fn print_name(prefix: &[u8], name: &[u8]) {
    use std::io::Write;
    let mut line = prefix.to_vec();
    line.extend_from_slice(&arsync_sync::report::escape_name(name));
    line.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&line);
}

/// rsync's `--list-only` line for an entry of a remote file list.
fn list_line(e: &arsync_proto::flist::FileEntry, human: u8) -> String {
    let meta = arsync_sync::fsops::Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size.max(0) as u64,
        mtime: arsync_sync::fsops::Time {
            sec: e.mtime,
            nsec: e.mtime_nsec,
        },
        atime: arsync_sync::fsops::Time::default(),
        rdev: 0,
        dev: 0,
        ino: 0,
        nlink: 1,
    };
    // rsync escapes the whole line (name and link target) as it prints it.
    let esc = arsync_sync::report::escape_name;
    let link = e.link_target.as_deref().map(esc);
    let line = arsync_sync::report::list_line(&meta, &esc(&e.name), link.as_deref(), human);
    String::from_utf8_lossy(&line).into_owned()
}

fn print_stats(s: &TransferSummary) {
    println!();
    println!("Number of files: {}", s.files_total);
    println!(
        "Number of regular files transferred: {}",
        s.files_transferred
    );
    println!("Literal data: {} bytes", s.literal_bytes);
    println!("Matched data: {} bytes", s.matched_bytes);
    println!("Total bytes sent: {}", s.bytes_written);
    println!("Total bytes received: {}", s.bytes_read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(classify("a/b:c"), Location::Local("a/b:c".into()));
        assert_eq!(classify("/abs"), Location::Local("/abs".into()));
        assert_eq!(
            classify("me@h:dir/"),
            Location::Shell {
                user: Some("me".into()),
                host: "h".into(),
                path: "dir/".into()
            }
        );
        assert_eq!(
            classify("h::mod/x"),
            Location::Daemon {
                user: None,
                host: "h".into(),
                port: None,
                path: "mod/x".into()
            }
        );
        assert_eq!(
            classify("rsync://u@h:8730/mod/x"),
            Location::Daemon {
                user: Some("u".into()),
                host: "h".into(),
                port: Some(8730),
                path: "mod/x".into()
            }
        );
    }

    #[test]
    fn paths_keep_their_bytes() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let os = |b: &[u8]| OsString::from_vec(b.to_vec());
        assert_eq!(
            classify_os(&os(b"d\xe9/x:y")),
            Location::Local(os(b"d\xe9/x:y"))
        );
        assert_eq!(
            classify_os(&os(b"u@h:/caf\xe9/\xff")),
            Location::Shell {
                user: Some("u".into()),
                host: "h".into(),
                path: os(b"/caf\xe9/\xff")
            }
        );
        assert_eq!(
            classify_os(&os(b"rsync://h:8730/mod/\xe9")),
            Location::Daemon {
                user: None,
                host: "h".into(),
                port: Some(8730),
                path: os(b"mod/\xe9")
            }
        );
        assert_eq!(module_of(std::ffi::OsStr::from_bytes(b"m\xff/x")), b"m\xff");
    }

    #[test]
    fn scans_remote_options() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let s = scan(&v(&[
            "arsync",
            "-avze",
            "ssh -p 22",
            "--rsync-path=/bin/x",
            "--password-file",
            "pw",
            "src/",
            "h:dst",
        ]));
        assert_eq!(s.rsh.as_deref(), Some("ssh -p 22"));
        assert_eq!(s.rsync_path.as_deref(), Some("/bin/x"));
        assert_eq!(s.password_file.as_deref(), Some("pw"));
        assert_eq!(s.compress.count, 1);
        assert_eq!(s.drop, [4, 5]);
        assert_eq!(s.paths.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(
            split_command("ssh -o 'A B' \"c\""),
            ["ssh", "-o", "A B", "c"]
        );
    }
}
