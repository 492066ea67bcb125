//! Facts about this process and others, read without std (no allocation,
//! no locks): safe in hooks, before main, in a forked child. The cached pid
//! avoids a getpid syscall per region; a forked child records its own
//! at first use (see `ForkWords`).

use crate::stackbuf::StackBuf;
use core::fmt::Write;
use core::sync::atomic::{
    AtomicI32, AtomicPtr, AtomicU32,
    Ordering::{AcqRel, Acquire, Relaxed},
};

/// The words the fork protocol keeps per process: our pid, and the fork
/// gate's counts (runtime::loader).
///
/// They live on the fork page: one private anonymous page marked
/// `MADV_WIPEONFORK` (Linux 4.14), which a forked child sees zero-filled.
/// Why: every page a child or its parent writes after a fork is copied for
/// the writer (a page fault and a 4 KiB copy), and these words are written
/// on every fork: the parent opens the gate again, the child resets it.
/// Moving them here took 5 to 7 us off a fork + _exit + wait on the 2-core
/// VM (paired runs against an empty preload). On the fork page the
/// parent's page is not shared with the child, so it is not copied, and the
/// child's reset is the wipe itself: walkers 0, forkers 0, pid 0. The pid
/// is then recorded at the child's first `pid()` (or by the child handler
/// when the child will write a report, see `hooks::fork`).
///
/// Without the page (an older kernel, or the mapping refused) the words stay
/// in `FALLBACK`, inherited as they were, and the child handler resets them.
#[repr(C, align(64))]
pub struct ForkWords {
    /// Our pid as recorded by init, the child's first `pid()` or the child
    /// handler; 0 in a forked child until then. A process whose `getpid()`
    /// differs from a recorded pid is a vfork child sharing our memory:
    /// nothing may be written there (see `report`).
    pub pid: AtomicI32,
    /// Walks of the loader's object list in flight (runtime::loader).
    pub walkers: AtomicU32,
    /// Forks being prepared (runtime::loader).
    pub forkers: AtomicU32,
}

static FALLBACK: ForkWords = ForkWords {
    pid: AtomicI32::new(0),
    walkers: AtomicU32::new(0),
    forkers: AtomicU32::new(0),
};

/// The fork page, or `FALLBACK`; null until the first `fork_words()`.
static FORK_PAGE: AtomicPtr<ForkWords> = AtomicPtr::new(core::ptr::null_mut());

/// The fork protocol's words (see `ForkWords`). The first call maps the
/// fork page: one `mmap` and one `madvise`, no allocation and no lock, so it
/// is safe before our constructor and in a signal handler.
#[inline]
pub fn fork_words() -> &'static ForkWords {
    let p = FORK_PAGE.load(Acquire);
    if !p.is_null() {
        // SAFETY: FORK_PAGE only ever holds FALLBACK or a page mapped below
        // and never unmapped; both live as long as the process.
        return unsafe { &*p };
    }
    map_fork_page()
}

/// `len` bytes of fresh private anonymous memory, readable and writable
/// (a system call: no allocator, no lock), or None.
pub fn fresh_pages(len: usize) -> Option<*mut core::ffi::c_void> {
    // SAFETY: a new mapping at an address the kernel picks; nothing else
    // refers to it.
    let m = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (m != libc::MAP_FAILED).then_some(m)
}

#[cold]
fn map_fork_page() -> &'static ForkWords {
    let fallback = &FALLBACK as *const ForkWords as *mut ForkWords;
    let page = 4096;
    let mine = match fresh_pages(page) {
        None => fallback,
        // SAFETY: our own mapping, of one page.
        Some(m) if unsafe { libc::madvise(m, page, libc::MADV_WIPEONFORK) } == 0 => {
            m.cast::<ForkWords>()
        }
        Some(m) => {
            // SAFETY: our own mapping, unused.
            unsafe { libc::munmap(m, page) };
            fallback
        }
    };
    match FORK_PAGE.compare_exchange(core::ptr::null_mut(), mine, AcqRel, Acquire) {
        // SAFETY: as in `fork_words`.
        Ok(_) => unsafe { &*mine },
        Err(winner) => {
            if mine != fallback {
                // SAFETY: our own mapping; another thread's won, ours is unused.
                unsafe { libc::munmap(mine.cast(), page) };
            }
            // SAFETY: as in `fork_words`.
            unsafe { &*winner }
        }
    }
}

/// True when the fork words are wiped in a forked child (the fork page is
/// mapped), so the child handler has nothing to reset there.
pub fn fork_words_wiped() -> bool {
    !core::ptr::eq(fork_words(), &FALLBACK)
}

/// Records our pid (init; the child handler; a forked child's first
/// `pid()`): getpid is async-signal-safe.
pub fn remember_pid() {
    // SAFETY: getpid has no preconditions.
    fork_words().pid.store(unsafe { libc::getpid() }, Relaxed);
}

/// The pid recorded by `remember_pid` (0 before init, and in a forked child
/// until it records its own).
pub fn known_pid() -> i32 {
    fork_words().pid.load(Relaxed)
}

/// This process's pid without a syscall once it is recorded. A forked
/// child's first call records it (one page written, only in a child that
/// asks: a child that forks and `_exit`s never does).
#[inline]
pub fn pid() -> i32 {
    let p = fork_words().pid.load(Relaxed);
    if p != 0 {
        return p;
    }
    record_pid()
}

/// `pid()` in a process that has not recorded its pid yet.
#[cold]
#[inline(never)]
fn record_pid() -> i32 {
    let w = fork_words();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    if crate::init::ready().is_some() {
        // A forked child that has not recorded its pid yet (before init the
        // constructor records it). A vfork child sharing such a child's
        // memory never gets here: its `_exit` asks only `is_foreign` and
        // `ledger::holds_slot`, which read without recording.
        w.pid.store(me, Relaxed);
    }
    me
}

/// Milliseconds of CLOCK_MONOTONIC_COARSE (a vDSO read, no system call):
/// for rate limits and short windows, where a tick of a few ms is precise
/// enough.
pub fn coarse_ms() -> u64 {
    // SAFETY: plain C data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A value that belongs to process `pid`, in one atomic word:
/// `pid << 32 | value`. A forked child inherits its parent's words; read
/// with `of_pid`, they count as empty there, so nothing has to reset them.
pub fn pid_word(pid: i32, value: u32) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(value)
}

/// The value of a `pid_word` if it belongs to `pid`, else 0.
pub fn of_pid(word: u64, pid: i32) -> u32 {
    if (word >> 32) as i32 == pid {
        word as u32
    } else {
        0
    }
}

/// This process's pid, never recording it (read-only paths on the way out).
pub fn pid_unrecorded() -> i32 {
    let p = known_pid();
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
    (unsafe { libc::getpid() }) != known_pid()
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
