//! Fork after GNU OpenMP.
//!
//! The hazard (measured, see FIELD-NOTES section 1): a thread that was master
//! of a libgomp team with live workers keeps a pool whose workers do not exist
//! in a forked child; the child's next region on that thread waits for them
//! forever. It belongs to the thread and to the libgomp copy, and only the
//! team size at the region call defuses it. LLVM libomp and Intel libiomp5
//! reset themselves in their own atfork handlers and are safe.
//!
//! The fork protocol:
//!  1. While running, `regions` marks `MASTER_OF` (thread-local bitmask of
//!     registry indices) when this thread starts a libgomp team of 2+.
//!  2. `fork` (our hook, parent side): after the real fork returns a child
//!     pid, if the forking thread's `MASTER_OF` is non-zero, warn with the
//!     child's pid and each libgomp path, and record it for the report.
//!  3. atfork child handler (runs in the child, on the forking thread, for
//!     every fork including ones that bypass our hook): sets flags only —
//!     `SERIAL = MASTER_OF`, the registry writer flag cleared, the ledger reset
//!     to the budget minus what this thread holds, our pid refreshed. No locks,
//!     no allocation, no calls into a runtime: libomp/libiomp5 hold their
//!     fork-join lock across fork, and calling them from here deadlocks.
//!  4. In the child, `regions` runs each region of a `SERIAL` copy started on
//!     this thread as a team of one (policy `serial`), exits with a message
//!     (`abort`), or forwards unchanged (`warn`). Threads the child creates
//!     later have empty thread-locals, so they get full teams; grandchildren
//!     inherit the bits and are protected the same way. vfork, posix_spawn and
//!     exec run no atfork handlers and start clean.

use crate::config::ForkPolicy;
use crate::runtime::{self, Copy};
use crate::stackbuf::Quoted;
use core::cell::Cell;
use core::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering::*};
use log::{Level, error, log};

thread_local! {
    static MASTER_OF: Cell<u64> = const { Cell::new(0) };
    static SERIAL: Cell<u64> = const { Cell::new(0) };
}

/// Fork states of this process.
pub const NORMAL: u8 = 0;
/// Between our prepare handler and the parent/child handlers.
pub const FORKING: u8 = 1;
/// A forked child (set by the child handler; stays set).
pub const CHILD: u8 = 2;
pub static STATE: AtomicU8 = AtomicU8::new(NORMAL);

/// Our pid as last known by init or the child handler. A process whose
/// `getpid()` differs is a vfork child sharing our memory: nothing may be
/// written there (see `report`).
pub static KNOWN_PID: AtomicI32 = AtomicI32::new(0);

/// libgomp copies (bits) already warned about at warn level in this process:
/// a Pool(32) should print one warning, not 32; later forks log at info.
static WARNED: AtomicU64 = AtomicU64::new(0);

pub fn mark_master(copy: usize) {
    if copy < 64 {
        MASTER_OF.with(|m| m.set(m.get() | 1 << copy));
    }
}

pub fn serial_here(copy: usize) -> bool {
    copy < 64 && SERIAL.with(|s| s.get() & (1 << copy) != 0)
}

/// Called by `regions` for a region of a hazardous copy on the inherited thread.
pub fn child_region(copy: &Copy, name: &core::ffi::CStr) {
    let policy = crate::init::ready().map_or(ForkPolicy::Serial, |s| s.fork);
    if policy == ForkPolicy::Abort {
        error!(
            "fork_after_gomp_abort entry={} libgomp={} action=exit status=70 reason=\"this process was forked from a thread that had run a GNU OpenMP team; its regions would hang (PARBUDGET_FORK=abort)\"",
            Quoted(name.to_bytes()),
            Quoted(copy.path())
        );
        crate::report::write_now();
        // SAFETY: _exit ends the process without running handlers that might
        // block on the dead pool.
        unsafe { libc::_exit(70) };
    }
}

/// True when the policy lets the child run regions on the inherited thread
/// as a team of one (serial or abort); false for `warn`.
fn child_protected() -> bool {
    crate::init::ready().is_none_or(|s| s.fork != ForkPolicy::Warn)
}

extern "C" fn prepare() {
    STATE.store(FORKING, Relaxed);
}

extern "C" fn parent() {
    STATE.store(NORMAL, Relaxed);
}

extern "C" fn child() {
    // Flags only: see the protocol above.
    if child_protected() {
        SERIAL.with(|s| s.set(s.get() | MASTER_OF.with(|m| m.get())));
    }
    runtime::reset_writer_in_child();
    let cores = crate::init::ready().map_or(1, |s| s.budget.cores);
    crate::ledger::reset_in_child(cores, super::grant::held_here());
    // SAFETY: getpid is async-signal-safe.
    KNOWN_PID.store(unsafe { libc::getpid() }, Relaxed);
    crate::hooks::threads::reset_in_child();
    crate::report::reset_in_child();
    WARNED.store(0, Relaxed);
    STATE.store(CHILD, Relaxed);
}

pub fn install_atfork() {
    // Resolve the real fork now rather than inside the first fork().
    let _ = redhook::real!(fork);
    crate::report::preresolve();
    // SAFETY: getpid has no preconditions.
    KNOWN_PID.store(unsafe { libc::getpid() }, Relaxed);
    // SAFETY: registers plain extern "C" functions that only touch atomics and
    // thread-locals.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

fn warn_fork(child_pid: libc::pid_t, hazard: u64) {
    let policy = crate::init::ready().map_or(ForkPolicy::Serial, |s| s.fork);
    let effect = match policy {
        ForkPolicy::Serial => {
            "the child runs OpenMP regions on this thread with 1 thread instead of hanging"
        }
        ForkPolicy::Abort => {
            "the child exits with status 70 at its first OpenMP region on this thread"
        }
        ForkPolicy::Warn => "the child will hang at its first OpenMP region on this thread",
    };
    for (i, c) in runtime::copies() {
        if i < 64 && hazard & (1 << i) != 0 {
            let first = WARNED.fetch_or(1 << i, Relaxed) & (1 << i) == 0;
            log!(
                if first { Level::Warn } else { Level::Info },
                "fork_after_gomp child={} libgomp={} policy={} effect=\"{}\" advice=\"this thread ran a GNU OpenMP team before fork(); use the multiprocessing start method 'spawn' or 'forkserver', or fork before the first parallel region; PARBUDGET_FORK=serial|abort|warn chooses what the child does\"",
                child_pid,
                Quoted(c.path()),
                policy.name(),
                effect
            );
            crate::report::add_warning_fmt(
                "fork_after_gomp",
                format_args!(
                    "fork() from a thread that ran a GNU OpenMP team ({}); child {} policy {}: {}",
                    Quoted(c.path()),
                    child_pid,
                    policy.name(),
                    effect
                ),
            );
        }
    }
}

redhook::hook! {
    unsafe fn fork() -> libc::pid_t => parbudget_fork {
        let hazard = MASTER_OF.with(|m| m.get());
        let pid = unsafe { redhook::real!(fork)() };
        if pid > 0 && hazard != 0 {
            // Fenced: redhook would call the real fork again if this panicked.
            crate::hooks::fenced((), || warn_fork(pid, hazard));
        }
        pid
    }
}
