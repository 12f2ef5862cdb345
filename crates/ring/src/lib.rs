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
//! ## Safety model
//!
//! - Every operation type implements the `unsafe trait` [`Operation`]: its SQE may only point into
//!   memory the operation owns. When submitted, the operation is boxed into a slot of the ring's
//!   slab (user_data = slot index + generation) and stays there until its final CQE (for a
//!   zero-copy send: the notification; for multishot accept: the CQE without `MORE`).
//! - Dropping an [`Op`] future, a [`Batch`] or an [`AcceptStream`] orphans the slot and queues
//!   an `ASYNC_CANCEL`; the resources are freed when the CQE arrives. A result that arrives for an
//!   orphan is cleaned up ([`Operation::discard`]): fds are closed, direct slots cleared.
//! - Dropping the [`Ring`] drops its tasks, refuses new submissions, cancels every in-flight slot,
//!   and waits up to 10 s for their CQEs (closing the ring fd would not wait for io-wq workers).
//!   Slots still in flight after that are leaked, never freed.
//! - A failed `io_uring_enter` cannot strand a dangling SQE: the SQE's resources are parked in the
//!   slab whether or not the kernel consumed it.
//! - Chains: a link member with `skip_success` posts no CQE on success; its result is inferred when
//!   a later member of the chain posts one. If a skipping member fails, the kernel also skips the
//!   CQEs of the cancelled members after it; they are completed with `ECANCELED`.
//! - [`Ring`], [`Handle`], [`Op`], [`FixedBuf`], [`JoinHandle`] are neither `Send` nor `Sync`
//!   (compile-fail tests in `tests/ui`). Wakers are `Send`: waking from another thread writes an
//!   eventfd whose read is kept armed in the ring.
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
