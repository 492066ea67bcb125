//! LLVM/Intel regions (clang-compiled code on libomp or libiomp5): the
//! `num_threads` clause arrives in `__kmpc_push_num_threads`, the region in
//! the variadic `__kmpc_fork_call`. Sized by the same team rule as the GOMP
//! entry points (`regions::entitlement`); `__kmpc_fork_call` has no
//! combined-loop form, so every region keeps what it is entitled to.

use super::grant::{self, Grant};
use super::regions::{Shape, entitlement, icv_of};
use super::table::Hook;
use super::{
    call, fenced, restore_args, restore_xmm, save_args, save_xmm, take_caller, trampoline,
};
use crate::runtime;
use core::cell::Cell;
use core::ffi::c_void;
use core::sync::atomic::Ordering::Relaxed;
use log::debug;

/// LLVM/Intel: a `num_threads` clause arrives here before `__kmpc_fork_call`.
/// Clamped to the budget (a static limit; the per-region ledger covers the
/// GOMP entry points).
unsafe extern "C-unwind" fn kmpc_push_num_threads(loc: *mut c_void, gtid: i32, n: i32) {
    let ret = take_caller();
    let settings = super::ensure();
    let t = super::resolve_or_abort(ret, Hook::__kmpc_push_num_threads);
    let budget = settings.map_or(i32::MAX, |s| s.cores().min(i32::MAX as u32) as i32);
    let n2 = fenced(n, || {
        if let Some(c) = t.copy.and_then(runtime::copy) {
            c.stats.note_request(n.max(0) as u32);
            if n > budget {
                c.stats.clamped.fetch_add(1, Relaxed);
                debug!(
                    "clamp symbol=\"__kmpc_push_num_threads\" requested={} granted={} impl={}",
                    n,
                    budget,
                    c.imp.name()
                );
            }
        }
        n.min(budget)
    });
    // The next __kmpc_fork_call of this thread sizes from this request.
    PENDING_PUSH.with(|p| p.set(n2.max(0) as u32));
    call!(t.real, fn(*mut c_void, i32, i32) -> (), loc, gtid, n2);
}
trampoline!(__kmpc_push_num_threads => kmpc_push_num_threads);

// ---------------------------------------------------------------------------
// LLVM/Intel regions: `__kmpc_fork_call(loc, argc, microtask, ...)`.
//
// Variadic, with pointer arguments possibly on the stack, so the trampoline
// cannot call the real function itself. It sizes the region (kmpc_pre, which
// pushes the team with the copy's own `__kmpc_push_num_threads`), replaces its
// return address with a landing pad and jumps to the real function with the
// stack exactly as the caller built it. When the region ends, the real
// function returns to the landing pad, which gives the grant back (kmpc_post)
// and jumps to the original return address. OpenMP forbids exceptions from
// escaping a region, so no unwinding ever crosses the replaced frame.
// ---------------------------------------------------------------------------

const KMPC_DEPTH: usize = 64;

thread_local! {
    /// The `num_threads` clause pushed by this thread for its next region.
    static PENDING_PUSH: Cell<u32> = const { Cell::new(0) };
    /// (original return address, grant) per open kmpc region.
    static KMPC_STACK: Cell<[(usize, Grant); KMPC_DEPTH]> =
        const { Cell::new([(0, Grant { extras: 0, counted: false, caller: false }); KMPC_DEPTH]) };
    static KMPC_DEPTH_NOW: Cell<usize> = const { Cell::new(0) };
}

/// What `kmpc_pre` tells the trampoline (returned in rax:rdx).
#[repr(C)]
struct KmpcGo {
    real: usize,
    /// 1: replace the return address with the landing pad; 0: plain jump
    /// (too deeply nested to track: the region runs unsized, never aborts).
    land: usize,
}

/// Before the real `__kmpc_fork_call`.
extern "C" fn kmpc_pre(ret: usize, loc: *mut c_void) -> KmpcGo {
    let settings = super::ensure();
    let t = super::resolve_or_abort(ret, Hook::__kmpc_fork_call);
    let pushed = PENDING_PUSH.with(|p| p.replace(0));
    let d = KMPC_DEPTH_NOW.with(|d| d.get());
    if d >= KMPC_DEPTH {
        // Recursive code nests inactive regions without bound: stop tracking
        // (no grant is taken, so nothing needs giving back).
        return KmpcGo {
            real: t.real,
            land: 0,
        };
    }
    let g = fenced(Grant::default(), || {
        let Some(s) = settings else {
            return Grant::default();
        };
        let Some((i, c)) = t.indexed_copy() else {
            return Grant::default();
        };
        let (Some(gtid_fn), Some(push_fn)) = (
            super::lookup(ret, Hook::__kmpc_global_thread_num),
            super::lookup(ret, Hook::__kmpc_push_num_threads),
        ) else {
            return Grant::default();
        };
        if c.nested_inactive() {
            return Grant::default();
        }
        let cap = s.cores();
        let (asked, exact) = entitlement(pushed, Shape::Plain, grant::promised(), || {
            icv_of(Some(c), cap)
        });
        let g = grant::take(Some((i, c)), asked, cap, exact);
        // SAFETY: both resolved from the caller's own copy by name, with the
        // kmpc ABI signatures: int(ident_t*), void(ident_t*, int, int).
        unsafe {
            let gtid =
                core::mem::transmute::<usize, extern "C" fn(*mut c_void) -> i32>(gtid_fn.real)(loc);
            core::mem::transmute::<usize, extern "C" fn(*mut c_void, i32, i32)>(push_fn.real)(
                loc,
                gtid,
                g.team() as i32,
            );
        }
        debug!(
            "grant symbol=\"__kmpc_fork_call\" impl={} asked={} team={} free={}",
            c.imp.name(),
            asked,
            g.team(),
            crate::ledger::free()
        );
        g
    });
    KMPC_STACK.with(|s| {
        let mut a = s.get();
        a[d] = (ret, g);
        s.set(a);
    });
    KMPC_DEPTH_NOW.with(|x| x.set(d + 1));
    KmpcGo {
        real: t.real,
        land: 1,
    }
}

/// After the real `__kmpc_fork_call` returned: gives the grant back and
/// returns the original return address.
extern "C" fn kmpc_post() -> usize {
    let d = KMPC_DEPTH_NOW.with(|d| d.get()).saturating_sub(1);
    KMPC_DEPTH_NOW.with(|x| x.set(d));
    let (ret, g) = KMPC_STACK.with(|s| s.get()[d]);
    g.give_back();
    ret
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __kmpc_fork_call() {
    core::arch::naked_asm!(
        // Save every argument register (7 pushes: rsp = 0 mod 16) and xmm0-7
        // (a variadic call may pass vector registers; al counts them).
        save_args!(),
        save_xmm!(),
        "mov rdi, [rsp + 184]", // return address
        "mov rsi, [rsp + 176]", // loc (the saved rdi)
        "call {pre}",
        "mov r11, rax",
        "mov r10, rdx",
        restore_xmm!(),
        restore_args!(),
        // The region returns to the landing pad below instead of the caller
        // (unless kmpc_pre said not to track this one).
        "test r10, r10",
        "jz 3f",
        "lea r10, [rip + 2f]",
        "mov [rsp], r10",
        "3:",
        "jmp r11",
        "2:",
        // Back from the region: rsp is the caller's (16-byte aligned).
        "call {post}",
        "jmp rax",
        pre = sym kmpc_pre,
        post = sym kmpc_post,
    );
}
