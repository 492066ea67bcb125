//! Thread-count setters of every runtime kind: a request above the budget is
//! clamped (one info line), then forwarded to the caller's own runtime copy.

use super::table::Hook;
use super::{call, fenced, take_caller, trampoline};
use crate::runtime::{self, Target};
use crate::stackbuf::Quoted;
use core::ffi::c_int;
use log::info;

/// Clamps `n` for the setter `name` called from `ret`. Returns where to forward
/// and the value to forward.
fn clamp(ret: usize, hook: Hook, n: i64) -> (Option<Target>, i64) {
    let settings = super::ensure();
    let name = hook.name();
    let Some(target) = super::target(ret, hook) else {
        return (None, n);
    };
    fenced((Some(target), n), || {
        let Some(s) = settings else {
            return (Some(target), n);
        };
        let budget = i64::from(s.cores());
        let copy = target.copy.and_then(runtime::copy);
        if let Some(c) = copy {
            c.stats.note_request(n.clamp(0, i64::from(u32::MAX)) as u32);
        }
        if n <= budget {
            return (Some(target), n);
        }
        if let Some(c) = copy {
            c.stats
                .clamped
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
        info!(
            "clamp symbol={} requested={} granted={} impl={} path={}",
            Quoted(name.to_bytes()),
            n,
            budget,
            copy.map_or("unknown", |c| c.imp.name()),
            Quoted(copy.map_or(&b""[..], |c| c.path())),
        );
        (Some(target), budget)
    })
}

/// Defines a setter hook `void name(T n)` (or `R name(T n)` returning `$zero`
/// when no runtime copy is bound: see `hooks::no_target`).
macro_rules! setter {
    ($name:ident, $body:ident, $arg:ty) => {
        setter!($name, $body, $arg, (), ());
    };
    ($name:ident, $body:ident, $arg:ty, $ret:ty, $zero:expr) => {
        unsafe extern "C-unwind" fn $body(n: $arg) -> $ret {
            let ret = take_caller();
            let (target, n) = clamp(ret, Hook::$name, n as i64);
            match target {
                Some(t) => call!(t.real, fn($arg) -> $ret, n as $arg),
                None => $zero,
            }
        }
        trampoline!($name => $body);
    };
}

/// `omp_set_num_threads(n)` sets this thread's nthreads ICV: clamped to the
/// budget, and remembered as the thread's promise (what its
/// `omp_get_max_threads()` answers and its regions without a clause get).
unsafe extern "C-unwind" fn omp_set_num_threads_hook(n: c_int) {
    let ret = take_caller();
    let (target, n) = clamp(ret, Hook::omp_set_num_threads, i64::from(n));
    if let Some(t) = target {
        call!(t.real, fn(c_int) -> (), n as c_int);
        if n >= 1 {
            super::grant::promise(n as u32);
            // The program chose its own number: the answer it was given
            // before holds nothing back from other askers any more.
            fenced((), super::grant::release_hold_back);
        }
    }
}
trampoline!(omp_set_num_threads => omp_set_num_threads_hook);
setter!(
    openblas_set_num_threads,
    openblas_set_num_threads_hook,
    c_int
);
setter!(
    openblas_set_num_threads64_,
    openblas_set_num_threads64_hook,
    c_int
);
setter!(
    scipy_openblas_set_num_threads,
    scipy_openblas_set_num_threads_hook,
    c_int
);
setter!(
    scipy_openblas_set_num_threads64_,
    scipy_openblas_set_num_threads64_hook,
    c_int
);
setter!(goto_set_num_threads, goto_set_num_threads_hook, c_int);
setter!(goto_set_num_threads64_, goto_set_num_threads64_hook, c_int);
setter!(
    scipy_goto_set_num_threads64_,
    scipy_goto_set_num_threads64_hook,
    c_int
);
setter!(
    scipy_goto_set_num_threads,
    scipy_goto_set_num_threads_hook,
    c_int
);
setter!(
    openblas_set_num_threads_local,
    openblas_set_num_threads_local_hook,
    c_int,
    c_int,
    0
);
setter!(MKL_Set_Num_Threads, mkl_upper_set_hook, c_int);
setter!(
    MKL_Set_Num_Threads_Local,
    mkl_upper_set_local_hook,
    c_int,
    c_int,
    0
);
setter!(
    bli_thread_set_num_threads,
    bli_thread_set_num_threads_hook,
    i64
);

/// A Fortran-style setter `R name(const int *n)`: MKL's lowercase
/// `mkl_set_num_threads` and `mkl_set_num_threads_local` in libmkl_rt are the
/// Fortran entry points (the C header maps the lowercase names to the
/// CamelCase C functions), so they take the count by reference. The clamped
/// value is passed through a pointer to our own copy: the caller's memory is
/// never written.
macro_rules! setter_ref {
    ($name:ident, $body:ident, $ret:ty, $zero:expr) => {
        unsafe extern "C-unwind" fn $body(n: *const c_int) -> $ret {
            let ret = take_caller();
            if n.is_null() {
                // Nothing to clamp: forward as it came.
                return match super::target(ret, Hook::$name) {
                    Some(t) => call!(t.real, fn(*const c_int) -> $ret, n),
                    None => $zero,
                };
            }
            // SAFETY: a non-null pointer to the caller's count, as the
            // Fortran ABI passes it.
            let asked = unsafe { n.read() };
            let (target, clamped) = clamp(ret, Hook::$name, i64::from(asked));
            let local: c_int = clamped as c_int;
            match target {
                Some(t) => call!(t.real, fn(*const c_int) -> $ret, &local),
                None => $zero,
            }
        }
        trampoline!($name => $body);
    };
}

setter_ref!(mkl_set_num_threads, mkl_set_num_threads_hook, (), ());
setter_ref!(
    mkl_set_num_threads_local,
    mkl_set_num_threads_local_hook,
    c_int,
    0
);
