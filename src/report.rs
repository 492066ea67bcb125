//! Reports: a table on stderr or JSON in a file, at exit, at `_exit`, and on a
//! signal. Everything here writes through stack buffers and raw `write(2)`,
//! with no allocation and no locks, because it runs in a signal handler, in
//! `_exit` of a forked child, and at exit while other threads still run.
//!
//! JSON schema (keys may be added, never renamed):
//! `{pid, ppid, trigger, budget, budget_source, fork_policy, runtimes: [{kind, impl, path,
//! threads_created, threads_live, threads_peak, requested_max, clamped,
//! regions, mean_team, requests_cut, over_budget}], ledger: {scope, budget,
//! used, members, held_here, leased_here}, other_threads: {created, live, peak},
//! warnings: [{kind, message}]}`

use crate::init::Settings;
use crate::logging::write_all;
use crate::process;
use crate::runtime;
use crate::runtime::OTHER;
use crate::stackbuf::StackBuf;
use crate::warnings;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

/// A buffered writer to a file descriptor, flushing with `write(2)`.
struct Out {
    fd: i32,
    buf: StackBuf<4096>,
    /// Every byte so far reached the file (a full disk ends a report short).
    whole: bool,
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.buf.len() + s.len() > 4000 {
            self.flush();
        }
        if s.len() > 4000 {
            self.whole &= write_all(self.fd, s.as_bytes());
        } else {
            self.buf.push_bytes(s.as_bytes());
        }
        Ok(())
    }
}

impl Out {
    fn flush(&mut self) {
        self.whole &= write_all(self.fd, self.buf.as_bytes());
        self.buf.clear();
    }
}

/// A JSON string of raw bytes (paths, messages): valid UTF-8 is kept as it
/// is (a non-ASCII path stays readable), quotes, backslashes and control
/// characters are escaped, and bytes that are not UTF-8 become U+FFFD.
struct Js<'a>(&'a [u8]);

impl fmt::Display for Js<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", c as u32)?,
                    c => f.write_char(c)?,
                }
            }
            if !chunk.invalid().is_empty() {
                f.write_str("\\ufffd")?;
            }
        }
        f.write_str("\"")
    }
}

/// Writes into a caller's buffer, counting what did not fit.
struct MemOut<'a> {
    buf: &'a mut [u8],
    needed: usize,
}

impl Write for MemOut<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        let start = self.needed.min(self.buf.len());
        let n = b.len().min(self.buf.len() - start);
        self.buf[start..start + n].copy_from_slice(&b[..n]);
        self.needed += b.len();
        Ok(())
    }
}

/// The live report of this process as JSON, for the Python module's
/// `parbudget.status()` (through ctypes). Writes at most `len` bytes into
/// `buf` and returns the length of the whole report (call again with a
/// bigger buffer if it is larger than `len`); -1 before init. Not NUL
/// terminated.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (or `len` 0).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn parbudget_report_json(buf: *mut u8, len: usize) -> isize {
    crate::boundary::fenced(-1, || {
        let Some(s) = crate::init::ready() else {
            return -1;
        };
        let buf: &mut [u8] = if buf.is_null() || len == 0 {
            &mut []
        } else {
            // SAFETY: the caller promises `len` writable bytes at `buf`.
            unsafe { core::slice::from_raw_parts_mut(buf, len) }
        };
        // A thread that keeps a lease is between regions: the asking thread
        // gives its own back first, as at exit, so the report shows what
        // its process runs rather than what it last ran.
        crate::ledger::release_lease();
        let mut o = MemOut { buf, needed: 0 };
        let _ = write_json(&mut o, s, Trigger::Call);
        o.needed as isize
    })
}

/// Regions (or sized calls) of copy `i` and their mean team.
fn regions_and_mean(i: usize, s: &runtime::Stats) -> (u64, f64) {
    let (r, t) = runtime::regions_and_teams(i, s);
    (r, if r == 0 { 0.0 } else { t as f64 / r as f64 })
}

/// What made a report be written: the process's end, the report signal, or
/// a call of `parbudget_report_json` (the program asking).
#[derive(Clone, Copy)]
enum Trigger {
    Exit,
    Signal,
    Call,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Exit => "exit",
            Trigger::Signal => "signal",
            Trigger::Call => "call",
        }
    }
}

fn write_json(o: &mut impl Write, s: &Settings, trigger: Trigger) -> fmt::Result {
    // SAFETY: getpid/getppid have no preconditions.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    write!(
        o,
        "{{\"pid\":{},\"ppid\":{},\"trigger\":\"{}\",\"budget\":{},\"budget_source\":\"{}\",\"fork_policy\":\"{}\",\"runtimes\":[",
        pid,
        ppid,
        trigger.name(),
        s.cap().cores,
        s.cap().source.name(),
        s.fork.name()
    )?;
    for (i, c) in runtime::copies() {
        let st = &c.stats;
        let (regions, mean) = regions_and_mean(i, st);
        write!(
            o,
            "{}{{\"kind\":\"{}\",\"impl\":\"{}\",\"path\":{},\"threads_created\":{},\"threads_live\":{},\"threads_peak\":{},\"requested_max\":{},\"clamped\":{},\"regions\":{},\"mean_team\":{:.3},\"requests_cut\":{},\"over_budget\":{}}}",
            if i > 0 { "," } else { "" },
            c.imp.kind().name(),
            c.imp.name(),
            Js(c.path()),
            st.threads_created.load(Relaxed),
            st.threads_live.load(Relaxed),
            st.threads_peak.load(Relaxed),
            st.requested_max.load(Relaxed),
            st.clamped.load(Relaxed),
            regions,
            mean,
            st.cut.load(Relaxed),
            st.over_budget.load(Relaxed),
        )?;
    }
    let a = crate::ledger::audit();
    write!(
        o,
        "],\"ledger\":{{\"scope\":\"{}\",\"joined\":{},\"name\":{},\"budget\":{},\"used\":{},\"members\":{},\"held_here\":{},\"leased_here\":{}}}",
        if a.shared || a.pending {
            "tree"
        } else {
            "process"
        },
        a.shared,
        Js(crate::ledger::name()
            .filter(|_| a.shared || a.pending)
            .unwrap_or(b"")),
        a.budget,
        a.used,
        a.members,
        a.held_here,
        a.leased_here
    )?;
    write!(
        o,
        ",\"other_threads\":{{\"created\":{},\"live\":{},\"peak\":{}}},\"warnings\":[",
        OTHER.threads_created.load(Relaxed),
        OTHER.threads_live.load(Relaxed),
        OTHER.threads_peak.load(Relaxed)
    )?;
    for (i, (kind, msg)) in warnings::all().enumerate() {
        write!(
            o,
            "{}{{\"kind\":\"{}\",\"message\":{}}}",
            if i > 0 { "," } else { "" },
            kind,
            Js(msg)
        )?;
    }
    o.write_str("]}\n")
}

fn write_table(o: &mut Out, s: &Settings, trigger: Trigger) -> fmt::Result {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    writeln!(
        o,
        "parbudget[{}] report at {}: budget {} cores (from {}), fork policy {}",
        pid,
        trigger.name(),
        s.cap().cores,
        s.cap().source.name(),
        s.fork.name()
    )?;
    writeln!(
        o,
        "  {:<10} {:<6} {:>7} {:>5} {:>5} {:>9} {:>7} {:>8} {:>9} {:>5}  path",
        "runtime",
        "kind",
        "created",
        "live",
        "peak",
        "requested",
        "clamped",
        "regions",
        "mean_team",
        "over"
    )?;
    for (i, c) in runtime::copies() {
        let st = &c.stats;
        let (regions, mean) = regions_and_mean(i, st);
        write!(
            o,
            "  {:<10} {:<6} {:>7} {:>5} {:>5} {:>9} {:>7} {:>8} {:>9.2} {:>5}  ",
            c.imp.name(),
            c.imp.kind().name(),
            st.threads_created.load(Relaxed),
            st.threads_live.load(Relaxed),
            st.threads_peak.load(Relaxed),
            st.requested_max.load(Relaxed),
            st.clamped.load(Relaxed),
            regions,
            mean,
            st.over_budget.load(Relaxed)
        )?;
        o.buf.push_bytes(c.path());
        o.write_str("\n")?;
    }
    writeln!(
        o,
        "  {:<10} {:<6} {:>7} {:>5} {:>5}",
        "other",
        "-",
        OTHER.threads_created.load(Relaxed),
        OTHER.threads_live.load(Relaxed),
        OTHER.threads_peak.load(Relaxed)
    )?;
    for (kind, msg) in warnings::all() {
        write!(o, "  warning {}: ", kind)?;
        o.buf.push_bytes(msg);
        o.write_str("\n")?;
    }
    Ok(())
}

/// Writes the report now to its destination. Async-signal-safe.
fn write_to_destination(s: &Settings, dest: &[u8], trigger: Trigger) {
    if dest == b"stderr" {
        let mut o = Out {
            fd: 2,
            buf: StackBuf::new(),
            whole: true,
        };
        let _ = write_table(&mut o, s, trigger);
        o.flush();
        return;
    }
    // %p -> pid, %% -> %.
    let mut path = StackBuf::<1100>::new();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut i = 0;
    while i < dest.len() {
        if dest[i] == b'%' && i + 1 < dest.len() && dest[i + 1] == b'p' {
            let _ = write!(path, "{}", pid);
            i += 2;
        } else if dest[i] == b'%' && i + 1 < dest.len() && dest[i + 1] == b'%' {
            path.push_bytes(b"%");
            i += 2;
        } else {
            path.push_bytes(&dest[i..i + 1]);
            i += 1;
        }
    }
    let Some(c) = path.as_cstr() else { return };
    // Write to a temporary name, then rename: a reader never sees half a file.
    let mut tmp = StackBuf::<1200>::new();
    tmp.push_bytes(c.to_bytes());
    // Unique per write: a signal report and the exit report may overlap.
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let _ = write!(tmp, ".tmp{}-{}", pid, SEQ.fetch_add(1, Relaxed));
    let Some(t) = tmp.as_cstr() else { return };
    // SAFETY: NUL-terminated path; 0600: the report names our libraries and is
    // the user's own business.
    let fd = unsafe {
        libc::open(
            t.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        )
    };
    let failed = |why: &str| {
        let mut line = StackBuf::<1400>::new();
        let _ = write!(line, "parbudget[{}] WARN report_failed path=", pid);
        line.push_bytes(c.to_bytes());
        let _ = writeln!(
            line,
            " reason=\"{why}\" using=\"the previous report, if any\""
        );
        let _ = write_all(2, line.as_bytes());
    };
    if fd < 0 {
        failed("cannot create its temporary file");
        return;
    }
    let mut o = Out {
        fd,
        buf: StackBuf::new(),
        whole: true,
    };
    let _ = write_json(&mut o, s, trigger);
    o.flush();
    // Only a whole report replaces the last one: a short write (a full disk)
    // or a failed close leaves the previous report and removes the rest.
    // SAFETY: closing, renaming or removing our own file.
    unsafe {
        let closed = libc::close(fd) == 0;
        if o.whole && closed {
            libc::rename(t.as_ptr(), c.as_ptr());
        } else {
            libc::unlink(t.as_ptr());
            failed("short write: no space left for it");
        }
    }
}

/// pid whose exit report was written (at most one per process).
static WRITTEN: AtomicI32 = AtomicI32::new(0);

/// The exit report: once per process, never in a vfork child (it shares our
/// memory and must only exec or _exit). `may_load`: the caller is a normal
/// context (atexit), where copies seen only by `pthread_create` can be
/// confirmed with dlopen/dlsym first. `_exit` may be called from a signal
/// handler that interrupted the loader (holding its lock): there the report
/// lists pending copies as they are, by file name.
pub fn write_now(may_load: bool) {
    let Some(s) = crate::init::ready() else {
        return;
    };
    let Some(dest) = s.report.as_deref() else {
        return;
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if pid != process::known_pid() || WRITTEN.swap(pid, AcqRel) == pid {
        return;
    }
    if may_load {
        runtime::confirm_pending();
        crate::conflicts::check_pending();
    }
    close_signal_reports(pid);
    write_to_destination(s, dest, Trigger::Exit);
}

/// Signal reports being written now, a `process::pid_word`: a count
/// inherited through `fork` from a thread that was mid-report (and does not
/// exist in the child) reads as none.
static SIGNAL_WRITERS: AtomicU64 = AtomicU64::new(0);
/// The pid whose exit has begun: its signal reports are no longer written.
static CLOSING: AtomicI32 = AtomicI32::new(0);

/// Adds this writer to the count of `pid`, whatever an older process left.
fn writers_plus_one(word: u64, pid: i32) -> u64 {
    process::pid_word(pid, process::of_pid(word, pid).saturating_add(1))
}

/// The signal reports of `pid` in flight.
fn writers_of(word: u64, pid: i32) -> u32 {
    process::of_pid(word, pid)
}

/// A signal report may begin: false once this process's exit has begun. A
/// report begun is counted until `signal_report_done`.
fn signal_report_begins(pid: i32) -> bool {
    let _ = SIGNAL_WRITERS.fetch_update(SeqCst, SeqCst, |w| Some(writers_plus_one(w, pid)));
    // Counted first, then the flag read; the exit sets the flag, then reads
    // the count (both SeqCst): one of the two sees the other.
    if CLOSING.load(SeqCst) == pid {
        signal_report_done();
        return false;
    }
    true
}

fn signal_report_done() {
    SIGNAL_WRITERS.fetch_sub(1, SeqCst);
}

/// At exit, before the exit report: no signal report begins from now on, and
/// those in flight on other threads are let finish (up to 100 ms). Otherwise
/// the process's end stops a thread mid-report and leaves its temporary file
/// behind, or a late signal report replaces the exit report. A signal report
/// under us on this very thread (a handler that calls `_exit` interrupted it)
/// cannot finish: the bound ends that wait.
fn close_signal_reports(pid: i32) {
    CLOSING.store(pid, SeqCst);
    for _ in 0..2000 {
        if writers_of(SIGNAL_WRITERS.load(SeqCst), pid) == 0 {
            return;
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000,
        };
        // SAFETY: a plain sleep on a stack timespec; async-signal-safe.
        unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
    }
}

static OLD_ACTION: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // A handler must leave errno as it found it.
    // SAFETY: errno of this thread.
    let saved_errno = unsafe { *libc::__errno_location() };
    if let Some(s) = crate::init::ready() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if signal_report_begins(pid) {
            let dest = s.report.as_deref().unwrap_or(b"stderr");
            write_to_destination(s, dest, Trigger::Signal);
            signal_report_done();
        }
    }
    // Chain to the handler the program had installed before us, if any.
    let h = OLD_ACTION[0].load(Relaxed);
    let siginfo = OLD_ACTION[1].load(Relaxed) != 0;
    if h != libc::SIG_DFL && h != libc::SIG_IGN && h != 0 {
        // SAFETY: `h` is the handler the program installed, with the calling
        // convention its SA_SIGINFO flag says.
        unsafe { process::call_old_handler(h, siginfo, sig, info, ctx) };
    }
    // SAFETY: restoring this thread's errno.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Registers the signal report. Called from our constructor.
pub fn install(s: &Settings) {
    if let Some(sig) = s.report_signal {
        // SAFETY: installs a SA_SIGINFO handler, keeping the old action to chain.
        unsafe {
            let mut new: libc::sigaction = core::mem::zeroed();
            let mut old: libc::sigaction = core::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(sig, &new, &mut old) == 0 {
                OLD_ACTION[0].store(old.sa_sigaction, Relaxed);
                OLD_ACTION[1].store(usize::from(old.sa_flags & libc::SA_SIGINFO != 0), Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(b: &[u8]) -> String {
        format!("{}", Js(b))
    }

    #[test]
    fn json_strings_keep_utf8_and_escape_the_rest() {
        assert_eq!(
            js("/home/jos\u{e9}/\u{65e5}.so".as_bytes()),
            "\"/home/jos\u{e9}/\u{65e5}.so\""
        );
        assert_eq!(js(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(js(b"bad\xffbyte"), "\"bad\\ufffdbyte\"");
        // Round trip through a real JSON parser.
        let v: serde_json::Value =
            serde_json::from_str(&js("/v/\u{e9}t\u{e9}/lib\"x\".so".as_bytes())).unwrap();
        assert_eq!(v, "/v/\u{e9}t\u{e9}/lib\"x\".so");
    }

    #[test]
    fn signal_writers_are_counted_per_process() {
        let w = writers_plus_one(0, 7);
        assert_eq!(writers_of(w, 7), 1);
        let w = writers_plus_one(w, 7);
        assert_eq!(writers_of(w, 7), 2);
        // A forked child inherits its parent's word: none of those are its own.
        assert_eq!(writers_of(w, 8), 0);
        let w = writers_plus_one(w, 8);
        assert_eq!(writers_of(w, 8), 1);
        assert_eq!(writers_of(w, 7), 0);
        // A pid above 2^31 never occurs, but the tag keeps all 32 bits.
        let w = writers_plus_one(0, i32::MAX);
        assert_eq!(writers_of(w, i32::MAX), 1);
    }

    #[test]
    fn mem_out_counts_what_did_not_fit() {
        let mut b = [0u8; 4];
        let mut o = MemOut {
            buf: &mut b,
            needed: 0,
        };
        o.write_str("abcdef").unwrap();
        assert_eq!(o.needed, 6);
        assert_eq!(&b, b"abcd");
    }
}
