//! Conflicts between runtime copies, once per pair. Only a real hazard is a
//! warning: LLVM libomp beside Intel libiomp5 (known to crash or deadlock).
//! Several copies are normal in Python (scikit-learn, xgboost, torch each
//! ship a libgomp; numpy and scipy each ship an OpenBLAS) and the ledger
//! governs them all, so those are `info` lines and report entries. Split
//! bindings (one object bound to two copies) are warned where they are found
//! (runtime::resolve).

use crate::runtime::{self, Impl, Kind};
use crate::stackbuf::Quoted;
use log::info;

/// Compares each copy confirmed since the last call with every copy
/// confirmed before it, so each pair is considered exactly once.
#[inline]
pub fn check_pending() {
    if runtime::unchecked_pending() {
        check_now();
    }
}

#[cold]
#[inline(never)]
fn check_now() {
    let bits = runtime::take_unchecked();
    if bits == 0 {
        return;
    }
    for i in 0..64 {
        if bits & (1 << i) != 0 {
            check_new(i, bits);
        }
    }
}

/// Compares copy `new` with the confirmed copies that are not in `later`
/// (the batch being checked) or come before it in that batch.
fn check_new(new: usize, batch: u64) {
    let Some(b) = runtime::copy(new) else { return };
    for (i, a) in runtime::copies() {
        let in_batch = i < 64 && batch & (1 << i) != 0;
        if i == new || !a.confirmed() || (in_batch && i > new) {
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
            log::log!(
                if severe {
                    log::Level::Warn
                } else {
                    log::Level::Info
                },
                "conflict_openmp a={} a_path={} b={} b_path={} advice=\"{}\"",
                a.imp.name(),
                Quoted(a.path()),
                b.imp.name(),
                Quoted(b.path()),
                advice
            );
            crate::warnings::add_warning_fmt(
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
        } else if a.imp.kind() == Kind::Openmp && a.imp == b.imp {
            info!(
                "openmp_copies impl={} a_path={} b_path={} note=\"several vendored copies of one OpenMP runtime are normal in Python; the ledger sizes the regions of every copy\"",
                a.imp.name(),
                Quoted(a.path()),
                Quoted(b.path())
            );
        } else if a.imp == Impl::Openblas && b.imp == Impl::Openblas {
            let advice = "each OpenBLAS copy has its own pool and thread limit; parbudget sizes the calls of every copy from one ledger";
            info!(
                "conflict_openblas a_path={} b_path={} advice=\"{}\"",
                Quoted(a.path()),
                Quoted(b.path()),
                advice
            );
            crate::warnings::add_warning_fmt(
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
            crate::warnings::add_warning_fmt(
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
