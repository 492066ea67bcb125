//! Exports the budget to the environment, for runtimes that load later (they
//! read these at load: libgomp, libomp and numpy's OpenBLAS honour a value set
//! here) and for child processes.

use crate::stackbuf::{Quoted, StackBuf};
use crate::{config, environ};
use core::ffi::CStr;
use core::fmt::Write;
use log::info;

/// The pool-size variables we know users set.
pub const VARS: &[&CStr] = &[
    c"OMP_NUM_THREADS",
    c"OPENBLAS_NUM_THREADS",
    c"GOTO_NUM_THREADS",
    c"MKL_NUM_THREADS",
    c"BLIS_NUM_THREADS",
    c"VECLIB_MAXIMUM_THREADS",
    c"NUMEXPR_NUM_THREADS",
    c"NUMEXPR_MAX_THREADS",
    c"NUMBA_NUM_THREADS",
    c"POLARS_MAX_THREADS",
    c"RAYON_NUM_THREADS",
    c"TF_NUM_INTRAOP_THREADS",
    c"TF_NUM_INTEROP_THREADS",
];

/// What a variable should hold under the budget: `None` leaves it as it is.
/// A value the user set within the budget is kept; one above it is lowered
/// (a list, `OMP_NUM_THREADS=4,2`, one per nesting level, element by
/// element). An unset variable is set only when the budget is below
/// `default_threads`, the size the runtimes pick by themselves: exporting a
/// value that only restates that default would switch off tools that size
/// their workers when the variable is unset (joblib/loky gives each worker
/// `cpu_count() // n_jobs` then, but the parent's value when it is set).
pub fn clamp_value(
    current: Option<&[u8]>,
    budget: u32,
    default_threads: u32,
) -> Option<StackBuf<256>> {
    let mut out = StackBuf::<256>::new();
    let Some(cur) = current else {
        if budget >= default_threads {
            return None;
        }
        let _ = write!(out, "{budget}");
        return Some(out);
    };
    let mut changed = false;
    for (i, item) in cur.split(|b| *b == b',').enumerate() {
        if i > 0 {
            out.push_bytes(b",");
        }
        let t = item.trim_ascii();
        let n = (!t.is_empty() && t.len() < 10 && t.iter().all(u8::is_ascii_digit))
            .then(|| t.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')));
        match n {
            Some(n) if n >= 1 && n <= budget => out.push_bytes(t),
            _ => {
                changed = true;
                let _ = write!(out, "{budget}");
            }
        }
    }
    changed.then_some(out)
}

/// Idle workers that spin steal the cores the ledger granted to others.
///
/// libgomp spins 300,000 iterations before sleeping. Measured here (2 cores,
/// 4 processes x 10,000 short regions, medians of 3): 1.48x the
/// OMP_NUM_THREADS=1 oracle with the default spin, 1.12x with
/// GOMP_SPINCOUNT=1000, 1.10x with passive waiting; one right-sized process
/// ran 0.42 s either way with spin 1000, while passive waiting costs it 1.9x
/// to 4.6x.
///
/// OpenBLAS spins 2^28 cycles (OPENBLAS_THREAD_TIMEOUT=28). In the
/// CPU-waiting loop (numpy matmul, then 21 libgomp regions, x100; medians of
/// 7): 0.360 s under the shim with the default, 0.186 s with timeout 16,
/// against 0.248 s for OPENBLAS_NUM_THREADS=1 and 0.266 s for passive
/// waiting; a lone BLAS caller (8 x 60 matmuls 400x400) took 0.861 s with 16
/// against 0.863 s without the shim (timeout 4 cost it 24%).
///
/// LLVM libomp and Intel libiomp5 spin KMP_BLOCKTIME = 200 ms after a
/// region. 4 processes x 10,000 short regions of clang/libomp (paired runs,
/// medians of 5): 1.11x the OMP_NUM_THREADS=1 oracle under the shim with the
/// default, 0.996x with KMP_BLOCKTIME=1 (1.08x with 0: every region then
/// wakes its workers from sleep); 4 threads x 15,000 regions 1.06x and 1.03x;
/// one right-sized process of 50,000 tiny regions 0.991x of the default
/// without the shim.
///
/// So the three short spins (the rows of `spin::SPIN`) are exported, unless
/// the user chose a wait policy, spin count, block time or timeout. They
/// reach runtimes that load after us (numpy's OpenBLAS, ctypes-loaded
/// OpenMP), libomp and libiomp5 even when linked into the program (they read
/// the environment at their first region), and every child process. A
/// libgomp linked into the program has read its spin count before we run:
/// `parbudget run` sets the same rows before exec for it.
pub fn export_spin() {
    for s in &crate::spin::SPIN {
        if crate::spin::wanted(s, |v| config::getenv(v).is_some()) {
            environ::set(s.var, s.value);
            info!(
                "env_set var={} value={} reason=\"{}\"",
                s.var.to_str().unwrap_or("?"),
                Quoted(s.value.to_bytes()),
                s.reason
            );
        }
    }
}

/// Dask's Nanny sets `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and
/// `OPENBLAS_NUM_THREADS` to 1 in every worker it spawns (its
/// `distributed.nanny.pre-spawn-environ`), unless the variable is already in
/// the environment. When we leave those unset (the budget is what the
/// runtimes take by themselves), that static 1 would hold a lone task to one
/// thread; the ledger sizes every call instead. So the three entries are
/// unset (None) in Dask's configuration through its environment override,
/// a dict that Dask merges into its defaults (its per-key variables lowercase
/// their keys and cannot reach these), unless the user set the override or
/// any of the three variables.
const DASK_PRE_SPAWN: &CStr = c"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON";
const DASK_UNSET: &CStr =
    c"{'OMP_NUM_THREADS': None, 'MKL_NUM_THREADS': None, 'OPENBLAS_NUM_THREADS': None}";

fn export_dask() {
    let ours = [
        c"OMP_NUM_THREADS",
        c"MKL_NUM_THREADS",
        c"OPENBLAS_NUM_THREADS",
    ];
    if config::getenv(DASK_PRE_SPAWN).is_some() || ours.iter().any(|v| config::getenv(v).is_some())
    {
        return;
    }
    environ::set(DASK_PRE_SPAWN, DASK_UNSET);
    info!(
        "env_set var=DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON reason=\"Dask workers would get OMP/MKL/OPENBLAS_NUM_THREADS=1; the ledger sizes their calls instead\""
    );
}

pub fn export(budget: u32, default_threads: u32) {
    for var in VARS {
        let cur = config::getenv(var);
        if let Some(mut new) =
            clamp_value(cur.as_ref().map(|c| c.as_bytes()), budget, default_threads)
        {
            if let Some(old) = &cur {
                info!(
                    "env_lowered var={} from={} to={}",
                    var.to_str().unwrap_or("?"),
                    Quoted(old.as_bytes()),
                    Quoted(new.as_bytes())
                );
            }
            if let Some(v) = new.as_cstr() {
                environ::set(var, v);
            }
        }
    }
    export_dask();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clamp(v: Option<&str>, b: u32) -> Option<String> {
        clamp_value(v.map(str::as_bytes), b, 64)
            .map(|s| String::from_utf8(s.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn an_unset_variable_is_left_unset_when_the_budget_is_the_default() {
        assert_eq!(clamp_value(None, 8, 8).map(|s| s.len()), None);
        assert_eq!(clamp_value(None, 8, 4).map(|s| s.len()), None);
        assert_eq!(
            clamp_value(None, 2, 8).map(|s| s.as_bytes().to_vec()),
            Some(b"2".to_vec())
        );
        // A value set above the budget is lowered whatever the default.
        assert_eq!(
            clamp_value(Some(b"16"), 8, 8).map(|s| s.as_bytes().to_vec()),
            Some(b"8".to_vec())
        );
    }

    #[test]
    fn keeps_values_within_budget() {
        assert_eq!(clamp(Some("2"), 4), None);
        assert_eq!(clamp(Some("4"), 4), None);
        assert_eq!(clamp(Some("2,1"), 4), None);
    }

    #[test]
    fn lowers_values_above_budget_and_fills_unset() {
        assert_eq!(clamp(None, 3).as_deref(), Some("3"));
        assert_eq!(clamp(Some("64"), 2).as_deref(), Some("2"));
        assert_eq!(clamp(Some("8,4"), 2).as_deref(), Some("2,2"));
        assert_eq!(clamp(Some("0"), 2).as_deref(), Some("2"));
        assert_eq!(clamp(Some("lots"), 2).as_deref(), Some("2"));
        assert_eq!(clamp(Some("99999999999"), 2).as_deref(), Some("2"));
    }
}
