//! Runtime copies: which native thread pools are loaded, where, and which
//! copy a given caller is bound to.
//!
//! Discovery follows threadpoolctl: walk the loaded objects
//! (`dl_iterate_phdr`), match file-name prefixes from each runtime kind's table
//! row, confirm with symbols. Unlike threadpoolctl it runs again whenever the
//! loader's object count changes, so copies loaded later (numpy imported after
//! start) are found too, and it never interposes `dlopen` (that would make glibc
//! see us as the caller and break the host's `$ORIGIN` lookups).
//!
//! The registry is append-only: a slot is written under the writer flag, then
//! published by bumping `count` (Release); readers see only published slots.

pub mod binding;
pub mod blis;
pub mod flexiblas;
pub mod mkl;
pub mod openblas;
pub mod openmp;

use crate::flag::Flag;
use crate::stackbuf::{Quoted, StackBuf};
use core::cell::UnsafeCell;
use core::ffi::{CStr, c_int, c_void};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use log::{debug, info};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Libgomp,
    Libomp,
    Libiomp,
    Openblas,
    Mkl,
    Blis,
    Flexiblas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Openmp,
    Blas,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Libgomp => "libgomp",
            Impl::Libomp => "libomp",
            Impl::Libiomp => "libiomp",
            Impl::Openblas => "openblas",
            Impl::Mkl => "mkl",
            Impl::Blis => "blis",
            Impl::Flexiblas => "flexiblas",
        }
    }
    pub fn kind(self) -> Kind {
        match self {
            Impl::Libgomp | Impl::Libomp | Impl::Libiomp => Kind::Openmp,
            _ => Kind::Blas,
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Openmp => "openmp",
            Kind::Blas => "blas",
        }
    }
}

/// One runtime kind's table row, as in threadpoolctl: file-name prefixes,
/// symbols that confirm it, its get/set thread-count functions and, where the
/// kind has one, its threading-model query (the first name present wins).
pub struct Row {
    pub imp: Impl,
    pub prefixes: &'static [&'static str],
    pub confirm: &'static [&'static CStr],
    pub get: &'static [&'static CStr],
    pub set: &'static [&'static CStr],
    pub model: &'static [&'static CStr],
}

fn rows() -> impl Iterator<Item = &'static Row> {
    openmp::ROWS
        .iter()
        .chain(openblas::ROWS)
        .chain(mkl::ROWS)
        .chain(blis::ROWS)
        .chain(flexiblas::ROWS)
}

/// Which row a file name belongs to, by the prefix of its base name.
pub fn row_for_path(path: &[u8]) -> Option<&'static Row> {
    let base = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    };
    rows().find(|r| r.prefixes.iter().any(|p| base.starts_with(p.as_bytes())))
}

const PATH_LEN: usize = 512;
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
    /// only, so this is fine in the atfork child handler).
    pub fn reset(&self) {
        for a in [&self.requested_max, &self.clamped] {
            a.store(0, Relaxed);
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
            a.store(0, Relaxed);
        }
    }

    pub fn note_request(&self, n: u32) {
        self.requested_max.fetch_max(n, Relaxed);
    }
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
    lo: usize,
    hi: usize,
    path: [u8; PATH_LEN],
    path_len: usize,
    state: AtomicU8,
    /// Our `dlopen(RTLD_NOLOAD)` reference. Kept on purpose: it pins the copy,
    /// so the function pointers below stay valid even if the host dlcloses it.
    handle: AtomicUsize,
    get: AtomicUsize,
    set: AtomicUsize,
    budget_applied: AtomicBool,
    pub stats: Stats,
    /// BLAS per-call sizing: the thread count the copy is configured for
    /// (environment, setter, threadpoolctl), and the count we last set.
    pub blas_config: AtomicU32,
    pub blas_current: AtomicU32,
    /// OpenBLAS's `openblas_get_parallel`: 0 unknown, 1 sequential, 2 pthreads, 3 OpenMP.
    pub blas_parallel: AtomicU32,
    parallel_fn: AtomicUsize,
    /// OpenMP copies: `omp_get_active_level`, `omp_get_max_active_levels`
    /// (is a region started here going to be inactive?) and
    /// `omp_pause_resource_all` (OpenMP 5.0; libgomp since GCC 9).
    active_level_fn: AtomicUsize,
    max_active_fn: AtomicUsize,
    pause_fn: AtomicUsize,
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
        // SAFETY: int(void) OpenMP API functions resolved from this copy.
        let (level, max) = unsafe {
            (
                core::mem::transmute::<usize, extern "C" fn() -> c_int>(a)(),
                core::mem::transmute::<usize, extern "C" fn() -> c_int>(m)(),
            )
        };
        level > 0 && level >= max
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

struct Registry {
    slots: [UnsafeCell<MaybeUninit<RuntimeCopy>>; MAX_COPIES],
    count: AtomicUsize,
    /// Writer flag (see `flag`): a half-written slot is invisible because
    /// `count` was not bumped.
    writer: Flag,
    /// The loader's `dlpi_adds` when we last scanned.
    seen_adds: AtomicU64,
}

// SAFETY: slots are written only under `writer` and before `count` publishes
// them; published slots are never written again except through atomics.
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    slots: [const { UnsafeCell::new(MaybeUninit::uninit()) }; MAX_COPIES],
    count: AtomicUsize::new(0),
    writer: Flag::new(),
    seen_adds: AtomicU64::new(0),
};

/// All published copies that are (or may yet be) runtimes.
pub fn copies() -> impl Iterator<Item = (usize, &'static RuntimeCopy)> {
    all_slots().filter(|(_, c)| c.state.load(Acquire) != REJECTED)
}

fn all_slots() -> impl Iterator<Item = (usize, &'static RuntimeCopy)> {
    let n = REGISTRY.count.load(Acquire);
    // SAFETY: slots below `count` were fully written before publication.
    (0..n).map(|i| (i, unsafe { (*REGISTRY.slots[i].get()).assume_init_ref() }))
}

pub fn copy(index: usize) -> Option<&'static RuntimeCopy> {
    if index < REGISTRY.count.load(Acquire) {
        // SAFETY: as in `copies`.
        Some(unsafe { (*REGISTRY.slots[index].get()).assume_init_ref() })
    } else {
        None
    }
}

fn index_of_base(base: usize) -> Option<usize> {
    copies().find(|(_, c)| c.base == base).map(|(i, _)| i)
}

fn known_base(base: usize) -> bool {
    all_slots().any(|(_, c)| c.base == base)
}

/// For the atfork child handler: only clears flags (see `Registry::writer`).
pub fn reset_writer_in_child() {
    REGISTRY.writer.reset_in_child();
    for (_, c) in all_slots() {
        c.blas_lock.reset_in_child();
    }
}

/// The loader's count of objects ever loaded.
fn loader_adds() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid info; `data` is our u64.
        unsafe { *(data as *mut u64) = (*info).dlpi_adds };
        1
    }
    let mut adds: u64 = 0;
    // SAFETY: the callback only reads the info it is given.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut adds as *mut u64).cast()) };
    adds
}

struct Candidate {
    base: usize,
    lo: usize,
    hi: usize,
    path: StackBuf<PATH_LEN>,
    row: &'static Row,
}

/// The address range covered by an object's PT_LOAD segments.
fn load_range(info: &libc::dl_phdr_info) -> (usize, usize) {
    let (mut lo, mut hi) = (usize::MAX, 0usize);
    for i in 0..usize::from(info.dlpi_phnum) {
        // SAFETY: dlpi_phdr has dlpi_phnum entries.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type == libc::PT_LOAD {
            let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
            lo = lo.min(start);
            hi = hi.max(start + ph.p_memsz as usize);
        }
    }
    (lo, hi)
}

struct Scan {
    found: [MaybeUninit<Candidate>; 32],
    n: usize,
}

/// Finds runtime copies loaded since the last scan and confirms them. Cheap
/// when nothing was loaded (one `dl_iterate_phdr` step). Never calls into a
/// runtime. Takes the loader's lock (dlopen/dlsym): not for `pthread_create`.
pub fn refresh() {
    scan();
    confirm_pending();
}

/// For `pthread_create`: finds new copies with `dl_iterate_phdr` only (it
/// takes the loader's write lock, never `dl_load_lock`, which a thread inside
/// dlopen holds while a constructor may wait for the thread being created).
pub fn refresh_light() {
    scan();
}

fn scan() {
    let adds = loader_adds();
    if adds == REGISTRY.seen_adds.load(Acquire) {
        return;
    }
    let Some(_writer) = REGISTRY.writer.try_take() else {
        return; // Another thread is scanning; our caller can proceed without.
    };
    REGISTRY.seen_adds.store(adds, Release);

    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid info; `data` is our Scan.
        let (info, scan) = unsafe { (&*info, &mut *(data as *mut Scan)) };
        if info.dlpi_name.is_null() || scan.n == scan.found.len() {
            return 0;
        }
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
        let base = info.dlpi_addr as usize;
        if let Some(row) = row_for_path(name) {
            if !known_base(base) {
                let mut path = StackBuf::new();
                path.push_bytes(name);
                let (lo, hi) = load_range(info);
                if !path.truncated {
                    scan.found[scan.n].write(Candidate {
                        base,
                        lo,
                        hi,
                        path,
                        row,
                    });
                    scan.n += 1;
                }
            }
        }
        0
    }
    let mut scan = Scan {
        found: [const { MaybeUninit::uninit() }; 32],
        n: 0,
    };
    // SAFETY: the callback writes only into `scan`. No dlopen inside it: the
    // loader's list lock is held there.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut scan as *mut Scan).cast()) };
    for i in 0..scan.n {
        // SAFETY: the first `n` entries were written by the callback.
        let c = unsafe { scan.found[i].assume_init_read() };
        publish_pending(&c);
    }
}

/// Publishes a copy seen by `dl_iterate_phdr`, unconfirmed. Caller holds the
/// writer flag.
fn publish_pending(c: &Candidate) -> Option<usize> {
    let n = REGISTRY.count.load(Relaxed);
    if n == MAX_COPIES || known_base(c.base) {
        return None;
    }
    let mut copy = RuntimeCopy {
        imp: c.row.imp,
        base: c.base,
        lo: c.lo,
        hi: c.hi,
        path: [0; PATH_LEN],
        path_len: c.path.len(),
        state: AtomicU8::new(PENDING),
        handle: AtomicUsize::new(0),
        get: AtomicUsize::new(0),
        set: AtomicUsize::new(0),
        budget_applied: AtomicBool::new(false),
        stats: Stats::new(),
        blas_config: AtomicU32::new(0),
        blas_current: AtomicU32::new(0),
        blas_parallel: AtomicU32::new(0),
        parallel_fn: AtomicUsize::new(0),
        active_level_fn: AtomicUsize::new(0),
        max_active_fn: AtomicUsize::new(0),
        pause_fn: AtomicUsize::new(0),
        blas_lock: Flag::new(),
    };
    copy.path[..c.path.len()].copy_from_slice(c.path.as_bytes());
    // SAFETY: slot `n` is unpublished and we hold the writer flag.
    unsafe { (*REGISTRY.slots[n].get()).write(copy) };
    REGISTRY.count.store(n + 1, Release);
    Some(n)
}

/// Confirms pending copies by their symbols (dlopen NOLOAD + dlsym). Only
/// where the loader's lock may be taken.
pub fn confirm_pending() {
    if !all_slots().any(|(_, c)| c.state.load(Acquire) == PENDING) {
        return;
    }
    let Some(_writer) = REGISTRY.writer.try_take() else {
        return;
    };
    for (i, c) in all_slots() {
        if c.state.load(Acquire) == PENDING {
            confirm(i, c);
        }
    }
}

/// Confirms one pending copy by symbols and resolves its functions. Caller
/// holds the writer flag.
fn confirm(index: usize, c: &RuntimeCopy) {
    let row = rows()
        .find(|r| r.imp == c.imp)
        .expect("a copy's impl has a row");
    let mut p = StackBuf::<PATH_LEN>::new();
    p.push_bytes(c.path());
    let Some(cpath) = p.as_cstr() else {
        c.state.store(REJECTED, Release);
        return;
    };
    // SAFETY: NOLOAD never loads or initialises anything; it returns a handle
    // to an object already mapped (or NULL), which we keep to pin the copy.
    let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if handle.is_null() {
        c.state.store(REJECTED, Release);
        return;
    }
    let base = c.base;
    let sym = |names: &[&CStr]| -> usize {
        names
            .iter()
            // SAFETY: dlsym on a valid handle with a NUL-terminated name.
            .map(|s| unsafe { libc::dlsym(handle, s.as_ptr()) } as usize)
            .find(|p| *p != 0 && owner_base(*p) == Some(base))
            .unwrap_or(0)
    };
    if sym(row.confirm) == 0 {
        // SAFETY: dropping the reference we just took.
        unsafe { libc::dlclose(handle) };
        c.state.store(REJECTED, Release);
        return;
    }
    c.handle.store(handle as usize, Relaxed);
    c.get.store(sym(row.get), Release);
    c.set.store(sym(row.set), Release);
    c.parallel_fn.store(sym(row.model), Release);
    if row.imp.kind() == Kind::Openmp {
        c.active_level_fn
            .store(sym(&[c"omp_get_active_level"]), Release);
        c.max_active_fn
            .store(sym(&[c"omp_get_max_active_levels"]), Release);
        c.pause_fn.store(sym(&[c"omp_pause_resource_all"]), Release);
    }
    c.state.store(CONFIRMED, Release);
    info!(
        "runtime_found impl={} kind={} path={}",
        row.imp.name(),
        row.imp.kind().name(),
        Quoted(c.path())
    );
    crate::conflicts::check_new(index);
}

/// The file of the object containing `addr` (for error lines).
pub fn object_name(addr: usize) -> StackBuf<PATH_LEN> {
    let mut out = StackBuf::new();
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads loader tables; dli_fname is NUL-terminated.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null() {
        out.push_bytes(unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes());
    }
    out
}

/// The load base of the object containing `addr`.
pub fn owner_base(addr: usize) -> Option<usize> {
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads loader tables and fills `info`.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 {
        return None;
    }
    Some(info.dli_fbase as usize)
}

/// The registered copy whose segments contain `addr`, if any (for
/// attribution). Lock-free: no dladdr.
pub fn copy_containing(addr: usize) -> Option<usize> {
    copies()
        .find(|(_, c)| c.lo <= addr && addr < c.hi)
        .map(|(i, _)| i)
}

/// Lowers a copy's thread count to the budget if it is above it. Only call
/// where calling into the runtime is safe: never from `pthread_create` (the
/// runtime may be inside its own initialisation, holding its own locks).
pub fn apply_budget(copy: &RuntimeCopy, budget: u32, why: &str) {
    if !copy.confirmed() || copy.budget_applied.swap(true, AcqRel) {
        return;
    }
    if let Some(cur) = copy.get_threads() {
        if cur > i64::from(budget) {
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
}

// ---------------------------------------------------------------------------
// Forwarding: which real function a caller would have bound to.
// ---------------------------------------------------------------------------

/// Where a hooked call goes: the real function and the copy that defines it.
#[derive(Clone, Copy)]
pub struct Target {
    pub real: usize,
    pub copy: Option<usize>,
}

const CACHE_SLOTS: usize = 4096;
const PROBES: usize = 16;
const BUSY: usize = usize::MAX;

struct CacheSlot {
    key: AtomicUsize,
    real: AtomicUsize,
    copy: AtomicUsize,
}

/// (call site, hook) -> target. Call sites are few and fixed (one per
/// `#pragma omp parallel` or setter call in the binary), so a small open-addressed
/// table of atomics keeps the hot path at one hash and one load. A full table
/// only costs speed: the slow path is always correct.
static CACHE: [CacheSlot; CACHE_SLOTS] = [const {
    CacheSlot {
        key: AtomicUsize::new(0),
        real: AtomicUsize::new(0),
        copy: AtomicUsize::new(0),
    }
}; CACHE_SLOTS];

fn cache_key(ret: usize, hook: u8) -> usize {
    // User-space addresses fit in 48 bits; the hook id takes the top byte.
    (ret & 0x0000_ffff_ffff_ffff) | (usize::from(hook) << 56) | (1 << 55)
}

/// The key of a caller object's answer for one hook: its lowest address
/// with bit 54 set, so it never equals a call-site key.
fn object_key(obj_lo: usize, hook: u8) -> usize {
    cache_key(obj_lo, hook) | (1 << 54)
}

fn slot_of(key: usize) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % CACHE_SLOTS
}

fn cache_get(key: usize) -> Option<Target> {
    let start = slot_of(key);
    for i in 0..PROBES {
        let s = &CACHE[(start + i) % CACHE_SLOTS];
        let k = s.key.load(Acquire);
        if k == key {
            let copy = s.copy.load(Relaxed);
            return Some(Target {
                real: s.real.load(Relaxed),
                copy: copy.checked_sub(1),
            });
        }
        if k == 0 {
            break;
        }
    }
    None
}

fn cache_put(key: usize, target: Target) {
    let start = slot_of(key);
    for i in 0..PROBES {
        let s = &CACHE[(start + i) % CACHE_SLOTS];
        if s.key.compare_exchange(0, BUSY, Acquire, Relaxed).is_ok() {
            s.real.store(target.real, Relaxed);
            s.copy.store(target.copy.map_or(0, |c| c + 1), Relaxed);
            s.key.store(key, Release);
            return;
        }
    }
}

/// The target for a call of hook `hook` (exported as `name`) whose return
/// address is `ret`. The answer is decided once per caller object (every
/// call site of one object goes to the same copy, as the loader bound them
/// all to one) and then cached per call site for the hot path.
pub fn resolve(ret: usize, hook: u8, name: &CStr) -> Option<Target> {
    let key = cache_key(ret, hook);
    if let Some(t) = cache_get(key) {
        return Some(t);
    }
    let obj = binding::object_at(ret);
    if let Some(o) = obj {
        if let Some(t) = cache_get(object_key(o.lo, hook)) {
            // A new call site of a known object: the object keeps its answer
            // (all its call sites go to one copy), but a lazily bound object
            // may have split its bindings since: look again, to warn.
            check_split(&o, name);
            cache_put(key, t);
            return Some(t);
        }
    }
    let (target, cacheable) = resolve_slow(ret, obj, name)?;
    if cacheable {
        if let Some(o) = obj {
            cache_put(object_key(o.lo, hook), target);
        }
        cache_put(key, target);
    }
    Some(target)
}

fn our_base() -> usize {
    static BASE: AtomicUsize = AtomicUsize::new(0);
    let b = BASE.load(Relaxed);
    if b != 0 {
        return b;
    }
    let b = owner_base(our_base as *const () as usize).unwrap_or(1);
    BASE.store(b, Relaxed);
    b
}

/// Resolves as the loader bound the caller: first from the caller object's
/// own resolved GOT entries (see `binding`); for an object with no resolved
/// binding into a copy that defines `name` (lazy binding, or it imports
/// nothing else from the runtime), as the loader would resolve it now: the
/// global scope first (the next definition
/// after the preload: the program's libraries, other preloads, RTLD_GLOBAL
/// objects), then the caller's own scope (its object and its dependencies,
/// where a privately loaded RTLD_LOCAL copy lives, as in Python extensions).
/// Returns the target and whether it may be cached.
fn resolve_slow(ret: usize, obj: Option<binding::Object>, name: &CStr) -> Option<(Target, bool)> {
    refresh();
    if let Some(t) = obj.and_then(|o| bound_target(&o, name)) {
        return Some((t, true));
    }
    // SAFETY: RTLD_NEXT lookup of a NUL-terminated name.
    let mut real = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if real == 0 && ret != 0 {
        // The caller object stays loaded: it is executing this call.
        real = dlsym_in(object_name(ret).as_cstr(), name);
    }
    if real == 0 || owner_base(real) == Some(our_base()) {
        // The caller holds a pointer to our hook that another object took
        // (scipy's cython_blas hands its BLAS pointers to scikit-learn through
        // capsules): find the definition by name among the loaded objects.
        real = search_loaded(name);
    }
    if real == 0 {
        debug!(
            "unresolved symbol={} caller={:#x}",
            Quoted(name.to_bytes()),
            ret
        );
        return None;
    }
    let base = owner_base(real);
    let copy = base.and_then(|b| index_of_base(b).or_else(|| register_owner(b)));
    // A runtime we could not register yet (another thread was registering) is
    // not cached as "no copy": fork protection and stats need the copy.
    let cacheable = copy.is_some() || row_for_path(object_name(real).as_bytes()).is_none();
    Some((Target { real, copy }, cacheable))
}

/// The copy the caller object's resolved bindings point into that defines
/// `name`. When the object's bindings are split across two copies that both
/// define it (possible with lazy binding, even without the shim), the copy
/// with the most bindings wins and one warning names the object.
fn bound_target(obj: &binding::Object, name: &CStr) -> Option<Target> {
    let hits = binding::evidence(obj);
    let mut best: Option<(usize, u32, usize)> = None;
    let mut defining = 0;
    for (i, c) in copies() {
        if hits[i] == 0 || !c.confirmed() {
            continue;
        }
        let p = c.lookup(name);
        if p == 0 {
            continue;
        }
        defining += 1;
        if best.is_none_or(|(_, h, _)| hits[i] > h) {
            best = Some((i, hits[i], p));
        }
    }
    if defining > 1 {
        warn_split(obj, name);
    }
    best.map(|(i, _, real)| Target {
        real,
        copy: Some(i),
    })
}

/// Warns if `obj`'s bindings are now split across two copies defining `name`.
fn check_split(obj: &binding::Object, name: &CStr) {
    let hits = binding::evidence(obj);
    let defining = copies()
        .filter(|(i, c)| hits[*i] > 0 && c.confirmed() && c.lookup(name) != 0)
        .count();
    if defining > 1 {
        warn_split(obj, name);
    }
}

/// One warning per caller object whose bindings into a runtime are split.
fn warn_split(obj: &binding::Object, name: &CStr) {
    static WARNED: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
    for w in &WARNED {
        match w.compare_exchange(0, obj.lo, Relaxed, Relaxed) {
            Ok(_) => break,
            Err(v) if v == obj.lo => return,
            Err(_) => {}
        }
    }
    let path = object_name(obj.lo);
    log::warn!(
        "split_binding object={} symbol={} advice=\"this object's calls into one OpenMP/BLAS runtime are bound to two loaded copies (lazy binding after another copy was loaded RTLD_GLOBAL); its regions may compute wrong results with or without parbudget; load the runtime copies RTLD_LOCAL or import this library first\"",
        Quoted(path.as_bytes()),
        Quoted(name.to_bytes())
    );
    crate::report::add_warning_fmt(
        "split_binding",
        format_args!(
            "{} is bound to two copies of one runtime ({})",
            Quoted(path.as_bytes()),
            Quoted(name.to_bytes())
        ),
    );
}

/// `dlsym(name)` in the scope of the loaded object at `path` (0 if none).
/// The NOLOAD reference is dropped at once.
fn dlsym_in(path: Option<&CStr>, name: &CStr) -> usize {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return 0;
    };
    // SAFETY: NOLOAD maps nothing new; the handle is closed right away.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if h.is_null() {
        return 0;
    }
    // SAFETY: valid handle and name; then our reference is released.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) } as usize;
    unsafe { libc::dlclose(h) };
    p
}

/// A definition of `name` in any loaded object but ours: the registered
/// runtime copies first, then every object in load order. A slow path that
/// runs once per call site, only when the caller's scope has no definition.
fn search_loaded(name: &CStr) -> usize {
    let ours = our_base();
    for (_, c) in copies() {
        let h = c.handle.load(Acquire);
        if h != 0 {
            // SAFETY: a pinned handle and a NUL-terminated name.
            let p = unsafe { libc::dlsym(h as *mut c_void, name.as_ptr()) } as usize;
            if p != 0 && owner_base(p) == Some(c.base) {
                return p;
            }
        }
    }
    /// Paths of the objects after the first `skip` named ones, 16 at a time:
    /// collected inside the callback, looked up outside it (dlopen must not
    /// run while the loader's list lock is held).
    struct Batch {
        paths: [StackBuf<PATH_LEN>; 16],
        n: usize,
        skip: usize,
        ours: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid info; `data` is our Batch.
        let (info, b) = unsafe { (&*info, &mut *(data as *mut Batch)) };
        if info.dlpi_name.is_null() || info.dlpi_addr as usize == b.ours {
            return 0;
        }
        // SAFETY: a NUL-terminated loader string.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
        if !name.contains(&b'/') {
            return 0;
        }
        if b.skip > 0 {
            b.skip -= 1;
            return 0;
        }
        b.paths[b.n].push_bytes(name);
        b.n += 1;
        i32::from(b.n == b.paths.len()) // full: stop
    }
    let mut done = 0;
    loop {
        let mut b = Batch {
            paths: [const { StackBuf::new() }; 16],
            n: 0,
            skip: done,
            ours,
        };
        // SAFETY: the callback only copies names into `b`.
        unsafe { libc::dl_iterate_phdr(Some(each), (&mut b as *mut Batch).cast()) };
        for p in b.paths.iter_mut().take(b.n) {
            let sym = dlsym_in(p.as_cstr(), name);
            if sym != 0 && owner_base(sym) != Some(ours) {
                return sym;
            }
        }
        if b.n < b.paths.len() {
            return 0;
        }
        done += b.n;
    }
}

/// Registers the object loaded at `base` (a copy the last scan did not see,
/// e.g. loaded a moment ago). Safe contexts only.
fn register_owner(base: usize) -> Option<usize> {
    REGISTRY.seen_adds.store(0, Release); // force a rescan
    let mut spins = 0;
    loop {
        scan();
        confirm_pending();
        if let Some(i) = index_of_base(base) {
            if all_slots().nth(i).is_some_and(|(_, c)| c.confirmed()) {
                return Some(i);
            }
        }
        spins += 1;
        if spins > 100 {
            return None; // another thread holds the writer flag; not cached
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_pick_rows() {
        let imp = |p: &str| row_for_path(p.as_bytes()).map(|r| r.imp);
        assert_eq!(
            imp("/usr/lib/x86_64-linux-gnu/libgomp.so.1"),
            Some(Impl::Libgomp)
        );
        assert_eq!(
            imp("/v/scikit_learn.libs/libgomp-a34b3233.so.1.0.0"),
            Some(Impl::Libgomp)
        );
        assert_eq!(imp("/usr/lib/llvm-14/lib/libomp.so.5"), Some(Impl::Libomp));
        assert_eq!(imp("/v/lib/libiomp5.so"), Some(Impl::Libiomp));
        assert_eq!(
            imp("/v/numpy.libs/libscipy_openblas64_-ff651d7f.so"),
            Some(Impl::Openblas)
        );
        assert_eq!(
            imp("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"),
            Some(Impl::Openblas)
        );
        assert_eq!(imp("/opt/intel/lib/libmkl_rt.so.2"), Some(Impl::Mkl));
        assert_eq!(imp("/usr/lib/libblis.so.4"), Some(Impl::Blis));
        assert_eq!(imp("/usr/lib/libflexiblas.so.3"), Some(Impl::Flexiblas));
        assert_eq!(imp("/usr/lib/libgompfoo/libc.so.6"), None);
        assert_eq!(imp("/usr/lib/libompressor.so"), Some(Impl::Libomp)); // confirmed later by symbols
    }

    #[test]
    fn cache_keys_separate_hooks_at_one_call_site() {
        // ctypes calls every foreign function from one call instruction.
        assert_ne!(
            cache_key(0x7f00_1234_5678, 1),
            cache_key(0x7f00_1234_5678, 2)
        );
        assert_ne!(cache_key(0x7f00_1234_5678, 0), 0);
    }
}
