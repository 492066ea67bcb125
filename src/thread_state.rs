//! This thread's own state, in one thread-local block. A region's hot path
//! reads and writes several of these; in a shared library every thread-local
//! is reached through a call of `__tls_get_addr`, and one block lets the
//! compiler reach them all through one address.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering::*};

/// This thread's state. Every field's all-zero bytes are its starting value
/// (see `STATE`).
#[repr(C)]
pub struct ThreadState {
    /// boundary: true while this thread runs our own bookkeeping.
    pub in_hook: Cell<bool>,
    /// ledger: this thread's cell in its process's slot of the shared ledger,
    /// plus one (0: none), valid in the process `cell_pid` only (a forked
    /// child's thread claims its own).
    cell: Cell<u8>,
    cell_pid: Cell<i32>,
    /// grant: threads this thread holds in the ledger (itself and extras).
    pub held: Cell<u32>,
    /// grant: the team `omp_get_max_threads()` last promised (0: none).
    pub promised: Cell<u32>,
    /// grant: what this thread's first promise holds back from other askers
    /// (see `grant::promise_new`), until it starts a thread or ends.
    pub held_back: Cell<u32>,
    /// fork: libgomp copies (bits) whose team this thread leads.
    pub master_of: Cell<u64>,
    /// fork: copies (bits) whose regions run serially on this thread (a
    /// forked child whose pool could not be freed first).
    pub serial: Cell<u64>,
    /// ledger: the threads this thread keeps counted between its regions
    /// (its lease: see ledger::shared, "Leases"; 0: none), valid in the
    /// process `lease_pid` only (a forked child never resumes its parent's).
    pub lease: Cell<u32>,
    pub lease_pid: Cell<i32>,
    /// ledger: the tree's lease epoch when this thread's lease was kept.
    pub lease_epoch: Cell<u32>,
    /// ledger: the epoch in which this thread last found leasing allowed.
    pub lease_ok_epoch: Cell<u32>,
    /// ledger: the tree's count stayed within the budget at this thread's
    /// last counted entry; only then does its exit look at the count to
    /// keep a lease (see ledger::shared, `keep`).
    pub entry_fit: Cell<bool>,
}

// The block lives in the static TLS area (the initial-exec model) on x86-64:
// in a shared library the compiler reaches a `thread_local!` through a call of
// `__tls_get_addr` at every use (a region's path made about seven, some 55
// instructions), while an initial-exec variable is one load from the GOT
// and an add of the thread pointer. The loader gives a preloaded library (and
// a dlopened one, from its surplus) static TLS; the linker marks the object
// STATIC_TLS for it. The block is zero-filled `.tbss`, which is why every
// field starts at zero.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    ".globl parbudget_thread_state",
    ".hidden parbudget_thread_state",
    ".type parbudget_thread_state, @object",
    ".size parbudget_thread_state, 64",
    "parbudget_thread_state:",
    ".zero 64",
    ".popsection",
);

const _: () = assert!(core::mem::size_of::<ThreadState>() <= 64);

/// This thread's block: its initial-exec address (see above).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
#[inline(always)]
fn state() -> *const ThreadState {
    let p: *const ThreadState;
    // SAFETY: reads the variable's offset from the GOT (a TPOFF relocation the
    // loader filled in) and adds the thread pointer (`fs:0` holds the TCB's
    // own address on x86-64): the address of this thread's copy of the block.
    // Touches no memory but the GOT entry and the TCB word; no stack, no flags
    // kept. Declared `nomem` although it reads those two words: both are
    // fixed for the thread's life (the GOT entry is relocated before any of
    // our code runs; a thread's TCB never moves, and a forked child keeps it),
    // so the address is a constant of the running thread, and `nomem` lets the
    // compiler compute it once per function instead of again after every
    // store (`readonly` did: some ten times on a region's path).
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr [rip + parbudget_thread_state@GOTTPOFF]",
            "add {p}, qword ptr fs:[0]",
            p = out(reg) p,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    p
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            in_hook: Cell::new(false),
            cell: Cell::new(0),
            cell_pid: Cell::new(0),
            held: Cell::new(0),
            promised: Cell::new(0),
            held_back: Cell::new(0),
            master_of: Cell::new(0),
            serial: Cell::new(0),
            lease: Cell::new(0),
            lease_pid: Cell::new(0),
            lease_epoch: Cell::new(0),
            lease_ok_epoch: Cell::new(0),
            entry_fit: Cell::new(false),
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

/// This thread's cell in this process, claimed at the first call (and again
/// in a forked child, whose pid differs). None when every cell is taken.
#[inline]
pub fn my_cell() -> Option<usize> {
    let pid = crate::process::pid();
    with(|t| {
        if t.cell_pid.get() == pid {
            return usize::from(t.cell.get()).checked_sub(1);
        }
        let c = claim_cell(pid);
        t.cell.set(c.map_or(0, |c| c as u8 + 1));
        t.cell_pid.set(pid);
        c
    })
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
        let c = usize::from(t.cell.get()).checked_sub(1);
        let mine = t.cell_pid.get() == pid;
        t.cell_pid.set(0);
        c.filter(|_| mine)
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
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    {
        // SAFETY: `state()` is this thread's block, zero-filled at the
        // thread's start, and all-zero is a valid ThreadState (every field is
        // a Cell of an integer or bool). It lives as long as the thread; the
        // reference does not escape `f` (and ThreadState is not Sync, so no
        // other thread can see it).
        f(unsafe { &*state() })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
    STATE.with(f)
}
