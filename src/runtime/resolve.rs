//! Forwarding: which real function a caller would have bound to.

use super::binding;
use super::loader::PATH_LEN;
use super::loader::{dlsym_in, object_name, owner_base};
use super::registry::{copies, index_of_base, refresh, register_owner};
use super::table::row_for_path;
use crate::stackbuf::{Quoted, StackBuf};
use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering::*};
use log::debug;

// ---------------------------------------------------------------------------
// Forwarding: which real function a caller would have bound to.
// ---------------------------------------------------------------------------

/// Where a hooked call goes: the real function and the copy that defines it.
#[derive(Clone, Copy)]
pub struct Target {
    pub real: usize,
    pub copy: Option<usize>,
}

impl Target {
    /// The registered copy the call goes to, with its registry index.
    #[inline]
    pub fn indexed_copy(self) -> Option<(usize, &'static super::RuntimeCopy)> {
        self.copy.and_then(|i| super::copy(i).map(|c| (i, c)))
    }
}

const CACHE_SLOTS: usize = 4096;
const PROBES: usize = 16;
const BUSY: usize = usize::MAX;

struct CacheSlot {
    key: AtomicUsize,
    real: AtomicUsize,
    copy: AtomicUsize,
    /// The unload generation the answer was made in (see `GENERATION`).
    generation: AtomicUsize,
}

/// Bumped by every `dlclose` (hooks::unload): an object loaded later at the
/// same address as an unloaded one is another object, so an answer made
/// before is stale. Cached answers carry their generation; a stale one is a
/// miss and is resolved again. One relaxed load on the hot path.
static GENERATION: AtomicUsize = AtomicUsize::new(0);

/// An object may have been unloaded: every cached answer becomes stale.
pub fn objects_unloaded() {
    GENERATION.fetch_add(1, Release);
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
        generation: AtomicUsize::new(0),
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

#[inline]
fn cache_get(key: usize) -> Option<Target> {
    let start = slot_of(key);
    let now = GENERATION.load(Acquire);
    for i in 0..PROBES {
        let s = &CACHE[(start + i) % CACHE_SLOTS];
        let k = s.key.load(Acquire);
        if k == key {
            // The generation is stored after the answer (Release), so an
            // answer read after a current generation is the current answer.
            if s.generation.load(Acquire) != now {
                return None;
            }
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
    let now = GENERATION.load(Acquire);
    // A stale answer under the same key is replaced in place (it would
    // shadow a new slot further along the probe chain); otherwise the first
    // empty slot is taken. A reader meeting BUSY treats it as a miss.
    for i in 0..PROBES {
        let s = &CACHE[(start + i) % CACHE_SLOTS];
        let k = s.key.load(Acquire);
        if k != key && k != 0 {
            continue;
        }
        if s.key.compare_exchange(k, BUSY, Acquire, Relaxed).is_ok() {
            s.real.store(target.real, Relaxed);
            s.copy.store(target.copy.map_or(0, |c| c + 1), Relaxed);
            s.generation.store(now, Release);
            s.key.store(key, Release);
            return;
        }
    }
}

/// The target for a call of hook `hook` (exported as `name`) whose return
/// address is `ret`. The answer is decided once per caller object (every
/// call site of one object goes to the same copy, as the loader bound them
/// all to one) and then cached per call site for the hot path.
#[inline]
pub fn resolve(ret: usize, hook: u8, name: &CStr) -> Option<Target> {
    let key = cache_key(ret, hook);
    if let Some(t) = cache_get(key) {
        return Some(t);
    }
    resolve_new(ret, hook, key, name)
}

/// A call site met for the first time (or since an unload).
#[cold]
#[inline(never)]
fn resolve_new(ret: usize, hook: u8, key: usize, name: &CStr) -> Option<Target> {
    let obj = binding::object_at(ret);
    if let Some(o) = obj
        && let Some(t) = cache_get(object_key(o.lo, hook))
    {
        // A new call site of a known object: the object keeps its answer
        // (all its call sites go to one copy), but a lazily bound object
        // may have split its bindings since: look again, to warn.
        check_split(&o, name);
        cache_put(key, t);
        return Some(t);
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
    if real == 0
        && let Some(o) = obj
    {
        // A caller running while its runtime is still being loaded (a
        // constructor inside dlopen): neither dlsym nor dlopen(RTLD_NOLOAD)
        // see that runtime yet, its image does.
        real = binding::bound_definition(&o, name.to_bytes(), our_base());
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
    crate::warnings::add_warning_fmt(
        "split_binding",
        format_args!(
            "{} is bound to two copies of one runtime ({})",
            Quoted(path.as_bytes()),
            Quoted(name.to_bytes())
        ),
    );
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
        if !unsafe { super::loader::walk(each, (&mut b as *mut Batch).cast()) } {
            return 0; // a fork is under way: not found this time, not cached
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
