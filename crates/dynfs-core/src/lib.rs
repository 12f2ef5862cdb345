//! DynamicFS storage engine.
//!
//! A *pool* spreads file data over several *disks* (directories). File data is cut into
//! fixed-size *extents*; each extent is stored under a [`Policy`]: N full copies, or Reed–Solomon
//! K data + M parity fragments, each fragment on a different disk and protected by a BLAKE3
//! checksum verified on every read. Metadata (inodes, directories, extent maps, xattrs,
//! snapshots) lives in redb, replicated on M + 1 disks (M: the highest policy tolerance in use)
//! with a generation number and the recorded set of replica disks.
//!
//! ```no_run
//! use dynfs_core::{Pool, InitOptions};
//! # fn main() -> dynfs_core::Result<()> {
//! let disks = vec!["/mnt/d1".into(), "/mnt/d2".into(), "/mnt/d3".into()];
//! Pool::init("/etc/dynfs/pool1".as_ref(), &InitOptions {
//!     disks, policy: "rs:2+1".parse()?, extent_size: 1 << 20,
//! })?;
//! let pool = Pool::open("/etc/dynfs/pool1".as_ref())?;
//! let fs = dynfs_core::Fs::new(pool);
//! # Ok(()) }
//! ```
//!
//! Write-ordering invariant: no committed metadata references a fragment that is not durable.
//! New fragments are written and fsynced (file and directory) before the metadata commit that
//! references them; replaced fragments are deleted only after that commit. Fragments left
//! behind by a crash are *orphans*, removed by [`Pool::gc`] (run at every open for writing).

pub mod codec;
pub mod config;
pub mod disk;
pub mod error;
pub mod fs;
pub mod io;
pub mod meta;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod scrub;
pub mod snapshot;
pub mod status;

pub use config::PoolConfig;
pub use disk::Health;
pub use error::{Error, Result};
pub use fs::Fs;
pub use policy::Policy;
pub use pool::{InitOptions, Pool};
