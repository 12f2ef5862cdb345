//! rsync's command line: option table, `-a` expansion, `--no-OPTION` negations (the last
//! occurrence wins, as in rsync), filter options in command-line order, and the refusal of
//! rsync options this build does not support (exit code 1, naming the option).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::engine::{self, exit, Engine};
use crate::filter::RulesFilter;
use crate::fsops;
use crate::meta;
use crate::options::{DeleteMode, IdMapRule, IdMatch, Options};
use crate::plan;
use crate::report::Output;
use arsync_filter::{FilterRules, FromFile};

/// `--watch-delay` when not given, in milliseconds.
pub const DEFAULT_WATCH_DELAY_MS: u64 = 200;

/// Boolean options: (id, short, long, help). Each also gets `--no-<long>`.
const BOOLS: &[(&str, Option<char>, &str, &str)] = &[
    (
        "recursive",
        Some('r'),
        "recursive",
        "recurse into directories",
    ),
    (
        "dirs",
        Some('d'),
        "dirs",
        "transfer directories without recursing",
    ),
    ("links", Some('l'), "links", "copy symlinks as symlinks"),
    (
        "copy-links",
        Some('L'),
        "copy-links",
        "transform symlink into referent file/dir",
    ),
    (
        "copy-unsafe-links",
        None,
        "copy-unsafe-links",
        "only \"unsafe\" symlinks are transformed",
    ),
    (
        "safe-links",
        None,
        "safe-links",
        "ignore symlinks that point outside the tree",
    ),
    (
        "copy-dirlinks",
        Some('k'),
        "copy-dirlinks",
        "transform symlink to dir into referent dir",
    ),
    (
        "keep-dirlinks",
        Some('K'),
        "keep-dirlinks",
        "treat symlinked dir on receiver as dir",
    ),
    ("perms", Some('p'), "perms", "preserve permissions"),
    (
        "executability",
        Some('E'),
        "executability",
        "preserve executability",
    ),
    ("times", Some('t'), "times", "preserve modification times"),
    ("atimes", Some('U'), "atimes", "preserve access (use) times"),
    (
        "crtimes",
        Some('N'),
        "crtimes",
        "preserve create times (newness)",
    ),
    (
        "omit-dir-times",
        Some('O'),
        "omit-dir-times",
        "omit directories from --times",
    ),
    (
        "omit-link-times",
        Some('J'),
        "omit-link-times",
        "omit symlinks from --times",
    ),
    ("group", Some('g'), "group", "preserve group"),
    (
        "owner",
        Some('o'),
        "owner",
        "preserve owner (super-user only)",
    ),
    (
        "numeric-ids",
        None,
        "numeric-ids",
        "don't map uid/gid values by user/group name",
    ),
    ("D", Some('D'), "D", "same as --devices --specials"),
    (
        "devices",
        None,
        "devices",
        "preserve device files (super-user only)",
    ),
    ("specials", None, "specials", "preserve special files"),
    ("hard-links", Some('H'), "hard-links", "preserve hard links"),
    ("acls", Some('A'), "acls", "preserve ACLs (implies --perms)"),
    (
        "xattrs",
        Some('X'),
        "xattrs",
        "preserve extended attributes",
    ),
    (
        "sparse",
        Some('S'),
        "sparse",
        "turn sequences of nulls into sparse blocks",
    ),
    (
        "preallocate",
        None,
        "preallocate",
        "allocate dest files before writing them",
    ),
    (
        "dry-run",
        Some('n'),
        "dry-run",
        "perform a trial run with no changes made",
    ),
    ("quiet", Some('q'), "quiet", "suppress non-error messages"),
    (
        "checksum",
        Some('c'),
        "checksum",
        "skip based on checksum, not mod-time & size",
    ),
    (
        "update",
        Some('u'),
        "update",
        "skip files that are newer on the receiver",
    ),
    (
        "existing",
        None,
        "existing",
        "skip creating new files on receiver",
    ),
    (
        "ignore-existing",
        None,
        "ignore-existing",
        "skip updating files that exist on receiver",
    ),
    (
        "size-only",
        None,
        "size-only",
        "skip files that match in size",
    ),
    (
        "ignore-times",
        Some('I'),
        "ignore-times",
        "don't skip files that match size and time",
    ),
    (
        "whole-file",
        Some('W'),
        "whole-file",
        "copy files whole (without delta-xfer algorithm)",
    ),
    (
        "inplace",
        None,
        "inplace",
        "update destination files in-place",
    ),
    (
        "partial",
        None,
        "partial",
        "keep partially transferred files",
    ),
    (
        "delay-updates",
        None,
        "delay-updates",
        "put all updated files into place at end",
    ),
    (
        "delete",
        None,
        "delete",
        "delete extraneous files from dest dirs",
    ),
    (
        "delete-before",
        None,
        "delete-before",
        "receiver deletes before xfer, not during",
    ),
    (
        "delete-during",
        None,
        "delete-during",
        "receiver deletes during the transfer",
    ),
    (
        "delete-delay",
        None,
        "delete-delay",
        "find deletions during, delete after",
    ),
    (
        "delete-after",
        None,
        "delete-after",
        "receiver deletes after transfer, not during",
    ),
    (
        "delete-excluded",
        None,
        "delete-excluded",
        "also delete excluded files from dest dirs",
    ),
    (
        "force",
        None,
        "force",
        "force deletion of dirs even if not empty",
    ),
    (
        "ignore-errors",
        None,
        "ignore-errors",
        "delete even if there are I/O errors",
    ),
    (
        "remove-source-files",
        None,
        "remove-source-files",
        "sender removes synchronized files (non-dir)",
    ),
    (
        "backup",
        Some('b'),
        "backup",
        "make backups (see --suffix & --backup-dir)",
    ),
    ("relative", Some('R'), "relative", "use relative path names"),
    (
        "implied-dirs",
        None,
        "implied-dirs",
        "send implied dirs with --relative (default)",
    ),
    (
        "mkpath",
        None,
        "mkpath",
        "create destination's missing path components",
    ),
    (
        "cvs-exclude",
        Some('C'),
        "cvs-exclude",
        "auto-ignore files in the same way CVS does",
    ),
    (
        "from0",
        Some('0'),
        "from0",
        "all *-from/filter files are delimited by 0s",
    ),
    ("stats", None, "stats", "give some file-transfer stats"),
    (
        "progress",
        None,
        "progress",
        "show progress during transfer",
    ),
    (
        "list-only",
        None,
        "list-only",
        "list the files instead of copying them",
    ),
    ("fsync", None, "fsync", "fsync every written file"),
    (
        "no-motd",
        None,
        "no-motd",
        "suppress daemon-mode MOTD (no effect locally)",
    ),
    (
        "msgs2stderr",
        None,
        "msgs2stderr",
        "output messages directly to stderr (no effect locally)",
    ),
    (
        "inc-recursive",
        None,
        "inc-recursive",
        "incremental recursion (always on locally)",
    ),
    (
        "secluded-args",
        Some('s'),
        "secluded-args",
        "use the protocol to safely send the args (no effect locally)",
    ),
    (
        "old-args",
        None,
        "old-args",
        "disable the modern arg-protection idiom (no effect locally)",
    ),
    (
        "trust-sender",
        None,
        "trust-sender",
        "trust the remote sender's file list (no effect locally)",
    ),
    ("ipv4", Some('4'), "ipv4", "prefer IPv4 (no effect locally)"),
    ("ipv6", Some('6'), "ipv6", "prefer IPv6 (no effect locally)"),
    (
        "super",
        None,
        "super",
        "receiver attempts super-user activities",
    ),
    (
        "fuzzy",
        Some('y'),
        "fuzzy",
        "find similar file for basis (no effect on local copies)",
    ),
    (
        "open-noatime",
        None,
        "open-noatime",
        "avoid changing the atime on opened files",
    ),
    (
        "ignore-missing-args",
        None,
        "ignore-missing-args",
        "ignore missing source args without error",
    ),
    (
        "delete-missing-args",
        None,
        "delete-missing-args",
        "delete missing source args from destination",
    ),
    (
        "8-bit-output",
        Some('8'),
        "8-bit-output",
        "leave high-bit chars unescaped in output",
    ),
    (
        "blocking-io",
        None,
        "blocking-io",
        "use blocking I/O for the remote shell (no effect locally)",
    ),
    ("append", None, "append", "append data onto shorter files"),
    (
        "append-verify",
        None,
        "append-verify",
        "--append w/old data in file checksum",
    ),
    (
        "prune-empty-dirs",
        Some('m'),
        "prune-empty-dirs",
        "prune empty directory chains from file-list",
    ),
    (
        "compress",
        Some('z'),
        "compress",
        "compress file data (no effect on local copies)",
    ),
    (
        "old-compress",
        None,
        "old-compress",
        "use old zlib-compatible compression (same as --compress-choice=zlib)",
    ),
    (
        "new-compress",
        None,
        "new-compress",
        "use the new zlibx compression (same as --compress-choice=zlibx)",
    ),
    (
        "watch",
        None,
        "watch",
        "after the sync, keep watching the sources and re-sync on changes (arsync)",
    ),
];

/// Counted options: (id, short, long, help).
/// A counted flag and its hidden `--no-FLAG` twin (rsync's way to switch an implied option off).
fn flag_with_negation(
    id: &'static str,
    short: Option<char>,
    long: &'static str,
    help: &'static str,
) -> (Arg, Arg) {
    let mut a = Arg::new(id).long(long).action(ArgAction::Count).help(help);
    if let Some(s) = short {
        a = a.short(s);
    }
    let neg_id: &'static str = Box::leak(format!("no-{id}").into_boxed_str());
    let n = Arg::new(neg_id)
        .long(neg_id)
        .action(ArgAction::Count)
        .hide(true);
    (a, n)
}

const COUNTS: &[(&str, Option<char>, &str, &str)] = &[
    ("verbose", Some('v'), "verbose", "increase verbosity"),
    (
        "itemize-changes",
        Some('i'),
        "itemize-changes",
        "output a change-summary for all updates",
    ),
    (
        "human-readable",
        Some('h'),
        "human-readable",
        "output numbers in a human-readable format",
    ),
    (
        "one-file-system",
        Some('x'),
        "one-file-system",
        "don't cross filesystem boundaries",
    ),
    (
        "F",
        Some('F'),
        "F",
        "same as --filter='dir-merge /.rsync-filter'",
    ),
];

/// Options with a value: (id, short, long, multiple, help).
const VALUES: &[(&str, Option<char>, &str, bool, &str)] = &[
    (
        "stderr",
        None,
        "stderr",
        false,
        "change stderr output mode (no effect locally)",
    ),
    (
        "stop-after",
        None,
        "stop-after",
        false,
        "Stop rsync after MINS minutes have elapsed",
    ),
    (
        "stop-at",
        None,
        "stop-at",
        false,
        "Stop rsync at the specified point in time (UTC)",
    ),
    (
        "chmod",
        None,
        "chmod",
        true,
        "affect file and/or directory permissions",
    ),
    (
        "chown",
        None,
        "chown",
        false,
        "simple username/groupname mapping",
    ),
    ("usermap", None, "usermap", true, "custom username mapping"),
    (
        "groupmap",
        None,
        "groupmap",
        true,
        "custom groupname mapping",
    ),
    (
        "modify-window",
        Some('@'),
        "modify-window",
        false,
        "set the accuracy for mod-time comparisons",
    ),
    (
        "partial-dir",
        None,
        "partial-dir",
        false,
        "put a partially transferred file into DIR",
    ),
    (
        "temp-dir",
        Some('T'),
        "temp-dir",
        false,
        "create temporary files in directory DIR",
    ),
    (
        "max-delete",
        None,
        "max-delete",
        false,
        "don't delete more than NUM files",
    ),
    (
        "checksum-seed",
        None,
        "checksum-seed",
        false,
        "set block/file checksum seed (advanced; no effect locally)",
    ),
    (
        "backup-dir",
        None,
        "backup-dir",
        false,
        "make backups into hierarchy based in DIR",
    ),
    (
        "suffix",
        None,
        "suffix",
        false,
        "backup suffix (default ~ w/o --backup-dir)",
    ),
    (
        "link-dest",
        None,
        "link-dest",
        true,
        "hardlink to files in DIR when unchanged",
    ),
    (
        "compare-dest",
        None,
        "compare-dest",
        true,
        "also compare destination files relative to DIR",
    ),
    (
        "copy-dest",
        None,
        "copy-dest",
        true,
        "... and include copies of unchanged files",
    ),
    (
        "min-size",
        None,
        "min-size",
        false,
        "don't transfer any file smaller than SIZE",
    ),
    (
        "max-size",
        None,
        "max-size",
        false,
        "don't transfer any file larger than SIZE",
    ),
    (
        "exclude",
        None,
        "exclude",
        true,
        "exclude files matching PATTERN",
    ),
    (
        "include",
        None,
        "include",
        true,
        "don't exclude files matching PATTERN",
    ),
    (
        "filter",
        Some('f'),
        "filter",
        true,
        "add a file-filtering RULE",
    ),
    (
        "exclude-from",
        None,
        "exclude-from",
        true,
        "read exclude patterns from FILE",
    ),
    (
        "include-from",
        None,
        "include-from",
        true,
        "read include patterns from FILE",
    ),
    (
        "files-from",
        None,
        "files-from",
        false,
        "read list of source-file names from FILE",
    ),
    (
        "out-format",
        None,
        "out-format",
        false,
        "output updates using the specified FORMAT",
    ),
    (
        "log-file",
        None,
        "log-file",
        false,
        "log what we're doing to the specified FILE",
    ),
    (
        "log-file-format",
        None,
        "log-file-format",
        false,
        "log updates using the specified FMT",
    ),
    (
        "bwlimit",
        None,
        "bwlimit",
        false,
        "limit socket I/O bandwidth",
    ),
    (
        "checksum-choice",
        None,
        "checksum-choice",
        false,
        "choose the checksum algorithm",
    ),
    ("cc", None, "cc", false, "same as --checksum-choice"),
    (
        "info",
        None,
        "info",
        true,
        "fine-grained informational verbosity",
    ),
    ("debug", None, "debug", true, "fine-grained debug verbosity"),
    (
        "block-size",
        Some('B'),
        "block-size",
        false,
        "force a fixed checksum block-size",
    ),
    (
        "rsh",
        Some('e'),
        "rsh",
        false,
        "specify the remote shell to use",
    ),
    (
        "timeout",
        None,
        "timeout",
        false,
        "set I/O timeout in seconds (no effect locally)",
    ),
    (
        "contimeout",
        None,
        "contimeout",
        false,
        "daemon connection timeout (no effect locally)",
    ),
    (
        "protocol",
        None,
        "protocol",
        false,
        "force an older protocol version (no effect locally)",
    ),
    (
        "skip-compress",
        None,
        "skip-compress",
        false,
        "skip compressing files with suffix in LIST",
    ),
    (
        "max-alloc",
        None,
        "max-alloc",
        false,
        "change a limit relating to memory alloc",
    ),
    (
        "outbuf",
        None,
        "outbuf",
        false,
        "set out buffering to None, Line, or Block",
    ),
    (
        "rsync-path",
        None,
        "rsync-path",
        false,
        "specify the rsync to run on remote machine",
    ),
    (
        "compress-choice",
        None,
        "compress-choice",
        false,
        "choose the compression algorithm",
    ),
    (
        "compress-level",
        None,
        "compress-level",
        false,
        "explicitly set compression level",
    ),
    ("zc", None, "zc", false, "same as --compress-choice"),
    ("zl", None, "zl", false, "same as --compress-level"),
    (
        "compress-threads",
        None,
        "compress-threads",
        false,
        "use N compression threads (no effect locally)",
    ),
    ("zt", None, "zt", false, "same as --compress-threads"),
    (
        "threads",
        None,
        "threads",
        false,
        "number of copy workers (default: CPUs)",
    ),
    (
        "queue-depth",
        None,
        "queue-depth",
        false,
        "bounded queue length between walker and workers",
    ),
    (
        "watch-delay",
        None,
        "watch-delay",
        false,
        "--watch: re-sync once changes settle for MS milliseconds (default 200)",
    ),
    (
        "watch-interval",
        None,
        "watch-interval",
        false,
        "--watch: also do a full re-sync every SECS seconds (default: only on changes)",
    ),
];

/// rsync's other names for options: (id of the option, alias).
const ALIASES: &[(&str, &str)] = &[
    ("delete-during", "del"),
    ("existing", "ignore-non-existing"),
    ("remove-source-files", "remove-sent-files"),
    ("out-format", "log-format"),
    ("no-verbose", "no-v"),
    ("no-itemize-changes", "no-i"),
    ("no-human-readable", "no-h"),
    ("no-one-file-system", "no-x"),
    ("inc-recursive", "i-r"),
    ("no-inc-recursive", "no-i-r"),
    ("implied-dirs", "i-d"),
    ("no-implied-dirs", "no-i-d"),
    ("no-no-motd", "motd"),
];

/// rsync options without a value that need no table of their own: the sort routine
/// (`--qsort`, no effect here), `--drop-D` / `--no-drop-D` (read in `parse`), and the
/// negations of options that are off unless given (and refused when given).
const NO_EFFECT: &[&str] = &[
    "qsort",
    // Handled in `parse` (not "without effect"): `--drop-D` and its negation.
    "drop-D",
    "no-drop-D",
    "no-iconv",
    "no-munge-links",
    "no-write-devices",
    "no-insecure-links",
];

/// Negations of value options: (negation, option). The later of the two wins.
const VALUE_NEGATIONS: &[(&str, &str)] = &[
    ("no-bwlimit", "bwlimit"),
    ("no-timeout", "timeout"),
    ("no-contimeout", "contimeout"),
];

/// rsync options that are recognised but not supported yet: refused with exit code 1.
const UNSUPPORTED: &[(&str, Option<char>, bool)] = &[
    ("copy-devices", None, false),
    ("write-devices", None, false),
    ("fake-super", None, false),
    ("munge-links", None, false),
    ("write-batch", None, true),
    ("only-write-batch", None, true),
    ("read-batch", None, true),
    ("iconv", None, true),
    ("daemon", None, false),
    ("server", None, false),
    ("sender", None, false),
    ("address", None, true),
    ("port", None, true),
    ("sockopts", None, true),
    ("password-file", None, true),
    ("remote-option", Some('M'), true),
    ("copy-as", None, true),
    ("write-devices", None, false),
    ("early-input", None, true),
    ("insecure-links", None, false),
    ("confine-root", None, true),
    ("old-dirs", None, false),
    ("old-d", None, false),
    // Daemon-only options (they put rsync in daemon mode).
    ("config", None, true),
    ("dparam", None, true),
    ("detach", None, false),
    ("no-detach", None, false),
];

fn command() -> Command {
    let mut cmd = Command::new("arsync")
        .about("rsync, rebuilt: a fast local file-copying tool with rsync's flags")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("help")
                .long("help")
                .action(ArgAction::Help)
                .help("show this help"),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .short('V')
                .action(ArgAction::Count)
                .help("print the version + other info and exit"),
        )
        .arg(
            Arg::new("archive")
                .short('a')
                .long("archive")
                .action(ArgAction::Count)
                .help("archive mode is -rlptgoD (no -A,-X,-U,-N,-H)"),
        )
        .arg(
            Arg::new("P")
                .short('P')
                .action(ArgAction::Count)
                .help("same as --partial --progress"),
        )
        .arg(
            Arg::new("paths")
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(OsString))
                .num_args(0..),
        );
    for (id, short, long, help) in BOOLS {
        let (a, mut n) = flag_with_negation(id, *short, long, help);
        if let (Some(s), true) = (short, long.len() > 1) {
            n = n.alias(Box::leak(format!("no-{s}").into_boxed_str()) as &'static str);
        }
        // rsync 3.2's name for --secluded-args is still accepted by rsync 3.5.
        let (a, n) = if *id == "secluded-args" {
            (a.alias("protect-args"), n.alias("no-protect-args"))
        } else {
            (a, n)
        };
        cmd = cmd.arg(a).arg(n);
    }
    for (id, short, long, help) in COUNTS {
        let (a, n) = flag_with_negation(id, *short, long, help);
        cmd = cmd.arg(a).arg(n);
    }
    for (id, short, long, multi, help) in VALUES {
        let mut a = Arg::new(*id)
            .long(*long)
            .value_parser(clap::value_parser!(OsString))
            .allow_hyphen_values(true)
            .help(*help)
            .action(if *multi {
                ArgAction::Append
            } else {
                ArgAction::Set
            });
        if *id == "stop-after" {
            // rsync's earlier name for it.
            a = a.alias("time-limit");
        }
        if *id == "modify-window" {
            a = a.allow_negative_numbers(true).short(None);
        } else if let Some(s) = short {
            a = a.short(*s);
        }
        cmd = cmd.arg(a);
    }
    // rsync's other names for options (deprecated or short forms it still accepts).
    for (id, alias) in ALIASES {
        cmd = cmd.mut_arg(*id, |a| a.alias(*alias));
    }
    // Options with no effect on a local copy (rsync accepts them and so does arsync), and
    // the negations of value options (the last of an option and its negation wins).
    for id in NO_EFFECT
        .iter()
        .chain(VALUE_NEGATIONS.iter().map(|(n, _)| n))
    {
        cmd = cmd.arg(Arg::new(*id).long(*id).action(ArgAction::Count).hide(true));
    }
    for (id, short, takes) in UNSUPPORTED {
        if cmd.get_arguments().any(|a| a.get_id() == *id) {
            continue;
        }
        let mut a = Arg::new(*id).long(*id).hide(true);
        a = if *takes {
            a.action(ArgAction::Append)
                .value_parser(clap::value_parser!(OsString))
        } else {
            a.action(ArgAction::Count)
        };
        if let Some(s) = short {
            a = a.short(*s);
        }
        cmd = cmd.arg(a);
    }
    cmd
}

/// A command-line problem: message and exit code.
#[derive(Debug)]
pub struct CliError {
    /// Message for stderr.
    pub msg: String,
    /// rsync exit code.
    pub code: i32,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError {
        msg: msg.into(),
        code: exit::SYNTAX,
    }
}

/// Last position on the command line of an option, if given.
fn last_index(m: &ArgMatches, id: &str) -> Option<usize> {
    if m.get_count(id) == 0 {
        return None;
    }
    m.indices_of(id).and_then(|i| i.max())
}

/// A boolean whose final value is decided by the latest of its positive forms
/// (the option itself or an implying option) and its `--no-` form.
fn flag(m: &ArgMatches, id: &str, implied_at: &[Option<usize>]) -> bool {
    let pos = implied_at
        .iter()
        .flatten()
        .copied()
        .chain(last_index(m, id))
        .max();
    let neg = last_index(m, &format!("no-{id}"));
    match (pos, neg) {
        (Some(p), Some(n)) => p > n,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A counted option (`-v`, `-i`, `-h`, `-x`) after rsync's rule for its `--no-` form: the
/// negation resets it to zero and only later uses count.
fn count_after_negation(m: &ArgMatches, id: &str) -> u8 {
    let total = m.get_count(id);
    let Some(at) = last_index(m, &format!("no-{id}")) else {
        return total;
    };
    if total == 0 {
        return 0;
    }
    m.indices_of(id).map_or(0, |i| {
        u8::try_from(i.filter(|&i| i > at).count()).unwrap_or(u8::MAX)
    })
}

/// The command-line word holding an option clap does not know, as rsync names it: the whole
/// word (`--frob=1`, or the cluster `-vY` for `Y`).
fn unknown_option_token(args: &[OsString], e: &clap::Error) -> Option<String> {
    let bad = match e.get(clap::error::ContextKind::InvalidArg)? {
        clap::error::ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let words = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--");
    if let Some(long) = bad.strip_prefix("--") {
        return words
            .filter(|a| a.starts_with("--"))
            .find(|a| a[2..].split('=').next() == Some(long))
            .map(|a| a.into_owned());
    }
    let c = bad.strip_prefix('-')?.chars().next()?;
    words
        .filter(|a| a.starts_with('-') && !a.starts_with("--"))
        .find(|a| a[1..].contains(c))
        .map(|a| a.into_owned())
}

/// True when a value option's `--no-` form (see [`VALUE_NEGATIONS`]) comes after its last use.
fn negated(m: &ArgMatches, id: &str) -> bool {
    let Some((neg, _)) = VALUE_NEGATIONS.iter().find(|(_, o)| *o == id) else {
        return false;
    };
    let last_neg = last_index(m, neg);
    last_neg.is_some() && last_neg > m.indices_of(id).and_then(|i| i.max())
}

fn value(m: &ArgMatches, id: &str) -> Option<String> {
    m.get_one::<OsString>(id)
        .map(|v| v.to_string_lossy().into_owned())
}

fn values_with_index(m: &ArgMatches, id: &str) -> Vec<(usize, OsString)> {
    match (m.get_many::<OsString>(id), m.indices_of(id)) {
        (Some(v), Some(i)) => i.zip(v.cloned()).collect(),
        _ => Vec::new(),
    }
}

/// Parses rsync's size syntax: `100`, `10K`, `1.5M`, `2GB`, `1KiB`, with optional `+1`/`-1`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (s, adjust) = if let Some(r) = s.strip_suffix("+1") {
        (r, 1i64)
    } else if let Some(r) = s.strip_suffix("-1") {
        (r, -1)
    } else {
        (s, 0)
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.to_ascii_lowercase();
    let (letter, rest) = unit.split_at(unit.len().min(1));
    let base: f64 = match rest {
        "" | "ib" => 1024.0,
        "b" => 1000.0,
        _ => return None,
    };
    let mult = match letter {
        "" => 1.0,
        "b" => 1.0,
        "k" => base,
        "m" => base.powi(2),
        "g" => base.powi(3),
        "t" => base.powi(4),
        "p" => base.powi(5),
        _ => return None,
    };
    let v = (n * mult) as i64 + adjust;
    (v >= 0).then_some(v as u64)
}

/// Parses `--usermap`/`--groupmap`: comma-separated `FROM:TO` pairs.
pub fn parse_idmap(spec: &str, user: bool) -> Result<Vec<IdMapRule>, String> {
    let what = if user { "usermap" } else { "groupmap" };
    let kind = if user { "user" } else { "group" };
    let mut rules = Vec::new();
    for pair in spec.split(',').filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .rsplit_once(':')
            .ok_or_else(|| format!("arsync: No colon found in --{what}: {pair}"))?;
        let to_id = to
            .parse()
            .ok()
            .or_else(|| {
                if user {
                    fsops::uid_by_name(to)
                } else {
                    fsops::gid_by_name(to)
                }
            })
            .ok_or_else(|| format!("arsync: Unknown {kind} in --{what}: {to}"))?;
        let range = from
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        let from = if let Ok(id) = from.parse() {
            IdMatch::Id(id)
        } else if let Some((lo, hi)) = range {
            IdMatch::Range(lo, hi)
        } else if from.is_empty() {
            return Err(format!("arsync: Invalid --{what} value: {pair}"));
        } else {
            IdMatch::Name(from.to_string())
        };
        rules.push(IdMapRule { from, to: to_id });
    }
    Ok(rules)
}

/// Parses `--stop-at`: `[[YYYY-]MM-DD]THH:MM` or `HH:MM` (UTC). A bare time already past
/// today means tomorrow.
pub fn parse_stop_at(s: &str) -> Option<std::time::SystemTime> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (Some(d), t),
        None => (None, s),
    };
    let (h, mi) = time.split_once(':')?;
    let (h, mi): (i64, i64) = (h.parse().ok()?, mi.parse().ok()?);
    if !(0..24).contains(&h) || !(0..60).contains(&mi) {
        return None;
    }
    let now = crate::report::now_secs();
    let today = now.div_euclid(86400);
    let day = match date {
        None | Some("") => today,
        Some(d) => {
            let parts: Vec<i64> = d
                .split('-')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let (y, mo, da) = match parts.as_slice() {
                [y, mo, da] => (*y, *mo, *da),
                [mo, da] => (crate::report::format_time(now)[..4].parse().ok()?, *mo, *da),
                _ => return None,
            };
            days_from_civil(y, mo, da)?
        }
    };
    let mut t = day * 86400 + h * 3600 + mi * 60;
    if date.is_none() && t <= now {
        t += 86400;
    }
    let secs = u64::try_from(t).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Days since the epoch of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Everything parsed from a command line.
pub struct Parsed {
    /// Options.
    pub opts: Options,
    /// Filter rules.
    pub filter: RulesFilter,
    /// Source arguments.
    pub sources: Vec<OsString>,
    /// Destination argument (`None`: list the single source).
    pub dest: Option<OsString>,
    /// `--version` was given.
    pub version: bool,
    /// Filter options that may read per-directory merge files (`--filter`, `-F`, `-C`) were
    /// given: a sync of part of the tree would miss its parents' rules.
    pub per_dir_rules: bool,
}

/// The largest `-B`/`--block-size` (rsync's `MAX_BLOCK_SIZE` from protocol 30 on).
pub const MAX_BLOCK_SIZE: u64 = 128 << 10;

/// Reads a `-B`/`--block-size` value as rsync does: a size with an optional suffix, at most
/// [`MAX_BLOCK_SIZE`]; 0 means the default (`None`). The error is rsync's text.
pub fn parse_block_size(v: &str) -> Result<Option<u32>, String> {
    let negative = v.trim_start().starts_with('-');
    match (!negative).then(|| parse_size(v)).flatten() {
        Some(n) if n <= MAX_BLOCK_SIZE => Ok((n > 0).then_some(n as u32)),
        None if !negative => Err(format!("--block-size={v} is invalid")),
        _ => Err(format!("--block-size={v} is too large (max: 128.00K)")),
    }
}

/// Reads a `--stop-after` (`--time-limit`) value as rsync does (`atol`: optional blanks and
/// sign, then the leading digits; anything after them is ignored): the minutes, or `None`
/// when they are not positive (rsync's `invalid --stop-after value`).
pub fn parse_stop_after(v: &str) -> Option<u64> {
    let t = v.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let mins: u64 = t[..digits].parse().ok()?;
    // rsync also refuses a time that does not fit its clock.
    (!negative && mins > 0 && mins <= i64::MAX as u64 / 60 / 2).then_some(mins)
}

/// Reads a `--checksum-seed` value as rsync's option parser reads an integer (`strtol` with
/// base 0: blanks, a sign, `0x` hexadecimal or `0` octal; an empty value is 0), or its
/// words for a bad one (`invalid numeric value`, `number too large or too small`). 0 means
/// the server picks the seed (the time), as with rsync.
pub fn parse_checksum_seed(v: &str) -> Result<i32, &'static str> {
    const BAD: &str = "invalid numeric value";
    let t = v.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if v.is_empty() {
        return Ok(0);
    }
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(BAD);
    }
    let n = match u64::from_str_radix(digits, radix) {
        Ok(n) => n as i128,
        Err(_) => return Err("number too large or too small"),
    };
    let n = if negative { -n } else { n };
    i32::try_from(n).map_err(|_| "number too large or too small")
}

/// Checks a `--checksum-choice` value (`NAME` or `XFER,FILE`) against rsync's names,
/// ignoring case. The error is rsync's text (exit code 4).
pub fn check_checksum_choice(v: &str) -> Result<(), String> {
    const NAMES: [&str; 9] = [
        "auto", "md4", "md5", "xxh64", "xxhash", "xxh3", "xxh128", "sha1", "none",
    ];
    let known = |n: &str| NAMES.iter().any(|k| k.eq_ignore_ascii_case(n));
    match v.split_once(',') {
        // rsync names the rest of the value from the bad name on.
        Some((a, _)) if !known(a) => Err(format!("unknown checksum name: {v}")),
        Some((_, b)) if !known(b) => Err(format!("unknown checksum name: {b}")),
        None if !known(v) => Err(format!("unknown checksum name: {v}")),
        _ => Ok(()),
    }
}

/// Rewrites rsync's short `-@N` / `-@ N` into `--modify-window=N` (the parser cannot take a
/// negative value after a short option), up to a `--` that ends the options.
fn modify_window_short(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it);
            break;
        }
        match a.as_encoded_bytes().strip_prefix(b"-@") {
            Some([]) => {
                let mut w = OsString::from("--modify-window=");
                if let Some(v) = it.next() {
                    w.push(v);
                }
                out.push(w);
            }
            Some(rest) => {
                let mut w = OsString::from("--modify-window=");
                w.push(OsStr::new(&String::from_utf8_lossy(rest).into_owned()));
                out.push(w);
            }
            None => out.push(a),
        }
    }
    out
}

/// Parses an argument vector (including the program name).
pub fn parse<I, T>(args: I) -> Result<Parsed, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = modify_window_short(args.into_iter().map(Into::into).collect());
    // A lone `-h` means help, as in rsync.
    if args.len() == 2 && args[1] == "-h" {
        let _ = command().print_help();
        return Err(CliError {
            msg: String::new(),
            code: 0,
        });
    }
    let m = match command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(CliError {
                    msg: String::new(),
                    code: 0,
                });
            }
            if e.kind() == ErrorKind::UnknownArgument {
                if let Some(token) = unknown_option_token(&args, &e) {
                    return Err(usage(format!("arsync: {token}: unknown option")));
                }
            }
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return Err(usage(format!("arsync: {first}")));
        }
    };
    for (id, _, _) in UNSUPPORTED {
        let given = m
            .try_get_raw(id)
            .ok()
            .flatten()
            .is_some_and(|mut v| v.next().is_some())
            && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if given {
            return Err(usage(format!("arsync: option --{id} is not supported yet")));
        }
    }
    if m.get_count("crtimes") > 0 && flag(&m, "crtimes", &[]) {
        return Err(usage(
            "arsync: --crtimes (-N) is not supported: Linux cannot set a file's creation time",
        ));
    }
    let a = last_index(&m, "archive");
    let big_p = last_index(&m, "P");
    let mut o = Options {
        recursive: flag(&m, "recursive", &[a]),
        links: flag(&m, "links", &[a]),
        perms: flag(&m, "perms", &[a]),
        times: flag(&m, "times", &[a]),
        group: flag(&m, "group", &[a]),
        owner: flag(&m, "owner", &[a]),
        ..Options::default()
    };
    let d_at = if flag(&m, "D", &[a]) {
        last_index(&m, "D").max(a)
    } else {
        None
    };
    o.devices = flag(&m, "devices", &[d_at]);
    o.specials = flag(&m, "specials", &[d_at]);
    // --drop-D: no device or special file is created, whatever else asks for them.
    if last_index(&m, "drop-D") > last_index(&m, "no-drop-D") {
        o.devices = false;
        o.specials = false;
    }
    o.dirs = flag(&m, "dirs", &[]);
    o.copy_links = flag(&m, "copy-links", &[]);
    o.copy_unsafe_links = flag(&m, "copy-unsafe-links", &[]);
    o.safe_links = flag(&m, "safe-links", &[]);
    o.copy_dirlinks = flag(&m, "copy-dirlinks", &[]);
    o.keep_dirlinks = flag(&m, "keep-dirlinks", &[]);
    o.executability = flag(&m, "executability", &[]);
    o.atimes = flag(&m, "atimes", &[]);
    o.omit_dir_times = flag(&m, "omit-dir-times", &[]);
    o.omit_link_times = flag(&m, "omit-link-times", &[]);
    o.numeric_ids = flag(&m, "numeric-ids", &[]);
    o.hard_links = flag(&m, "hard-links", &[]);
    o.acls = flag(&m, "acls", &[]);
    if o.acls {
        o.perms = true;
    }
    o.xattrs = flag(&m, "xattrs", &[]);
    o.sparse = flag(&m, "sparse", &[]);
    o.preallocate = flag(&m, "preallocate", &[]);
    o.dry_run = flag(&m, "dry-run", &[]);
    o.quiet = flag(&m, "quiet", &[]);
    o.checksum = flag(&m, "checksum", &[]);
    o.update = flag(&m, "update", &[]);
    o.existing = flag(&m, "existing", &[]);
    o.ignore_existing = flag(&m, "ignore-existing", &[]);
    o.size_only = flag(&m, "size-only", &[]);
    o.ignore_times = flag(&m, "ignore-times", &[]);
    o.whole_file = flag(&m, "whole-file", &[]);
    o.inplace = flag(&m, "inplace", &[]);
    o.partial = flag(&m, "partial", &[big_p]);
    o.progress = flag(&m, "progress", &[big_p]);
    o.delay_updates = flag(&m, "delay-updates", &[]);
    o.delete_excluded = flag(&m, "delete-excluded", &[]);
    o.force = flag(&m, "force", &[]);
    o.ignore_errors = flag(&m, "ignore-errors", &[]);
    o.remove_source_files = flag(&m, "remove-source-files", &[]);
    o.backup = flag(&m, "backup", &[]);
    o.relative = flag(&m, "relative", &[]);
    o.no_implied_dirs = last_index(&m, "no-implied-dirs").is_some();
    o.mkpath = flag(&m, "mkpath", &[]);
    o.from0 = flag(&m, "from0", &[]);
    o.stats = flag(&m, "stats", &[]);
    o.list_only = flag(&m, "list-only", &[]);
    o.fsync = flag(&m, "fsync", &[]);
    o.prune_empty_dirs = flag(&m, "prune-empty-dirs", &[]);
    o.open_noatime = flag(&m, "open-noatime", &[]);
    if last_index(&m, "super").is_some() || last_index(&m, "no-super").is_some() {
        o.super_user = Some(flag(&m, "super", &[]));
    }
    if let Some(v) = value(&m, "stop-after") {
        let mins = parse_stop_after(&v)
            .ok_or_else(|| usage(format!("arsync: invalid --stop-after value: {v}")))?;
        o.stop_at = Some(std::time::SystemTime::now() + std::time::Duration::from_secs(mins * 60));
    }
    if let Some(v) = value(&m, "checksum-seed") {
        // The seed of the block sums a remote transfer exchanges; locally there are none.
        parse_checksum_seed(&v).map_err(|e| usage(format!("arsync: --checksum-seed={v}: {e}")))?;
    }
    if let Some(v) = value(&m, "stop-at") {
        let at = parse_stop_at(&v)
            .ok_or_else(|| usage(format!("arsync: invalid --stop-at format: {v}")))?;
        if at <= std::time::SystemTime::now() {
            return Err(usage(format!(
                "arsync: --stop-at time is not in the future: {v}"
            )));
        }
        o.stop_at = Some(at);
    }
    o.ignore_missing_args = flag(&m, "ignore-missing-args", &[]);
    o.delete_missing_args = flag(&m, "delete-missing-args", &[]);
    o.eight_bit = flag(&m, "8-bit-output", &[]);
    for id in ["timeout", "contimeout", "protocol"] {
        if let Some(v) = value(&m, id) {
            v.parse::<u32>()
                .map_err(|_| usage(format!("arsync: invalid --{id} value: {v}")))?;
        }
    }
    if let Some(v) = value(&m, "max-alloc") {
        parse_size(&v).ok_or_else(|| usage(format!("arsync: invalid --max-alloc value: {v}")))?;
    }
    if let Some(v) = value(&m, "outbuf") {
        if !matches!(
            v.chars().next().map(|c| c.to_ascii_uppercase()),
            Some('N' | 'L' | 'B')
        ) {
            return Err(usage(
                "arsync: Invalid --outbuf setting -- specify N, L, or B.",
            ));
        }
    }
    o.append_verify = flag(&m, "append-verify", &[]);
    o.append = flag(&m, "append", &[]) || o.append_verify;
    if o.append {
        o.inplace = true;
    }
    o.verbose = count_after_negation(&m, "verbose");
    o.itemize = count_after_negation(&m, "itemize-changes");
    // rsync starts at 1; --no-h sets 0 and each later -h adds one.
    let no_h = last_index(&m, "no-human-readable");
    o.human_readable = u8::from(no_h.is_none()) + count_after_negation(&m, "human-readable");
    o.one_file_system = count_after_negation(&m, "one-file-system");
    if o.quiet {
        o.verbose = 0;
    }
    let del_modes = [
        ("delete-before", DeleteMode::Before),
        ("delete-during", DeleteMode::During),
        ("delete-delay", DeleteMode::Delay),
        ("delete-after", DeleteMode::After),
    ];
    let mut chosen: Vec<DeleteMode> = del_modes
        .iter()
        .filter(|(id, _)| flag(&m, id, &[]))
        .map(|(_, d)| *d)
        .collect();
    if chosen.len() > 1 {
        return Err(usage(
            "arsync: you may not combine multiple --delete-WHEN options.",
        ));
    }
    o.delete = match chosen.pop() {
        Some(d) => d,
        None if flag(&m, "delete", &[]) || o.delete_excluded => DeleteMode::During,
        None => DeleteMode::Off,
    };
    for rule in m.get_many::<OsString>("chmod").into_iter().flatten() {
        let rules = meta::parse_chmod(&rule.to_string_lossy()).map_err(usage)?;
        o.chmod.extend(rules);
    }
    if let Some(c) = value(&m, "chown") {
        let (u, g) = match c.split_once(':') {
            Some((u, g)) => (u.to_string(), g.to_string()),
            None => (c.clone(), String::new()),
        };
        if !u.is_empty() {
            o.chown_uid = Some(
                u.parse()
                    .ok()
                    .or_else(|| fsops::uid_by_name(&u))
                    .ok_or_else(|| usage(format!("arsync: Unknown user: {u}")))?,
            );
            o.owner = true;
        }
        if !g.is_empty() {
            o.chown_gid = Some(
                g.parse()
                    .ok()
                    .or_else(|| fsops::gid_by_name(&g))
                    .ok_or_else(|| usage(format!("arsync: Unknown group: {g}")))?,
            );
            o.group = true;
        }
    }
    for (id, user) in [("usermap", true), ("groupmap", false)] {
        for spec in m.get_many::<OsString>(id).into_iter().flatten() {
            let rules = parse_idmap(&spec.to_string_lossy(), user).map_err(usage)?;
            if user {
                o.usermap.extend(rules);
            } else {
                o.groupmap.extend(rules);
            }
        }
    }
    if let Some(w) = value(&m, "modify-window") {
        o.modify_window = w
            .parse()
            .map_err(|_| usage(format!("arsync: invalid --modify-window value: {w}")))?;
    }
    let path_val = |id: &str| m.get_one::<OsString>(id).map(PathBuf::from);
    o.partial_dir = path_val("partial-dir");
    if o.partial_dir.is_some() {
        o.partial = true;
    }
    o.temp_dir = path_val("temp-dir");
    // rsync's option conflicts for writing into the destination file.
    let mode = if o.append { "append" } else { "inplace" };
    if o.append && o.whole_file {
        return Err(usage("arsync: --append cannot be used with --whole-file"));
    }
    if o.inplace && o.delay_updates {
        return Err(usage(format!(
            "arsync: --{mode} cannot be used with --delay-updates"
        )));
    }
    if o.inplace && o.partial_dir.is_some() {
        return Err(usage(format!(
            "arsync: --{mode} cannot be used with --partial-dir"
        )));
    }
    if let Some(v) = value(&m, "max-delete") {
        let n: i64 = v
            .parse()
            .map_err(|_| usage(format!("arsync: invalid --max-delete value: {v}")))?;
        o.max_delete = Some(if n < 0 { 0 } else { n as u64 });
    }
    o.backup_dir = path_val("backup-dir");
    if o.backup_dir.is_some() {
        o.backup = true;
    }
    // rsync: backups without --backup-dir imply --omit-dir-times.
    if o.backup && o.backup_dir.is_none() {
        o.omit_dir_times = true;
    }
    o.suffix = m.get_one::<OsString>("suffix").cloned();
    let many_paths = |id: &str| -> Vec<PathBuf> {
        m.get_many::<OsString>(id)
            .into_iter()
            .flatten()
            .map(PathBuf::from)
            .collect()
    };
    o.link_dest = many_paths("link-dest");
    o.compare_dest = many_paths("compare-dest");
    o.copy_dest = many_paths("copy-dest");
    for (id, slot) in [("min-size", &mut o.min_size), ("max-size", &mut o.max_size)] {
        if let Some(v) = value(&m, id) {
            *slot = Some(
                parse_size(&v)
                    .ok_or_else(|| usage(format!("arsync: invalid --{id} value: {v}")))?,
            );
        }
    }
    o.files_from = path_val("files-from");
    o.out_format = value(&m, "out-format");
    o.log_file = path_val("log-file");
    o.log_file_format = value(&m, "log-file-format");
    if let Some(v) = value(&m, "bwlimit").filter(|_| !negated(&m, "bwlimit")) {
        let kib = parse_size(&format!(
            "{v}{}",
            if v.ends_with(char::is_numeric) {
                "K"
            } else {
                ""
            }
        ))
        .ok_or_else(|| usage(format!("arsync: invalid --bwlimit value: {v}")))?;
        o.bwlimit = (kib > 0).then_some(kib);
    }
    // No effect locally (the quick check and -c compare local files), but values are checked
    // as rsync checks them.
    for id in ["checksum-choice", "cc"] {
        if let Some(v) = value(&m, id) {
            check_checksum_choice(&v).map_err(|msg| CliError {
                msg,
                code: exit::UNSUPPORTED,
            })?;
        }
    }
    if let Some(v) = value(&m, "block-size") {
        parse_block_size(&v).map_err(|e| usage(format!("arsync: {e}")))?;
    }
    // No effect locally, but an unknown name is refused as rsync refuses it.
    for id in ["compress-choice", "zc"] {
        if let Some(v) = value(&m, id) {
            let known = ["auto", "zstd", "lz4", "zlibx", "zlib", "none"];
            if !known.iter().any(|k| k.eq_ignore_ascii_case(&v)) {
                return Err(CliError {
                    msg: format!("unknown compress name: {v}"),
                    code: exit::UNSUPPORTED,
                });
            }
        }
    }
    for info in m.get_many::<OsString>("info").into_iter().flatten() {
        for word in info.to_string_lossy().split(',') {
            match word {
                "progress2" => o.progress2 = true,
                "progress" | "progress1" => o.progress = true,
                "stats" | "stats1" | "stats2" | "stats3" => o.stats = true,
                "name" | "name1" | "name2" => o.verbose = o.verbose.max(1),
                "progress0" => {
                    o.progress = false;
                    o.progress2 = false;
                }
                _ => {}
            }
        }
    }
    o.threads = match value(&m, "threads") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|n: &usize| *n >= 1)
            .ok_or_else(|| usage(format!("arsync: invalid --threads value: {v}")))?,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    o.queue_depth = match value(&m, "queue-depth") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|n: &usize| *n >= 1)
            .ok_or_else(|| usage(format!("arsync: invalid --queue-depth value: {v}")))?,
        None => 256,
    };
    o.watch = flag(&m, "watch", &[]);
    if let Some(v) = value(&m, "watch-delay") {
        o.watch_delay_ms = v
            .parse()
            .ok()
            .filter(|n: &u64| *n <= 3_600_000)
            .ok_or_else(|| usage(format!("arsync: invalid --watch-delay value: {v}")))?;
    } else {
        o.watch_delay_ms = DEFAULT_WATCH_DELAY_MS;
    }
    if let Some(v) = value(&m, "watch-interval") {
        o.watch_interval = Some(
            v.parse()
                .ok()
                .filter(|n: &u64| (1..=31_536_000).contains(n))
                .ok_or_else(|| usage(format!("arsync: invalid --watch-interval value: {v}")))?,
        );
    }
    if (o.watch_interval.is_some() || value(&m, "watch-delay").is_some()) && !o.watch {
        return Err(usage(
            "arsync: --watch-delay and --watch-interval need --watch",
        ));
    }
    if o.files_from.is_some() {
        // --files-from implies -R and -d; -a's -r is not implied (rsync's rule).
        if last_index(&m, "no-relative").is_none() {
            o.relative = true;
        } else {
            o.no_relative = !o.relative;
        }
        if last_index(&m, "no-dirs").is_none() {
            o.dirs = true;
        }
        if last_index(&m, "recursive").is_none() {
            o.recursive = false;
        }
    }

    // Filter rules in command-line order.
    let mut filter = FilterRules::new();
    filter.set_from0(o.from0);
    let mut ordered: Vec<(usize, &str, OsString)> = Vec::new();
    for id in [
        "exclude",
        "include",
        "filter",
        "exclude-from",
        "include-from",
    ] {
        for (i, v) in values_with_index(&m, id) {
            ordered.push((i, id, v));
        }
    }
    if let Some(i) = last_index(&m, "cvs-exclude") {
        ordered.push((i, "cvs", OsString::new()));
    }
    // -F is `dir-merge /.rsync-filter`; a second -F adds `- .rsync-filter`.
    let f_count = m.get_count("F") as usize;
    let f_at: Vec<usize> = m.indices_of("F").map(|i| i.collect()).unwrap_or_default();
    for k in 0..f_count {
        let at = f_at.get(k).or(f_at.last()).copied().unwrap_or(0);
        ordered.push((at, "F", OsString::from(if k == 0 { "1" } else { "2" })));
    }
    ordered.sort_by_key(|(i, _, _)| *i);
    // `--filter` rules may be (or merge files holding) per-directory merge rules.
    let per_dir_rules = ordered
        .iter()
        .any(|(_, id, _)| matches!(*id, "filter" | "F" | "cvs"));
    for (_, id, v) in ordered {
        let text = v.to_string_lossy();
        let r = match id {
            "exclude" => filter.add_exclude_bytes(v.as_bytes()),
            "include" => filter.add_include_bytes(v.as_bytes()),
            "filter" => filter.add_rule_bytes(v.as_bytes()),
            "exclude-from" => filter.add_from_file(&PathBuf::from(&v), FromFile::Exclude),
            "include-from" => filter.add_from_file(&PathBuf::from(&v), FromFile::Include),
            // The k-th -F adds the k-th of rsync's two rules.
            "F" if text == "1" => filter.add_rule(": /.rsync-filter"),
            "F" => filter.add_rule("- .rsync-filter"),
            _ => filter.add_cvs_exclude(),
        };
        r.map_err(|e| usage(format!("arsync: {e}")))?;
    }
    filter.set_delete_excluded(o.delete_excluded);
    let filter = RulesFilter::new(filter);

    let mut paths: Vec<OsString> = m
        .get_many::<OsString>("paths")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for p in &paths {
        if is_remote(p) {
            return Err(CliError {
                msg: format!(
                    "arsync: remote path {:?} is not handled by the local engine",
                    p.to_string_lossy()
                ),
                code: exit::UNSUPPORTED,
            });
        }
    }
    let version = m.get_count("version") > 0;
    let dest = if paths.len() >= 2 && !(o.list_only && o.files_from.is_none() && paths.len() == 1) {
        paths.pop()
    } else {
        None
    };
    if dest.is_none() && !version {
        if paths.is_empty() {
            return Err(usage("arsync: no source or destination given (see --help)"));
        }
        o.list_only = true;
    }
    if o.list_only && !o.recursive {
        o.dirs = true;
    }
    if o.deleting() && !o.recursive && !o.dirs {
        return Err(usage(
            "arsync: --delete does not work without --recursive (-r) or --dirs (-d).",
        ));
    }
    Ok(Parsed {
        opts: o,
        filter,
        sources: paths,
        dest,
        version,
        per_dir_rules,
    })
}

/// `host:path` or `rsync://` arguments.
fn is_remote(p: &OsString) -> bool {
    let b = p.as_encoded_bytes();
    if b.starts_with(b"rsync://") {
        return true;
    }
    match b.iter().position(|c| *c == b':') {
        Some(i) => i > 0 && !b[..i].contains(&b'/'),
        None => false,
    }
}

/// Runs arsync with an argument vector; returns the process exit code.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let parsed = match parse(args.iter().cloned()) {
        Ok(p) => p,
        Err(e) => {
            if !e.msg.is_empty() {
                eprintln!("{}", e.msg);
                if e.code == exit::SYNTAX {
                    eprintln!("arsync error: syntax or usage error (code 1)");
                }
            }
            return e.code;
        }
    };
    if parsed.version {
        println!(
            "arsync  version {}  (rsync-compatible, protocol version 32)",
            env!("CARGO_PKG_VERSION")
        );
        if parsed.opts.verbose > 0 {
            print_io_backend();
        }
        return 0;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("arsync: cannot install signal handler: {e}");
            return exit::FILE_IO;
        }
    }
    if parsed.opts.watch {
        return crate::watch::run(&args, parsed, stop);
    }
    run_parsed(parsed, stop)
}

/// `--version -v`: which I/O backend this process gets and what the kernel's
/// io_uring offers (probed once, printed as found).
fn print_io_backend() {
    match arsync_io::Runtime::new() {
        Ok(rt) => {
            println!("{}", rt.io().describe());
            if let Ok(c) = crate::engine::worker_io_config() {
                println!(
                    "local sync workers: {:?} (ARSYNC_IO=uring|threads chooses)",
                    c.mode
                );
            }
        }
        Err(e) => println!("I/O backend: unavailable: {e}"),
    }
}

/// The run's output: stdout plus the `--log-file` (opened for appending). A log file that
/// cannot be opened is reported and ends the run with rsync's exit code 11.
pub(crate) fn open_output(opts: &Options) -> Result<Output, i32> {
    let log = match &opts.log_file {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "arsync: failed to open log-file {}: {}",
                    p.display(),
                    engine::errno_text(&e)
                );
                return Err(exit::FILE_IO);
            }
        },
        None => None,
    };
    Ok(Output::new(log, opts.log_file_format.clone(), opts.quiet))
}

/// Runs an already parsed command line with the given interrupt flag.
pub fn run_parsed(parsed: Parsed, stop: Arc<AtomicBool>) -> i32 {
    let Parsed {
        opts,
        filter,
        sources,
        dest,
        ..
    } = parsed;
    let out = match open_output(&opts) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let files = match &opts.files_from {
        Some(p) => match engine::read_files_from(p, opts.from0) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "arsync: failed to open files-from file {}: {}",
                    p.display(),
                    engine::errno_text(&e)
                );
                return exit::FILE_IO;
            }
        },
        None => None,
    };
    let dest = dest.unwrap_or_else(|| OsString::from("."));
    let plan_opts = if opts.list_only {
        Options {
            dry_run: true,
            ..opts.clone()
        }
    } else {
        opts.clone()
    };
    let plan = match plan::build(&plan_opts, &sources, &dest, files) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e.msg);
            return e.code;
        }
    };
    let mut plan = plan;
    if opts.list_only {
        plan.create_dest = false;
    }
    let engine = Arc::new(Engine::new(plan_opts, Box::new(filter), out, stop));
    engine.run(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_and_negation_last_wins() {
        let p =
            parse(["arsync", "-a", "--no-perms", "s", "d"]).unwrap_or_else(|e| panic!("{}", e.msg));
        assert!(p.opts.recursive && p.opts.links && p.opts.times && !p.opts.perms);
        let p =
            parse(["arsync", "--no-perms", "-a", "s", "d"]).unwrap_or_else(|e| panic!("{}", e.msg));
        assert!(p.opts.perms);
        let p = parse(["arsync", "-aHAXS", "s", "d"]).unwrap_or_else(|e| panic!("{}", e.msg));
        assert!(p.opts.hard_links && p.opts.acls && p.opts.xattrs && p.opts.sparse);
        assert!(p.opts.devices && p.opts.specials);
        let p = parse(["arsync", "-a", "--no-D", "s", "d"]).unwrap_or_else(|e| panic!("{}", e.msg));
        assert!(!p.opts.devices && !p.opts.specials);
    }

    #[test]
    fn values_both_forms() {
        let p = parse([
            "arsync",
            "-r",
            "--max-delete=3",
            "--suffix",
            ".bak",
            "--modify-window=-1",
            "s",
            "d",
        ])
        .unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(p.opts.max_delete, Some(3));
        assert_eq!(p.opts.suffix.as_deref(), Some(std::ffi::OsStr::new(".bak")));
        assert_eq!(p.opts.modify_window, -1);
        assert_eq!(p.dest.as_deref(), Some(std::ffi::OsStr::new("d")));
    }

    #[test]
    fn stop_after_and_checksum_seed_values_as_rsync_reads_them() {
        // atol: leading digits count, the rest is ignored; not positive is refused.
        for (v, want) in [
            ("5", Some(5)),
            (" 3", Some(3)),
            ("+2", Some(2)),
            ("7x", Some(7)),
            ("0", None),
            ("-1", None),
            ("x", None),
            ("", None),
        ] {
            assert_eq!(parse_stop_after(v), want, "{v:?}");
        }
        // strtol with base 0, the whole value, an int.
        for (v, want) in [
            ("", Ok(0)),
            ("7", Ok(7)),
            (" -5", Ok(-5)),
            ("0x10", Ok(16)),
            ("010", Ok(8)),
            ("2147483647", Ok(i32::MAX)),
            ("-2147483648", Ok(i32::MIN)),
            ("x", Err("invalid numeric value")),
            ("5x", Err("invalid numeric value")),
            ("08", Err("invalid numeric value")),
            ("0x", Err("invalid numeric value")),
            (" ", Err("invalid numeric value")),
            ("2147483648", Err("number too large or too small")),
            (
                "99999999999999999999999",
                Err("number too large or too small"),
            ),
        ] {
            assert_eq!(parse_checksum_seed(v), want, "{v:?}");
        }
        for bad in ["--stop-after=0", "--time-limit=0"] {
            let Err(e) = parse(["arsync", bad, "a/", "b/"]) else {
                panic!("{bad} was taken");
            };
            assert_eq!(
                (e.msg.as_str(), e.code),
                ("arsync: invalid --stop-after value: 0", 1)
            );
        }
        let Err(e) = parse(["arsync", "--checksum-seed=x", "a/", "b/"]) else {
            panic!("--checksum-seed=x was taken");
        };
        assert_eq!(e.msg, "arsync: --checksum-seed=x: invalid numeric value");
        assert!(parse(["arsync", "--checksum-seed=9", "a/", "b/"]).is_ok());
    }

    #[test]
    fn short_modify_window_checksum_choice_and_block_size_as_rsync() {
        for (args, window) in [
            (&["-@", "-1"][..], -1),
            (&["-@2"][..], 2),
            (&["-@", "3"][..], 3),
            (&["--modify-window=4"][..], 4),
        ] {
            let mut argv = vec!["arsync", "-a"];
            argv.extend(args);
            argv.extend(["s", "d"]);
            let p = parse(argv).unwrap_or_else(|e| panic!("{args:?}: {}", e.msg));
            assert_eq!(p.opts.modify_window, window, "{args:?}");
        }
        // After `--` a `-@` is a name.
        let p = parse(["arsync", "-a", "--", "-@x", "d"]).unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(p.sources, vec![OsString::from("-@x")]);
        assert_eq!(
            parse(["arsync", "-@x", "s", "d"])
                .map(|_| ())
                .unwrap_err()
                .code,
            exit::SYNTAX
        );
        for ok in [
            "--cc=XXH3",
            "--checksum-choice=md5,xxh128",
            "--cc=xxhash",
            "-B",
            "--block-size=128k",
        ] {
            let mut argv = vec!["arsync", "-a", ok];
            if ok == "-B" {
                argv.push("0");
            }
            argv.extend(["s", "d"]);
            assert!(parse(argv).is_ok(), "{ok}");
        }
        for (bad, code, msg) in [
            ("--cc=foo", exit::UNSUPPORTED, "unknown checksum name: foo"),
            (
                "--checksum-choice=foo,md5",
                exit::UNSUPPORTED,
                "unknown checksum name: foo,md5",
            ),
            (
                "--checksum-choice=md5,bar",
                exit::UNSUPPORTED,
                "unknown checksum name: bar",
            ),
            (
                "--block-size=abc",
                exit::SYNTAX,
                "--block-size=abc is invalid",
            ),
            (
                "--block-size=200000",
                exit::SYNTAX,
                "--block-size=200000 is too large (max: 128.00K)",
            ),
            (
                "--block-size=-5",
                exit::SYNTAX,
                "--block-size=-5 is too large (max: 128.00K)",
            ),
        ] {
            let e = parse(["arsync", "-a", bad, "s", "d"])
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.code, code, "{bad}");
            assert!(e.msg.ends_with(msg), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn inplace_and_append_conflicts_are_usage_errors() {
        for args in [
            &["--inplace", "--partial-dir=.p"][..],
            &["--append", "--partial-dir=.p"],
            &["--inplace", "--delay-updates"],
            &["--append-verify", "--delay-updates"],
            &["--append", "-W"],
        ] {
            let argv = ["arsync", "-a"].iter().chain(args).chain(&["s", "d"]);
            let e = parse(argv.copied()).err();
            assert_eq!(e.map(|e| e.code), Some(1), "{args:?}");
        }
        for args in [&["--inplace", "-W"][..], &["--inplace", "--partial"]] {
            let argv = ["arsync", "-a"].iter().chain(args).chain(&["s", "d"]);
            assert!(parse(argv.copied()).is_ok(), "{args:?}");
        }
    }

    #[test]
    fn protect_args_is_an_alias_of_secluded_args() {
        for arg in [
            "--protect-args",
            "--secluded-args",
            "-s",
            "--no-protect-args",
        ] {
            assert!(
                parse(["arsync", "-a", arg, "s", "d"]).is_ok(),
                "{arg} refused"
            );
        }
        assert!(parse(["arsync", "-a", "--protect-argz", "s", "d"]).is_err());
    }

    #[test]
    fn unknown_compress_names_are_refused_with_code_4() {
        let code = |args: &[&str]| parse(args.iter().copied()).err().map(|e| e.code);
        assert_eq!(code(&["arsync", "--zc=brotli", "s", "d"]), Some(4));
        assert_eq!(
            code(&["arsync", "--compress-choice", "foo", "s", "d"]),
            Some(4)
        );
        assert_eq!(code(&["arsync", "--zc=ZSTD", "s", "d"]), None);
        assert_eq!(code(&["arsync", "--compress-choice=zlibx", "s", "d"]), None);
    }

    #[test]
    fn unsupported_and_unknown_are_refused() {
        let e = parse(["arsync", "--fake-super", "s", "d"])
            .err()
            .map(|e| (e.code, e.msg));
        let (code, msg) = e.unwrap_or_default();
        assert_eq!(code, 1);
        assert!(msg.contains("--fake-super"), "{msg}");
        assert_eq!(
            parse(["arsync", "--bogus-flag", "s", "d"])
                .err()
                .map(|e| e.code),
            Some(1)
        );
        assert_eq!(
            parse(["arsync", "-N", "s", "d"]).err().map(|e| e.code),
            Some(1)
        );
    }

    #[test]
    fn stop_at_formats() {
        let t = parse_stop_at("2030-01-02T03:04").unwrap_or(std::time::UNIX_EPOCH);
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert_eq!(
            crate::report::format_time(secs as i64),
            "2030/01/02 03:04:00"
        );
        assert!(parse_stop_at("25:00").is_none());
        assert!(parse_stop_at("12:30").is_some());
        assert!(parse_stop_at("nonsense").is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("1KB"), Some(1000));
        assert_eq!(parse_size("1.5M"), Some(1572864));
        assert_eq!(parse_size("1K-1"), Some(1023));
        assert_eq!(parse_size("x"), None);
    }
}
