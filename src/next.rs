//! The one way the shim reaches the next definition of a libc symbol it
//! interposes (`pthread_create`, `fork`, `_exit`, `dlclose`): `dlsym(RTLD_NEXT)`,
//! resolved once and kept in an atomic. `preresolve` runs at init, so a
//! forked child's first `_exit` or a thread created inside a constructor never
//! pays a `dlsym` (which takes the loader's lock) on that path.
//!
//! These symbols are always present in glibc; if one were missing the hook
//! reports an error (see `hooks` for the policy) instead of panicking.

use core::ffi::CStr;
use core::sync::atomic::{AtomicUsize, Ordering::*};

pub struct Next {
    name: &'static CStr,
    ptr: AtomicUsize,
}

impl Next {
    pub const fn new(name: &'static CStr) -> Next {
        Next {
            name,
            ptr: AtomicUsize::new(0),
        }
    }

    /// The next definition's address (0 if there is none).
    pub fn get(&self) -> usize {
        let p = self.ptr.load(Acquire);
        if p != 0 {
            return p;
        }
        // SAFETY: RTLD_NEXT lookup of a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        self.ptr.store(p, Release);
        p
    }

    pub fn name(&self) -> &'static CStr {
        self.name
    }
}

pub static PTHREAD_CREATE: Next = Next::new(c"pthread_create");
pub static FORK: Next = Next::new(c"fork");
pub static EXIT: Next = Next::new(c"_exit");
pub static DLCLOSE: Next = Next::new(c"dlclose");

/// Resolves every libc symbol we interpose, at init.
pub fn preresolve() {
    for n in [&PTHREAD_CREATE, &FORK, &EXIT, &DLCLOSE] {
        let _ = n.get();
    }
}

/// glibc's own `dlclose`, for the shim's internal handles (our exported
/// `dlclose` would count them as unloads).
pub fn real_dlclose(handle: *mut core::ffi::c_void) -> i32 {
    let f = DLCLOSE.get();
    if f == 0 {
        return -1;
    }
    // SAFETY: glibc's dlclose, with its signature, on a handle we own.
    unsafe {
        core::mem::transmute::<usize, extern "C" fn(*mut core::ffi::c_void) -> i32>(f)(handle)
    }
}
