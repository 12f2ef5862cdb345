//! The ring: submission, the slab that parks every in-flight operation, completion dispatch,
//! registration, and the drop-time drain.
//!
//! Invariants (what must always hold):
//! - An operation's resources (buffers, paths, fds, kernel-visible structs) live in a heap box in
//!   the slab from the moment its SQE is written until its final CQE has been reaped. Dropping a
//!   future or a batch only marks the slot *orphaned*; the box is freed when the CQE arrives.
//! - A result nobody claims is cleaned up: an fd from an orphaned open/accept is closed, a direct
//!   descriptor installed by an orphaned open is removed from the table.
//! - Dropping the [`Ring`] cancels every in-flight operation and waits for all of them; if some
//!   never complete, their resources are leaked, never freed.

use crate::buf::{BufPool, PoolMemory};
use crate::exec::{Executor, JoinHandle, Park};
use crate::features::{build_ring, Features, Opcode, SetupMode};
use crate::sys;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// `user_data` of internal requests whose completions carry no information (cancels).
pub(crate) const IGNORE: u64 = u64::MAX;

static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// A file descriptor an operation acts on: a normal fd or a direct descriptor (a slot of the
/// ring's registered file table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    /// A normal file descriptor.
    Raw(RawFd),
    /// A slot of the registered file table (see [`Handle::register_files`]).
    Fixed(u32),
}

impl From<RawFd> for Fd {
    fn from(fd: RawFd) -> Fd {
        Fd::Raw(fd)
    }
}

impl From<BorrowedFd<'_>> for Fd {
    fn from(fd: BorrowedFd<'_>) -> Fd {
        Fd::Raw(fd.as_raw_fd())
    }
}

impl From<&DirectSlot> for Fd {
    fn from(s: &DirectSlot) -> Fd {
        Fd::Fixed(s.index)
    }
}

/// What to do with a result nobody will claim.
#[derive(Debug)]
pub enum Cleanup {
    /// Nothing.
    None,
    /// Close this normal fd (produced by an open or accept whose owner went away).
    CloseFd(RawFd),
    /// Remove this slot from the registered file table.
    CloseDirect(u32),
}

/// An io_uring operation that owns everything the kernel will touch.
///
/// # Safety
/// Every pointer placed in the entry returned by [`Operation::build`] must point into memory owned
/// by `self` (on the heap or inside `self`, which is boxed and never moved before the final CQE),
/// or into memory that otherwise outlives the operation. The entry must be a single SQE whose
/// completion semantics match [`Operation::MULTISHOT`]. `build`, `success_result`,
/// `registered_with` and `discard` run while the ring's internal state is borrowed: they must not
/// call back into the ring.
pub unsafe trait Operation: 'static {
    /// What the operation yields (typically `(io::Result<usize>, Buffer)`).
    type Output;
    /// True when one SQE yields many CQEs (multishot accept).
    const MULTISHOT: bool = false;
    /// Builds the SQE. Called exactly once, after `self` reached its final address.
    fn build(&mut self) -> squeue::Entry;
    /// Turns the final CQE's result into the output.
    fn complete(self, res: i32, flags: u32) -> Self::Output;
    /// The result a fully successful operation yields, if known in advance. Only such operations
    /// may skip their success CQE inside a chain.
    fn success_result(&self) -> Option<i32> {
        None
    }
    /// The id of the ring whose registered resources this operation uses, if any. An operation
    /// run on another ring completes with `EINVAL` without being submitted.
    fn registered_with(&self) -> Option<u64> {
        None
    }
    /// Called for a result that nobody claims (the owner dropped the future or batch).
    fn discard(&self, res: i32) -> Cleanup {
        let _ = res;
        Cleanup::None
    }
}

/// Type-erased view of a parked operation.
pub(crate) trait Parked {
    fn build(&mut self) -> squeue::Entry;
    fn discard(&self, res: i32) -> Cleanup;
    fn success_result(&self) -> Option<i32>;
    fn registered_with(&self) -> Option<u64>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Operation> Parked for T {
    fn build(&mut self) -> squeue::Entry {
        Operation::build(self)
    }
    fn discard(&self, res: i32) -> Cleanup {
        Operation::discard(self, res)
    }
    fn success_result(&self) -> Option<i32> {
        Operation::success_result(self)
    }
    fn registered_with(&self) -> Option<u64> {
        Operation::registered_with(self)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

struct Slot {
    gen: u32,
    op: Option<Box<dyn Parked>>,
    waker: Option<Waker>,
    orphan: bool,
    multishot: bool,
    /// Submitted to the SQ (or queued in a batch that will be).
    in_kernel: bool,
    finished: bool,
    results: VecDeque<(i32, u32)>,
    /// Zero-copy send: the result CQE, kept until the notification CQE arrives.
    first: Option<i32>,
    /// Skips its success CQE; this is the result it had on success.
    implied: Option<i32>,
    /// Every slot (user_data) of the linked chain this slot belongs to, in order.
    chain: Option<Rc<Vec<u64>>>,
    /// Replaces the kernel's result (an operation that was not valid for this ring ran as a NOP).
    forced: Option<i32>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            gen: 0,
            op: None,
            waker: None,
            orphan: false,
            multishot: false,
            in_kernel: false,
            finished: false,
            results: VecDeque::new(),
            first: None,
            implied: None,
            chain: None,
            forced: None,
        }
    }
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots holding an operation (in flight, or finished and not yet claimed).
    occupied: usize,
}

/// Work left after a completion pass, done once no `RefCell` borrow is held.
#[derive(Default)]
struct AfterReap {
    wake: Vec<Waker>,
    garbage: Vec<Box<dyn Parked>>,
    cleanups: Vec<Cleanup>,
}

struct FileTable {
    size: u32,
    free: Vec<u32>,
}

pub(crate) struct Inner {
    id: u64,
    uring: RefCell<IoUring>,
    st: RefCell<State>,
    enter_fd: i32,
    registered: bool,
    features: Features,
    closed: Cell<bool>,
    eventfd_ud: Cell<Option<u64>>,
    files: Rc<RefCell<FileTable>>,
    pool: RefCell<Option<BufPool>>,
    cqe_buf: RefCell<Vec<(u64, i32, u32)>>,
}

fn ud_of(idx: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(idx)
}

fn split_ud(ud: u64) -> (usize, u32) {
    ((ud & 0xffff_ffff) as usize, (ud >> 32) as u32)
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// Converts a CQE result into `io::Result<usize>`.
pub fn cqe_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(errno(res))
    } else {
        Ok(res as usize)
    }
}

impl Inner {
    /// Parks `op` in a fresh slot and returns its user_data and SQE.
    fn park(&self, op: Box<dyn Parked>, multishot: bool) -> (u64, squeue::Entry) {
        let mut st = self.st.borrow_mut();
        let idx = match st.free.pop() {
            Some(i) => i,
            None => {
                st.slots.push(Slot::empty());
                (st.slots.len() - 1) as u32
            }
        };
        st.occupied += 1;
        let slot = &mut st.slots[idx as usize];
        slot.op = Some(op);
        slot.multishot = multishot;
        slot.in_kernel = false;
        let ud = ud_of(idx, slot.gen);
        let foreign = slot
            .op
            .as_ref()
            .and_then(|o| o.registered_with())
            .is_some_and(|id| id != self.id);
        let entry = if foreign {
            slot.forced = Some(-libc::EINVAL);
            opcode::Nop::new().build()
        } else {
            slot.op
                .as_mut()
                .map(|o| o.build())
                .unwrap_or_else(|| opcode::Nop::new().build())
        };
        (ud, entry.user_data(ud))
    }

    fn free_slot(st: &mut State, idx: usize, after: &mut AfterReap) {
        let slot = &mut st.slots[idx];
        if let Some(op) = slot.op.take() {
            after.garbage.push(op);
            st.occupied -= 1;
        }
        if let Some(w) = slot.waker.take() {
            after.wake.push(w);
        }
        slot.gen = slot.gen.wrapping_add(1);
        slot.orphan = false;
        slot.multishot = false;
        slot.in_kernel = false;
        slot.finished = false;
        slot.results.clear();
        slot.first = None;
        slot.implied = None;
        slot.chain = None;
        slot.forced = None;
        st.free.push(idx as u32);
    }

    /// Writes `entries` into the SQ, all together (a chain must not be split across submits).
    /// Refused once the ring is shutting down: nothing new may start that the drain would miss.
    pub(crate) fn push_entries(&self, entries: &[squeue::Entry]) -> io::Result<()> {
        if self.closed.get() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the ring has been dropped",
            ));
        }
        self.push_raw(entries)
    }

    /// As `push_entries`, also during shutdown (for the drain's own cancels).
    fn push_raw(&self, entries: &[squeue::Entry]) -> io::Result<()> {
        loop {
            {
                let mut ring = self.uring.borrow_mut();
                let mut sq = ring.submission();
                if entries.len() > sq.capacity() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "chain longer than the submission queue",
                    ));
                }
                if sq.capacity() - sq.len() >= entries.len() {
                    // SAFETY: every entry was built by an `Operation` parked in the slab (or is an
                    // internal cancel/nop that points at nothing); the slab keeps its resources
                    // alive until the final CQE.
                    unsafe { sq.push_multiple(entries) }
                        .map_err(|_| io::Error::other("submission queue full"))?;
                    drop(sq);
                    drop(ring);
                    let mut st = self.st.borrow_mut();
                    for e in entries {
                        let (idx, gen) = split_ud(e.get_user_data());
                        if let Some(slot) = st.slots.get_mut(idx) {
                            if slot.gen == gen && slot.op.is_some() {
                                slot.in_kernel = true;
                            }
                        }
                    }
                    return Ok(());
                }
            }
            self.flush(0, None)?;
        }
    }

    fn sq_pending(&self) -> usize {
        self.uring.borrow_mut().submission().len()
    }

    /// Submits queued SQEs, waits for at least `wait` completions (or `timeout`), and dispatches
    /// every available completion.
    pub(crate) fn flush(&self, wait: u32, timeout: Option<Duration>) -> io::Result<()> {
        let mut tries = 0;
        loop {
            let to_submit = self.sq_pending() as u32;
            let timeout = if self.features.ext_arg { timeout } else { None };
            match sys::enter(
                self.enter_fd,
                self.registered,
                to_submit,
                wait,
                sys::ENTER_GETEVENTS,
                timeout,
            ) {
                Ok(_) => break,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ETIME) => break,
                    Some(libc::EINTR) => {
                        self.reap();
                        if wait > 0 {
                            return Ok(());
                        }
                    }
                    Some(libc::EBUSY) | Some(libc::EAGAIN) if tries < 100 => {
                        // CQ backlog or no memory for requests: drain completions, then retry.
                        tries += 1;
                        self.reap();
                        if tries > 1 {
                            std::thread::yield_now();
                        }
                    }
                    _ => {
                        self.reap();
                        return Err(e);
                    }
                },
            }
        }
        self.reap();
        Ok(())
    }

    /// Dispatches every CQE in the completion queue.
    fn reap(&self) {
        let mut cqes = self.cqe_buf.take();
        cqes.clear();
        {
            let mut ring = self.uring.borrow_mut();
            cqes.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
        }
        if cqes.is_empty() {
            self.cqe_buf.replace(cqes);
            return;
        }
        let mut after = AfterReap::default();
        {
            let mut st = self.st.borrow_mut();
            for &(ud, res, flags) in &cqes {
                if ud == IGNORE {
                    continue;
                }
                if self.eventfd_ud.get() == Some(ud) {
                    self.eventfd_ud.set(None);
                }
                let (idx, gen) = split_ud(ud);
                let Some(slot) = st.slots.get_mut(idx) else {
                    continue;
                };
                if slot.gen != gen || slot.op.is_none() || slot.finished {
                    continue;
                }
                if slot.multishot {
                    let more = cqueue::more(flags);
                    if slot.orphan {
                        if let Some(op) = &slot.op {
                            after.cleanups.push(op.discard(res));
                        }
                    } else {
                        slot.results.push_back((res, flags));
                    }
                    if let Some(w) = slot.waker.take() {
                        after.wake.push(w);
                    }
                    if !more {
                        slot.finished = true;
                        slot.in_kernel = false;
                        if slot.orphan {
                            Self::free_slot(&mut st, idx, &mut after);
                        }
                    }
                    continue;
                }
                if cqueue::more(flags) {
                    // First CQE of a zero-copy send: the buffer is still in use until the
                    // notification arrives.
                    slot.first = Some(res);
                    continue;
                }
                let res = if cqueue::notif(flags) {
                    slot.first.take().unwrap_or(res)
                } else {
                    res
                };
                let chain = slot.chain.clone();
                let skipped_success = slot.implied.is_some();
                Self::finish(&mut st, idx, res, flags, &mut after);
                if let Some(chain) = chain {
                    Self::settle_chain(&mut st, &chain, ud, skipped_success, &mut after);
                }
            }
        }
        self.cqe_buf.replace(cqes);
        self.after(after);
    }

    /// A CQE arrived for chain member `ud`. Links run in order, so every earlier member that has
    /// not posted a CQE skipped it on success. If `ud` itself skips success CQEs, its CQE means it
    /// failed, and the kernel then skips the CQEs of every later (cancelled) member too.
    fn settle_chain(st: &mut State, chain: &[u64], ud: u64, skips: bool, after: &mut AfterReap) {
        let Some(pos) = chain.iter().position(|&u| u == ud) else {
            return;
        };
        for &m in &chain[..pos] {
            if let Some(idx) = Self::live_unfinished(st, m) {
                let res = st.slots[idx].implied.unwrap_or(0);
                Self::finish(st, idx, res, 0, after);
            }
        }
        if skips {
            for &m in &chain[pos + 1..] {
                if let Some(idx) = Self::live_unfinished(st, m) {
                    Self::finish(st, idx, -libc::ECANCELED, 0, after);
                }
            }
        }
    }

    fn live_unfinished(st: &State, ud: u64) -> Option<usize> {
        let (idx, gen) = split_ud(ud);
        let s = st.slots.get(idx)?;
        (s.gen == gen && s.op.is_some() && !s.finished).then_some(idx)
    }

    fn finish(st: &mut State, idx: usize, res: i32, flags: u32, after: &mut AfterReap) {
        let slot = &mut st.slots[idx];
        slot.finished = true;
        slot.in_kernel = false;
        let res = slot.forced.unwrap_or(res);
        slot.results.push_back((res, flags));
        if slot.orphan {
            if let Some(op) = &slot.op {
                after.cleanups.push(op.discard(res));
            }
            Self::free_slot(st, idx, after);
        } else if let Some(w) = slot.waker.take() {
            after.wake.push(w);
        }
    }

    fn after(&self, after: AfterReap) {
        for c in after.cleanups {
            self.run_cleanup(c);
        }
        drop(after.garbage);
        for w in after.wake {
            w.wake();
        }
    }

    fn run_cleanup(&self, c: Cleanup) {
        match c {
            Cleanup::None => {}
            Cleanup::CloseFd(fd) => {
                // SAFETY: the fd was produced by the kernel for an operation whose owner is gone;
                // nobody else knows it, so closing it cannot affect another owner.
                unsafe { libc::close(fd) };
            }
            Cleanup::CloseDirect(slot) => {
                let _ = self
                    .uring
                    .borrow()
                    .submitter()
                    .register_files_update(slot, &[-1]);
            }
        }
    }

    /// Polls the slot `ud`: its (final) result when finished, else registers the waker.
    pub(crate) fn poll_slot(
        &self,
        ud: u64,
        cx: &mut Context<'_>,
    ) -> Poll<(Box<dyn Parked>, i32, u32)> {
        let mut after = AfterReap::default();
        let r = {
            let mut st = self.st.borrow_mut();
            let (idx, gen) = split_ud(ud);
            match st.slots.get_mut(idx) {
                Some(slot) if slot.gen == gen && slot.op.is_some() => {
                    if slot.finished {
                        let (res, flags) =
                            slot.results.pop_front().unwrap_or((-libc::ECANCELED, 0));
                        let op = slot.op.take();
                        st.occupied -= 1;
                        Self::free_slot(&mut st, idx, &mut after);
                        match op {
                            Some(op) => Poll::Ready((op, res, flags)),
                            None => Poll::Pending,
                        }
                    } else {
                        match &slot.waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => slot.waker = Some(cx.waker().clone()),
                        }
                        Poll::Pending
                    }
                }
                _ => Poll::Pending,
            }
        };
        self.after(after);
        r
    }

    /// Polls a multishot slot for its next result. `Ready(None)` when it has terminated.
    pub(crate) fn poll_multishot(&self, ud: u64, cx: &mut Context<'_>) -> Poll<Option<(i32, u32)>> {
        let mut after = AfterReap::default();
        let r = {
            let mut st = self.st.borrow_mut();
            let (idx, gen) = split_ud(ud);
            match st.slots.get_mut(idx) {
                Some(slot) if slot.gen == gen && slot.op.is_some() => {
                    if let Some(r) = slot.results.pop_front() {
                        Poll::Ready(Some(r))
                    } else if slot.finished {
                        Self::free_slot(&mut st, idx, &mut after);
                        Poll::Ready(None)
                    } else {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
                _ => Poll::Ready(None),
            }
        };
        self.after(after);
        r
    }

    /// Takes back an operation that never reached the kernel.
    pub(crate) fn unpark(&self, ud: u64) -> Option<Box<dyn Parked>> {
        let mut after = AfterReap::default();
        let op = {
            let mut st = self.st.borrow_mut();
            let (idx, gen) = split_ud(ud);
            match st.slots.get_mut(idx) {
                Some(slot) if slot.gen == gen => {
                    let op = slot.op.take();
                    if op.is_some() {
                        st.occupied -= 1;
                    }
                    Self::free_slot(&mut st, idx, &mut after);
                    op
                }
                _ => None,
            }
        };
        self.after(after);
        op
    }

    /// Whether slot `ud` has finished (or no longer exists).
    pub(crate) fn is_finished(&self, ud: u64) -> bool {
        let st = self.st.borrow();
        let (idx, gen) = split_ud(ud);
        match st.slots.get(idx) {
            Some(s) if s.gen == gen && s.op.is_some() => s.finished,
            _ => true,
        }
    }

    pub(crate) fn set_waker(&self, ud: u64, w: &Waker) {
        let mut st = self.st.borrow_mut();
        let (idx, gen) = split_ud(ud);
        if let Some(s) = st.slots.get_mut(idx) {
            if s.gen == gen && s.op.is_some() {
                s.waker = Some(w.clone());
            }
        }
    }

    /// Takes the final result of a finished slot (batch API).
    pub(crate) fn take_finished(&self, ud: u64) -> Option<(Box<dyn Parked>, i32, u32)> {
        let mut after = AfterReap::default();
        let r = {
            let mut st = self.st.borrow_mut();
            let (idx, gen) = split_ud(ud);
            match st.slots.get_mut(idx) {
                Some(slot)
                    if slot.gen == gen && slot.op.is_some() && slot.finished && !slot.multishot =>
                {
                    let (res, flags) = slot.results.pop_front().unwrap_or((-libc::ECANCELED, 0));
                    let op = slot.op.take();
                    st.occupied -= 1;
                    Self::free_slot(&mut st, idx, &mut after);
                    op.map(|op| (op, res, flags))
                }
                _ => None,
            }
        };
        self.after(after);
        r
    }

    /// The owner of slot `ud` lost interest: clean up now if finished, else orphan it and ask the
    /// kernel to cancel it. `submitted` is false for a batch entry never written to the SQ.
    pub(crate) fn abandon(&self, ud: u64, submitted: bool) {
        let mut after = AfterReap::default();
        let mut cancel = false;
        {
            let mut st = self.st.borrow_mut();
            let (idx, gen) = split_ud(ud);
            if let Some(slot) = st.slots.get_mut(idx) {
                if slot.gen == gen && slot.op.is_some() {
                    if !submitted {
                        // Never reached the kernel: nothing can reference it.
                        Self::free_slot(&mut st, idx, &mut after);
                    } else {
                        if let Some(op) = &slot.op {
                            for &(res, _) in &slot.results {
                                after.cleanups.push(op.discard(res));
                            }
                        }
                        slot.results.clear();
                        if slot.finished {
                            Self::free_slot(&mut st, idx, &mut after);
                        } else {
                            slot.orphan = true;
                            slot.waker = None;
                            cancel = true;
                        }
                    }
                }
            }
        }
        self.after(after);
        if cancel && !self.closed.get() {
            let e = opcode::AsyncCancel::new(ud).build().user_data(IGNORE);
            let _ = self.push_entries(&[e]);
        }
    }

    /// Ensures the executor's eventfd has a read in flight, so a wake from another thread ends a
    /// blocking wait.
    fn arm_eventfd(&self, efd: RawFd) -> io::Result<()> {
        if self.eventfd_ud.get().is_some() || self.closed.get() {
            return Ok(());
        }
        let op = Box::new(EventfdRead {
            fd: efd,
            buf: Box::new([0u8; 8]),
        });
        let (ud, entry) = self.park(op, false);
        {
            let mut st = self.st.borrow_mut();
            let (idx, _) = split_ud(ud);
            st.slots[idx].orphan = true;
        }
        self.eventfd_ud.set(Some(ud));
        self.push_entries(&[entry])
    }

    fn in_flight(&self) -> Vec<u64> {
        let st = self.st.borrow();
        st.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.op.is_some() && !s.finished && s.in_kernel)
            .map(|(i, s)| ud_of(i as u32, s.gen))
            .collect()
    }

    /// Cancels everything and waits for every completion. Returns false (and leaks) if some
    /// operations never completed.
    fn shutdown(&self) -> bool {
        // Results finished but never claimed, and operations never submitted: release them.
        let idle: Vec<(u64, bool)> = {
            let st = self.st.borrow();
            st.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.op.is_some() && (s.finished || !s.in_kernel))
                .map(|(i, s)| (ud_of(i as u32, s.gen), s.finished))
                .collect()
        };
        for (ud, finished) in idle {
            self.abandon(ud, finished);
        }
        self.closed.set(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_cancel: Option<Instant> = None;
        loop {
            let live = self.in_flight();
            if live.is_empty() {
                return true;
            }
            if Instant::now() > deadline {
                break;
            }
            if last_cancel.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
                last_cancel = Some(Instant::now());
                {
                    let mut st = self.st.borrow_mut();
                    for &ud in &live {
                        let (idx, _) = split_ud(ud);
                        st.slots[idx].orphan = true;
                        st.slots[idx].waker = None;
                    }
                }
                for ud in live {
                    let e = opcode::AsyncCancel::new(ud).build().user_data(IGNORE);
                    if self.push_raw(&[e]).is_err() {
                        break;
                    }
                }
            }
            if self.flush(1, Some(Duration::from_millis(50))).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Some operations never completed: the kernel may still write their memory. Leak it.
        let mut st = self.st.borrow_mut();
        for s in st.slots.iter_mut() {
            if let Some(op) = s.op.take() {
                std::mem::forget(op);
            }
        }
        false
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.registered {
            // The registration is per thread; `Inner` is `!Send`, so this is the registering
            // thread. Without it the thread's table would keep the ring alive.
            let fd = self.uring.get_mut().as_raw_fd();
            let _ = sys::unregister_ring_fd(fd, self.enter_fd as u32);
        }
        // Normally `Ring::drop` drained everything. If anything is still with the kernel (it
        // could not be drained), leak it rather than free memory the kernel may write.
        let st = self.st.get_mut();
        for s in st.slots.iter_mut() {
            if s.op.is_some() && s.in_kernel && !s.finished {
                if let Some(op) = s.op.take() {
                    std::mem::forget(op);
                }
            }
        }
    }
}

/// Internal: the executor's eventfd read.
struct EventfdRead {
    fd: RawFd,
    buf: Box<[u8; 8]>,
}

// SAFETY: the SQE points at `buf`, a heap box owned by this operation.
unsafe impl Operation for EventfdRead {
    type Output = ();
    fn build(&mut self) -> squeue::Entry {
        opcode::Read::new(types::Fd(self.fd), self.buf.as_mut_ptr(), 8).build()
    }
    fn complete(self, _res: i32, _flags: u32) {}
}

/// A cheap, clonable handle to a ring: creates operations. Not `Send`: a ring belongs to the
/// thread that created it.
#[derive(Clone)]
pub struct Handle {
    pub(crate) inner: Rc<Inner>,
}

/// A direct descriptor slot (an index into the ring's registered file table). Returned to the
/// allocator on drop; a file still installed there is replaced by the next open into the slot.
pub struct DirectSlot {
    index: u32,
    table: Rc<RefCell<FileTable>>,
}

impl DirectSlot {
    /// The slot index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl Drop for DirectSlot {
    fn drop(&mut self) {
        self.table.borrow_mut().free.push(self.index);
    }
}

impl std::fmt::Debug for DirectSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectSlot({})", self.index)
    }
}

impl Handle {
    /// The features of this kernel and the setup mode of this ring.
    pub fn features(&self) -> &Features {
        &self.inner.features
    }

    /// Starts `op` lazily: it is submitted when the returned future is first polled.
    pub fn op<T: Operation>(&self, op: T) -> Op<T> {
        if T::MULTISHOT {
            // Multishot operations go through their streams; as a plain future the first result
            // would be reported and the rest discarded, which `Op` does not support.
        }
        Op {
            handle: self.clone(),
            state: OpState::Unsubmitted(Box::new(op)),
        }
    }

    /// A new batch (see [`Batch`]).
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }

    /// Submits queued SQEs and dispatches completions without blocking.
    pub fn submit(&self) -> io::Result<()> {
        self.inner.flush(0, None)
    }

    /// Submits queued SQEs and blocks until at least one completion was dispatched (with nothing
    /// in flight it waits forever: use [`Handle::submit`] to only poll).
    pub fn submit_and_wait(&self) -> io::Result<()> {
        self.inner.flush(1, None)
    }

    /// Creates (once) a sparse registered file table of `size` slots for direct descriptors.
    pub fn register_files(&self, size: u32) -> io::Result<()> {
        let mut t = self.inner.files.borrow_mut();
        if t.size != 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "file table already registered",
            ));
        }
        self.inner
            .uring
            .borrow()
            .submitter()
            .register_files_sparse(size)?;
        t.size = size;
        t.free = (0..size).rev().collect();
        Ok(())
    }

    /// Allocates a free direct descriptor slot.
    pub fn alloc_direct(&self) -> io::Result<DirectSlot> {
        let index = self.inner.files.borrow_mut().free.pop();
        match index {
            Some(index) => Ok(DirectSlot {
                index,
                table: self.inner.files.clone(),
            }),
            None => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "no free direct descriptor slot (register_files first, or free slots)",
            )),
        }
    }

    /// Registers `count` buffers of `size` bytes (once per ring) and returns their pool.
    pub fn register_buffers(&self, count: usize, size: usize) -> io::Result<BufPool> {
        if self.inner.pool.borrow().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "buffers already registered",
            ));
        }
        let mem = PoolMemory::new(count, size, self.inner.id)?;
        let iovecs = mem.iovecs();
        // SAFETY: the iovecs describe `mem`'s allocation, which stays alive as long as any
        // `BufPool` or `FixedBuf` exists; fixed operations can only name a buffer through a
        // `FixedBuf`, which holds the memory alive until its operation's final CQE.
        unsafe {
            self.inner
                .uring
                .borrow()
                .submitter()
                .register_buffers(&iovecs)
        }?;
        let pool = BufPool { mem };
        *self.inner.pool.borrow_mut() = Some(pool.clone());
        Ok(pool)
    }

    /// Caps io-wq worker threads: `[bounded, unbounded]` (0 leaves one unchanged). Returns the
    /// previous limits.
    pub fn set_iowq_max_workers(&self, bounded: u32, unbounded: u32) -> io::Result<[u32; 2]> {
        let mut v = [bounded, unbounded];
        self.inner
            .uring
            .borrow()
            .submitter()
            .register_iowq_max_workers(&mut v)?;
        Ok(v)
    }

    /// Whether `io_uring_enter` uses the registered ring fd (at most 16 per thread at a time).
    pub fn ring_fd_registered(&self) -> bool {
        self.inner.registered
    }

    /// Number of slab slots holding an operation (in flight or awaiting its owner).
    /// The executor's own eventfd read (armed while `block_on` waits) is not counted.
    pub fn ops_in_slab(&self) -> usize {
        let internal = usize::from(self.inner.eventfd_ud.get().is_some());
        self.inner.st.borrow().occupied.saturating_sub(internal)
    }
}

/// Options for building a [`Ring`].
#[derive(Clone, Debug)]
pub struct RingBuilder {
    entries: u32,
    files: u32,
    max_workers: Option<[u32; 2]>,
    register_ring_fd: bool,
    without: Vec<Opcode>,
    skip_success: bool,
}

impl Default for RingBuilder {
    fn default() -> Self {
        RingBuilder {
            entries: 256,
            files: 0,
            max_workers: None,
            register_ring_fd: true,
            without: Vec::new(),
            skip_success: true,
        }
    }
}

impl RingBuilder {
    /// Submission queue size (power of two, clamped by the kernel). Default 256.
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n.max(1);
        self
    }
    /// Creates a sparse registered file table of `n` slots (direct descriptors). Default 0.
    pub fn files(mut self, n: u32) -> Self {
        self.files = n;
        self
    }
    /// Caps io-wq workers `[bounded, unbounded]`.
    pub fn max_workers(mut self, bounded: u32, unbounded: u32) -> Self {
        self.max_workers = Some([bounded, unbounded]);
        self
    }
    /// Whether to register the ring fd (default yes, where supported).
    pub fn register_ring_fd(mut self, yes: bool) -> Self {
        self.register_ring_fd = yes;
        self
    }

    /// Treats `op` as unsupported by the kernel (layers above then use their fallback). For
    /// tests of degraded paths and for measurements.
    pub fn without(mut self, op: Opcode) -> Self {
        self.without.push(op);
        self
    }
    /// Whether to use skip-success CQEs where supported (default yes).
    pub fn skip_success(mut self, yes: bool) -> Self {
        self.skip_success = yes;
        self
    }

    /// Builds the ring.
    pub fn build(self) -> io::Result<Ring> {
        let features = Features::probe()?.clone();
        let entries = self.entries.next_power_of_two().min(32768);
        let (mut uring, setup) = build_ring_sized(entries)?;
        let fd = uring.as_raw_fd();
        let (enter_fd, registered) = if self.register_ring_fd && features.registered_ring_fd {
            match sys::register_ring_fd(fd) {
                Ok(i) => (i as i32, true),
                Err(_) => (fd, false),
            }
        } else {
            (fd, false)
        };
        let _ = uring.submission().capacity();
        let mut features = features;
        features.setup = setup;
        for op in &self.without {
            features.disable(*op);
        }
        features.skip_success &= self.skip_success;
        let inner = Rc::new(Inner {
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            uring: RefCell::new(uring),
            st: RefCell::new(State::default()),
            enter_fd,
            registered,
            features,
            closed: Cell::new(false),
            eventfd_ud: Cell::new(None),
            files: Rc::new(RefCell::new(FileTable {
                size: 0,
                free: Vec::new(),
            })),
            pool: RefCell::new(None),
            cqe_buf: RefCell::new(Vec::new()),
        });
        let handle = Handle { inner };
        if self.files > 0 && handle.features().sparse_files {
            handle.register_files(self.files)?;
        }
        if let Some([b, u]) = self.max_workers {
            if handle.features().iowq_max_workers {
                handle.set_iowq_max_workers(b, u)?;
            }
        }
        Ok(Ring {
            handle,
            exec: Executor::new()?,
            _not_send: PhantomData,
        })
    }
}

fn build_ring_sized(entries: u32) -> io::Result<(IoUring, SetupMode)> {
    build_ring(entries)
}

/// An io_uring instance plus its per-thread executor. Dereferences to [`Handle`] for operations.
///
/// Dropping the ring drops its spawned tasks, cancels every operation still in flight and waits
/// for all of them to complete; operations that never complete are leaked, never freed.
pub struct Ring {
    handle: Handle,
    exec: Executor,
    _not_send: PhantomData<*const ()>,
}

impl std::ops::Deref for Ring {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Ring {
    /// A ring with default options (256 entries, registered ring fd, best setup flags).
    pub fn new() -> io::Result<Ring> {
        RingBuilder::default().build()
    }

    /// Options for a ring.
    pub fn builder() -> RingBuilder {
        RingBuilder::default()
    }

    /// A clonable handle for use inside tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs `fut` (and spawned tasks) to completion on this thread, waiting in `io_uring_enter`
    /// when nothing is ready. Fails only if the ring itself fails (e.g. `io_uring_enter` errors).
    pub fn block_on<F: Future>(&self, fut: F) -> io::Result<F::Output> {
        self.exec.block_on(
            &RingPark {
                inner: &self.handle.inner,
            },
            fut,
        )
    }

    /// Spawns a task on this ring's executor; it runs during `block_on`.
    pub fn spawn_local<F: Future + 'static>(&self, fut: F) -> JoinHandle<F::Output> {
        self.exec.spawn_local(fut)
    }

    /// The executor (for sharing with other drivers).
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// A [`Park`] that waits on this ring.
    pub fn park(&self) -> RingPark<'_> {
        RingPark {
            inner: &self.handle.inner,
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.exec.clear();
        self.handle.inner.shutdown();
    }
}

/// Parks the executor inside `io_uring_enter`, with the executor's eventfd read armed.
pub struct RingPark<'a> {
    inner: &'a Inner,
}

impl Park for RingPark<'_> {
    fn poll(&self) -> io::Result<()> {
        self.inner.flush(0, None)
    }
    fn park(&self, eventfd: RawFd) -> io::Result<()> {
        self.inner.arm_eventfd(eventfd)?;
        self.inner.flush(1, None)
    }
}

enum OpState<T> {
    Unsubmitted(Box<T>),
    Submitted(u64),
    Done,
}

/// A future for one operation. Dropping it before completion cancels the operation; its
/// resources stay parked in the ring until the kernel is done with them.
#[must_use = "operations do nothing unless polled"]
pub struct Op<T: Operation> {
    handle: Handle,
    state: OpState<T>,
}

impl<T: Operation> Unpin for Op<T> {}

impl<T: Operation> Future for Op<T> {
    type Output = T::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = &mut *self;
        if let OpState::Unsubmitted(_) = this.state {
            let OpState::Unsubmitted(op) = std::mem::replace(&mut this.state, OpState::Done) else {
                return Poll::Pending;
            };
            let (ud, entry) = this.handle.inner.park(op, T::MULTISHOT);
            this.state = OpState::Submitted(ud);
            if let Err(e) = this.handle.inner.push_entries(&[entry]) {
                // Never reached the kernel: take the op back and complete it with the error.
                this.state = OpState::Done;
                let code = e.raw_os_error().unwrap_or(libc::EIO);
                if let Some(op) = this.handle.inner.unpark(ud) {
                    if let Ok(op) = op.into_any().downcast::<T>() {
                        return Poll::Ready(op.complete(-code, 0));
                    }
                }
                return Poll::Pending;
            }
        }
        match this.state {
            OpState::Submitted(ud) => match this.handle.inner.poll_slot(ud, cx) {
                Poll::Ready((op, res, flags)) => {
                    this.state = OpState::Done;
                    match op.into_any().downcast::<T>() {
                        Ok(op) => Poll::Ready(op.complete(res, flags)),
                        Err(_) => Poll::Pending,
                    }
                }
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Pending,
        }
    }
}

impl<T: Operation> Drop for Op<T> {
    fn drop(&mut self) {
        if let OpState::Submitted(ud) = self.state {
            self.handle.inner.abandon(ud, true);
        }
    }
}

/// Options for one SQE of a [`Batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqeOpts {
    /// Link to the next pushed operation (`IOSQE_IO_LINK`): it starts only if this one succeeds
    /// (a short read or write counts as failure), else it completes with `ECANCELED`.
    pub link: bool,
    /// Skip the success CQE (`IOSQE_CQE_SKIP_SUCCESS`) where supported. Only for linked,
    /// non-final members of a chain whose success result is known in advance; otherwise ignored.
    pub skip_success: bool,
    /// Start only after everything submitted before it completed (`IOSQE_IO_DRAIN`).
    pub drain: bool,
}

impl SqeOpts {
    /// Linked to the next operation.
    pub fn linked() -> SqeOpts {
        SqeOpts {
            link: true,
            ..SqeOpts::default()
        }
    }
    /// Linked, skipping the success CQE.
    pub fn linked_quiet() -> SqeOpts {
        SqeOpts {
            link: true,
            skip_success: true,
            drain: false,
        }
    }
}

/// A typed receipt for an operation pushed into a [`Batch`].
#[must_use]
pub struct Ticket<T> {
    ud: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({:#x})", self.ud)
    }
}

struct PendingSqe {
    entry: squeue::Entry,
    ud: u64,
    opts: SqeOpts,
    implied: Option<i32>,
}

/// The batch API: push many operations (optionally linked into chains), submit them with one
/// `io_uring_enter`, then reap all results. Dropping a batch with operations in flight cancels
/// them; their resources stay parked until the kernel is done.
pub struct Batch {
    handle: Handle,
    pending: Vec<PendingSqe>,
    /// Every slot of this batch not yet taken, with whether it reached the SQ.
    slots: Vec<(u64, bool)>,
}

impl Batch {
    fn new(handle: Handle) -> Batch {
        Batch {
            handle,
            pending: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Pushes a standalone operation.
    pub fn push<T: Operation>(&mut self, op: T) -> Ticket<T> {
        self.push_with(op, SqeOpts::default())
    }

    /// Pushes an operation with link/skip/drain options.
    pub fn push_with<T: Operation>(&mut self, op: T, opts: SqeOpts) -> Ticket<T> {
        let (ud, entry) = self.handle.inner.park(Box::new(op), T::MULTISHOT);
        let implied = {
            let st = self.handle.inner.st.borrow();
            let (idx, _) = split_ud(ud);
            st.slots[idx].op.as_ref().and_then(|o| o.success_result())
        };
        self.pending.push(PendingSqe {
            entry,
            ud,
            opts,
            implied,
        });
        self.slots.push((ud, false));
        Ticket {
            ud,
            _t: PhantomData,
        }
    }

    /// Number of operations pushed and not yet taken.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is pushed or everything was taken.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Writes pending SQEs to the ring (chains kept whole) and submits them.
    pub fn submit(&mut self) -> io::Result<()> {
        self.queue()?;
        self.handle.inner.flush(0, None)
    }

    /// Writes pending SQEs to the submission queue without entering the kernel: the next
    /// `io_uring_enter` (the executor's, or [`Handle::submit`]) submits them together with
    /// everything else queued meanwhile.
    pub fn queue(&mut self) -> io::Result<()> {
        let inner = &self.handle.inner;
        let skip_ok = inner.features.skip_success;
        let mut pending = std::mem::take(&mut self.pending);
        // An open chain at the end of the batch is closed here: the last entry is its tail.
        if let Some(last) = pending.last_mut() {
            last.opts.link = false;
        }
        let mut chain: Vec<squeue::Entry> = Vec::new();
        let mut chain_uds: Vec<u64> = Vec::new();
        for p in pending {
            let mut flags = squeue::Flags::empty();
            if p.opts.drain {
                flags |= squeue::Flags::IO_DRAIN;
            }
            if p.opts.link {
                flags |= squeue::Flags::IO_LINK;
                if p.opts.skip_success && skip_ok {
                    if let Some(r) = p.implied {
                        flags |= squeue::Flags::SKIP_SUCCESS;
                        let mut st = inner.st.borrow_mut();
                        let (idx, _) = split_ud(p.ud);
                        st.slots[idx].implied = Some(r);
                    }
                }
            }
            chain.push(p.entry.flags(flags));
            chain_uds.push(p.ud);
            if !p.opts.link {
                if chain_uds.len() > 1 {
                    let shared = Rc::new(chain_uds.clone());
                    let mut st = inner.st.borrow_mut();
                    for &ud in chain_uds.iter() {
                        let (idx, _) = split_ud(ud);
                        st.slots[idx].chain = Some(shared.clone());
                    }
                }
                inner.push_entries(&chain)?;
                for ud in chain_uds.drain(..) {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.0 == ud) {
                        s.1 = true;
                    }
                }
                chain.clear();
            }
        }
        Ok(())
    }

    /// Submits and blocks until every operation of the batch has completed.
    pub fn wait(&mut self) -> io::Result<()> {
        self.submit()?;
        while !self.all_finished() {
            self.handle.inner.flush(1, None)?;
        }
        Ok(())
    }

    fn all_finished(&self) -> bool {
        self.slots
            .iter()
            .all(|&(ud, _)| self.handle.inner.is_finished(ud))
    }

    /// Submits, then resolves when every operation has completed (for use inside tasks).
    /// Submitting right away (rather than only queueing, see [`Batch::queue`]) measured faster for
    /// small-file chains: io-wq starts on the first file while other tasks still build theirs.
    pub fn finished(&mut self) -> BatchFinished<'_> {
        let err = self.submit().err();
        BatchFinished {
            batch: self,
            err,
            next: 0,
        }
    }

    /// Takes the output of a completed operation. Gives the ticket back (`Err`) if the operation
    /// has not completed yet or the ticket belongs to another batch.
    pub fn take<T: Operation>(&mut self, t: Ticket<T>) -> Result<T::Output, Ticket<T>> {
        let Some(pos) = self.slots.iter().position(|s| s.0 == t.ud) else {
            return Err(t);
        };
        let Some((op, res, flags)) = self.handle.inner.take_finished(t.ud) else {
            return Err(t);
        };
        self.slots.swap_remove(pos);
        match op.into_any().downcast::<T>() {
            Ok(op) => Ok(op.complete(res, flags)),
            // Unreachable: a ticket's type is the type of the operation pushed for it.
            Err(_) => Err(t),
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for &(ud, submitted) in &self.slots {
            self.handle.inner.abandon(ud, submitted);
        }
    }
}

/// Future returned by [`Batch::finished`].
pub struct BatchFinished<'a> {
    batch: &'a mut Batch,
    err: Option<io::Error>,
    /// Slots before this index are known finished (the batch cannot change while borrowed).
    next: usize,
}

impl Future for BatchFinished<'_> {
    type Output = io::Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.err.take() {
            return Poll::Ready(Err(e));
        }
        // Wait on the first unfinished operation only: when it completes, the ones after it are
        // checked again. Registering the waker on every unfinished operation at every poll
        // would cost O(n^2) waker clones (and a wake per completion) for a batch of n.
        let this = &mut *self;
        let inner = &this.batch.handle.inner;
        while let Some(&(ud, _)) = this.batch.slots.get(this.next) {
            if !inner.is_finished(ud) {
                inner.set_waker(ud, cx.waker());
                return Poll::Pending;
            }
            this.next += 1;
        }
        Poll::Ready(Ok(()))
    }
}

/// A stream of accepted connections (multishot accept where supported, else one accept at a
/// time). Dropping it cancels the pending accept; connections accepted meanwhile are closed.
pub struct AcceptStream {
    handle: Handle,
    fd: Fd,
    ud: Option<u64>,
    multishot: bool,
}

impl AcceptStream {
    pub(crate) fn new(handle: Handle, fd: Fd) -> AcceptStream {
        let multishot = handle.features().multishot_accept;
        AcceptStream {
            handle,
            fd,
            ud: None,
            multishot,
        }
    }

    /// The next connection.
    pub async fn next(&mut self) -> io::Result<std::os::fd::OwnedFd> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<std::os::fd::OwnedFd>> {
        loop {
            let ud = match self.ud {
                Some(ud) => ud,
                None => {
                    let op: Box<dyn Parked> = if self.multishot {
                        Box::new(crate::op::AcceptMulti::new(self.fd))
                    } else {
                        Box::new(crate::op::Accept::new(self.fd))
                    };
                    let (ud, entry) = self.handle.inner.park(op, self.multishot);
                    if let Err(e) = self.handle.inner.push_entries(&[entry]) {
                        self.handle.inner.abandon(ud, false);
                        return Poll::Ready(Err(e));
                    }
                    self.ud = Some(ud);
                    ud
                }
            };
            if self.multishot {
                match self.handle.inner.poll_multishot(ud, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        self.ud = None; // terminated: re-arm
                        continue;
                    }
                    Poll::Ready(Some((res, _))) => {
                        if res == -libc::EINVAL {
                            // Kernel without multishot accept: fall back to single accepts.
                            self.handle.inner.abandon(ud, true);
                            self.ud = None;
                            self.multishot = false;
                            continue;
                        }
                        return Poll::Ready(fd_result(res));
                    }
                }
            } else {
                match self.handle.inner.poll_slot(ud, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready((_op, res, _)) => {
                        self.ud = None;
                        return Poll::Ready(fd_result(res));
                    }
                }
            }
        }
    }
}

impl Drop for AcceptStream {
    fn drop(&mut self) {
        if let Some(ud) = self.ud {
            self.handle.inner.abandon(ud, true);
        }
    }
}

pub(crate) fn fd_result(res: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if res < 0 {
        Err(errno(res))
    } else {
        // SAFETY: a non-negative result of open/accept is a new fd that nobody else owns.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(res) })
    }
}

impl Handle {
    /// Accepts connections on a listening socket as a stream.
    pub fn accept_stream(&self, fd: impl Into<Fd>) -> AcceptStream {
        AcceptStream::new(self.clone(), fd.into())
    }
}
