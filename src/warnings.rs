//! The warnings a report lists: recorded where they are found (any layer),
//! read by the report. A fixed array of slots written under a fork-safe flag
//! and published by a count, so recording allocates nothing and never blocks
//! for long.

use crate::flag::Flag;
use crate::stackbuf::StackBuf;
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering::*};

const MAX_WARNINGS: usize = 32;
const MSG_LEN: usize = 600;

struct Warning {
    kind: &'static str,
    msg: [u8; MSG_LEN],
    len: usize,
}

struct Warnings {
    slots: [UnsafeCell<Warning>; MAX_WARNINGS],
    count: AtomicUsize,
    writer: Flag,
}

// SAFETY: a slot is written under `writer` before `count` publishes it and is
// never written again.
unsafe impl Sync for Warnings {}

static WARNINGS: Warnings = Warnings {
    slots: [const {
        UnsafeCell::new(Warning {
            kind: "",
            msg: [0; MSG_LEN],
            len: 0,
        })
    }; MAX_WARNINGS],
    count: AtomicUsize::new(0),
    writer: Flag::new(),
};

/// Records a warning for the report (the caller logs its own line).
pub fn add_warning_fmt(kind: &'static str, msg: fmt::Arguments<'_>) {
    // Bounded: losing one entry beats hanging behind a stuck writer.
    let Some(_held) = WARNINGS.writer.take(10_000) else {
        return;
    };
    let n = WARNINGS.count.load(Relaxed);
    if n < MAX_WARNINGS {
        let mut b = StackBuf::<MSG_LEN>::new();
        let _ = b.write_fmt(msg);
        // SAFETY: slot n is unpublished and we hold the writer flag.
        let w = unsafe { &mut *WARNINGS.slots[n].get() };
        w.kind = kind;
        w.len = b.len();
        w.msg[..b.len()].copy_from_slice(b.as_bytes());
        WARNINGS.count.store(n + 1, Release);
    }
}

/// Atfork child handler: the child's report lists the child's own warnings
/// (an atomic store; a slot being written by a vanished thread is dropped).
pub fn reset_in_child() {
    if WARNINGS.count.load(Relaxed) != 0 {
        WARNINGS.count.store(0, Relaxed);
    }
    WARNINGS.writer.reset_in_child();
}

pub fn all() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    let n = WARNINGS.count.load(Acquire);
    (0..n).map(|i| {
        // SAFETY: published slots are immutable.
        let w = unsafe { &*WARNINGS.slots[i].get() };
        (w.kind, &w.msg[..w.len])
    })
}
