//! The ledger of the budget: how many extra workers (beyond each caller's own
//! thread) are free right now. A region's team is the caller plus the extras
//! granted without blocking: never more than asked, never fewer than one.
//! Grants go back when the region ends.
//!
//! The caller's own thread is not counted: it is running anyway, and a team of
//! one must always be possible without waiting (so nothing can deadlock on the
//! ledger). With a budget of B, concurrent teams hold at most B-1 extras in all.

use core::sync::atomic::{AtomicU32, Ordering::*};

pub struct Ledger {
    free: AtomicU32,
    extras: AtomicU32,
}

impl Ledger {
    pub const fn new() -> Ledger {
        Ledger { free: AtomicU32::new(0), extras: AtomicU32::new(0) }
    }

    /// Sets the budget (cores); all extras become free.
    pub fn reset(&self, cores: u32, held_here: u32) {
        let extras = cores.saturating_sub(1);
        self.extras.store(extras, Relaxed);
        self.free.store(extras.saturating_sub(held_here), Release);
    }

    /// Takes up to `want` extras without waiting; returns how many were granted.
    pub fn acquire(&self, want: u32) -> u32 {
        if want == 0 {
            return 0;
        }
        let mut cur = self.free.load(Relaxed);
        loop {
            let take = cur.min(want);
            if take == 0 {
                return 0;
            }
            match self.free.compare_exchange_weak(cur, cur - take, Acquire, Relaxed) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    /// Returns extras granted by [`acquire`]. Never raises `free` above the
    /// budget, so a stray double release cannot inflate it.
    pub fn release(&self, n: u32) {
        if n == 0 {
            return;
        }
        let extras = self.extras.load(Relaxed);
        let _ = self.free.fetch_update(Release, Relaxed, |f| Some((f + n).min(extras)));
    }

    pub fn free(&self) -> u32 {
        self.free.load(Relaxed)
    }
}

/// Team size for a region that asked for `requested` threads, given `extras`
/// granted: the caller plus its grant.
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
        assert_eq!(l.acquire(63), 3);
        assert_eq!(team(3), 4);
        l.release(3);
        assert_eq!(l.free(), 3);
    }

    #[test]
    fn concurrent_callers_share_and_never_get_zero() {
        let l = Ledger::new();
        l.reset(2, 0);
        let a = l.acquire(1);
        let b = l.acquire(1);
        assert_eq!((a, b), (1, 0));
        assert_eq!((team(a), team(b)), (2, 1));
        l.release(a);
        assert_eq!(l.acquire(5), 1);
    }

    #[test]
    fn never_more_than_asked_and_release_is_capped() {
        let l = Ledger::new();
        l.reset(8, 0);
        assert_eq!(l.acquire(2), 2);
        l.release(2);
        l.release(2);
        assert_eq!(l.free(), 7);
    }

    #[test]
    fn reset_in_child_keeps_what_the_forking_thread_holds() {
        let l = Ledger::new();
        l.reset(4, 2);
        assert_eq!(l.free(), 1);
    }

    #[test]
    fn many_threads_never_oversubscribe() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU32;
        let l = Arc::new(Ledger::new());
        l.reset(3, 0);
        let in_use = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (l, in_use, max_seen) = (l.clone(), in_use.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let g = l.acquire(4);
                        let now = in_use.fetch_add(g, SeqCst) + g;
                        max_seen.fetch_max(now, SeqCst);
                        in_use.fetch_sub(g, SeqCst);
                        l.release(g);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(max_seen.load(SeqCst) <= 2);
        assert_eq!(l.free(), 2);
    }
}
