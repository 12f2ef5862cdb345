//! Which paths the sync skips (sender side) and which extraneous destination paths it keeps
//! (receiver side).
//!
//! The engine only sees the [`PathFilter`] trait. [`SimpleFilter`] implements the common
//! subset of rsync's rule language (`+`/`-`/`P`/`R`/`H`/`S`/`!` rules, `merge` files, anchored
//! and directory-only patterns, `*`, `**`, `***`, `?`, `[...]`) until the full
//! `arsync-filter` crate is plugged in behind the same trait.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Decides which paths are transferred and which destination paths deletion must keep.
pub trait PathFilter: Send + Sync {
    /// True if `rel` (relative to the transfer root, no leading `/`) is not transferred.
    fn excluded(&self, rel: &[u8], is_dir: bool) -> bool;
    /// True if deletion must keep the destination path `rel`.
    fn protected(&self, rel: &[u8], is_dir: bool) -> bool;
    /// True if no rule at all was given (lets the engine skip matching).
    fn is_empty(&self) -> bool;
    /// The walker enters source directory `abs_dir` (`rel_dir` relative to the transfer
    /// root, `.` for the root): per-directory merge files there start to apply.
    fn enter_dir(&self, _abs_dir: &Path, _rel_dir: &[u8]) -> Result<(), FilterError> {
        Ok(())
    }
    /// Deletion is about to run in destination directory `abs_dir` (the one matching the
    /// directory last entered): receiver-side per-directory rules come from there.
    fn enter_receiver_dir(&self, _abs_dir: &Path) {}
    /// The walker is done with the directory last entered.
    fn leave_dir(&self) {}
}

/// A filter rule that could not be parsed or a rule file that could not be read.
#[derive(Debug)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Include,
    Exclude,
    Protect,
    Risk,
    Hide,
    Show,
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    pattern: Vec<u8>,
    anchored: bool,
    dir_only: bool,
    /// Matched against the whole path rather than the last component.
    full_path: bool,
    /// `dir/***`: also matches everything below.
    tree: bool,
    negate: bool,
}

/// Which kinds of rule file `add_from_file` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromFile {
    /// `--exclude-from`: each line is an exclude pattern.
    Exclude,
    /// `--include-from`: each line is an include pattern.
    Include,
    /// `merge`: each line is a full rule.
    Filter,
}

/// A `dir-merge` rule: a file read in every directory whose rules apply there and below.
#[derive(Debug, Clone)]
struct DirMerge {
    /// The file name looked for in each directory.
    file: Vec<u8>,
    /// Position in the rule list where its rules are inserted.
    pos: usize,
    /// `-` or `+` modifier: lines are plain exclude/include patterns.
    plain: Option<Action>,
}

/// The per-directory rules in effect for one directory on the walk path.
#[derive(Debug)]
struct Frame {
    rel_dir: Vec<u8>,
    per_merge: Vec<Vec<Rule>>,
    /// Rules from the destination's copies of the merge files (deletion side).
    recv_per_merge: Vec<Vec<Rule>>,
}

/// An ordered list of rules; the first matching rule decides.
#[derive(Debug, Default)]
pub struct SimpleFilter {
    rules: Vec<Rule>,
    delete_excluded: bool,
    merges: Vec<DirMerge>,
    stack: std::sync::Mutex<Vec<Frame>>,
}

/// The default `-C` / `--cvs-exclude` patterns.
pub const CVS_EXCLUDES: &str = "RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state \
.nse_depinfo *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o *.obj \
*.so *.exe *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/";

impl SimpleFilter {
    /// An empty filter (everything included).
    pub fn new() -> Self {
        Self::default()
    }

    /// `--delete-excluded`: exclude rules no longer protect destination files.
    pub fn set_delete_excluded(&mut self, on: bool) {
        self.delete_excluded = on;
    }

    /// Adds one `--filter` rule such as `- *.o`, `+ /foo/`, `P keep`, `merge rules.txt`.
    pub fn add_rule(&mut self, rule: &str) -> Result<(), FilterError> {
        let rule = rule.trim_end_matches(['\n', '\r']);
        if rule.is_empty() || rule.starts_with('#') || rule.starts_with(';') {
            return Ok(());
        }
        if rule == "!" || rule == "clear" {
            self.rules.clear();
            return Ok(());
        }
        let (head, rest) = match rule.find([' ', '_']) {
            Some(i) => (&rule[..i], &rule[i + 1..]),
            None => {
                return Err(FilterError(format!("invalid filter rule: {rule:?}")));
            }
        };
        let (head, comma_mods) = match head.split_once(',') {
            Some((h, m)) => (h, m),
            None => (head, ""),
        };
        let (word, mods) = match head {
            "include" => ("+", ""),
            "exclude" => ("-", ""),
            "protect" => ("P", ""),
            "risk" => ("R", ""),
            "hide" => ("H", ""),
            "show" => ("S", ""),
            "merge" => (".", ""),
            "dir-merge" => (":", ""),
            h if !h.is_empty() && h.is_char_boundary(1) => (&h[..1], &h[1..]),
            _ => return Err(FilterError(format!("invalid filter rule: {rule:?}"))),
        };
        let action = match word {
            "+" => Action::Include,
            "-" => Action::Exclude,
            "P" => Action::Protect,
            "R" => Action::Risk,
            "H" => Action::Hide,
            "S" => Action::Show,
            "." => {
                return self.add_from_file(Path::new(rest), FromFile::Filter);
            }
            ":" => {
                let mods = format!("{mods}{comma_mods}");
                let mut plain = None;
                let mut exclude_self = false;
                for m in mods.chars() {
                    match m {
                        '-' => plain = Some(Action::Exclude),
                        '+' => plain = Some(Action::Include),
                        'e' => exclude_self = true,
                        'n' | 's' | 'r' | '/' => {}
                        _ => {
                            return Err(FilterError(format!(
                                "dir-merge modifier {m:?} in {rule:?} is not supported yet"
                            )))
                        }
                    }
                }
                let file = rest.trim_start_matches('/').as_bytes().to_vec();
                if file.is_empty() || file.contains(&b'/') {
                    return Err(FilterError(format!("invalid dir-merge file in {rule:?}")));
                }
                self.merges.push(DirMerge {
                    file: file.clone(),
                    pos: self.rules.len(),
                    plain,
                });
                if exclude_self {
                    self.push(Action::Exclude, &file, false);
                }
                return Ok(());
            }
            _ => return Err(FilterError(format!("invalid filter rule: {rule:?}"))),
        };
        let mut negate = false;
        let mut sender_only = false;
        let mut receiver_only = false;
        for m in mods.chars() {
            match m {
                '!' => negate = true,
                's' => sender_only = true,
                'r' => receiver_only = true,
                '/' | 'p' => {}
                _ => {
                    return Err(FilterError(format!(
                        "filter rule modifier {m:?} in {rule:?} is not supported yet"
                    )))
                }
            }
        }
        let action = match (action, sender_only, receiver_only) {
            (Action::Include, true, false) => Action::Show,
            (Action::Include, false, true) => Action::Risk,
            (Action::Exclude, true, false) => Action::Hide,
            (Action::Exclude, false, true) => Action::Protect,
            (a, _, _) => a,
        };
        self.push(action, rest.as_bytes(), negate);
        Ok(())
    }

    /// `--exclude PATTERN` (a leading `+ ` or `- ` makes it a rule, as in rsync).
    pub fn add_exclude(&mut self, pattern: &str) {
        self.add_pattern(Action::Exclude, pattern.as_bytes());
    }

    /// `--include PATTERN`.
    pub fn add_include(&mut self, pattern: &str) {
        self.add_pattern(Action::Include, pattern.as_bytes());
    }

    fn add_pattern(&mut self, default: Action, p: &[u8]) {
        match p {
            [b'+', b' ', rest @ ..] => self.push(Action::Include, rest, false),
            [b'-', b' ', rest @ ..] => self.push(Action::Exclude, rest, false),
            _ => self.push(default, p, false),
        }
    }

    /// `-C`: the default CVS excludes plus `$CVSIGNORE`.
    pub fn add_cvs_exclude(&mut self) {
        for p in CVS_EXCLUDES.split_whitespace() {
            self.add_exclude(p);
        }
        if let Ok(extra) = std::env::var("CVSIGNORE") {
            for p in extra.split_whitespace() {
                self.add_exclude(p);
            }
        }
    }

    /// Reads patterns or rules from a file (`-` is standard input).
    pub fn add_from_file(&mut self, path: &Path, kind: FromFile) -> Result<(), FilterError> {
        let data = if path == Path::new("-") {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .map_err(|e| FilterError(format!("reading rules from stdin: {e}")))?;
            v
        } else {
            std::fs::read(path).map_err(|e| {
                FilterError(format!(
                    "failed to open filter file {}: {e}",
                    path.display()
                ))
            })?
        };
        for line in data.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line[0] == b'#' || line[0] == b';' {
                continue;
            }
            match kind {
                FromFile::Exclude => self.add_pattern(Action::Exclude, line),
                FromFile::Include => self.add_pattern(Action::Include, line),
                FromFile::Filter => {
                    let text = std::str::from_utf8(line).map_err(|_| {
                        FilterError(format!("non-UTF-8 rule in {}", path.display()))
                    })?;
                    self.add_rule(text)?;
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, action: Action, pattern: &[u8], negate: bool) {
        let mut p = pattern.to_vec();
        let anchored = p.first() == Some(&b'/');
        if anchored {
            p.remove(0);
        }
        let mut tree = false;
        if p.ends_with(b"/***") {
            p.truncate(p.len() - 4);
            tree = true;
        }
        let dir_only = !tree && p.len() > 1 && p.ends_with(b"/");
        if dir_only {
            p.pop();
        }
        let full_path = anchored || tree || p.contains(&b'/') || contains_double_star(&p);
        self.rules.push(Rule {
            action,
            pattern: p,
            anchored,
            dir_only,
            full_path,
            tree,
            negate,
        });
    }

    fn relevant(&self, r: &Rule, side: Side) -> bool {
        match side {
            Side::Sender => matches!(
                r.action,
                Action::Include | Action::Exclude | Action::Hide | Action::Show
            ),
            Side::Receiver => match r.action {
                Action::Exclude => !self.delete_excluded,
                Action::Include | Action::Protect | Action::Risk => true,
                _ => false,
            },
        }
    }

    fn first_match(&self, rel: &[u8], is_dir: bool, side: Side) -> Option<Action> {
        let stack = if self.merges.is_empty() {
            None
        } else {
            self.stack.lock().ok()
        };
        for i in 0..=self.rules.len() {
            if let Some(frames) = &stack {
                for (m, merge) in self.merges.iter().enumerate() {
                    if merge.pos != i {
                        continue;
                    }
                    // Deeper directories' rules come first.
                    for f in frames.iter().rev() {
                        let Some(sub) = strip_dir(rel, &f.rel_dir) else {
                            continue;
                        };
                        let rules = match side {
                            Side::Sender => &f.per_merge,
                            Side::Receiver => &f.recv_per_merge,
                        };
                        for r in rules.get(m).into_iter().flatten() {
                            if self.relevant(r, side) && r.matches(sub, is_dir) {
                                return Some(r.action);
                            }
                        }
                    }
                }
            }
            if let Some(r) = self.rules.get(i) {
                if self.relevant(r, side) && r.matches(rel, is_dir) {
                    return Some(r.action);
                }
            }
        }
        None
    }
}

#[derive(Clone, Copy)]
enum Side {
    Sender,
    Receiver,
}

impl PathFilter for SimpleFilter {
    fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        matches!(
            self.first_match(rel, is_dir, Side::Sender),
            Some(Action::Exclude | Action::Hide)
        )
    }

    fn protected(&self, rel: &[u8], is_dir: bool) -> bool {
        matches!(
            self.first_match(rel, is_dir, Side::Receiver),
            Some(Action::Exclude | Action::Protect)
        )
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.merges.is_empty()
    }

    fn enter_dir(&self, abs_dir: &Path, rel_dir: &[u8]) -> Result<(), FilterError> {
        if self.merges.is_empty() {
            return Ok(());
        }
        let (per_merge, err) = self.load_merges(abs_dir);
        if let Ok(mut s) = self.stack.lock() {
            s.push(Frame {
                rel_dir: rel_dir.to_vec(),
                per_merge,
                recv_per_merge: Vec::new(),
            });
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn enter_receiver_dir(&self, abs_dir: &Path) {
        if self.merges.is_empty() {
            return;
        }
        let (rules, _) = self.load_merges(abs_dir);
        if let Ok(mut s) = self.stack.lock() {
            if let Some(top) = s.last_mut() {
                top.recv_per_merge = rules;
            }
        }
    }

    fn leave_dir(&self) {
        if self.merges.is_empty() {
            return;
        }
        if let Ok(mut s) = self.stack.lock() {
            s.pop();
        }
    }
}

impl SimpleFilter {
    /// Reads every dir-merge file present in `abs_dir`.
    fn load_merges(&self, abs_dir: &Path) -> (Vec<Vec<Rule>>, Option<FilterError>) {
        let mut per_merge = Vec::with_capacity(self.merges.len());
        let mut err = None;
        for m in &self.merges {
            let path = abs_dir.join(std::ffi::OsStr::from_bytes(&m.file));
            let mut sub = SimpleFilter::new();
            if path.is_file() {
                let kind = match m.plain {
                    Some(Action::Include) => FromFile::Include,
                    Some(_) => FromFile::Exclude,
                    None => FromFile::Filter,
                };
                if let Err(e) = sub.add_from_file(&path, kind) {
                    err = Some(e);
                }
            }
            per_merge.push(sub.rules);
        }
        (per_merge, err)
    }
}

/// `rel` relative to directory `dir` (`.` is the root), if it is inside it.
fn strip_dir<'a>(rel: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    if dir == b"." || dir.is_empty() {
        return Some(rel);
    }
    let rest = rel.strip_prefix(dir)?;
    rest.strip_prefix(b"/")
}

fn contains_double_star(p: &[u8]) -> bool {
    p.windows(2).any(|w| w == b"**")
}

impl Rule {
    fn matches(&self, rel: &[u8], is_dir: bool) -> bool {
        let hit = self.matches_inner(rel, is_dir);
        hit != self.negate
    }

    fn matches_inner(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        if self.tree {
            // "dir/***" matches "dir" itself and anything below it.
            let try_at = |s: &[u8]| -> bool {
                if glob(&self.pattern, s) {
                    return true;
                }
                s.iter()
                    .enumerate()
                    .any(|(i, b)| *b == b'/' && glob(&self.pattern, &s[..i]))
            };
            return self.for_each_start(rel, try_at);
        }
        if !self.full_path {
            let last = match rel.iter().rposition(|b| *b == b'/') {
                Some(i) => &rel[i + 1..],
                None => rel,
            };
            return glob(&self.pattern, last);
        }
        self.for_each_start(rel, |s| glob(&self.pattern, s))
    }

    /// Tries the match at the start of the path (anchored) or at every component start.
    fn for_each_start(&self, rel: &[u8], f: impl Fn(&[u8]) -> bool) -> bool {
        if f(rel) {
            return true;
        }
        if self.anchored {
            return false;
        }
        rel.iter()
            .enumerate()
            .any(|(i, b)| *b == b'/' && f(&rel[i + 1..]))
    }
}

/// Shell-style matching as rsync does it: `*` stops at `/`, `**` does not, `?` is one
/// non-`/` byte, `[...]` a class (with `!` or `^` negation and ranges), `\` escapes.
pub fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Backtracking points for the last `*` (single) seen.
    let mut star: Option<(usize, usize, bool)> = None;
    loop {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    let double = pat.get(p + 1) == Some(&b'*');
                    let np = if double {
                        let mut q = p;
                        while pat.get(q) == Some(&b'*') {
                            q += 1;
                        }
                        q
                    } else {
                        p + 1
                    };
                    if double {
                        // `**` may cross '/', so try every tail recursively.
                        return (i..=s.len()).any(|k| glob(&pat[np..], &s[k..]));
                    }
                    star = Some((np, i, false));
                    p = np;
                    continue;
                }
                b'?' if i < s.len() && s[i] != b'/' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' if i < s.len() => {
                    if let Some((ok, len)) = class(&pat[p..], s[i]) {
                        if ok {
                            p += len;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() && i < s.len() && pat[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                c if c != b'?' && c != b'[' && c != b'\\' && i < s.len() && c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` eat one more non-'/' byte.
        match star {
            Some((sp, si, _)) if si < s.len() && s[si] != b'/' => {
                star = Some((sp, si + 1, false));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches a `[...]` class at the start of `pat` against `c`. Returns (matched, pattern length).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut k = 1;
    let neg = matches!(pat.get(k), Some(b'!') | Some(b'^'));
    if neg {
        k += 1;
    }
    let mut hit = false;
    let mut first = true;
    while k < pat.len() {
        let b = pat[k];
        if b == b']' && !first {
            return Some((hit != neg && c != b'/', k + 1));
        }
        first = false;
        if k + 2 < pat.len() && pat[k + 1] == b'-' && pat[k + 2] != b']' {
            if b <= c && c <= pat[k + 2] {
                hit = true;
            }
            k += 3;
        } else {
            if b == c {
                hit = true;
            }
            k += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob(b"*.o", b"a.o"));
        assert!(!glob(b"*.o", b"d/a.o"));
        assert!(glob(b"**.o", b"d/a.o"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"a/c"));
        assert!(glob(b"[a-c]x", b"bx"));
        assert!(!glob(b"[!a-c]x", b"bx"));
        assert!(glob(b"d/**/z", b"d/x/y/z"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a", b"ab"));
    }

    #[test]
    fn first_match_wins_and_anchoring() {
        let mut f = SimpleFilter::new();
        f.add_include("keep.o");
        f.add_exclude("*.o");
        f.add_exclude("/top");
        f.add_exclude("build/");
        assert!(!f.excluded(b"keep.o", false));
        assert!(f.excluded(b"x/y.o", false));
        assert!(f.excluded(b"top", false));
        assert!(!f.excluded(b"x/top", false));
        assert!(f.excluded(b"x/build", true));
        assert!(!f.excluded(b"x/build", false));
    }

    #[test]
    fn rules_and_protect() {
        let mut f = SimpleFilter::new();
        f.add_rule("P keep/***").unwrap();
        f.add_rule("- *.tmp").unwrap();
        f.add_rule("+ /a/b/c").unwrap();
        assert!(f.protected(b"keep", true));
        assert!(f.protected(b"keep/x/y", false));
        assert!(!f.excluded(b"keep/x", false));
        assert!(f.excluded(b"d/x.tmp", false));
        assert!(f.protected(b"d/x.tmp", false));
        f.set_delete_excluded(true);
        assert!(!f.protected(b"d/x.tmp", false));
        assert!(f.add_rule("bogus").is_err());
        assert!(f.add_rule(":z .rules").is_err());
    }

    #[test]
    fn dir_merge_rules_apply_below_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join(".rsync-filter"), "- *.log\n").unwrap();
        std::fs::write(
            dir.path().join("sub/.rsync-filter"),
            "+ keep.log\n- /local\n",
        )
        .unwrap();
        let mut f = SimpleFilter::new();
        f.add_rule(": /.rsync-filter").unwrap();
        f.add_rule("- .rsync-filter").unwrap();
        f.enter_dir(dir.path(), b".").unwrap();
        assert!(f.excluded(b"a.log", false));
        assert!(f.excluded(b".rsync-filter", false));
        f.enter_dir(&dir.path().join("sub"), b"sub").unwrap();
        assert!(!f.excluded(b"sub/keep.log", false));
        assert!(f.excluded(b"sub/other.log", false));
        assert!(f.excluded(b"sub/local", false));
        f.leave_dir();
        assert!(!f.excluded(b"local", false));
        f.leave_dir();
        assert!(!f.excluded(b"a.log", false));
    }
}
