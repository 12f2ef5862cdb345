//! A small per-thread executor: `block_on`, `spawn_local`, and wakers that work from any thread.
//!
//! Tasks live on the executor's thread. A waker (which is `Send`) pushes its task id onto a shared
//! queue and, if the executor is parked, writes to an eventfd. When the executor parks inside
//! `io_uring_enter`, a read of that eventfd is kept in flight in the ring, so a cross-thread wake
//! completes it and ends the wait. Without a ring the executor blocks in `read(eventfd)`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// How an executor waits for events when no task is ready.
pub trait Park {
    /// Processes pending events without blocking.
    fn poll(&self) -> io::Result<()>;
    /// Blocks until at least one event happened or `eventfd` became readable (a wake).
    fn park(&self, eventfd: RawFd) -> io::Result<()>;
}

/// Parks by blocking in `read(eventfd)`: for executors without a ring.
pub struct ThreadPark;

impl Park for ThreadPark {
    fn poll(&self) -> io::Result<()> {
        Ok(())
    }
    fn park(&self, eventfd: RawFd) -> io::Result<()> {
        let mut v = 0u64;
        loop {
            // SAFETY: reads 8 bytes into a live, properly aligned u64.
            let r = unsafe { libc::read(eventfd, (&mut v as *mut u64).cast(), 8) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

const MAIN: usize = usize::MAX;

pub(crate) struct Shared {
    ready: Mutex<VecDeque<usize>>,
    parked: AtomicBool,
    eventfd: OwnedFd,
}

impl Shared {
    fn push(&self, id: usize) {
        if let Ok(mut q) = self.ready.lock() {
            q.push_back(id);
        }
        // Pairs with the fence after `parked.store(true)`: either the executor sees our task in
        // the queue, or we see it parked and write the eventfd.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
    fn has_ready(&self) -> bool {
        self.ready.lock().map(|q| !q.is_empty()).unwrap_or(false)
    }
}

struct TaskWaker {
    id: usize,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.shared.push(self.id);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.push(self.id);
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct Core {
    shared: Arc<Shared>,
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// A per-thread executor. Not `Send`.
pub struct Executor {
    core: Rc<Core>,
}

impl Executor {
    /// A new executor (creates its wake eventfd).
    pub fn new() -> io::Result<Executor> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh eventfd that we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Executor {
            core: Rc::new(Core {
                shared: Arc::new(Shared {
                    ready: Mutex::new(VecDeque::new()),
                    parked: AtomicBool::new(false),
                    eventfd,
                }),
                tasks: RefCell::new(Vec::new()),
                free: RefCell::new(Vec::new()),
                live: Cell::new(0),
            }),
        })
    }

    /// Spawns a task; it runs while this executor runs `block_on`.
    pub fn spawn_local<F: Future + 'static>(&self, fut: F) -> JoinHandle<F::Output> {
        spawn_on(&self.core, fut)
    }

    /// Number of spawned tasks not yet finished.
    pub fn live_tasks(&self) -> usize {
        self.core.live.get()
    }

    /// Drops every spawned task.
    pub fn clear(&self) {
        let tasks = std::mem::take(&mut *self.core.tasks.borrow_mut());
        self.core.free.borrow_mut().clear();
        self.core.live.set(0);
        drop(tasks);
    }

    /// Runs `fut` to completion, running spawned tasks meanwhile and waiting through `park`.
    pub fn block_on<F: Future>(&self, park: &dyn Park, fut: F) -> io::Result<F::Output> {
        let _guard = CurrentGuard::enter(self.core.clone());
        let shared = &self.core.shared;
        let main_waker = Waker::from(Arc::new(TaskWaker {
            id: MAIN,
            shared: shared.clone(),
        }));
        let mut cx = Context::from_waker(&main_waker);
        let mut fut = std::pin::pin!(fut);
        let mut main_ready = true;
        loop {
            if main_ready {
                main_ready = false;
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return Ok(v);
                }
            }
            let batch: Vec<usize> = match shared.ready.lock() {
                Ok(mut q) => q.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            for id in batch {
                if id == MAIN {
                    main_ready = true;
                } else {
                    self.run_task(id);
                }
            }
            if main_ready {
                continue;
            }
            if shared.has_ready() {
                // More tasks became ready: dispatch completions (and submit) without blocking.
                park.poll()?;
                continue;
            }
            // Nothing ready: one blocking wait, which also submits what the tasks queued and
            // returns at once if completions are already there.
            shared.parked.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let r = if shared.has_ready() {
                Ok(())
            } else {
                park.park(shared.eventfd.as_raw_fd())
            };
            shared.parked.store(false, Ordering::SeqCst);
            r?;
        }
    }

    fn run_task(&self, id: usize) {
        let task = {
            let mut tasks = self.core.tasks.borrow_mut();
            match tasks.get_mut(id) {
                Some(t) => t.take(),
                None => None,
            }
        };
        let Some(mut task) = task else { return };
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            shared: self.core.shared.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        let done = task.as_mut().poll(&mut cx).is_ready();
        let mut tasks = self.core.tasks.borrow_mut();
        if done {
            drop(tasks);
            drop(task);
            self.core.free.borrow_mut().push(id);
            self.core.live.set(self.core.live.get().saturating_sub(1));
        } else if let Some(slot) = tasks.get_mut(id) {
            *slot = Some(task);
        }
    }
}

fn spawn_on<F: Future + 'static>(core: &Rc<Core>, fut: F) -> JoinHandle<F::Output> {
    let state = Rc::new(RefCell::new(JoinState {
        value: None,
        waker: None,
    }));
    let st2 = state.clone();
    let task: Task = Box::pin(async move {
        let v = fut.await;
        let mut s = st2.borrow_mut();
        s.value = Some(v);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    let id = {
        let mut tasks = core.tasks.borrow_mut();
        match core.free.borrow_mut().pop() {
            Some(id) if id < tasks.len() => {
                tasks[id] = Some(task);
                id
            }
            _ => {
                tasks.push(Some(task));
                tasks.len() - 1
            }
        }
    };
    core.live.set(core.live.get() + 1);
    core.shared.push(id);
    JoinHandle {
        state,
        _not_send: PhantomData,
    }
}

/// Spawns a task on the executor currently running `block_on` on this thread. Returns `None`
/// when called outside `block_on`.
pub fn spawn_local<F: Future + 'static>(fut: F) -> Option<JoinHandle<F::Output>> {
    CURRENT.with(|c| c.borrow().as_ref().map(|core| spawn_on(core, fut)))
}

struct CurrentGuard {
    prev: Option<Rc<Core>>,
}

impl CurrentGuard {
    fn enter(core: Rc<Core>) -> CurrentGuard {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(core));
        CurrentGuard { prev }
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

struct JoinState<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// Resolves to a spawned task's output. Dropping it detaches the task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
    _not_send: PhantomData<*const ()>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().value.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
