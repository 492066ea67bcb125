//! Leaving the process: at `exit` (an atexit handler) and at `_exit` (our
//! hook: Python's multiprocessing children end with `os._exit`, where atexit
//! handlers do not run), write the report and give our ledger share back.
//! Never in a vfork child: it shares our memory, our ledger slot included.

use super::fenced;
use crate::next::EXIT;
use crate::process;

fn on_exit(may_load: bool) {
    if process::is_foreign() {
        return;
    }
    // The exiting thread's lease first: the report then counts only threads
    // still in regions, and the leases of threads that are alive but idle.
    crate::ledger::release_lease();
    crate::report::write_now(may_load);
    crate::ledger::at_exit();
}

extern "C" fn at_exit() {
    fenced((), || on_exit(true));
}

/// Registers the exit handler (from our constructor).
pub fn install() {
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(at_exit) };
}

/// `_exit`: the report and the ledger share, then the real `_exit`. Without
/// a real `_exit` (never seen: glibc always has one) the raw syscall ends the
/// process, which is what `_exit` is.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn _exit(status: libc::c_int) -> ! {
    // Possibly inside a signal handler: nothing that takes the loader's lock.
    // Most `_exit`s (a forked child that ran no region, with no report to
    // write) have nothing to do: they are told by reads only, so such a child
    // writes no page of ours on its way out.
    let report = crate::init::ready().is_some_and(|s| s.report.is_some());
    if report || crate::ledger::holds_slot() {
        fenced((), || on_exit(false));
    }
    let real = EXIT.get();
    if real != 0 {
        // SAFETY: glibc's _exit, with its signature.
        unsafe { core::mem::transmute::<usize, extern "C" fn(libc::c_int) -> !>(real)(status) }
    }
    // SAFETY: exit_group ends the process; it never returns.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    unreachable!()
}
