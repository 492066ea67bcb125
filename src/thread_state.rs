//! This thread's own state, in one thread-local block. A region's hot path
//! reads and writes several of these; in a shared library every thread-local
//! is reached through a call of `__tls_get_addr`, and one block lets the
//! compiler reach them all through one address.

use core::cell::Cell;

pub struct ThreadState {
    /// boundary: true while this thread runs our own bookkeeping.
    pub in_hook: Cell<bool>,
    /// grant: threads this thread holds in the ledger (itself and extras).
    pub held: Cell<u32>,
    /// grant: the team `omp_get_max_threads()` last promised (0: none).
    pub promised: Cell<u32>,
    /// fork: libgomp copies (bits) whose team this thread leads.
    pub master_of: Cell<u64>,
    /// fork: copies (bits) whose regions run serially on this thread (a
    /// forked child whose pool could not be freed first).
    pub serial: Cell<u64>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            in_hook: Cell::new(false),
            held: Cell::new(0),
            promised: Cell::new(0),
            master_of: Cell::new(0),
            serial: Cell::new(0),
        }
    };
}

/// Runs `f` with this thread's state.
#[inline]
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    STATE.with(f)
}
