//! Sans-IO rsync wire protocol (protocol versions 30-32, as spoken by rsync 3.2 to 3.5).
//!
//! Everything here works on byte buffers: encoders append to a `Vec<u8>`,
//! decoders read from a [`wire::Reader`] and return [`Error::Incomplete`]
//! (consuming nothing) when more bytes are needed, or a typed error for
//! malformed input. No sockets, processes or files are touched; the
//! `arsync-remote` crate drives these codecs over real transports.
//!
//! Layers, bottom up:
//! - [`wire`]: int, shortint, longint, varint, varlong, vstring.
//! - [`ndx`]: file-index deltas; [`item`]: ndx + item flags.
//! - [`mux`]: multiplexed frames and an incremental demultiplexer.
//! - [`handshake`]: versions, compat flags, checksum/compression negotiation, seed;
//!   [`daemon`]: the `@RSYNCD:` text preamble of daemon connections.
//! - [`flist`]: file-list entries, id lists, sort order, duplicate clearing.
//! - [`filter`]: the filter list; [`acl`], [`xattr`]: the `-A`/`-X` blocks of
//!   file-list entries and the request for abbreviated xattr values.
//! - [`checksum`], [`sums`], [`matcher`], [`token`]: rolling and strong sums,
//!   the sum head and block sums, block matching, the token stream;
//!   [`compress`]: the compressed token streams (zstd, lz4, zlibx, zlib).
//! - [`phase`], [`stats`]: the NDX_DONE sequence, final stats and exit codes.
//!
//! ```
//! use arsync_proto::wire::{put_varint, Reader};
//! let mut buf = Vec::new();
//! put_varint(&mut buf, 300);
//! assert_eq!(Reader::new(&buf).varint().unwrap(), 300);
//! ```

pub mod acl;
pub mod checksum;
pub mod compress;
pub mod daemon;
pub mod error;
pub mod filter;
pub mod flist;
pub mod handshake;
pub mod item;
pub mod matcher;
pub mod mux;
pub mod ndx;
pub mod phase;
pub mod stats;
pub mod sums;
pub mod token;
pub mod wire;
pub mod xattr;

pub use error::{Error, Result};
