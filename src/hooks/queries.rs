//! The OpenMP queries that code sizes its work by: `omp_get_max_threads()`
//! and `omp_get_thread_limit()`. They tell the truth about the budget, so
//! code that asks before it starts a region (scikit-learn's
//! `_openmp_effective_n_threads`, xgboost's thread count, torch's
//! `parallel_for`, MKL) requests a team that fits and then gets exactly what
//! it requested (see `grant` for the whole rule).

use super::table::Hook;
use super::{call, fenced, fork, grant, take_caller, trampoline};
use core::ffi::c_int;

/// `omp_get_max_threads()`: the first time a thread asks, what the ledger
/// would grant it then (never more than the runtime's own answer or the
/// budget), less what this process's threads were promised in the last
/// 100 ms (`grant::promise_new`); after that, the same answer, until the
/// thread calls `omp_set_num_threads` (the OpenMP contract: the nthreads ICV
/// changes only when the program sets it). A conforming program may size
/// per-thread buffers from one call and a region from another; an answer
/// that moved between the two would overflow its buffers (seen: xgboost in 4
/// Python threads corrupted its heap with answers that followed the ledger).
/// The answer is this thread's promise: its regions without a clause get
/// exactly that many. Inside a region whose nested regions would be inactive
/// the runtime's own answer stands.
unsafe extern "C-unwind" fn omp_get_max_threads_hook() -> c_int {
    let ret = take_caller();
    let settings = super::ensure();
    // Without a runtime, one thread is the truth (see `no_target`).
    let Some(t) = super::target(ret, Hook::omp_get_max_threads) else {
        return 1;
    };
    let own = call!(t.real, fn() -> c_int,);
    fenced(own, || {
        let Some(s) = settings else { return own };
        let copy = t.indexed_copy();
        if let Some((i, c)) = copy {
            if fork::serial_here(i) {
                // A forked child whose pool could not be freed: one thread.
                grant::promise(1);
                return 1;
            }
            if c.nested_inactive() {
                return own;
            }
        }
        if let Some(p) = grant::promised() {
            return p as c_int;
        }
        let want = (own.max(1) as u32).min(s.cores());
        let n = grant::promise_new(want);
        grant::promise(n);
        n as c_int
    })
}
trampoline!(omp_get_max_threads => omp_get_max_threads_hook);

/// `omp_get_thread_limit()`: the budget is the thread limit (1 in a forked
/// child whose pool could not be freed).
unsafe extern "C-unwind" fn omp_get_thread_limit_hook() -> c_int {
    let ret = take_caller();
    let settings = super::ensure();
    let Some(t) = super::target(ret, Hook::omp_get_thread_limit) else {
        return 1;
    };
    let own = call!(t.real, fn() -> c_int,);
    fenced(own, || {
        let Some(s) = settings else { return own };
        if t.copy.is_some_and(fork::serial_here) {
            return 1;
        }
        own.min(s.cores().min(c_int::MAX as u32) as c_int).max(1)
    })
}
trampoline!(omp_get_thread_limit => omp_get_thread_limit_hook);
