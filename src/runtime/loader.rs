//! Small questions to the dynamic loader: which object holds an address,
//! and a symbol in one object's scope.

use crate::stackbuf::StackBuf;
use core::ffi::{CStr, c_void};

/// The longest object path kept (longer ones are not registered).
pub const PATH_LEN: usize = 512;

/// The file of the object containing `addr` (for error lines).
pub fn object_name(addr: usize) -> StackBuf<PATH_LEN> {
    let mut out = StackBuf::new();
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads loader tables and fills `info`.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null() {
        // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
        out.push_bytes(unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes());
    }
    out
}

/// The load base of the object containing `addr`.
pub fn owner_base(addr: usize) -> Option<usize> {
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads loader tables and fills `info`.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 {
        return None;
    }
    Some(info.dli_fbase as usize)
}

/// `dlsym(name)` in the scope of the loaded object at `path` (0 if none).
/// The NOLOAD reference is dropped at once.
pub fn dlsym_in(path: Option<&CStr>, name: &CStr) -> usize {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return 0;
    };
    // SAFETY: NOLOAD maps nothing new; the handle is closed right away.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if h.is_null() {
        return 0;
    }
    // SAFETY: valid handle and name; then our reference is released.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) } as usize;
    crate::next::real_dlclose(h);
    p
}
