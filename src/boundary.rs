//! The boundary between the host's call and our bookkeeping: a reentry guard
//! (our bookkeeping never recurses into itself: a hook reached from inside
//! it forwards unchanged) and a panic fence (a panic must never cross an
//! `extern "C"` boundary: since Rust 1.81 that aborts the host).

use crate::thread_state;

/// The reentry guard: `Some` when this thread is not already inside our own
/// bookkeeping. Dropping it releases the guard.
pub struct Guard(());

impl Guard {
    pub fn take() -> Option<Guard> {
        thread_state::with(|t| {
            if t.in_hook.replace(true) {
                None
            } else {
                Some(Guard(()))
            }
        })
    }
}

impl Guard {
    /// True while this thread is inside our bookkeeping.
    pub fn held() -> bool {
        thread_state::with(|t| t.in_hook.get())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        thread_state::with(|t| t.in_hook.set(false));
    }
}

/// Runs bookkeeping `f` under the reentry guard with panics fenced off: a panic
/// must never cross the `extern "C"` boundary (it would abort the host), so a
/// panicking or reentrant bookkeeping step yields `fallback` and the call is
/// forwarded unchanged. Always inlined: a hot hook's bookkeeping then
/// compiles into the hook itself (see `hooks::regions::enter`).
#[inline(always)]
pub fn fenced<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    let Some(_guard) = Guard::take() else {
        return fallback;
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Replaces std's default panic hook in our own copy of std (the host's, if
/// it has one, is another copy and is untouched). The default hook allocates
/// and locks stderr, which can deadlock in a forked child or a signal
/// handler; ours writes one line from a stack buffer. The panic itself is
/// still caught by `fenced` and the call forwarded.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let mut line = crate::stackbuf::StackBuf::<512>::new();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or("(non-text payload)");
        let (file, l) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "parbudget[{}] ERROR internal_panic at={}:{} message=\"{}\" action=\"call forwarded unchanged\"\n",
                crate::process::pid(),
                file,
                l,
                msg
            ),
        );
        crate::logging::write_all(2, line.as_bytes());
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shim links its unwinder statically (build.rs): these unwind a real
    // panic through it to the fence.
    #[test]
    fn a_panic_in_bookkeeping_yields_the_fallback_and_releases_the_guard() {
        let got = fenced(7, || -> i32 { panic!("deliberate, from a test") });
        assert_eq!(got, 7);
        assert!(!Guard::held(), "the guard is released by the unwind");
        assert_eq!(fenced(0, || 5), 5, "the next call runs its bookkeeping");
    }

    #[test]
    fn bookkeeping_reached_from_inside_bookkeeping_forwards_unchanged() {
        let inner = fenced(None, || Some(fenced(1, || 2)));
        assert_eq!(inner, Some(1));
    }
}
