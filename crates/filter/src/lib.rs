//! rsync's filter-rule language: `--exclude`, `--include`, `--filter`, merge and per-directory
//! merge files, `-C` and `-F`, and matching paths against the result, with the semantics of
//! rsync 3.x (`man rsync`, sections "FILTER RULES" and following).
//!
//! ```
//! use arsync_filter::{Decision, FilterRules};
//!
//! let mut rules = FilterRules::new();
//! rules.add_rule("+ *.c").unwrap();
//! rules.add_rule("+ */").unwrap();
//! rules.add_rule("- *").unwrap();
//! assert_eq!(rules.check(b"src/main.c", false), Decision::Include);
//! assert_eq!(rules.check(b"src", true), Decision::Include);
//! assert_eq!(rules.check(b"src/main.o", false), Decision::Exclude);
//! ```
//!
//! Paths are bytes relative to the transfer root, `/`-separated, without a leading `/`
//! (names need not be UTF-8). The first matching rule decides; no match means include.
//! A walker applies rsync's recursion rule itself: an excluded directory is not descended.
//!
//! Per-directory merge files are read through [`FilterRules::enter_dir`] /
//! [`FilterRules::leave_dir`] as the walk descends. The state is cheap to copy for parallel
//! walkers ([`FilterRules::fork`]): every rule list is shared and immutable.
//!
//! ```
//! use arsync_filter::{FilterRules, Side};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tree = tempfile::tempdir()?;
//! std::fs::create_dir(tree.path().join("sub"))?;
//! std::fs::write(tree.path().join("sub/.rsync-filter"), "- *.tmp\n")?;
//!
//! let mut rules = FilterRules::new();
//! rules.add_f_option(1)?; // -F
//! rules.add_rule("P *.log")?; // protect on the receiver only
//! let root = rules.enter_dir(tree.path(), b"")?;
//! assert!(!rules.excluded_for_transfer(b"sub/a.tmp", false));
//! let sub = rules.enter_dir(&tree.path().join("sub"), b"sub")?;
//! assert!(rules.excluded_for_transfer(b"sub/a.tmp", false));
//! assert!(rules.protected_from_delete(b"sub/x.log", false));
//! assert!(!rules.excluded_for_transfer(b"sub/x.log", false));
//! assert_eq!(rules.matching_rule(b"sub/a.tmp", false, Side::Sender).as_deref(), Some("- *.tmp"));
//! rules.leave_dir(sub);
//! rules.leave_dir(root);
//! # Ok(())
//! # }
//! ```
//!
//! Sides: [`Side::Sender`] (what goes into the file list) uses include/exclude and
//! show/hide rules; [`Side::Receiver`] (what `--delete` may remove) uses include/exclude and
//! risk/protect rules, read from the receiver's own tree for per-directory files.

mod error;
mod list;
mod parse;
mod perdir;
mod rule;
pub mod wildmatch;
mod wire;

pub use error::FilterError;
pub use list::{
    CvsIgnoreSources, DaemonParam, Decision, FilterRules, FromFile, Side, DEFAULT_CVSIGNORE,
};
pub use perdir::DirToken;
pub use wire::WireRole;
