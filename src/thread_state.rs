//! This thread's own state, in one thread-local block. A region's hot path
//! reads and writes several of these; in a shared library every thread-local
//! is reached through a call of `__tls_get_addr`, and one block lets the
//! compiler reach them all through one address.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering::*};

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
    /// ledger: this thread's cell in its process's slot of the shared ledger
    /// (`NO_CELL`: none), valid in the process `cell_pid` only (a forked
    /// child's thread claims its own).
    pub cell: Cell<u8>,
    pub cell_pid: Cell<i32>,
}

/// `cell` when the thread has no cell (all were taken).
pub const NO_CELL: u8 = u8::MAX;

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            in_hook: Cell::new(false),
            held: Cell::new(0),
            promised: Cell::new(0),
            master_of: Cell::new(0),
            serial: Cell::new(0),
            cell: Cell::new(NO_CELL),
            cell_pid: Cell::new(0),
        }
    };
}

/// Cells per process: the first CELLS threads of a process that enter
/// regions each get one, an index that only they write under (their cell of
/// the shared ledger, their row of region counts); the others share counts
/// changed by read-modify-write.
pub const CELLS: usize = 16;

/// The cells this process has handed out, bits in a `process::pid_word`: a
/// word of another pid (inherited through fork) counts as none handed out.
static CELLS_TAKEN: AtomicU64 = AtomicU64::new(0);

/// This thread's cell in process `pid`, claimed at the first call. None when
/// every cell is taken.
#[inline]
pub fn cell(pid: i32) -> Option<usize> {
    with(|t| {
        if t.cell_pid.get() == pid {
            let c = t.cell.get();
            return (c != NO_CELL).then_some(usize::from(c));
        }
        let c = claim_cell(pid);
        t.cell.set(c.map_or(NO_CELL, |c| c as u8));
        t.cell_pid.set(pid);
        c
    })
}

/// This thread's cell in this process (see `cell`).
#[inline]
pub fn my_cell() -> Option<usize> {
    cell(crate::process::pid())
}

#[cold]
#[inline(never)]
fn claim_cell(pid: i32) -> Option<usize> {
    let mut got = None;
    let _ = CELLS_TAKEN.fetch_update(AcqRel, Acquire, |w| {
        let bits = crate::process::of_pid(w, pid);
        let free = (!bits).trailing_zeros() as usize;
        got = (free < CELLS).then_some(free);
        got.map(|c| crate::process::pid_word(pid, bits | 1 << c))
    });
    if let Some(c) = got {
        crate::runtime::claim_count_row(c, pid);
    }
    got
}

/// This thread ends: its cell in process `pid`, if it has one, and forgets
/// it. The caller hands it back with `give_back_cell` when nothing of the
/// thread's is left in it.
pub fn cell_of_ending_thread(pid: i32) -> Option<usize> {
    with(|t| {
        let c = t.cell.get();
        let mine = t.cell_pid.get() == pid && c != NO_CELL;
        t.cell_pid.set(0);
        mine.then_some(usize::from(c))
    })
}

/// Cell `c` of process `pid` can serve another thread.
pub fn give_back_cell(pid: i32, c: usize) {
    let _ = CELLS_TAKEN.fetch_update(AcqRel, Acquire, |w| {
        let bits = crate::process::of_pid(w, pid);
        (bits & 1 << c != 0).then(|| crate::process::pid_word(pid, bits & !(1 << c)))
    });
}

/// Runs `f` with this thread's state.
#[inline]
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    STATE.with(f)
}
