//! OpenMP region entry points: every team-starting entry of the GOMP ABI
//! (libgomp, and libomp/libiomp5 for gcc-compiled code) and LLVM/Intel's
//! `__kmpc_push_num_threads`. The team is sized here, at each region, from the
//! ledger: the caller plus the extra workers free right now.

use super::grant::{self, GiveBack, Grant};
use super::table::Hook;
use super::{call, fenced, fork, resolve_or_abort, take_caller, trampoline, trampoline_ret};
use crate::runtime::{self, Impl};
use crate::stackbuf::Quoted;
use core::cell::Cell;
use core::ffi::{c_long, c_uint, c_void};
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
/// `requested` is its clause (0: none); `icv` reads the copy's own nthreads
/// ICV, a call into the runtime made only for a region with neither a clause
/// nor a promise.
pub(super) fn entitlement(
    requested: u32,
    shape: Shape,
    promised: Option<u32>,
    icv: impl FnOnce() -> u32,
) -> (u32, bool) {
    match requested {
        0 => match promised {
            // The thread asked omp_get_max_threads() and may have sized its
            // work by the answer: a region without a clause gets exactly that.
            Some(p) => (p, shape == Shape::Plain),
            // Never told a number: nothing to count on; what fits.
            None => (icv().max(1), false),
        },
        n => (n, shape == Shape::Plain),
    }
}

pub(super) fn icv_of(copy: Option<&runtime::RuntimeCopy>, budget: u32) -> u32 {
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
/// The hot path of the shim: resolution and sizing under one fence
/// (`target_and`).
// Always inlined, with `size`, `fenced` and `lookup`: the region hook then is
// one function, with no register saves between them and no `Entry` written
// through memory from one to the next (callgrind on regions_gcc: 664 -> 582
// instructions a region; the thread-state address computed once, see
// `thread_state::state`, 582 -> 544).
#[inline(always)]
fn enter(ret: usize, hook: Hook, requested: c_uint, shape: Shape) -> Entry {
    let settings = super::ensure();
    let sized = super::target_and(ret, hook, |t| size(t, settings, hook, requested, shape));
    let Some((t, sized)) = sized else {
        super::abort_without_target()
    };
    // Unsized (reached from our own bookkeeping, or a panic): forwarded as asked.
    sized.unwrap_or(Entry {
        real: t.real,
        team: requested,
        grant: Grant::default(),
    })
}

/// The team of a region whose target is `target`, and its grant (inlined:
/// see `enter`).
#[inline(always)]
fn size(
    target: crate::runtime::Target,
    settings: Option<&crate::init::Settings>,
    hook: Hook,
    requested: c_uint,
    shape: Shape,
) -> Entry {
    let passthrough = Entry {
        real: target.real,
        team: requested,
        grant: Grant::default(),
    };
    // `target.indexed_copy()` written out: through the method, the compiler
    // stops inlining `grant::take` here (callgrind: 11 more instructions a
    // region).
    let copy = target.copy.and_then(|i| runtime::copy(i).map(|c| (i, c)));
    if let Some((i, c)) = copy {
        if fork::serial_here(i) {
            fork::child_region(c, hook.name(), serial_is_safe(requested, shape), requested);
            runtime::count_region(crate::thread_state::my_cell(), i, &c.stats, 1);
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
    let cap = s.cores();
    let (asked, exact) = entitlement(requested, shape, grant::promised(), || {
        icv_of(copy.map(|(_, c)| c), cap)
    });
    let g = grant::take(copy, asked, cap, exact);
    if let Some((i, c)) = copy
        && g.team() > 1
        && c.imp == Impl::Libgomp
    {
        fork::mark_master(i);
    }
    debug!(
        "grant symbol={} impl={} asked={} exact={} team={} free={}",
        Quoted(hook.name().to_bytes()),
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
/// With `via X86, ARM`: the entry's arguments all sit in registers, and its
/// return address comes as one more argument in that register
/// (`trampoline_ret`); without, through the thread-local (`trampoline`).
macro_rules! region {
    ($shape:ident, $name:ident, $body:ident, ($($a:ident: $t:ty),*), $ret:ty) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) -> $ret {
            let e = enter(take_caller(), Hook::$name, num_threads, Shape::$shape);
            let _give_back = GiveBack(e.grant);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> $ret, f, data, e.team $(, $a)*)
        }
        trampoline!($name => $body);
    };
    ($shape:ident, $name:ident, $body:ident, ($($a:ident: $t:ty),*), $ret:ty, via $x86:literal, $arm:literal) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*, ret: usize) -> $ret {
            let e = enter(ret, Hook::$name, num_threads, Shape::$shape);
            let _give_back = GiveBack(e.grant);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> $ret, f, data, e.team $(, $a)*)
        }
        trampoline_ret!($name => $body, $x86, $arm);
    };
}

/// A `_start` region: the team lives until `GOMP_parallel_end`.
macro_rules! region_start {
    ($shape:ident, $name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        unsafe extern "C-unwind" fn $body(f: Body, data: *mut c_void, num_threads: c_uint $(, $a: $t)*) {
            let e = enter(take_caller(), Hook::$name, num_threads, Shape::$shape);
            push_start(e.grant);
            call!(e.real, fn(Body, *mut c_void, c_uint $(, $t)*) -> (), f, data, e.team $(, $a)*);
        }
        trampoline!($name => $body);
    };
}

// (fn, data, num_threads, flags): the return address goes in the fifth
// integer argument register; sections take one more argument, so the sixth.
region!(Plain, GOMP_parallel, gomp_parallel, (flags: c_uint), (), via "r8", "x4");
region!(Plain, GOMP_parallel_reductions, gomp_parallel_reductions, (flags: c_uint), c_uint, via "r8", "x4");
region!(Adaptive, GOMP_parallel_sections, gomp_parallel_sections, (count: c_uint, flags: c_uint), (), via "r9", "x5");
region!(Plain, GOMP_parallel_loop_static, gomp_parallel_loop_static, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(Adaptive, GOMP_parallel_loop_dynamic, gomp_parallel_loop_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(Adaptive, GOMP_parallel_loop_guided, gomp_parallel_loop_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(Adaptive, GOMP_parallel_loop_nonmonotonic_dynamic, gomp_parallel_loop_nonmonotonic_dynamic, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(Adaptive, GOMP_parallel_loop_nonmonotonic_guided, gomp_parallel_loop_nonmonotonic_guided, (s: c_long, e: c_long, i: c_long, c: c_long, flags: c_uint), ());
region!(Plain, GOMP_parallel_loop_runtime, gomp_parallel_loop_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(Plain, GOMP_parallel_loop_nonmonotonic_runtime, gomp_parallel_loop_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region!(Plain, GOMP_parallel_loop_maybe_nonmonotonic_runtime, gomp_parallel_loop_maybe_nonmonotonic_runtime, (s: c_long, e: c_long, i: c_long, flags: c_uint), ());
region_start!(Plain, GOMP_parallel_start, gomp_parallel_start, ());
region_start!(Adaptive, GOMP_parallel_sections_start, gomp_parallel_sections_start, (count: c_uint));
region_start!(Plain, GOMP_parallel_loop_static_start, gomp_parallel_loop_static_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(Adaptive, GOMP_parallel_loop_dynamic_start, gomp_parallel_loop_dynamic_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(Adaptive, GOMP_parallel_loop_guided_start, gomp_parallel_loop_guided_start, (s: c_long, e: c_long, i: c_long, c: c_long));
region_start!(Plain, GOMP_parallel_loop_runtime_start, gomp_parallel_loop_runtime_start, (s: c_long, e: c_long, i: c_long));

unsafe extern "C-unwind" fn gomp_parallel_end() {
    let ret = take_caller();
    let _ = super::ensure();
    let t = resolve_or_abort(ret, Hook::GOMP_parallel_end);
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
    let (real, l) = limit(take_caller(), Hook::GOMP_teams_reg, thread_limit);
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
fn limit(ret: usize, hook: Hook, thread_limit: c_uint) -> (usize, c_uint) {
    let settings = super::ensure();
    let t = resolve_or_abort(ret, hook);
    let l = fenced(thread_limit, || {
        let budget = settings.map_or(u32::MAX, |s| s.cores());
        if t.copy.is_some_and(fork::serial_here) {
            1
        } else {
            thread_limit.min(budget)
        }
    });
    (t.real, l)
}

unsafe extern "C-unwind" fn gomp_teams(num_teams: c_uint, thread_limit: c_uint) {
    let (real, l) = limit(take_caller(), Hook::GOMP_teams, thread_limit);
    call!(real, fn(c_uint, c_uint) -> (), num_teams, l);
}
trampoline!(GOMP_teams => gomp_teams);

unsafe extern "C-unwind" fn gomp_teams4(
    low: c_uint,
    high: c_uint,
    thread_limit: c_uint,
    first: bool,
) -> bool {
    let (real, l) = limit(take_caller(), Hook::GOMP_teams4, thread_limit);
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
