//! Facts about this process and others, read without std (no allocation,
//! no locks): safe in hooks, before main, in a forked child. The cached pid
//! avoids a getpid syscall per region; the atfork child handler refreshes it.

use crate::stackbuf::StackBuf;
use core::fmt::Write;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::Relaxed};

/// The words a forked child must write at once: its pid, and the fork
/// gate's counts (runtime::loader). Every page a child writes is copied for
/// it, so they share one cache line: one page copied, not three. Every other
/// child-side reset writes only where a value changes.
#[repr(C, align(64))]
pub struct ForkWords {
    /// Our pid as last known by init or the child handler. A process whose
    /// `getpid()` differs is a vfork child sharing our memory: nothing may be
    /// written there (see `report`).
    pub pid: AtomicI32,
    /// Walks of the loader's object list in flight (runtime::loader).
    pub walkers: AtomicU32,
    /// Forks being prepared (runtime::loader).
    pub forkers: AtomicU32,
}

pub static FORK_WORDS: ForkWords = ForkWords {
    pid: AtomicI32::new(0),
    walkers: AtomicU32::new(0),
    forkers: AtomicU32::new(0),
};
static KNOWN_PID: &AtomicI32 = &FORK_WORDS.pid;

/// Records our pid (init, and the atfork child handler: getpid is
/// async-signal-safe).
pub fn remember_pid() {
    // SAFETY: getpid has no preconditions.
    KNOWN_PID.store(unsafe { libc::getpid() }, Relaxed);
}

/// The pid recorded by `remember_pid` (0 before init).
pub fn known_pid() -> i32 {
    KNOWN_PID.load(Relaxed)
}

/// This process's pid without a syscall where it is known.
pub fn pid() -> i32 {
    let p = KNOWN_PID.load(Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// True in a vfork child (it shares our memory and must only exec or _exit)
/// or before our pid is known.
pub fn is_foreign() -> bool {
    // SAFETY: getpid has no preconditions.
    (unsafe { libc::getpid() }) != KNOWN_PID.load(Relaxed)
}

/// Our start time (clock ticks since boot), 0 if /proc is unreadable.
pub fn my_start_time() -> u64 {
    proc_stat(pid()).map_or(0, |(_, s)| s)
}

/// Reads `/proc/<pid>/stat`: (state, start time). `None`: no such process.
pub fn proc_stat(pid: i32) -> Option<(u8, u64)> {
    let mut path = StackBuf::<64>::new();
    let _ = write!(path, "/proc/{pid}/stat");
    let mut buf = [0u8; 1024];
    let text = crate::budget::Files::read(&crate::budget::LibcFiles, path.as_bytes(), &mut buf)?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let close = text.iter().rposition(|b| *b == b')')?;
    let mut fields = text[close + 1..]
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // starttime is field 22 overall; field 3 (state) was the first after ')'.
    let start = fields.nth(18)?;
    let n = start
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((state, n))
}

/// Dead means: no such process, a reused pid (another start time), or a
/// zombie whose every thread is gone. A process whose main thread called
/// pthread_exit also shows 'Z' while its other threads run: still alive.
pub fn alive(pid: i32, start: u64) -> bool {
    match proc_stat(pid) {
        None => {
            // SAFETY: kill with signal 0 only checks existence.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && unsafe { *libc::__errno_location() } == libc::ESRCH;
            !gone
        }
        Some((_, st)) if st != start => false,
        Some((b'Z' | b'X' | b'x', _)) => threads_of(pid) > 1,
        Some(_) => true,
    }
}

/// `Threads:` from /proc/<pid>/status (0 if unreadable).
fn threads_of(pid: i32) -> u32 {
    let mut path = StackBuf::<64>::new();
    let _ = write!(path, "/proc/{pid}/status");
    let mut buf = [0u8; 2048];
    let Some(text) =
        crate::budget::Files::read(&crate::budget::LibcFiles, path.as_bytes(), &mut buf)
    else {
        return 0;
    };
    text.split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"Threads:"))
        .map_or(0, |v| {
            v.trim_ascii()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
        })
}

/// Calls a signal handler the program installed before ours (we chain to
/// it), with the calling convention its `SA_SIGINFO` flag says.
///
/// # Safety
/// `handler` is a handler address (not SIG_DFL or SIG_IGN) taken from the
/// program's `sigaction`, and `info`/`ctx` are what the kernel gave ours.
pub unsafe fn call_old_handler(
    handler: usize,
    siginfo: bool,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the caller's contract: `handler` has this signature.
    unsafe {
        if siginfo {
            core::mem::transmute::<
                usize,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(handler)(sig, info, ctx);
        } else {
            core::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler)(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_our_state_and_start_time() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state == b'R' || state == b'S');
        assert!(start > 0);
        assert!(alive(std::process::id() as i32, start));
        assert!(
            !alive(std::process::id() as i32, start + 1),
            "a reused pid has another start time"
        );
        assert!(proc_stat(i32::MAX).is_none());
    }
}
