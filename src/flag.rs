//! A flag used as a lock where a real mutex would be wrong: in a forked child
//! the thread that held it is gone, so the atfork child handler just clears
//! it (`reset_in_child`), and holders only ever publish data through atomics
//! after writing it, so a holder that vanished mid-write leaves nothing
//! half-visible. Released by dropping the guard.

use core::sync::atomic::{AtomicBool, Ordering::*};

pub struct Flag(AtomicBool);

pub struct Held<'a>(&'a Flag);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        (self.0).0.store(false, Release);
    }
}

impl Flag {
    pub const fn new() -> Flag {
        Flag(AtomicBool::new(false))
    }

    /// Takes the flag if it is free.
    pub fn try_take(&self) -> Option<Held<'_>> {
        // `then`, not `then_some`: a guard built for a failed attempt would
        // release the real holder when dropped.
        (!self.0.swap(true, Acquire)).then(|| Held(self))
    }

    /// Takes the flag, spinning a little and then yielding, at most `tries`
    /// times (`None` after that: the caller goes on without it).
    pub fn take(&self, tries: u32) -> Option<Held<'_>> {
        for i in 0..tries {
            if let Some(h) = self.try_take() {
                return Some(h);
            }
            if i < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
        None
    }

    /// Atfork child handler: the holder does not exist in the child.
    pub fn reset_in_child(&self) {
        // Only when taken: a child copies every page it writes.
        if self.0.load(Relaxed) {
            self.0.store(false, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let f = Flag::new();
        let h = f.try_take();
        assert!(h.is_some());
        assert!(f.try_take().is_none());
        assert!(f.take(100).is_none(), "bounded: gives up");
        drop(h);
        assert!(f.take(1).is_some());
    }

    #[test]
    fn reset_in_child_frees_a_vanished_holder() {
        let f = Flag::new();
        core::mem::forget(f.try_take());
        f.reset_in_child();
        assert!(f.try_take().is_some());
    }
}
