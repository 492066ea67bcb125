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
//!   thread asks, it answers what the ledger would grant it then, and the
//!   same afterwards (an ICV changes only when the program sets it with
//!   `omp_set_num_threads`). That answer is a promise: the thread's regions
//!   without a clause get exactly that many threads;
//! - a region without a clause on a thread that was promised nothing gets
//!   what fits (its body cannot have counted on a number it never saw);
//! - keeping a promise may take the ledger over the budget: that is counted
//!   (`over_budget` in the report), never refused.

use crate::ledger;
use crate::runtime::RuntimeCopy;
use crate::thread_state;
use core::sync::atomic::Ordering::Relaxed;

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

/// What the ledger would grant this thread now for a region of up to `want`
/// threads (never fewer than 1): the answer of `omp_get_max_threads()`.
pub fn would_grant(want: u32) -> u32 {
    let me = u32::from(held_here() == 0);
    let extras = want
        .saturating_sub(1)
        .min(ledger::free_for(want.saturating_sub(1) + me).saturating_sub(me));
    ledger::team(extras)
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
    let entered = ledger::enter(want - 1, need, caller);
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
        crate::runtime::count_region(i, &c.stats, team);
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
