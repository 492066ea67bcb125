//! OpenMP region entry points: every team-starting entry of the GOMP ABI
//! (libgomp, and libomp/libiomp5 for gcc-compiled code) and LLVM/Intel's
//! `__kmpc_push_num_threads`. The team is sized here, at each region, from the
//! ledger: the caller plus the extra workers free right now.

use super::grant::{self, GiveBack, Grant};
use super::{
    call, cname, fenced, fork, resolve_or_abort, restore_args, restore_xmm, save_args, save_xmm,
    take_caller, trampoline,
};
use crate::runtime::{self, Impl};
use crate::stackbuf::Quoted;
use core::cell::Cell;
use core::ffi::{CStr, c_long, c_uint, c_void};
use core::sync::atomic::Ordering::Relaxed;
use log::debug;

thread_local! {
    /// Grants of `GOMP_*_start` regions, given back by `GOMP_parallel_end`.
    static START_STACK: Cell<[Grant; 16]> = const { Cell::new([Grant { extras: 0, counted: false, caller: false }; 16]) };
    static START_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// A sized GOMP region: where to forward, with how many threads, and its grant.
#[derive(Clone, Copy)]
struct Entry {
    real: usize,
    team: c_uint,
    grant: Grant,
}

type Body = extern "C-unwind" fn(*mut c_void);

/// What a region's entry point tells about its body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The body may count on the team it asked for (xgboost splits its
    /// blocks by the requested n and indexes them by thread number;
    /// scikit-learn's pairwise reductions initialise per-thread state inside
    /// the region): it gets exactly what it is entitled to.
    Plain,
    /// A combined parallel loop with a dynamic or guided schedule, or
    /// parallel sections: the runtime hands iterations (sections) to whichever
    /// thread comes, and any thread may get none even in a full team, so a
    /// correct body cannot count on the team size. It may run smaller.
    Adaptive,
}

/// How many threads a region asks for and whether it must get them all.
/// `requested` is its clause (0: none); `icv` the copy's own nthreads ICV.
pub fn entitlement(requested: u32, shape: Shape, promised: Option<u32>, icv: u32) -> (u32, bool) {
    match requested {
        0 => match promised {
            // The thread asked omp_get_max_threads() and may have sized its
            // work by the answer: a region without a clause gets exactly that.
            Some(p) => (p, shape == Shape::Plain),
            // Never told a number: nothing to count on; what fits.
            None => (icv.max(1), false),
        },
        n => (n, shape == Shape::Plain),
    }
}

fn icv_of(copy: Option<&runtime::RuntimeCopy>, budget: u32) -> u32 {
    copy.and_then(|c| c.get_threads())
        .map_or(budget, |n| n.clamp(1, i64::from(u32::MAX)) as u32)
}

/// In a child forked from a thread whose libgomp pool could not be freed
/// first, a region on that thread can only run as a team of one. That is
/// safe only for a body that never counted on more.
fn serial_is_safe(requested: u32, shape: Shape) -> bool {
    shape == Shape::Adaptive
        || requested == 1
        || (requested == 0 && grant::promised().unwrap_or(1) <= 1)
}

/// Sizes a region that asked for `requested` threads (0: the runtime's default).
fn enter(ret: usize, hook: u8, name: &'static CStr, requested: c_uint, shape: Shape) -> Entry {
    let settings = crate::init::ensure();
    let target = resolve_or_abort(ret, hook, name);
    let passthrough = Entry {
        real: target.real,
        team: requested,
        grant: Grant::default(),
    };
    fenced(passthrough, || {
        let copy = target.copy.and_then(|i| runtime::copy(i).map(|c| (i, c)));
        if let Some((i, c)) = copy {
            if fork::serial_here(i) {
                fork::child_region(c, name, serial_is_safe(requested, shape), requested);
                c.stats.regions.fetch_add(1, Relaxed);
                c.stats.team_sum.fetch_add(1, Relaxed);
                return Entry {
                    team: 1,
                    ..passthrough
                };
            }
            if c.nested_inactive() {
                // A region inside a team's body: the runtime runs it with one
                // thread, which is already counted as a worker of that team.
                return passthrough;
            }
        }
        let Some(s) = settings else {
            return passthrough;
        };
        let cap = s.budget.cores;
        let (asked, exact) = entitlement(
            requested,
            shape,
            grant::promised(),
            icv_of(copy.map(|(_, c)| c), cap),
        );
        let g = grant::take(copy.map(|(_, c)| c), asked, cap, exact);
        if let Some((i, c)) = copy {
            if g.team() > 1 && c.imp == Impl::Libgomp {
                fork::mark_master(i);
            }
        }
        debug!(
            "grant symbol={} impl={} asked={} exact={} team={} free={}",
            Quoted(name.to_bytes()),
            copy.map_or("unknown", |(_, c)| c.imp.name()),
            asked,
            exact,
            g.team(),
            crate::ledger::free()
        );
        Entry {
            real: target.real,
            team: g.team(),
            grant: g,
        }
    })
}

/// Remembers a `_start` region's grant until its `GOMP_parallel_end`.
fn push_start(g: Grant) {
    let d = START_DEPTH.with(|d| d.get());
    if d < 16 {
        START_STACK.with(|s| {
            let mut a = s.get();
            a[d] = g;
            s.set(a);
        });
        START_DEPTH.with(|x| x.set(d + 1));
    } else {
        // Deeper than we track: give the grant back now rather than leak it.
        g.give_back();
    }
}

fn pop_start() -> Grant {
    let d = START_DEPTH.with(|d| d.get());
    START_DEPTH.with(|x| x.set(d.saturating_sub(1)));
    if d == 0 || d > 16 {
        Grant::default()
    } else {
        START_STACK.with(|s| s.get()[d - 1])
    }
}

/// A region that runs to completion inside the call: size, forward, give back.
macro_rules! region {
    ($id:expr, $shape:ident, $name:ident, $body:ident, ($($a:ident: $t:ty),*), $ret:ty) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) -> $ret {
            let e = enter(take_caller(), $id, cname(concat!(stringify!($name), "\0")), num_threads, Shape::$shape);
            let _give_back = GiveBack(e.grant);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> $ret, f, data, e.team $(, $a)*)
        }
        trampoline!($name => $body);
    };
}

/// A `_start` region: the team lives until `GOMP_parallel_end`.
macro_rules! region_start {
    ($id:expr, $shape:ident, $name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) {
            let e = enter(take_caller(), $id, cname(concat!(stringify!($name), "\0")), num_threads, Shape::$shape);
            push_start(e.grant);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> (), f, data, e.team $(, $a)*);
        }
        trampoline!($name => $body);
    };
}

// Hook ids 40..=79 are region entry points.
region!(40, Plain, GOMP_parallel, gomp_parallel, (flags: c_uint), ());
region!(41, Plain, GOMP_parallel_reductions, gomp_parallel_reductions, (flags: c_uint), c_uint);
region!(42, Adaptive, GOMP_parallel_sections, gomp_parallel_sections, (count: c_uint, flags: c_uint), ());
region!(43, Plain, GOMP_parallel_loop_static, gomp_parallel_loop_static, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(44, Adaptive, GOMP_parallel_loop_dynamic, gomp_parallel_loop_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(45, Adaptive, GOMP_parallel_loop_guided, gomp_parallel_loop_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(46, Adaptive, GOMP_parallel_loop_nonmonotonic_dynamic, gomp_parallel_loop_nonmonotonic_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(47, Adaptive, GOMP_parallel_loop_nonmonotonic_guided, gomp_parallel_loop_nonmonotonic_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(48, Plain, GOMP_parallel_loop_runtime, gomp_parallel_loop_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(49, Plain, GOMP_parallel_loop_nonmonotonic_runtime, gomp_parallel_loop_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(50, Plain, GOMP_parallel_loop_maybe_nonmonotonic_runtime, gomp_parallel_loop_maybe_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region_start!(51, Plain, GOMP_parallel_start, gomp_parallel_start, ());
region_start!(52, Adaptive, GOMP_parallel_sections_start, gomp_parallel_sections_start, (count: c_uint));
region_start!(53, Plain, GOMP_parallel_loop_static_start, gomp_parallel_loop_static_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(54, Adaptive, GOMP_parallel_loop_dynamic_start, gomp_parallel_loop_dynamic_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(55, Adaptive, GOMP_parallel_loop_guided_start, gomp_parallel_loop_guided_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(56, Plain, GOMP_parallel_loop_runtime_start, gomp_parallel_loop_runtime_start, (s: c_long, e: c_long, i: c_long));

unsafe extern "C-unwind" fn gomp_parallel_end() {
    let t = resolve_or_abort(take_caller(), 57, c"GOMP_parallel_end");
    call!(t.real, fn() -> (),);
    pop_start().give_back();
}
trampoline!(GOMP_parallel_end => gomp_parallel_end);

/// Host teams: libgomp runs the teams one after another on the calling thread
/// (no threads of their own); libomp forks them. Only the thread limit of the
/// regions inside is bounded: by the budget, or to 1 in a child that must run
/// serially. The number of teams is the program's business.
unsafe extern "C-unwind" fn gomp_teams_reg(
    f: Body,
    data: *mut c_void,
    num_teams: c_uint,
    thread_limit: c_uint,
    flags: c_uint,
) {
    let (real, l) = limit(take_caller(), 58, c"GOMP_teams_reg", thread_limit);
    call!(
        real,
        fn(Body, *mut c_void, c_uint, c_uint, c_uint) -> (),
        f,
        data,
        num_teams,
        l,
        flags
    );
}
trampoline!(GOMP_teams_reg => gomp_teams_reg);

/// `GOMP_teams`/`GOMP_teams4` set the thread limit of the teams region.
fn limit(ret: usize, hook: u8, name: &'static CStr, thread_limit: c_uint) -> (usize, c_uint) {
    let settings = crate::init::ensure();
    let t = resolve_or_abort(ret, hook, name);
    let serial = t.copy.is_some_and(fork::serial_here);
    let budget = settings.map_or(u32::MAX, |s| s.budget.cores);
    let l = if serial {
        1
    } else if thread_limit > budget {
        budget
    } else {
        thread_limit
    };
    (t.real, l)
}

unsafe extern "C-unwind" fn gomp_teams(num_teams: c_uint, thread_limit: c_uint) {
    let (real, l) = limit(take_caller(), 59, c"GOMP_teams", thread_limit);
    call!(real, fn(c_uint, c_uint) -> (), num_teams, l);
}
trampoline!(GOMP_teams => gomp_teams);

unsafe extern "C-unwind" fn gomp_teams4(
    low: c_uint,
    high: c_uint,
    thread_limit: c_uint,
    first: bool,
) -> bool {
    let (real, l) = limit(take_caller(), 60, c"GOMP_teams4", thread_limit);
    call!(
        real,
        fn(c_uint, c_uint, c_uint, bool) -> bool,
        low,
        high,
        l,
        first
    )
}
trampoline!(GOMP_teams4 => gomp_teams4);

/// LLVM/Intel: a `num_threads` clause arrives here before `__kmpc_fork_call`.
/// Clamped to the budget (a static limit; the per-region ledger covers the
/// GOMP entry points).
unsafe extern "C-unwind" fn kmpc_push_num_threads(loc: *mut c_void, gtid: i32, n: i32) {
    let ret = take_caller();
    let settings = crate::init::ensure();
    let t = resolve_or_abort(ret, 61, c"__kmpc_push_num_threads");
    let budget = settings.map_or(i32::MAX, |s| s.budget.cores.min(i32::MAX as u32) as i32);
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
    let settings = crate::init::ensure();
    let t = resolve_or_abort(ret, 62, c"__kmpc_fork_call");
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
        let Some(c) = t.copy.and_then(runtime::copy) else {
            return Grant::default();
        };
        let (Some(gtid_fn), Some(push_fn)) = (
            runtime::resolve(ret, 63, c"__kmpc_global_thread_num"),
            runtime::resolve(ret, 61, c"__kmpc_push_num_threads"),
        ) else {
            return Grant::default();
        };
        if c.nested_inactive() {
            return Grant::default();
        }
        let cap = s.budget.cores;
        let (asked, exact) = entitlement(
            pushed,
            Shape::Plain,
            grant::promised(),
            icv_of(Some(c), cap),
        );
        let g = grant::take(Some(c), asked, cap, exact);
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
