//! [`FilterRules`]: building the rule list and matching paths against it.

use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::FilterError;
use crate::parse::{flag, is_space, next_token, Syntax};
use crate::perdir::{MergeDef, PerDirState};
use crate::rule::{Rule, Subject};

/// rsync's built-in CVS ignore list (the `-C` defaults; see `man rsync`, `--cvs-exclude`).
pub const DEFAULT_CVSIGNORE: &str = "RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state \
.nse_depinfo *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o *.obj *.so \
*.exe *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/";

/// How deeply merge files may merge other files.
pub(crate) const MAX_MERGE_DEPTH: usize = 32;

/// Longest pattern rsync accepts (longer ones are discarded, as rsync does).
const MAX_PATTERN_LEN: usize = 4096;

/// The outcome of matching a path against the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The first matching rule is an include (or show / risk).
    Include,
    /// The first matching rule is an exclude (or hide / protect).
    Exclude,
    /// No rule matched: rsync's default is to include.
    NoMatch,
}

impl Decision {
    /// True for [`Decision::Exclude`].
    pub fn is_excluded(self) -> bool {
        self == Decision::Exclude
    }
}

/// Which side of a transfer is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The sender building its file list: exclude/include and hide/show rules apply.
    Sender,
    /// The receiver deciding deletions: exclude/include and protect/risk rules apply.
    Receiver,
}

/// The kind of file given to [`FilterRules::add_from_file`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FromFile {
    /// `--exclude-from`: one pattern per line, excluded unless prefixed by `+ `.
    Exclude,
    /// `--include-from`: one pattern per line, included unless prefixed by `- `.
    Include,
    /// A file of full filter rules, as for `--filter='merge FILE'`.
    Filter,
}

/// A filter parameter of an rsync daemon module, for [`FilterRules::add_daemon_param`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaemonParam {
    /// `filter = RULES` (whitespace-separated filter rules).
    Filter,
    /// `include = PATTERNS`.
    Include,
    /// `exclude = PATTERNS`.
    Exclude,
    /// `include from = FILE`.
    IncludeFrom,
    /// `exclude from = FILE`.
    ExcludeFrom,
}

/// Where the `-C` global list looks for extra patterns.
#[derive(Clone, Debug, Default)]
pub struct CvsIgnoreSources {
    /// A `.cvsignore` file to read (rsync uses `$HOME/.cvsignore`); missing files are skipped.
    pub home_file: Option<PathBuf>,
    /// Whitespace-separated patterns (rsync uses `$CVSIGNORE`).
    pub env: Option<Vec<u8>>,
}

impl CvsIgnoreSources {
    /// The sources rsync uses: `$HOME/.cvsignore` and `$CVSIGNORE`.
    pub fn from_env() -> Self {
        CvsIgnoreSources {
            home_file: std::env::var_os("HOME").map(|h| Path::new(&h).join(".cvsignore")),
            env: std::env::var_os("CVSIGNORE").map(OsStringExt::into_vec),
        }
    }
}

/// An ordered list of rsync filter rules, with per-directory merge state.
///
/// Rules are added in command-line order; the first rule that matches a path decides.
/// Per-directory merge files (`dir-merge`, `-F`, `-C`) are read as a walk enters
/// directories: see [`FilterRules::enter_dir`].
///
/// Cloning is cheap: the global rule list and every per-directory rule list are shared
/// (`Arc`), so a parallel walker can take a [`FilterRules::fork`] at any directory and walk
/// below it independently.
#[derive(Clone, Debug, Default)]
pub struct FilterRules {
    pub(crate) rules: Arc<Vec<Rule>>,
    /// Rules the `-C` option appends after all others (`:C` then `-C`).
    pub(crate) tail: Arc<Vec<Rule>>,
    pub(crate) cvs_list: Option<Arc<Vec<Rule>>>,
    pub(crate) cvs_sources: Option<CvsIgnoreSources>,
    pub(crate) delete_excluded: bool,
    pub(crate) from0: bool,
    pub(crate) perdir: PerDirState,
}

/// Where parsed rules go and what the parse may touch.
pub(crate) struct Target<'a> {
    pub list: &'a mut Vec<Rule>,
    /// Set when a `!` cleared the list (per-directory lists then drop inherited rules).
    pub cleared: bool,
    /// For per-directory files: the absolute directory anchored rules are relative to.
    pub anchor_dir: Option<&'a [u8]>,
    /// Directory relative merge-file names are resolved against (none: the process cwd).
    pub base_dir: Option<&'a Path>,
    /// Rules come from an rsync daemon's module configuration.
    pub daemon: bool,
}

impl<'a> Target<'a> {
    /// A target for global (command-line style) rules.
    pub fn new(list: &'a mut Vec<Rule>) -> Self {
        Target {
            list,
            cleared: false,
            anchor_dir: None,
            base_dir: None,
            daemon: false,
        }
    }
}

/// Longest rule line kept; longer ones are discarded, as rsync does.
const MAX_LINE_LEN: usize = 8192;

/// Reads rule lines (or words) from `reader` the way rsync reads rule files, calling `f`
/// with `(line_number, text)` for each non-empty, non-comment unit. Line numbers are 0 when
/// word-splitting. Memory stays bounded by [`MAX_LINE_LEN`] whatever the file size.
pub(crate) fn for_each_rule_unit<R: Read>(
    mut reader: R,
    word_split: bool,
    from0: bool,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), FilterError>,
) -> Result<Result<(), FilterError>, std::io::Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cur: Vec<u8> = Vec::new();
    let mut overflow = false;
    let mut line_no = 0usize;
    let mut skip_lf = false;
    let mut emit = |cur: &mut Vec<u8>, overflow: &mut bool| -> Result<(), FilterError> {
        if !word_split {
            line_no += 1;
        }
        let skip =
            cur.is_empty() || *overflow || (!word_split && (cur[0] == b';' || cur[0] == b'#'));
        let result = if skip { Ok(()) } else { f(line_no, cur) };
        cur.clear();
        *overflow = false;
        result
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &c in &buf[..n] {
            if skip_lf {
                skip_lf = false;
                if c == b'\n' {
                    continue;
                }
            }
            let end = if word_split && is_space(c) {
                true
            } else if from0 {
                c == 0
            } else if c == b'\r' {
                skip_lf = true;
                true
            } else {
                c == b'\n'
            };
            if end {
                if let Err(e) = emit(&mut cur, &mut overflow) {
                    return Ok(Err(e));
                }
            } else if cur.len() < MAX_LINE_LEN {
                cur.push(c);
            } else {
                overflow = true;
            }
        }
    }
    if !cur.is_empty() || overflow {
        if let Err(e) = emit(&mut cur, &mut overflow) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

impl FilterRules {
    /// An empty rule list: every path is included.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no rule at all has been added.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.tail.is_empty()
    }

    /// Adds one `--filter` rule, e.g. `"- *.o"`, `"+/ /etc/passwd"`, `"dir-merge,n- .excl"`,
    /// `"merge /etc/rules"` (read now), `"!"` (clear), `"-C"`.
    pub fn add_rule(&mut self, rule: &str) -> Result<(), FilterError> {
        self.add_rule_bytes(rule.as_bytes())
    }

    /// [`FilterRules::add_rule`] for rules that are not UTF-8.
    pub fn add_rule_bytes(&mut self, rule: &[u8]) -> Result<(), FilterError> {
        self.parse_global(rule, 0, Syntax::Filter)
    }

    /// Adds an `--exclude` pattern (a leading `+ ` or `- ` selects the kind; `!` clears).
    pub fn add_exclude(&mut self, pattern: &str) -> Result<(), FilterError> {
        self.add_exclude_bytes(pattern.as_bytes())
    }

    /// [`FilterRules::add_exclude`] for patterns that are not UTF-8.
    pub fn add_exclude_bytes(&mut self, pattern: &[u8]) -> Result<(), FilterError> {
        self.parse_global(pattern, 0, Syntax::OldPrefixes)
    }

    /// Adds an `--include` pattern (a leading `+ ` or `- ` selects the kind; `!` clears).
    pub fn add_include(&mut self, pattern: &str) -> Result<(), FilterError> {
        self.add_include_bytes(pattern.as_bytes())
    }

    /// [`FilterRules::add_include`] for patterns that are not UTF-8.
    pub fn add_include_bytes(&mut self, pattern: &[u8]) -> Result<(), FilterError> {
        self.parse_global(pattern, flag::INCLUDE, Syntax::OldPrefixes)
    }

    /// Adds a rule received from a peer's filter list; before protocol 29 rsync sent only
    /// old-style `- `/`+ ` prefixes.
    pub fn add_wire_rule(&mut self, rule: &[u8], protocol: u32) -> Result<(), FilterError> {
        let syntax = if protocol >= 29 {
            Syntax::Filter
        } else {
            Syntax::OldPrefixes
        };
        self.parse_global(rule, 0, syntax)
    }

    /// Reads `--exclude-from`, `--include-from` or a filter file (`-` is standard input).
    /// Empty lines and lines starting with `;` or `#` are skipped. A missing file is an error.
    pub fn add_from_file(&mut self, path: &Path, kind: FromFile) -> Result<(), FilterError> {
        let (template, syntax, what) = match kind {
            FromFile::Exclude => (0, Syntax::OldPrefixes, "exclude"),
            FromFile::Include => (flag::INCLUDE, Syntax::OldPrefixes, "include"),
            FromFile::Filter => (0, Syntax::Filter, "filter"),
        };
        self.add_global(false, |this, target| {
            this.parse_file(target, path, template, syntax, true, what, 0)
        })
    }

    /// Adds one parameter of an rsync daemon module (`rsyncd.conf`): `filter`, `include`,
    /// `exclude` (whitespace-separated lists) or `include from` / `exclude from` (files).
    ///
    /// Such a list is matched against paths relative to the module root: give this list its
    /// own [`FilterRules`], call [`FilterRules::set_transfer_root`] with `/`, and check
    /// module-relative paths. Patterns holding a `/` match the whole module-relative path
    /// and an excluded `dir/` also hides everything inside it, as in rsync.
    pub fn add_daemon_param(
        &mut self,
        param: DaemonParam,
        value: &[u8],
    ) -> Result<(), FilterError> {
        let (template, syntax) = match param {
            DaemonParam::Filter => (flag::WORD_SPLIT, Syntax::Filter),
            DaemonParam::Include => (flag::INCLUDE | flag::WORD_SPLIT, Syntax::OldPrefixes),
            DaemonParam::Exclude => (flag::WORD_SPLIT, Syntax::OldPrefixes),
            DaemonParam::IncludeFrom => (flag::INCLUDE, Syntax::OldPrefixes),
            DaemonParam::ExcludeFrom => (0, Syntax::OldPrefixes),
        };
        self.add_global(true, |this, target| match param {
            DaemonParam::IncludeFrom | DaemonParam::ExcludeFrom => {
                let path = Path::new(std::ffi::OsStr::from_bytes(value));
                this.parse_file(target, path, template, syntax, true, "daemon filter", 0)
            }
            _ => this.parse_str(target, value, template, syntax, 0),
        })
    }

    /// `-C`: appends `:C` (per-directory `.cvsignore`) and `-C` (rsync's default ignore list,
    /// `$HOME/.cvsignore` and `$CVSIGNORE`) after all other rules, however they are ordered.
    pub fn add_cvs_exclude(&mut self) -> Result<(), FilterError> {
        self.add_cvs_exclude_with(CvsIgnoreSources::from_env())
    }

    /// [`FilterRules::add_cvs_exclude`] with explicit sources instead of the environment.
    pub fn add_cvs_exclude_with(&mut self, sources: CvsIgnoreSources) -> Result<(), FilterError> {
        if self.cvs_sources.is_none() {
            self.cvs_sources = Some(sources);
        }
        if !self.tail.is_empty() {
            return Ok(());
        }
        let mut tail = Vec::new();
        let mut target = Target::new(&mut tail);
        self.parse_str(&mut target, b":C", 0, Syntax::Filter, 0)?;
        self.parse_str(&mut target, b"-C", 0, Syntax::Filter, 0)?;
        self.tail = Arc::new(tail);
        Ok(())
    }

    /// Where `-C` rules (the option or a `-C` filter rule) find `$HOME/.cvsignore` and
    /// `$CVSIGNORE`; call before adding them. Without it the process environment is used.
    pub fn set_cvs_sources(&mut self, sources: CvsIgnoreSources) {
        self.cvs_sources = Some(sources);
    }

    /// `-F` given `count` times: once adds `dir-merge /.rsync-filter`, twice also adds
    /// `- .rsync-filter`.
    pub fn add_f_option(&mut self, count: u8) -> Result<(), FilterError> {
        if count >= 1 {
            self.add_rule(": /.rsync-filter")?;
        }
        if count >= 2 {
            self.add_rule("- .rsync-filter")?;
        }
        Ok(())
    }

    /// `--delete-excluded`: rules that name no side become sender-only, so they no longer
    /// protect files on the receiver.
    pub fn set_delete_excluded(&mut self, on: bool) {
        self.delete_excluded = on;
    }

    /// `--from0`: rule files are NUL-separated instead of line-separated.
    pub fn set_from0(&mut self, on: bool) {
        self.from0 = on;
    }

    fn parse_global(
        &mut self,
        input: &[u8],
        template: u32,
        syntax: Syntax,
    ) -> Result<(), FilterError> {
        self.add_global(false, |this, target| {
            this.parse_str(target, input, template, syntax, 0)
        })
    }

    /// Runs a parse of global rules; the list changes only if the parse succeeds as a whole.
    fn add_global(
        &mut self,
        daemon: bool,
        parse: impl FnOnce(&mut Self, &mut Target<'_>) -> Result<(), FilterError>,
    ) -> Result<(), FilterError> {
        let defs_before = self.perdir.defs.len();
        let mut added = Vec::new();
        let mut target = Target::new(&mut added);
        target.daemon = daemon;
        let result = parse(self, &mut target);
        let cleared = target.cleared;
        match result {
            Ok(()) => {
                let list = Arc::make_mut(&mut self.rules);
                if cleared {
                    list.clear();
                }
                list.extend(added);
                Ok(())
            }
            Err(e) => {
                self.perdir.forget_defs_from(defs_before);
                Err(e)
            }
        }
    }

    /// Parses every rule in `input` into `target` (rsync's `parse_filter_str`).
    pub(crate) fn parse_str(
        &mut self,
        target: &mut Target<'_>,
        input: &[u8],
        template: u32,
        syntax: Syntax,
        depth: usize,
    ) -> Result<(), FilterError> {
        let mut rest = input;
        while let Some((tok, after)) = next_token(rest, template, syntax)? {
            rest = after;
            let mut flags = tok.flags;
            let mut pat = tok.pattern;
            if pat.len() >= MAX_PATTERN_LEN {
                continue;
            }
            if flags & flag::CLEAR_LIST != 0 {
                target.list.clear();
                target.cleared = true;
                continue;
            }
            if flags & flag::MERGE_FILE != 0 {
                if pat.is_empty() {
                    pat = b".cvsignore";
                }
                if flags & flag::EXCLUDE_SELF != 0 {
                    let base = basename(pat);
                    if !base.is_empty() {
                        target.list.push(Rule::new(base, 0, None));
                    }
                    flags &= !flag::EXCLUDE_SELF;
                }
                if flags & flag::PERDIR_MERGE == 0 {
                    let path = resolve_merge_path(pat, target.base_dir);
                    self.parse_file(
                        target,
                        &path,
                        flags,
                        Syntax::Filter,
                        true,
                        "merge",
                        depth + 1,
                    )?;
                    continue;
                }
                self.add_merge_rule(target, pat, flags);
                continue;
            }
            let rule = if target.daemon {
                Rule::new_daemon(pat, flags)
            } else {
                Rule::new(pat, flags, target.anchor_dir)
            };
            target.list.push(rule);
            if flags & flag::CVS_IGNORE != 0 {
                self.load_cvs_list(flags)?;
            }
        }
        Ok(())
    }

    /// Registers a `dir-merge` rule unless one for the same file name is already active.
    fn add_merge_rule(&mut self, target: &mut Target<'_>, name: &[u8], flags: u32) {
        let base = basename(name);
        if self.perdir.defs.iter().any(|d| &*d.basename == base) {
            return;
        }
        let id = self.perdir.defs.len();
        self.perdir.defs.push(Arc::new(MergeDef {
            flags,
            name: name.into(),
            basename: base.into(),
        }));
        self.perdir.heads.push(None);
        self.perdir.needs_setup.push(true);
        target.list.push(Rule {
            flags,
            pattern: name.into(),
            slash_cnt: 0,
            merge_id: id,
            shape: crate::rule::Shape::General,
        });
    }

    /// Builds the global CVS ignore list the first time a `-C` rule is seen.
    fn load_cvs_list(&mut self, rule_flags: u32) -> Result<(), FilterError> {
        if self.cvs_list.is_some() {
            return Ok(());
        }
        let sources = self
            .cvs_sources
            .clone()
            .unwrap_or_else(CvsIgnoreSources::from_env);
        let mut list = Vec::new();
        let mut target = Target::new(&mut list);
        self.parse_str(
            &mut target,
            DEFAULT_CVSIGNORE.as_bytes(),
            rule_flags | flag::PERISHABLE,
            Syntax::Filter,
            0,
        )?;
        if let Some(home) = &sources.home_file {
            self.parse_file(
                &mut target,
                home,
                rule_flags,
                Syntax::Filter,
                false,
                "cvsignore",
                0,
            )?;
        }
        if let Some(env) = &sources.env {
            self.parse_str(&mut target, env, rule_flags, Syntax::Filter, 0)?;
        }
        self.cvs_list = Some(Arc::new(list));
        Ok(())
    }

    /// Reads a rule file into `target` (rsync's `parse_filter_file`). With `fatal`, a file
    /// that cannot be opened is an error; otherwise it is silently skipped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn parse_file(
        &mut self,
        target: &mut Target<'_>,
        path: &Path,
        template: u32,
        syntax: Syntax,
        fatal: bool,
        what: &'static str,
        depth: usize,
    ) -> Result<(), FilterError> {
        if depth >= MAX_MERGE_DEPTH {
            return Err(FilterError::MergeDepth {
                path: path.to_path_buf(),
                limit: MAX_MERGE_DEPTH,
            });
        }
        let io_err = |source| FilterError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let word_split = template & flag::WORD_SPLIT != 0;
        let from0 = self.from0;
        let mut parse = |line_no: usize, line: &[u8]| {
            self.parse_str(target, line, template, syntax, depth)
                .map_err(|e| match e {
                    e @ (FilterError::InFile { .. }
                    | FilterError::MergeDepth { .. }
                    | FilterError::Io { .. }) => e,
                    other => FilterError::InFile {
                        path: path.to_path_buf(),
                        line: line_no,
                        source: Box::new(other),
                    },
                })
        };
        let outcome = if path.as_os_str().as_bytes() == b"-" {
            for_each_rule_unit(std::io::stdin().lock(), word_split, from0, &mut parse)
        } else {
            // A per-directory merge "file" that is a FIFO, device or directory is ignored
            // (opening or reading a FIFO would block the walk); named files may be pipes.
            let mut options = std::fs::OpenOptions::new();
            options.read(true);
            if !fatal {
                options.custom_flags(libc::O_NONBLOCK);
            }
            let file = match options.open(path) {
                Ok(f) => f,
                Err(e) if fatal => return Err(io_err(e)),
                Err(_) => return Ok(()),
            };
            let kind = match file.metadata() {
                Ok(m) => m.file_type(),
                Err(e) if fatal => return Err(io_err(e)),
                Err(_) => return Ok(()),
            };
            if kind.is_dir() || (!fatal && !kind.is_file()) {
                if fatal {
                    return Err(io_err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "is a directory",
                    )));
                }
                return Ok(());
            }
            for_each_rule_unit(file, word_split, from0, &mut parse)
        };
        match outcome {
            Ok(parsed) => parsed,
            Err(e) if fatal => Err(io_err(e)),
            Err(_) => Ok(()),
        }
    }

    /// The decision for `rel_path` (relative to the transfer root, `/`-separated) on the
    /// sending side: whether it goes into the file list. Same as
    /// `check_side(rel_path, is_dir, Side::Sender)`.
    pub fn check(&self, rel_path: &[u8], is_dir: bool) -> Decision {
        self.check_side(rel_path, is_dir, Side::Sender)
    }

    /// The first matching rule's decision for `rel_path` as seen by `side`: rules limited to
    /// the other side (and, with `--delete-excluded`, side-less rules on the receiver) are
    /// skipped.
    pub fn check_side(&self, rel_path: &[u8], is_dir: bool, side: Side) -> Decision {
        let q = Query {
            subject: Subject::new(rel_path, is_dir),
            side,
            ignore_perishable: false,
            xattr: false,
        };
        self.decide(&q)
    }

    /// True when the sender leaves `rel_path` out of the transfer (exclude or hide).
    pub fn excluded_for_transfer(&self, rel_path: &[u8], is_dir: bool) -> bool {
        self.check_side(rel_path, is_dir, Side::Sender) == Decision::Exclude
    }

    /// True when the receiver must not delete `rel_path` (exclude or protect).
    pub fn protected_from_delete(&self, rel_path: &[u8], is_dir: bool) -> bool {
        self.check_side(rel_path, is_dir, Side::Receiver) == Decision::Exclude
    }

    /// Like [`FilterRules::protected_from_delete`] for an entry inside a directory that is
    /// itself being deleted: perishable rules (`p`, and the `-C` defaults) are ignored.
    pub fn protected_in_deleted_dir(&self, rel_path: &[u8], is_dir: bool) -> bool {
        let q = Query {
            subject: Subject::new(rel_path, is_dir),
            side: Side::Receiver,
            ignore_perishable: true,
            xattr: false,
        };
        self.decide(&q) == Decision::Exclude
    }

    /// The decision for an extended-attribute name, using only `x` rules.
    pub fn check_xattr(&self, name: &[u8], side: Side) -> Decision {
        let q = Query {
            subject: Subject::new(name, false),
            side,
            ignore_perishable: false,
            xattr: true,
        };
        self.decide(&q)
    }

    /// Whether `-X` copies the extended attribute `name`, as rsync decides on `side`: with any
    /// `x` rule, by those rules; otherwise root copies every namespace except `system.*`
    /// (ACLs travel with `-A`) and other users only `user.*`. (rsync's internal
    /// `user.rsync.%…` fake-super attributes are not special-cased here.)
    pub fn xattr_selected(&self, name: &[u8], side: Side, am_root: bool) -> bool {
        if self.has_xattr_rules() {
            return self.check_xattr(name, side) != Decision::Exclude;
        }
        if am_root {
            !name.starts_with(b"system.")
        } else {
            name.starts_with(b"user.")
        }
    }

    /// True when any global rule is an `x` (xattr-name) rule; without them rsync applies its
    /// default xattr filtering.
    pub fn has_xattr_rules(&self) -> bool {
        self.rules.iter().any(|r| r.flags & flag::XATTR != 0)
    }

    fn decide(&self, q: &Query<'_>) -> Decision {
        match self.first_match(q) {
            Some(rule) if rule.flags & flag::INCLUDE != 0 => Decision::Include,
            Some(_) => Decision::Exclude,
            None => Decision::NoMatch,
        }
    }

    fn first_match(&self, q: &Query<'_>) -> Option<&Rule> {
        self.check_list(&self.rules, q)
            .or_else(|| self.check_list(&self.tail, q))
    }

    /// The rule that decides `rel_path` for `side`, as `--filter` text (e.g. `"- *.o"`,
    /// `"-/ /abs/dir/x"` for an anchored per-directory rule), or `None` when no rule matches.
    /// For messages like rsync's `--debug=FILTER` ("hiding file x because of pattern *.o").
    pub fn matching_rule(&self, rel_path: &[u8], is_dir: bool, side: Side) -> Option<String> {
        let q = Query {
            subject: Subject::new(rel_path, is_dir),
            side,
            ignore_perishable: false,
            xattr: false,
        };
        self.first_match(&q)
            .map(|r| crate::error::show(&crate::wire::rendered(r, r.flags)))
    }

    /// The first matching rule in `rules`, descending into merge lists.
    pub(crate) fn check_list<'s>(&'s self, rules: &'s [Rule], q: &Query<'_>) -> Option<&'s Rule> {
        for rule in rules {
            if q.ignore_perishable && rule.flags & flag::PERISHABLE != 0 {
                continue;
            }
            if rule.flags & flag::PERDIR_MERGE != 0 {
                let mut node = self
                    .perdir
                    .heads
                    .get(rule.merge_id)
                    .and_then(Option::as_deref);
                while let Some(n) = node {
                    if let Some(d) = self.check_list(&n.rules, q) {
                        return Some(d);
                    }
                    node = n.next.as_deref();
                }
                continue;
            }
            if rule.flags & flag::CVS_IGNORE != 0 {
                if let Some(cvs) = &self.cvs_list {
                    if let Some(d) = self.check_list(cvs, q) {
                        return Some(d);
                    }
                }
                continue;
            }
            if (rule.flags & flag::XATTR != 0) != q.xattr || !self.applies_to(rule, q.side) {
                continue;
            }
            if rule.matches_subject(&q.subject, &self.perdir.root) {
                return Some(rule);
            }
        }
        None
    }

    fn applies_to(&self, rule: &Rule, side: Side) -> bool {
        let mut sides = rule.flags & flag::SIDES;
        if sides == 0 {
            sides = if self.delete_excluded {
                flag::SENDER
            } else {
                flag::SIDES
            };
        }
        match side {
            Side::Sender => sides & flag::SENDER != 0,
            Side::Receiver => sides & flag::RECEIVER != 0,
        }
    }
}

/// One matching request.
pub(crate) struct Query<'a> {
    pub subject: Subject<'a>,
    pub side: Side,
    pub ignore_perishable: bool,
    pub xattr: bool,
}

/// The last `/`-separated element of `name`.
pub(crate) fn basename(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b'/') {
        Some(p) => &name[p + 1..],
        None => name,
    }
}

fn resolve_merge_path(name: &[u8], base: Option<&Path>) -> PathBuf {
    let p = Path::new(std::ffi::OsStr::from_bytes(name));
    match base {
        Some(b) if name != b"-" && !p.is_absolute() => b.join(p),
        _ => p.to_path_buf(),
    }
}
