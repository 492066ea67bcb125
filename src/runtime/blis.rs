//! BLIS (`libblis`), whose thread count is a `dim_t` (64-bit on LP64).

use super::kind::{Impl, Row};

pub const ROWS: &[Row] = &[Row {
    imp: Impl::Blis,
    prefixes: &["libblis"],
    confirm: &[c"bli_thread_get_num_threads"],
    get: &[c"bli_thread_get_num_threads"],
    set: &[c"bli_thread_set_num_threads"],
    model: &[],
}];
