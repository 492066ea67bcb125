//! The ledger of the budget: how many extra workers (beyond each caller's own
//! thread) are free right now. A region's team is the caller plus the extras
//! granted without blocking: never more than asked, never fewer than one.
//! Grants go back when the region ends.
//!
//! The caller's own thread is not counted: it is running anyway, and a team of
//! one must always be possible without waiting (so nothing can deadlock on the
//! ledger). With a budget of B, concurrent teams hold at most B-1 extras in all.

pub mod shared;

use crate::stackbuf::{Quoted, StackBuf};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering::*};
use log::warn;

/// The per-process ledger: used with PARBUDGET_SCOPE=process, or when the
/// shared one cannot be used.
static LOCAL: Ledger = Ledger::new();

/// Takes up to `want` extra workers for a region, from the tree's ledger if
/// attached, else from this process's.
pub fn acquire(want: u32) -> u32 {
    if want == 0 {
        return 0;
    }
    shared::acquire(want).unwrap_or_else(|| LOCAL.acquire(want))
}

pub fn release(n: u32) {
    if n > 0 && !shared::release(n) {
        LOCAL.release(n);
    }
}

pub fn free() -> u32 {
    shared::free_now().unwrap_or_else(|| LOCAL.free())
}

/// Atfork child handler: flags and atomic stores only.
pub fn reset_in_child(cores: u32, held_here: u32) {
    LOCAL.reset(cores, held_here);
    shared::forget_slot_in_child();
}

/// At exit (and `_exit`): give our share back; the creator removes the name.
pub fn at_exit() {
    shared::leave_tree();
    if shared::created_here() {
        if let Some(name) = crate::config::getenv(c"PARBUDGET_LEDGER") {
            let mut n = StackBuf::<256>::new();
            n.push_bytes(name.as_bytes());
            if let Some(c) = n.as_cstr() {
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

/// Sets up the ledger at init. Returns the budget to use: a process that
/// joins a tree whose budget it did not choose itself (auto-detected) adopts
/// the tree's. Called once, from init, before any region.
pub fn setup(scope: Scope, cores: u32, source_code: u32, explicit: bool) -> (u32, Option<u32>) {
    LOCAL.reset(cores, 0);
    if scope == Scope::Process {
        return (cores, None);
    }
    let name = match crate::config::getenv(c"PARBUDGET_LEDGER") {
        Some(n) if n.as_bytes().starts_with(b"/") && n.len() < 200 && !n.as_bytes()[1..].contains(&b'/') => n,
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
    let (mut use_cores, mut adopted) = (cores, None);
    let mut result = shared::attach(name.as_bytes(), cores, source_code);
    if let Err(shared::Refused::BudgetDiffers(b)) = result {
        if !explicit {
            use_cores = b;
            adopted = shared::budget().map(|(_, s)| s).or(Some(source_code));
            result = shared::attach(name.as_bytes(), b, source_code);
        }
    }
    match result {
        Ok(()) => {
            LOCAL.reset(use_cores, 0);
            if let Some(c) = name.clone().as_cstr() {
                // SAFETY: NUL-terminated strings; children inherit the name.
                unsafe { libc::setenv(c"PARBUDGET_LEDGER".as_ptr(), c.as_ptr(), 1) };
            }
        }
        Err(e) => {
            warn!(
                "ledger_fallback name={} reason=\"{}\" using=\"a ledger for this process only\" advice=\"processes of this tree may together exceed the budget; set PARBUDGET_SCOPE=process to silence\"",
                Quoted(name.as_bytes()),
                e
            );
        }
    }
    (use_cores, adopted)
}

fn new_name() -> StackBuf<1024> {
    let mut n = StackBuf::new();
    // SAFETY: getuid/getpid have no preconditions.
    let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let _ = write!(n, "/parbudget-{uid}-{pid}-{:x}", ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
    n
}

/// Removes this user's ledgers whose creator is gone and never cleaned up
/// (it was killed). Only names of our own pattern and uid are touched.
fn cleanup_stale() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let prefix = format!("parbudget-{uid}-");
    let Ok(rd) = std::fs::read_dir("/dev/shm") else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: kill with signal 0 only checks existence.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && unsafe { *libc::__errno_location() } == libc::ESRCH;
        if gone {
            if let Ok(c) = std::ffi::CString::new(format!("/{name}")) {
                // SAFETY: NUL-terminated name of our own pattern.
                unsafe { libc::shm_unlink(c.as_ptr()) };
            }
        }
    }
}

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
