//! The ledger shared by the processes of one tree, in POSIX shared memory.
//!
//! Layout: a header (magic, version, size, budget, a process-shared robust
//! mutex, the count of threads in use) and one slot per member process (pid,
//! its start time, the threads it has in regions: callers and extras). Every
//! change happens under the mutex, so `used == sum(held)` whenever the mutex
//! is free.
//!
//! Dying members. The mutex is robust: if a member dies holding it, the next
//! locker gets EOWNERDEAD and rebuilds `used` from the slots of live members.
//! A member that dies between regions leaves `held` in its slot: when a
//! request cannot be met, the slots of dead members (no /proc entry, a zombie,
//! or a reused pid with another start time) are reclaimed. So a SIGKILL loses
//! nothing and leaks nothing.
//!
//! Trust. The segment is created 0600 with O_EXCL; before use it must be a
//! regular file owned by us with no group/other bits, of exactly our size,
//! with our magic and version, and with counts within bounds. Anything else:
//! the process falls back to a private ledger with a warning.
//!
//! Joining. The creator exports PARBUDGET_LEDGER=<name>; forked children keep
//! the mapping, exec'd children open the name. Unrelated processes join by
//! setting the same PARBUDGET_LEDGER (a name of their choosing, e.g.
//! `/parbudget-myjob`); the first one creates it.

use crate::process;
use crate::stackbuf::{Quoted, StackBuf};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use log::{debug, info, warn};

const MAGIC: u64 = u64::from_le_bytes(*b"PBLEDGR1");
const VERSION: u32 = 1;
pub const SLOTS: usize = 512;

#[repr(C)]
struct Slot {
    pid: AtomicI32,
    held: AtomicU32,
    start_time: AtomicU64,
}

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    size: u32,
    budget: u32,
    source: u32,
    creator: i32,
    _pad: u32,
    lock: UnsafeCell<libc::pthread_mutex_t>,
    used: AtomicU32,
    _pad2: AtomicU32,
    slots: [Slot; SLOTS],
}

const SIZE: usize = core::mem::size_of::<Header>();

/// The mapped ledger (0 = none) and this process's slot (usize::MAX = none yet).
static MAP: AtomicUsize = AtomicUsize::new(0);
static MY_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Last reclaim scan (CLOCK_MONOTONIC_COARSE ms), to rate-limit /proc reads.
static LAST_SCAN_MS: AtomicU64 = AtomicU64::new(0);

fn header() -> Option<&'static Header> {
    let p = MAP.load(Acquire);
    // SAFETY: a non-zero MAP is a validated, never-unmapped mapping of SIZE bytes.
    (p != 0).then(|| unsafe { &*(p as *const Header) })
}

/// The budget stored in the ledger (the tree's budget), if attached.
pub fn budget() -> Option<(u32, u32)> {
    header().map(|h| (h.budget, h.source))
}

std::thread_local! {
    /// True while this thread holds the ledger mutex: a signal handler that
    /// calls `_exit` there must not lock it again (it is not recursive).
    static HOLDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Holds the ledger's mutex; on EOWNERDEAD repairs the books first.
struct Locked(&'static Header);

impl Locked {
    fn new(h: &'static Header) -> Option<Locked> {
        if HOLDING.with(|f| f.get()) {
            return None; // reentered from a signal handler on this thread
        }
        let l = Self::lock(h)?;
        HOLDING.with(|f| f.set(true));
        Some(l)
    }

    fn lock(h: &'static Header) -> Option<Locked> {
        // SAFETY: the mutex lives in the validated mapping and was initialised
        // process-shared and robust by the creator.
        let r = unsafe { libc::pthread_mutex_lock(h.lock.get()) };
        match r {
            0 => Some(Locked(h)),
            libc::EOWNERDEAD => {
                // A member died inside its critical section: its slot may be
                // half-updated. Dead members' slots go; free is recomputed.
                reclaim_dead(h, true);
                // SAFETY: we own the mutex; the state is consistent again.
                unsafe { libc::pthread_mutex_consistent(h.lock.get()) };
                warn!("ledger_repaired reason=\"a member died holding the ledger lock\"");
                Some(Locked(h))
            }
            _ => None,
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        HOLDING.with(|f| f.set(false));
        // SAFETY: we hold the mutex.
        unsafe { libc::pthread_mutex_unlock(self.0.lock.get()) };
    }
}

/// Clears dead members' slots and takes their threads off `used`. With
/// `rebuild` (after EOWNERDEAD), `used` is recomputed from the live slots.
/// Caller holds the mutex.
fn reclaim_dead(h: &Header, rebuild: bool) {
    let mut live_held: u32 = 0;
    let mut freed: u32 = 0;
    for s in &h.slots {
        let pid = s.pid.load(Relaxed);
        if pid == 0 {
            continue;
        }
        if process::alive(pid, s.start_time.load(Relaxed)) {
            live_held = live_held.saturating_add(s.held.load(Relaxed));
        } else {
            let held = s.held.swap(0, Relaxed);
            s.pid.store(0, Relaxed);
            freed += held;
            if held > 0 {
                info!("ledger_reclaimed pid={} threads={}", pid, held);
            }
        }
    }
    if rebuild {
        h.used.store(live_held, Relaxed);
    } else {
        h.used
            .store(h.used.load(Relaxed).saturating_sub(freed), Relaxed);
    }
}

fn now_ms() -> u64 {
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This process's slot, claimed on first use. Caller holds the mutex.
fn my_slot(h: &Header) -> Option<&Slot> {
    let pid = process::pid();
    let i = MY_SLOT.load(Relaxed);
    if i < SLOTS && h.slots[i].pid.load(Relaxed) == pid {
        return Some(&h.slots[i]);
    }
    // No slot yet, or ours was reclaimed (then its threads were already
    // taken off `used`): claim one.
    let start = process::my_start_time();
    if start == 0 {
        return None;
    }
    // After exec the pid and start time are the same but the old image's
    // regions are gone: adopt its slot and take its threads off `used`.
    if let Some(j) = h
        .slots
        .iter()
        .position(|s| s.pid.load(Relaxed) == pid && s.start_time.load(Relaxed) == start)
    {
        let old = h.slots[j].held.swap(0, Relaxed);
        h.used
            .store(h.used.load(Relaxed).saturating_sub(old), Relaxed);
        MY_SLOT.store(j, Relaxed);
        return Some(&h.slots[j]);
    }
    let mut pick = None;
    for pass in 0..2 {
        pick = h.slots.iter().position(|s| s.pid.load(Relaxed) == 0);
        if pick.is_some() || pass == 1 {
            break;
        }
        reclaim_dead(h, false);
    }
    let i = pick?;
    let s = &h.slots[i];
    s.held.store(0, Relaxed);
    s.start_time.store(start, Relaxed);
    s.pid.store(pid, Relaxed);
    MY_SLOT.store(i, Relaxed);
    Some(s)
}

/// A caller of this process enters a region wanting `want` extras (at least
/// `need` of them): counts it and grants what fits, or what it needs. `None`
/// if the shared ledger is not in use.
pub fn enter(want: u32, need: u32, count_caller: bool) -> Option<super::local::Entered> {
    let me = u32::from(count_caller);
    let h = header()?;
    let l = Locked::new(h)?;
    let Some(slot) = my_slot(l.0) else {
        // No free slot: run teams of one rather than overspend, unless a
        // team was promised (then it is kept, uncounted).
        return Some(super::local::Entered {
            extras: need,
            over: need > 0,
        });
    };
    let mut used = h.used.load(Relaxed);
    if want > 0 && used.saturating_add(me + want) > h.budget {
        // Short: maybe a dead member still counts. Rate-limited, so a
        // SIGKILLed member's threads come back within ~50 ms.
        let now = now_ms();
        let last = LAST_SCAN_MS.load(Relaxed);
        if last == 0 || now.saturating_sub(last) >= 50 {
            LAST_SCAN_MS.store(now.max(1), Relaxed);
            reclaim_dead(h, false);
            used = h.used.load(Relaxed);
        }
    }
    // A nested region on an already-counted thread asks only for extras.
    let e = super::local::extras_for(want, need, h.budget.saturating_sub(used.saturating_add(me)));
    h.used.store(used.saturating_add(me + e.extras), Relaxed);
    slot.held.fetch_add(me + e.extras, Relaxed);
    Some(e)
}

/// The region entered with `extras` ended. Never gives back more than this
/// process holds: a forked child ending a region its parent entered is a no-op.
pub fn leave(extras: u32, count_caller: bool) -> bool {
    let n = extras + u32::from(count_caller);
    let Some(h) = header() else { return false };
    let Some(l) = Locked::new(h) else { return true };
    let i = MY_SLOT.load(Relaxed);
    if i < SLOTS && l.0.slots[i].pid.load(Relaxed) == process::pid() {
        let s = &l.0.slots[i];
        let d = s.held.load(Relaxed).min(n);
        s.held.store(s.held.load(Relaxed) - d, Relaxed);
        h.used
            .store(h.used.load(Relaxed).saturating_sub(d), Relaxed);
    }
    true
}

/// At exit: give back everything and free the slot. Returns true when no
/// live member remains (the name may then be removed). A process that never
/// took a slot (a forked child that ran no region) has nothing to do: that
/// keeps fork+_exit cheap.
pub fn leave_tree() -> bool {
    let Some(h) = header() else { return false };
    let i = MY_SLOT.swap(usize::MAX, Relaxed);
    if i >= SLOTS {
        return false;
    }
    let Some(l) = Locked::new(h) else {
        return false;
    };
    let s = &l.0.slots[i];
    if s.pid.load(Relaxed) == process::pid() {
        let held = s.held.swap(0, Relaxed);
        h.used
            .store(h.used.load(Relaxed).saturating_sub(held), Relaxed);
        s.pid.store(0, Relaxed);
    }
    no_live_member(l.0)
}

/// True when every slot is free or belongs to a dead process.
fn no_live_member(h: &Header) -> bool {
    h.slots.iter().all(|s| {
        let pid = s.pid.load(Relaxed);
        pid == 0 || !process::alive(pid, s.start_time.load(Relaxed))
    })
}

/// In a forked child (atfork handler): the child has no slot yet. Flag only.
pub fn forget_slot_in_child() {
    MY_SLOT.store(usize::MAX, Relaxed);
}

/// Free threads for a query that wants `want` of them: when short, dead
/// members are reclaimed first (rate-limited, as in `enter`), so an answer
/// never counts the threads of a member killed by SIGKILL.
pub fn free_for(want: u32) -> Option<u32> {
    let h = header()?;
    let free = h.budget.saturating_sub(h.used.load(Relaxed));
    if free >= want {
        return Some(free);
    }
    let now = now_ms();
    let last = LAST_SCAN_MS.load(Relaxed);
    if last != 0 && now.saturating_sub(last) < 50 {
        return Some(free);
    }
    let Some(_l) = Locked::new(h) else {
        return Some(free);
    };
    LAST_SCAN_MS.store(now.max(1), Relaxed);
    reclaim_dead(h, false);
    Some(h.budget.saturating_sub(h.used.load(Relaxed)))
}

/// A snapshot of the shared ledger for reports and audits, read without the
/// lock (each number is a single atomic load).
pub fn audit() -> Option<super::Audit> {
    let h = header()?;
    let i = MY_SLOT.load(Relaxed);
    let held_here = if i < SLOTS && h.slots[i].pid.load(Relaxed) == process::pid() {
        h.slots[i].held.load(Relaxed)
    } else {
        0
    };
    Some(super::Audit {
        shared: true,
        budget: h.budget,
        used: h.used.load(Relaxed),
        members: h.slots.iter().filter(|s| s.pid.load(Relaxed) != 0).count() as u32,
        held_here,
    })
}

pub fn free_now() -> Option<u32> {
    header().map(|h| h.budget.saturating_sub(h.used.load(Relaxed)))
}

/// Why the shared ledger could not be used.
pub enum Refused {
    Open(i32),
    NotPrivate,
    WrongSize(i64),
    BadHeader,
    NoProc,
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refused::Open(e) => write!(f, "cannot open or create it (errno {e})"),
            Refused::NotPrivate => {
                f.write_str("not a regular file owned by this user with mode 0600")
            }
            Refused::WrongSize(s) => write!(f, "wrong size {s}"),
            Refused::BadHeader => f.write_str("bad magic, version or counts"),
            Refused::NoProc => f.write_str(
                "/proc/self/stat is unreadable, so dead members could not be told from live ones",
            ),
        }
    }
}

/// Opens (or creates, with a budget of `cores`) the ledger `name`. Returns the
/// tree's budget, which may differ from ours (a member narrowed by taskset).
pub fn attach(name: &[u8], cores: u32, source: u32) -> Result<u32, Refused> {
    let mut n = StackBuf::<256>::new();
    n.push_bytes(name);
    let cname = n.as_cstr().ok_or(Refused::Open(libc::ENAMETOOLONG))?;
    if process::my_start_time() == 0 {
        return Err(Refused::NoProc);
    }
    // SAFETY: shm_open with a NUL-terminated name; O_EXCL so we know if we created it.
    let mut fd = unsafe {
        libc::shm_open(
            cname.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    let created = fd >= 0;
    if !created {
        // SAFETY: as above, opening an existing one.
        fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
    }
    if fd < 0 {
        // SAFETY: errno of this thread.
        return Err(Refused::Open(unsafe { *libc::__errno_location() }));
    }
    let result = (|| {
        if created {
            // SAFETY: sizing our new segment.
            if unsafe { libc::ftruncate(fd, SIZE as libc::off_t) } != 0 {
                return Err(Refused::WrongSize(0));
            }
        }
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // A joiner may open the name between the creator's create and its
        // ftruncate: give the creator up to 200 ms to size it.
        for _ in 0..200 {
            // SAFETY: fstat fills st.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                return Err(Refused::NotPrivate);
            }
            if created || st.st_size != 0 {
                break;
            }
            // SAFETY: plain sleep.
            unsafe { libc::usleep(1000) };
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != me || st.st_mode & 0o077 != 0
        {
            return Err(Refused::NotPrivate);
        }
        if st.st_size as usize != SIZE {
            return Err(Refused::WrongSize(st.st_size));
        }
        // SAFETY: mapping exactly SIZE bytes of a file we just checked is SIZE long.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Refused::Open(unsafe { *libc::__errno_location() }));
        }
        let h = p as *mut Header;
        if created {
            // SAFETY: a fresh zeroed mapping that only we know about yet: it is
            // unreadable to others until the magic is written last.
            unsafe {
                (*h).version = VERSION;
                (*h).size = SIZE as u32;
                (*h).budget = cores;
                (*h).source = source;
                (*h).creator = libc::getpid();
                let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
                libc::pthread_mutexattr_init(&mut attr);
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
                libc::pthread_mutex_init((*h).lock.get(), &attr);
                libc::pthread_mutexattr_destroy(&mut attr);
                (*h).used.store(0, Relaxed);
                core::ptr::write_volatile(&mut (*h).magic, MAGIC);
            }
        } else {
            // Another process may be creating it this instant: wait briefly for the magic.
            let mut ok = false;
            for _ in 0..200 {
                // SAFETY: reading the mapped header.
                if unsafe { core::ptr::read_volatile(&(*h).magic) } == MAGIC {
                    ok = true;
                    break;
                }
                // SAFETY: plain sleep.
                unsafe { libc::usleep(1000) };
            }
            // SAFETY: reading the mapped header for validation.
            let hr = unsafe { &*h };
            // `used` may exceed the budget (callers always run), but not by
            // more than every slot's share of a sane process.
            if !ok
                || hr.version != VERSION
                || hr.size as usize != SIZE
                || hr.budget == 0
                || hr.budget > crate::budget::MAX_CORES
                || hr.used.load(Relaxed) > (SLOTS as u32) * 4096
            {
                // SAFETY: unmapping what we mapped.
                unsafe { libc::munmap(p, SIZE) };
                return Err(Refused::BadHeader);
            }
        }
        MAP.store(p as usize, Release);
        // Take our slot now, not at the first region: a member is visible to
        // the others (and keeps the name alive) for as long as it lives.
        // SAFETY: validated above; `header()` now returns it.
        if let Some(l) = Locked::new(unsafe { &*h }) {
            let _ = my_slot(l.0);
        }
        // SAFETY: validated above.
        Ok(unsafe { (*h).budget })
    })();
    // SAFETY: the mapping outlives the descriptor.
    unsafe { libc::close(fd) };
    if created && result.is_err() {
        // Our half-made segment must not block the next process.
        // SAFETY: removing the name we just created.
        unsafe { libc::shm_unlink(cname.as_ptr()) };
    }
    if result.is_ok() {
        if created {
            info!(
                "ledger_created name={} cores={} bytes={}",
                Quoted(name),
                cores,
                SIZE
            );
        } else {
            debug!("ledger_joined name={}", Quoted(name));
        }
    }
    result
}

/// For stale-name cleanup: maps the ledger `name` read-only and says whether
/// no live member remains. Refuses (false) anything that does not validate.
pub fn abandoned(name: &[u8]) -> bool {
    let mut n = StackBuf::<256>::new();
    n.push_bytes(name);
    let Some(c) = n.as_cstr() else { return false };
    // SAFETY: read-only open of a NUL-terminated name.
    let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat fills st; getuid has no preconditions.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_uid == unsafe { libc::getuid() }
        && st.st_size as usize == SIZE;
    let mut empty = false;
    if ok {
        // SAFETY: read-only mapping of a file of exactly SIZE bytes.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                SIZE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // SAFETY: reading the mapped header.
            let h = unsafe { &*(p as *const Header) };
            empty = h.magic == MAGIC && no_live_member(h);
            // SAFETY: unmapping what we mapped.
            unsafe { libc::munmap(p, SIZE) };
        }
    }
    // SAFETY: closing our descriptor.
    unsafe { libc::close(fd) };
    empty
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fits_u32_size() {
        assert!(SIZE < u32::MAX as usize);
        assert!(SIZE > SLOTS * 16);
    }
}
