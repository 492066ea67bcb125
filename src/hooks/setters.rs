//! Thread-count setters of every runtime kind: a request above the budget is
//! clamped (one info line), then forwarded to the caller's own runtime copy.

use super::{call, cname, fenced, take_caller, trampoline};
use crate::runtime::{self, Target};
use crate::stackbuf::Quoted;
use core::ffi::{CStr, c_int};
use log::{debug, info};

/// Clamps `n` for the setter `name` called from `ret`. Returns where to forward
/// and the value to forward.
fn clamp(ret: usize, hook: u8, name: &CStr, n: i64) -> (Option<Target>, i64) {
    let settings = crate::init::ensure();
    fenced((None, n), || {
        let target = runtime::resolve(ret, hook, name);
        let Some(target) = target else {
            debug!(
                "setter_unbound symbol={} requested={}",
                Quoted(name.to_bytes()),
                n
            );
            return (None, n);
        };
        let Some(s) = settings else {
            return (Some(target), n);
        };
        let budget = i64::from(s.budget.cores);
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
/// when no runtime copy is bound).
macro_rules! setter {
    ($id:expr, $name:ident, $body:ident, $arg:ty) => {
        setter!($id, $name, $body, $arg, (), ());
    };
    ($id:expr, $name:ident, $body:ident, $arg:ty, $ret:ty, $zero:expr) => {
        unsafe extern "C-unwind" fn $body(n: $arg) -> $ret {
            let ret = take_caller();
            let name = cname(concat!(stringify!($name), "\0"));
            let (target, n) = clamp(ret, $id, name, n as i64);
            match target {
                Some(t) => call!(t.real, fn($arg) -> $ret, n as $arg),
                None => $zero,
            }
        }
        trampoline!($name => $body);
    };
}

// Hook ids 1..=39 are the setters; each id names one exported symbol.
setter!(1, omp_set_num_threads, omp_set_num_threads_hook, c_int);
setter!(
    2,
    openblas_set_num_threads,
    openblas_set_num_threads_hook,
    c_int
);
setter!(
    3,
    openblas_set_num_threads64_,
    openblas_set_num_threads64_hook,
    c_int
);
setter!(
    4,
    openblas_set_num_threads_64,
    openblas_set_num_threads_64_hook,
    c_int
);
setter!(
    5,
    scipy_openblas_set_num_threads,
    scipy_openblas_set_num_threads_hook,
    c_int
);
setter!(
    6,
    scipy_openblas_set_num_threads64_,
    scipy_openblas_set_num_threads64_hook,
    c_int
);
setter!(
    7,
    scipy_openblas_set_num_threads_64,
    scipy_openblas_set_num_threads_64_hook,
    c_int
);
setter!(8, goto_set_num_threads, goto_set_num_threads_hook, c_int);
setter!(
    9,
    goto_set_num_threads64_,
    goto_set_num_threads64_hook,
    c_int
);
setter!(
    10,
    scipy_goto_set_num_threads64_,
    scipy_goto_set_num_threads64_hook,
    c_int
);
setter!(
    11,
    scipy_goto_set_num_threads,
    scipy_goto_set_num_threads_hook,
    c_int
);
setter!(
    12,
    openblas_set_num_threads_local,
    openblas_set_num_threads_local_hook,
    c_int,
    c_int,
    0
);
setter!(13, MKL_Set_Num_Threads, mkl_upper_set_hook, c_int);
setter!(14, mkl_set_num_threads, mkl_set_num_threads_hook, c_int);
setter!(
    15,
    MKL_Set_Num_Threads_Local,
    mkl_upper_set_local_hook,
    c_int,
    c_int,
    0
);
setter!(
    16,
    mkl_set_num_threads_local,
    mkl_set_num_threads_local_hook,
    c_int,
    c_int,
    0
);
setter!(
    17,
    bli_thread_set_num_threads,
    bli_thread_set_num_threads_hook,
    i64
);
setter!(
    18,
    flexiblas_set_num_threads,
    flexiblas_set_num_threads_hook,
    c_int
);
