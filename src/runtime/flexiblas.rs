//! FlexiBLAS, the BLAS switcher, which forwards thread counts to its backend.

use super::kind::{Impl, Row};

pub const ROWS: &[Row] = &[Row {
    imp: Impl::Flexiblas,
    prefixes: &["libflexiblas"],
    confirm: &[c"flexiblas_get_num_threads"],
    get: &[c"flexiblas_get_num_threads"],
    set: &[c"flexiblas_set_num_threads"],
    model: &[],
}];
