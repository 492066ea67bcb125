//! Intel MKL through its single dynamic library `libmkl_rt`.

use super::kind::{Impl, Row};

pub const ROWS: &[Row] = &[Row {
    imp: Impl::Mkl,
    prefixes: &["libmkl_rt"],
    confirm: &[c"MKL_Get_Max_Threads"],
    get: &[c"MKL_Get_Max_Threads"],
    set: &[c"MKL_Set_Num_Threads"],
    model: &[],
}];
