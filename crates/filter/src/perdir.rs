//! Per-directory merge files (`dir-merge`, `-F`, `:C`) as a walk descends.
//!
//! Each `dir-merge` rule owns a rule list. The list seen in a directory is a chain of
//! shared nodes: the rules read from that directory's merge file, then (unless the rule has
//! the `n` modifier, or the file used `!`) the chain inherited from the parent directory.
//! Nodes are immutable and reference-counted, so:
//!
//! - entering a directory costs one read attempt per active merge rule and, when a file
//!   exists, one allocation; leaving restores the saved chain heads (no re-parsing);
//! - a [`FilterRules`] can be cloned at any point ([`FilterRules::fork`]) and handed to
//!   another walker thread: both share all rule nodes, and each pushes its own nodes for
//!   the directories it enters.
//!
//! Anchored rules (`/pattern`) in a per-directory file are relative to that file's
//! directory; they are stored as absolute-path rules with the directory's absolute path in
//! front, and matched against the transfer root's absolute path joined with the relative
//! path (as rsync does).

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::FilterError;
use crate::list::{FilterRules, Target};
use crate::parse::{flag, Syntax};
use crate::rule::Rule;

/// A `dir-merge` rule: which file to look for and how to parse it.
#[derive(Debug)]
pub(crate) struct MergeDef {
    /// The rule's flags, used as the template when parsing the file.
    pub flags: u32,
    /// The name as written (it may hold directories, which trigger a parent scan).
    pub name: Box<[u8]>,
    /// The file name looked up in each directory.
    pub basename: Box<[u8]>,
}

/// One directory's rules of one merge list, followed by the inherited ones.
#[derive(Debug)]
pub(crate) struct Node {
    pub rules: Box<[Rule]>,
    pub next: Option<Arc<Node>>,
}

/// What [`FilterRules::leave_dir`] restores.
#[derive(Clone, Debug)]
struct Frame {
    defs_len: usize,
    heads: Vec<Option<Arc<Node>>>,
}

/// The per-directory part of [`FilterRules`].
#[derive(Clone, Debug, Default)]
pub(crate) struct PerDirState {
    pub defs: Vec<Arc<MergeDef>>,
    pub heads: Vec<Option<Arc<Node>>>,
    /// Whether the definition still needs its parent-directory scan.
    pub needs_setup: Vec<bool>,
    /// Absolute transfer root without the leading `/` (empty for `/` or before any walk).
    pub root: Vec<u8>,
    pub root_set: bool,
    frames: Vec<Frame>,
}

impl PerDirState {
    /// Drops merge definitions registered from index `from` on (after a failed parse).
    pub(crate) fn forget_defs_from(&mut self, from: usize) {
        self.defs.truncate(from);
        self.heads.truncate(from);
        self.needs_setup.truncate(from);
    }
}

/// Proof of one [`FilterRules::enter_dir`]; give it back to [`FilterRules::leave_dir`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "pass the token to leave_dir when the walk leaves the directory"]
pub struct DirToken {
    depth: usize,
}

/// Lexically cleans an absolute path: drops `.` and empty components, resolves `..`.
/// Returns it without a trailing slash (`/` itself stays `/`).
pub(crate) fn clean_abs(path: &Path) -> Vec<u8> {
    let joined;
    let path = if path.is_absolute() {
        path
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        joined = cwd.join(path);
        &joined
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in path.as_os_str().as_bytes().split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for p in &parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn join(dir: &[u8], name: &[u8]) -> PathBuf {
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    if v.last() != Some(&b'/') {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    PathBuf::from(std::ffi::OsString::from_vec(v))
}

/// `dir` as a prefix for anchored rules: empty for `/`.
fn anchor_prefix(dir: &[u8]) -> &[u8] {
    if dir == b"/" {
        b""
    } else {
        dir
    }
}

impl FilterRules {
    /// Enters directory `abs_dir` whose path relative to the transfer root is `rel_dir`
    /// (empty for the root itself): reads every active per-directory merge file found in it
    /// and makes its rules apply to the directory's contents (and, unless `n`, to everything
    /// below). Call it after deciding the directory itself is included, before checking its
    /// entries; pair it with [`FilterRules::leave_dir`].
    ///
    /// The first call also fixes the transfer root (used by `/`-modifier rules) and scans the
    /// parent directories named by merge rules such as `dir-merge /.rsync-filter`.
    pub fn enter_dir(&mut self, abs_dir: &Path, rel_dir: &[u8]) -> Result<DirToken, FilterError> {
        let depth = self.perdir.frames.len();
        if self.perdir.defs.is_empty() && self.perdir.root_set {
            // Nothing to read: just keep enter/leave balanced.
            self.perdir.frames.push(Frame {
                defs_len: 0,
                heads: Vec::new(),
            });
            return Ok(DirToken { depth });
        }
        let abs = clean_abs(abs_dir);
        if !self.perdir.root_set {
            self.perdir.root = root_of(&abs, rel_dir);
            self.perdir.root_set = true;
        }
        self.perdir.frames.push(Frame {
            defs_len: self.perdir.defs.len(),
            heads: self.perdir.heads.clone(),
        });
        let result = self.read_dir_files(&abs);
        if result.is_err() {
            self.restore(depth);
        }
        result.map(|()| DirToken { depth })
    }

    /// Sets the absolute transfer root explicitly (for `/`-modifier rules). Without it, the
    /// first [`FilterRules::enter_dir`] derives the root from its arguments. Call it again
    /// before walking another source argument with a different root.
    pub fn set_transfer_root(&mut self, abs_root: &Path) {
        let abs = clean_abs(abs_root);
        self.perdir.root = abs.strip_prefix(b"/").unwrap_or(&abs).to_vec();
        self.perdir.root_set = true;
    }

    /// Leaves the directory entered when `token` was issued (and any directory below it
    /// that was not left yet), restoring the rules in force before it.
    pub fn leave_dir(&mut self, token: DirToken) {
        self.restore(token.depth);
    }

    /// A copy of the current state for another walker: it sees the same rules as `self`
    /// does now and can enter and leave directories below independently. Tokens from one
    /// copy mean nothing to the other.
    pub fn fork(&self) -> FilterRules {
        let mut copy = self.clone();
        copy.perdir.frames.clear();
        copy
    }

    /// True when per-directory merge files are read as directories are
    /// entered (a `dir-merge` rule, `-F`, `:C`); otherwise
    /// [`FilterRules::enter_dir`] changes nothing a walker needs.
    pub fn has_dir_merge(&self) -> bool {
        !self.perdir.defs.is_empty()
    }

    /// How many directories are currently entered.
    pub fn dir_depth(&self) -> usize {
        self.perdir.frames.len()
    }

    fn restore(&mut self, depth: usize) {
        if depth >= self.perdir.frames.len() {
            return;
        }
        let frame = self.perdir.frames.swap_remove(depth);
        self.perdir.frames.truncate(depth);
        self.perdir.defs.truncate(frame.defs_len);
        self.perdir.needs_setup.truncate(frame.defs_len);
        self.perdir.heads = frame.heads;
    }

    fn read_dir_files(&mut self, abs: &[u8]) -> Result<(), FilterError> {
        let mut i = 0;
        while i < self.perdir.defs.len() {
            let def = Arc::clone(&self.perdir.defs[i]);
            if self.perdir.needs_setup[i] {
                self.perdir.needs_setup[i] = false;
                self.parent_scan(i, &def, abs)?;
            }
            let inherited = if def.flags & flag::NO_INHERIT != 0 {
                None
            } else {
                self.perdir.heads[i].take()
            };
            let head = self.read_merge_file(&def, abs, inherited)?;
            self.perdir.heads[i] = head;
            i += 1;
        }
        Ok(())
    }

    /// Reads `dir/<basename>` for `def` and returns the new chain head.
    fn read_merge_file(
        &mut self,
        def: &MergeDef,
        dir: &[u8],
        inherited: Option<Arc<Node>>,
    ) -> Result<Option<Arc<Node>>, FilterError> {
        let path = join(dir, &def.basename);
        let mut rules = Vec::new();
        let base_dir = Path::new(std::ffi::OsStr::from_bytes(dir));
        let mut target = Target {
            list: &mut rules,
            cleared: false,
            anchor_dir: Some(anchor_prefix(dir)),
            base_dir: Some(base_dir),
            daemon: false,
        };
        self.parse_file(
            &mut target,
            &path,
            def.flags,
            Syntax::Filter,
            false,
            "dir-merge",
            0,
        )?;
        let cleared = target.cleared;
        let next = if cleared { None } else { inherited };
        if rules.is_empty() {
            return Ok(next);
        }
        Ok(Some(Arc::new(Node {
            rules: rules.into_boxed_slice(),
            next,
        })))
    }

    /// For a merge name with a directory part (`/.rsync-filter`, `../../.rules`): when that
    /// directory is `dir` or one of its parents, reads the file in each directory from there
    /// down to `dir`'s parent, as inherited rules.
    fn parent_scan(&mut self, i: usize, def: &MergeDef, dir: &[u8]) -> Result<(), FilterError> {
        if !def.name.contains(&b'/') {
            return Ok(());
        }
        let name_path = Path::new(std::ffi::OsStr::from_bytes(&def.name));
        let full = if name_path.is_absolute() {
            clean_abs(name_path)
        } else {
            clean_abs(&join(dir, &def.name))
        };
        let start = match full.iter().rposition(|&b| b == b'/') {
            Some(0) => b"/".to_vec(),
            Some(p) => full[..p].to_vec(),
            None => return Ok(()),
        };
        let is_parent = dir == start.as_slice()
            || start == b"/"
            || (dir.starts_with(&start) && dir.get(start.len()) == Some(&b'/'));
        if !is_parent {
            return Ok(());
        }
        // Directories from `start` down to, not including, `dir`.
        let mut scan = start.clone();
        let mut head = self.perdir.heads[i].take();
        let rest: Vec<u8> = dir[start.len().min(dir.len())..].to_vec();
        let comps: Vec<&[u8]> = rest
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for comp in comps {
            let got = self.read_merge_file(def, &scan, head)?;
            head = if def.flags & flag::NO_INHERIT != 0 {
                None
            } else {
                got
            };
            if scan.last() != Some(&b'/') {
                scan.push(b'/');
            }
            scan.extend_from_slice(comp);
        }
        self.perdir.heads[i] = head;
        Ok(())
    }
}

/// The transfer root (without the leading `/`) for a directory at `abs` whose relative
/// path is `rel`.
fn root_of(abs: &[u8], rel: &[u8]) -> Vec<u8> {
    let rel: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let mut root: &[u8] = abs;
    for comp in rel.iter().rev() {
        match root.strip_suffix(*comp) {
            Some(r) if r.ends_with(b"/") => root = &r[..r.len() - 1],
            _ => {
                root = abs;
                break;
            }
        }
    }
    root.strip_prefix(b"/").unwrap_or(root).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_paths() {
        assert_eq!(clean_abs(Path::new("/a/./b//c/../d/")), b"/a/b/d");
        assert_eq!(clean_abs(Path::new("/")), b"/");
        assert_eq!(clean_abs(Path::new("/..")), b"/");
    }

    #[test]
    fn knows_when_directories_have_rules() {
        let mut r = FilterRules::new();
        assert!(!r.has_dir_merge());
        r.add_rule("- *.o").unwrap();
        assert!(!r.has_dir_merge());
        r.add_rule(": .per-dir").unwrap();
        assert!(r.has_dir_merge());
        let mut f = FilterRules::new();
        f.add_f_option(1).unwrap();
        assert!(f.has_dir_merge());
        let mut c = FilterRules::new();
        c.add_cvs_exclude_with(crate::CvsIgnoreSources::default())
            .unwrap();
        assert!(c.has_dir_merge(), "-C reads .cvsignore files");
    }

    #[test]
    fn roots() {
        assert_eq!(root_of(b"/x/src", b""), b"x/src");
        assert_eq!(root_of(b"/x/src/a/b", b"a/b"), b"x/src");
        assert_eq!(root_of(b"/a", b"a"), b"");
        assert_eq!(root_of(b"/x/y", b"q"), b"x/y");
    }
}
