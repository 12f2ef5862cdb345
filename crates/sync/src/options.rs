//! The option model of a local sync: what rsync's command-line flags mean, as plain data.

use std::ffi::OsString;
use std::path::PathBuf;

/// When `--delete` removes extraneous destination entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteMode {
    /// No deletion.
    #[default]
    Off,
    /// `--delete-before`: before transferring (done per directory, before its files).
    Before,
    /// `--delete-during` (the default for `--delete`): per directory as it is visited.
    During,
    /// `--delete-delay`: found during the walk, removed at the end.
    Delay,
    /// `--delete-after`: a separate pass after all transfers.
    After,
}

/// One `--chmod` clause, e.g. `Dg+s` or `F644` or `u=rwX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodRule {
    /// Applies to directories.
    pub dirs: bool,
    /// Applies to non-directories.
    pub files: bool,
    /// The symbolic or octal mode text.
    pub spec: String,
}

/// What the left side of a `--usermap`/`--groupmap` pair matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMatch {
    /// A numeric id.
    Id(u32),
    /// An inclusive id range `low-high`.
    Range(u32, u32),
    /// A name pattern (`*`, `?`, `[...]` allowed), matched against the id's name.
    Name(String),
}

/// One `FROM:TO` pair of `--usermap`/`--groupmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapRule {
    /// What it matches.
    pub from: IdMatch,
    /// The id it maps to.
    pub to: u32,
}

/// How to write the `--out-format`/`-i` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutFormat {
    /// The format text with `%` escapes; empty for none.
    pub format: String,
}

/// Everything that decides how a local sync behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-r`
    pub recursive: bool,
    /// `-d`
    pub dirs: bool,
    /// `-l`
    pub links: bool,
    /// `-L`
    pub copy_links: bool,
    /// `--copy-unsafe-links`
    pub copy_unsafe_links: bool,
    /// `--safe-links`
    pub safe_links: bool,
    /// `-k`
    pub copy_dirlinks: bool,
    /// `-K`
    pub keep_dirlinks: bool,
    /// `-p`
    pub perms: bool,
    /// `-E`
    pub executability: bool,
    /// `--chmod`
    pub chmod: Vec<ChmodRule>,
    /// `-t`
    pub times: bool,
    /// `-U`
    pub atimes: bool,
    /// `-O`
    pub omit_dir_times: bool,
    /// `-J`
    pub omit_link_times: bool,
    /// `-g`
    pub group: bool,
    /// `-o`
    pub owner: bool,
    /// `--chown` user part resolved to an id.
    pub chown_uid: Option<u32>,
    /// `--chown` group part resolved to an id.
    pub chown_gid: Option<u32>,
    /// `--usermap`
    pub usermap: Vec<IdMapRule>,
    /// `--groupmap`
    pub groupmap: Vec<IdMapRule>,
    /// `--numeric-ids` (locally ids are kept as they are either way).
    pub numeric_ids: bool,
    /// `--devices`
    pub devices: bool,
    /// `--specials`
    pub specials: bool,
    /// `-H`
    pub hard_links: bool,
    /// `-A`
    pub acls: bool,
    /// `-X`
    pub xattrs: bool,
    /// `-S`
    pub sparse: bool,
    /// `--preallocate`
    pub preallocate: bool,
    /// `-x` (count: 2 also skips mount-point directories themselves)
    pub one_file_system: u8,
    /// `-n`
    pub dry_run: bool,
    /// `-v` count
    pub verbose: u8,
    /// `-q`
    pub quiet: bool,
    /// `-h` count
    pub human_readable: u8,
    /// `-c`
    pub checksum: bool,
    /// `-u`
    pub update: bool,
    /// `--existing`
    pub existing: bool,
    /// `--ignore-existing`
    pub ignore_existing: bool,
    /// `--size-only`
    pub size_only: bool,
    /// `-I`
    pub ignore_times: bool,
    /// `--modify-window` in seconds (negative: compare nanoseconds exactly).
    pub modify_window: i64,
    /// `--inplace`
    pub inplace: bool,
    /// `--partial`
    pub partial: bool,
    /// `--partial-dir`
    pub partial_dir: Option<PathBuf>,
    /// `--temp-dir`
    pub temp_dir: Option<PathBuf>,
    /// `--delay-updates`
    pub delay_updates: bool,
    /// Deletion timing.
    pub delete: DeleteMode,
    /// `--delete-excluded`
    pub delete_excluded: bool,
    /// `--max-delete`
    pub max_delete: Option<u64>,
    /// `--remove-source-files`
    pub remove_source_files: bool,
    /// `-b`
    pub backup: bool,
    /// `--backup-dir`
    pub backup_dir: Option<PathBuf>,
    /// `--suffix` (default `~`, or empty with `--backup-dir`).
    pub suffix: Option<OsString>,
    /// `--link-dest`
    pub link_dest: Vec<PathBuf>,
    /// `--compare-dest`
    pub compare_dest: Vec<PathBuf>,
    /// `--copy-dest`
    pub copy_dest: Vec<PathBuf>,
    /// `--min-size`
    pub min_size: Option<u64>,
    /// `--max-size`
    pub max_size: Option<u64>,
    /// `--files-from`
    pub files_from: Option<PathBuf>,
    /// `--from0`
    pub from0: bool,
    /// `-R`
    pub relative: bool,
    /// `--no-R` with `--files-from`: the listed paths are copied by their last component.
    pub no_relative: bool,
    /// `--no-implied-dirs`
    pub no_implied_dirs: bool,
    /// `--mkpath`
    pub mkpath: bool,
    /// `--stats`
    pub stats: bool,
    /// `--progress`
    pub progress: bool,
    /// `--info=progress2`
    pub progress2: bool,
    /// `-i` count
    pub itemize: u8,
    /// `--out-format`
    pub out_format: Option<String>,
    /// `--log-file`
    pub log_file: Option<PathBuf>,
    /// `--log-file-format`
    pub log_file_format: Option<String>,
    /// `--list-only`
    pub list_only: bool,
    /// `--fsync`
    pub fsync: bool,
    /// `-m`
    pub prune_empty_dirs: bool,
    /// `--open-noatime`
    pub open_noatime: bool,
    /// `--super` / `--no-super` (default: whether we run as root).
    pub super_user: Option<bool>,
    /// `--stop-after` / `--stop-at`: when to stop (exit code 30).
    pub stop_at: Option<std::time::SystemTime>,
    /// `--ignore-missing-args`
    pub ignore_missing_args: bool,
    /// `--delete-missing-args`
    pub delete_missing_args: bool,
    /// `-8`
    pub eight_bit: bool,
    /// `--append` (also set by `--append-verify`)
    pub append: bool,
    /// `--append-verify`
    pub append_verify: bool,
    /// `--bwlimit` in bytes per second.
    pub bwlimit: Option<u64>,
    /// `-W` (locally the default; kept for reporting).
    pub whole_file: bool,
    /// `--ignore-errors`
    pub ignore_errors: bool,
    /// `--force`
    pub force: bool,
    /// `--threads`
    pub threads: usize,
    /// `--queue-depth`
    pub queue_depth: usize,
    /// `--watch`: keep the destination in sync after the first run (see [`crate::watch`]).
    pub watch: bool,
    /// `--watch-delay` in milliseconds.
    pub watch_delay_ms: u64,
    /// `--watch-interval` in seconds: periodic full re-syncs.
    pub watch_interval: Option<u64>,
}

/// Maps an id through `--usermap`/`--groupmap` rules (first match wins).
pub fn map_id(rules: &[IdMapRule], id: u32, name_of: impl Fn(u32) -> Option<String>) -> u32 {
    for r in rules {
        let hit = match &r.from {
            IdMatch::Id(x) => *x == id,
            IdMatch::Range(lo, hi) => (*lo..=*hi).contains(&id),
            IdMatch::Name(p) if p == "*" => true,
            IdMatch::Name(p) => name_of(id)
                .is_some_and(|n| arsync_filter::wildmatch::wildmatch(p.as_bytes(), n.as_bytes())),
        };
        if hit {
            return r.to;
        }
    }
    id
}

impl Options {
    /// The backup suffix in effect.
    pub fn backup_suffix(&self) -> OsString {
        match &self.suffix {
            Some(s) => s.clone(),
            None if self.backup_dir.is_some() => OsString::new(),
            None => OsString::from("~"),
        }
    }

    /// True when any deletion mode is on.
    pub fn deleting(&self) -> bool {
        self.delete != DeleteMode::Off
    }

    /// The format used for per-file output lines, if any.
    pub fn line_format(&self) -> Option<String> {
        if let Some(f) = &self.out_format {
            return Some(f.clone());
        }
        if self.itemize > 0 {
            return Some("%i %n%L".to_string());
        }
        if self.verbose > 0 || self.progress {
            return Some("%n%L".to_string());
        }
        None
    }
}
