//! OpenBLAS, in every renamed copy: Debian's `libopenblas.so.0` (and its
//! `libblas.so.3` alternative), numpy's `libscipy_openblas64_-<hash>.so`,
//! scipy's `libscipy_openblas-<hash>.so`. Thread-control symbols come with the
//! prefixes "" and "scipy_" and the suffixes "", "64_" and "_64".

use super::kind::{Impl, Row};

pub const ROWS: &[Row] = &[Row {
    imp: Impl::Openblas,
    prefixes: &["libopenblas", "libscipy_openblas", "libblas"],
    confirm: &[
        c"openblas_get_config",
        c"openblas_get_config64_",
        c"openblas_get_config_64",
        c"scipy_openblas_get_config",
        c"scipy_openblas_get_config64_",
        c"scipy_openblas_get_config_64",
    ],
    get: &[
        c"openblas_get_num_threads",
        c"openblas_get_num_threads64_",
        c"openblas_get_num_threads_64",
        c"scipy_openblas_get_num_threads",
        c"scipy_openblas_get_num_threads64_",
        c"scipy_openblas_get_num_threads_64",
    ],
    set: &[
        c"openblas_set_num_threads",
        c"openblas_set_num_threads64_",
        c"openblas_set_num_threads_64",
        c"scipy_openblas_set_num_threads",
        c"scipy_openblas_set_num_threads64_",
        c"scipy_openblas_set_num_threads_64",
    ],
    // 0 sequential, 1 pthreads, 2 OpenMP: only pthreads builds are sized per
    // call (hooks::blas); OpenMP builds go through the region hooks.
    model: &[
        c"openblas_get_parallel",
        c"openblas_get_parallel64_",
        c"openblas_get_parallel_64",
        c"scipy_openblas_get_parallel",
        c"scipy_openblas_get_parallel64_",
        c"scipy_openblas_get_parallel_64",
    ],
}];
