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
//! [`FilterRules::leave_dir`] as the walk descends; see the `perdir` module notes for cost
//! and for sharing the state between parallel walkers ([`FilterRules::fork`]).

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
