//! rsync roles and transports driving the sans-IO codecs of `arsync-proto`.
//!
//! - [`pull`]: the receiving client (generator + receiver) against
//!   `rsync --server --sender`.
//! - [`push`]: the sending client against `rsync --server`.
//! - [`server`]: the `--server` roles (sending and receiving) for a real rsync client.
//! - [`walk`]: building a file list from a local directory.
//! - [`transport`]: child processes over pipes (local rsync or a remote shell);
//!   [`daemon`]: `rsync://` daemons over TCP; [`daemon_server`]: `--daemon`.
//! - [`conn`]: buffered, multiplexed streams feeding the decoders.
//! - [`fsys`]: all file-system access, confined to one root.
//!
//! ```no_run
//! use arsync_remote::pull::{pull, PullOptions};
//! let summary = pull(&PullOptions::new("/srv/data/", "/tmp/copy"))?;
//! println!("{} files, {} literal bytes", summary.files_transferred, summary.literal_bytes);
//! # Ok::<(), arsync_remote::error::RemoteError>(())
//! ```

pub mod args;
pub mod attrs;
pub mod conn;
pub mod daemon;
pub mod daemon_server;
mod dirrules;
pub mod error;
pub mod events;
pub mod filewriter;
pub mod fsys;
pub mod ids;
pub mod opts;
pub mod pull;
pub mod push;
pub mod server;
pub mod session;
pub mod transport;
pub mod walk;
