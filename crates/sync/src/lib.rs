//! Local sync engine with rsync semantics.
//!
//! `arsync-sync` copies one local tree to another the way `rsync` does between local paths:
//! the same path rules (`src/` vs `src`, `-R`), the same flags and meanings, the same
//! itemized output and exit codes, but with the file data copied by a pool of workers fed by
//! a streaming walk. All system calls go through [`fsops`].
//!
//! ```no_run
//! let code = arsync_sync::cli::main_with_args(["arsync", "-a", "src/", "dst/"]);
//! assert_eq!(code, 0);
//! ```

pub mod bigcopy;
pub mod cli;
pub mod engine;
pub mod filter;
pub mod fsops;
pub mod meta;
pub mod options;
pub mod plan;
pub mod report;
pub mod watch;

pub use engine::Engine;
pub use filter::{PathFilter, RulesFilter};
pub use options::Options;
