//! The blocking thread pool: runs syscalls on worker threads and completes futures through wakers.
//!
//! One process-wide pool is shared by every runtime. A job owns everything it touches (it is a
//! `FnOnce + Send` closure), so dropping the future that waits for it never frees memory the
//! worker still uses: the worker finishes, and its result is dropped (an fd in it is closed).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    cv: Condvar,
}

struct Pool {
    queue: Arc<Queue>,
    threads: usize,
}

static POOL: OnceLock<Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let threads = std::env::var("ARSYNC_IO_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or((cpus * 4).clamp(4, 64));
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        });
        let mut started = 0;
        for i in 0..threads {
            let q = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("arsync-io-{i}"))
                .spawn(move || worker(q));
            if spawned.is_ok() {
                started += 1;
            }
        }
        Pool {
            queue,
            threads: started,
        }
    })
}

fn worker(q: Arc<Queue>) {
    loop {
        let job = {
            let Ok(mut jobs) = q.jobs.lock() else { return };
            loop {
                if let Some(j) = jobs.pop_front() {
                    break j;
                }
                jobs = match q.cv.wait(jobs) {
                    Ok(j) => j,
                    Err(_) => return,
                };
            }
        };
        job();
    }
}

/// Number of worker threads in the shared pool.
pub fn pool_threads() -> usize {
    pool().threads
}

struct Shared<T> {
    value: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
    done: bool,
}

/// A future for a job running on the pool.
pub struct Blocking<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

/// Runs `f` on the shared pool; the future resolves to its result.
pub fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Blocking<T> {
    let shared = Arc::new(Mutex::new(Shared {
        value: None,
        waker: None,
        done: false,
    }));
    let s2 = shared.clone();
    let job: Job = Box::new(move || {
        // A panicking job must not kill the worker or strand its future: the panic is carried
        // to the task that awaits it.
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let waker = match s2.lock() {
            Ok(mut s) => {
                s.value = Some(v);
                s.done = true;
                s.waker.take()
            }
            Err(_) => None,
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    let p = pool();
    if p.threads == 0 {
        // No worker could be started: run inline rather than never.
        job();
    } else if let Ok(mut jobs) = p.queue.jobs.lock() {
        jobs.push_back(job);
        p.queue.cv.notify_one();
    }
    Blocking { shared }
}

impl<T> Future for Blocking<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Ok(mut s) = self.shared.lock() else {
            return Poll::Pending;
        };
        match s.value.take() {
            Some(Ok(v)) => Poll::Ready(v),
            Some(Err(panic)) => {
                drop(s);
                std::panic::resume_unwind(panic)
            }
            None => {
                if !s.done {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
