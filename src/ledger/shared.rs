//! The ledger shared by the processes of one tree, in POSIX shared memory.
//!
//! Layout (layout.rs): a header (magic, version, size, budget, a
//! process-shared robust mutex, the count of threads in use) and one slot per
//! member process (pid, its start time, the threads it has in regions:
//! callers and extras, in the slot's `held` and in its threads' cells).
//! Counts change without the mutex (see `reclaim_dead` and "Cells"); `used`
//! equals the live members' holdings whenever no change is in flight.
//!
//! Dying members. The mutex is robust: if a member dies holding it, the next
//! locker gets EOWNERDEAD and rebuilds `used` from the slots of live members.
//! A member that dies between regions leaves `held` in its slot: when a
//! request cannot be met, the slots of dead members (no /proc entry, a zombie,
//! or a reused pid with another start time) are reclaimed. So a SIGKILL loses
//! nothing and leaks nothing.
//!
//! Trust. The segment is created 0600 with O_EXCL and its pages are reserved
//! at once (posix_fallocate), so a full tmpfs is a refusal at creation, not a
//! SIGBUS at the first touch. Before use it must be a regular file (not a
//! symlink: shm_open will not follow one) owned by us with no group/other
//! bits, of exactly our size, and its header must pass `layout::check`:
//! magic, version, size field, budget and source, the mutex's kind, counts
//! within bounds. Anything else: the process names the defect in one warning
//! line and falls back to a ledger of its own.
//!
//! A ledger that changes under running members: contained, not prevented.
//! Nothing can stop the file's owner (or root) from truncating, shrinking or
//! overwriting it: tmpfs files take no seals, and checking its size before
//! each access is racy. So (guard.rs):
//! - Truncated or shrunk: touching a vanished page raises SIGBUS. Our handler
//!   sees the address is inside the ledger, replaces the ledger's pages in
//!   one step by private zeroed ones (with the lock restored for a holder of
//!   this process, so its unlock still works and its robust list stays
//!   whole), flags the ledger lost and returns; the access runs again and
//!   succeeds. A SIGBUS anywhere else goes to the handler that was there
//!   before ours, or to the default action.
//! - Zeroed or overwritten in place (no SIGBUS): the magic is checked at each
//!   lock and each unlocked read; gone, the pages are replaced the same way.
//! - Replaced (another file renamed over the name): members keep the old
//!   file, which still works; processes that start later open the new one
//!   (and validate it), so the tree is split in two ledgers. Grown: members
//!   keep going; processes that start later refuse it (wrong size).
//! - The lock: never slept on. It is taken with trylock and backoff, so no
//!   thread can be stranded in a futex wait on a vanished page; a lock that
//!   stays taken for 2 s (a member stopped inside its critical section, a
//!   corrupted lock word) detaches this process instead of hanging it.
//!
//! A member that loses the ledger writes one line, `ledger_lost`, at its next
//! ledger call (never from the signal handler) and goes on with a ledger of
//! its own, which already counts the threads it holds (mod.rs keeps that
//! count for every process), so regions entered before the loss are given
//! back correctly. Each member decides alone; a name whose ledger was cut to
//! zero bytes is removed by the next tree that starts, once its creator is
//! gone (a chosen name is kept, and refused with "wrong size" until removed).
//!
//! Joining. The creator exports PARBUDGET_LEDGER=<name>; forked children keep
//! the mapping, exec'd children open the name. Unrelated processes join by
//! setting the same PARBUDGET_LEDGER (a name of their choosing, e.g.
//! `/parbudget-myjob`); the first one creates it.

use super::guard::{self, LEDGER, Loss, PROBE};
use super::layout::{
    self, CELL_BUSY, CELLS, FENCE, Header, LEASE_IDLE, MAGIC, MAX_HELD, SIZE, SLOTS, VERSION,
};
use super::local::Entered;
use crate::process;
use crate::stackbuf::{Quoted, StackBuf};
use crate::thread_state;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*, compiler_fence};
use log::{debug, info, warn};

/// The mapped ledger (0 = none) and this process's slot (usize::MAX = none yet).
static MAP: AtomicUsize = AtomicUsize::new(0);
static MY_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Last reclaim scan (CLOCK_MONOTONIC_COARSE ms), to rate-limit /proc reads.
static LAST_SCAN_MS: AtomicU64 = AtomicU64::new(0);
/// The loss was reported (one line per process).
static LOSS_TOLD: AtomicBool = AtomicBool::new(false);

/// The ledger's name, for the loss line. Written once by `attach` before MAP
/// is published, read only after.
struct Name(UnsafeCell<StackBuf<256>>);
// SAFETY: see above: one write before publication (Release on MAP), reads after.
unsafe impl Sync for Name {}
static NAME: Name = Name(UnsafeCell::new(StackBuf::new()));

/// The attached ledger, if it is still ours to use. A header whose magic is
/// gone (zeroed or overwritten under us) is lost here.
#[inline]
fn header() -> Option<&'static Header> {
    let p = MAP.load(Acquire);
    if p == 0 || guard::is_lost(LEDGER) {
        return None;
    }
    // SAFETY: a non-zero MAP is a validated mapping of SIZE bytes that is
    // never unmapped (if its file goes, guard.rs puts anonymous pages there).
    let h = unsafe { &*(p as *const Header) };
    if !intact(h) {
        guard::contain(LEDGER, Loss::Changed);
        return None;
    }
    Some(h)
}

fn intact(h: &Header) -> bool {
    // SAFETY: reading our mapping (a vanished page is contained by guard.rs).
    unsafe {
        core::ptr::read_volatile(&h.magic) == MAGIC
            && core::ptr::read_volatile(&h.version) == VERSION
    }
}

/// The budget stored in the ledger (the tree's budget), if attached.
pub fn budget() -> Option<(u32, u32)> {
    header().map(|h| (h.budget, h.source))
}

/// Once, after the ledger was lost: why (for the one warning line).
pub fn take_loss() -> Option<(Loss, &'static [u8])> {
    if MAP.load(Acquire) == 0 || !guard::is_lost(LEDGER) || LOSS_TOLD.swap(true, AcqRel) {
        return None;
    }
    // SAFETY: NAME was written before MAP was published and never after.
    let name = unsafe { (*NAME.0.get()).as_bytes() };
    Some((guard::loss(LEDGER).unwrap_or(Loss::Changed), name))
}

std::thread_local! {
    /// True while this thread holds the ledger mutex: a signal handler that
    /// calls `_exit` there must not lock it again (it is not recursive).
    static HOLDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Why the lock was not taken.
enum NoLock {
    /// Reentered from a signal handler on the thread that holds it.
    Reentered,
    /// The ledger is lost (now or before).
    Lost,
}

/// How long the lock may stay taken by others before we give up on the
/// shared ledger (its holders keep it for microseconds).
const LOCK_PATIENCE_MS: u64 = 2000;

/// Holds the ledger's mutex; on EOWNERDEAD repairs the books first.
struct Locked {
    h: &'static Header,
    links: guard::Links,
}

impl Locked {
    fn new(h: &'static Header) -> Result<Locked, NoLock> {
        if HOLDING.with(|f| f.get()) {
            return Err(NoLock::Reentered);
        }
        let links = guard::links_before_lock();
        let mut tries: u32 = 0;
        let mut since: u64 = 0;
        loop {
            if guard::is_lost(LEDGER) {
                return Err(NoLock::Lost);
            }
            // Never a blocking lock: a thread asleep in the kernel on a page
            // that vanishes would never wake (see guard.rs).
            // SAFETY: the mutex lives in the validated mapping and was
            // initialised process-shared and robust by the creator.
            let r = unsafe { libc::pthread_mutex_trylock(h.lock.get()) };
            match r {
                0 | libc::EOWNERDEAD => return Self::taken(h, links, r),
                libc::EBUSY => {}
                _ => {
                    guard::detach(LEDGER, Loss::LockError);
                    return Err(NoLock::Lost);
                }
            }
            tries += 1;
            if tries < 64 {
                core::hint::spin_loop();
            } else if tries < 128 {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            } else {
                let now = process::coarse_ms();
                if since == 0 {
                    since = now.max(1);
                } else if now.saturating_sub(since) > LOCK_PATIENCE_MS {
                    guard::detach(LEDGER, Loss::LockTimeout);
                    return Err(NoLock::Lost);
                }
                // 50 us, by the raw syscall: not a cancellation point.
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000,
                };
                // SAFETY: a plain relative sleep.
                unsafe { libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, 0usize) };
            }
        }
    }

    fn taken(h: &'static Header, links: guard::Links, r: i32) -> Result<Locked, NoLock> {
        HOLDING.with(|f| f.set(true));
        guard::acquired(links);
        let l = Locked { h, links };
        if r == libc::EOWNERDEAD {
            // A member died inside its critical section: its slot may be
            // half-updated. Dead members' slots go; free is recomputed. Done
            // even if this process just gave up on the ledger (the others
            // still use it: the lock must not be left unrecoverable).
            let repair = intact(h);
            if repair {
                reclaim_dead(h, true);
            }
            // SAFETY: we own the mutex; the state is consistent again.
            unsafe { libc::pthread_mutex_consistent(h.lock.get()) };
            if repair && !guard::is_lost(LEDGER) {
                warn!("ledger_repaired reason=\"a member died holding the ledger lock\"");
            }
        }
        if !intact(h) {
            guard::contain(LEDGER, Loss::Changed);
        }
        if guard::is_lost(LEDGER) {
            drop(l);
            return Err(NoLock::Lost);
        }
        Ok(l)
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if !intact(self.h) {
            guard::contain(LEDGER, Loss::Changed);
        }
        // If the pages were replaced while we held the lock, they hold it
        // again as we do, so this is an ordinary robust unlock.
        guard::before_unlock(self.links);
        // SAFETY: we hold the mutex.
        unsafe { libc::pthread_mutex_unlock(self.h.lock.get()) };
        guard::released();
        HOLDING.with(|f| f.set(false));
    }
}

/// Clears dead members' slots and rebuilds `used` from the live members'
/// `held`. Caller holds the mutex. `always`: rebuild even if no member is
/// found dead (after EOWNERDEAD: the dead holder may have left `used` and its
/// `held` half-updated, and its pid may already be reused).
///
/// The rebuild protocol (the other half is in `count_entry`/`count_exit` and
/// "Cells"): members change `used` and their `held` without the mutex,
/// announcing each change in their slot's `busy` (or in the changing
/// thread's cell). A member killed between its two updates leaves them
/// disagreeing, so `used` is never patched by subtraction; it is recomputed:
///  1. set FENCE in `used` (no change may start from now on: one that does
///     sees FENCE and takes the mutex, which we hold, instead);
///  2. wait until every live member's `busy` is 0 and no cell of it is
///     marked busy (changes that started
///     before the fence are finished; a dead member's count is ignored), with
///     a deadline: a member stopped in the middle (SIGSTOP, a debugger)
///     defers the reclaim, FENCE is taken off and nothing changes;
///  3. clear the dead members' slots and cells, sum the live members'
///     `held` and cells, and store that sum as `used`, which also takes
///     FENCE off.
///
/// Returns false when the reclaim was deferred.
fn reclaim_dead(h: &Header, always: bool) -> bool {
    let mut live = [0u64; SLOTS / 64];
    let mut dead = 0u32;
    for (i, s) in h.slots.iter().enumerate() {
        let pid = s.pid.load(Relaxed);
        if pid == 0 {
            continue;
        }
        if process::alive(pid, s.start_time.load(Relaxed)) {
            live[i / 64] |= 1 << (i % 64);
        } else {
            dead += 1;
        }
    }
    if dead == 0 && !always {
        return true;
    }
    h.used.fetch_or(FENCE, SeqCst);
    let deadline = process::coarse_ms() + FENCE_PATIENCE_MS;
    for (i, b) in h.busy.iter().enumerate() {
        if live[i / 64] & (1 << (i % 64)) == 0 {
            continue;
        }
        let cells = &h.cells[i].0;
        let mut spins = 0u32;
        while b.load(SeqCst) != 0 || cells.iter().any(|c| c.load(SeqCst) & CELL_BUSY != 0) {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else if process::coarse_ms() > deadline || guard::is_lost(LEDGER) {
                h.used.fetch_and(!FENCE, SeqCst);
                debug!("ledger_reclaim_deferred reason=\"a live member is stopped in an update\"");
                return false;
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
    let mut live_held: u32 = 0;
    for (i, s) in h.slots.iter().enumerate() {
        let pid = s.pid.load(Relaxed);
        if pid == 0 {
            continue;
        }
        if live[i / 64] & (1 << (i % 64)) != 0 {
            live_held = live_held
                .saturating_add(s.held.load(SeqCst))
                .saturating_add(cells_held(h, i));
        } else {
            let held = s.held.swap(0, Relaxed).saturating_add(clear_cells(h, i));
            h.busy[i].store(0, Relaxed);
            s.pid.store(0, Relaxed);
            if held > 0 {
                info!("ledger_reclaimed pid={} threads={}", pid, held);
            }
        }
    }
    h.used.store(live_held.min(MAX_HELD), SeqCst);
    true
}

/// How long a reclaim waits for a live member to finish an update.
const FENCE_PATIENCE_MS: u64 = 20;

/// True when a reclaim scan is due (rate-limited: /proc reads are costly), so
/// a SIGKILLed member's threads come back within ~50 ms.
fn scan_due() -> bool {
    let last = LAST_SCAN_MS.load(Relaxed);
    last == 0 || process::coarse_ms().saturating_sub(last) >= 50
}

fn scanned() {
    LAST_SCAN_MS.store(process::coarse_ms().max(1), Relaxed);
}

/// Takes `d` off `used`, keeping FENCE as it is and never going below 0.
fn sub_used(h: &Header, d: u32) {
    if d == 0 {
        return;
    }
    let _ = h.used.fetch_update(SeqCst, Relaxed, |u| {
        Some((u & FENCE) | (u & !FENCE).saturating_sub(d))
    });
}

/// This process's slot, claimed on first use. Caller holds the mutex.
fn my_slot(h: &Header) -> Option<usize> {
    let pid = process::pid();
    let i = MY_SLOT.load(Relaxed);
    if i < SLOTS && h.slots[i].pid.load(Relaxed) == pid {
        return Some(i);
    }
    // No slot yet, or ours was reclaimed (then its threads were already
    // taken off `used`): claim one.
    let start = process::my_start_time();
    if start == 0 {
        return None;
    }
    // After exec the pid and start time are the same but the old image's
    // regions are gone: adopt its slot and take its threads off `used`.
    if let Some(j) = h
        .slots
        .iter()
        .position(|s| s.pid.load(Relaxed) == pid && s.start_time.load(Relaxed) == start)
    {
        let old = h.slots[j]
            .held
            .swap(0, SeqCst)
            .saturating_add(clear_cells(h, j));
        sub_used(h, old);
        MY_SLOT.store(j, Relaxed);
        return Some(j);
    }
    let mut pick = None;
    for pass in 0..2 {
        pick = h.slots.iter().position(|s| s.pid.load(Relaxed) == 0);
        if pick.is_some() || pass == 1 {
            break;
        }
        reclaim_dead(h, false);
    }
    let i = pick?;
    let s = &h.slots[i];
    s.held.store(0, Relaxed);
    h.busy[i].store(0, Relaxed);
    clear_cells(h, i);
    s.start_time.store(start, Relaxed);
    s.pid.store(pid, Relaxed);
    MY_SLOT.store(i, Relaxed);
    Some(i)
}

/// The ledger and this process's slot, when the slot is claimed and still
/// ours: what the lock-free path needs.
#[inline]
fn mine() -> Option<(&'static Header, usize)> {
    mine_pid().map(|(h, i, _)| (h, i))
}

/// `mine`, with this process's pid: the region path checks its lease
/// against it too, and reads it once.
#[inline]
fn mine_pid() -> Option<(&'static Header, usize, i32)> {
    let h = header()?;
    let i = MY_SLOT.load(Relaxed);
    if i >= SLOTS {
        return None;
    }
    let pid = process::pid();
    (h.slots[i].pid.load(Relaxed) == pid).then_some((h, i, pid))
}

// ---------------------------------------------------------------------------
// Leases: the steady state with no locked instruction.
//
// Why: a locked instruction right after a libgomp region waits for the
// stores libgomp left pending to drain. Measured per region in the steady
// state (regions_gcc's region_us, paired with no preload): a C forwarder
// with one `lock xadd` after the call +40 ns, before it +0 ns; the shim with
// its exit's compare-and-swap on `used` +70 to +80 ns, with leases +40 to
// +50 ns (README, "the tiny region").
//
// What: a thread with a cell that leaves its outermost region keeps the
// threads it held counted (its lease: `used` and its cell unchanged) and
// records in its cell's lease state `LEASE_IDLE | epoch`. Its next region
// that wants the same team takes the lease back with plain stores and
// loads; any other asks (a different team, a query, the thread's end) give
// it back first. A member short of threads steals the idle leases of the
// tree (`steal_leases`), so a kept lease never keeps threads from anyone.
//
// The protocol (an asymmetric Dekker handshake: the owner's side has no
// fence; the stealer's side pays for both with membarrier(2)):
//  - owner, keeping: load `epoch` as e, then store `LEASE_IDLE | e` to its
//    state (program order; the state store is a Release);
//  - owner, resuming: store 0 to its state, then load `epoch`; equal to
//    its e: the lease is still its own. Otherwise take the mutex (a steal
//    holds it until done) and read the cell: it still holds the lease, or 0
//    if stolen;
//  - stealer, under the mutex: add 1 to `epoch`, membarrier (every thread of
//    every member either had its earlier stores made visible, or runs its
//    later loads after the new epoch is visible), then for each state
//    `LEASE_IDLE | e` with e not the new epoch: take the cell's count off
//    the cell and off `used`.
// A steal of a lease kept with epoch e implies the owner's next resume
// loads `epoch` after the barrier (had its state store of 0 been before it,
// the stealer would have read that store, or a later one), so it sees the
// new epoch and waits on the mutex. A state kept with the new epoch itself
// is left alone: its owner read that epoch, so its resume would pass.
//
// Members register for expedited barriers at init, while they have one
// thread (`register_for_steals`); a process that could not (an old kernel,
// a seccomp filter) keeps no lease.
// The stealer falls back to the slow global barrier; if neither works, it
// steals nothing.
//
// SIGKILL: a lease is a count in a cell like any other, so a dead member's
// leases go with its cells (`reclaim_dead`). A stealer killed holding the
// mutex leaves EOWNERDEAD, and the next locker rebuilds `used` from the cells.
//
// Contention: after a steal no member starts a lease for LEASE_PAUSE_MS, so
// threads that keep each other short (more threads in regions than the
// budget) count every region as before, with at most one steal per pause.
// ---------------------------------------------------------------------------

/// How long no member starts a lease after a steal (ms).
const LEASE_PAUSE_MS: u32 = 100;

const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

/// This process is registered for the stealers' expedited barriers. The
/// kernel keeps a registration across fork and drops it at exec, as this
/// static is.
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// At init, with the tree's scope: registers this process for the stealers'
/// expedited barriers; without it the process keeps no lease. Done at init
/// because the process has one thread then: registering a process with
/// several waits for an RCU grace period (18 to 42 ms measured here; made
/// at the first slot claim, under the mutex, it kept the mutex that long and
/// starved other members in the soak). Forked children inherit it.
pub fn register_for_steals() {
    // SAFETY: membarrier takes plain integers and touches none of our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
            0,
            0,
        )
    };
    REGISTERED.store(r == 0, Relaxed);
}

/// A full memory barrier on every running thread of every registered
/// process (see "Leases"). False when the kernel offers none.
fn barrier_all() -> bool {
    // SAFETY: as in register_for_steals.
    let expedited =
        unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) };
    // SAFETY: as above.
    expedited == 0
        || unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0
}

/// The threads this thread keeps leased in process `pid`, this one (0: none).
#[inline]
fn lease_here(pid: i32) -> u32 {
    thread_state::with(|t| {
        if t.lease_pid.get() == pid {
            t.lease.get()
        } else {
            0
        }
    })
}

/// Some member may keep a lease: a short request should steal.
#[inline]
fn leases_kept(h: &Header) -> bool {
    h.lease.leasing.load(Relaxed) != 0
}

/// A thread leaves its outermost region, holding `n` threads in cell `c` of
/// slot `i`: keeps them as its lease when nothing argues against it. True
/// when kept (then nothing else is to be done).
#[inline]
fn keep(h: &Header, i: usize, c: usize, n: u32, pid: i32) -> bool {
    // Threads that keep each other over the budget keep no lease: told by
    // what this thread's entry saw, before reading the count's line, which
    // they all write (at 16 to 64 threads that read cost 15 to 25 ns an
    // entry).
    if !thread_state::with(|t| t.entry_fit.get()) {
        return false;
    }
    let u = h.used.load(Relaxed);
    // Only a count this thread alone holds, within the budget, outside a
    // rebuild, in a process the stealers' barrier reaches.
    if !REGISTERED.load(Relaxed)
        || u & FENCE != 0
        || u > h.budget
        || h.cells[i].0[c].load(Relaxed) != n
    {
        return false;
    }
    // Before the state store (see "Leases").
    let e = h.lease.epoch.load(Acquire);
    if e != thread_state::with(|t| t.lease_ok_epoch.get()) && !lease_allowed(h, e) {
        return false;
    }
    if !leases_kept(h) {
        h.lease.leasing.store(1, Relaxed);
    }
    thread_state::with(|t| {
        t.lease.set(n);
        t.lease_pid.set(pid);
        t.lease_epoch.set(e);
    });
    h.lease_states[i].0[c].store(LEASE_IDLE | e, Release);
    true
}

/// A steal happened since this thread last kept a lease: one may be kept
/// again once LEASE_PAUSE_MS have passed since it.
#[cold]
#[inline(never)]
fn lease_allowed(h: &Header, e: u32) -> bool {
    let now = process::coarse_ms() as u32;
    if now.wrapping_sub(h.lease.steal_ms.load(Relaxed)) < LEASE_PAUSE_MS {
        return false;
    }
    thread_state::with(|t| t.lease_ok_epoch.set(e));
    true
}

/// This thread takes its lease back (it enters a region, asks what is free,
/// or ends): the threads it holds now as if it had just entered a region
/// with them, 0 when it has no lease or it was stolen.
#[inline]
fn resume(h: &'static Header, i: usize, c: usize, pid: i32) -> u32 {
    let l = lease_here(pid);
    if l == 0 {
        return 0;
    }
    thread_state::with(|t| t.lease.set(0));
    h.lease_states[i].0[c].store(0, Relaxed);
    // The state store stays before the epoch load in the program; the
    // hardware may still delay it, which the stealer's barrier settles (see
    // "Leases"). No fence here: that is the point.
    compiler_fence(SeqCst);
    if h.lease.epoch.load(Relaxed) == thread_state::with(|t| t.lease_epoch.get()) {
        return l;
    }
    resume_after_steal(h, i, c)
}

/// `resume` when a steal began since the lease was kept: the stealer holds
/// the mutex until it is done, and the cell then tells.
#[cold]
#[inline(never)]
fn resume_after_steal(h: &'static Header, i: usize, c: usize) -> u32 {
    let _l = match Locked::new(h) {
        Ok(l) => Some(l),
        Err(NoLock::Reentered) => None,
        Err(NoLock::Lost) => return 0,
    };
    h.cells[i].0[c].load(SeqCst) & !CELL_BUSY
}

/// Gives `n` threads of cell `c` back (a resumed lease not used as it is).
fn give_back(h: &Header, i: usize, c: usize, n: u32) {
    if let Change::Locked = cell_exit(h, i, c, n, true) {
        leave_locked(n, Some(c));
    }
}

/// This thread gives its lease back now, if it keeps one.
pub fn release_lease() {
    // No lease at all (one kept in a parent before a fork is told apart by
    // `resume`, and cleared below).
    if thread_state::with(|t| t.lease.get()) == 0 {
        return;
    }
    if let (Some((h, i, pid)), Some(c)) = (mine_pid(), thread_state::my_cell()) {
        let l = resume(h, i, c, pid);
        if l > 0 {
            give_back(h, i, c, l);
        }
    }
    thread_state::with(|t| t.lease.set(0));
}

/// Takes back the idle leases of every member (see "Leases"). Caller holds
/// the mutex. Returns the threads freed.
fn steal_leases(h: &Header) -> u32 {
    h.lease.leasing.store(0, SeqCst);
    let e = h.lease.epoch.load(Relaxed).wrapping_add(1) & !LEASE_IDLE;
    h.lease.epoch.store(e, SeqCst);
    h.lease.steal_ms.store(process::coarse_ms() as u32, Relaxed);
    if !barrier_all() {
        debug!("lease_steal freed=0 reason=\"no membarrier\"");
        return 0;
    }
    let mut freed = 0u32;
    for (i, s) in h.slots.iter().enumerate() {
        if s.pid.load(Relaxed) == 0 {
            continue;
        }
        for c in 0..CELLS {
            let st = h.lease_states[i].0[c].load(SeqCst);
            if st & LEASE_IDLE == 0 || st & !LEASE_IDLE == e {
                continue;
            }
            let cell = &h.cells[i].0[c];
            let v = cell.load(SeqCst);
            // An idle owner changes nothing, so never busy; be sure anyway.
            if v == 0 || v & CELL_BUSY != 0 {
                continue;
            }
            cell.store(0, Release);
            sub_used(h, v);
            freed = freed.saturating_add(v);
        }
    }
    debug!("lease_steal freed={} epoch={}", freed, e);
    freed
}

// ---------------------------------------------------------------------------
// Cells: the common path with one locked instruction per change.
//
// A thread of a member that enters regions gets a cell of that member's slot
// (the first CELLS such threads; the others count in the slot's `held`). A
// cell holds the threads its thread holds, and CELL_BUSY while that thread
// changes `used`; only that thread writes it (and the mutex holder, for a
// dead member or a slot being claimed), so it is written with plain stores:
//  1. store CELL_BUSY in the cell (the announcement);
//  2. one compare-and-swap on `used`, which fails while FENCE is set: the
//     change is then withdrawn (the cell restored) and retried under the
//     mutex;
//  3. store the new count in the cell, which takes CELL_BUSY off (Release).
// A rebuild sets FENCE with a read-modify-write of `used` and then reads the
// cells (Acquire). If our compare-and-swap came first in `used`'s order, the
// rebuild's read-modify-write synchronises with it, so it sees our
// announcement (or our final count) and waits; if it came later, it fails on
// FENCE. So the rebuild's sum never misses a change half done.
// ---------------------------------------------------------------------------

/// A thread of ours ends: its cell goes back to the process, unless it still
/// counts threads (a region it never left: the count stays where a reclaim
/// finds it).
pub fn release_cell() {
    release_lease();
    let pid = process::pid();
    let Some(c) = thread_state::cell_of_ending_thread(pid) else {
        return;
    };
    if mine().is_some_and(|(h, i)| h.cells[i].0[c].load(Relaxed) != 0) {
        return;
    }
    thread_state::give_back_cell(pid, c);
}

/// The threads slot `i`'s cells hold.
fn cells_held(h: &Header, i: usize) -> u32 {
    h.cells[i]
        .0
        .iter()
        .fold(0u32, |a, c| a.saturating_add(c.load(SeqCst) & !CELL_BUSY))
}

/// Of `cells_held`, what idle threads of slot `i` keep as leases.
fn cells_leased(h: &Header, i: usize) -> u32 {
    h.cells[i]
        .0
        .iter()
        .zip(&h.lease_states[i].0)
        .filter(|(_, st)| st.load(Relaxed) & LEASE_IDLE != 0)
        .fold(0u32, |a, (c, _)| {
            a.saturating_add(c.load(Relaxed) & !CELL_BUSY)
        })
}

/// Empties slot `i`'s cells (a dead member's, or a slot being claimed);
/// returns what they held. Caller holds the mutex.
fn clear_cells(h: &Header, i: usize) -> u32 {
    for st in &h.lease_states[i].0 {
        st.store(0, Relaxed);
    }
    h.cells[i].0.iter().fold(0u32, |a, c| {
        a.saturating_add(c.swap(0, SeqCst) & !CELL_BUSY)
    })
}

/// `count_entry` for a thread with cell `c` (see "Cells"). `gated`: false
/// under the mutex, where no rebuild can start (FENCE is kept as found).
#[inline]
fn cell_entry(
    h: &Header,
    i: usize,
    c: usize,
    want: u32,
    need: u32,
    me: u32,
    gated: bool,
) -> Change<Entered> {
    let cell = &h.cells[i].0[c];
    let held = cell.load(Relaxed) & !CELL_BUSY;
    if gated {
        cell.store(held | CELL_BUSY, Relaxed);
    }
    match raise_used(h, want, need, me, gated) {
        Some(e) => {
            #[cfg(test)]
            tests::between_count_and_cell();
            cell.store(held.saturating_add(me + e.extras).min(MAX_HELD), Release);
            Change::Done(e)
        }
        None => {
            cell.store(held, Release);
            Change::Locked
        }
    }
}

/// `count_exit` for a thread with cell `c`: never more than the cell holds.
#[inline]
fn cell_exit(h: &Header, i: usize, c: usize, n: u32, gated: bool) -> Change<()> {
    let cell = &h.cells[i].0[c];
    let held = cell.load(Relaxed) & !CELL_BUSY;
    let d = held.min(n);
    if d == 0 {
        return Change::Done(());
    }
    if !gated {
        cell.store(held - d, Release);
        sub_used(h, d);
        return Change::Done(());
    }
    cell.store(held | CELL_BUSY, Relaxed);
    let took = h.used.fetch_update(SeqCst, SeqCst, |u| {
        (u & FENCE == 0).then(|| u.saturating_sub(d))
    });
    if took.is_err() {
        cell.store(held, Release);
        return Change::Locked;
    }
    cell.store(held - d, Release);
    Change::Done(())
}

/// What a change of the counts found.
enum Change<T> {
    Done(T),
    /// A rebuild is fenced, or a reclaim is due: take the mutex and retry.
    Locked,
}

/// Counts a region entry of member `i` on a thread with cell `cell` (None:
/// one without, counted in the slot's `held`): grants from what `used` leaves
/// free and raises it by one compare-and-swap. `gated`: the lock-free path
/// (the change is announced, and yields to a fence and to a due reclaim);
/// false under the mutex.
#[inline]
fn count_entry(
    h: &Header,
    i: usize,
    cell: Option<usize>,
    want: u32,
    need: u32,
    me: u32,
    gated: bool,
) -> Change<Entered> {
    match cell {
        Some(c) => cell_entry(h, i, c, want, need, me, gated),
        None if gated => lock_free(h, i, || slot_entry(h, i, want, need, me, true)),
        None => slot_entry(h, i, want, need, me, false),
    }
}

/// `count_entry` for a thread without a cell: `used`, then the slot's `held`
/// (under `lock_free`'s announcement when gated).
fn slot_entry(h: &Header, i: usize, want: u32, need: u32, me: u32, gated: bool) -> Change<Entered> {
    match raise_used(h, want, need, me, gated) {
        Some(e) => {
            h.slots[i].held.fetch_add(me + e.extras, SeqCst);
            Change::Done(e)
        }
        None => Change::Locked,
    }
}

/// The compare-and-swap of an entry: grants from what `used` leaves free and
/// raises `used` by the caller (`me`) and its extras. `gated` (the lock-free
/// path): None while a rebuild is fenced or a reclaim is due; under the
/// mutex FENCE is kept as found.
#[inline]
fn raise_used(h: &Header, want: u32, need: u32, me: u32, gated: bool) -> Option<Entered> {
    let mut u = h.used.load(SeqCst);
    loop {
        let used = u & !FENCE;
        let short = want > 0 && used.saturating_add(me + want) > h.budget;
        if gated && (u & FENCE != 0 || (short && (scan_due() || leases_kept(h)))) {
            return None;
        }
        // A nested region on an already-counted thread asks only for extras.
        let e =
            super::local::extras_for(want, need, h.budget.saturating_sub(used.saturating_add(me)));
        let to = (u & FENCE) | used.saturating_add(me + e.extras).min(MAX_HELD);
        match h.used.compare_exchange_weak(u, to, SeqCst, SeqCst) {
            Ok(_) => {
                thread_state::with(|t| t.entry_fit.set(to & !FENCE <= h.budget));
                return Some(e);
            }
            Err(now) => u = now,
        }
    }
}

/// Counts a region exit of member `i` on a thread with cell `cell` (as in
/// `count_entry`): never more than the thread's cell or the slot holds (a
/// forked child ending a region its parent entered gives nothing back).
#[inline]
fn count_exit(h: &Header, i: usize, cell: Option<usize>, n: u32, gated: bool) -> Change<()> {
    match cell {
        Some(c) => cell_exit(h, i, c, n, gated),
        None if gated => lock_free(h, i, || slot_exit(h, i, n, true)),
        None => slot_exit(h, i, n, false),
    }
}

/// `count_exit` for a thread without a cell.
fn slot_exit(h: &Header, i: usize, n: u32, gated: bool) -> Change<()> {
    if gated && h.used.load(SeqCst) & FENCE != 0 {
        return Change::Locked;
    }
    let s = &h.slots[i];
    let mut d = 0;
    let _ = s.held.fetch_update(SeqCst, SeqCst, |held| {
        d = held.min(n);
        (d > 0).then_some(held - d)
    });
    sub_used(h, d);
    Change::Done(())
}

/// Runs a count change lock-free: announced in the slot's `busy` so a
/// rebuild waits for it (see `reclaim_dead`).
fn lock_free<T>(h: &Header, i: usize, f: impl FnOnce() -> Change<T>) -> Change<T> {
    h.busy[i].fetch_add(1, SeqCst);
    let r = f();
    h.busy[i].fetch_sub(1, SeqCst);
    r
}

/// A caller of this process enters a region wanting `want` extras (at least
/// `need` of them): counts it and grants what fits, or what it needs. `None`
/// if the shared ledger is not in use (or was lost).
///
/// The common path takes no lock: a compare-and-swap on `used` and plain
/// stores to this thread's cell (see "Cells"; a thread without a cell adds to
/// our slot's `held`, announced in `busy`). The mutex is taken to claim our
/// slot, to reclaim dead members when short, and while a rebuild is fenced.
#[inline]
pub fn enter(want: u32, need: u32, count_caller: bool, cell: Option<usize>) -> Option<Entered> {
    let me = u32::from(count_caller);
    if let Some((h, i, pid)) = mine_pid() {
        if let Some(c) = cell
            && count_caller
        {
            // A thread that kept its team's count since its last region
            // (see "Leases"): the same team again changes nothing shared.
            let l = resume(h, i, c, pid);
            if l == want + 1 {
                return (!guard::is_lost(LEDGER)).then_some(Entered {
                    extras: want,
                    over: false,
                });
            }
            if l > 0 {
                give_back(h, i, c, l);
            }
        }
        if let Change::Done(e) = count_entry(h, i, cell, want, need, me, true) {
            return (!guard::is_lost(LEDGER)).then_some(e);
        }
    }
    enter_locked(want, need, me, cell)
}

/// `enter` under the mutex: the first entry (to claim a slot), a reclaim
/// due, or a rebuild fenced.
#[cold]
#[inline(never)]
fn enter_locked(want: u32, need: u32, me: u32, cell: Option<usize>) -> Option<Entered> {
    let h = header()?;
    let l = Locked::new(h).ok()?;
    let Some(i) = my_slot(l.h) else {
        // No free slot: run teams of one rather than overspend, unless a
        // team was promised (then it is kept, uncounted).
        return Some(Entered {
            extras: need,
            over: need > 0,
        });
    };
    let short = || want > 0 && used_now(h).saturating_add(me + want) > h.budget;
    if short() {
        let due = scan_due();
        if due || leases_kept(h) {
            make_room(h, due, short);
        }
    }
    match count_entry(h, i, cell, want, need, me, false) {
        Change::Done(e) => Some(e),
        Change::Locked => None,
    }
}

/// The region entered with `extras` ended. Never gives back more than this
/// process holds: a forked child ending a region its parent entered is a
/// no-op. False when the shared ledger is not in use (or was lost).
#[inline]
pub fn leave(extras: u32, count_caller: bool, cell: Option<usize>) -> bool {
    let n = extras + u32::from(count_caller);
    if let Some((h, i, pid)) = mine_pid() {
        if count_caller
            && let Some(c) = cell
            && keep(h, i, c, n, pid)
        {
            return !guard::is_lost(LEDGER);
        }
        if let Change::Done(()) = count_exit(h, i, cell, n, true) {
            return !guard::is_lost(LEDGER);
        }
    }
    leave_locked(n, cell)
}

/// `leave` under the mutex (a rebuild fenced, or no slot of ours).
#[cold]
#[inline(never)]
fn leave_locked(n: u32, cell: Option<usize>) -> bool {
    let Some(h) = header() else { return false };
    let l = match Locked::new(h) {
        Ok(l) => l,
        Err(NoLock::Reentered) => return true,
        Err(NoLock::Lost) => return false,
    };
    let i = MY_SLOT.load(Relaxed);
    if i < SLOTS && l.h.slots[i].pid.load(Relaxed) == process::pid() {
        let _ = count_exit(h, i, cell, n, false);
    }
    true
}

/// At exit: give back everything and free the slot. Returns true when no
/// live member remains (the name may then be removed). A process that never
/// took a slot (a forked child that ran no region) has nothing to do and
/// writes nothing: that keeps fork+_exit cheap. A lost ledger is left alone.
pub fn leave_tree() -> bool {
    let Some((h, i)) = mine() else { return false };
    MY_SLOT.store(usize::MAX, Relaxed);
    let Ok(l) = Locked::new(h) else {
        return false;
    };
    let s = &l.h.slots[i];
    if s.pid.load(Relaxed) == process::pid() {
        let held = s.held.swap(0, SeqCst).saturating_add(clear_cells(h, i));
        sub_used(h, held);
        s.pid.store(0, Relaxed);
    }
    no_live_member(l.h) && !guard::is_lost(LEDGER)
}

/// True when this process holds a slot (reads only: for `_exit`, which has
/// nothing to give back otherwise).
pub fn holds_slot() -> bool {
    // Read-only, with a pid never recorded here: a vfork child's `_exit`
    // asks this, and it shares our memory (process::pid_unrecorded).
    header().is_some_and(|h| {
        let i = MY_SLOT.load(Relaxed);
        i < SLOTS && h.slots[i].pid.load(Relaxed) == process::pid_unrecorded()
    })
}

/// True when every slot is free or belongs to a dead process.
fn no_live_member(h: &Header) -> bool {
    h.slots.iter().all(|s| {
        let pid = s.pid.load(Relaxed);
        pid == 0 || !process::alive(pid, s.start_time.load(Relaxed))
    })
}

/// In a forked child (atfork handler): the child has no slot yet (its pid
/// differs from the slot's, so nothing needs writing for that). Flags only.
pub fn forget_slot_in_child() {
    guard::reset_in_child();
}

/// Threads in use, without FENCE.
fn used_now(h: &Header) -> u32 {
    h.used.load(SeqCst) & !FENCE
}

/// Short of threads, under the mutex: takes idle leases back, and when a
/// reclaim scan is `due` (rate-limited: it reads /proc) and `short` still
/// holds, reclaims dead members. The scan's rate limit also bounds how long
/// a lease kept unseen (its `leasing` hint cleared by a racing steal) can
/// go unstolen.
fn make_room(h: &Header, due: bool, short: impl Fn() -> bool) {
    steal_leases(h);
    if due {
        scanned();
        if short() {
            reclaim_dead(h, false);
        }
    }
}

/// Free threads for a query that wants `want` of them: when short, dead
/// members are reclaimed first (rate-limited, as in `enter`), so an answer
/// never counts the threads of a member killed by SIGKILL.
pub fn free_for(want: u32) -> Option<u32> {
    let h = header()?;
    // The asking thread's own lease is free for it.
    release_lease();
    let free = h.budget.saturating_sub(used_now(h));
    let due = scan_due();
    if free >= want || !(due || leases_kept(h)) {
        return Some(free);
    }
    let _l = match Locked::new(h) {
        Ok(l) => l,
        Err(NoLock::Reentered) => return Some(free),
        Err(NoLock::Lost) => return None,
    };
    make_room(h, due, || h.budget.saturating_sub(used_now(h)) < want);
    Some(h.budget.saturating_sub(used_now(h)))
}

/// A snapshot of the shared ledger for reports and audits, read without the
/// lock (each number is a single atomic load).
pub fn audit() -> Option<super::Audit> {
    let h = header()?;
    let (held_here, leased_here) = mine().map_or((0, 0), |(h, i)| {
        let held = h.slots[i]
            .held
            .load(Relaxed)
            .saturating_add(cells_held(h, i));
        (held, cells_leased(h, i))
    });
    let a = super::Audit {
        shared: true,
        budget: h.budget,
        used: used_now(h),
        members: h.slots.iter().filter(|s| s.pid.load(Relaxed) != 0).count() as u32,
        held_here,
        leased_here,
        pending: false,
    };
    // Read from pages that vanished meanwhile: not the tree's numbers.
    (!guard::is_lost(LEDGER)).then_some(a)
}

pub fn free_now() -> Option<u32> {
    header().map(|h| h.budget.saturating_sub(used_now(h)))
}

/// Why the shared ledger could not be used. Each names one defect.
pub enum Refused {
    Open(i32),
    /// The name is a symbolic link (shm_open refuses to follow it).
    Symlink,
    /// Not ours to open (another user's file, without root).
    Denied,
    /// tmpfs has no room for the ledger's pages.
    NoSpace(i32),
    /// The pages could not be reserved for another reason.
    Reserve(i32),
    NotRegular(u32),
    OtherOwner(u32, u32),
    OpenMode(u32),
    WrongSize(i64),
    Invalid(layout::Invalid),
    NoProc,
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refused::Open(e) => write!(f, "cannot open or create it (errno {e})"),
            Refused::Symlink => f.write_str("it is a symbolic link, which is never followed"),
            Refused::Denied => f.write_str(
                "permission denied (errno 13): another user's file, or not writable by this user",
            ),
            Refused::NoSpace(e) => write!(
                f,
                "no space to reserve its {SIZE} bytes: /dev/shm is full (errno {e}); give it more room (docker run --shm-size)"
            ),
            Refused::Reserve(e) => write!(f, "cannot reserve its {SIZE} bytes (errno {e})"),
            Refused::NotRegular(m) => {
                write!(f, "not a regular file (file type {:#o})", m & 0o170000)
            }
            Refused::OtherOwner(uid, me) => {
                write!(f, "owned by uid {uid}, not by this user (uid {me})")
            }
            Refused::OpenMode(m) => write!(
                f,
                "mode {:04o}, not mode 0600: group or other permission bits are set",
                m & 0o7777
            ),
            Refused::WrongSize(s) => write!(f, "wrong size {s}, expected {SIZE}"),
            Refused::Invalid(i) => write!(f, "{i}"),
            Refused::NoProc => f.write_str(
                "/proc/self/stat is unreadable, so dead members could not be told from live ones",
            ),
        }
    }
}

fn errno() -> i32 {
    // SAFETY: errno of this thread.
    unsafe { *libc::__errno_location() }
}

/// True while a file whose status changed at `st` may still be being sized
/// by its creator (created and sized microseconds apart).
fn recent(st: &libc::stat) -> bool {
    // SAFETY: plain C data; all-zero is a valid value.
    let mut now: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: fills now.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let age = (now.tv_sec - st.st_ctime) as i128 * 1_000_000_000
        + (now.tv_nsec - st.st_ctime_nsec) as i128;
    age < 2_000_000_000
}

/// Opens (or creates, with a budget of `cores`) the ledger `name`. Returns the
/// tree's budget, which may differ from ours (a member narrowed by taskset).
pub fn attach(name: &[u8], cores: u32, source: u32) -> Result<u32, Refused> {
    let mut n = StackBuf::<256>::new();
    n.push_bytes(name);
    let cname = n.as_cstr().ok_or(Refused::Open(libc::ENAMETOOLONG))?;
    if process::my_start_time() == 0 {
        return Err(Refused::NoProc);
    }
    // Before anything is mapped: a fault on the ledger must find our handler.
    guard::install();
    // SAFETY: shm_open with a NUL-terminated name; O_EXCL so we know if we created it.
    let mut fd = unsafe {
        libc::shm_open(
            cname.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    let created = fd >= 0;
    if !created {
        // SAFETY: as above, opening an existing one.
        fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
    }
    if fd < 0 {
        return Err(match errno() {
            // glibc opens with O_NOFOLLOW.
            libc::ELOOP => Refused::Symlink,
            libc::ENOSPC => Refused::NoSpace(libc::ENOSPC),
            libc::EACCES => Refused::Denied,
            e => Refused::Open(e),
        });
    }
    let result = (|| {
        if created {
            // Reserve every page now: on a full tmpfs this fails here, where
            // we can fall back, instead of raising SIGBUS at the first touch.
            // SAFETY: sizing and allocating our new segment.
            match unsafe { libc::posix_fallocate(fd, 0, SIZE as libc::off_t) } {
                0 => {}
                libc::ENOSPC => return Err(Refused::NoSpace(libc::ENOSPC)),
                e => return Err(Refused::Reserve(e)),
            }
        }
        // SAFETY: plain C data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // A joiner may open the name between the creator's create and its
        // sizing: give a creator that is at it up to 200 ms.
        for _ in 0..200 {
            // SAFETY: fstat fills st.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                return Err(Refused::Open(errno()));
            }
            if created || st.st_size != 0 || !recent(&st) {
                break;
            }
            // SAFETY: plain sleep.
            unsafe { libc::usleep(1000) };
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Refused::NotRegular(st.st_mode));
        }
        if st.st_uid != me {
            return Err(Refused::OtherOwner(st.st_uid, me));
        }
        if st.st_mode & 0o077 != 0 {
            return Err(Refused::OpenMode(st.st_mode));
        }
        if st.st_size as usize != SIZE {
            return Err(Refused::WrongSize(st.st_size));
        }
        if !created {
            // Make sure its pages exist (a creator of another version may
            // have left them sparse); never changes the size.
            // SAFETY: fallocate on our descriptor.
            if unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, SIZE as libc::off_t) }
                != 0
                && errno() == libc::ENOSPC
            {
                return Err(Refused::NoSpace(libc::ENOSPC));
            }
        }
        // SAFETY: mapping exactly SIZE bytes of a file we just checked is SIZE long.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Refused::Open(errno()));
        }
        // Guarded from the first touch on.
        guard::guard(LEDGER, p as usize, SIZE);
        let refuse = |why: Refused| {
            guard::unguard(LEDGER);
            // SAFETY: unmapping what we mapped (or the pages guard.rs put there).
            unsafe { libc::munmap(p, SIZE) };
            Err(why)
        };
        let h = p as *mut Header;
        if created {
            // SAFETY: a fresh zeroed mapping that only we know about yet: it is
            // unreadable to others until the magic is written last.
            unsafe {
                (*h).version = VERSION;
                (*h).size = SIZE as u32;
                (*h).budget = cores;
                (*h).source = source;
                (*h).creator = libc::getpid();
                let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
                libc::pthread_mutexattr_init(&mut attr);
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
                libc::pthread_mutex_init((*h).lock.get(), &attr);
                libc::pthread_mutexattr_destroy(&mut attr);
                (*h).used.store(0, Relaxed);
                core::ptr::write_volatile(&mut (*h).magic, MAGIC);
            }
        } else {
            // Another process may be creating it this instant: wait briefly for the magic.
            for _ in 0..200 {
                // SAFETY: reading the mapped header.
                if unsafe { core::ptr::read_volatile(&(*h).magic) } == MAGIC {
                    break;
                }
                // SAFETY: plain sleep.
                unsafe { libc::usleep(1000) };
            }
        }
        // SAFETY: SIZE readable bytes (pages that vanish meanwhile are
        // replaced by zeroed ones, which fail the check).
        let img = unsafe { core::slice::from_raw_parts(p as *const u8, SIZE) };
        if let Err(e) = layout::check(img, guard::lock_kind()) {
            return refuse(Refused::Invalid(e));
        }
        if guard::is_lost(LEDGER) {
            return refuse(Refused::Invalid(layout::Invalid::Empty));
        }
        // SAFETY: written once, before MAP is published.
        unsafe { (*NAME.0.get()).push_bytes(name) };
        MAP.store(p as usize, Release);
        // Take our slot now, not at the first region: a member is visible to
        // the others (and keeps the name alive) for as long as it lives.
        // SAFETY: validated above; `header()` now returns it.
        if let Ok(l) = Locked::new(unsafe { &*h }) {
            let _ = my_slot(l.h);
        }
        // SAFETY: validated above.
        Ok(unsafe { (*h).budget })
    })();
    // SAFETY: the mapping outlives the descriptor.
    unsafe { libc::close(fd) };
    if created && result.is_err() {
        // Our half-made segment must not block the next process.
        // SAFETY: removing the name we just created.
        unsafe { libc::shm_unlink(cname.as_ptr()) };
    }
    if result.is_ok() {
        if created {
            info!(
                "ledger_created name={} cores={} bytes={}",
                Quoted(name),
                cores,
                SIZE
            );
        } else {
            debug!("ledger_joined name={}", Quoted(name));
        }
    }
    result
}

/// For stale-name cleanup: maps the ledger `name` read-only and says whether
/// no live member remains. A ledger cut to zero bytes is abandoned too (its
/// creator is gone: the caller checked). Refuses (false) anything else that
/// does not validate.
pub fn abandoned(name: &[u8]) -> bool {
    let mut n = StackBuf::<256>::new();
    n.push_bytes(name);
    let Some(c) = n.as_cstr() else { return false };
    // SAFETY: read-only open of a NUL-terminated name.
    let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: plain C data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat fills st; getuid has no preconditions.
    let ours = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_uid == unsafe { libc::getuid() };
    let mut empty = ours && st.st_size == 0;
    if ours && st.st_size as usize == SIZE {
        guard::install();
        // SAFETY: read-only mapping of a file of exactly SIZE bytes.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                SIZE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            guard::guard(PROBE, p as usize, SIZE);
            // SAFETY: reading the mapped header (a page that vanishes is
            // replaced by a zeroed one: no magic, not abandoned).
            let h = unsafe { &*(p as *const Header) };
            // SAFETY: `p` is our validated mapping of the header; reads of it are guarded (see guard).
            empty = unsafe { core::ptr::read_volatile(&h.magic) } == MAGIC && no_live_member(h);
            empty &= !guard::is_lost(PROBE);
            guard::unguard(PROBE);
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(p, SIZE) };
        }
    }
    // SAFETY: closing our descriptor.
    unsafe { libc::close(fd) };
    empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// The one test of this binary that attaches (MAP is per process): the
    /// The lock-free counts against the rebuild: 4 threads enter and leave
    /// regions without the lock while another thread rebuilds `used` from
    /// the slots again and again under it (as a reclaim does). No count is
    /// lost or doubled: `used` always equals what the slot holds once the
    /// threads are quiet, and it ends at 0.
    #[test]
    fn lock_free_counts_survive_concurrent_rebuilds() {
        let name = format!("/parbudget-unit-rb-{}", std::process::id());
        let file = format!("/dev/shm{name}");
        let _ = std::fs::remove_file(&file);
        // A private mapping stands in for the named one: this test must not
        // share the process-wide MAP with the truncation test. The header is
        // not Sync (its mutex cell); the threads touch only atomics and plain
        // fields no one writes any more.
        let (h, hp) = private_header(3);
        static REBUILDS: AtomicU64 = AtomicU64::new(0);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // Workers 0 and 2 count in their cells, 1 and 3 in the slot.
        let workers: Vec<_> = (0..4)
            .map(|w| {
                std::thread::spawn(move || {
                    // SAFETY: the leaked allocation above, alive for the test.
                    let h: &Header = unsafe { &*(hp as *const Header) };
                    let cell = (w % 2 == 0).then_some(w);
                    let entry = |want| count_entry(h, 0, cell, want, 0, 1, true);
                    let exit = |n| count_exit(h, 0, cell, n, true);
                    let mut over = 0;
                    let mut k = 0u32;
                    while REBUILDS.load(Relaxed) < 20_000 || k < 20_000 {
                        k += 1;
                        let want = k % 3;
                        let e = loop {
                            match entry(want) {
                                Change::Done(e) => break e,
                                Change::Locked => std::thread::yield_now(),
                            }
                        };
                        over += u32::from(e.over);
                        while let Change::Locked = exit(e.extras + 1) {
                            std::thread::yield_now();
                        }
                    }
                    over
                })
            })
            .collect();
        let s2 = stop.clone();
        let rebuilder = std::thread::spawn(move || {
            // SAFETY: as for the workers.
            let h: &Header = unsafe { &*(hp as *const Header) };
            let mut n = 0;
            while !s2.load(Relaxed) {
                if reclaim_dead(h, true) {
                    n += 1;
                    REBUILDS.store(n, Relaxed);
                }
            }
            n
        });
        for w in workers {
            assert_eq!(w.join().unwrap(), 0, "no promise was asked for");
        }
        stop.store(true, Relaxed);
        let rebuilds = rebuilder.join().unwrap();
        assert!(rebuilds > 0, "the rebuilds ran");
        assert_eq!(h.slots[0].held.load(Relaxed), 0);
        assert_eq!(cells_held(h, 0), 0);
        assert_eq!(h.used.load(Relaxed), 0, "after {rebuilds} rebuilds");
    }

    /// A ledger header in private memory (never freed: tests' threads keep
    /// it), with `budget` and this process in slot 0; and its address.
    fn private_header(budget: u32) -> (&'static Header, usize) {
        process::remember_pid();
        let layout = std::alloc::Layout::from_size_align(SIZE, 64).unwrap();
        // SAFETY: a zeroed allocation of the header's size and alignment;
        // every field is an integer or atomic for which zero is valid.
        let hm = unsafe { std::alloc::alloc_zeroed(layout) as *mut Header };
        // SAFETY: a plain field write before any thread shares the header.
        unsafe { (*hm).budget = budget };
        // SAFETY: as above; from here on only atomics change.
        let h: &'static Header = unsafe { &*hm };
        h.slots[0].pid.store(process::pid(), Relaxed);
        h.slots[0]
            .start_time
            .store(process::my_start_time(), Relaxed);
        (h, hm as usize)
    }

    thread_local! {
        /// Run by `cell_entry` on this thread between its
        /// compare-and-swap and its cell's new count (tests only).
        static PAUSE: core::cell::Cell<Option<fn()>> = const { core::cell::Cell::new(None) };
    }

    pub(super) fn between_count_and_cell() {
        if let Some(f) = PAUSE.with(|p| p.get()) {
            f();
        }
    }

    /// A cell entry stopped between its compare-and-swap on `used` and its
    /// cell's new count: its announcement holds a rebuild back (deferred),
    /// so `used` keeps the entry. Without the announcement the rebuild
    /// would sum the cell without it and `used` would lose the entry.
    #[test]
    fn a_cell_change_in_flight_holds_a_rebuild_back() {
        let (h, hp) = private_header(4);
        static STOPPED: AtomicBool = AtomicBool::new(false);
        static GO: AtomicBool = AtomicBool::new(false);
        let member = std::thread::spawn(move || {
            PAUSE.with(|p| {
                p.set(Some(|| {
                    STOPPED.store(true, SeqCst);
                    while !GO.load(SeqCst) {
                        std::thread::yield_now();
                    }
                }))
            });
            // SAFETY: the allocation above lives until the test ends.
            let h: &Header = unsafe { &*(hp as *const Header) };
            matches!(count_entry(h, 0, Some(3), 1, 0, 1, true), Change::Done(_))
        });
        let t = Instant::now();
        while !STOPPED.load(SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(2), "the entry runs");
            std::thread::yield_now();
        }
        assert_eq!(
            h.used.load(SeqCst),
            2,
            "counted in used, not yet in the cell"
        );
        assert!(!reclaim_dead(h, true), "the rebuild waits, then defers");
        assert_eq!(h.used.load(SeqCst), 2, "and keeps the entry");
        GO.store(true, SeqCst);
        assert!(member.join().unwrap());
        assert!(reclaim_dead(h, true));
        assert_eq!(h.used.load(SeqCst), 2);
        assert_eq!(cells_held(h, 0), 2);
    }

    /// Starts a rebuild of the header at `hp` (alive until the test ends) on
    /// another thread and returns once its fence is up.
    fn rebuild_until_fenced(hp: usize) -> std::thread::JoinHandle<bool> {
        let rebuild = std::thread::spawn(move || {
            // SAFETY: the caller's allocation lives until the test ends.
            reclaim_dead(unsafe { &*(hp as *const Header) }, true)
        });
        // SAFETY: as above.
        let h = unsafe { &*(hp as *const Header) };
        let t = Instant::now();
        while h.used.load(SeqCst) & FENCE == 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "the fence goes up");
            std::thread::yield_now();
        }
        rebuild
    }

    /// The rebuild's fence, step by step: an update in flight (announced,
    /// `used` raised, `held` not yet) holds the rebuild back; a new update
    /// meets the fence and must take the lock; once the update finishes, the
    /// rebuild completes with `used` equal to what the slot holds. An update
    /// that never finishes (a stopped member) defers the rebuild unchanged.
    #[test]
    fn a_rebuild_waits_for_updates_in_flight_and_fences_new_ones() {
        let (h, hp) = private_header(4);
        // An update stopped between its two steps.
        h.busy[0].fetch_add(1, SeqCst);
        h.used.fetch_add(1, SeqCst);
        let rebuild = rebuild_until_fenced(hp);
        // A new update meets the fence.
        assert!(matches!(
            count_entry(h, 0, None, 1, 0, 1, true),
            Change::Locked
        ));
        assert!(matches!(count_exit(h, 0, None, 1, true), Change::Locked));
        assert_eq!(
            h.used.load(SeqCst),
            1 | FENCE,
            "nothing moved under the fence"
        );
        // The stopped update finishes in time: the rebuild completes.
        h.slots[0].held.fetch_add(1, SeqCst);
        h.busy[0].fetch_sub(1, SeqCst);
        assert!(rebuild.join().unwrap(), "the rebuild completed");
        assert_eq!(h.used.load(SeqCst), 1);
        // One that never finishes: deferred after the patience, nothing changed.
        h.busy[0].fetch_add(1, SeqCst);
        h.used.fetch_add(2, SeqCst);
        let t = Instant::now();
        assert!(!reclaim_dead(h, true), "deferred");
        assert!(t.elapsed() >= Duration::from_millis(FENCE_PATIENCE_MS - 5));
        assert_eq!(h.used.load(SeqCst), 3, "fence down, counts untouched");
        h.slots[0].held.fetch_add(2, SeqCst);
        h.busy[0].fetch_sub(1, SeqCst);

        // The same through a cell: an entry stopped after its announcement
        // and its compare-and-swap holds the rebuild back.
        let cell = &h.cells[0].0[5];
        cell.store(CELL_BUSY, Relaxed);
        h.used.fetch_add(1, SeqCst);
        let rebuild = rebuild_until_fenced(hp);
        // Another thread's cell change meets the fence and is withdrawn.
        let other = &h.cells[0].0[6];
        other.store(1, Relaxed);
        assert!(matches!(
            count_entry(h, 0, Some(6), 1, 0, 1, true),
            Change::Locked
        ));
        assert!(matches!(count_exit(h, 0, Some(6), 1, true), Change::Locked));
        assert_eq!(other.load(Relaxed), 1, "withdrawn: the cell as it was");
        assert_eq!(h.used.load(SeqCst), 4 | FENCE, "nothing moved");
        // The stopped entry finishes: the rebuild sums slot and cells.
        cell.store(1, Release);
        assert!(rebuild.join().unwrap(), "the rebuild completed");
        assert_eq!(h.used.load(SeqCst), 3 + 1 + 1, "slot 3, cells 1 + 1");
        assert_eq!(cells_held(h, 0), 2);
    }

    /// ledger truncated while thread A holds its lock and thread B waits for
    /// it. A's access faults and is contained, A's unlock is an ordinary
    /// robust unlock (its robust list is empty again after it), B gives up
    /// on the lost ledger at once, and the loss is told once.
    #[test]
    fn truncation_under_a_held_lock_is_contained() {
        let name = format!("/parbudget-unit-{}", std::process::id());
        let file = format!("/dev/shm{name}");
        struct Remove(String);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _ = std::fs::remove_file(&file);
        let _cleanup = Remove(file.clone());
        process::remember_pid();
        let tree = attach(name.as_bytes(), 4, 1).unwrap_or_else(|e| panic!("attach: {e}"));
        assert_eq!(tree, 4);
        assert!(std::fs::metadata(&file).unwrap().len() as usize == SIZE);
        let cell = thread_state::my_cell();
        assert!(enter(1, 0, true, cell).is_some(), "shared ledger in use");
        assert!(leave(1, true, cell));

        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let a = std::thread::spawn(move || {
            let before = guard::links_before_lock();
            let l = Locked::new(header().unwrap()).ok().unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // The page under `used` is gone: SIGBUS, contained, reads 0.
            let used = l.h.used.load(Relaxed);
            drop(l);
            let after = guard::links_before_lock();
            (used, before.pre_is_empty(), after.pre_is_empty())
        });
        ready_rx.recv().unwrap();
        // B waits for the lock (region counts take no lock; claiming a slot,
        // reclaiming and leaving the tree do).
        let b = std::thread::spawn(|| {
            let t = Instant::now();
            let got = header().is_none_or(|h| Locked::new(h).is_err());
            (got, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(0)
            .unwrap();
        go_tx.send(()).unwrap();
        let (used, empty_before, empty_after) = a.join().unwrap();
        assert_eq!(used, 0, "the replaced pages read as zero");
        assert!(empty_before, "the test thread held no robust lock before");
        assert!(
            empty_after || !cfg!(target_env = "gnu"),
            "the holder's robust list is whole: glibc unlinked the ledger's entry"
        );
        let (lost, waited) = b.join().unwrap();
        assert!(lost, "the waiter falls back");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert!(guard::is_lost(LEDGER));
        assert_eq!(guard::loss(LEDGER), Some(Loss::Sigbus));
        assert!(header().is_none() && audit().is_none() && free_now().is_none());
        let told = take_loss().map(|(w, n)| (w, n.to_vec()));
        assert_eq!(told, Some((Loss::Sigbus, name.as_bytes().to_vec())));
        assert!(take_loss().is_none(), "told once");
        assert!(!leave_tree(), "a lost ledger's name is left alone");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    }
}
