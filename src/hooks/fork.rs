//! Fork after GNU OpenMP.
//!
//! The hazard (measured with libgomp 12): a thread that was master
//! of a libgomp team with live workers keeps a pool whose workers do not exist
//! in a forked child; the child's next region on that thread waits for them
//! forever. It belongs to the thread and to the libgomp copy, and only the
//! team size at the region call defuses it. LLVM libomp and Intel libiomp5
//! reset themselves in their own atfork handlers and are safe.
//!
//! The fork protocol:
//!  1. While running, `regions` marks `master_of` (a bitmask of registry
//!     indices in this thread's `thread_state`) when this thread starts a
//!     libgomp team of 2+.
//!  2. `fork` (our hook, parent side, before the real fork), policy `fresh`:
//!     for each marked copy, `omp_pause_resource_all(omp_pause_hard)` in that
//!     copy frees this thread's pool (its workers exit). Paused copies are
//!     unmarked: the thread has no pool there any more, so the child builds a
//!     fresh one with a full team, and so does the parent's next region. The
//!     pause is refused inside a region (nesting level > 0), and a libgomp
//!     older than GCC 9 has no such function: those copies stay marked.
//!  3. The real fork; then, in the parent, one line per marked or paused copy:
//!     `info` when paused, `warn` for a fallback (or when numba's OpenMP layer
//!     is loaded: numba terminates forked children itself).
//!  4. atfork child handler (runs in the child, on the forking thread, for
//!     every fork including ones that bypass our hook): sets flags only —
//!     `serial = master_of` (the copies still marked), the registry writer
//!     flag cleared, the ledger reset to the budget minus what this thread
//!     holds. The fork gate's counts and our pid sit on a page the kernel
//!     wipes in the child (process::ForkWords), so a child that runs nothing
//!     writes no page of ours. No locks, no allocation, no calls into a
//!     runtime: libomp/libiomp5 hold their fork-join lock across fork, and
//!     calling them from here deadlocks.
//!  5. In the child, a region of a `serial` copy started on this thread runs
//!     as a team of one only where its body cannot have counted on more
//!     (`regions::serial_is_safe`); `omp_get_max_threads()` and
//!     `omp_get_thread_limit()` answer 1 there, so code that sizes itself
//!     asks for one. A region that counts on more exits the child with status
//!     70 and a message (a wrong answer is worse). Policy `abort` exits at the
//!     first region; `warn` forwards unchanged (and the child hangs). Threads
//!     the child creates later have empty thread-locals, so they get full
//!     teams; grandchildren inherit the bits and are protected the same way.
//!     vfork, posix_spawn and exec run no atfork handlers and start clean.

use super::fenced;
use crate::config::ForkPolicy;
use crate::next::FORK;
use crate::process;
use crate::runtime::{self, RuntimeCopy};
use crate::stackbuf::Quoted;
use crate::thread_state;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use log::{Level, error, log};

/// libgomp copies (bits) already warned about at warn level in this process:
/// a Pool(32) should print one warning, not 32; later forks log at info.
static WARNED: AtomicU64 = AtomicU64::new(0);

/// Some thread of this process was master of a libgomp team (so the child
/// handler reads the forking thread's `master_of` only then: a thread-local
/// access costs a forked child a page fault).
static ANY_MASTER: AtomicBool = AtomicBool::new(false);

pub fn mark_master(copy: usize) {
    if copy < 64 {
        thread_state::with(|t| t.master_of.set(t.master_of.get() | 1 << copy));
        if !ANY_MASTER.load(Relaxed) {
            ANY_MASTER.store(true, Relaxed);
        }
    }
}

pub fn serial_here(copy: usize) -> bool {
    copy < 64 && thread_state::with(|t| t.serial.get() & (1 << copy) != 0)
}

/// Called by `regions` for a region of a hazardous copy on the inherited
/// thread. `safe`: its body can run as a team of one.
pub fn child_region(copy: &RuntimeCopy, name: &core::ffi::CStr, safe: bool, requested: u32) {
    let policy = crate::init::ready().map_or(ForkPolicy::Fresh, |s| s.fork);
    if policy != ForkPolicy::Abort && !safe {
        error!(
            "fork_after_gomp_abort entry={} libgomp={} requested={} action=exit status=70 reason=\"this process was forked from a thread whose GNU OpenMP pool was not freed before fork (fork inside a region, a libgomp without omp_pause_resource_all, or PARBUDGET_FORK=serial); this region counts on {} threads, which would hang here, and one thread could compute a different result\" advice=\"fork outside parallel regions, or use the multiprocessing start method 'spawn' or 'forkserver'\"",
            Quoted(name.to_bytes()),
            Quoted(copy.path()),
            requested,
            requested
        );
        crate::report::write_now(false);
        // SAFETY: _exit ends the process without running handlers that might
        // block on the dead pool.
        unsafe { libc::_exit(70) };
    }
    if policy == ForkPolicy::Abort {
        error!(
            "fork_after_gomp_abort entry={} libgomp={} action=exit status=70 reason=\"this process was forked from a thread that had run a GNU OpenMP team; its regions would hang (PARBUDGET_FORK=abort)\"",
            Quoted(name.to_bytes()),
            Quoted(copy.path())
        );
        crate::report::write_now(false);
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

/// Prepare: no walk of the loader's object list may be in flight across the
/// fork (see runtime::loader's fork gate). Atomics only.
extern "C" fn prepare() {
    crate::runtime::loader::close_for_fork();
}

extern "C" fn parent() {
    crate::runtime::loader::open_after_fork();
}

extern "C" fn child() {
    // Flags only: see the protocol above.
    // Each reset below writes only where a value changes: a child copies
    // every page it writes, and most children (fork + exec, fork + _exit)
    // never run a region. The fork gate and the pid are wiped by the kernel
    // (process::ForkWords); the pid is recorded at the child's first
    // `process::pid()`, or here when the child has a report to write: its
    // exit tells itself from a vfork child sharing its memory by the
    // recorded pid (`process::is_foreign`), and a child that ran nothing
    // has not recorded one.
    if !process::fork_words_wiped() {
        crate::runtime::loader::reset_in_child();
        process::remember_pid();
    } else if crate::init::ready().is_some_and(|s| s.report.is_some()) {
        process::remember_pid();
    }
    let master_of = if ANY_MASTER.load(Relaxed) {
        thread_state::with(|t| t.master_of.get())
    } else {
        0
    };
    if master_of != 0 && child_protected() {
        thread_state::with(|t| t.serial.set(t.serial.get() | master_of));
    }
    runtime::reset_writer_in_child();
    let cores = crate::init::ready().map_or(1, |s| s.cap().cores);
    // What the forking thread holds: none when the process holds none
    // (read without the thread-local then).
    let held = if crate::ledger::held_by_process() == 0 {
        0
    } else {
        super::grant::held_here()
    };
    crate::ledger::reset_in_child(cores, held);
    super::threads::reset_in_child();
    crate::warnings::reset_in_child();
    if WARNED.load(Relaxed) != 0 {
        WARNED.store(0, Relaxed);
    }
}

pub fn install_atfork() {
    // Resolve the real fork and _exit now rather than inside a fork.
    crate::next::preresolve();
    process::remember_pid();
    if process::fork_words_wiped() {
        log::debug!("fork_words place=wipeonfork_page");
    } else {
        log::info!(
            "fork_words place=static reason=\"madvise(MADV_WIPEONFORK) refused (Linux before 4.14, or a seccomp filter)\" effect=\"each forked child resets the fork gate and records its pid in its atfork handler (one page copied per fork)\""
        );
    }
    // SAFETY: registers plain extern "C" functions that only touch atomics and
    // thread-locals.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Why a copy's pool was not freed before fork.
#[derive(Clone, Copy, Default)]
pub struct Paused {
    /// Copies whose pool on this thread was freed.
    pub done: u64,
    /// Copies without `omp_pause_resource_all` (libgomp before GCC 9).
    pub unsupported: u64,
    /// Copies that refused (the thread is inside a region).
    pub refused: u64,
}

/// Policy `fresh`, before the real fork: frees this thread's pool in every
/// libgomp copy it was master in (see the protocol above, step 2).
fn pause_pools(hazard: u64) -> Paused {
    let mut p = Paused::default();
    if crate::init::ready().is_none_or(|s| s.fork != ForkPolicy::Fresh) {
        return p;
    }
    for (i, c) in runtime::copies() {
        if i >= 64 || hazard & (1 << i) == 0 {
            continue;
        }
        match c.pause_hard() {
            Some(true) => {
                p.done |= 1 << i;
                thread_state::with(|t| t.master_of.set(t.master_of.get() & !(1 << i)));
            }
            Some(false) => p.refused |= 1 << i,
            None => p.unsupported |= 1 << i,
        }
    }
    p
}

/// True when numba's OpenMP threading layer is loaded: it terminates a
/// forked child itself ("fork() called from a process already using GNU
/// OpenMP"), whatever libgomp's state.
fn numba_omp_loaded() -> bool {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _: usize,
        data: *mut core::ffi::c_void,
    ) -> core::ffi::c_int {
        // SAFETY: glibc passes a valid info; `data` is our bool.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut bool)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a NUL-terminated loader string.
            let name = unsafe { core::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
            if name.windows(22).any(|w| w == b"numba/np/ufunc/omppool") {
                *found = true;
                return 1;
            }
        }
        0
    }
    let mut found = false;
    // SAFETY: the callback only reads the info and writes `found`.
    unsafe { crate::runtime::loader::walk(each, (&mut found as *mut bool).cast()) };
    found
}

fn warn_fork(child_pid: libc::pid_t, hazard: u64, paused: Paused) {
    let policy = crate::init::ready().map_or(ForkPolicy::Fresh, |s| s.fork);
    let numba = numba_omp_loaded();
    for (i, c) in runtime::copies() {
        if i >= 64 || hazard & (1 << i) == 0 {
            continue;
        }
        let bit = 1u64 << i;
        let mut e = crate::stackbuf::StackBuf::<512>::new();
        let fallback = if paused.done & bit != 0 {
            e.push_bytes(b"this thread's pool was freed before fork; the child and the parent build fresh pools with full teams");
            false
        } else {
            let why = if paused.refused & bit != 0 {
                "fork() inside a parallel region: the pool cannot be freed there; "
            } else if paused.unsupported & bit != 0 {
                "this libgomp has no omp_pause_resource_all (GCC < 9); "
            } else {
                ""
            };
            let what = match policy {
                ForkPolicy::Fresh | ForkPolicy::Serial => {
                    "the child runs this thread's OpenMP regions with 1 thread where their body allows it, and exits with status 70 at a region that counts on more threads"
                }
                ForkPolicy::Abort => {
                    "the child exits with status 70 at its first OpenMP region on this thread"
                }
                ForkPolicy::Warn => "the child will hang at its first OpenMP region on this thread",
            };
            e.push_bytes(why.as_bytes());
            e.push_bytes(what.as_bytes());
            true
        };
        if numba {
            // numba checks getppid() at its next parallel launch and raises
            // SIGTERM in the child, whatever libgomp's state: say that first.
            e.clear();
            e.push_bytes(b"numba's OpenMP threading layer is loaded: it terminates the child itself (SIGTERM, 'Terminating: fork() called from a process already using GNU OpenMP') at the child's first numba parallel region; the shim cannot prevent that");
        }
        let effect = core::str::from_utf8(e.as_bytes()).unwrap_or("?");
        let numba_note = if numba {
            "; for numba: NUMBA_THREADING_LAYER=workqueue or tbb, or the start method 'spawn' or 'forkserver'"
        } else {
            ""
        };
        let first = WARNED.fetch_or(bit, Relaxed) & bit == 0;
        let level = if (fallback || numba) && first {
            Level::Warn
        } else {
            Level::Info
        };
        {
            log!(
                level,
                "fork_after_gomp child={} libgomp={} policy={} effect=\"{}\" advice=\"this thread ran a GNU OpenMP team before fork(); the start methods 'spawn' and 'forkserver' avoid the hazard; PARBUDGET_FORK=fresh|serial|abort|warn chooses what the shim does{}\"",
                child_pid,
                Quoted(c.path()),
                policy.name(),
                effect,
                numba_note
            );
            crate::warnings::add_warning_fmt(
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

/// `fork`: frees the forking thread's libgomp pools first (policy fresh),
/// forks, and in the parent logs what it did (the protocol above).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let real = FORK.get();
    if real == 0 {
        super::no_target(FORK.name(), 0);
        // SAFETY: the raw system call is what fork is, minus atfork handlers.
        return unsafe { libc::syscall(libc::SYS_fork) } as libc::pid_t;
    }
    let hazard = thread_state::with(|t| t.master_of.get());
    let paused = if hazard != 0 {
        fenced(Paused::default(), || pause_pools(hazard))
    } else {
        Paused::default()
    };
    // SAFETY: glibc's fork, with its signature.
    let pid = unsafe { core::mem::transmute::<usize, extern "C" fn() -> libc::pid_t>(real)() };
    if pid > 0 && hazard != 0 {
        fenced((), || warn_fork(pid, hazard, paused));
    }
    pid
}
