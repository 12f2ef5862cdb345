//! Which paths the sync skips (sender side) and which extraneous destination paths it keeps
//! (receiver side).
//!
//! The engine only sees the [`PathFilter`] trait. [`RulesFilter`] implements it with
//! `arsync-filter`'s [`FilterRules`] (rsync's full filter-rule language).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use arsync_filter::{DirToken, FilterRules};

pub use arsync_filter::FilterError;

/// Decides which paths are transferred and which destination paths deletion must keep.
pub trait PathFilter: Send + Sync {
    /// True if `rel` (relative to the transfer root, no leading `/`) is not transferred.
    fn excluded(&self, rel: &[u8], is_dir: bool) -> bool;
    /// True if deletion must keep the destination path `rel`.
    fn protected(&self, rel: &[u8], is_dir: bool) -> bool;
    /// True if deletion must keep `rel`, found inside a destination directory that is being
    /// deleted whole (rsync ignores perishable rules there).
    fn protected_in_deleted_dir(&self, rel: &[u8], is_dir: bool) -> bool {
        self.protected(rel, is_dir)
    }
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

/// One directory on the walk path.
struct Frame {
    rel_dir: Vec<u8>,
    /// `None` if the sender-side merge files could not be read.
    sender: Option<DirToken>,
    /// Set once deletion entered the matching destination directory.
    receiver: Option<DirToken>,
}

/// The per-directory state: the sender's view (source merge files) and the receiver's view
/// (the destination's own merge files, for deletion).
struct WalkState {
    sender: FilterRules,
    receiver: FilterRules,
    frames: Vec<Frame>,
}

/// [`PathFilter`] over [`FilterRules`]. The walk is single-threaded, so the per-directory
/// stack lives behind one mutex; the matching itself is shared, immutable rule lists.
pub struct RulesFilter {
    empty: bool,
    state: Mutex<WalkState>,
}

impl RulesFilter {
    /// Wraps a finished rule list (rules are added before the walk starts).
    pub fn new(rules: FilterRules) -> Self {
        let receiver = rules.fork();
        Self {
            empty: rules.is_empty(),
            state: Mutex::new(WalkState {
                sender: rules,
                receiver,
                frames: Vec::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, WalkState> {
        // A poisoned lock only means another thread panicked; the stack is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RulesFilter {
    fn default() -> Self {
        Self::new(FilterRules::new())
    }
}

/// The engine names the transfer root `.`; the rule list wants an empty path.
fn dir_rel(rel: &[u8]) -> &[u8] {
    if rel == b"." {
        b""
    } else {
        rel
    }
}

impl WalkState {
    /// The rules deletion consults: the receiver's view if deletion entered the current
    /// destination directory, else the sender's.
    fn delete_view(&self) -> &FilterRules {
        match self.frames.last() {
            Some(f) if f.receiver.is_some() => &self.receiver,
            _ => &self.sender,
        }
    }
}

impl PathFilter for RulesFilter {
    fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        self.state().sender.excluded_for_transfer(rel, is_dir)
    }

    fn protected(&self, rel: &[u8], is_dir: bool) -> bool {
        self.state()
            .delete_view()
            .protected_from_delete(rel, is_dir)
    }

    fn protected_in_deleted_dir(&self, rel: &[u8], is_dir: bool) -> bool {
        self.state()
            .delete_view()
            .protected_in_deleted_dir(rel, is_dir)
    }

    fn is_empty(&self) -> bool {
        self.empty
    }

    fn enter_dir(&self, abs_dir: &Path, rel_dir: &[u8]) -> Result<(), FilterError> {
        let mut s = self.state();
        let rel = dir_rel(rel_dir);
        let (token, err) = match s.sender.enter_dir(abs_dir, rel) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        s.frames.push(Frame {
            rel_dir: rel.to_vec(),
            sender: token,
            receiver: None,
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn enter_receiver_dir(&self, abs_dir: &Path) {
        let mut s = self.state();
        let Some(rel) = s.frames.last().map(|f| f.rel_dir.clone()) else {
            return;
        };
        if s.frames.last().is_some_and(|f| f.receiver.is_some()) {
            return;
        }
        // An unreadable destination merge file leaves the sender's view in charge.
        if let Ok(t) = s.receiver.enter_dir(abs_dir, &rel) {
            if let Some(f) = s.frames.last_mut() {
                f.receiver = Some(t);
            }
        }
    }

    fn leave_dir(&self) {
        let mut s = self.state();
        let Some(f) = s.frames.pop() else { return };
        if let Some(t) = f.receiver {
            s.receiver.leave_dir(t);
        }
        if let Some(t) = f.sender {
            s.sender.leave_dir(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_rel_dot_and_per_directory_rules() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/.rsync-filter"), "- *.tmp\n").unwrap();
        std::fs::write(dst.path().join(".rsync-filter"), "P keep*\n").unwrap();
        let mut rules = FilterRules::new();
        rules.add_f_option(1).unwrap();
        rules.add_rule("- /top.o").unwrap();
        let f = RulesFilter::new(rules);
        assert!(!f.is_empty());
        f.enter_dir(src.path(), b".").unwrap();
        assert!(f.excluded(b"top.o", false));
        assert!(!f.excluded(b"sub/top.o", false));
        // Deletion in the destination root reads the destination's own merge file.
        assert!(!f.protected(b"keep.txt", false));
        f.enter_receiver_dir(dst.path());
        assert!(f.protected(b"keep.txt", false));
        f.enter_dir(&src.path().join("sub"), b"sub").unwrap();
        assert!(f.excluded(b"sub/a.tmp", false));
        f.leave_dir();
        assert!(!f.excluded(b"a.tmp", false));
        f.leave_dir();
    }

    #[test]
    fn empty_filter_excludes_nothing() {
        let f = RulesFilter::default();
        assert!(f.is_empty());
        assert!(!f.excluded(b"x", false));
        assert!(!f.protected(b"x", true));
        f.leave_dir();
    }
}
