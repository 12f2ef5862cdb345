//! Test helpers shared by the workspace's integration tests: building directory trees with
//! every kind of file and metadata, and comparing two trees exactly.
//!
//! ```no_run
//! use arsync_testutil::{assert_trees_equal, random_tree, CompareOpts, RandomTreeParams};
//! # fn main() -> std::io::Result<()> {
//! let dir = std::path::Path::new("/dev/shm/example");
//! random_tree(&dir.join("src"), 42, &RandomTreeParams::default())?;
//! // ... copy src to dst with the tool under test ...
//! assert_trees_equal(&dir.join("src"), &dir.join("dst"), &CompareOpts::default());
//! # Ok(())
//! # }
//! ```
//!
//! - [`TreeBuilder`] creates regular, empty, seeded and sparse files, directories, symlinks,
//!   hard links, FIFOs, sockets and devices, and sets modes (special bits too), owners,
//!   nanosecond times, xattrs and POSIX ACLs. Names may be any bytes ([`bytes_path`]).
//! - [`random_tree`] makes a reproducible tree of all of these from a seed.
//! - [`compare_trees`] lists every [`Difference`] that [`CompareOpts`] asks about;
//!   [`assert_trees_equal`] panics with a readable list.
//! - [`remote`] runs a client against any server program through a stand-in ssh.

mod compare;
pub mod meta;
mod process;
mod random;
pub mod remote;
mod tree;

pub use compare::{
    assert_trees_equal, assert_trees_match_first, compare_trees, CompareOpts, Difference, Kind,
    Side, SparseCheck,
};
pub use meta::{AclEntry, AclKind, AclTag, FileTime};
pub use process::{count_second_level, peak_rss_kib, wide_tree};
pub use random::{is_root, random_tree, RandomTreeParams, TreeSummary};
pub use tree::{
    bytes_path, get_times, overwrite_at, set_mtime, set_times, settle_tree, SeededBytes, Settle,
    TreeBuilder,
};

/// A scratch directory on tmpfs (`/dev/shm`) when available, else in the system temp dir.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("arsync-test-")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("arsync-test-").tempdir()
}
