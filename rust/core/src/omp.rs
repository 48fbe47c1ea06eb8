//! The CPU kernels' parallel loops on the process's OpenMP team (torch's), where there is one.
//!
//! torch runs its CPU ops on an OpenMP team whose threads spin for a while after each op. A
//! decode step alternates torch ops with motensor's small products every few tens of
//! microseconds, so a second pool (rayon's) both sleeps between products (waking a worker costs
//! tens of microseconds, the length of the product) and competes for the cores with OpenMP's
//! spinning threads: measured on a 2-core machine, two rayon threads were no faster in a model
//! than one. Running the loops on torch's own team uses threads that are already awake, as every
//! ATen kernel does (`at::parallel_for`).
//!
//! The team is reached through `GOMP_parallel`, the libgomp ABI that GCC's `#pragma omp
//! parallel` compiles to (also exported by LLVM's and Intel's OpenMP runtimes), found with
//! `dlsym` among the process's global symbols (torch loads its OpenMP runtime globally). Where
//! it is absent (no torch, a torch without OpenMP), in a `fork()`ed child (libgomp's team does
//! not survive a fork; motensor's own pool does, see `pool.rs`; a process that imports motensor
//! marks its children through `pthread_atfork`), or with `MOTENSOR_CPU_POOL=rayon`, the loops run
//! on motensor's pool.

use std::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

struct Omp {
    parallel: Parallel,
    pid: u32,
}

static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Marks a `fork()`ed child of this process as one that must not use the OpenMP team (its
/// threads stayed in the parent; libgomp would wait for them). Called when the extension module
/// is loaded and before the first use, so that a child of a process that imported motensor (or
/// ran its kernels) keeps motensor's pool even if the team was first used by torch.
pub fn register_fork_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: registers a handler that only stores to an atomic (async-signal-safe), run
        // in the child after fork; no other state is touched.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

fn omp() -> Option<&'static Omp> {
    register_fork_handler();
    if FORKED.load(Ordering::Relaxed) {
        return None;
    }
    static OFF: OnceLock<bool> = OnceLock::new();
    static FOUND: OnceLock<Omp> = OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("MOTENSOR_CPU_POOL").unwrap_or_default().trim().eq_ignore_ascii_case("rayon")) {
        return None;
    }
    let found = match FOUND.get() {
        Some(o) => o,
        None => {
            // Looked up again until found: the runtime appears when torch is imported.
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the process's
            // symbol tables; a non-null result is the address of `GOMP_parallel`, whose C
            // signature (libgomp's ABI since GCC 4.9) is `Parallel`.
            let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
            if sym.is_null() {
                return None;
            }
            let parallel = unsafe { std::mem::transmute::<*mut c_void, Parallel>(sym) };
            FOUND.get_or_init(|| Omp { parallel, pid: std::process::id() })
        }
    };
    (found.pid == std::process::id()).then_some(found)
}

/// Whether the loops run on the OpenMP team here (this process found one, not forked since).
pub fn available() -> bool {
    omp().is_some()
}

struct Job<'a> {
    work: &'a (dyn Fn() + Sync),
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `Job` `run` passed to GOMP_parallel, alive until it returns (it
    // returns only after every thread of the team has left this function).
    let job = unsafe { &*(data as *const Job) };
    // A panic must not unwind into C: caught here, re-raised by `run` on the calling thread.
    if let Err(p) = catch_unwind(AssertUnwindSafe(job.work)) {
        *job.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }
}

/// The team size: `MOTENSOR_NUM_THREADS` where set (as for motensor's pool), else 0, the size
/// the runtime would use (`torch.set_num_threads` sets it).
fn team_size() -> c_uint {
    static N: OnceLock<c_uint> = OnceLock::new();
    *N.get_or_init(|| std::env::var("MOTENSOR_NUM_THREADS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// Runs `work` on every thread of the OpenMP team (the caller included) and returns true, or
/// returns false without running it where there is no team (then the caller uses its pool).
pub fn run(work: &(dyn Fn() + Sync)) -> bool {
    let Some(o) = omp() else { return false };
    let job = Job { work, panic: Mutex::new(None) };
    // SAFETY: `trampoline` has the C signature GOMP_parallel calls; `job` outlives the call.
    unsafe { (o.parallel)(trampoline, &job as *const Job as *mut c_void, team_size(), 0) };
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
    true
}
