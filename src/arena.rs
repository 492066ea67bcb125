//! The shim's own heap: every allocation of the shim's Rust code (and the
//! small box `pthread_create` hands to a new thread) comes from a private
//! arena in the shim's zero-filled data, never from the program's `malloc`.
//!
//! Why: the program's heap must be laid out as it would be without the shim.
//! The shim runs before `main` and at the program's first region (init, the
//! ledger's attach, libgomp's first worker). Each byte it took from `malloc`
//! then moved every later block of the program, libgomp's team and barrier
//! among them, onto other cache lines. That is a change to the program's
//! speed that has nothing to do with the budget, and it was a large part of
//! the shim's cost on the tiny-region row (2% to 6% of the row, in
//! interleaved runs; README, "Benchmarks").
//!
//! How: a bump pointer over `ARENA_BYTES` of static memory (untouched pages
//! cost nothing), taken with one compare-and-swap, so it is lock-free: safe
//! before init, inside hooks, in signal handlers and in a forked child (which
//! inherits its own copy). Blocks are not reused: the shim allocates at start
//! and when libraries are loaded, a bounded amount. When the arena is used
//! up, allocations go to the C allocator as before (a process that loads
//! thousands of libraries or starts tens of thousands of threads only loses
//! the layout guarantee for what comes after). Freeing a block from the
//! arena does nothing; freeing one from the C allocator calls `free`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The arena's size: the shim's start takes a few KiB, each library loaded
/// later a few hundred bytes, each thread started 24.
const ARENA_BYTES: usize = 1 << 20;

#[repr(C, align(4096))]
struct Bytes(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: the bytes are only reached through blocks handed out by `take`,
// whose ranges never overlap (one atomic bump pointer), so no two threads
// share a byte unless the program shares the block itself.
unsafe impl Sync for Bytes {}

static BYTES: Bytes = Bytes(UnsafeCell::new([0; ARENA_BYTES]));
/// Bytes of the arena handed out so far.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Where a block of `size` bytes aligned to `align` goes in an arena at
/// address `base` of `len` bytes with `next` taken: its offset and the new
/// `next`, or None when it does not fit. Pure.
pub(crate) fn fit(
    base: usize,
    len: usize,
    next: usize,
    size: usize,
    align: usize,
) -> Option<(usize, usize)> {
    let start = base.checked_add(next)?.checked_next_multiple_of(align)? - base;
    let end = start.checked_add(size)?;
    (end <= len).then_some((start, end))
}

/// A block of the arena, or null when it is used up.
fn take(layout: Layout) -> *mut u8 {
    let base = BYTES.0.get().cast::<u8>();
    let mut next = NEXT.load(Relaxed);
    loop {
        let Some((start, end)) = fit(
            base as usize,
            ARENA_BYTES,
            next,
            layout.size(),
            layout.align(),
        ) else {
            return core::ptr::null_mut();
        };
        // Relaxed: the bump pointer only splits the range; the blocks' bytes
        // reach other threads through whatever the program uses to share the
        // pointer.
        match NEXT.compare_exchange_weak(next, end, Relaxed, Relaxed) {
            // SAFETY: start + size <= ARENA_BYTES, so the block is inside BYTES.
            Ok(_) => return unsafe { base.add(start) },
            Err(now) => next = now,
        }
    }
}

fn in_arena(p: *mut u8) -> bool {
    let base = BYTES.0.get() as usize;
    (base..base + ARENA_BYTES).contains(&(p as usize))
}

/// The shim's global allocator (see the module's doc).
pub struct Arena;

// SAFETY: `alloc` returns blocks of at least the layout's size and alignment,
// disjoint from every other live block (the arena's bump pointer, or the C
// allocator's own guarantee); `dealloc` frees only what the C allocator gave.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = take(layout);
        if !p.is_null() {
            return p;
        }
        if layout.align() <= 16 {
            // SAFETY: plain C allocation; glibc's blocks are 16-byte aligned.
            return unsafe { libc::malloc(layout.size()) }.cast();
        }
        let mut p: *mut libc::c_void = core::ptr::null_mut();
        // SAFETY: the alignment is a power of two and a multiple of the
        // pointer size (it is above 16).
        match unsafe { libc::posix_memalign(&mut p, layout.align(), layout.size()) } {
            0 => p.cast(),
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        if !in_arena(p) {
            // SAFETY: not from the arena, so from malloc or posix_memalign.
            unsafe { libc::free(p.cast()) };
        }
    }
}

// Not in unit-test builds: the test harness would use up the arena that
// the allocator's own test checks.
#[cfg_attr(not(test), global_allocator)]
static ALLOCATOR: Arena = Arena;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_taken_in_order() {
        // An arena at 4096 with 100 bytes: 10 bytes, then 8 aligned to 16.
        assert_eq!(fit(4096, 100, 0, 10, 1), Some((0, 10)));
        assert_eq!(fit(4096, 100, 10, 8, 16), Some((16, 24)));
        // A base that is not aligned: the block starts at the next multiple.
        assert_eq!(fit(4100, 100, 0, 8, 16), Some((12, 20)));
    }

    #[test]
    fn a_block_that_does_not_fit_is_refused() {
        assert_eq!(fit(4096, 100, 90, 10, 1), Some((90, 100)));
        assert_eq!(fit(4096, 100, 90, 11, 1), None);
        assert_eq!(fit(4096, 100, 0, usize::MAX, 1), None);
        assert_eq!(fit(usize::MAX - 4, 100, 0, 1, 16), None);
    }

    #[test]
    fn the_allocator_serves_from_the_arena_then_from_c() {
        let a = Arena;
        let l = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: a non-zero layout; each block is written within its size
        // and freed once with its layout.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null() && in_arena(p));
            assert_eq!(p as usize % 8, 0);
            p.write_bytes(0xab, 24);
            a.dealloc(p, l);
            // Larger than the whole arena: the C allocator, freed by free.
            let big = Layout::from_size_align(ARENA_BYTES + 1, 64).unwrap();
            let q = a.alloc(big);
            assert!(!q.is_null() && !in_arena(q));
            assert_eq!(q as usize % 64, 0);
            q.write_bytes(1, ARENA_BYTES + 1);
            a.dealloc(q, big);
        }
    }
}
