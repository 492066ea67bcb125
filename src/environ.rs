//! Setting environment variables without the C heap.
//!
//! glibc's `setenv` takes its "NAME=value" string and a grown copy of the
//! `environ` array from malloc. In a program that allocates nothing else
//! (a C program that forks), those two blocks were the process's whole
//! heap: a mapping of its own, with its own page table, that every fork
//! copies. Measured on fork_cost (fork + _exit + waitpid, 24 interleaved
//! rounds of 500 forks, paired against an empty preload): +11.6 us per
//! fork with the shim's setenv calls, +5.0 and +0.8 us (two sets) with
//! this module. And an allocation at init is one more thing done before
//! `main` that a lock in malloc could stall.
//!
//! So the variables the shim exports at init are written here: the strings
//! go to a static buffer, and a new variable's pointer goes into a static
//! copy of the pointer array that `environ` then points to (assigning
//! `environ` is allowed to any program). glibc's own functions keep working
//! on it: `setenv` of another new variable copies the array to a block of
//! its own (it frees only arrays it allocated), `unsetenv` and a `setenv`
//! of an existing variable edit it in place. When the buffer or the array
//! is full, or another thread is setting a variable here at the same
//! moment, the call falls back to libc's `setenv`.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_char};
use core::sync::atomic::{AtomicBool, Ordering::*, fence};

/// Bytes for the "NAME=value" strings set here.
const TEXT: usize = 2048;
/// Pointers in our copy of the array (with its NULL): room for a large
/// environment; only the part in use is ever touched.
const SLOTS: usize = 4096;

#[repr(C)]
struct Store {
    /// First, so that a small environment's strings and pointers share a
    /// page.
    text: [u8; TEXT],
    used: usize,
    array: [*mut c_char; SLOTS],
}

struct Shared(UnsafeCell<Store>);
// SAFETY: written only under `BUSY`; the strings and the array, once
// published through `environ`, are only read or edited in place (by getenv,
// setenv, unsetenv), as glibc's own are.
unsafe impl Sync for Shared {}

static STORE: Shared = Shared(UnsafeCell::new(Store {
    text: [0; TEXT],
    used: 0,
    array: [core::ptr::null_mut(); SLOTS],
}));
static BUSY: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    /// glibc's `__environ` (`environ` is its alias).
    static mut environ: *mut *mut c_char;
}

/// `setenv(name, value, 1)` without the C heap when there is room (see the
/// module's doc). Like `setenv`, it is not safe against another thread
/// reading the environment at the same moment: call it at init.
pub fn set(name: &CStr, value: &CStr) {
    if BUSY.swap(true, Acquire) {
        fallback(name, value);
        return;
    }
    // SAFETY: BUSY is ours: no other call writes the store meanwhile.
    let done = unsafe { set_in_store(name.to_bytes(), value.to_bytes()) };
    BUSY.store(false, Release);
    if !done {
        fallback(name, value);
    }
}

fn fallback(name: &CStr, value: &CStr) {
    // SAFETY: NUL-terminated strings; setenv copies them.
    unsafe { libc::setenv(name.as_ptr(), value.as_ptr(), 1) };
}

/// True when `entry` ("NAME=value", NUL-terminated) sets `name`.
///
/// # Safety
/// `entry` points to a NUL-terminated string.
unsafe fn sets(entry: *const c_char, name: &[u8]) -> bool {
    // SAFETY: reading within the string: stops at its NUL, which differs
    // from every byte of a name (a CStr's bytes hold none) and from '='.
    unsafe {
        for (i, &b) in name.iter().enumerate() {
            if *entry.add(i) as u8 != b {
                return false;
            }
        }
        *entry.add(name.len()) as u8 == b'='
    }
}

/// # Safety
/// The caller holds `BUSY`; `environ` is NULL or a NULL-terminated array
/// of NUL-terminated strings (as the C library keeps it).
unsafe fn set_in_store(name: &[u8], value: &[u8]) -> bool {
    if name.is_empty() || name.contains(&b'=') {
        return false;
    }
    // SAFETY: BUSY held (see above): the only writer of the store.
    let st = unsafe { &mut *STORE.0.get() };
    let need = name.len() + 1 + value.len() + 1;
    if TEXT - st.used < need {
        return false;
    }
    // SAFETY: reading the environment array up to its NULL.
    let (env, n, found) = unsafe {
        let env = environ;
        let (mut n, mut found) = (0, None);
        while !env.is_null() && !(*env.add(n)).is_null() {
            if found.is_none() && sets(*env.add(n), name) {
                found = Some(n);
            }
            n += 1;
        }
        (env, n, found)
    };
    let ours = st.array.as_mut_ptr();
    if found.is_none() && n + 2 > SLOTS {
        return false;
    }
    let s = &mut st.text[st.used..st.used + need];
    s[..name.len()].copy_from_slice(name);
    s[name.len()] = b'=';
    s[name.len() + 1..need - 1].copy_from_slice(value);
    s[need - 1] = 0;
    let entry = s.as_mut_ptr().cast::<c_char>();
    st.used += need;
    // The string (and below, the array) is complete before a pointer to it
    // is published: a thread reading the environment meanwhile (getenv
    // takes no lock) follows the pointer to finished bytes on any CPU.
    fence(Release);
    match found {
        // SAFETY: index within the array (counted above); replacing a
        // pointer is what setenv does for an existing variable.
        Some(i) => unsafe { *env.add(i) = entry },
        None => {
            if env != ours {
                // SAFETY: n pointers read above; our array has room for
                // them, the new one and the NULL (checked above).
                unsafe { core::ptr::copy_nonoverlapping(env, ours, n) };
            }
            st.array[n] = entry;
            st.array[n + 1] = core::ptr::null_mut();
            fence(Release);
            // SAFETY: a NULL-terminated array of NUL-terminated strings that
            // lives as long as the process.
            unsafe { environ = ours };
        }
    }
    true
}
