//! The ledger of the budget: how many threads are working in regions right
//! now, callers included. A region's team is its caller, always granted
//! (never blocking, so nothing can deadlock on the ledger), plus the extra
//! workers that still fit in the budget: never more than asked, never fewer
//! than one. Everything goes back when the region ends.
//!
//! Callers count because they run: four threads already in regions on a
//! 2-core budget oversubscribe it with no extra worker at all, so none is
//! granted; a lone caller gets the whole budget.

pub mod shared;

use crate::stackbuf::{Quoted, StackBuf};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering::*};
use log::{info, warn};

/// The per-process ledger: used with PARBUDGET_SCOPE=process, or when the
/// shared one cannot be used.
static LOCAL: Ledger = Ledger::new();

/// A caller enters a region wanting `want` extra workers, of which it must
/// have at least `need` (a team it was promised: see hooks::grant). From the
/// tree's ledger if attached, else from this process's. Returns the extras
/// granted and whether they took the ledger over the budget. `count_caller`
/// is false for a region nested on a thread already counted by an enclosing
/// region (it must not count twice).
pub fn enter(want: u32, need: u32, count_caller: bool) -> Entered {
    shared::enter(want, need, count_caller)
        .unwrap_or_else(|| LOCAL.enter_as(want, need, count_caller))
}

/// What `enter` granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entered {
    pub extras: u32,
    /// The grant kept a promise beyond what fit in the budget.
    pub over: bool,
}

/// The extras a caller gets: what it needs, else as many as it wants that
/// fit in `free_for_extras`. Pure: the arithmetic both ledgers share.
pub fn extras_for(want: u32, need: u32, free_for_extras: u32) -> Entered {
    let fit = want.min(free_for_extras);
    let need = need.min(want);
    Entered {
        extras: fit.max(need),
        over: need > fit,
    }
}

/// The region entered with `extras` (and the same `count_caller`) ended.
pub fn leave(extras: u32, count_caller: bool) {
    if !shared::leave(extras, count_caller) {
        LOCAL.leave_as(extras, count_caller);
    }
}

pub fn free() -> u32 {
    shared::free_now().unwrap_or_else(|| LOCAL.free())
}

/// Free threads, for a query that would like `want`: dead members of the
/// tree are reclaimed first when that many are not free.
pub fn free_for(want: u32) -> u32 {
    shared::free_for(want).unwrap_or_else(|| LOCAL.free())
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
    if shared::leave_tree() {
        if let Some(mut name) =
            crate::config::getenv(c"PARBUDGET_LEDGER").filter(|n| is_generated(n.as_bytes()))
        {
            if let Some(c) = name.as_cstr() {
                // SAFETY: removing the name only; members keep their mappings.
                unsafe { libc::shm_unlink(c.as_ptr()) };
            }
        }
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
    let _ = write!(p, "/parbudget-{}-", unsafe { libc::getuid() });
    name.starts_with(p.as_bytes())
}

fn new_name() -> StackBuf<1024> {
    let mut n = StackBuf::new();
    // SAFETY: getuid/getpid have no preconditions.
    let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
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
/// last member was killed). Only names of our own pattern and uid are touched.
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
        if creator_gone && shared::abandoned(format!("/{name}").as_bytes()) {
            if let Ok(c) = std::ffi::CString::new(format!("/{name}")) {
                // SAFETY: NUL-terminated name of our own pattern.
                unsafe { libc::shm_unlink(c.as_ptr()) };
            }
        }
    }
}

pub struct Ledger {
    used: AtomicU32,
    cores: AtomicU32,
}

impl Ledger {
    pub const fn new() -> Ledger {
        Ledger {
            used: AtomicU32::new(0),
            cores: AtomicU32::new(1),
        }
    }

    /// Sets the budget; `held_here` threads are still in use (a forked child
    /// inside a region it entered before the fork).
    pub fn reset(&self, cores: u32, held_here: u32) {
        self.cores.store(cores.max(1), Relaxed);
        self.used.store(held_here, Release);
    }

    /// A caller enters a region wanting `want` extra workers: counts the
    /// caller and grants what fits. Returns the extras granted.
    #[cfg(test)]
    pub fn enter(&self, want: u32) -> u32 {
        self.enter_as(want, 0, true).extras
    }

    /// As `enter`; with `count_caller` false the caller is already counted
    /// (a nested region on the same thread) and only extras are taken.
    pub fn enter_as(&self, want: u32, need: u32, count_caller: bool) -> Entered {
        let cores = self.cores.load(Relaxed);
        let me = u32::from(count_caller);
        let mut cur = self.used.load(Relaxed);
        loop {
            let e = extras_for(want, need, cores.saturating_sub(cur.saturating_add(me)));
            match self.used.compare_exchange_weak(
                cur,
                cur.saturating_add(me + e.extras),
                Acquire,
                Relaxed,
            ) {
                Ok(_) => return e,
                Err(now) => cur = now,
            }
        }
    }

    /// The region entered with `extras` ended: the caller and its extras go back.
    #[cfg(test)]
    pub fn leave(&self, extras: u32) {
        self.leave_as(extras, true);
    }

    pub fn leave_as(&self, extras: u32, count_caller: bool) {
        let n = extras + u32::from(count_caller);
        let _ = self
            .used
            .fetch_update(Release, Relaxed, |u| Some(u.saturating_sub(n)));
    }

    /// Threads of the budget not in use now.
    pub fn free(&self) -> u32 {
        self.cores
            .load(Relaxed)
            .saturating_sub(self.used.load(Relaxed))
    }
}

/// Team size of a caller granted `extras`.
pub fn team(extras: u32) -> u32 {
    1 + extras
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_caller_gets_the_whole_budget() {
        let l = Ledger::new();
        l.reset(4, 0);
        assert_eq!(l.enter(63), 3);
        assert_eq!(team(3), 4);
        l.leave(3);
        assert_eq!(l.free(), 4);
    }

    #[test]
    fn concurrent_callers_share_and_never_get_zero() {
        let l = Ledger::new();
        l.reset(2, 0);
        let a = l.enter(1);
        let b = l.enter(1);
        assert_eq!(
            (a, b),
            (1, 0),
            "the second caller alone fills... nothing is left"
        );
        assert_eq!((team(a), team(b)), (2, 1));
        l.leave(a);
        assert_eq!(
            l.enter(5),
            0,
            "b still runs: one core left, taken by the new caller itself"
        );
        l.leave(0);
        l.leave(b);
        assert_eq!(l.free(), 2);
    }

    #[test]
    fn callers_beyond_the_budget_still_run_alone() {
        let l = Ledger::new();
        l.reset(2, 0);
        let grants: Vec<u32> = (0..4).map(|_| l.enter(1)).collect();
        assert_eq!(grants, vec![1, 0, 0, 0]);
        assert_eq!(l.free(), 0);
        for g in grants {
            l.leave(g);
        }
        assert_eq!(l.free(), 2);
    }

    #[test]
    fn nested_regions_on_one_thread_do_not_count_it_twice() {
        let l = Ledger::new();
        l.reset(4, 0);
        let outer = l.enter(1);
        assert_eq!(outer, 1);
        let inner = l.enter_as(3, 0, false).extras;
        assert_eq!(
            inner, 2,
            "4 cores - (the caller, counted once, + the outer extra)"
        );
        l.leave_as(inner, false);
        l.leave(outer);
        assert_eq!(l.free(), 4);
    }

    #[test]
    fn a_promised_team_is_kept_over_budget_and_counted() {
        let l = Ledger::new();
        l.reset(2, 0);
        let a = l.enter_as(1, 1, true);
        assert_eq!(
            a,
            Entered {
                extras: 1,
                over: false
            },
            "a lone caller fits"
        );
        let b = l.enter_as(1, 1, true);
        assert_eq!(
            b,
            Entered {
                extras: 1,
                over: true
            },
            "the promise is kept"
        );
        assert_eq!(l.free(), 0);
        l.leave_as(b.extras, true);
        l.leave_as(a.extras, true);
        assert_eq!(l.free(), 2, "everything comes back");
    }

    #[test]
    fn extras_for_never_exceeds_want_and_never_drops_need() {
        for want in 0..6 {
            for need in 0..6 {
                for free in 0..6 {
                    let e = extras_for(want, need, free);
                    assert!(e.extras <= want);
                    assert!(e.extras >= need.min(want));
                    assert_eq!(e.over, need.min(want) > want.min(free));
                    if !e.over {
                        assert!(e.extras <= free);
                    }
                }
            }
        }
    }

    #[test]
    fn never_more_than_asked() {
        let l = Ledger::new();
        l.reset(8, 0);
        assert_eq!(l.enter(2), 2);
        assert_eq!(l.free(), 5);
    }

    #[test]
    fn reset_in_child_keeps_what_the_forking_thread_holds() {
        let l = Ledger::new();
        l.reset(4, 2);
        assert_eq!(l.free(), 2);
    }

    #[test]
    fn many_threads_never_oversubscribe() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU32;
        let l = Arc::new(Ledger::new());
        l.reset(3, 0);
        let extras_in_use = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (l, in_use, max_seen) = (l.clone(), extras_in_use.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let g = l.enter(4);
                        let now = in_use.fetch_add(g, SeqCst) + g;
                        max_seen.fetch_max(now, SeqCst);
                        in_use.fetch_sub(g, SeqCst);
                        l.leave(g);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(max_seen.load(SeqCst) <= 2, "extras never exceed budget - 1");
        assert_eq!(l.free(), 3);
    }
}
