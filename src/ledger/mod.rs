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
use core::fmt::Write;
use log::{info, warn};

/// The per-process ledger: used with PARBUDGET_SCOPE=process, or when the
/// shared one cannot be used. While the shared one is used it mirrors what
/// this process holds there.
static LOCAL: Ledger = Ledger::new();

/// A caller enters a region wanting `want` extra workers, of which it must
/// have at least `need` (a team it was promised: see hooks::grant). From the
/// tree's ledger if attached, else from this process's. Returns the extras
/// granted and whether they took the ledger over the budget. `count_caller`
/// is false for a region nested on a thread already counted by an enclosing
/// region (it must not count twice).
pub fn enter(want: u32, need: u32, count_caller: bool) -> Entered {
    match shared::enter(want, need, count_caller) {
        Some(e) => {
            LOCAL.add_used(e.extras + u32::from(count_caller));
            e
        }
        None => {
            tell_loss();
            LOCAL.enter_as(want, need, count_caller)
        }
    }
}

/// The region entered with `extras` (and the same `count_caller`) ended.
pub fn leave(extras: u32, count_caller: bool) {
    if !shared::leave(extras, count_caller) {
        tell_loss();
    }
    LOCAL.leave_as(extras, count_caller);
}

/// The one line a process writes when it loses the shared ledger, at its
/// first ledger call after the loss (never from the signal handler).
fn tell_loss() {
    if let Some((why, name)) = shared::take_loss() {
        warn!(
            "ledger_lost name={} reason=\"{}\" using=\"a ledger for this process only\" held_here={} advice=\"processes of this tree may together exceed the budget; leave /dev/shm/parbudget-* alone while they run\"",
            Quoted(name),
            why.reason(),
            LOCAL.used()
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
}

pub fn audit() -> Audit {
    shared::audit().unwrap_or_else(|| {
        let used = LOCAL.used();
        Audit {
            shared: false,
            budget: LOCAL.cores(),
            used,
            members: 1,
            held_here: used,
        }
    })
}

pub fn free() -> u32 {
    shared::free_now().unwrap_or_else(|| {
        tell_loss();
        LOCAL.free()
    })
}

/// Free threads, for a query that would like `want`: dead members of the
/// tree are reclaimed first when that many are not free.
pub fn free_for(want: u32) -> u32 {
    shared::free_for(want).unwrap_or_else(|| {
        tell_loss();
        LOCAL.free()
    })
}

/// Atfork child handler: flags and atomic stores only.
pub fn reset_in_child(cores: u32, held_here: u32) {
    LOCAL.reset(cores, held_here);
    shared::forget_slot_in_child();
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

/// Sets up the ledger at init and returns this process's team cap: its own
/// budget, or the tree's when that is smaller (then with the tree's source).
/// A member whose own budget is smaller (narrowed by taskset, or an explicit
/// PARBUDGET_CORES) keeps it as its cap while counting in the tree's ledger.
pub fn setup(scope: Scope, cores: u32, source_code: u32) -> (u32, Option<u32>) {
    LOCAL.reset(cores, 0);
    if scope == Scope::Process {
        return (cores, None);
    }
    let name = match crate::config::getenv(c"PARBUDGET_LEDGER") {
        Some(n)
            if n.as_bytes().starts_with(b"/")
                && n.len() < 200
                && !n.as_bytes()[1..].contains(&b'/') =>
        {
            n
        }
        Some(bad) => {
            warn!(
                "bad_env var=PARBUDGET_LEDGER value={} using=\"a new ledger for this tree\" reason=\"expected a name like /parbudget-myjob (one leading slash, no other)\"",
                Quoted(bad.as_bytes())
            );
            new_name()
        }
        None => {
            cleanup_stale();
            new_name()
        }
    };
    match shared::attach(name.as_bytes(), cores, source_code) {
        Ok(tree) => {
            if let Some(c) = name.clone().as_cstr() {
                // SAFETY: NUL-terminated strings; children inherit the name.
                unsafe { libc::setenv(c"PARBUDGET_LEDGER".as_ptr(), c.as_ptr(), 1) };
            }
            if tree < cores {
                info!("budget_capped cores={} by=tree own={}", tree, cores);
                return (tree, shared::budget().map(|(_, s)| s));
            }
            if tree > cores {
                info!("budget_own cores={} tree={}", cores, tree);
            }
            (cores, None)
        }
        Err(e) => {
            warn!(
                "ledger_fallback name={} reason=\"{}\" using=\"a ledger for this process only\" advice=\"processes of this tree may together exceed the budget; set PARBUDGET_SCOPE=process to silence\"",
                Quoted(name.as_bytes()),
                e
            );
            (cores, None)
        }
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
}
