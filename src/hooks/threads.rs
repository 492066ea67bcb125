//! `pthread_create`: every new thread is attributed to the object that created
//! it (a runtime copy, or "other": the program, libpython, any other library),
//! and counted created/live/peak. The thread's end (return, `pthread_exit`,
//! cancellation) is seen through a pthread key destructor, which runs in all
//! three cases.
//!
//! This runs on every thread creation of the host: it never fails a creation
//! that would have succeeded (if our wrapper cannot be allocated the thread
//! starts unwrapped and is only counted as created) and never calls into a
//! runtime (the creator may be a runtime inside its own initialisation).

use super::{take_caller, trampoline};
use crate::runtime::{self, OTHER, Stats};
use crate::stackbuf::Quoted;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering::*};
use log::debug;

type StartFn = extern "C" fn(*mut c_void) -> *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    StartFn,
    *mut c_void,
) -> i32;

/// What the wrapper hands to the new thread.
#[repr(C)]
struct Launch {
    start: StartFn,
    arg: *mut c_void,
    /// Registry index + 1, or 0 for "other".
    owner: usize,
}

const LAUNCH: core::alloc::Layout = core::alloc::Layout::new::<Launch>();

/// Key whose destructor sees each wrapped thread end. Created once; 0 = not yet.
static KEY: AtomicU32 = AtomicU32::new(u32::MAX);

fn stats_of(owner: usize) -> &'static Stats {
    owner
        .checked_sub(1)
        .and_then(runtime::copy)
        .map_or(&OTHER, |c| &c.stats)
}

extern "C" fn thread_ended(value: *mut c_void) {
    // Saturating: in a forked child the counters restarted at 0, and a thread
    // created before the fork may end there.
    let _ = stats_of(value as usize - 1)
        .threads_live
        .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    // Its ledger cell goes back to the process for the next thread, and
    // what its promise held back from other askers.
    super::fenced((), || {
        crate::ledger::release_cell();
        super::grant::release_hold_back();
    });
}

fn key() -> Option<libc::pthread_key_t> {
    let k = KEY.load(Acquire);
    if k != u32::MAX {
        return Some(k);
    }
    let mut new: libc::pthread_key_t = 0;
    // SAFETY: creates a key with a plain extern "C" destructor.
    if unsafe { libc::pthread_key_create(&mut new, Some(thread_ended)) } != 0 {
        return None;
    }
    match KEY.compare_exchange(u32::MAX, new, AcqRel, Acquire) {
        Ok(_) => Some(new),
        Err(winner) => {
            // SAFETY: our key lost the race and was never used.
            unsafe { libc::pthread_key_delete(new) };
            Some(winner)
        }
    }
}

extern "C" fn launch(p: *mut c_void) -> *mut c_void {
    // SAFETY: `p` is the Launch the creator allocated (`launch_box`); the new
    // thread owns it now.
    let Launch { start, arg, owner } = unsafe { core::ptr::read(p as *const Launch) };
    // SAFETY: freeing our own allocation, with the layout it was made with.
    unsafe { std::alloc::dealloc(p.cast(), LAUNCH) };
    if let Some(k) = key() {
        // owner + 1 so the value is never NULL (destructors skip NULL values).
        // SAFETY: setting this thread's value of our key.
        unsafe { libc::pthread_setspecific(k, (owner + 1) as *const c_void) };
    }
    start(arg)
}

/// True on the process's main thread, whose thread id is the pid.
fn on_main_thread() -> bool {
    // gettid() through syscall(2): glibc's wrapper is 2.30+, the wheel's
    // floor is 2.17.
    // SAFETY: SYS_gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid == i64::from(crate::process::pid())
}

fn real_create() -> Option<CreateFn> {
    let r = crate::next::PTHREAD_CREATE.get();
    // SAFETY: the symbol has pthread_create's signature.
    (r != 0).then(|| unsafe { core::mem::transmute::<usize, CreateFn>(r) })
}

unsafe extern "C" fn pthread_create_hook(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartFn,
    arg: *mut c_void,
) -> i32 {
    let ret = take_caller();
    let Some(real) = real_create() else {
        // No pthread_create to forward to (see `hooks::no_target`): the
        // creation fails as resource exhaustion would.
        super::no_target(crate::next::PTHREAD_CREATE.name(), ret);
        return libc::EAGAIN;
    };
    let _ = crate::init::ensure();
    let owner = super::fenced(0, || {
        // No dladdr/dlopen here: see runtime::refresh_light.
        runtime::refresh_light();
        let owner = runtime::copy_containing(ret).map_or(0, |i| i + 1);
        // The program's main thread (not a runtime filling its pool) starts
        // a thread: a main thread that asked omp_get_max_threads() and now
        // starts threads hands its work on, and its promise stops holding
        // back theirs. Another thread that starts threads keeps its hold-back:
        // it is a worker with helpers of its own and runs its regions itself
        // after them (scikit-learn's HistGradientBoosting asks, bins its data
        // on a joblib thread pool, then runs OpenMP; releasing there let the
        // next askers see the whole budget: 4 threads promised 2 each, 1.27x
        // of loky's rule on 2 cores).
        if owner == 0 && on_main_thread() {
            super::grant::release_hold_back();
        }
        owner
    });
    let stats = stats_of(owner);
    let live = stats.threads_live.fetch_add(1, Relaxed) + 1;
    // From the shim's own heap (crate::arena), not the program's: libgomp
    // starts its workers inside its first region, between its own
    // allocations of the team, whose layout must stay as without the shim.
    // SAFETY: a non-zero layout; checked for NULL.
    let launch_box = unsafe { std::alloc::alloc(LAUNCH) } as *mut Launch;
    let r = if launch_box.is_null() {
        stats.threads_live.fetch_sub(1, Relaxed);
        // SAFETY: forwarding the caller's own arguments.
        unsafe { real(thread, attr, start, arg) }
    } else {
        // SAFETY: launch_box is a fresh allocation of the right size.
        unsafe { launch_box.write(Launch { start, arg, owner }) };
        // SAFETY: forwarding with our launcher; it frees launch_box.
        let r = unsafe { real(thread, attr, launch, launch_box.cast()) };
        if r != 0 {
            // SAFETY: the thread was not created, so the box is still ours.
            unsafe { std::alloc::dealloc(launch_box.cast(), LAUNCH) };
            stats.threads_live.fetch_sub(1, Relaxed);
        }
        r
    };
    if r == 0 {
        stats.threads_created.fetch_add(1, Relaxed);
        stats.threads_peak.fetch_max(live, Relaxed);
        if log::log_enabled!(log::Level::Debug) {
            let copy = owner.checked_sub(1).and_then(runtime::copy);
            debug!(
                "thread_created runtime={} path={} live={}",
                copy.map_or("other", |c| c.imp.name()),
                Quoted(copy.map_or(&b""[..], |c| c.path())),
                live
            );
        }
    }
    r
}
trampoline!(pthread_create => pthread_create_hook);

/// In a forked child only the forking thread exists and the report describes
/// the child: every counter restarts (the thread itself is counted nowhere).
pub fn reset_in_child() {
    OTHER.reset();
    for (_, c) in runtime::copies() {
        c.stats.reset();
    }
}
