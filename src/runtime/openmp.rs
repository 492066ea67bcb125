//! OpenMP runtimes: GNU libgomp, LLVM libomp, Intel libiomp5.
//!
//! All three export the `omp_*` API and the `GOMP_*` region ABI (libomp and
//! libiomp5 implement it for gcc-compiled code), so the file name tells them
//! apart and `omp_get_max_threads` confirms.

use super::kind::{Impl, Row};

pub const ROWS: &[Row] = &[
    Row {
        imp: Impl::Libiomp,
        prefixes: &["libiomp"],
        confirm: &[c"omp_get_max_threads"],
        get: &[c"omp_get_max_threads"],
        set: &[c"omp_set_num_threads"],
        model: &[],
    },
    Row {
        imp: Impl::Libomp,
        prefixes: &["libomp"],
        confirm: &[c"omp_get_max_threads"],
        get: &[c"omp_get_max_threads"],
        set: &[c"omp_set_num_threads"],
        model: &[],
    },
    Row {
        imp: Impl::Libgomp,
        prefixes: &["libgomp"],
        confirm: &[c"GOMP_parallel", c"omp_get_max_threads"],
        get: &[c"omp_get_max_threads"],
        set: &[c"omp_set_num_threads"],
        model: &[],
    },
];
