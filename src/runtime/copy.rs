//! One loaded copy of a runtime: where it is, its counters, and calls into
//! its own functions (resolved from the copy itself, never through our hooks).

use super::kind::Impl;
use super::loader::{PATH_LEN, owner_base};
use crate::flag::Flag;
use crate::stackbuf::Quoted;
use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use log::info;

pub const MAX_COPIES: usize = 64;

/// Counters kept per runtime copy (and for "other" threads), for logs and
/// the report.
pub struct Stats {
    pub requested_max: AtomicU32,
    pub clamped: AtomicU32,
    pub threads_created: AtomicU64,
    pub threads_live: AtomicU64,
    pub threads_peak: AtomicU64,
    pub regions: AtomicU64,
    pub team_sum: AtomicU64,
    pub cut: AtomicU64,
    /// Regions or calls that kept a promised team although it took the
    /// ledger over the budget (correctness beats the budget).
    pub over_budget: AtomicU64,
}

impl Stats {
    pub const fn new() -> Stats {
        Stats {
            requested_max: AtomicU32::new(0),
            clamped: AtomicU32::new(0),
            threads_created: AtomicU64::new(0),
            threads_live: AtomicU64::new(0),
            threads_peak: AtomicU64::new(0),
            regions: AtomicU64::new(0),
            team_sum: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
        }
    }

    /// A forked child describes itself: counters restart there (atomic stores
    /// only, so this is fine in the atfork child handler; each only where
    /// non-zero, since a child copies every page it writes).
    pub fn reset(&self) {
        for a in [&self.requested_max, &self.clamped] {
            if a.load(Relaxed) != 0 {
                a.store(0, Relaxed);
            }
        }
        for a in [
            &self.threads_created,
            &self.threads_live,
            &self.threads_peak,
            &self.regions,
            &self.team_sum,
            &self.cut,
            &self.over_budget,
        ] {
            if a.load(Relaxed) != 0 {
                a.store(0, Relaxed);
            }
        }
    }

    pub fn note_request(&self, n: u32) {
        // A read first: the largest request is almost always known already,
        // and a read-modify-write on every region would cost a locked
        // instruction for nothing.
        if n > self.requested_max.load(Relaxed) {
            self.requested_max.fetch_max(n, Relaxed);
        }
    }
}

/// Threads made by the program and libraries that are not runtimes.
pub static OTHER: Stats = Stats::new();

/// Region counts of one copy in one cell's row.
struct Counts {
    regions: AtomicU64,
    team_sum: AtomicU64,
}

/// The region counts of the threads that held one cell (thread_state::my_cell)
/// in process `pid`, per copy: written by the cell's thread only, with plain
/// stores, so a region costs no locked instruction for its statistics. Rows
/// outlive their threads (a cell's next thread adds to them); a row of
/// another pid (inherited through fork) counts as empty and is cleared when
/// a thread of the new process claims its cell.
#[repr(C, align(64))]
struct CountRow {
    pid: core::sync::atomic::AtomicI32,
    copies: [Counts; MAX_COPIES],
}

static COUNT_ROWS: [CountRow; crate::thread_state::CELLS] = [const {
    CountRow {
        pid: core::sync::atomic::AtomicI32::new(0),
        copies: [const {
            Counts {
                regions: AtomicU64::new(0),
                team_sum: AtomicU64::new(0),
            }
        }; MAX_COPIES],
    }
}; crate::thread_state::CELLS];

/// A thread of process `pid` claimed cell `c`: a row left by another
/// process starts over.
pub fn claim_count_row(c: usize, pid: i32) {
    let row = &COUNT_ROWS[c];
    if row.pid.load(Acquire) == pid {
        return;
    }
    for k in &row.copies {
        k.regions.store(0, Relaxed);
        k.team_sum.store(0, Relaxed);
    }
    row.pid.store(pid, Release);
}

/// Counts one region (or sized call) of copy `index` with team `team`: in
/// the row of the calling thread's cell `cell` (`thread_state::my_cell`,
/// which the caller has looked up for the ledger too) if it has one, else in
/// the shared counters.
#[inline]
pub fn count_region(cell: Option<usize>, index: usize, stats: &Stats, team: u32) {
    if index < MAX_COPIES
        && let Some(c) = cell
    {
        let k = &COUNT_ROWS[c].copies[index];
        // One writer: this thread (see CountRow).
        k.regions.store(k.regions.load(Relaxed) + 1, Relaxed);
        k.team_sum
            .store(k.team_sum.load(Relaxed) + u64::from(team), Relaxed);
        return;
    }
    stats.regions.fetch_add(1, Relaxed);
    stats.team_sum.fetch_add(u64::from(team), Relaxed);
}

/// Regions (or sized calls) of copy `index` so far, and the sum of their teams.
pub fn regions_and_teams(index: usize, stats: &Stats) -> (u64, u64) {
    let pid = crate::process::pid_unrecorded();
    let mut r = stats.regions.load(Relaxed);
    let mut t = stats.team_sum.load(Relaxed);
    if index < MAX_COPIES {
        for row in &COUNT_ROWS {
            if row.pid.load(Acquire) == pid {
                r += row.copies[index].regions.load(Relaxed);
                t += row.copies[index].team_sum.load(Relaxed);
            }
        }
    }
    (r, t)
}

/// Registration states of a copy. PENDING copies were seen by
/// `dl_iterate_phdr` only (from `pthread_create`, where taking the loader's
/// `dl_load_lock` through dlopen/dladdr could deadlock against a constructor
/// that waits for the new thread); they are confirmed by symbols at the next
/// safe point. REJECTED ones matched a file-name prefix but not the symbols.
pub const PENDING: u8 = 0;
pub const CONFIRMED: u8 = 1;
pub const REJECTED: u8 = 2;

/// One loaded copy of a runtime.
pub struct RuntimeCopy {
    pub imp: Impl,
    /// Load base (`dlpi_addr`): identifies the object.
    pub base: usize,
    /// Lowest and highest address of its loaded segments (for attribution
    /// without dladdr).
    pub(super) lo: usize,
    pub(super) hi: usize,
    pub(super) path: [u8; PATH_LEN],
    pub(super) path_len: usize,
    pub(super) state: AtomicU8,
    /// Our `dlopen(RTLD_NOLOAD)` reference. Kept on purpose: it pins the copy,
    /// so the function pointers below stay valid even if the host dlcloses it.
    pub(super) handle: AtomicUsize,
    pub(super) get: AtomicUsize,
    pub(super) set: AtomicUsize,
    pub(super) budget_applied: AtomicBool,
    pub stats: Stats,
    /// BLAS per-call sizing: the thread count the copy is configured for
    /// (environment, setter, threadpoolctl), and the count we last set.
    pub blas_config: AtomicU32,
    pub blas_current: AtomicU32,
    /// OpenBLAS's `openblas_get_parallel`: 0 unknown, 1 sequential, 2 pthreads, 3 OpenMP.
    pub blas_parallel: AtomicU32,
    pub(super) parallel_fn: AtomicUsize,
    /// OpenMP copies: `omp_get_active_level`, `omp_get_max_active_levels`
    /// (is a region started here going to be inactive?) and
    /// `omp_pause_resource_all` (OpenMP 5.0; libgomp since GCC 9).
    pub(super) active_level_fn: AtomicUsize,
    pub(super) max_active_fn: AtomicUsize,
    pub(super) pause_fn: AtomicUsize,
    /// Serialises "read the count, decide, set it" of per-call BLAS sizing:
    /// OpenBLAS's count is process-wide.
    pub blas_lock: Flag,
}

impl RuntimeCopy {
    pub fn path(&self) -> &[u8] {
        &self.path[..self.path_len]
    }

    /// The copy's own thread count, from its get function.
    pub fn get_threads(&self) -> Option<i64> {
        let get = self.get.load(Acquire);
        if get == 0 {
            return None;
        }
        // SAFETY: `get` was resolved by dlsym from this copy's table row, whose
        // signature is known per runtime kind; the copy is pinned (see _handle).
        unsafe {
            Some(match self.imp {
                Impl::Blis => core::mem::transmute::<usize, extern "C" fn() -> i64>(get)(),
                _ => i64::from(core::mem::transmute::<usize, extern "C" fn() -> c_int>(get)()),
            })
        }
    }

    /// OpenBLAS's threading model, asked once (a constant in the library).
    /// Only call where calling into the runtime is safe.
    pub fn blas_parallel(&self) -> u32 {
        let p = self.blas_parallel.load(Relaxed);
        let f = self.parallel_fn.load(Acquire);
        if p != 0 || f == 0 {
            return p;
        }
        // SAFETY: openblas_get_parallel(void) -> int, resolved from this copy.
        let v = unsafe { core::mem::transmute::<usize, extern "C" fn() -> c_int>(f)() };
        let code = match v {
            0 => 1,
            1 => 2,
            _ => 3,
        };
        self.blas_parallel.store(code, Relaxed);
        code
    }

    /// Sets the copy's thread count through its own set function.
    pub fn set_threads(&self, n: u32) {
        let set = self.set.load(Acquire);
        if set == 0 {
            return;
        }
        // SAFETY: as in get_threads.
        unsafe {
            match self.imp {
                Impl::Blis => core::mem::transmute::<usize, extern "C" fn(i64)>(set)(i64::from(n)),
                _ => core::mem::transmute::<usize, extern "C" fn(c_int)>(set)(n as c_int),
            }
        }
    }

    /// True when a region started now on this thread would be inactive
    /// (nested beyond `max-active-levels`): the runtime runs it with one
    /// thread whatever it is asked, and the thread is already counted as a
    /// worker of the enclosing team.
    pub fn nested_inactive(&self) -> bool {
        let (a, m) = (
            self.active_level_fn.load(Acquire),
            self.max_active_fn.load(Acquire),
        );
        if a == 0 || m == 0 {
            return false;
        }
        // SAFETY: int(void) OpenMP API function resolved from this copy.
        let level = unsafe { core::mem::transmute::<usize, extern "C" fn() -> c_int>(a)() };
        if level == 0 {
            // Outside any active region (the common case): one call only.
            return false;
        }
        // SAFETY: as above.
        let max = unsafe { core::mem::transmute::<usize, extern "C" fn() -> c_int>(m)() };
        level >= max
    }

    /// `omp_pause_resource_all(omp_pause_hard)` in this copy: frees the calling
    /// thread's pool. `None` when the copy has no such function; otherwise
    /// whether it succeeded (libgomp refuses inside a region).
    pub fn pause_hard(&self) -> Option<bool> {
        let f = self.pause_fn.load(Acquire);
        if f == 0 {
            return None;
        }
        // SAFETY: int omp_pause_resource_all(omp_pause_resource_t), resolved
        // from this copy; omp_pause_hard is 2 in every implementation.
        Some(unsafe { core::mem::transmute::<usize, extern "C" fn(c_int) -> c_int>(f)(2) } == 0)
    }

    /// `name` as defined by this very copy (0 if it has none). Slow path only:
    /// dlsym takes the loader's lock and may allocate for a missing name.
    pub fn lookup(&self, name: &CStr) -> usize {
        let h = self.handle.load(Acquire);
        if h == 0 {
            return 0;
        }
        // SAFETY: a pinned handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(h as *mut c_void, name.as_ptr()) } as usize;
        if p != 0 && owner_base(p) == Some(self.base) {
            p
        } else {
            0
        }
    }

    pub fn confirmed(&self) -> bool {
        self.state.load(Acquire) == CONFIRMED
    }
}

/// Lowers a copy's thread count to the budget if it is above it. Only call
/// where calling into the runtime is safe: never from `pthread_create` (the
/// runtime may be inside its own initialisation, holding its own locks).
pub fn apply_budget(copy: &RuntimeCopy, budget: u32, why: &str) {
    if !copy.confirmed() || copy.budget_applied.swap(true, AcqRel) {
        return;
    }
    if let Some(cur) = copy.get_threads()
        && cur > i64::from(budget)
    {
        copy.set_threads(budget);
        copy.stats.clamped.fetch_add(1, Relaxed);
        info!(
            "clamp impl={} path={} from={} to={} by={}",
            copy.imp.name(),
            Quoted(copy.path()),
            cur,
            budget,
            why
        );
    }
}
