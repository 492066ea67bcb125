//! One grant mechanism for every sized call: GOMP regions, `__kmpc_fork_call`
//! regions and BLAS calls. A grant counts the calling thread (unless an
//! enclosing grant on this thread already does) plus the extra workers the
//! ledger had room for, records the stats of the copy, and is given back
//! exactly once: by `give_back`, or by the `GiveBack` guard when dropped
//! (also on a forced unwind: pthread_cancel, pthread_exit).
//!
//! The team rule (the OpenMP contract, which real libraries count on):
//! - the budget cap is the thread limit: a `num_threads(n)` clause above it
//!   is cut to it (the standard leaves that to the implementation), and
//!   `omp_get_thread_limit()` says so;
//! - a region with a clause `n` within the limit gets exactly `n` threads,
//!   unless its entry point shows its body adapts to any team (see
//!   `regions::Shape`);
//! - `omp_get_max_threads()` tells the truth, and keeps it: the first time a
//!   thread asks, it answers what the ledger would grant it then, less what
//!   other threads of the process were promised in the last 100 ms (threads
//!   that ask together share the budget: `promise_new`), and the same
//!   afterwards (an ICV changes only when the program sets it with
//!   `omp_set_num_threads`). That answer is a promise: the thread's regions
//!   without a clause get exactly that many threads;
//! - a region without a clause on a thread that was promised nothing gets
//!   what fits (its body cannot have counted on a number it never saw);
//! - keeping a promise may take the ledger over the budget: that is counted
//!   (`over_budget` in the report), never refused.

use crate::ledger;
use crate::runtime::RuntimeCopy;
use crate::thread_state;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

/// Records what `omp_get_max_threads()` answered on this thread.
pub fn promise(n: u32) {
    thread_state::with(|t| t.promised.set(n));
}

/// The team this thread was promised for its regions without a clause.
pub fn promised() -> Option<u32> {
    match thread_state::with(|t| t.promised.get()) {
        0 => None,
        n => Some(n),
    }
}

/// Recent promises: the threads (each promised thread and its extras) that
/// threads of this process were promised by `omp_get_max_threads()` within
/// `RESERVE_MS` of each other, which the ledger does not count yet (a
/// promise is counted when the thread's regions keep it, not when it is
/// made). One word: the last promise that had extras (ms of the coarse clock,
/// truncated to 32 bits) << 32 | the threads held back. A forked child
/// inherits it: the parent's recent promises hold back the child's for the
/// rest of the window (erring small, for at most `RESERVE_MS`).
///
/// Why: threads that start together (a pool running scikit-learn or xgboost
/// fits) each ask `omp_get_max_threads()` before any of them runs a region.
/// Without this, each one sees the whole budget free, is promised it, and
/// keeps it for good, so N threads run N full teams. With it, the first is
/// promised what is free and the next ones what is left of it (at least 1).
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// How long a promise holds back its team from the next askers: longer
/// than the time between threads' first questions when they start together,
/// much shorter than the time they then work.
const RESERVE_MS: u32 = 100;

/// The team `omp_get_max_threads()` promises a thread that has no promise
/// yet, for a region of up to `want` threads (never fewer than 1): what the
/// ledger would grant it now, less the threads held back for other threads'
/// recent promises (see `RESERVED`); this promise's team joins those.
pub fn promise_new(want: u32) -> u32 {
    let me = u32::from(held_here() == 0);
    // Ask the ledger for room beyond what is held back: when that much is
    // not free, it reclaims dead members first.
    let held_back = held_back(RESERVED.load(Acquire), coarse_ms32());
    let free = ledger::free_for(want.saturating_sub(1) + me + held_back);
    let mut extras = 0;
    let mut added = 0;
    let _ = RESERVED.fetch_update(AcqRel, Acquire, |w| {
        // The clock is read inside: a retry after another asker's update
        // never judges that update's window with an older time.
        let (next, e) = step(w, coarse_ms32(), want, free, me);
        extras = e;
        // What this promise added to the word (see `step`): its team, unless
        // it opened nothing.
        added = if next == 0 { 0 } else { me + e };
        Some(next)
    });
    thread_state::with(|t| t.held_back.set(t.held_back.get().saturating_add(added)));
    ledger::team(extras)
}

/// This thread, the process's main thread, starts another thread; or it
/// sets its own number with `omp_set_num_threads`, or ends: what its promise
/// held back goes back. A main thread that asked and then hands its work to
/// threads it starts (fills a pool) would otherwise leave its workers a
/// smaller share for the rest of the window, though it runs nothing itself.
/// Erring large is erring to the answer without the window. Other threads
/// that start threads keep their hold-back (see `hooks::threads`).
pub fn release_hold_back() {
    let mine = thread_state::with(|t| t.held_back.replace(0));
    if mine == 0 {
        return;
    }
    let _ = RESERVED.fetch_update(AcqRel, Acquire, |w| {
        let held = (w as u32).saturating_sub(mine);
        Some(if held == 0 {
            0
        } else {
            (w & !0xffff_ffff) | u64::from(held)
        })
    });
}

/// The threads the word `w` holds back at time `now`: 0 once its window has
/// closed (see `step`).
pub(crate) fn held_back(w: u64, now: u32) -> u32 {
    let (last, held) = ((w >> 32) as u32, w as u32);
    let open = held > 0 && (now.wrapping_sub(last) as i32) <= RESERVE_MS as i32;
    if open { held } else { 0 }
}

fn coarse_ms32() -> u32 {
    crate::process::coarse_ms() as u32
}

/// One promise against the word `w` of recent promises at time `now`: the
/// word after it and the promise's extras. The window is open while the last
/// promise that had extras is at most `RESERVE_MS` old (a time ahead of
/// `now`, from an asker that read the clock later, counts as open). It slides
/// with each promise that has extras, and only those open one: once what is
/// held back reaches what is free, askers get no extras, so a stream of
/// askers cannot keep it open. A promise holds back its whole team (the
/// thread, when not already counted, and its extras): threads that each run
/// at least themselves then leave the later askers less.
pub(crate) fn step(w: u64, now: u32, want: u32, free: u32, me: u32) -> (u64, u32) {
    let last = (w >> 32) as u32;
    let held_back = held_back(w, now);
    let open = held_back > 0;
    let extras = want
        .saturating_sub(1)
        .min(free.saturating_sub(held_back).saturating_sub(me));
    if extras == 0 && !open {
        return (0, 0);
    }
    let last = if (extras > 0 && (now.wrapping_sub(last) as i32) >= 0) || !open {
        now
    } else {
        last
    };
    let held = held_back.saturating_add(me).saturating_add(extras);
    (u64::from(last) << 32 | u64::from(held), extras)
}

/// What a sized call took from the ledger.
#[derive(Clone, Copy, Default)]
pub struct Grant {
    pub extras: u32,
    /// The ledger counted this call (false: passed through, nothing to give back).
    pub counted: bool,
    /// The calling thread itself was counted (false when nested under another
    /// grant of this thread).
    pub caller: bool,
}

impl Grant {
    /// The team: the caller plus its extras.
    pub fn team(self) -> u32 {
        ledger::team(self.extras)
    }

    #[inline]
    pub fn give_back(self) {
        if self.counted {
            thread_state::with(|t| {
                t.held.set(
                    t.held
                        .get()
                        .saturating_sub(u32::from(self.caller) + self.extras),
                )
            });
            ledger::leave(self.extras, self.caller);
        }
    }
}

/// Gives a grant back when dropped.
pub struct GiveBack(pub Grant);

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// Takes a grant for a call that asked for `asked` threads, capped at `cap`,
/// and records it in `copy`'s stats. `exact`: the call gets every thread it
/// asked for (up to the cap), over the budget if need be.
#[inline]
pub fn take(copy: Option<(usize, &RuntimeCopy)>, asked: u32, cap: u32, exact: bool) -> Grant {
    let want = asked.clamp(1, cap.max(1));
    let caller = held_here() == 0;
    let need = if exact { want - 1 } else { 0 };
    // The thread's cell, looked up once for the ledgers and the statistics.
    let cell = thread_state::my_cell();
    let entered = ledger::enter(cell, want - 1, need, caller);
    let extras = entered.extras;
    thread_state::with(|t| t.held.set(t.held.get() + u32::from(caller) + extras));
    let g = Grant {
        extras,
        counted: true,
        caller,
    };
    if let Some((i, c)) = copy {
        let team = g.team();
        c.stats.note_request(asked);
        crate::runtime::count_region(cell, i, &c.stats, team);
        if team < asked {
            c.stats.cut.fetch_add(1, Relaxed);
        }
        if entered.over {
            c.stats.over_budget.fetch_add(1, Relaxed);
        }
    }
    g
}

/// Threads this thread holds (for the atfork child handler's ledger reset).
pub fn held_here() -> u32 {
    thread_state::with(|t| t.held.get())
}

#[cfg(test)]
mod tests {
    use super::{RESERVE_MS, held_back, step};

    /// Teams promised to threads asking at the given times (ms), each with
    /// `free` threads free in the ledger, wanting `want`, counting itself.
    fn teams(times: &[u32], want: u32, free: u32) -> Vec<u32> {
        let mut w = 0;
        times
            .iter()
            .map(|&t| {
                let (next, e) = step(w, t, want, free, 1);
                w = next;
                1 + e
            })
            .collect()
    }

    #[test]
    fn threads_asking_together_share_what_is_free() {
        // Budget 2, nothing in use: four threads at once get 2, 1, 1, 1.
        assert_eq!(teams(&[1000, 1000, 1001, 1003], 2, 2), [2, 1, 1, 1]);
        // Budget 8, each wanting 8: the first takes all, the rest 1 each.
        assert_eq!(teams(&[5, 5, 5], 8, 8), [8, 1, 1]);
        // Budget 8, each wanting 4: two teams of 4 fill it; the next
        // threads run alone.
        assert_eq!(teams(&[5, 6, 7, 8], 4, 8), [4, 4, 1, 1]);
    }

    #[test]
    fn a_promise_holds_back_for_a_window_that_slides_with_each_promise() {
        let r = RESERVE_MS;
        // Past the window, the whole budget again.
        assert_eq!(teams(&[1000, 1000 + r + 1], 2, 2), [2, 2]);
        // Within it, at its very end.
        assert_eq!(teams(&[1000, 1000 + r], 2, 2), [2, 1]);
        // Budget 4 wanting 2: a promise at 1000 and one at 1090 (held back
        // 2); at 1180 the window, renewed at 1090, is still open.
        assert_eq!(teams(&[1000, 1000 + 90, 1000 + 180], 2, 4), [2, 2, 1]);
        // A promise with no extras renews nothing, nor opens a window.
        let (w, e) = step(0, 7, 1, 2, 1);
        assert_eq!((w, e), (0, 0));
    }

    #[test]
    fn a_clock_read_before_anothers_update_still_sees_its_window() {
        // Asker X read 1000, asker Y read 1004 and promised first; X's
        // older time must not close Y's window.
        let (w, e) = step(0, 1004, 2, 2, 1);
        assert_eq!(e, 1);
        let (w2, e2) = step(w, 1000, 2, 2, 1);
        assert_eq!(e2, 0, "X must see Y's extras held back");
        assert_eq!(w2 >> 32, 1004);
        assert_eq!(w2 as u32, 3, "Y's team of 2 and X itself");
        // The window's time stays Y's when X adds extras with an older time.
        let (w3, _) = step(w, 1000, 3, 4, 1);
        assert_eq!(w3 >> 32, 1004);
    }

    #[test]
    fn the_window_survives_the_clock_wrapping_32_bits() {
        let (w, e) = step(0, u32::MAX - 10, 2, 2, 1);
        assert_eq!(e, 1);
        assert_eq!(step(w, 20, 2, 2, 1).1, 0, "31 ms later, across the wrap");
        assert_eq!(step(w, 200, 2, 2, 1).1, 1, "211 ms later: closed");
    }

    #[test]
    fn a_nested_question_on_a_counted_thread_asks_only_for_extras() {
        // me = 0: the thread already holds itself.
        assert_eq!(step(0, 5, 2, 1, 0).1, 1);
        let (w, _) = step(0, 5, 2, 1, 0);
        assert_eq!(step(w, 6, 2, 1, 0).1, 0);
    }

    #[test]
    fn the_held_back_extras_are_read_without_a_change() {
        let (w, _) = step(0, 100, 2, 2, 1);
        assert_eq!(held_back(w, 150), 2);
        assert_eq!(held_back(w, 300), 0);
    }
}
