//! OpenMP region entry points: every team-starting entry of the GOMP ABI
//! (libgomp, and libomp/libiomp5 for gcc-compiled code) and LLVM/Intel's
//! `__kmpc_push_num_threads`. The team is sized here, at each region, from the
//! ledger: the caller plus the extra workers free right now.

use super::{fenced, fork, take_caller, trampoline};
use crate::ledger;
use crate::runtime::{self, Impl};
use crate::stackbuf::Quoted;
use core::cell::Cell;
use core::ffi::{CStr, c_long, c_uint, c_void};
use core::sync::atomic::Ordering::Relaxed;
use log::{debug, error};

thread_local! {
    /// Threads this thread holds in the ledger (itself and extras, per region).
    static HELD: Cell<u32> = const { Cell::new(0) };
    /// Grants of `GOMP_*_start` regions, returned by `GOMP_parallel_end`.
    static START_STACK: Cell<[(u32, u8); 16]> = const { Cell::new([(0, 0); 16]) };
    static START_DEPTH: Cell<usize> = const { Cell::new(0) };
}

pub fn held_here() -> u32 {
    HELD.with(|h| h.get())
}

pub fn add_held(n: u32) {
    HELD.with(|h| h.set(h.get() + n));
}

pub fn release_held(n: u32) {
    HELD.with(|h| h.set(h.get().saturating_sub(n)));
}

/// A sized region: where to forward, with how many threads, and what to give
/// back at the end.
#[derive(Clone, Copy)]
struct Entry {
    real: usize,
    team: c_uint,
    extras: u32,
    /// Whether the ledger counted this region (leave must give it back).
    counted: bool,
    /// Whether the caller itself was counted (false when nested on a thread
    /// an enclosing region already counts).
    caller: bool,
}

/// Gives a region's grant back when dropped: at the normal end, and also when
/// the thread is cancelled or calls pthread_exit inside the region (a forced
/// unwind runs destructors).
struct Leave(Entry);

impl Drop for Leave {
    fn drop(&mut self) {
        leave(&self.0);
    }
}

type Body = extern "C-unwind" fn(*mut c_void);

/// Sizes a region that asked for `requested` threads (0: the runtime's default).
fn enter(ret: usize, hook: u8, name: &'static CStr, requested: c_uint) -> Entry {
    let settings = crate::init::ensure();
    let target = fenced(None, || runtime::resolve(ret, hook, name));
    let Some(target) = target else {
        // Without the real entry point the region cannot run at all.
        error!(
            "unresolved symbol={} caller={:#x}: no OpenMP runtime in scope",
            Quoted(name.to_bytes()),
            ret
        );
        // SAFETY: abort has no preconditions; there is nothing to forward to.
        unsafe { libc::abort() };
    };
    let passthrough = Entry {
        real: target.real,
        team: requested,
        extras: 0,
        counted: false,
        caller: false,
    };
    fenced(passthrough, || {
        let copy = target.copy.and_then(|i| runtime::copy(i).map(|c| (i, c)));
        if let Some((i, c)) = copy {
            if fork::serial_here(i) {
                fork::child_region(c, name);
                c.stats.regions.fetch_add(1, Relaxed);
                c.stats.team_sum.fetch_add(1, Relaxed);
                return Entry {
                    real: target.real,
                    team: 1,
                    extras: 0,
                    counted: false,
                    caller: false,
                };
            }
        }
        let Some(s) = settings else {
            return Entry {
                real: target.real,
                team: requested,
                extras: 0,
                counted: false,
                caller: false,
            };
        };
        let budget = s.budget.cores;
        let asked = match requested {
            0 => copy
                .and_then(|(_, c)| c.get_threads())
                .map_or(budget, |n| n.clamp(1, i64::from(u32::MAX)) as u32),
            n => n,
        };
        let want = asked.clamp(1, budget);
        let caller = HELD.with(|h| h.get()) == 0;
        let extras = ledger::enter(want - 1, caller);
        HELD.with(|h| h.set(h.get() + u32::from(caller) + extras));
        let team = ledger::team(extras);
        if let Some((i, c)) = copy {
            c.stats.note_request(asked);
            c.stats.regions.fetch_add(1, Relaxed);
            c.stats.team_sum.fetch_add(u64::from(team), Relaxed);
            if team < asked {
                c.stats.cut.fetch_add(1, Relaxed);
            }
            if team > 1 && c.imp == Impl::Libgomp {
                fork::mark_master(i);
            }
        }
        debug!(
            "grant symbol={} impl={} asked={} team={} free={}",
            Quoted(name.to_bytes()),
            copy.map_or("unknown", |(_, c)| c.imp.name()),
            asked,
            team,
            ledger::free()
        );
        Entry {
            real: target.real,
            team,
            extras,
            counted: true,
            caller,
        }
    })
}

/// Ends a region sized by `enter` (or passed through: `Entry::counted` false).
fn leave(e: &Entry) {
    if e.counted {
        HELD.with(|h| h.set(h.get().saturating_sub(u32::from(e.caller) + e.extras)));
        ledger::leave(e.extras, e.caller);
    }
}

/// Remembers a `_start` region's grant until its `GOMP_parallel_end`, as
/// (extras, flags: 1 counted, 2 caller counted).
fn push_start(e: Entry) {
    let code = (e.extras, u8::from(e.counted) | (u8::from(e.caller) << 1));
    let d = START_DEPTH.with(|d| d.get());
    if d < 16 {
        START_STACK.with(|s| {
            let mut a = s.get();
            a[d] = code;
            s.set(a);
        });
        START_DEPTH.with(|x| x.set(d + 1));
    } else {
        // Deeper than we track: give the grant back now rather than leak it.
        leave(&e);
    }
}

fn pop_start() -> Entry {
    let d = START_DEPTH.with(|d| d.get());
    let (extras, flags) = if d == 0 || d > 16 {
        (0, 0)
    } else {
        START_STACK.with(|s| s.get()[d - 1])
    };
    START_DEPTH.with(|x| x.set(d.saturating_sub(1)));
    Entry {
        real: 0,
        team: 0,
        extras,
        counted: flags & 1 != 0,
        caller: flags & 2 != 0,
    }
}

/// SAFETY (for every `call!` below): `real` was resolved by this very name in
/// the caller's own scope, so it has the GOMP ABI signature we declare.
macro_rules! call {
    ($real:expr, fn($($t:ty),*) -> $r:ty, $($a:expr),*) => {
        unsafe { core::mem::transmute::<usize, extern "C-unwind" fn($($t),*) -> $r>($real)($($a),*) }
    };
}

/// A region that runs to completion inside the call: size, forward, give back.
macro_rules! region {
    ($id:expr, $name:ident, $body:ident, ($($a:ident: $t:ty),*), $ret:ty) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) -> $ret {
            let e = enter(take_caller(), $id, cname(concat!(stringify!($name), "\0")), num_threads);
            let _give_back = Leave(e);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> $ret, f, data, e.team $(, $a)*)
        }
        trampoline!($name => $body);
    };
}

/// A `_start` region: the team lives until `GOMP_parallel_end`.
macro_rules! region_start {
    ($id:expr, $name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) {
            let e = enter(take_caller(), $id, cname(concat!(stringify!($name), "\0")), num_threads);
            push_start(e);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> (), f, data, e.team $(, $a)*);
        }
        trampoline!($name => $body);
    };
}

fn cname(s: &'static str) -> &'static CStr {
    CStr::from_bytes_with_nul(s.as_bytes()).unwrap_or(c"?")
}

// Hook ids 40..=79 are region entry points.
region!(40, GOMP_parallel, gomp_parallel, (flags: c_uint), ());
region!(41, GOMP_parallel_reductions, gomp_parallel_reductions, (flags: c_uint), c_uint);
region!(42, GOMP_parallel_sections, gomp_parallel_sections, (count: c_uint, flags: c_uint), ());
region!(43, GOMP_parallel_loop_static, gomp_parallel_loop_static, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(44, GOMP_parallel_loop_dynamic, gomp_parallel_loop_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(45, GOMP_parallel_loop_guided, gomp_parallel_loop_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(46, GOMP_parallel_loop_nonmonotonic_dynamic, gomp_parallel_loop_nonmonotonic_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(47, GOMP_parallel_loop_nonmonotonic_guided, gomp_parallel_loop_nonmonotonic_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(48, GOMP_parallel_loop_runtime, gomp_parallel_loop_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(49, GOMP_parallel_loop_nonmonotonic_runtime, gomp_parallel_loop_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(50, GOMP_parallel_loop_maybe_nonmonotonic_runtime, gomp_parallel_loop_maybe_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region_start!(51, GOMP_parallel_start, gomp_parallel_start, ());
region_start!(52, GOMP_parallel_sections_start, gomp_parallel_sections_start, (count: c_uint));
region_start!(53, GOMP_parallel_loop_static_start, gomp_parallel_loop_static_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(54, GOMP_parallel_loop_dynamic_start, gomp_parallel_loop_dynamic_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(55, GOMP_parallel_loop_guided_start, gomp_parallel_loop_guided_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(56, GOMP_parallel_loop_runtime_start, gomp_parallel_loop_runtime_start, (s: c_long, e: c_long, i: c_long));

unsafe extern "C-unwind" fn gomp_parallel_end() {
    let ret = take_caller();
    let target = fenced(None, || runtime::resolve(ret, 57, c"GOMP_parallel_end"));
    let Some(t) = target else {
        error!("unresolved symbol=\"GOMP_parallel_end\" caller={:#x}", ret);
        // SAFETY: nothing to forward to.
        unsafe { libc::abort() };
    };
    call!(t.real, fn() -> (),);
    leave(&pop_start());
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
    let Some(t) = fenced(None, || runtime::resolve(ret, hook, name)) else {
        error!(
            "unresolved symbol={} caller={:#x}",
            Quoted(name.to_bytes()),
            ret
        );
        // SAFETY: nothing to forward to.
        unsafe { libc::abort() };
    };
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
    let Some(t) = fenced(None, || {
        runtime::resolve(ret, 61, c"__kmpc_push_num_threads")
    }) else {
        error!(
            "unresolved symbol=\"__kmpc_push_num_threads\" caller={:#x}",
            ret
        );
        // SAFETY: nothing to forward to.
        unsafe { libc::abort() };
    };
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
    /// (original return address, extras + 1 or 0) per open kmpc region.
    static KMPC_STACK: Cell<[(usize, u32); KMPC_DEPTH]> = const { Cell::new([(0, 0); KMPC_DEPTH]) };
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
    let Some(t) = fenced(None, || runtime::resolve(ret, 62, c"__kmpc_fork_call")) else {
        error!("unresolved symbol=\"__kmpc_fork_call\" caller={:#x}", ret);
        // SAFETY: nothing to forward to.
        unsafe { libc::abort() };
    };
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
    let code = fenced(0, || {
        let Some(s) = settings else { return 0 };
        let Some(c) = t.copy.and_then(runtime::copy) else {
            return 0;
        };
        let asked = match pushed {
            0 => c
                .get_threads()
                .map_or(s.budget.cores, |n| n.clamp(1, i64::from(u32::MAX)) as u32),
            n => n,
        };
        let want = asked.clamp(1, s.budget.cores);
        let (Some(gtid_fn), Some(push_fn)) = (
            runtime::resolve(ret, 63, c"__kmpc_global_thread_num"),
            runtime::resolve(ret, 61, c"__kmpc_push_num_threads"),
        ) else {
            return 0;
        };
        let caller = HELD.with(|h| h.get()) == 0;
        let extras = ledger::enter(want - 1, caller);
        let team = ledger::team(extras);
        HELD.with(|h| h.set(h.get() + u32::from(caller) + extras));
        // SAFETY: both resolved from the caller's own copy by name, with the
        // kmpc ABI signatures: int(ident_t*), void(ident_t*, int, int).
        unsafe {
            let gtid =
                core::mem::transmute::<usize, extern "C" fn(*mut c_void) -> i32>(gtid_fn.real)(loc);
            core::mem::transmute::<usize, extern "C" fn(*mut c_void, i32, i32)>(push_fn.real)(
                loc,
                gtid,
                team as i32,
            );
        }
        c.stats.note_request(asked);
        c.stats.regions.fetch_add(1, Relaxed);
        c.stats.team_sum.fetch_add(u64::from(team), Relaxed);
        if team < asked {
            c.stats.cut.fetch_add(1, Relaxed);
        }
        debug!(
            "grant symbol=\"__kmpc_fork_call\" impl={} asked={} team={} free={}",
            c.imp.name(),
            asked,
            team,
            ledger::free()
        );
        (extras + 1) | if caller { 1 << 31 } else { 0 }
    });
    KMPC_STACK.with(|s| {
        let mut a = s.get();
        a[d] = (ret, code);
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
    let (ret, code) = KMPC_STACK.with(|s| s.get()[d]);
    if code > 0 {
        let caller = code & (1 << 31) != 0;
        let extras = (code & !(1 << 31)) - 1;
        leave(&Entry {
            real: 0,
            team: 0,
            extras,
            counted: true,
            caller,
        });
    }
    ret
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __kmpc_fork_call() {
    core::arch::naked_asm!(
        // Save every argument register (7 pushes: rsp = 0 mod 16) and xmm0-7
        // (a variadic call may pass vector registers; al counts them).
        "push rdi",
        "push rsi",
        "push rdx",
        "push rcx",
        "push r8",
        "push r9",
        "push rax",
        "sub rsp, 128",
        "movdqu [rsp + 0], xmm0",
        "movdqu [rsp + 16], xmm1",
        "movdqu [rsp + 32], xmm2",
        "movdqu [rsp + 48], xmm3",
        "movdqu [rsp + 64], xmm4",
        "movdqu [rsp + 80], xmm5",
        "movdqu [rsp + 96], xmm6",
        "movdqu [rsp + 112], xmm7",
        "mov rdi, [rsp + 184]", // return address
        "mov rsi, [rsp + 176]", // loc (the saved rdi)
        "call {pre}",
        "mov r11, rax",
        "mov r10, rdx",
        "movdqu xmm0, [rsp + 0]",
        "movdqu xmm1, [rsp + 16]",
        "movdqu xmm2, [rsp + 32]",
        "movdqu xmm3, [rsp + 48]",
        "movdqu xmm4, [rsp + 64]",
        "movdqu xmm5, [rsp + 80]",
        "movdqu xmm6, [rsp + 96]",
        "movdqu xmm7, [rsp + 112]",
        "add rsp, 128",
        "pop rax",
        "pop r9",
        "pop r8",
        "pop rcx",
        "pop rdx",
        "pop rsi",
        "pop rdi",
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
