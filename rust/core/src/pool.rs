//! motensor's own thread pool, safe to use again in a `fork()`ed child.
//!
//! rayon's global pool cannot be: its worker threads exist only in the process that started
//! them, so after `fork()` (Python's default `multiprocessing` start method on Linux, torch
//! `DataLoader` workers) the child holds a pool whose workers are gone, and the first parallel
//! call blocks forever waiting for them. huggingface/tokenizers answers the same problem by
//! turning its parallelism off in the child; motensor instead keeps its pool private, records
//! the id of the process that built it, and builds a fresh one when it is asked for from
//! another process. The stale pool of the parent is leaked on purpose: dropping it would try to
//! wake worker threads that do not exist in the child (a few kilobytes, once per fork).
//!
//! Everything parallel in the core runs inside [`install`], never on rayon's global pool.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct Owned {
    pid: u32,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<Owned>> = Mutex::new(None);

/// Threads the pool is built with: `MOTENSOR_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
/// number of cores the process may run on. Read at every (re)build, so a forked child may be
/// given its own count.
fn wanted_threads() -> usize {
    ["MOTENSOR_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|v| {
            std::env::var(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The pool of this process, built on first use and rebuilt after a fork.
pub fn pool() -> Arc<ThreadPool> {
    // The lock is held only to compare a pid and clone an Arc (or build the pool), so a fork
    // from another thread while it is held is as unlikely as for any allocator lock; a poisoned
    // lock (a panic while building) is recovered: the state is a plain Option.
    let mut slot = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some(o) = slot.as_ref() {
        if o.pid == pid {
            return o.pool.clone();
        }
    }
    if let Some(stale) = slot.take() {
        // Built by the parent: its threads do not exist here. Leak it (see the module docs).
        std::mem::forget(stale.pool);
    }
    let n = wanted_threads();
    let pool = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("motensor-{i}"))
        .build()
        // Fails only if the OS refuses threads: try with one before giving up.
        .or_else(|_| ThreadPoolBuilder::new().num_threads(1).build());
    // Not derived from any file: a process that cannot start a single thread is out of
    // resources, and rayon's own panic is the honest outcome.
    #[allow(clippy::expect_used)]
    let pool = Arc::new(pool.expect("motensor: cannot start a worker thread"));
    *slot = Some(Owned { pid, pool: pool.clone() });
    pool
}

/// Runs `f` inside this process's pool (parallel iterators in `f` use it).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Threads of this process's pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}
