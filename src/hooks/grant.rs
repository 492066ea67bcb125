//! One grant mechanism for every sized call: GOMP regions, `__kmpc_fork_call`
//! regions and BLAS calls. A grant counts the calling thread (unless an
//! enclosing grant on this thread already does) plus the extra workers the
//! ledger had room for, records the stats of the copy, and is given back
//! exactly once: by `give_back`, or by the `GiveBack` guard when dropped
//! (also on a forced unwind: pthread_cancel, pthread_exit).

use crate::ledger;
use crate::runtime::Copy;
use core::cell::Cell;
use core::sync::atomic::Ordering::Relaxed;

thread_local! {
    /// Threads this thread holds in the ledger (itself and extras, per grant).
    static HELD: Cell<u32> = const { Cell::new(0) };
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

    pub fn give_back(self) {
        if self.counted {
            HELD.with(|h| h.set(h.get().saturating_sub(u32::from(self.caller) + self.extras)));
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
/// and records it in `copy`'s stats.
pub fn take(copy: Option<&Copy>, asked: u32, cap: u32) -> Grant {
    let want = asked.clamp(1, cap.max(1));
    let caller = held_here() == 0;
    let extras = ledger::enter(want - 1, caller);
    HELD.with(|h| h.set(h.get() + u32::from(caller) + extras));
    let g = Grant {
        extras,
        counted: true,
        caller,
    };
    if let Some(c) = copy {
        let team = g.team();
        c.stats.note_request(asked);
        c.stats.regions.fetch_add(1, Relaxed);
        c.stats.team_sum.fetch_add(u64::from(team), Relaxed);
        if team < asked {
            c.stats.cut.fetch_add(1, Relaxed);
        }
    }
    g
}

/// Threads this thread holds (for the atfork child handler's ledger reset).
pub fn held_here() -> u32 {
    HELD.with(|h| h.get())
}
