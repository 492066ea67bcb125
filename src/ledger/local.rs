//! The budget arithmetic, pure: what a caller gets (`extras_for`), and the
//! per-process ledger (an atomic count) used with PARBUDGET_SCOPE=process or
//! when the shared ledger cannot be used (and, while it is used, counting what
//! this process holds there, ready to take over if it is lost). The shared
//! ledger (`shared`) does the same arithmetic under its mutex.

use crate::thread_state::CELLS;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};

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

pub struct Ledger {
    used: AtomicU32,
    cores: AtomicU32,
    /// Some thread counted itself in `cells` (see `mirror_add`).
    mirrored: AtomicBool,
    /// Threads held elsewhere by the thread of each cell
    /// (`thread_state::my_cell`), one writer per cell: the process's mirror of
    /// its cells in the tree's ledger (`ledger::enter`). Beside `used`, so a
    /// forked child reads them from a page its parent already touched.
    cells: [AtomicU32; CELLS],
}

impl Ledger {
    pub const fn new() -> Ledger {
        Ledger {
            used: AtomicU32::new(0),
            cores: AtomicU32::new(1),
            mirrored: AtomicBool::new(false),
            cells: [const { AtomicU32::new(0) }; CELLS],
        }
    }

    /// Counts `n` threads that the thread of `cell` took elsewhere, with
    /// plain stores (its own cell): no locked instruction. Without a cell,
    /// in `used`.
    #[inline]
    pub fn mirror_add(&self, cell: Option<usize>, n: u32) {
        match cell.and_then(|c| self.cells.get(c)) {
            Some(m) => {
                m.store(m.load(Relaxed).saturating_add(n), Relaxed);
                if !self.mirrored.load(Relaxed) {
                    self.mirrored.store(true, Relaxed);
                }
            }
            None => self.add_used(n),
        }
    }

    /// `n` threads of a region of `cell`'s thread go back: from its cell as
    /// far as it holds them, the rest from `used` (a region entered here
    /// after the shared ledger was lost, or before a fork).
    #[inline]
    pub fn mirror_take(&self, cell: Option<usize>, n: u32) {
        let rest = match cell.and_then(|c| self.cells.get(c)) {
            Some(m) => {
                let held = m.load(Relaxed);
                let d = held.min(n);
                if d > 0 {
                    m.store(held - d, Relaxed);
                }
                n - d
            }
            None => n,
        };
        if rest > 0 {
            self.leave_as(rest, false);
        }
    }

    /// Threads the cells hold.
    pub fn mirrored(&self) -> u32 {
        if !self.mirrored.load(Relaxed) {
            return 0;
        }
        self.cells
            .iter()
            .fold(0u32, |a, m| a.saturating_add(m.load(Relaxed)))
    }

    /// Empties the cells (a forked child: what its forking thread holds is
    /// given to `reset_if_changed`), writing only where one holds something.
    pub fn clear_mirror(&self) {
        if !self.mirrored.load(Relaxed) {
            return;
        }
        for m in &self.cells {
            if m.load(Relaxed) != 0 {
                m.store(0, Relaxed);
            }
        }
    }

    /// Sets the budget; `held_here` threads are still in use (a forked child
    /// inside a region it entered before the fork).
    pub fn reset(&self, cores: u32, held_here: u32) {
        self.cores.store(cores.max(1), Relaxed);
        self.used.store(held_here, Release);
    }

    /// As `reset`, in a forked child: stores only what differs, so a child
    /// of an idle process writes (and copies) no page here.
    pub fn reset_if_changed(&self, cores: u32, held_here: u32) {
        if self.cores.load(Relaxed) != cores.max(1) {
            self.cores.store(cores.max(1), Relaxed);
        }
        if self.used.load(Relaxed) != held_here {
            self.used.store(held_here, Release);
        }
    }

    /// A caller enters a region wanting `want` extra workers: counts the
    /// caller and grants what fits. Returns the extras granted.
    #[cfg(test)]
    pub fn enter(&self, want: u32) -> u32 {
        self.enter_as(want, 0, true).extras
    }

    /// As `enter`; with `count_caller` false the caller is already counted
    /// (a nested region on the same thread) and only extras are taken.
    #[cfg(test)]
    pub fn enter_as(&self, want: u32, need: u32, count_caller: bool) -> Entered {
        self.enter_beside(want, need, count_caller, 0)
    }

    /// As `enter_as`, with `elsewhere` threads in use that this count does
    /// not hold (what `cells` still mirror of the shared ledger after it was
    /// lost: `mirrored`).
    pub fn enter_beside(
        &self,
        want: u32,
        need: u32,
        count_caller: bool,
        elsewhere: u32,
    ) -> Entered {
        let cores = self.cores.load(Relaxed);
        let me = u32::from(count_caller);
        let mut cur = self.used.load(Relaxed);
        loop {
            let in_use = cur.saturating_add(elsewhere).saturating_add(me);
            let e = extras_for(want, need, cores.saturating_sub(in_use));
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

    /// Counts `n` threads taken elsewhere (the shared ledger) as in use here
    /// too, so this ledger can take over if the shared one is lost.
    pub fn add_used(&self, n: u32) {
        let _ = self
            .used
            .fetch_update(Release, Relaxed, |u| Some(u.saturating_add(n)));
    }

    /// Threads counted in use now.
    pub fn used(&self) -> u32 {
        self.used.load(Relaxed)
    }

    pub fn cores(&self) -> u32 {
        self.cores.load(Relaxed)
    }

    /// Threads of the budget not in use now.
    #[cfg(test)]
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
    fn threads_counted_elsewhere_leave_less_free() {
        let l = Ledger::new();
        l.reset(4, 0);
        // Two threads held in the mirror: a lone caller gets one extra.
        let e = l.enter_beside(3, 0, true, 2);
        assert_eq!(e.extras, 1);
        assert_eq!(l.used(), 2, "only the caller and its extra count here");
        l.leave_as(e.extras, true);
        // A promise is still kept, over the budget.
        let e = l.enter_beside(3, 3, true, 4);
        assert_eq!(
            e,
            Entered {
                extras: 3,
                over: true
            }
        );
        l.leave_as(e.extras, true);
        assert_eq!(l.free(), 4);
    }

    #[test]
    fn the_mirror_counts_beside_used_and_gives_back_from_either() {
        let l = Ledger::new();
        l.reset(4, 0);
        l.mirror_add(Some(3), 2);
        l.mirror_add(None, 1);
        assert_eq!((l.used(), l.mirrored()), (1, 2));
        // An exit takes from its cell first, then from `used`.
        l.mirror_take(Some(3), 3);
        assert_eq!((l.used(), l.mirrored()), (0, 0));
        l.mirror_add(Some(0), 1);
        l.clear_mirror();
        assert_eq!(l.mirrored(), 0);
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
