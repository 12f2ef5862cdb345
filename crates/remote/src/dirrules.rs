//! Per-directory merge files (`dir-merge`, `-F`, `:C`) for the remote roles.
//!
//! A sender reads the merge files of its source tree as it walks it (rsync's
//! `send_directory`); a deleting receiver reads those of its own destination
//! tree before deleting in a directory (rsync's `delete_in_dir`). Both keep
//! one [`FilterRules`] state per entered directory, forked from its parent's
//! (the rule lists are shared, so a fork is a few pointer copies).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arsync_filter::FilterRules;

use crate::error::{RemoteError, Result};

/// `rules` (forked) after entering directory `abs` (relative path `rel`, empty
/// for the transfer root): the rules that apply to its entries.
pub(crate) fn entered(rules: &FilterRules, abs: &Path, rel: &[u8]) -> Result<FilterRules> {
    let mut r = rules.fork();
    let rel = if rel == b"." { &b""[..] } else { rel };
    // The state is dropped with the directory's walk, never left explicitly.
    let _token = r
        .enter_dir(abs, rel)
        .map_err(|e| RemoteError::Usage(format!("filter rules in {}: {e}", abs.display())))?;
    Ok(r)
}

/// The receiver's view of the rules below one destination root, for
/// directories visited in file-list order (a parent before its contents).
pub(crate) struct DestRules<'a> {
    base: &'a FilterRules,
    root: PathBuf,
    /// Entered directories from the root down: (relative path, rules).
    stack: Vec<(Vec<u8>, FilterRules)>,
}

impl<'a> DestRules<'a> {
    /// Rules for the destination tree at `root`.
    pub(crate) fn new(base: &'a FilterRules, root: &Path) -> Self {
        DestRules {
            base,
            root: root.to_path_buf(),
            stack: Vec::new(),
        }
    }

    /// The rules for the entries of directory `rel` (`.` or empty for the
    /// root), with the merge files of `rel` and its parents read.
    pub(crate) fn at(&mut self, rel: &[u8]) -> Result<&FilterRules> {
        if !self.base.has_dir_merge() {
            return Ok(self.base);
        }
        let rel = if rel == b"." { &b""[..] } else { rel };
        let inside = |dir: &[u8]| {
            dir.is_empty()
                || rel == dir
                || (rel.starts_with(dir) && rel.get(dir.len()) == Some(&b'/'))
        };
        while self.stack.last().is_some_and(|(d, _)| !inside(d)) {
            self.stack.pop();
        }
        if self.stack.is_empty() {
            let r = entered(self.base, &self.root, b"")?;
            self.stack.push((Vec::new(), r));
        }
        while let Some((top, rules)) = self.stack.last() {
            if top.as_slice() == rel {
                break;
            }
            let start = if top.is_empty() { 0 } else { top.len() + 1 };
            let end = rel[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(rel.len(), |p| start + p);
            let sub = rel[..end].to_vec();
            let abs = self.root.join(OsStr::from_bytes(&sub));
            let r = entered(rules, &abs, &sub)?;
            self.stack.push((sub, r));
        }
        match self.stack.last() {
            Some((_, r)) => Ok(r),
            None => Ok(self.base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_merge_files_apply_below_their_directory() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join("c")).unwrap();
        std::fs::write(d.join("a/.keep-rules"), "P *.log\n").unwrap();
        std::fs::write(d.join("c/.keep-rules"), "P *.dat\n").unwrap();
        let mut base = FilterRules::new();
        base.add_rule(": .keep-rules").unwrap();
        let mut rules = DestRules::new(&base, d);
        assert!(!rules
            .at(b".")
            .unwrap()
            .protected_from_delete(b"x.log", false));
        assert!(rules
            .at(b"a")
            .unwrap()
            .protected_from_delete(b"a/x.log", false));
        // Inherited by a subdirectory without its own file.
        assert!(rules
            .at(b"a/b")
            .unwrap()
            .protected_from_delete(b"a/b/y.log", false));
        // A sibling sees only its own file.
        let c = rules.at(b"c").unwrap();
        assert!(!c.protected_from_delete(b"c/x.log", false));
        assert!(c.protected_from_delete(b"c/x.dat", false));
        // Back at the root: nothing from below.
        assert!(!rules
            .at(b"")
            .unwrap()
            .protected_from_delete(b"x.dat", false));
    }

    #[test]
    fn a_bad_merge_file_is_an_error() {
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        std::fs::write(t.path().join(".rules"), "bogus-rule-word x\n").unwrap();
        let mut base = FilterRules::new();
        base.add_rule(": .rules").unwrap();
        assert!(entered(&base, t.path(), b"").is_err());
    }
}
