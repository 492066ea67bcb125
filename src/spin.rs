//! The short spin settings, one row per variable (why and the measurements:
//! `exportenv::export_spin`). Two readers: the shim exports them at init, for
//! runtimes that load after it and for children; `parbudget run` sets them
//! before exec, so that a runtime linked into the program itself takes them
//! too (libgomp reads `GOMP_SPINCOUNT` in its own constructor, which runs
//! before the shim's: its `OMP_DISPLAY_ENV=VERBOSE` says 300000 under a bare
//! `LD_PRELOAD`). This file depends on nothing else of the shim: the
//! launcher, which never links the shim, includes it by path.

use core::ffi::CStr;

/// A variable set to `value` unless the user chose: any of `unless` set to a
/// non-empty value (an empty value means unset).
pub struct Spin {
    pub var: &'static CStr,
    pub value: &'static CStr,
    /// The variable itself first, then the wider settings that imply it.
    pub unless: &'static [&'static CStr],
    /// The `reason` of the shim's `env_set` line.
    pub reason: &'static str,
}

pub const SPIN: [Spin; 3] = [
    Spin {
        var: c"GOMP_SPINCOUNT",
        value: c"1000",
        unless: &[c"GOMP_SPINCOUNT", c"OMP_WAIT_POLICY"],
        reason: "idle GNU OpenMP workers must not spin on cores granted to others",
    },
    Spin {
        var: c"KMP_BLOCKTIME",
        value: c"1",
        unless: &[c"KMP_BLOCKTIME", c"OMP_WAIT_POLICY"],
        reason: "idle LLVM/Intel OpenMP workers must not spin on cores granted to others",
    },
    Spin {
        var: c"OPENBLAS_THREAD_TIMEOUT",
        value: c"16",
        unless: &[c"OPENBLAS_THREAD_TIMEOUT"],
        reason: "idle OpenBLAS workers must not spin on cores granted to OpenMP",
    },
];

/// Whether row `s` is to be set, given a reader of the environment that
/// answers whether a variable holds a non-empty value.
pub fn wanted(s: &Spin, is_set: impl Fn(&CStr) -> bool) -> bool {
    !s.unless.iter().any(|v| is_set(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_rows(set: &[&CStr]) -> Vec<&'static CStr> {
        SPIN.iter()
            .filter(|s| wanted(s, |v| set.contains(&v)))
            .map(|s| s.var)
            .collect()
    }

    #[test]
    fn each_row_yields_to_its_own_variable_and_a_wait_policy_to_the_openmp_rows_only() {
        let all = [
            c"GOMP_SPINCOUNT",
            c"KMP_BLOCKTIME",
            c"OPENBLAS_THREAD_TIMEOUT",
        ];
        assert_eq!(set_rows(&[]), all);
        assert_eq!(set_rows(&[c"GOMP_SPINCOUNT"]), all[1..]);
        assert_eq!(set_rows(&[c"OPENBLAS_THREAD_TIMEOUT"]), all[..2]);
        assert_eq!(set_rows(&[c"OMP_WAIT_POLICY"]), all[2..]);
        // Unrelated variables change nothing.
        assert_eq!(set_rows(&[c"OMP_NUM_THREADS", c"GOMP_CPU_AFFINITY"]), all);
    }
}
