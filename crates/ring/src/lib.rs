//! Safe io_uring core: owned-buffer operations, batches, chains, registration, executor.
//!
//! Built directly on the `io-uring` crate. The one rule that makes it safe: **an operation owns
//! everything the kernel touches until its final completion**. Operations take buffers, paths and
//! fds by value and hand buffers back with the result. If a future or batch is dropped while the
//! kernel still works, the operation's resources are parked in the ring's slab until the
//! completion arrives; dropping the [`Ring`] cancels and drains everything (leaking, never
//! freeing, if the kernel does not let go).
//!
//! ```
//! use arsync_ring::Ring;
//! use std::os::fd::AsRawFd;
//! # fn main() -> std::io::Result<()> {
//! let ring = Ring::new()?;
//! let file = std::fs::File::open("/proc/self/stat")?;
//! let (res, buf) = ring.block_on(ring.read_at(file.as_raw_fd(), Vec::with_capacity(64), 0))?;
//! assert!(res? > 0 && !buf.is_empty());
//! # Ok(()) }
//! ```
//!
//! Batches submit many operations with one `io_uring_enter`, optionally linked into chains whose
//! successful members skip their completions:
//!
//! ```
//! use arsync_ring::{op, Ring, SqeOpts};
//! # fn main() -> std::io::Result<()> {
//! let ring = Ring::new()?;
//! let mut batch = ring.batch();
//! let a = batch.push_with(op::Nop, SqeOpts::linked_quiet());
//! let b = batch.push(op::Nop);
//! batch.wait()?;
//! assert!(batch.take(a).unwrap().is_ok() && batch.take(b).unwrap().is_ok());
//! # Ok(()) }
//! ```
//!
//! Modules: [`op`] (the operation vocabulary), [`buf`] (owned and registered buffers),
//! [`exec`] (the per-thread executor), [`features`] (what the kernel supports).
#![warn(missing_docs)]

pub mod buf;
pub mod exec;
pub mod features;
pub mod op;
mod ring;
mod sys;

pub use buf::{BufPool, FixedBuf, IoBuf, IoBufMut, SharedBuf};
pub use exec::{spawn_local, Executor, JoinHandle, Park, ThreadPark};
pub use features::{Features, Opcode, SetupMode};
pub use ring::{
    cqe_result, AcceptStream, Batch, BatchFinished, Cleanup, DirectSlot, Fd, Handle, Op, Operation,
    Ring, RingBuilder, RingPark, SqeOpts, Ticket,
};
