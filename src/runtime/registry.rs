//! The registry of loaded runtime copies, and their discovery.
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
//! Copies confirmed since the last look are kept in `unchecked` for the
//! conflict checks of a higher layer (`conflicts`), so this module never
//! calls upward.

use super::copy::{CONFIRMED, MAX_COPIES, PENDING, REJECTED, RuntimeCopy, Stats};
use super::kind::{Kind, Row};
use super::loader::PATH_LEN;
use super::loader::owner_base;
use super::table::{row_for_path, rows};
use crate::flag::Flag;
use crate::stackbuf::{Quoted, StackBuf};
use core::cell::UnsafeCell;
use core::ffi::{CStr, c_int, c_void};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use log::info;

/// Copies confirmed and not yet looked at by the conflict checks (bits).
static UNCHECKED: AtomicU64 = AtomicU64::new(0);

/// Takes the copies confirmed since the last call (registry indices as bits).
/// Copies wait for their conflict check (one load: every hook asks).
#[inline]
pub fn unchecked_pending() -> bool {
    UNCHECKED.load(Relaxed) != 0
}

pub fn take_unchecked() -> u64 {
    if UNCHECKED.load(Relaxed) == 0 {
        return 0;
    }
    UNCHECKED.swap(0, AcqRel)
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

pub(super) fn all_slots() -> impl Iterator<Item = (usize, &'static RuntimeCopy)> {
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

pub(super) fn index_of_base(base: usize) -> Option<usize> {
    copies().find(|(_, c)| c.base == base).map(|(i, _)| i)
}

pub(super) fn known_base(base: usize) -> bool {
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
    if !unsafe { super::loader::walk(first, (&mut adds as *mut u64).cast()) } {
        // A fork is under way: report nothing new.
        return REGISTRY.seen_adds.load(Acquire);
    }
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

    // Each new copy is published from inside the callback (we hold the
    // writer flag; publishing only writes our own static registry), so the
    // scan keeps one candidate on the stack, not a batch: pthread_create
    // callers may run on small stacks.
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        _data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid info.
        let info = unsafe { &*info };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
        let base = info.dlpi_addr as usize;
        if let Some(row) = row_for_path(name)
            && !known_base(base)
        {
            let mut path = StackBuf::new();
            path.push_bytes(name);
            let (lo, hi) = load_range(info);
            if !path.truncated {
                publish_pending(&Candidate {
                    base,
                    lo,
                    hi,
                    path,
                    row,
                });
            }
        }
        0
    }
    // SAFETY: the callback only reads the info and writes our registry. No
    // dlopen inside it: the loader's list lock is held there. Skipped while
    // a fork is under way (the next scan sees the same objects).
    if !unsafe { super::loader::walk(each, core::ptr::null_mut()) } {
        REGISTRY.seen_adds.store(0, Release);
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
    // Every copy was registered from a row, so this always finds one; if not,
    // the copy is refused rather than the host taken down.
    let Some(row) = rows().find(|r| r.imp == c.imp) else {
        c.state.store(REJECTED, Release);
        return;
    };
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
        crate::next::real_dlclose(handle);
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
    if index < 64 {
        UNCHECKED.fetch_or(1 << index, AcqRel);
    }
}

/// The registered copy whose segments contain `addr`, if any (for
/// attribution). Lock-free: no dladdr.
pub fn copy_containing(addr: usize) -> Option<usize> {
    copies()
        .find(|(_, c)| c.lo <= addr && addr < c.hi)
        .map(|(i, _)| i)
}

/// Registers the object loaded at `base` (a copy the last scan did not see,
/// e.g. loaded a moment ago). Safe contexts only.
pub(super) fn register_owner(base: usize) -> Option<usize> {
    REGISTRY.seen_adds.store(0, Release); // force a rescan
    let mut spins = 0;
    loop {
        scan();
        confirm_pending();
        if let Some(i) = index_of_base(base)
            && all_slots().nth(i).is_some_and(|(_, c)| c.confirmed())
        {
            return Some(i);
        }
        spins += 1;
        if spins > 100 {
            return None; // another thread holds the writer flag; not cached
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
}
