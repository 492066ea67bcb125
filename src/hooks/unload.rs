//! `dlclose`: after the real one, every cached caller -> copy answer is made
//! stale (`runtime::objects_unloaded`), because another object may be loaded
//! at the address the unloaded one had. Runtime copies themselves are never
//! unloaded under the shim: the registry pins each with its own reference.
//! Interposing `dlclose` is safe where interposing `dlopen` is not: it takes
//! a handle, not the caller's identity (no `$ORIGIN` lookup depends on it).

use crate::next::{DLCLOSE, real_dlclose};
use core::ffi::{c_int, c_void};

/// # Safety
/// As glibc's `dlclose`: `handle` from `dlopen`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    if DLCLOSE.get() == 0 {
        super::no_target(DLCLOSE.name(), 0);
        return -1;
    }
    let r = real_dlclose(handle);
    crate::runtime::objects_unloaded();
    r
}
