//! Conflict warnings between runtime copies, once per pair: two different
//! OpenMP runtimes in one process, several OpenBLAS copies, and (info only)
//! an OpenBLAS pthreads pool beside an OpenMP runtime.

use crate::runtime::{self, Impl, Kind};
use crate::stackbuf::Quoted;
use log::{info, warn};

/// Called when copy `new` is confirmed; compares it with every copy confirmed
/// before it, so each pair is considered exactly once.
pub fn check_new(new: usize) {
    let Some(b) = runtime::copy(new) else { return };
    for (i, a) in runtime::copies() {
        if i == new || !a.confirmed() {
            continue;
        }
        let (a, b) = (a, b);
        if a.imp.kind() == Kind::Openmp && b.imp.kind() == Kind::Openmp && a.imp != b.imp {
            let severe = matches!(
                (a.imp, b.imp),
                (Impl::Libomp, Impl::Libiomp) | (Impl::Libiomp, Impl::Libomp)
            );
            let advice = if severe {
                "libomp with libiomp5 is known to crash or deadlock; make every package use one OpenMP runtime (e.g. one conda/pip channel)"
            } else {
                "two OpenMP pools each size themselves to all cores and spin against each other; use packages built against one OpenMP runtime"
            };
            warn!(
                "conflict_openmp a={} a_path={} b={} b_path={} advice=\"{}\"",
                a.imp.name(),
                Quoted(a.path()),
                b.imp.name(),
                Quoted(b.path()),
                advice
            );
            crate::report::add_warning_fmt(
                "openmp_conflict",
                format_args!(
                    "two OpenMP runtimes: {} {} and {} {}; {}",
                    a.imp.name(),
                    Quoted(a.path()),
                    b.imp.name(),
                    Quoted(b.path()),
                    advice
                ),
            );
        } else if a.imp == Impl::Openblas && b.imp == Impl::Openblas {
            let advice = "each OpenBLAS copy has its own pool and thread limit; parbudget keeps their sum within the budget only when their calls pass through it";
            warn!(
                "conflict_openblas a_path={} b_path={} advice=\"{}\"",
                Quoted(a.path()),
                Quoted(b.path()),
                advice
            );
            crate::report::add_warning_fmt(
                "openblas_conflict",
                format_args!(
                    "two OpenBLAS copies: {} and {}; {}",
                    Quoted(a.path()),
                    Quoted(b.path()),
                    advice
                ),
            );
        } else if (a.imp == Impl::Openblas && b.imp.kind() == Kind::Openmp)
            || (b.imp == Impl::Openblas && a.imp.kind() == Kind::Openmp)
        {
            let (blas, omp) = if a.imp == Impl::Openblas {
                (a, b)
            } else {
                (b, a)
            };
            info!(
                "cpu_waiting_risk openblas_path={} openmp={} openmp_path={} advice=\"alternating BLAS and OpenMP phases let each pool's spinning workers starve the other; set OPENBLAS_THREAD_TIMEOUT or keep the budget small\"",
                Quoted(blas.path()),
                omp.imp.name(),
                Quoted(omp.path())
            );
            crate::report::add_warning_fmt(
                "cpu_waiting_risk",
                format_args!(
                    "OpenBLAS {} beside OpenMP {} {}",
                    Quoted(blas.path()),
                    omp.imp.name(),
                    Quoted(omp.path())
                ),
            );
        }
    }
}
