//! The ledger of the budget: how many threads are working in regions right
//! now, callers included. A region's team is its caller, always granted
//! (never blocking, so nothing can deadlock on the ledger), plus the extra
//! workers that still fit in the budget: never more than asked, never fewer
//! than one. Everything goes back when the region ends.
//!
//! Callers count because they run: four threads already in regions on a
//! 2-core budget oversubscribe it with no extra worker at all, so none is
//! granted; a lone caller gets the whole budget.
//!
//! With the tree's shared ledger in use, the process's own ledger (`LOCAL`)
//! still counts the threads this process holds. It is what the process
//! falls back to if the shared one is lost while it runs (shared.rs): then
//! regions entered before the loss are given back where they are counted.

mod guard;
mod layout;
pub mod local;
pub mod shared;

use local::Ledger;
pub use local::{Entered, team};

use crate::stackbuf::{Quoted, StackBuf};
use crate::thread_state;
use core::cell::{Cell, UnsafeCell};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering::*};
use log::{info, warn};

/// The per-process ledger: used with PARBUDGET_SCOPE=process, or when the
/// shared one cannot be used. While the shared one is used it mirrors what
/// this process holds there: each thread with a cell (`thread_state::my_cell`)
/// in its own cell of LOCAL, with plain stores, the others in its count.
/// Before, every region added to that count and took from it with a
/// compare-and-swap each way; the tiny-region row read 1.03x to 1.04x of no
/// shim with them and 1.005x to 1.016x without (interleaved, 40 paired
/// rounds, a quarter second's pause before each run as the bench does). The
/// process holds the count plus the cells: that sum is what its own ledger
/// counts if the shared one is lost while threads are inside regions
/// (entries after a loss go to the count; an exit takes from the thread's
/// cell first, then from the count, so the sum stays right).
static LOCAL: Ledger = Ledger::new();

/// A caller enters a region wanting `want` extra workers, of which it must
/// have at least `need` (a team it was promised: see hooks::grant). From the
/// tree's ledger if attached, else from this process's. Returns the extras
/// granted and whether they took the ledger over the budget. `count_caller`
/// is false for a region nested on a thread already counted by an enclosing
/// region (it must not count twice). `cell` is the calling thread's
/// (`thread_state::my_cell`), looked up once by the caller for both ledgers
/// and its statistics.
#[inline]
pub fn enter(cell: Option<usize>, want: u32, need: u32, count_caller: bool) -> Entered {
    ensure_attached();
    match shared::enter(want, need, count_caller, cell) {
        Some(e) => {
            LOCAL.mirror_add(cell, e.extras + u32::from(count_caller));
            e
        }
        None => {
            tell_loss();
            LOCAL.enter_beside(want, need, count_caller, LOCAL.mirrored())
        }
    }
}

/// This thread gives back the threads it keeps counted between regions (its
/// lease: see shared.rs, "Leases"), if any.
pub fn release_lease() {
    shared::release_lease();
}

/// A thread ends: its shared-ledger cell can serve another thread.
pub fn release_cell() {
    shared::release_cell();
}

/// The region entered with `extras` (and the same `count_caller`) ended.
#[inline]
pub fn leave(extras: u32, count_caller: bool) {
    let cell = thread_state::my_cell();
    if !shared::leave(extras, count_caller, cell) {
        tell_loss();
    }
    LOCAL.mirror_take(cell, extras + u32::from(count_caller));
}

/// The one line a process writes when it loses the shared ledger, at its
/// first ledger call after the loss (never from the signal handler).
fn tell_loss() {
    if let Some((why, name)) = shared::take_loss() {
        warn!(
            "ledger_lost name={} reason=\"{}\" using=\"a ledger for this process only\" held_here={} advice=\"processes of this tree may together exceed the budget; leave /dev/shm/parbudget-* alone while they run\"",
            Quoted(name),
            why.reason(),
            held_by_process()
        );
    }
}

/// What a ledger holds right now (for the report and `parbudget ledger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The tree's shared ledger (false: this process's own).
    pub shared: bool,
    pub budget: u32,
    /// Threads counted in use, by every member.
    pub used: u32,
    /// Member processes with a slot (1 for a process's own ledger).
    pub members: u32,
    /// Threads this process holds.
    pub held_here: u32,
    /// Of those, what its idle threads keep counted between regions (their
    /// leases: see shared.rs), which a member short of threads takes back.
    pub leased_here: u32,
    /// The tree's ledger is planned but not joined yet (this process ran no
    /// region, BLAS call or query so far): the numbers are this process's.
    pub pending: bool,
}

pub fn audit() -> Audit {
    shared::audit().unwrap_or_else(|| {
        let used = held_by_process();
        Audit {
            shared: false,
            budget: LOCAL.cores(),
            used,
            members: 1,
            held_here: used,
            leased_here: 0,
            pending: matches!(ATTACH.load(Acquire), NOT_YET | ATTACHING),
        }
    })
}

/// The tree ledger's name, with the tree scope (joined or not yet).
pub fn name() -> Option<&'static [u8]> {
    // SAFETY: written once by setup before ATTACH left OFF (Acquire).
    (ATTACH.load(Acquire) != OFF).then(|| unsafe { (*PLAN_NAME.0.get()).as_bytes() })
}

pub fn free() -> u32 {
    ensure_attached();
    shared::free_now().unwrap_or_else(|| {
        tell_loss();
        local_free()
    })
}

/// Free threads, for a query that would like `want`: dead members of the
/// tree are reclaimed first when that many are not free.
pub fn free_for(want: u32) -> u32 {
    ensure_attached();
    shared::free_for(want).unwrap_or_else(|| {
        tell_loss();
        local_free()
    })
}

/// Atfork child handler: flags and atomic stores only, each made only where
/// the value changes (every page a child writes is copied for it).
pub fn reset_in_child(cores: u32, held_here: u32) {
    // The forking thread's holdings move to LOCAL's count (the child has no
    // cell of the tree's ledger yet); its cells are emptied.
    LOCAL.reset_if_changed(cores, held_here);
    LOCAL.clear_mirror();
    shared::forget_slot_in_child();
    reset_attach_in_child();
}

/// Threads this process holds in regions right now (its own ledger's count,
/// kept for every process).
pub fn held_by_process() -> u32 {
    LOCAL.used().saturating_add(LOCAL.mirrored())
}

/// Free threads by this process's own count (its ledger's, with the mirror).
fn local_free() -> u32 {
    LOCAL.cores().saturating_sub(held_by_process())
}

/// True when `at_exit` has something to give back (reads only).
pub fn holds_slot() -> bool {
    shared::holds_slot()
}

/// At exit (and `_exit`): give our share back. The last member to leave a
/// ledger whose name we generated removes the name; a name the user chose
/// stays (it is reused, and dead members' slots are reclaimed).
pub fn at_exit() {
    let last = shared::leave_tree();
    tell_loss();
    if last
        && let Some(mut name) =
            crate::config::getenv(c"PARBUDGET_LEDGER").filter(|n| is_generated(n.as_bytes()))
        && let Some(c) = name.as_cstr()
    {
        // SAFETY: removing the name only; members keep their mappings.
        unsafe { libc::shm_unlink(c.as_ptr()) };
    }
}

/// Scope of the budget.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    Tree,
    Process,
}

/// Where attaching to the tree's ledger stands. Init only decides the name;
/// the segment is opened (or created), validated and mapped at the first
/// region, BLAS call or thread-count query that needs it, so a process that
/// never runs one (`python -c pass`, a forked child that only execs or
/// exits) does no ledger work: no /dev/shm scan, no segment, no slot.
const OFF: u8 = 0;
const NOT_YET: u8 = 1;
const ATTACHING: u8 = 2;
const DONE: u8 = 3;

static ATTACH: AtomicU8 = AtomicU8::new(OFF);
/// The plan init made: our own budget and its source (a creator writes them
/// into the segment), and whether the name is one we generated.
static PLAN_CORES: AtomicU32 = AtomicU32::new(1);
static PLAN_SOURCE: AtomicU32 = AtomicU32::new(0);
static PLAN_GENERATED: AtomicBool = AtomicBool::new(false);
/// The tree's budget once attached, when it is smaller than ours (0: none).
static TREE_CAP: AtomicU32 = AtomicU32::new(0);
static TREE_SOURCE: AtomicU32 = AtomicU32::new(0);

/// The ledger's name. Written once by `setup` (init, before ATTACH leaves
/// OFF with Release), read only after.
struct Plan(UnsafeCell<StackBuf<256>>);
// SAFETY: see above: one write before publication, reads after.
unsafe impl Sync for Plan {}
static PLAN_NAME: Plan = Plan(UnsafeCell::new(StackBuf::new()));

thread_local! {
    /// This thread is attaching (a hook reached from inside the attach).
    static ATTACHING_HERE: Cell<bool> = const { Cell::new(false) };
}

/// At init: the per-process ledger gets our budget, and with the tree scope
/// the shared ledger's name is decided and exported to children. Nothing is
/// opened here (see ATTACH).
pub fn setup(scope: Scope, cores: u32, source_code: u32) {
    LOCAL.reset(cores, 0);
    if scope == Scope::Process {
        return;
    }
    shared::register_for_steals();
    let (name, generated) = match crate::config::getenv(c"PARBUDGET_LEDGER") {
        Some(n)
            if n.as_bytes().starts_with(b"/")
                && n.len() < 200
                && !n.as_bytes()[1..].contains(&b'/') =>
        {
            let generated = is_generated(n.as_bytes());
            (n, generated)
        }
        Some(bad) => {
            warn!(
                "bad_env var=PARBUDGET_LEDGER value={} using=\"a new ledger for this tree\" reason=\"expected a name like /parbudget-myjob (one leading slash, no other)\"",
                Quoted(bad.as_bytes())
            );
            (new_name(), true)
        }
        None => (new_name(), true),
    };
    if let Some(c) = name.clone().as_cstr() {
        // At init, before the program's own threads read the environment.
        // Children inherit the name.
        crate::environ::set(c"PARBUDGET_LEDGER", c);
    }
    // SAFETY: the one write, before ATTACH is published below.
    unsafe { (*PLAN_NAME.0.get()).push_bytes(name.as_bytes()) };
    PLAN_CORES.store(cores, Relaxed);
    PLAN_SOURCE.store(source_code, Relaxed);
    PLAN_GENERATED.store(generated, Relaxed);
    ATTACH.store(NOT_YET, Release);
}

/// Attaches to the tree's ledger if that is still to do (see ATTACH). Other
/// threads arriving meanwhile wait for the one attaching (it takes well under
/// a millisecond, at most ~200 ms while another process creates the segment).
#[inline]
pub fn ensure_attached() {
    if matches!(ATTACH.load(Acquire), OFF | DONE) {
        return;
    }
    attach_slow();
}

/// The first ledger call of this process, or one racing it (out of line:
/// every region's ready path is one load).
#[cold]
#[inline(never)]
fn attach_slow() {
    if ATTACHING_HERE.with(|a| a.get()) {
        return;
    }
    match ATTACH.compare_exchange(NOT_YET, ATTACHING, AcqRel, Acquire) {
        Ok(_) => {
            ATTACHING_HERE.with(|a| a.set(true));
            // Callers are hooks, some outside their panic fence: a panic here
            // (none is known) leaves the process on its own ledger.
            let _ = std::panic::catch_unwind(attach_now);
            ATTACH.store(DONE, Release);
            ATTACHING_HERE.with(|a| a.set(false));
        }
        Err(_) => {
            while ATTACH.load(Acquire) == ATTACHING {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
}

fn attach_now() {
    // SAFETY: written once by setup before ATTACH left OFF (Acquire above).
    let name = unsafe { (*PLAN_NAME.0.get()).as_bytes() };
    let cores = PLAN_CORES.load(Relaxed);
    if PLAN_GENERATED.load(Relaxed) {
        cleanup_stale();
    }
    match shared::attach(name, cores, PLAN_SOURCE.load(Relaxed)) {
        Ok(tree) if tree < cores => {
            if let Some((_, source)) = shared::budget() {
                TREE_SOURCE.store(source, Relaxed);
            }
            TREE_CAP.store(tree, Release);
            info!("budget_capped cores={} by=tree own={}", tree, cores);
        }
        Ok(tree) => {
            if tree > cores {
                info!("budget_own cores={} tree={}", cores, tree);
            }
        }
        Err(e) => {
            warn!(
                "ledger_fallback name={} reason=\"{}\" using=\"a ledger for this process only\" advice=\"processes of this tree may together exceed the budget; set PARBUDGET_SCOPE=process to silence\"",
                Quoted(name),
                e
            );
        }
    }
}

/// The tree's budget and its source code, when it caps ours (known once
/// attached).
pub fn tree_cap() -> Option<(u32, u32)> {
    let t = TREE_CAP.load(Acquire);
    (t != 0).then(|| (t, TREE_SOURCE.load(Relaxed)))
}

/// Atfork child: an attach another thread had in progress at the fork never
/// finishes here; the child attaches itself when it needs to. Written only
/// when that is the case (a child writes as few pages as it can).
fn reset_attach_in_child() {
    if ATTACH.load(Relaxed) == ATTACHING {
        ATTACH.store(NOT_YET, Relaxed);
    }
}

fn is_generated(name: &[u8]) -> bool {
    // SAFETY: getuid has no preconditions.
    let mut p = StackBuf::<64>::new();
    // SAFETY: libc calls with no preconditions on plain values.
    let _ = write!(p, "/parbudget-{}-", unsafe { libc::getuid() });
    name.starts_with(p.as_bytes())
}

fn new_name() -> StackBuf<1024> {
    let mut n = StackBuf::new();
    // SAFETY: getuid/getpid have no preconditions.
    let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
    // SAFETY: plain C data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let _ = write!(
        n,
        "/parbudget-{uid}-{pid}-{:x}",
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    );
    n
}

/// Removes this user's generated ledgers that no live process uses (their
/// last member was killed, or they were cut to zero bytes). Only names of our
/// own pattern and uid are touched, and only once their creator is gone.
fn cleanup_stale() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let prefix = format!("parbudget-{uid}-");
    let Ok(rd) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks existence.
        let creator_gone = unsafe { libc::kill(pid, 0) } != 0
            && unsafe { *libc::__errno_location() } == libc::ESRCH;
        if creator_gone
            && shared::abandoned(format!("/{name}").as_bytes())
            && let Ok(c) = std::ffi::CString::new(format!("/{name}"))
        {
            // SAFETY: NUL-terminated name of our own pattern.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layout_bound_is_the_budget_bound() {
        assert_eq!(super::layout::MAX_BUDGET, crate::budget::MAX_CORES);
    }

    #[test]
    fn the_ledger_has_a_cell_for_every_cell_a_thread_can_claim() {
        assert_eq!(super::layout::CELLS, crate::thread_state::CELLS);
    }
}
