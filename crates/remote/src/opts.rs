//! rsync options beyond the packed short flags that the remote roles honour:
//! how a client spells them in the server's argument vector (as rsync's
//! `server_options()` does: some go only to a receiving server, some only
//! to a sending one), how a server reads them back, and what the side that
//! owns each one does with it.
//!
//! Owners (docs/REMOTE.md has the table): the quick-check variants (`-u`,
//! `--existing`, `--ignore-existing`, `--size-only`, `-I`, `--min-size`,
//! `--max-size`) and `--*-dest` belong to the generator, on the receiving
//! side ([`TransferOpts::skip`], [`TransferOpts::unchanged`],
//! [`TransferOpts::alt_match`]); link following, `-x`, `-d` and
//! `--files-from` to the sender's walk (`crate::walk::build_list_with`);
//! `--chmod`, `-m` and the id maps to whoever receives the file list
//! ([`TransferOpts::adjust_received`], [`map_owner`]); `-b`,
//! `--max-delete` and `--delete-excluded` to the receiver's replacing and
//! deleting ([`TransferOpts::make_backup`], [`TransferOpts::delete`],
//! [`DeleteLimit`]); `--remove-source-files` to the sender, on the
//! receiver's MSG_SUCCESS ([`remove_sent`]).

use arsync_proto::flist::{FileEntry, FileType};

use arsync_sync::options::{ChmodRule, IdMapRule, IdMatch};

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::{RemoteError, Result};
use crate::fsys::EntryInfo;

/// The options of one transfer that are not archive flags: long options,
/// and the packed letters whose meaning lives here (`u I L k m x b`, and
/// `d` without `r`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferOpts {
    /// Compression options (`-z` itself is a packed flag), see
    /// [`crate::session::CompressSpec`].
    pub compress: crate::session::CompressSpec,
    /// `--bwlimit`: the most bytes per second each side writes to the
    /// connection (sent to the server in KiB, as rsync's client sends it).
    pub bwlimit: Option<u64>,
    /// `-u`: skip files that are newer on the receiver (packed `u`).
    pub update: bool,
    /// `-I`: transfer even when size and mtime match (packed `I`).
    pub ignore_times: bool,
    /// `--existing`: create nothing new on the receiver.
    pub existing: bool,
    /// `--ignore-existing`: leave entries that exist on the receiver alone.
    pub ignore_existing: bool,
    /// `--size-only`: a file with the same size is up to date.
    pub size_only: bool,
    /// `--min-size`: skip smaller files.
    pub min_size: Option<u64>,
    /// `--max-size`: skip larger files.
    pub max_size: Option<u64>,
    /// `-L`: the sender follows every symlink (packed `L`, to a sending server).
    pub copy_links: bool,
    /// `--copy-unsafe-links`: the sender follows links leaving the transfer.
    pub copy_unsafe_links: bool,
    /// `--safe-links`: the receiver ignores links leaving the transfer.
    pub safe_links: bool,
    /// `-k`: the sender follows links to directories (packed `k`).
    pub copy_dirlinks: bool,
    /// `-x` count: the sender stays on the source's file system (packed `x`).
    pub one_file_system: u8,
    /// `--chmod` rules, applied by the client to the modes it sends or
    /// receives (rsync never sends them to the server).
    pub chmod: Vec<ChmodRule>,
    /// `-m`: the receiver drops directories with nothing but directories
    /// below them (packed `m`, to a receiving server).
    pub prune_empty_dirs: bool,
    /// `-d` without `-r`: the sender lists a directory argument's entries
    /// without descending (the packed `d` itself is sent with the other
    /// short flags).
    pub dirs_only: bool,
    /// `--max-delete`: the receiver deletes at most this many entries
    /// (exit code 25 when more were due).
    pub max_delete: Option<u64>,
    /// `--delete-excluded`: the client's plain include/exclude rules apply
    /// to the sender only, so excluded receiver files are deleted too.
    pub delete_excluded: bool,
    /// `--remove-source-files`: the sender removes each file the receiver
    /// reports as safely there (MSG_SUCCESS).
    pub remove_source_files: bool,
    /// `--list-only`: the receiving client lists the sender's file list
    /// and transfers nothing (the sender needs no option for it).
    pub list_only: bool,
    /// `--usermap` (or `--chown USER`, sent as `*:USER`): applied by the receiver.
    pub usermap: Option<String>,
    /// `--groupmap` (or `--chown :GROUP`).
    pub groupmap: Option<String>,
    /// `-b`: the receiver keeps what it replaces or deletes (packed `b`).
    pub backup: bool,
    /// `--backup-dir`: where backups go (relative to the destination).
    pub backup_dir: Option<OsString>,
    /// `--suffix` (default `~`, or empty with `--backup-dir`).
    pub suffix: Option<OsString>,
    /// `--compare-dest`/`--copy-dest`/`--link-dest` directories (relative
    /// ones to the destination), all of `alt_kind`.
    pub alt_dirs: Vec<String>,
    /// What a match in `alt_dirs` does.
    pub alt_kind: AltKind,
    /// `--files-from` for a sending server: `-` (the names follow the
    /// filter list on the connection) or a file on the server's side.
    pub files_from: Option<OsString>,
    /// `--from0`: the names in a `--files-from` file end with NUL bytes.
    pub from0: bool,
    /// A receiving server reports its deletions to the client (MSG_DELETED):
    /// the client logs them (`-v`, sent as `v`; `-i` or `--out-format`, sent
    /// as rsync's `--log-format=%i`).
    pub report_deletions: bool,
    /// The receiver made the destination directory for this run: its `.`
    /// is a new item (`cd+++++++++ ./`), as rsync reports it. Not sent.
    pub dest_created: bool,
    /// `-ii`: every entry's item is reported, changed or not (sent to a
    /// receiving server as rsync's `--log-format=%i%I`).
    pub itemize_all: bool,
    /// `-E` without `-p`: the receiver gives an existing file the
    /// source's executability (packed `E`, to a receiving server).
    pub executability: bool,
    /// `--inplace`: the receiver writes into the existing file (no
    /// temporary file, no rename); the sender matches only blocks the
    /// receiver has not overwritten yet. Sent to either kind of server.
    pub inplace: bool,
    /// `--append` (1) / `--append-verify` (2): only data beyond the
    /// receiver's length is sent and appended in place (implies
    /// `inplace`). Sent to either kind of server.
    pub append: u8,
    /// `--partial-dir`: where the receiver keeps a partial file (a
    /// relative one is below each file's directory) and finds it again as
    /// the next run's basis. To a receiving server.
    pub partial_dir: Option<String>,
    /// `--temp-dir`: where the receiver creates its temporary files (a
    /// relative one is relative to the destination). To a receiving server.
    pub temp_dir: Option<String>,
    /// `-K`: the receiver treats a symlink to a directory as that
    /// directory (packed `K`, to a receiving server).
    pub keep_dirlinks: bool,
    /// A daemon's session: the directories above are inside the
    /// destination (see [`TransferOpts::confine`]).
    pub confined: bool,
    /// `--modify-window` / `-@` when given: the generator's quick check
    /// takes mtimes this many seconds apart as equal (a negative window
    /// compares nanoseconds too). Sent to a receiving server only.
    pub modify_window: Option<i64>,
    /// `-B`/`--block-size`: the generator's fixed delta block length
    /// (validated by [`parse_block_size`]). Sent to either server.
    pub block_size: Option<u32>,
    /// `--checksum-choice` / `--cc` as given (not `auto`): both sides fix
    /// the checksums instead of negotiating them (see
    /// [`parse_checksum_choice`]). Sent to either server.
    pub checksum_choice: Option<String>,
    /// `-v` level. From 2 on rsync's client sends it (one packed `v` per
    /// level) and the generator and the sender print rsync's `-vv` lines:
    /// `delta-transmission enabled`, `NAME is uptodate`, `total: matches=...`.
    pub verbose: u8,
    /// The client's output has `%i` (`-i`, or an `--out-format` with it):
    /// rsync's generator then prints no `NAME is uptodate` lines. Sent as
    /// `--log-format=%i`.
    pub itemizing: bool,
    /// `--checksum-seed=NUM` when not 0: the seed the server sends in the
    /// handshake instead of one from the time (the seed of the MD4/MD5 and
    /// xxhash block sums). Sent to either server, as rsync's client sends it.
    pub checksum_seed: Option<i32>,
    /// `--fsync`: the receiver fsyncs each file it writes. Sent to a
    /// receiving server only.
    pub fsync: bool,
    /// `--preallocate`: the receiver reserves each file's length before
    /// writing it. Sent to a receiving server only.
    pub preallocate: bool,
    /// `--open-noatime`: the sender opens files with `O_NOATIME`. Sent to
    /// either server.
    pub open_noatime: bool,
    /// `--timeout`: seconds without I/O before a side gives up (exit 30);
    /// sent to either kind of server, which enforces it too.
    pub timeout: Option<u32>,
}

pub use arsync_sync::cli::MAX_BLOCK_SIZE;

/// Reads a `-B`/`--block-size` value as rsync does (see
/// [`arsync_sync::cli::parse_block_size`]); 0 means the default (`None`).
pub fn parse_block_size(v: &str) -> Result<Option<u32>> {
    arsync_sync::cli::parse_block_size(v).map_err(RemoteError::Usage)
}

/// Reads a `--checksum-choice` value: one name for both the transfer and
/// the `-c` file checksum, or `XFER,FILE`. Names are rsync's
/// (case-insensitive, `xxhash` for `xxh64`; `auto` is md5 at protocol 30
/// and later). `auto` alone (or `auto,auto`) means negotiation (`None`).
/// An unknown name is rsync's error, exit code 4.
pub fn parse_checksum_choice(
    v: &str,
) -> Result<
    Option<(
        arsync_proto::checksum::ChecksumAlgo,
        arsync_proto::checksum::ChecksumAlgo,
    )>,
> {
    use arsync_proto::checksum::ChecksumAlgo;
    if v.eq_ignore_ascii_case("auto") || v.eq_ignore_ascii_case("auto,auto") {
        return Ok(None);
    }
    // rsync names the rest of the value from the bad name on.
    let one = |name: &str, shown: &str| -> Result<ChecksumAlgo> {
        let lower = name.to_ascii_lowercase();
        let found = match lower.as_str() {
            "auto" => Some(ChecksumAlgo::Md5),
            "xxhash" => Some(ChecksumAlgo::Xxh64),
            n => ChecksumAlgo::from_name(n),
        };
        found.ok_or_else(|| {
            RemoteError::Proto(arsync_proto::Error::Unsupported(format!(
                "unknown checksum name: {shown}"
            )))
        })
    };
    match v.split_once(',') {
        Some((a, b)) => Ok(Some((one(a, v)?, one(b, b)?))),
        None => Ok(Some((one(v, v)?, one(v, v)?))),
    }
}

/// The kind of `--*-dest` basis directories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AltKind {
    /// `--compare-dest`: a match is not transferred.
    #[default]
    Compare,
    /// `--copy-dest`: a match is copied locally.
    Copy,
    /// `--link-dest`: a match (with the same attributes) is hard-linked.
    Link,
}

impl AltKind {
    fn option(self) -> &'static str {
        match self {
            AltKind::Compare => "--compare-dest",
            AltKind::Copy => "--copy-dest",
            AltKind::Link => "--link-dest",
        }
    }
}

/// What the generator does with a file found in a `--*-dest` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltMatch {
    /// `--compare-dest`: nothing (the file is up to date there).
    Skip,
    /// `--copy-dest`: copy this file into place.
    Copy(std::path::PathBuf),
    /// `--link-dest`: hard-link this file into place.
    Link(std::path::PathBuf),
}

impl TransferOpts {
    /// Reads the meaning of the packed flags that belong here.
    pub fn with_flags(mut self, flags: &str) -> Self {
        self.update |= flags.contains('u');
        self.ignore_times |= flags.contains('I');
        self.copy_links |= flags.contains('L');
        self.copy_dirlinks |= flags.contains('k');
        self.prune_empty_dirs |= flags.contains('m');
        self.dirs_only |= flags.contains('d') && !flags.contains('r');
        self.backup |= flags.contains('b');
        self.report_deletions |= flags.contains('v');
        let v = flags.chars().filter(|&c| c == 'v').count().min(9) as u8;
        self.verbose = self.verbose.max(v);
        self.executability |= flags.contains('E') && !flags.contains('p');
        self.keep_dirlinks |= flags.contains('K');
        let x = flags.chars().filter(|&c| c == 'x').count();
        self.one_file_system = self.one_file_system.max(x.min(2) as u8);
        self
    }

    /// The packed letters for these options. `u`, `I` and `x` go to either
    /// kind of server, `L` and `k` only to a sending one, `m` only to a
    /// receiving one (as rsync's client sends them).
    pub fn packed_flags(&self, server_sends: bool) -> String {
        let mut f = String::new();
        for (on, c) in [
            (self.backup, 'b'),
            (self.update, 'u'),
            (self.ignore_times, 'I'),
            (self.copy_links && server_sends, 'L'),
            (self.copy_dirlinks && server_sends, 'k'),
            (self.prune_empty_dirs && !server_sends, 'm'),
            (self.keep_dirlinks && !server_sends, 'K'),
            (self.executability && !server_sends, 'E'),
        ] {
            if on {
                f.push(c);
            }
        }
        for _ in 0..self.one_file_system.min(2) {
            f.push('x');
        }
        f
    }

    /// Permission bits after the `--chmod` rules.
    pub fn chmod_perms(&self, mut perms: u32, is_dir: bool) -> u32 {
        for r in &self.chmod {
            if (is_dir && r.dirs) || (!is_dir && r.files) {
                perms = arsync_sync::meta::apply_chmod(&r.spec, perms, is_dir);
            }
        }
        perms
    }

    /// The long options for the server, in rsync's order. The generator's
    /// options go only to a receiving server (`server_sends` false): a
    /// pulling client runs the generator itself.
    pub fn server_args(&self, server_sends: bool) -> Vec<OsString> {
        let mut v = Vec::new();
        if let Some(b) = self.block_size {
            v.push(format!("-B{b}").into());
        }
        if let Some(t) = self.timeout {
            v.push(format!("--timeout={t}").into());
        }
        if let Some(b) = self.bwlimit {
            v.push(format!("--bwlimit={}", b.div_ceil(1024)).into());
        }
        if !server_sends {
            if let Some(n) = self.min_size {
                v.push(format!("--min-size={n}").into());
            }
            if let Some(n) = self.max_size {
                v.push(format!("--max-size={n}").into());
            }
            if self.size_only {
                v.push("--size-only".into());
            }
            if self.ignore_existing {
                v.push("--ignore-existing".into());
            }
            if self.existing {
                v.push("--existing".into());
            }
        }
        if !server_sends {
            if let Some(m) = &self.usermap {
                v.push(format!("--usermap={m}").into());
            }
            if let Some(m) = &self.groupmap {
                v.push(format!("--groupmap={m}").into());
            }
            match self.max_delete {
                Some(0) => v.push("--max-delete=-1".into()),
                Some(n) => v.push(format!("--max-delete={n}").into()),
                None => {}
            }
            if self.delete_excluded {
                v.push("--delete-excluded".into());
            }
        }
        if let Some(d) = &self.backup_dir {
            v.push("--backup-dir".into());
            v.push(d.clone());
        }
        if let Some(x) = self
            .suffix
            .as_ref()
            .filter(|x| x.as_os_str() != self.default_suffix())
        {
            // Bytes: a suffix need not be UTF-8.
            let mut arg = OsString::from("--suffix=");
            arg.push(x);
            v.push(arg);
        }
        if let Some(c) = &self.checksum_choice {
            v.push(format!("--checksum-choice={c}").into());
        }
        if let Some(seed) = self.checksum_seed.filter(|&n| n != 0) {
            v.push(format!("--checksum-seed={seed}").into());
        }
        // The generator's window goes to a receiving server (negative as
        // rsync spells it).
        match self.modify_window {
            Some(w) if !server_sends && w < 0 => v.push(format!("-@{w}").into()),
            Some(w) if !server_sends => v.push(format!("--modify-window={w}").into()),
            _ => {}
        }
        if self.fsync && !server_sends {
            v.push("--fsync".into());
        }
        if !server_sends {
            for d in &self.alt_dirs {
                v.push(self.alt_kind.option().into());
                v.push(d.into());
            }
        }
        // A list on the server's host goes to either server (a receiving
        // one forwards it to the sending client); `-` only to a sender.
        if let Some(f) = &self.files_from {
            if f == "-" {
                v.push("--files-from=-".into());
                v.push("--from0".into());
            } else {
                v.push("--files-from".into());
                v.push(f.clone());
                if self.from0 {
                    v.push("--from0".into());
                }
            }
        }
        if !server_sends {
            if let Some(d) = &self.partial_dir {
                v.push("--partial-dir".into());
                v.push(d.into());
            }
            if let Some(d) = &self.temp_dir {
                v.push("--temp-dir".into());
                v.push(d.into());
            }
        }
        // From -vv on the packed `v`s make the server report (rsync's client
        // then sends no --log-format unless its output itemizes).
        if self.report_deletions && !server_sends && (self.itemizing || self.verbose < 2) {
            v.push(match self.itemize_all {
                true => "--log-format=%i%I".into(),
                false => "--log-format=%i".into(),
            });
        }
        if self.copy_unsafe_links {
            v.push("--copy-unsafe-links".into());
        }
        if self.remove_source_files {
            v.push("--remove-source-files".into());
        }
        if self.safe_links {
            v.push("--safe-links".into());
        }
        if self.append > 0 {
            if self.append > 1 {
                v.push("--append".into());
            }
            v.push("--append".into());
        } else if self.inplace {
            v.push("--inplace".into());
        }
        if self.preallocate && !server_sends {
            v.push("--preallocate".into());
        }
        if self.open_noatime {
            v.push("--open-noatime".into());
        }
        v.extend(self.compress.server_args().into_iter().map(OsString::from));
        v
    }

    /// [`TransferOpts::parse_server_arg`] for an argument as received: the
    /// values of `--backup-dir`, `--suffix` and `--files-from` keep their
    /// bytes (they need not be UTF-8); other options are read as text.
    pub fn parse_server_arg_os(
        &mut self,
        arg: &OsStr,
        next: &mut dyn FnMut() -> Option<OsString>,
    ) -> Result<bool> {
        let raw = arg.as_bytes();
        let (name, inline) = match raw.iter().position(|&c| c == b'=') {
            Some(k) => (&raw[..k], Some(&raw[k + 1..])),
            None => (raw, None),
        };
        if !matches!(name, b"--backup-dir" | b"--suffix" | b"--files-from") {
            let text = arg.to_string_lossy();
            let mut next_text = || next().map(|v| v.to_string_lossy().into_owned());
            return self.parse_server_arg(&text, &mut next_text);
        }
        let v = match inline {
            Some(v) => OsStr::from_bytes(v).to_os_string(),
            None => next().ok_or_else(|| {
                RemoteError::Usage(format!("{} needs a value", arg.to_string_lossy()))
            })?,
        };
        match name {
            b"--suffix" if v.as_bytes().contains(&b'/') => {
                return Err(RemoteError::Usage(format!(
                    "--suffix cannot contain slashes: {}",
                    v.to_string_lossy()
                )))
            }
            b"--suffix" => self.suffix = Some(v),
            b"--backup-dir" => self.backup_dir = Some(v),
            _ => self.files_from = Some(v),
        }
        Ok(true)
    }

    /// Applies one long server option (`--name` or `--name=value`); `next`
    /// supplies the following word for options rsync splits in two.
    /// Returns false for an option that is not ours.
    pub fn parse_server_arg(
        &mut self,
        arg: &str,
        next: &mut dyn FnMut() -> Option<String>,
    ) -> Result<bool> {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        if let Some(n) = name.strip_prefix("--") {
            let split = crate::session::CompressSpec::WITH_VALUE.contains(&n) && value.is_none();
            let v = if split {
                next()
            } else {
                value.map(str::to_string)
            };
            if self.compress.parse_long(n, v.as_deref()) {
                return Ok(true);
            }
        }
        let size = |v: Option<&str>| -> Result<Option<u64>> {
            let v = v.ok_or_else(|| RemoteError::Usage(format!("{name} needs a value")))?;
            arsync_sync::cli::parse_size(v)
                .map(Some)
                .ok_or_else(|| RemoteError::Usage(format!("bad size in {arg}")))
        };
        match name {
            "--timeout" => {
                let v =
                    value.ok_or_else(|| RemoteError::Usage("--timeout needs a value".into()))?;
                // rsync reads an int; zero (or less) is no timeout.
                let secs = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| RemoteError::Usage(format!("bad {arg}")))?;
                self.timeout = u32::try_from(secs).ok().filter(|&s| s > 0);
            }
            "--bwlimit" => {
                let v =
                    value.ok_or_else(|| RemoteError::Usage("--bwlimit needs a value".into()))?;
                // KiB per second from rsync's client (which sends a plain
                // number); suffixes as the command line takes them.
                let bytes = match v.parse::<u64>() {
                    Ok(kib) => Some(kib.saturating_mul(1024)),
                    Err(_) => arsync_sync::cli::parse_size(v),
                };
                let bytes = bytes.ok_or_else(|| RemoteError::Usage(format!("bad {arg}")))?;
                self.bwlimit = (bytes > 0).then_some(bytes);
            }
            "--existing" | "--ignore-non-existing" => self.existing = true,
            "--ignore-existing" => self.ignore_existing = true,
            "--size-only" => self.size_only = true,
            "--ignore-times" => self.ignore_times = true,
            "--update" => self.update = true,
            "--min-size" => self.min_size = size(value)?,
            "--max-size" => self.max_size = size(value)?,
            "--copy-unsafe-links" => self.copy_unsafe_links = true,
            "--delete-excluded" => self.delete_excluded = true,
            "--remove-source-files" | "--remove-sent-files" => self.remove_source_files = true,
            "--list-only" => self.list_only = true,
            "--backup" => self.backup = true,
            "--from0" => self.from0 = true,
            "--compare-dest" | "--copy-dest" | "--link-dest" => {
                let kind = match name {
                    "--compare-dest" => AltKind::Compare,
                    "--copy-dest" => AltKind::Copy,
                    _ => AltKind::Link,
                };
                if !self.alt_dirs.is_empty() && self.alt_kind != kind {
                    return Err(RemoteError::Usage(
                        "only one of --compare-dest, --copy-dest, --link-dest may be used".into(),
                    ));
                }
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                self.alt_kind = kind;
                self.alt_dirs.push(v);
            }
            "--usermap" | "--groupmap" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                arsync_sync::cli::parse_idmap(&v, name == "--usermap")
                    .map_err(RemoteError::Usage)?;
                match name {
                    "--usermap" => self.usermap = Some(v),
                    _ => self.groupmap = Some(v),
                }
            }
            "--max-delete" => {
                let v = value.ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?;
                let n: i64 = v
                    .parse()
                    .map_err(|_| RemoteError::Usage(format!("bad number in {arg}")))?;
                // rsync's client sends -1 for a limit of 0.
                self.max_delete = Some(n.max(0) as u64);
            }
            "--safe-links" => self.safe_links = true,
            "--inplace" => self.inplace = true,
            "--append" => {
                self.append = (self.append + 1).min(2);
                self.inplace = true;
            }
            "--append-verify" => {
                self.append = 2;
                self.inplace = true;
            }
            "--executability" => self.executability = true,
            "--keep-dirlinks" => self.keep_dirlinks = true,
            // rsync's --delay-updates directory (the server handles it).
            "--partial-dir" if value == Some(".~tmp~") => return Ok(false),
            "--partial-dir" | "--temp-dir" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                if v.is_empty() {
                    return Err(RemoteError::Usage(format!("{name} needs a directory")));
                }
                match name {
                    "--partial-dir" => self.partial_dir = Some(v),
                    _ => self.temp_dir = Some(v),
                }
            }
            "--modify-window" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                self.modify_window = Some(
                    v.parse()
                        .map_err(|_| RemoteError::Usage(format!("bad --modify-window={v}")))?,
                );
            }
            "--block-size" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                self.block_size = parse_block_size(&v)?;
            }
            "--checksum-choice" | "--cc" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                self.checksum_choice = parse_checksum_choice(&v)?.map(|_| v);
            }
            "--checksum-seed" => {
                let v = match value {
                    Some(v) => v.to_string(),
                    None => {
                        next().ok_or_else(|| RemoteError::Usage(format!("{arg} needs a value")))?
                    }
                };
                let seed = arsync_sync::cli::parse_checksum_seed(&v)
                    .map_err(|e| RemoteError::Usage(format!("--checksum-seed={v}: {e}")))?;
                self.checksum_seed = (seed != 0).then_some(seed);
            }
            "--fsync" => self.fsync = true,
            "--preallocate" => self.preallocate = true,
            "--open-noatime" => self.open_noatime = true,
            "--no-open-noatime" => self.open_noatime = false,
            "--copy-links" => self.copy_links = true,
            "--copy-dirlinks" => self.copy_dirlinks = true,
            "--prune-empty-dirs" => self.prune_empty_dirs = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// For a daemon's session (the client is not trusted with the
    /// daemon's file system): `--temp-dir`, `--partial-dir` and
    /// `--backup-dir` are made relative (leading `/` dropped, as rsync's
    /// daemon sanitizes them) and may not contain `..`; the temporary
    /// directory is then resolved beneath the destination.
    pub fn confine(&mut self) -> Result<()> {
        if let Some(v) = &mut self.backup_dir {
            let b = v.as_bytes();
            let start = b.iter().position(|&c| c != b'/').unwrap_or(b.len());
            let rel = &b[start..];
            if rel.split(|&c| c == b'/').any(|c| c == b"..") {
                return Err(RemoteError::Refused(format!(
                    "--backup-dir {:?} leaves the module",
                    v.to_string_lossy()
                )));
            }
            *v = match rel.is_empty() {
                true => ".".into(),
                false => OsStr::from_bytes(rel).to_os_string(),
            };
        }
        for (d, what) in [
            (&mut self.temp_dir, "--temp-dir"),
            (&mut self.partial_dir, "--partial-dir"),
        ] {
            if let Some(v) = d {
                let rel = v.trim_start_matches('/');
                if rel.split('/').any(|c| c == "..") {
                    return Err(RemoteError::Refused(format!(
                        "{what} {v:?} leaves the module"
                    )));
                }
                *v = if rel.is_empty() {
                    ".".into()
                } else {
                    rel.into()
                };
            }
        }
        self.confined = true;
        Ok(())
    }

    /// rsync's usage errors for the transfer modes (exit code 1): given
    /// `delay_updates` and `whole_file` (`-W`) besides these options.
    pub fn conflict(&self, delay_updates: bool, whole_file: bool) -> Option<String> {
        let mode = if self.append > 0 { "append" } else { "inplace" };
        if self.append > 0 && whole_file {
            return Some("--append cannot be used with --whole-file".into());
        }
        if self.inplace && delay_updates {
            return Some(format!("--{mode} cannot be used with --delay-updates"));
        }
        if self.inplace && self.partial_dir.is_some() {
            return Some(format!("--{mode} cannot be used with --partial-dir"));
        }
        None
    }

    /// True when [`TransferOpts::skip`] can skip anything.
    pub fn selects(&self) -> bool {
        self.update
            || self.existing
            || self.ignore_existing
            || self.min_size.is_some()
            || self.max_size.is_some()
            || self.safe_links
    }

    /// Why the generator leaves entry `e` alone, given what exists locally
    /// (`None`: it is handled). `local` is the `lstat` of the destination.
    pub fn skip(&self, e: &FileEntry, local: Option<&EntryInfo>) -> Option<Skip> {
        if e.name == b"." {
            return None;
        }
        let ft = e.file_type();
        if self.safe_links && ft == Some(FileType::Symlink) {
            let target = e.link_target.as_deref().unwrap_or_default();
            if unsafe_symlink(target, &e.name) {
                return Some(Skip::UnsafeLink);
            }
        }
        let Some(m) = local else {
            if self.existing {
                return Some(Skip::NotCreating);
            }
            return self.size_excluded(e).then_some(Skip::Size);
        };
        let local_dir = m.file_type == rustix::fs::FileType::Directory;
        if self.ignore_existing && !(e.is_dir() && local_dir) {
            return Some(Skip::Exists);
        }
        if ft != Some(FileType::Regular) {
            return None;
        }
        if self.size_excluded(e) {
            return Some(Skip::Size);
        }
        if self.update
            && m.file_type == rustix::fs::FileType::RegularFile
            && e.mtime - m.mtime < self.modify_window.unwrap_or(0)
        {
            return Some(Skip::Newer);
        }
        None
    }

    /// `--min-size`/`--max-size` for a regular file that does not exist locally.
    pub fn size_excluded(&self, e: &FileEntry) -> bool {
        let size = e.size.max(0) as u64;
        e.file_type() == Some(FileType::Regular)
            && (self.max_size.is_some_and(|n| size > n) || self.min_size.is_some_and(|n| size < n))
    }

    /// The quick check for an existing regular file of the same size:
    /// true when it is up to date. `same_sum` computes the `-c` comparison.
    pub fn unchanged(
        &self,
        e: &FileEntry,
        m: &EntryInfo,
        same_sum: impl FnOnce() -> Result<bool>,
    ) -> Result<bool> {
        if m.file_type != rustix::fs::FileType::RegularFile || m.size != e.size.max(0) as u64 {
            return Ok(false);
        }
        if e.checksum.is_some() {
            return same_sum();
        }
        if self.size_only {
            return Ok(true);
        }
        let nsec_differs =
            self.modify_window.is_some_and(|w| w < 0) && e.mtime_nsec != m.mtime_nsec;
        Ok(!self.ignore_times && self.same_mtime(e.mtime, m.mtime) && !nsec_differs)
    }

    /// Whether two mtimes (seconds) are the same for the quick check:
    /// within `--modify-window` seconds when one is given (a negative
    /// window also compares nanoseconds, see [`TransferOpts::unchanged`]).
    pub fn same_mtime(&self, a: i64, b: i64) -> bool {
        match self.modify_window {
            Some(w) if w > 0 => a.abs_diff(b) <= w as u64,
            _ => a == b,
        }
    }
}

impl TransferOpts {
    /// What the receiver does to a file list it received (sorted, with
    /// duplicates inactive): `--chmod` on the modes, then `-m` marks
    /// directories with no non-directory below them inactive.
    pub fn adjust_received(&self, entries: &mut [FileEntry], active: &mut [bool]) {
        if !self.chmod.is_empty() {
            for e in entries.iter_mut() {
                if e.file_type() != Some(FileType::Symlink) && e.mode != 0 {
                    e.mode = (e.mode & !0o7777) | self.chmod_perms(e.mode & 0o7777, e.is_dir());
                }
            }
        }
        if !self.prune_empty_dirs {
            return;
        }
        // Every directory that has an active non-directory below it.
        let mut keep: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        for (e, _) in entries
            .iter()
            .zip(active.iter())
            .filter(|(e, a)| **a && !e.is_dir())
        {
            let mut n = e.name.as_slice();
            while let Some(i) = n.iter().rposition(|&b| b == b'/') {
                n = &n[..i];
                if !keep.insert(n) {
                    break;
                }
            }
        }
        let prune: Vec<bool> = entries
            .iter()
            .map(|e| {
                e.is_dir() && e.name != b"." && !e.top_dir && !keep.contains(e.name.as_slice())
            })
            .collect();
        for (a, p) in active.iter_mut().zip(prune) {
            if p {
                *a = false;
            }
        }
    }
}

impl TransferOpts {
    /// The parsed `--usermap` and `--groupmap` rules.
    pub fn id_rules(&self) -> Result<(Vec<IdMapRule>, Vec<IdMapRule>)> {
        let parse = |m: &Option<String>, user| match m {
            Some(m) => arsync_sync::cli::parse_idmap(m, user).map_err(RemoteError::Usage),
            None => Ok(Vec::new()),
        };
        Ok((parse(&self.usermap, true)?, parse(&self.groupmap, false)?))
    }
}

/// The local owner for the sender's id `id`: the first `rules` entry
/// matching the id (or the sender's name for it, else our name for it;
/// `*` matches any id), else the usual mapping by name (`by_name`).
pub fn map_owner(
    rules: &[IdMapRule],
    id: u32,
    sender_names: &[(u32, Vec<u8>)],
    by_name: &crate::ids::IdMap,
    local: &crate::ids::IdNames,
    user: bool,
) -> u32 {
    for r in rules {
        let hit = match &r.from {
            IdMatch::Id(x) => *x == id,
            IdMatch::Range(lo, hi) => (*lo..=*hi).contains(&id),
            IdMatch::Name(p) if p == "*" => true,
            IdMatch::Name(p) => {
                let name = sender_names
                    .iter()
                    .find(|(n, _)| *n == id)
                    .map(|(_, name)| name.as_slice())
                    .or_else(|| {
                        if user {
                            local.user(id)
                        } else {
                            local.group(id)
                        }
                    });
                name.is_some_and(|n| arsync_filter::wildmatch::wildmatch(p.as_bytes(), n))
            }
        };
        if hit {
            return r.to;
        }
    }
    by_name.map(id)
}

impl TransferOpts {
    fn default_suffix(&self) -> &'static OsStr {
        match self.backup_dir {
            Some(_) => OsStr::new(""),
            None => OsStr::new("~"),
        }
    }

    /// The backup suffix in effect.
    pub fn backup_suffix(&self) -> &OsStr {
        self.suffix.as_deref().unwrap_or(self.default_suffix())
    }

    /// Where `-b` keeps the old version of `name` (its parent directory
    /// is created).
    pub fn backup_path(
        &self,
        dest: &crate::fsys::DestRoot,
        name: &[u8],
    ) -> Result<std::path::PathBuf> {
        let mut rel = name.to_vec();
        rel.extend_from_slice(self.backup_suffix().as_bytes());
        let rel = std::ffi::OsStr::from_bytes(&rel);
        let to = match &self.backup_dir {
            Some(d) => dest.root().join(d).join(rel),
            None => dest.root().join(rel),
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| RemoteError::io(format!("creating {}", parent.display()), e))?;
        }
        Ok(to)
    }

    /// `--inplace -b`: copies the existing regular file `name` to its
    /// backup name (with its mode, owner and times) before it is rewritten
    /// in place; returns the backup's path, the delta basis.
    pub fn copy_backup(
        &self,
        dest: &crate::fsys::DestRoot,
        name: &[u8],
    ) -> Result<std::path::PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let from = dest.path(name)?;
        let to = self.backup_path(dest, name)?;
        let what = |e: std::io::Error| {
            RemoteError::io(format!("backing up {}", String::from_utf8_lossy(name)), e)
        };
        match std::fs::symlink_metadata(&to) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&to).map_err(what)?,
            _ => {}
        }
        let m = std::fs::symlink_metadata(&from).map_err(what)?;
        std::fs::copy(&from, &to).map_err(what)?;
        let _ = std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()));
        let f = std::fs::File::options()
            .write(true)
            .open(&to)
            .map_err(what)?;
        f.set_permissions(m.permissions()).map_err(what)?;
        let times = std::fs::FileTimes::new()
            .set_accessed(m.accessed().map_err(what)?)
            .set_modified(m.modified().map_err(what)?);
        f.set_times(times).map_err(what)?;
        Ok(to)
    }

    /// `-b`: moves the existing non-directory `name` aside (to
    /// `name<suffix>`, or under `--backup-dir`) before it is replaced or
    /// deleted. Returns false when there was nothing to back up.
    pub fn make_backup(&self, dest: &crate::fsys::DestRoot, name: &[u8]) -> Result<bool> {
        if !self.backup {
            return Ok(false);
        }
        let from = dest.path(name)?;
        match std::fs::symlink_metadata(&from) {
            Ok(m) if !m.is_dir() => {}
            _ => return Ok(false),
        }
        let rel = String::from_utf8_lossy(name);
        let to = self.backup_path(dest, name)?;
        if let Err(e) = std::fs::rename(&from, &to) {
            if e.raw_os_error() != Some(18) {
                return Err(RemoteError::io(format!("backing up {rel}"), e));
            }
            // Another file system (EXDEV): copy, then remove.
            std::fs::copy(&from, &to)
                .and_then(|_| std::fs::remove_file(&from))
                .map_err(|e| RemoteError::io(format!("backing up {rel}"), e))?;
        }
        Ok(true)
    }

    /// `--compare-dest`/`--copy-dest`/`--link-dest` for a regular file,
    /// as rsync's generator judges the basis directories: the first one
    /// whose file passes the quick check and has the same attributes
    /// (permissions, mtime, and the owner when kept) wins; failing that,
    /// the first that passes the quick check. With the destination file
    /// present (`exists`) only an exact match of `--compare-dest` or
    /// `--link-dest` counts. `None`: the generator goes on as usual.
    pub fn alt_match(
        &self,
        dest: &crate::fsys::DestRoot,
        e: &FileEntry,
        exists: bool,
        owners: (bool, bool),
        same_sum: impl Fn(&std::path::Path) -> Result<bool>,
    ) -> Result<Option<AltMatch>> {
        use std::os::unix::fs::MetadataExt;
        if exists && self.alt_kind == AltKind::Copy {
            return Ok(None);
        }
        let rel = std::ffi::OsStr::from_bytes(&e.name);
        let mut content_match: Option<std::path::PathBuf> = None;
        for d in &self.alt_dirs {
            let p = dest.root().join(d).join(rel);
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let info = EntryInfo {
                file_type: rustix::fs::FileType::from_raw_mode(m.mode()),
                size: m.len(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec() as u32,
                perms: m.mode() & 0o7777,
            };
            if !self.unchanged(e, &info, || same_sum(&p))? {
                continue;
            }
            let same_attrs = m.mode() & 0o7777 == e.mode & 0o7777
                && (!owners.0 || m.uid() == e.uid)
                && (!owners.1 || m.gid() == e.gid)
                && m.mtime() == e.mtime;
            if same_attrs && self.alt_kind != AltKind::Copy {
                return Ok(Some(match self.alt_kind {
                    AltKind::Link => AltMatch::Link(p),
                    _ => AltMatch::Skip,
                }));
            }
            content_match.get_or_insert(p);
        }
        // Same content, other attributes: a local copy (not for an
        // existing destination file, which the quick check handles).
        Ok(content_match.filter(|_| !exists).map(AltMatch::Copy))
    }

    /// [`TransferOpts::delete`] that names every entry it removes to
    /// `report` (a directory's name with its `/`), each directory's
    /// contents first in the order rsync deletes them (its list order
    /// reversed), as rsync's `-v` lists them. With `dry_run` nothing is
    /// removed (the names are reported all the same).
    pub fn delete_reporting(
        &self,
        dest: &crate::fsys::DestRoot,
        name: &[u8],
        is_dir: bool,
        dry_run: bool,
        report: &mut dyn FnMut(&[u8]),
    ) -> Result<[i32; 5]> {
        let mut counts = [0i32; 5];
        if is_dir {
            let mut kids = Vec::new();
            for c in dest.list_dir(name)?.unwrap_or_default() {
                let p = [name, b"/", &c].concat();
                let d = dest
                    .lstat(&p)?
                    .is_some_and(|m| m.file_type == rustix::fs::FileType::Directory);
                kids.push((d, p));
            }
            kids.sort();
            for (d, p) in kids.into_iter().rev() {
                let n = self.delete_reporting(dest, &p, d, dry_run, report)?;
                for (t, k) in counts.iter_mut().zip(n) {
                    *t += k;
                }
            }
        }
        if !dry_run {
            for (t, k) in counts.iter_mut().zip(self.delete(dest, name)?) {
                *t += k;
            }
        }
        match is_dir {
            true => report(&[name, b"/"].concat()),
            false => report(name),
        }
        Ok(counts)
    }

    /// Deletes `name` (and what is below it) for `--delete`, keeping
    /// backups of the non-directories with `-b`. Returns rsync's
    /// deletion counts.
    pub fn delete(&self, dest: &crate::fsys::DestRoot, name: &[u8]) -> Result<[i32; 5]> {
        if !self.backup {
            return dest.remove_tree(name);
        }
        let mut counts = [0i32; 5];
        if let Some(children) = dest.list_dir(name)? {
            for c in children {
                let mut p = name.to_vec();
                p.push(b'/');
                p.extend_from_slice(&c);
                for (t, k) in counts.iter_mut().zip(self.delete(dest, &p)?) {
                    *t += k;
                }
            }
        }
        if self.make_backup(dest, name)? {
            counts[0] += 1;
            return Ok(counts);
        }
        for (t, k) in counts.iter_mut().zip(dest.remove_tree(name)?) {
            *t += k;
        }
        Ok(counts)
    }
}

/// The sources named by a `--files-from` list, below the source
/// directory `base`: with `relative` (`-R`, the default with
/// `--files-from`) each keeps its path after a `/./` marker.
pub fn files_from_sources(
    base: &std::path::Path,
    names: &[Vec<u8>],
    relative: bool,
) -> Vec<crate::walk::SourceSpec> {
    let mut base = base.as_os_str().as_bytes();
    while let Some(b) = base.strip_suffix(b"/") {
        base = b;
    }
    let base = if base.is_empty() { &b"."[..] } else { base };
    names
        .iter()
        .map(|n| {
            let mut n = &n[..];
            while let Some(rest) = n.strip_prefix(b"./") {
                n = rest;
            }
            let mut path = base.to_vec();
            path.extend_from_slice(if relative { b"/./" } else { b"/" });
            path.extend_from_slice(n);
            while path.len() > 1 && path.ends_with(b"/") {
                path.pop();
            }
            crate::walk::SourceSpec {
                contents: false,
                path: std::ffi::OsString::from_vec(path).into(),
            }
        })
        .collect()
}

/// Writes `--files-from` names as they travel on the connection: each
/// ends with a NUL, an empty name ends the list (the form
/// [`read_files_from_wire`] reads).
pub fn encode_files_from(names: &[Vec<u8>], out: &mut Vec<u8>) {
    for n in names {
        out.extend_from_slice(n);
        out.push(0);
    }
    out.push(0);
}

/// Reads the `--files-from=-` names a receiving client sends after its
/// filter list: each ends with a NUL, an empty name ends the list.
pub fn read_files_from_wire<R: std::io::Read>(
    ins: &mut crate::conn::InStream<R>,
) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    loop {
        let name = ins.decode(|r| {
            let rest = r.rest();
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                return Err(arsync_proto::Error::Incomplete);
            };
            let v = rest[..end].to_vec();
            r.bytes(end + 1)?;
            Ok(v)
        })?;
        if name.is_empty() {
            return Ok(names);
        }
        if name.len() > 4096 {
            return Err(RemoteError::Refused("--files-from name too long".into()));
        }
        names.push(name);
    }
}

/// rsync's basis type for a `--partial-dir` file (`FNAMECMP_PARTIAL_DIR`).
pub const BASIS_PARTIAL_DIR: u8 = 0x81;

/// rsync's basis type for the backup of the destination file
/// (`FNAMECMP_BACKUP`: `--inplace -b`).
pub const BASIS_BACKUP: u8 = 0x82;

/// rsync's basis type for the destination file itself (`FNAMECMP_FNAME`).
pub const BASIS_FNAME: u8 = 0x80;

/// Whether the receiver rewrites its basis file in place for an item with
/// `basis_type`: with `--inplace` when the basis is the file itself, and
/// for a `--partial-dir` basis when both sides agreed on it (compat `I`).
pub fn receiver_in_place(
    inplace: bool,
    basis_type: Option<u8>,
    neg: &arsync_proto::handshake::Negotiated,
) -> bool {
    let basis = basis_type.unwrap_or(BASIS_FNAME);
    (inplace && basis == BASIS_FNAME)
        || (basis == BASIS_PARTIAL_DIR
            && neg
                .compat
                .has(arsync_proto::handshake::CompatFlags::INPLACE_PARTIAL_DIR))
}

/// `--append`: how much of the file the receiver has, from its sum head.
pub fn append_offset(head: &arsync_proto::sums::SumHead) -> u64 {
    let (count, blen) = (head.count.max(0) as u64, head.blength.max(0) as u64);
    let mut len = count * blen;
    if head.remainder > 0 && count > 0 {
        len -= blen - head.remainder as u64;
    }
    len
}

/// True when `a` and `b` are the same inode (neither followed if a symlink).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `--max-delete` bookkeeping of one run.
#[derive(Debug, Clone, Default)]
pub struct DeleteLimit {
    /// Deletions still allowed (`None`: no limit).
    pub left: Option<u64>,
    /// Deletions refused because of the limit.
    pub skipped: u64,
}

impl DeleteLimit {
    /// A limit of `max` deletions (`None`: unlimited).
    pub fn new(max: Option<u64>) -> Self {
        DeleteLimit {
            left: max,
            skipped: 0,
        }
    }

    /// Whether deleting `name` (and everything below it) stays within the
    /// limit; takes its entries from the budget when it does.
    pub fn allow(&mut self, dest: &crate::fsys::DestRoot, name: &[u8]) -> Result<bool> {
        let Some(left) = self.left else {
            return Ok(true);
        };
        let n = count_tree(dest, name)?;
        if n <= left {
            self.left = Some(left - n);
            Ok(true)
        } else {
            self.skipped += 1;
            Ok(false)
        }
    }
}

/// Entries in the tree at `name` (itself included).
fn count_tree(dest: &crate::fsys::DestRoot, name: &[u8]) -> Result<u64> {
    let mut n = 1;
    if let Some(children) = dest.list_dir(name)? {
        for c in children {
            let mut p = name.to_vec();
            p.push(b'/');
            p.extend_from_slice(&c);
            n += count_tree(dest, &p)?;
        }
    }
    Ok(n)
}

/// `--remove-source-files` on the sending side: removes the listed
/// entries the receiver confirmed (`done`, file-list indices), skipping a
/// regular file that changed since it was listed. Returns error texts.
pub fn remove_sent(list: &crate::walk::LocalList, done: &[i32]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut errors = Vec::new();
    for &n in done {
        let Some(e) = usize::try_from(n).ok().and_then(|i| list.entries.get(i)) else {
            errors.push(format!("MSG_SUCCESS for unknown index {n}"));
            continue;
        };
        if e.is_dir() {
            continue;
        }
        let path = list.path(n as usize);
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) => {
                errors.push(format!("re-lstat {}: {err}", path.display()));
                continue;
            }
        };
        if e.file_type() == Some(FileType::Regular)
            && (m.len() != e.size.max(0) as u64 || m.mtime() != e.mtime)
        {
            errors.push(format!(
                "ERROR: Skipping sender remove for changed file: {}",
                path.display()
            ));
            continue;
        }
        if let Err(err) = std::fs::remove_file(&path) {
            errors.push(format!("sender failed to remove {}: {err}", path.display()));
        }
    }
    errors
}

/// True for a wire-form filter rule that applies to the sender only
/// (an `s` modifier without `r`, e.g. `-s *.o`): a sending client keeps
/// it to itself.
pub fn sender_only_rule(rule: impl AsRef<[u8]>) -> bool {
    let rule = rule.as_ref();
    let head = rule
        .split(|&c| c == b' ' || c == b',')
        .next()
        .unwrap_or_default();
    let mods = match head.first() {
        Some(b'-' | b'+' | b'P' | b'H' | b'R' | b'S') => &head[1..],
        _ => return false,
    };
    mods.contains(&b's') && !mods.contains(&b'r')
}

/// rsync's warning when `--max-delete` stopped deletions.
pub fn max_delete_warning(skipped: u64) -> String {
    format!("Deletions stopped due to --max-delete limit ({skipped} skipped)")
}

/// True when symlink `target`, found at `name` (a path relative to the
/// transfer root), points outside the transfer, as rsync judges it: an
/// absolute or empty target, a `..` after the leading ones, a trailing
/// `/..`, or more `..` steps than the link is deep.
pub fn unsafe_symlink(target: &[u8], name: &[u8]) -> bool {
    if target.is_empty() || target[0] == b'/' {
        return true;
    }
    let mut rest = target;
    while let Some(r) = rest.strip_prefix(b"../") {
        rest = r;
        while let Some(r) = rest.strip_prefix(b"/") {
            rest = r;
        }
    }
    if rest.windows(4).any(|w| w == b"/../") || (target.len() > 3 && target.ends_with(b"/..")) {
        return true;
    }
    // The link's depth: its directory components (`..` starts over).
    let mut depth: i64 = 0;
    let comps: Vec<&[u8]> = name.split(|&b| b == b'/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        match *c {
            b"" | b"." => {}
            b".." => depth = 0,
            _ => depth += 1,
        }
    }
    if comps.last() == Some(&&b".."[..]) {
        depth = 0;
    }
    let tcomps: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
    for c in &tcomps[..tcomps.len() - 1] {
        match *c {
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
    if tcomps.last() == Some(&&b".."[..]) {
        depth -= 1;
    }
    depth < 0
}

/// Why an entry is skipped by the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `--existing`: it does not exist locally (a directory's contents
    /// are skipped with it).
    NotCreating,
    /// `--ignore-existing`: it exists locally.
    Exists,
    /// `--min-size`/`--max-size`.
    Size,
    /// `-u`: the local file is newer.
    Newer,
    /// `--safe-links`: a symlink leaving the transfer.
    UnsafeLink,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: i64, mtime: i64) -> FileEntry {
        FileEntry {
            name: name.as_bytes().to_vec(),
            mode: 0o100644,
            size,
            mtime,
            ..FileEntry::default()
        }
    }

    fn local(size: u64, mtime: i64) -> EntryInfo {
        EntryInfo {
            file_type: rustix::fs::FileType::RegularFile,
            size,
            mtime,
            mtime_nsec: 0,
            perms: 0o644,
        }
    }

    #[test]
    fn server_args_round_trip() {
        let o = TransferOpts {
            bwlimit: Some(100 << 10),
            existing: true,
            ignore_existing: true,
            size_only: true,
            min_size: Some(10),
            max_size: Some(2048),
            ..TransferOpts::default()
        };
        let args = o.server_args(false);
        // A sending server gets only the rate limit.
        assert_eq!(o.server_args(true), vec![OsString::from("--bwlimit=100")]);
        let mut back = TransferOpts::default();
        for a in &args {
            assert!(back.parse_server_arg_os(a, &mut || None).unwrap(), "{a:?}");
        }
        assert_eq!(back, o);
        let mut k = TransferOpts::default();
        assert!(k.parse_server_arg("--max-size=1k", &mut || None).unwrap());
        assert_eq!(k.max_size, Some(1024));
        assert!(k.parse_server_arg("--max-size=zz", &mut || None).is_err());
        assert!(!k.parse_server_arg("--whatever", &mut || None).unwrap());
        let f = TransferOpts::default().with_flags("logDtpruIxx");
        assert!(f.update && f.ignore_times && f.one_file_system == 2);
        assert_eq!(f.packed_flags(true), "uIxx");
        let f = TransferOpts {
            copy_links: true,
            copy_dirlinks: true,
            prune_empty_dirs: true,
            ..TransferOpts::default()
        };
        assert_eq!(f.packed_flags(true), "Lk");
        assert_eq!(f.packed_flags(false), "m");
    }

    #[test]
    fn per_file_options_as_rsync_sends_them() {
        let o = TransferOpts {
            modify_window: Some(-1),
            block_size: Some(2048),
            checksum_choice: Some("md5,xxh3".into()),
            fsync: true,
            preallocate: true,
            open_noatime: true,
            ..TransferOpts::default()
        };
        // To a receiving server: everything.
        assert_eq!(
            o.server_args(false),
            [
                "-B2048",
                "--checksum-choice=md5,xxh3",
                "-@-1",
                "--fsync",
                "--preallocate",
                "--open-noatime"
            ]
        );
        // To a sending one: what its sender and the negotiation need.
        assert_eq!(
            o.server_args(true),
            ["-B2048", "--checksum-choice=md5,xxh3", "--open-noatime"]
        );
        let w = TransferOpts {
            modify_window: Some(2),
            ..TransferOpts::default()
        };
        assert_eq!(w.server_args(false), ["--modify-window=2"]);
        let mut back = TransferOpts::default();
        for a in [
            "--modify-window=2",
            "--fsync",
            "--preallocate",
            "--open-noatime",
        ] {
            assert!(back.parse_server_arg(a, &mut || None).unwrap(), "{a}");
        }
        assert!(back
            .parse_server_arg("--cc", &mut || Some("xxh64".into()))
            .unwrap());
        assert!(back
            .parse_server_arg("--block-size=1k", &mut || None)
            .unwrap());
        assert_eq!(
            back,
            TransferOpts {
                block_size: Some(1024),
                checksum_choice: Some("xxh64".into()),
                fsync: true,
                preallocate: true,
                open_noatime: true,
                ..w.clone()
            }
        );
        assert!(back
            .parse_server_arg("--no-open-noatime", &mut || None)
            .unwrap());
        assert!(!back.open_noatime);
        assert!(back
            .parse_server_arg("--modify-window=x", &mut || None)
            .is_err());
    }

    #[test]
    fn checksum_seed_and_verbosity_go_to_the_server() {
        let mut o = TransferOpts {
            checksum_seed: Some(-42),
            ..TransferOpts::default()
        };
        for server_sends in [true, false] {
            let args = o.server_args(server_sends);
            assert!(args.iter().any(|a| a == "--checksum-seed=-42"), "{args:?}");
        }
        let mut back = TransferOpts::default();
        assert!(back
            .parse_server_arg("--checksum-seed=-42", &mut || None)
            .unwrap());
        assert_eq!(back.checksum_seed, Some(-42));
        // 0: the server picks (nothing sent).
        assert!(back
            .parse_server_arg("--checksum-seed=0", &mut || None)
            .unwrap());
        assert_eq!(back.checksum_seed, None);
        assert!(back
            .parse_server_arg("--checksum-seed=x", &mut || None)
            .is_err());
        // -v sends --log-format=%i; -vv the packed v's instead (unless itemizing).
        o.report_deletions = true;
        o.verbose = 1;
        assert!(o.server_args(false).iter().any(|a| a == "--log-format=%i"));
        o.verbose = 2;
        assert!(!o.server_args(false).iter().any(|a| a == "--log-format=%i"));
        o.itemizing = true;
        assert!(o.server_args(false).iter().any(|a| a == "--log-format=%i"));
        assert_eq!(TransferOpts::default().with_flags("vvlogDtpr").verbose, 2);
    }

    #[test]
    fn block_size_and_checksum_choice_values() {
        use arsync_proto::checksum::ChecksumAlgo as A;
        assert_eq!(parse_block_size("0").unwrap(), None);
        assert_eq!(parse_block_size("700").unwrap(), Some(700));
        assert_eq!(parse_block_size("1.5k").unwrap(), Some(1536));
        assert_eq!(parse_block_size("131072").unwrap(), Some(131_072));
        for (bad, msg) in [
            ("131073", "--block-size=131073 is too large (max: 128.00K)"),
            ("-5", "--block-size=-5 is too large (max: 128.00K)"),
            ("abc", "--block-size=abc is invalid"),
        ] {
            let e = parse_block_size(bad).unwrap_err();
            assert_eq!(e.to_string(), msg);
            assert_eq!(e.exit_code(), arsync_proto::stats::ExitCode::Syntax);
        }
        assert_eq!(parse_checksum_choice("auto").unwrap(), None);
        assert_eq!(parse_checksum_choice("AUTO,auto").unwrap(), None);
        assert_eq!(
            parse_checksum_choice("MD5").unwrap(),
            Some((A::Md5, A::Md5))
        );
        assert_eq!(
            parse_checksum_choice("xxhash,none").unwrap(),
            Some((A::Xxh64, A::None))
        );
        assert_eq!(
            parse_checksum_choice("auto,xxh128").unwrap(),
            Some((A::Md5, A::Xxh128))
        );
        // rsync names the value from the unknown name on.
        for (bad, shown) in [
            ("bogus", "bogus"),
            ("md5,bogus", "bogus"),
            ("bogus,md5", "bogus,md5"),
        ] {
            let e = parse_checksum_choice(bad).unwrap_err();
            assert_eq!(e.exit_code(), arsync_proto::stats::ExitCode::Unsupported);
            assert!(
                e.to_string()
                    .contains(&format!("unknown checksum name: {shown}")),
                "{e}"
            );
        }
    }

    #[test]
    fn modify_window_in_the_quick_check() {
        let e = file("f", 10, 1000);
        let mut o = TransferOpts::default();
        assert!(!o.unchanged(&e, &local(10, 1002), || Ok(false)).unwrap());
        o.modify_window = Some(2);
        assert!(o.unchanged(&e, &local(10, 1002), || Ok(false)).unwrap());
        assert!(o.unchanged(&e, &local(10, 998), || Ok(false)).unwrap());
        assert!(!o.unchanged(&e, &local(10, 1003), || Ok(false)).unwrap());
        o.modify_window = Some(-1);
        assert!(o.unchanged(&e, &local(10, 1000), || Ok(false)).unwrap());
        assert!(!o.unchanged(&e, &local(10, 1001), || Ok(false)).unwrap());
        // Nanoseconds count only with a negative window.
        let ns = EntryInfo {
            mtime_nsec: 5,
            ..local(10, 1000)
        };
        assert!(!o.unchanged(&e, &ns, || Ok(false)).unwrap());
        o.modify_window = None;
        assert!(o.unchanged(&e, &ns, || Ok(false)).unwrap());
        // -u within the window: the receiver's file counts as newer.
        let u = TransferOpts {
            update: true,
            modify_window: Some(5),
            ..TransferOpts::default()
        };
        assert!(u.skip(&e, Some(&local(10, 997))).is_some());
        assert!(u.skip(&e, Some(&local(10, 990))).is_none());
    }

    #[test]
    fn transfer_mode_options_round_trip() {
        let o = TransferOpts {
            inplace: true,
            append: 2,
            partial_dir: Some(".part".into()),
            temp_dir: Some("/tmp/t".into()),
            executability: true,
            keep_dirlinks: true,
            ..TransferOpts::default()
        };
        // To a receiving server: everything; to a sending one: --append only.
        let args = o.server_args(false);
        assert_eq!(
            args,
            [
                "--partial-dir",
                ".part",
                "--temp-dir",
                "/tmp/t",
                "--append",
                "--append"
            ]
        );
        assert_eq!(o.server_args(true), ["--append", "--append"]);
        assert_eq!(o.packed_flags(false), "KE");
        assert_eq!(o.packed_flags(true), "");
        let mut back = TransferOpts::default().with_flags("rtKE");
        let mut words = args.iter().cloned();
        while let Some(a) = words.next() {
            assert!(back.parse_server_arg_os(&a, &mut || words.next()).unwrap());
        }
        assert_eq!(back, o);
        // -E means nothing with -p; rsync's delay-updates directory is not ours.
        assert!(!TransferOpts::default().with_flags("rpE").executability);
        let mut d = TransferOpts::default();
        assert!(!d
            .parse_server_arg("--partial-dir=.~tmp~", &mut || None)
            .unwrap());
        assert!(d.parse_server_arg("--temp-dir=", &mut || None).is_err());
        let head = arsync_proto::sums::SumHead {
            count: 3,
            blength: 700,
            s2length: 2,
            remainder: 100,
        };
        assert_eq!(append_offset(&head), 1500);
        let mut c = TransferOpts {
            temp_dir: Some("/tmp/x".into()),
            backup_dir: Some("/".into()),
            partial_dir: Some("/abs/part".into()),
            ..TransferOpts::default()
        };
        c.confine().unwrap();
        assert_eq!(c.temp_dir.as_deref(), Some("tmp/x"));
        // A daemon keeps an absolute --partial-dir inside the module.
        assert_eq!(c.partial_dir.as_deref(), Some("abs/part"));
        assert_eq!(c.backup_dir.as_deref(), Some(OsStr::new(".")));
        assert!(c.confined);
        let mut bad = TransferOpts {
            partial_dir: Some("a/../../etc".into()),
            ..TransferOpts::default()
        };
        assert!(bad.confine().is_err());
    }

    #[test]
    fn byte_values_round_trip() {
        let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let o = TransferOpts {
            backup: true,
            backup_dir: Some(os(b"old\xe9/\xff")),
            suffix: Some(os(b".b\xe9k")),
            files_from: Some(os(b"/lists/l\xfe")),
            from0: true,
            ..TransferOpts::default()
        };
        for server_sends in [false, true] {
            let args = o.server_args(server_sends);
            assert!(args.contains(&os(b"old\xe9/\xff")), "{args:?}");
            assert!(args.contains(&os(b"--suffix=.b\xe9k")), "{args:?}");
            assert!(args.contains(&os(b"/lists/l\xfe")), "{args:?}");
            let mut back = TransferOpts {
                backup: true,
                ..TransferOpts::default()
            };
            let mut words = args.iter().cloned();
            while let Some(a) = words.next() {
                assert!(back.parse_server_arg_os(&a, &mut || words.next()).unwrap());
            }
            assert_eq!(back, o);
        }
        assert_eq!(o.backup_suffix().as_bytes(), b".b\xe9k");
        let mut bad = TransferOpts::default();
        assert!(bad
            .parse_server_arg_os(&os(b"--suffix=a/\xe9"), &mut || None)
            .is_err());
        assert!(bad
            .parse_server_arg_os(OsStr::new("--backup-dir"), &mut || None)
            .is_err());
        let mut names = Vec::new();
        encode_files_from(&[b"a\xff".to_vec(), b"b".to_vec()], &mut names);
        assert_eq!(names, b"a\xff\0b\0\0");
    }

    #[test]
    fn files_from_names_become_sources() {
        let names = vec![b"a.txt".to_vec(), b"./d/e/".to_vec()];
        let rel = files_from_sources(std::path::Path::new("/src/"), &names, true);
        assert_eq!(rel[0].path, std::path::Path::new("/src/./a.txt"));
        assert_eq!(rel[1].path, std::path::Path::new("/src/./d/e"));
        assert!(!rel[0].contents);
        let flat = files_from_sources(std::path::Path::new("src"), &names, false);
        assert_eq!(flat[1].path, std::path::Path::new("src/d/e"));
    }

    #[test]
    fn wire_names_end_with_an_empty_one() {
        let wire: &[u8] = b"a\0dir/b\0\0rest";
        let mut ins = crate::conn::InStream::new(wire);
        let names = read_files_from_wire(&mut ins).unwrap();
        assert_eq!(names, [b"a".to_vec(), b"dir/b".to_vec()]);
        let mut cut = crate::conn::InStream::new(&b"a\0b"[..]);
        assert!(read_files_from_wire(&mut cut).is_err());
    }

    #[test]
    fn sender_only_rules() {
        assert!(sender_only_rule("-s *.o") && sender_only_rule("+s keep/"));
        assert!(!sender_only_rule("- *.o") && !sender_only_rule("-sr x"));
        assert!(!sender_only_rule("P x") && !sender_only_rule("merge .rules"));
    }

    #[test]
    fn unsafe_symlinks() {
        for (t, n, bad) in [
            ("/etc/passwd", "a", true),
            ("", "a", true),
            ("x", "a", false),
            ("../x", "a", true),
            ("../x", "d/a", false),
            ("../../x", "d/a", true),
            ("d/../../x", "a", true),
            ("./x/..", "a", true),
            ("..", "d/a", false),
            ("..", "a", true),
            ("x/y", "a", false),
        ] {
            assert_eq!(
                unsafe_symlink(t.as_bytes(), n.as_bytes()),
                bad,
                "{t} at {n}"
            );
        }
    }

    #[test]
    fn skip_rules() {
        assert!(!TransferOpts::default().selects());
        let o = TransferOpts {
            update: true,
            ..TransferOpts::default()
        };
        assert!(o.selects());
        assert_eq!(
            o.skip(&file("a", 5, 100), Some(&local(5, 200))),
            Some(Skip::Newer)
        );
        assert_eq!(o.skip(&file("a", 5, 200), Some(&local(5, 200))), None);
        let o = TransferOpts {
            existing: true,
            ..TransferOpts::default()
        };
        assert_eq!(o.skip(&file("a", 5, 1), None), Some(Skip::NotCreating));
        assert_eq!(o.skip(&file(".", 5, 1), None), None);
        let o = TransferOpts {
            ignore_existing: true,
            max_size: Some(4),
            ..TransferOpts::default()
        };
        assert_eq!(
            o.skip(&file("a", 1, 1), Some(&local(9, 9))),
            Some(Skip::Exists)
        );
        assert_eq!(o.skip(&file("a", 5, 1), None), Some(Skip::Size));
        assert_eq!(o.skip(&file("a", 4, 1), None), None);
        let o = TransferOpts {
            size_only: true,
            ..TransferOpts::default()
        };
        assert!(o
            .unchanged(&file("a", 5, 1), &local(5, 9), || Ok(false))
            .unwrap());
        let o = TransferOpts {
            ignore_times: true,
            ..TransferOpts::default()
        };
        assert!(!o
            .unchanged(&file("a", 5, 1), &local(5, 1), || Ok(true))
            .unwrap());
    }
}
