//! Hooks: the exported symbols that interpose the runtimes' own.
//!
//! Every hook reads the same way:
//!   1. ensure init (`ensure`: lazy, idempotent, safe before our constructor);
//!   2. find the target (`target` / `resolve_or_abort`, keyed by the hook's
//!      row in `table`; the policy when there is none is `no_target`);
//!   3. apply the budget inside `fenced` (the reentry guard and panic fence);
//!   4. call the real function of the caller's own runtime copy (`call!`).
//!
//! The libc hooks (`pthread_create`, `fork`, `_exit`, `dlclose`) follow the
//! same steps with `crate::next` as their target.
//!
//! Step 4 needs the caller: in a Python process the runtime copies are loaded
//! privately (RTLD_LOCAL) and several live side by side, so `RTLD_NEXT` finds
//! none or the wrong one. Stable Rust has no `__builtin_return_address`, so
//! each export is a naked trampoline that records its return address in a
//! thread-local (`CALLER`) and then jumps to the Rust body with every argument
//! register untouched. Jumping (not calling) keeps the caller's stack intact,
//! so functions with stack arguments (8-argument GOMP loop entries) and
//! variadic ones forward correctly.

pub mod blas;
pub mod exit;
pub mod fork;
pub mod grant;
pub mod kmpc;
pub mod queries;
pub mod regions;
pub mod setters;
pub mod table;
pub mod threads;
pub mod unload;

pub use crate::boundary::{Guard, fenced};
use core::cell::Cell;
use core::ffi::CStr;

thread_local! {
    /// Return address of the hook call this thread is in (set by the trampoline).
    static CALLER: Cell<usize> = const { Cell::new(0) };
}

/// Called by the trampolines only, with the return address as first argument.
pub extern "C" fn save_caller(ret: usize) {
    CALLER.with(|c| c.set(ret));
}

/// The return address of the current hook call; read it first thing.
pub fn take_caller() -> usize {
    CALLER.with(|c| c.replace(0))
}

// The x86-64 register save/restore sequences of the trampolines (here and
// `__kmpc_fork_call` in regions.rs), named once. Seven pushes: the six
// integer argument registers and rax (the vector-register count of variadic
// calls); with the return address that leaves rsp = 0 (mod 16) for a call.
macro_rules! save_args {
    () => {
        "push rdi\npush rsi\npush rdx\npush rcx\npush r8\npush r9\npush rax"
    };
}
macro_rules! restore_args {
    () => {
        "pop rax\npop r9\npop r8\npop rcx\npop rdx\npop rsi\npop rdi"
    };
}
// xmm0-7 (floating-point and vector arguments), 128 bytes: alignment kept.
macro_rules! save_xmm {
    () => {
        "sub rsp, 128\nmovdqu [rsp + 0], xmm0\nmovdqu [rsp + 16], xmm1\nmovdqu [rsp + 32], xmm2\nmovdqu [rsp + 48], xmm3\nmovdqu [rsp + 64], xmm4\nmovdqu [rsp + 80], xmm5\nmovdqu [rsp + 96], xmm6\nmovdqu [rsp + 112], xmm7"
    };
}
macro_rules! restore_xmm {
    () => {
        "movdqu xmm0, [rsp + 0]\nmovdqu xmm1, [rsp + 16]\nmovdqu xmm2, [rsp + 32]\nmovdqu xmm3, [rsp + 48]\nmovdqu xmm4, [rsp + 64]\nmovdqu xmm5, [rsp + 80]\nmovdqu xmm6, [rsp + 96]\nmovdqu xmm7, [rsp + 112]\nadd rsp, 128"
    };
}
pub(crate) use {restore_args, restore_xmm, save_args, save_xmm};

/// One exported naked function for one architecture: the symbol named like
/// the runtime's, its body the given assembly. Both trampolines below are
/// made of these.
macro_rules! naked_export {
    ($arch:literal, $name:ident, $($asm:tt)*) => {
        #[cfg(target_arch = $arch)]
        #[unsafe(naked)]
        #[cfg_attr(not(test), unsafe(no_mangle))]
        #[allow(non_snake_case)] // the runtimes' own symbol names
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!($($asm)*);
        }
    };
}
pub(crate) use naked_export;

/// Defines an exported symbol `$name` as a trampoline into `$body`, which must
/// be an `unsafe extern "C-unwind" fn` with the real function's signature.
///
/// Every argument register is saved around `save_caller`, integer and vector
/// alike (CBLAS passes alpha/beta in xmm0/xmm1; variadic calls count vector
/// registers in al), so one trampoline fits every hooked signature.
/// x86-64: at entry rsp = 8 (mod 16); 7 pushes plus 128 bytes of xmm leave
/// rsp = 0 (mod 16) for the call, and the return address at rsp + 184.
/// aarch64: x0-x8 and d0-d7 (the FP argument registers), x30 the return
/// address.
macro_rules! trampoline {
    ($name:ident => $body:path) => {
        $crate::hooks::naked_export!(
            "x86_64",
            $name,
            $crate::hooks::save_args!(),
            $crate::hooks::save_xmm!(),
            "mov rdi, [rsp + 184]",
            "call {save}",
            $crate::hooks::restore_xmm!(),
            $crate::hooks::restore_args!(),
            "jmp {body}",
            save = sym $crate::hooks::save_caller,
            body = sym $body,
        );
        $crate::hooks::naked_export!(
            "aarch64",
            $name,
            "sub sp, sp, #160",
            "stp x0, x1, [sp, #0]",
            "stp x2, x3, [sp, #16]",
            "stp x4, x5, [sp, #32]",
            "stp x6, x7, [sp, #48]",
            "stp x8, x30, [sp, #64]",
            "stp d0, d1, [sp, #80]",
            "stp d2, d3, [sp, #96]",
            "stp d4, d5, [sp, #112]",
            "stp d6, d7, [sp, #128]",
            "mov x0, x30",
            "bl {save}",
            "ldp x0, x1, [sp, #0]",
            "ldp x2, x3, [sp, #16]",
            "ldp x4, x5, [sp, #32]",
            "ldp x6, x7, [sp, #48]",
            "ldp x8, x30, [sp, #64]",
            "ldp d0, d1, [sp, #80]",
            "ldp d2, d3, [sp, #96]",
            "ldp d4, d5, [sp, #112]",
            "ldp d6, d7, [sp, #128]",
            "add sp, sp, #160",
            "b {body}",
            save = sym $crate::hooks::save_caller,
            body = sym $body,
        );
    };
}
pub(crate) use trampoline;

/// Defines an exported symbol `$name` as a trampoline into `$body` that hands
/// the return address over as one more integer argument, in `$x86` (x86-64)
/// or `$arm` (aarch64): the argument register after the symbol's own last
/// one. For the hot entries only, whose arguments are all integers or
/// pointers in registers (no stack arguments, no varargs, no vector
/// registers): nothing is saved and no thread-local is written, so the
/// caller costs two instructions. `$body` takes the symbol's arguments and
/// then `ret: usize`. At entry the return address is at [rsp] (x86-64) or
/// in x30 (aarch64); a jump or branch keeps it there, so the body returns
/// straight to the caller.
macro_rules! trampoline_ret {
    ($name:ident => $body:path, $x86:literal, $arm:literal) => {
        $crate::hooks::naked_export!(
            "x86_64",
            $name,
            concat!("mov ", $x86, ", [rsp]"),
            "jmp {body}",
            body = sym $body,
        );
        $crate::hooks::naked_export!(
            "aarch64",
            $name,
            concat!("mov ", $arm, ", x30"),
            "b {body}",
            body = sym $body,
        );
    };
}
pub(crate) use trampoline_ret;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("parbudget's trampolines exist for x86_64 and aarch64 only");

/// The policy for a hook whose target cannot be found (it never happens for
/// a caller that was linked against a runtime: see runtime::resolve for the
/// search). One ERROR line names the symbol and the caller object. Then the
/// hook does what the call means without a runtime: a setter does nothing and
/// a query answers as a single-threaded runtime would (0 or 1); a region, a
/// BLAS call or a libc function cannot be run without its code, so the
/// process aborts (it could not have run without the shim either).
pub fn no_target(name: &CStr, ret: usize) {
    log::error!(
        "unresolved symbol={} caller={:#x} object={}: no runtime defines it",
        crate::stackbuf::Quoted(name.to_bytes()),
        ret,
        crate::stackbuf::Quoted(crate::runtime::object_name(ret).as_bytes())
    );
}

/// As `target`, for bookkeeping that already runs inside `fenced` (a
/// runtime function a hook calls in the caller's own copy): no error line.
#[inline(always)]
pub fn lookup(ret: usize, hook: table::Hook) -> Option<crate::runtime::Target> {
    crate::runtime::resolve(ret, hook as u8, hook.name())
}

/// Steps 2 and 3 of the recipe under one reentry guard and one panic fence
/// (a hot path pays for one of each): the target of hook `hook` called from
/// `ret`, a check of copies loaded meanwhile, then `apply` with that target.
/// Returns the target (None: there is none; one ERROR line, see
/// `no_target`) and what `apply` gave: None when the call was reached from
/// our own bookkeeping (our constructor asks MKL its thread count, and MKL
/// asks omp_get_max_threads: the target is found unfenced and nothing is
/// applied) or when the bookkeeping panicked (the call is forwarded
/// unchanged).
#[inline]
pub fn target_and<T>(
    ret: usize,
    hook: table::Hook,
    apply: impl FnOnce(crate::runtime::Target) -> T,
) -> Option<(crate::runtime::Target, Option<T>)> {
    // The fence's result is (): what the bookkeeping found and applied is
    // written to these locals instead of moved out through catch_unwind
    // (the hot path saves the copies).
    let (mut found, mut applied) = (None, None);
    fenced((), || {
        if let Some(t) = lookup(ret, hook) {
            found = Some(t);
            crate::conflicts::check_pending();
            applied = Some(apply(t));
        }
    });
    let t = found.or_else(|| {
        if Guard::held() {
            lookup(ret, hook)
        } else {
            None
        }
    });
    if t.is_none() {
        no_target(hook.name(), ret);
    }
    t.map(|t| (t, applied))
}

/// The target of hook `hook` called from `ret`, if one can be found.
pub fn target(ret: usize, hook: table::Hook) -> Option<crate::runtime::Target> {
    target_and(ret, hook, |_| ()).map(|(t, _)| t)
}

/// The target of a hook whose call cannot be completed without one (see
/// `no_target`).
pub fn resolve_or_abort(ret: usize, hook: table::Hook) -> crate::runtime::Target {
    target(ret, hook).unwrap_or_else(|| abort_without_target())
}

/// A call that cannot be completed: `no_target` said why.
#[cold]
pub fn abort_without_target() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Init, lazily from any hook (see `init`), then the work that needs hooks:
/// the atfork handlers and a first look at what is loaded. Once.
#[inline]
pub fn ensure() -> Option<&'static crate::init::Settings> {
    let s = crate::init::ensure();
    if AFTER.load(core::sync::atomic::Ordering::Acquire) == 2 || s.is_none() {
        return s;
    }
    ensure_after(s)
}

/// The work after init that needs hooks: 0 not done, 1 running, 2 done.
static AFTER: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

#[cold]
#[inline(never)]
fn ensure_after(
    s: Option<&'static crate::init::Settings>,
) -> Option<&'static crate::init::Settings> {
    use core::sync::atomic::Ordering::*;
    match AFTER.compare_exchange(0, 1, AcqRel, Acquire) {
        Ok(_) => {
            crate::boundary::install_panic_hook();
            fork::install_atfork();
            fenced((), || {
                crate::runtime::refresh();
                crate::conflicts::check_pending();
            });
            AFTER.store(2, Release);
        }
        Err(_) => {
            // Another thread is finishing; a reentrant call passes through.
            if !Guard::held() {
                while AFTER.load(Acquire) == 1 {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }
    s
}

/// Our constructor: init now, then bring copies that were loaded (and whose
/// constructors ran) before us under the budget. Calling libgomp or OpenBLAS
/// here is safe: their constructors have either run (we correct what they read)
/// or not (they will read the environment we just exported). libomp/libiomp
/// initialise lazily on first use and read that environment then, so we leave
/// them alone rather than start them from a constructor.
pub fn constructor() {
    let Some(s) = ensure() else { return };
    fenced((), || {
        for (_, c) in crate::runtime::copies() {
            if matches!(c.imp, crate::runtime::Impl::Libgomp)
                || c.imp.kind() == crate::runtime::Kind::Blas
            {
                crate::runtime::apply_budget(c, s.budget.cores, "constructor");
            }
        }
        crate::report::install(s);
        exit::install();
    });
}

/// Calls the real function at `$real` with the declared signature.
/// SAFETY (at every use): `real` was resolved by the hook's own name, so it
/// has the signature the caller used for us; the declared types pass every
/// argument through in the same register or stack slot.
macro_rules! call {
    ($real:expr, fn($($t:ty),*) -> $r:ty, $($a:expr),*) => {
        // SAFETY: see the macro's doc: `real` has the declared signature.
        unsafe { core::mem::transmute::<usize, extern "C-unwind" fn($($t),*) -> $r>($real)($($a),*) }
    };
}
pub(crate) use call;
