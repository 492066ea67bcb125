//! Hooks: the exported symbols that interpose the runtimes' own.
//!
//! Every hook reads the same way:
//!   1. ensure init (lazy, idempotent, safe before our constructor ran);
//!   2. take the reentry guard (our bookkeeping never recurses into itself);
//!   3. apply the budget;
//!   4. call the real function of the caller's own runtime copy.
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
pub mod fork;
pub mod grant;
pub mod queries;
pub mod regions;
pub mod setters;
pub mod threads;

use core::cell::Cell;
use core::ffi::CStr;

thread_local! {
    /// Return address of the hook call this thread is in (set by the trampoline).
    static CALLER: Cell<usize> = const { Cell::new(0) };
    /// True while this thread runs our own bookkeeping.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
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

/// Defines an exported symbol `$name` as a trampoline into `$body`, which must
/// be an `unsafe extern "C-unwind" fn` with the real function's signature.
///
/// Every argument register is saved around `save_caller`, integer and vector
/// alike (CBLAS passes alpha/beta in xmm0/xmm1; variadic calls count vector
/// registers in al), so one trampoline fits every hooked signature.
/// x86-64: at entry rsp = 8 (mod 16); 7 pushes plus 128 bytes of xmm leave
/// rsp = 0 (mod 16) for the call, and the return address at rsp + 184.
macro_rules! trampoline {
    ($name:ident => $body:path) => {
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[cfg_attr(not(test), unsafe(no_mangle))]
        #[allow(non_snake_case)] // the runtimes' own symbol names
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
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
        }
        #[cfg(target_arch = "aarch64")]
        #[unsafe(naked)]
        #[cfg_attr(not(test), unsafe(no_mangle))]
        #[allow(non_snake_case)] // the runtimes' own symbol names
        pub unsafe extern "C" fn $name() {
            // x0-x8 and d0-d7 (the FP argument registers), x30 the return address.
            core::arch::naked_asm!(
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
        }
    };
}
pub(crate) use trampoline;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("parbudget's trampolines exist for x86_64 and aarch64 only");

/// The reentry guard: `Some` when this thread is not already inside our own
/// bookkeeping. Dropping it releases the guard.
pub struct Guard(());

impl Guard {
    pub fn take() -> Option<Guard> {
        IN_HOOK.with(|g| {
            if g.replace(true) {
                None
            } else {
                Some(Guard(()))
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        IN_HOOK.with(|g| g.set(false));
    }
}

/// The target of hook `hook` (exported as `name`) called from `ret`. Without a
/// real function there is nothing to run the call with: one error line naming
/// the caller, then abort (it never happens for a caller that was linked
/// against a runtime; see runtime::resolve for the search).
pub fn resolve_or_abort(ret: usize, hook: u8, name: &CStr) -> crate::runtime::Target {
    if let Some(t) = fenced(None, || crate::runtime::resolve(ret, hook, name)) {
        return t;
    }
    log::error!(
        "unresolved symbol={} caller={:#x} object={}: no runtime defines it",
        crate::stackbuf::Quoted(name.to_bytes()),
        ret,
        crate::stackbuf::Quoted(crate::runtime::object_name(ret).as_bytes())
    );
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// A `&'static CStr` from `concat!(stringify!(name), "\0")` in the hook macros.
pub fn cname(s: &'static str) -> &'static CStr {
    CStr::from_bytes_with_nul(s.as_bytes()).unwrap_or(c"?")
}

/// Calls the real function at `$real` with the declared signature.
/// SAFETY (at every use): `real` was resolved by the hook's own name, so it
/// has the signature the caller used for us; the declared types pass every
/// argument through in the same register or stack slot.
macro_rules! call {
    ($real:expr, fn($($t:ty),*) -> $r:ty, $($a:expr),*) => {
        unsafe { core::mem::transmute::<usize, extern "C-unwind" fn($($t),*) -> $r>($real)($($a),*) }
    };
}
pub(crate) use call;

/// Runs bookkeeping `f` under the reentry guard with panics fenced off: a panic
/// must never cross the `extern "C"` boundary (it would abort the host), so a
/// panicking or reentrant bookkeeping step yields `fallback` and the call is
/// forwarded unchanged.
pub fn fenced<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    let Some(_guard) = Guard::take() else {
        return fallback;
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}
