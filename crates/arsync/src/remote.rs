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
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use arsync_filter::{FilterRules, FromFile, WireRole};
use arsync_proto::stats::ExitCode;
use arsync_remote::args::{ServerCommand, CLIENT_CAPS};
use arsync_remote::daemon::{DaemonTarget, DEFAULT_PORT};
use arsync_remote::error::RemoteError;
use arsync_remote::events::{EventSink, FileEvent};
use arsync_remote::opts::{parse_block_size, parse_checksum_choice, AltKind, TransferOpts};
use arsync_remote::pull::{pull, PullOptions};
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
    /// `--timeout`: seconds (0: none).
    timeout: Option<u32>,
    /// `--contimeout`: seconds (0: none).
    contimeout: Option<u32>,
    /// `--no-inc-recursive` / `--no-i-r`.
    no_inc_recurse: bool,
    /// Indices (in the argv) of options to drop before the local parser sees them.
    drop: Vec<usize>,
    paths: Vec<(usize, OsString)>,
    /// `-B`/`--block-size` as given (the local parser does not keep it).
    block_size: Option<String>,
    /// `--checksum-choice`/`--cc` as given (taken out of the local
    /// parser's sight: rsync's error for an unknown name is code 4).
    checksum_choice: Option<String>,
    /// `--checksum-seed` as given (the local parser checks it).
    checksum_seed: Option<String>,
    /// `--modify-window`/`-@` as given (rsync sends it only then). A
    /// word starting with `-@` is taken out of the local parser's sight
    /// (it knows only the long form).
    modify_window: Option<String>,
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
    "time-limit",
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
    "cc",
    "checksum-seed",
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
                "block-size" => s.block_size = value,
                "checksum-choice" | "cc" => {
                    s.checksum_choice = value;
                    s.drop.extend(start..=i);
                }
                "modify-window" => s.modify_window = value,
                "checksum-seed" => s.checksum_seed = value,
                // Validated by the local parser; 0 is none, as in rsync.
                "timeout" => s.timeout = value.and_then(|v| v.parse().ok()).filter(|&t| t > 0),
                "contimeout" => {
                    s.contimeout = value.and_then(|v| v.parse().ok()).filter(|&t| t > 0)
                }
                "no-inc-recursive" | "no-i-r" | "inc-recursive" | "i-r" => {
                    s.no_inc_recurse = name.starts_with("no-");
                    s.drop.push(start);
                }
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
        let start = i;
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
                match c {
                    'e' => s.rsh = value,
                    'B' => s.block_size = value,
                    '@' => {
                        if j == 0 {
                            s.drop.extend(start..=i);
                        }
                        s.modify_window = value;
                    }
                    _ => {}
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
            ExitCode::Timeout => "timeout in data send/receive",
            ExitCode::ConTimeout => "timeout waiting for daemon connection",
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
        bwlimit: o.bwlimit,
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
        // Bytes: neither need be UTF-8.
        backup_dir: o.backup_dir.as_ref().map(|d| d.as_os_str().to_os_string()),
        suffix: o.suffix.clone(),
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
        // A receiving server reports deletions when we print them.
        // Set by `run` when it makes a pulled destination.
        dest_created: false,
        itemize_all: o.itemize > 1 && !o.quiet,
        verbose: if o.quiet { 0 } else { o.verbose.min(9) },
        itemizing: o.line_format().is_some_and(|f| f.contains("%i")),
        report_deletions: o.log_file.is_some()
            || (!o.quiet && (o.verbose > 0 || o.itemize > 0 || o.out_format.is_some() || o.stats)),
        // Set by `run` from the pre-scan (the local parser does not keep them).
        modify_window: None,
        block_size: None,
        checksum_choice: None,
        checksum_seed: None,
        timeout: None,
        fsync: o.fsync,
        preallocate: o.preallocate,
        open_noatime: o.open_noatime,
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
fn server_flags(o: &Options, compress: bool, cvs: bool) -> String {
    // From -vv on, one `v` per level first, as rsync's client sends them
    // (a single -v stays with the client: the server reports through
    // --log-format=%i then).
    let mut f = match (o.verbose, o.quiet) {
        (v, false) if v >= 2 => "v".repeat(v.min(9) as usize),
        _ => String::new(),
    };
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
        (cvs, 'C'),
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

/// The client's filter rules from the argv, in command-line order, as rsync's
/// client builds its list: `--exclude`, `--include`, `--filter`/`-f`,
/// `--exclude-from`, `--include-from` and `merge` rules are read here (the
/// files are the client's), `-F` adds `dir-merge /.rsync-filter` (a second
/// `-F` also `- .rsync-filter`), `-C` adds `:C` and `-C` after all others.
/// Returns the rules and whether `-C` was given (rsync also sends it as the
/// packed `C`, so a sending server adds its own CVS rules).
fn client_filters(args: &[OsString], o: &Options) -> Result<(FilterRules, bool), String> {
    use std::os::unix::ffi::OsStrExt;
    let mut rules = FilterRules::new();
    rules.set_from0(o.from0);
    let mut cvs = false;
    let mut f_count = 0;
    let mut i = 1;
    let err = |what: &str, e: arsync_filter::FilterError| format!("{what}: {e}");
    while i < args.len() {
        // Values keep their bytes (a pattern need not be UTF-8).
        let raw = args[i].as_bytes();
        if raw == b"--" {
            break;
        }
        if !raw.starts_with(b"-") || raw == b"-" {
            i += 1;
            continue;
        }
        if let Some(long) = raw.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&c| c == b'=') {
                Some(k) => (&long[..k], Some(long[k + 1..].to_vec())),
                None => (long, None),
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = inline;
            if value.is_none() && LONG_WITH_VALUE.contains(&name.as_str()) {
                i += 1;
                value = args.get(i).map(|v| v.as_bytes().to_vec());
            }
            let v = value.unwrap_or_default();
            let path = || std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&v));
            match name.as_str() {
                "exclude" => rules.add_exclude_bytes(&v),
                "include" => rules.add_include_bytes(&v),
                "filter" => rules.add_rule_bytes(&v),
                "exclude-from" => rules.add_from_file(&path(), FromFile::Exclude),
                "include-from" => rules.add_from_file(&path(), FromFile::Include),
                "cvs-exclude" => {
                    cvs = true;
                    Ok(())
                }
                _ => Ok(()),
            }
            .map_err(|e| err(&format!("--{name}"), e))?;
            i += 1;
            continue;
        }
        // A cluster of short options: `f` takes a value; `F` and `C` count.
        let mut j = 1;
        while j < raw.len() {
            let c = raw[j] as char;
            if SHORT_WITH_VALUE.contains(c) {
                let value = if j + 1 < raw.len() {
                    raw[j + 1..].to_vec()
                } else {
                    i += 1;
                    args.get(i)
                        .map(|v| v.as_bytes().to_vec())
                        .unwrap_or_default()
                };
                if c == 'f' {
                    rules.add_rule_bytes(&value).map_err(|e| err("-f", e))?;
                }
                break;
            }
            match c {
                'C' => cvs = true,
                'F' => {
                    // The k-th -F adds the k-th of rsync's two rules.
                    f_count += 1;
                    match f_count {
                        1 => rules.add_rule(": /.rsync-filter"),
                        2 => rules.add_rule("- .rsync-filter"),
                        _ => Ok(()),
                    }
                    .map_err(|e| err("-F", e))?;
                }
                _ => {}
            }
            j += 1;
        }
        i += 1;
    }
    if cvs {
        rules.add_cvs_exclude().map_err(|e| err("-C", e))?;
    }
    Ok((rules, cvs))
}

/// Runs a transfer with one remote side. `args` is the whole argv.
pub fn run(args: &[OsString]) -> i32 {
    let s = scan(args);
    // rsync's checks of -B (usage, code 1) and --checksum-choice (an
    // unknown name is code 4), before anything starts.
    let block_size = match s.block_size.as_deref().map(parse_block_size) {
        Some(Err(e)) => return fail(e.exit_code(), e),
        Some(Ok(b)) => b,
        None => None,
    };
    let checksum_choice = match s.checksum_choice.as_deref().map(parse_checksum_choice) {
        Some(Err(RemoteError::Proto(arsync_proto::Error::Unsupported(m)))) => {
            return fail(ExitCode::Unsupported, m)
        }
        Some(Err(e)) => return fail(e.exit_code(), e),
        Some(Ok(choice)) => choice.and(s.checksum_choice.clone()),
        None => None,
    };
    let modify_window = match s.modify_window.as_deref().map(str::parse::<i64>) {
        Some(Err(_)) => {
            let v = s.modify_window.as_deref().unwrap_or_default();
            return fail(
                ExitCode::Syntax,
                format!("invalid --modify-window value: {v}"),
            );
        }
        Some(Ok(w)) => Some(w),
        None => None,
    };
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
        } else if let Some(rest) = a.as_bytes().strip_prefix(b"--time-limit") {
            // rsync's earlier name of --stop-after.
            let mut renamed = b"--stop-after".to_vec();
            renamed.extend_from_slice(rest);
            local_args.push(std::os::unix::ffi::OsStringExt::from_vec(renamed));
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
        // rsync's receiver writes nothing with --list-only: what is listed
        // is the local source, as the local engine lists it.
        let dst_idx = path_idx.last().copied();
        let listing: Vec<OsString> = args
            .iter()
            .enumerate()
            .filter(|(i, _)| !s.drop.contains(i) && Some(*i) != dst_idx)
            .map(|(_, a)| a.clone())
            .collect();
        return arsync_sync::cli::main_with_args(listing);
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
    let (mut rules, cvs) = match client_filters(args, &o) {
        Ok(r) => r,
        Err(e) => return fail(ExitCode::FileIo, e),
    };
    rules.set_delete_excluded(o.delete_excluded);
    // What goes on the wire depends on which side the client is (rules a
    // side keeps to itself are not sent; `-C`'s list only by a sender).
    let role = match src_remote {
        true => WireRole::ClientReceiver,
        false => WireRole::ClientSender,
    };
    let wire_protocol = s.protocol.map_or(32, |p| p.clamp(20, 32)) as u32;
    let mut filters = match rules.to_wire_rules(role, wire_protocol) {
        Ok(f) => f,
        Err(e) => return fail(ExitCode::Protocol, e),
    };
    // Rules rsync's client adds itself: sent as they are and applied here.
    let mut implied: Vec<Vec<u8>> = Vec::new();
    if let Some(d) = o.partial_dir.as_ref() {
        // As rsync's client: a relative partial directory is hidden from
        // the walk and protected from deletion (a perishable exclude).
        let mut d = d.as_os_str().as_bytes().to_vec();
        if !d.starts_with(b"/") {
            while d.last() == Some(&b'/') {
                d.pop();
            }
            implied.push([&b"-p "[..], &d, b"/"].concat());
        }
    }
    if o.backup && o.deleting() && o.backup_dir.is_none() && !o.delete_excluded {
        // As rsync's client: backups in the destination are not deleted.
        implied.push([&b"P *"[..], o.backup_suffix().as_bytes()].concat());
    }
    for r in implied {
        if let Err(e) = rules.add_rule_bytes(&r) {
            return fail(ExitCode::Syntax, e);
        }
        filters.push(r);
    }
    let local_filter = (!rules.is_empty()).then_some(rules);
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
        flags: server_flags(&o, s.compress.packed_z(), cvs),
        caps: CLIENT_CAPS.into(),
        inc_recurse: !s.no_inc_recurse,
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
    cmd.opts.block_size = block_size;
    cmd.opts.checksum_choice = checksum_choice;
    // Checked by the local parser; 0 lets the server pick (rsync sends only others).
    cmd.opts.checksum_seed = s
        .checksum_seed
        .as_deref()
        .and_then(|v| arsync_sync::cli::parse_checksum_seed(v).ok())
        .filter(|&n| n != 0);
    cmd.opts.modify_window = modify_window;
    cmd.opts.timeout = s.timeout;
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
            // A list on the remote host: a sending server reads it; a
            // receiving one forwards its names to us (protocol 31 and later).
            Location::Shell { host, path, .. } if matches!(remote, Location::Shell { host: h, .. } if *h == host) =>
            {
                if !src_remote && s.protocol.is_some_and(|p| p < 31) {
                    return fail(
                        ExitCode::Unsupported,
                        "--files-from=HOST:LIST on a push below protocol 31",
                    );
                }
                cmd.opts.files_from = Some(path);
                cmd.opts.from0 = o.from0;
            }
            _ => {
                return fail(
                    ExitCode::Syntax,
                    "--files-from hostname is not the same as the transfer hostname",
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
            t.contimeout = s.contimeout;
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
    let started = std::time::Instant::now();
    let shows = !o.quiet
        && (o.verbose > 0 || o.itemize > 0 || o.out_format.is_some() || o.progress || o.progress2);
    let printer = (!o.list_only && (o.stats || shows))
        .then(|| Arc::new(output::Printer::new(&o, !src_remote)));
    let log = match &o.log_file {
        None => None,
        Some(f) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
        {
            Ok(file) => Some(Arc::new(output::ClientLog::new(file, &o, !src_remote))),
            Err(e) => {
                return fail(
                    ExitCode::FileIo,
                    format!("failed to open log-file {}: {e}", f.display()),
                )
            }
        },
    };
    let events = match (event_sink(&o, &printer), &log) {
        (e, None) => e,
        (e, Some(l)) => {
            let l = Arc::clone(l);
            let live = e.as_ref().is_some_and(|e| e.wants_progress());
            Some(
                EventSink::new(move |ev: &FileEvent<'_>| {
                    l.event(ev);
                    if let Some(e) = &e {
                        e.emit(ev);
                    }
                })
                .with_progress(live),
            )
        }
    };
    if let Some(l) = &log {
        l.start();
    }

    let res = if src_remote {
        let Location::Local(dest) = dst else {
            return fail(ExitCode::Syntax, "no local destination");
        };
        // The destination is settled once the list is in (a directory made
        // when the transfer needs one, or the one file's new name).
        let mut p = PullOptions::new(cmd.path.clone(), dest);
        p.command = cmd;
        p.daemon = daemon;
        p.events = events;
        p.filters = filters;
        p.local_filter = local_filter;
        p.files_from = ff_names;
        p.echo_messages = !o.quiet;
        p.stop_at = o.stop_at;
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
        if cmd.opts.files_from.is_some() && local.len() != 1 {
            return fail(ExitCode::Syntax, "--files-from needs one source directory");
        }
        if ff_names.is_some() && local.len() != 1 {
            return fail(ExitCode::Syntax, "--files-from needs one source directory");
        }
        let first = local.remove(0);
        let mut p = PushOptions::new(first.path, cmd.path.clone());
        p.contents = first.contents;
        p.more_sources = local;
        // --files-from: the names below the one source directory (none: an
        // empty list, which rsync sends too).
        p.files_from = ff_names;
        p.command = cmd;
        p.daemon = daemon;
        p.events = events;
        p.filters = filters;
        p.local_filter = local_filter;
        p.echo_messages = !o.quiet;
        p.stop_at = o.stop_at;
        push(&p)
    };
    match res {
        Ok(summary) => {
            if let Some(p) = &printer {
                p.finish(&o, &summary, started.elapsed().as_secs_f64());
            }
            if let Some(l) = &log {
                l.finish(&summary);
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

/// The events the client's output needs: `--list-only` lines, or the
/// [`output::Printer`] (`None` when nothing is printed).
fn event_sink(o: &Options, printer: &Option<Arc<output::Printer>>) -> Option<EventSink> {
    if o.list_only {
        let human = o.human_readable;
        return Some(EventSink::new(move |e: &FileEvent<'_>| {
            if let FileEvent::Listed { entry } = e {
                output::out_line(list_line(entry, human).as_bytes());
            }
        }));
    }
    let p = Arc::clone(printer.as_ref()?);
    let live = p.wants_progress();
    Some(EventSink::new(move |e: &FileEvent<'_>| p.event(e)).with_progress(live))
}

/// rsync's `--list-only` line for an entry of a remote file list.
fn list_line(e: &arsync_proto::flist::FileEntry, human: u8) -> String {
    String::from_utf8_lossy(&arsync_remote::events::list_line(e, human)).into_owned()
}

/// What the client prints for `-v`, `-i`, `--out-format` and `--stats`, as
/// rsync's client prints it, from the transfer's events; the lines and the
/// stats block come from the local engine's report module.
mod output {
    use std::collections::VecDeque;
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use arsync_proto::flist::FileEntry;
    use arsync_proto::item::iflags;
    use arsync_remote::events::{FileEvent, PROGRESS_INTERVAL, SIGNIFICANT_ITEM_FLAGS};
    use arsync_remote::pull::TransferSummary;
    use arsync_sync::fsops::{Kind, Meta, Time};
    use arsync_sync::options::Options;
    use arsync_sync::report::{
        escape_name, format_line, progress_figures, Itemize, LineInfo, Output, Stats,
    };
    use std::time::Instant;

    /// How many samples rsync keeps for the rate of a progress update
    /// (one per update, so about the last five seconds).
    const RATE_HISTORY: usize = 5;

    /// The progress of one file (`--progress`) or of the whole run
    /// (`--info=progress2`), as rsync's progress.c keeps it: where it
    /// started, and the last updates for the current rate.
    struct Meter {
        /// When and at which byte the updates began.
        start: (Instant, u64),
        /// The last updates (a ring; `oldest` is the next one replaced).
        history: [(Instant, u64); RATE_HISTORY],
        oldest: usize,
    }

    impl Meter {
        fn new(now: Instant, done: u64) -> Meter {
            Meter {
                start: (now, done),
                history: [(now, done); RATE_HISTORY],
                oldest: 0,
            }
        }

        /// When the last update was.
        fn newest(&self) -> Instant {
            self.history[(self.oldest + RATE_HISTORY - 1) % RATE_HISTORY].0
        }

        /// Records an update; returns the rate (bytes/s) since the oldest
        /// update kept, and the time left at that rate.
        fn update(&mut self, now: Instant, done: u64, size: u64) -> (f64, f64) {
            let (then, from) = self.history[self.oldest];
            self.history[self.oldest] = (now, done);
            self.oldest = (self.oldest + 1) % RATE_HISTORY;
            // At least a millisecond, as rsync's millisecond clock.
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            let rate = done.saturating_sub(from) as f64 / secs;
            let left = match rate > 0.0 {
                true => size.saturating_sub(done) as f64 / rate,
                false => 0.0,
            };
            (rate, left)
        }
    }

    /// The live progress lines being shown.
    #[derive(Default)]
    struct Live {
        /// `--progress`: the file being moved and its meter.
        file: Option<(Vec<u8>, Meter)>,
        /// `--info=progress2`: the run's meter.
        run: Option<Meter>,
        /// When the last file's line was printed.
        last_end: Option<Instant>,
    }

    /// A line waiting for the transfers before it (a pull prints in
    /// file-list order, as rsync's receiver does).
    struct Pending {
        name: Vec<u8>,
        line: Option<Vec<u8>>,
        waiting: bool,
        /// Index and size in the file list, and when the request went out
        /// (for `--progress`).
        ndx: i32,
        size: u64,
        started: std::time::Instant,
        /// With `%b`/`%c` a transfer's line is made once it is done.
        late: Option<(FileEntry, u16)>,
    }

    /// The client's `--log-file`, as rsync's client writes it (log.c):
    /// `building file list` (a push) or `receiving file list` (a pull),
    /// a line per item in `--log-file-format` (default `%i %n%L`: every
    /// significant item; a transfer's once it is done, with its bytes),
    /// deletions, and the `sent ... received ... total size` line. Lines
    /// carry rsync's `YYYY/MM/DD hh:mm:ss [pid] ` prefix (the local
    /// engine's [`Output`]). A dry run logs no items.
    pub(super) struct ClientLog {
        out: Output,
        format: String,
        has_i: bool,
        has_o_or_i: bool,
        sender: bool,
        times: bool,
        human: u8,
        dry_run: bool,
        /// Items in file-list order; a transfer's line waits for its
        /// byte count, and the lines after it wait for it (`None`: the
        /// transfer is not done yet).
        queue: Mutex<VecDeque<(FileEntry, u16, Option<u64>)>>,
        total_size: std::sync::atomic::AtomicU64,
    }

    impl ClientLog {
        pub(super) fn new(file: std::fs::File, o: &Options, sender: bool) -> ClientLog {
            let format = o
                .log_file_format
                .clone()
                .unwrap_or_else(|| "%i %n%L".to_string());
            let has_i = format.contains("%i");
            ClientLog {
                out: Output::new(Some(file), Some(format.clone()), false),
                has_o_or_i: has_i || format.contains("%o"),
                has_i,
                format,
                sender,
                times: o.times,
                human: o.human_readable,
                dry_run: o.dry_run,
                queue: Mutex::new(VecDeque::new()),
                total_size: Default::default(),
            }
        }

        /// The first line, as the transfer starts.
        pub(super) fn start(&self) {
            self.out.log_msg(match self.sender {
                true => b"building file list",
                false => b"receiving file list",
            });
        }

        fn item(&self, f: u16, e: &FileEntry, bytes: u64) {
            let meta = meta_of(e);
            let info = item_info(f, e, &meta, bytes, self.sender, self.times);
            self.out.log_item(&info, self.human);
        }

        pub(super) fn event(&self, ev: &FileEvent<'_>) {
            match ev {
                FileEvent::List { entries, .. } => {
                    // rsync's total size: files' and symlinks' lengths (over every list of an
                    // incremental transfer).
                    let total: u64 = entries
                        .iter()
                        .filter(|e| matches!(kind_of(e), Kind::File | Kind::Symlink))
                        .map(|e| e.size.max(0) as u64)
                        .sum();
                    self.total_size.fetch_add(total, Ordering::Relaxed);
                }
                FileEvent::Item {
                    iflags: f, entry, ..
                } if !self.dry_run => {
                    let significant = f & SIGNIFICANT_ITEM_FLAGS != 0;
                    let transfer = f & iflags::TRANSFER != 0;
                    if transfer || significant || (self.has_i && f & iflags::LOCAL_CHANGE != 0) {
                        let mut q = self.lock();
                        q.push_back(((*entry).clone(), *f, (!transfer).then_some(0)));
                        self.flush(&mut q);
                    }
                }
                FileEvent::Transferred { name, literal, .. } => {
                    let mut q = self.lock();
                    if let Some(t) = q.iter_mut().find(|t| t.2.is_none() && t.0.name == *name) {
                        t.2 = Some(*literal);
                    }
                    self.flush(&mut q);
                }
                FileEvent::Deleted { name } if !self.dry_run => {
                    // rsync logs a deletion in the log format when it has
                    // %o or %i (`del.`, `*deleting`), else `deleting %n`.
                    let format = match self.has_o_or_i {
                        true => self.format.replace("%i", "*deleting  "),
                        false => "deleting %n".to_string(),
                    };
                    let dir = name.ends_with(b"/");
                    let info = LineInfo {
                        name: name.strip_suffix(b"/").unwrap_or(name),
                        kind: if dir { Kind::Dir } else { Kind::File },
                        item: None,
                        link: None,
                        length: 0,
                        bytes: 0,
                        meta: None,
                        operation: "del.",
                    };
                    self.out.log_msg(&format_line(&format, &info, self.human));
                }
                _ => {}
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(FileEntry, u16, Option<u64>)>> {
            self.queue.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Logs the items at the front that wait for nothing.
        fn flush(&self, q: &mut VecDeque<(FileEntry, u16, Option<u64>)>) {
            while let Some((e, f, Some(bytes))) = q.front() {
                self.item(*f, e, *bytes);
                q.pop_front();
            }
        }

        /// The last line, after a successful transfer.
        pub(super) fn finish(&self, s: &TransferSummary) {
            let total = match (self.sender, s.stats.total_size) {
                (false, t) if t > 0 => t as u64,
                _ => self.total_size.load(Ordering::Relaxed),
            };
            let line = format!(
                "sent {} bytes  received {} bytes  total size {}",
                arsync_sync::report::num(s.bytes_written, self.human),
                arsync_sync::report::num(s.bytes_read, self.human),
                arsync_sync::report::num(total, self.human),
            );
            self.out.log_msg(line.as_bytes());
        }
    }

    /// The transfer a push is sending: index, size, start, and its line
    /// when it waits for the byte count.
    type Current = (i32, u64, std::time::Instant, Option<(FileEntry, u16)>);

    /// The client's output for one transfer.
    pub(super) struct Printer {
        /// The per-item format (`%n%L` for `-v`, `%i %n%L` for `-i`, or
        /// `--out-format`); `None`: no item lines.
        format: Option<String>,
        itemizing: bool,
        /// `-ii`: unchanged items too.
        all: bool,
        /// The client sends (a push: `<` in items).
        sender: bool,
        times: bool,
        human: u8,
        /// Hold lines until the files before them arrived (a pull).
        ordered: bool,
        queue: Mutex<VecDeque<Pending>>,
        /// `--progress`: a line per transferred file.
        progress: bool,
        /// `-v` or `--progress`: the file-list line.
        list_line: bool,
        /// A pulling client made its destination: rsync's line for it,
        /// printed after the file-list line (`-v`, `-i`).
        pub(super) created_dir: Mutex<Option<Vec<u8>>>,
        names: bool,
        /// The transfer a push is sending now (its item came last).
        current: Mutex<Option<Current>>,
        /// `%b`/`%c` in the format: lines of transfers wait for their bytes.
        after: bool,
        /// `--info=progress2`: one line for the whole transfer, updated as
        /// each file is done.
        progress2: bool,
        done_bytes: std::sync::atomic::AtomicU64,
        begun: std::time::Instant,
        xfers: std::sync::atomic::AtomicU64,
        /// `--stats` counters.
        pub(super) stats: Stats,
        /// The progress lines updated while data moves.
        live: Mutex<Live>,
    }

    /// The local engine's kind of a file-list entry.
    fn kind_of(e: &FileEntry) -> Kind {
        meta_of(e).kind()
    }

    fn meta_of(e: &FileEntry) -> Meta {
        Meta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size.max(0) as u64,
            mtime: Time {
                sec: e.mtime,
                nsec: e.mtime_nsec,
            },
            atime: Time::default(),
            rdev: 0,
            dev: 0,
            ino: 0,
            nlink: 1,
        }
    }

    /// Prints a line on stdout; a closed stdout (`| head`) is not an error
    /// worth stopping the transfer for, as with rsync.
    pub(super) fn out_line(line: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }

    /// The file-list index of an item event.
    fn entry_ndx(ev: &FileEvent<'_>) -> i32 {
        match ev {
            FileEvent::Item { ndx, .. } => *ndx,
            _ => 0,
        }
    }

    /// The `%i` string of an item as rsync's `log_item` renders its flags.
    /// The fields of an item's output line (`--out-format`, `--log-file`).
    fn item_info<'a>(
        f: u16,
        e: &'a FileEntry,
        meta: &'a Meta,
        bytes: u64,
        sender: bool,
        times: bool,
    ) -> LineInfo<'a> {
        let kind = kind_of(e);
        LineInfo {
            name: &e.name,
            kind,
            item: Some(itemize(f, kind, sender, times)),
            link: e.link_target.as_deref().map(|t| ("->", t)),
            length: meta.size,
            bytes,
            meta: Some(meta),
            operation: if sender { "send" } else { "recv" },
        }
    }

    pub(super) fn itemize(f: u16, kind: Kind, sender: bool, times: bool) -> Itemize {
        let update = if f & iflags::TRANSFER != 0 {
            if sender {
                b'<'
            } else {
                b'>'
            }
        } else if f & iflags::LOCAL_CHANGE != 0 {
            if f & iflags::XNAME_FOLLOWS != 0 {
                b'h'
            } else {
                b'c'
            }
        } else {
            b'.'
        };
        let mut it = Itemize::new(update, kind);
        it.new = f & iflags::IS_NEW != 0;
        it.checksum = f & iflags::REPORT_CHANGE != 0;
        it.size = f & iflags::REPORT_SIZE != 0;
        it.time = match (f & iflags::REPORT_TIME != 0, times) {
            (false, _) => b'.',
            (true, true) => b't',
            (true, false) => b'T',
        };
        it.perms = f & iflags::REPORT_PERMS != 0;
        it.owner = f & iflags::REPORT_OWNER != 0;
        it.group = f & iflags::REPORT_GROUP != 0;
        it.acl = f & iflags::REPORT_ACL != 0;
        it.xattr = f & iflags::REPORT_XATTR != 0;
        it
    }

    impl Printer {
        /// The output `o` asks for (`sender`: a push).
        pub(super) fn new(o: &Options, sender: bool) -> Printer {
            // --progress also names the files, as rsync's client does.
            let names = o.verbose > 0 || o.progress;
            let format = match (&o.out_format, o.itemize > 0, names) {
                _ if o.quiet => None,
                (Some(f), _, _) => Some(f.clone()),
                (None, true, _) => Some("%i %n%L".to_string()),
                (None, false, true) => Some("%n%L".to_string()),
                (None, false, false) => None,
            };
            // rsync logs a transfer after it when the line has its bytes.
            let after = ["%b", "%c"]
                .iter()
                .any(|k| format.as_deref().is_some_and(|f| f.contains(k)));
            Printer {
                itemizing: format.as_deref().is_some_and(|f| f.contains("%i")),
                all: o.itemize > 1,
                format,
                sender,
                times: o.times,
                human: o.human_readable,
                ordered: !sender,
                queue: Mutex::new(VecDeque::new()),
                progress: o.progress && !o.quiet,
                list_line: (o.verbose > 0 || o.progress) && !o.quiet,
                created_dir: Mutex::new(None),
                names: !o.quiet && (o.verbose > 0 || o.itemize > 0),
                current: Mutex::new(None),
                after,
                progress2: o.progress2 && !o.quiet,
                done_bytes: Default::default(),
                begun: std::time::Instant::now(),
                xfers: Default::default(),
                stats: Stats::default(),
                live: Mutex::new(Live::default()),
            }
        }

        /// Whether the transfer should report its data as it moves
        /// ([`FileEvent::Progress`]).
        pub(super) fn wants_progress(&self) -> bool {
            self.progress || self.progress2
        }

        /// The line for an item, if rsync prints one: with `%i`, every
        /// significant item; otherwise transfers, local changes and
        /// directories with a significant change (rsync's `maybe_log_item`).
        fn item_line(&self, f: u16, e: &FileEntry, bytes: u64) -> Option<Vec<u8>> {
            let format = self.format.as_deref()?;
            let significant = f & SIGNIFICANT_ITEM_FLAGS != 0;
            let kind = kind_of(e);
            let shown = match self.itemizing {
                true => significant || self.all,
                false => {
                    f & iflags::TRANSFER != 0
                        || (f & iflags::LOCAL_CHANGE != 0 && significant)
                        || (kind == Kind::Dir && significant)
                }
            };
            if !shown {
                return None;
            }
            let meta = meta_of(e);
            let info = item_info(f, e, &meta, bytes, self.sender, self.times);
            let mut line = format_line(format, &info, self.human);
            line.push(b'\n');
            Some(line)
        }

        /// Takes one event of the transfer.
        pub(super) fn event(&self, ev: &FileEvent<'_>) {
            match ev {
                FileEvent::CreatedDir { path } => {
                    // Printed after the list's first line.
                    *self.created_dir.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(path.to_vec());
                }
                FileEvent::List {
                    entries,
                    incremental,
                    first,
                } => {
                    for e in *entries {
                        self.stats.seen(kind_of(e), e.size.max(0) as u64);
                    }
                    if !*first {
                        return;
                    }
                    if self.list_line {
                        // rsync's lines for a whole list (with --progress,
                        // a count), or its header for an incremental one.
                        let n = entries.len();
                        let line = match (self.sender, self.progress) {
                            _ if *incremental && self.sender => {
                                "sending incremental file list".to_string()
                            }
                            _ if *incremental => "receiving incremental file list".to_string(),
                            (true, false) => "building file list ... done".to_string(),
                            (true, true) => {
                                format!(
                                    "building file list ... \n 0 files...\r{n} files to consider"
                                )
                            }
                            (false, false) => "receiving file list ... done".to_string(),
                            (false, true) => {
                                format!("receiving file list ... {n} files to consider")
                            }
                        };
                        out_line(line.as_bytes());
                    }
                    let made = self
                        .created_dir
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let (Some(d), true) = (made, self.names) {
                        out_line(&[&b"created directory "[..], &d].concat());
                    }
                }
                FileEvent::Item {
                    iflags: f, entry, ..
                } => {
                    let f = *f;
                    if f & iflags::IS_NEW != 0 {
                        self.stats.created(kind_of(entry));
                    }
                    let transfer = f & iflags::TRANSFER != 0;
                    if transfer {
                        self.stats.transferred.fetch_add(1, Ordering::Relaxed);
                        let size = entry.size.max(0) as u64;
                        self.stats
                            .transferred_size
                            .fetch_add(size, Ordering::Relaxed);
                    }
                    let (ndx, size) = (entry_ndx(ev), entry.size.max(0) as u64);
                    let started = std::time::Instant::now();
                    let late = (transfer && self.after).then(|| ((*entry).clone(), f));
                    let line = match late {
                        Some(_) => None,
                        None => self.item_line(f, entry, 0),
                    };
                    if !self.ordered {
                        if let Some(l) = line {
                            let _ = std::io::stdout().lock().write_all(&l);
                        }
                        if transfer {
                            *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some((ndx, size, started, late));
                        }
                        return;
                    }
                    if line.is_none() && !transfer {
                        return;
                    }
                    self.push(Pending {
                        name: entry.name.clone(),
                        line,
                        waiting: transfer,
                        ndx,
                        size,
                        started,
                        late,
                    });
                }
                FileEvent::Transferred { name, literal, .. } if self.ordered => {
                    let mut q = self.lock();
                    if let Some(p) = q.iter_mut().find(|p| p.waiting && p.name == *name) {
                        p.waiting = false;
                        self.progress2_line(Some((p.ndx, p.size)));
                        if let Some((e, f)) = p.late.take() {
                            p.line = self.item_line(f, &e, *literal);
                        }
                        let done = self.progress_line(name, p.ndx, p.size, p.started);
                        p.line.get_or_insert_with(Vec::new).extend(done);
                    }
                    Self::flush_ready(&mut q, false);
                }
                FileEvent::Transferred { name, literal, .. } => {
                    let current = self
                        .current
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some((ndx, size, started, late)) = current {
                        self.progress2_line(Some((ndx, size)));
                        let mut out = late
                            .and_then(|(e, f)| self.item_line(f, &e, *literal))
                            .unwrap_or_default();
                        out.extend(self.progress_line(name, ndx, size, started));
                        let _ = std::io::stdout().lock().write_all(&out);
                    }
                }
                FileEvent::Progress { name, done, size } => self.update(name, *done, *size),
                FileEvent::Info {
                    text,
                    ordered: true,
                } if self.ordered => self.push(Pending {
                    name: Vec::new(),
                    line: Some(text.to_vec()),
                    waiting: false,
                    ndx: 0,
                    size: 0,
                    started: std::time::Instant::now(),
                    late: None,
                }),
                FileEvent::Info { text, .. } => {
                    let _ = std::io::stdout().lock().write_all(text);
                }
                FileEvent::Deleted { name } => {
                    self.stats.deleted.fetch_add(1, Ordering::Relaxed);
                    // A directory's name ends with `/`; other kinds are not
                    // told apart (counted as files).
                    let kind = usize::from(name.ends_with(b"/"));
                    self.stats.deleted_by_kind[kind].fetch_add(1, Ordering::Relaxed);
                    if self.format.is_none() {
                        return;
                    }
                    let prefix: &[u8] = match self.itemizing {
                        true => b"*deleting   ",
                        false => b"deleting ",
                    };
                    let mut line = prefix.to_vec();
                    line.extend_from_slice(&escape_name(name));
                    line.push(b'\n');
                    self.push(Pending {
                        name: Vec::new(),
                        line: Some(line),
                        waiting: false,
                        ndx: 0,
                        size: 0,
                        started: std::time::Instant::now(),
                        late: None,
                    });
                }
                _ => {}
            }
        }

        /// `--progress`'s last line for a transferred file (the local
        /// engine's): its size, 100%, the rate, the time it took, and
        /// rsync's `(xfr#N, to-chk=LEFT/TOTAL)`.
        /// As rsync, the file's first update comes before it when none
        /// was shown (a file with data always has one; an empty file none).
        fn progress_line(
            &self,
            name: &[u8],
            ndx: i32,
            size: u64,
            started: std::time::Instant,
        ) -> Vec<u8> {
            if !self.progress {
                return Vec::new();
            }
            // With updates shown, the rate and time since the first (as
            // rsync), else since the file was asked for or the file before
            // it was done, whichever is later (a pull asks ahead).
            let (shown, last) = {
                let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                let last = live.last_end.replace(Instant::now());
                match live.file.take() {
                    Some((n, m)) if n == name => (Some(m.start), last),
                    _ => (None, last),
                }
            };
            let (since, from) = shown.unwrap_or((last.map_or(started, |l| l.max(started)), 0));
            let n = self.xfers.fetch_add(1, Ordering::Relaxed) + 1;
            let took = since.elapsed().as_secs_f64();
            let rate = size.saturating_sub(from) as f64 / took.max(0.001);
            let at = progress_figures(size, size, rate, took, self.human);
            let total = self.stats.files_seen();
            let left = total.saturating_sub(ndx.max(0) as u64 + 1);
            let first = match (shown, size) {
                (None, 1..) => format!("\r{at}  "),
                _ => String::new(),
            };
            format!("{first}\r{at} (xfr#{n}, to-chk={left}/{total})\n").into_bytes()
        }

        /// A progress update while `name` moves (`done` of `size` bytes):
        /// `--progress` rewrites the file's line, `--info=progress2` the
        /// run's (at most once a second, as rsync). A pull shows it once
        /// the files before are done, after the file's own name.
        fn update(&self, name: &[u8], done: u64, size: u64) {
            // rsync shows no update for an empty file.
            if size == 0 {
                return;
            }
            let mut queue = self.ordered.then(|| self.lock());
            if let Some(q) = &mut queue {
                let Some(p) = q.iter_mut().find(|p| p.waiting) else {
                    return;
                };
                if p.name != name {
                    return;
                }
                // The file's name line is due now, before its progress.
                if let (Some(l), None) = (&p.line, &p.late) {
                    let _ = std::io::stdout().lock().write_all(l);
                    p.line = None;
                }
            }
            let now = Instant::now();
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let mut text = String::new();
            if self.progress {
                let meter = match &mut live.file {
                    Some((n, m)) if n == name => m,
                    slot => &mut slot.insert((name.to_vec(), Meter::new(now, done))).1,
                };
                let (rate, left) = meter.update(now, done, size);
                let at = progress_figures(done, size, rate, left, self.human);
                text = format!("\r{at}  ");
            }
            if self.progress2 {
                let done = self.done_bytes.load(Ordering::Relaxed) + done;
                let total = self.stats.total_size.load(Ordering::Relaxed).max(done);
                let meter = match &mut live.run {
                    // rsync's whole-run line moves once a second.
                    Some(m) if now.duration_since(m.newest()) < PROGRESS_INTERVAL => return,
                    Some(m) => m,
                    slot => slot.insert(Meter::new(now, done)),
                };
                let (rate, left) = meter.update(now, done, total);
                let at = progress_figures(done, total, rate, left, self.human);
                text = format!("\r{at}  ");
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }

        /// `--info=progress2` after a file is done: the bytes done of the
        /// list's total, the overall rate and time, rsync's counters (the
        /// local engine's line).
        /// `file`: the index and size of the file just done; `None` at the
        /// end of the run (the last state again, everything checked, as
        /// rsync prints it last).
        fn progress2_line(&self, file: Option<(i32, u64)>) {
            if !self.progress2 {
                return;
            }
            let (n, done, checked) = match file {
                Some((ndx, size)) => (
                    self.xfers.fetch_add(1, Ordering::Relaxed) + 1,
                    self.done_bytes.fetch_add(size, Ordering::Relaxed) + size,
                    ndx.max(0) as u64 + 1,
                ),
                None => (
                    self.xfers.load(Ordering::Relaxed),
                    self.done_bytes.load(Ordering::Relaxed),
                    u64::MAX,
                ),
            };
            let total = self.stats.total_size.load(Ordering::Relaxed).max(done);
            let secs = self.begun.elapsed().as_secs_f64().max(0.001);
            let whole = secs as u64;
            let files = self.stats.files_seen();
            let left = files.saturating_sub(checked);
            let line = format!(
                "\r{:>15} {:>3}% {:>7.2}MB/s {:>4}:{:02}:{:02} (xfr#{n}, to-chk={left}/{files})",
                arsync_sync::report::num(done, self.human),
                done * 100 / total.max(1),
                done as f64 / 1024.0 / 1024.0 / secs,
                whole / 3600,
                whole / 60 % 60,
                whole % 60,
            );
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
            self.queue.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn push(&self, p: Pending) {
            let mut q = self.lock();
            q.push_back(p);
            Self::flush_ready(&mut q, false);
        }

        /// Prints the lines at the front that wait for nothing (`all`:
        /// every line, at the end of the transfer).
        fn flush_ready(q: &mut VecDeque<Pending>, all: bool) {
            let mut out = std::io::stdout().lock();
            while let Some(p) = q.front() {
                if p.waiting && !all {
                    break;
                }
                if let Some(l) = &p.line {
                    let _ = out.write_all(l);
                }
                q.pop_front();
            }
            let _ = out.flush();
        }

        /// Prints what is left, then rsync's closing lines: the `--stats`
        /// block and, with `-v` or `--stats`, the two summary lines.
        pub(super) fn finish(&self, o: &Options, s: &TransferSummary, elapsed: f64) {
            Self::flush_ready(&mut self.lock(), true);
            if self.progress2 && self.xfers.load(Ordering::Relaxed) > 0 {
                self.progress2_line(None);
                out_line(b"");
            }
            if o.quiet || (o.verbose == 0 && !o.stats) {
                return;
            }
            let st = &self.stats;
            st.literal.store(s.literal_bytes, Ordering::Relaxed);
            st.matched.store(s.matched_bytes, Ordering::Relaxed);
            // A pulling client gets the sender's total size with its stats.
            if self.ordered && s.stats.total_size > 0 {
                st.total_size
                    .store(s.stats.total_size as u64, Ordering::Relaxed);
            }
            let _ = st.wire_bytes.set((s.bytes_written, s.bytes_read));
            let mut text = match o.stats {
                true => st.render(elapsed, o.human_readable),
                false => format!("\n{}", st.summary(elapsed, o.human_readable)),
            };
            if o.dry_run {
                text.push_str(" (DRY RUN)");
            }
            out_line(text.as_bytes());
        }
    }
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

    #[test]
    fn scans_per_file_options() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let s = scan(&v(&[
            "arsync", "-aB", "2k", "--cc", "md5", "-@-1", "--fsync", "src/", "h:dst",
        ]));
        assert_eq!(s.block_size.as_deref(), Some("2k"));
        assert_eq!(s.checksum_choice.as_deref(), Some("md5"));
        assert_eq!(s.modify_window.as_deref(), Some("-1"));
        // --cc and -@ are out of the local parser's sight (it knows
        // neither).
        assert_eq!(s.drop, [3, 4, 5]);
        assert_eq!(s.paths.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [7, 8]);
        let s = scan(&v(&[
            "arsync",
            "--block-size=700",
            "--checksum-choice=xxh3,md5",
            "--modify-window",
            "2",
            "src/",
            "h:dst",
        ]));
        assert_eq!(s.block_size.as_deref(), Some("700"));
        assert_eq!(s.checksum_choice.as_deref(), Some("xxh3,md5"));
        assert_eq!(s.modify_window.as_deref(), Some("2"));
        assert_eq!(s.drop, [2]);
        assert_eq!(s.paths.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 6]);
        let s = scan(&v(&["arsync", "-a", "src/", "h:dst"]));
        assert!(s.modify_window.is_none() && s.block_size.is_none());
        let s = scan(&v(&["arsync", "-@", "3", "src/", "h:dst"]));
        assert_eq!(
            (s.modify_window.as_deref(), &s.drop[..]),
            (Some("3"), &[1, 2][..])
        );
    }
}
