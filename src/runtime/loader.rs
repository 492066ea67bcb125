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

// ---------------------------------------------------------------------------
// The fork gate. `dl_iterate_phdr` holds the loader's write lock while it
// runs; a thread that forks while another of ours is inside it leaves that
// lock held in the child, whose first `dl_iterate_phdr` then waits forever
// (seen: a child of an 8-thread fork storm). So every walk of ours runs
// through `walk`, which counts itself in, and our atfork prepare handler
// closes the gate and waits for walks in flight to finish; parent and child
// handlers open it again. A walk that finds the gate closed is skipped (its
// caller treats that as "nothing new"), so nothing waits on a fork.
// ---------------------------------------------------------------------------

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// Walks in flight, and forks being prepared (several threads may fork at
/// once). A walk counts itself in, then backs off if a fork is being
/// prepared; a fork counts itself in, then waits for the walks to drain
/// (both sides use SeqCst, so one of them always sees the other).
fn walkers() -> &'static AtomicU32 {
    &crate::process::fork_words().walkers
}
fn forkers() -> &'static AtomicU32 {
    &crate::process::fork_words().forkers
}

/// Runs `dl_iterate_phdr(callback, data)` unless a fork is under way.
/// Returns false when it did not run.
///
/// # Safety
/// As `dl_iterate_phdr`: `callback` must be sound for `data`.
pub unsafe fn walk(
    callback: unsafe extern "C" fn(*mut libc::dl_phdr_info, usize, *mut c_void) -> libc::c_int,
    data: *mut c_void,
) -> bool {
    walkers().fetch_add(1, SeqCst);
    if forkers().load(SeqCst) != 0 {
        walkers().fetch_sub(1, SeqCst);
        return false;
    }
    // SAFETY: the caller's contract.
    unsafe { libc::dl_iterate_phdr(Some(callback), data) };
    walkers().fetch_sub(1, SeqCst);
    true
}

/// Atfork prepare: no new walk starts, and the walks in flight finish (they
/// are short: a walk of the loaded-object list calling our own callbacks).
pub fn close_for_fork() {
    forkers().fetch_add(1, SeqCst);
    while walkers().load(SeqCst) != 0 {
        core::hint::spin_loop();
    }
}

/// Atfork parent: this fork is done.
pub fn open_after_fork() {
    forkers().fetch_sub(1, SeqCst);
}

/// Atfork child: only the forking thread exists, so no walk is in flight
/// and no other fork is being prepared here.
pub fn reset_in_child() {
    if walkers().load(SeqCst) != 0 {
        walkers().store(0, SeqCst);
    }
    forkers().store(0, SeqCst);
}
