//! BLAS calls under the budget. OpenBLAS (pthreads builds) sizes its pool
//! once; under parbudget each level-2/3 call is sized when it starts, from the
//! same ledger as OpenMP regions: the calling thread plus the extra workers
//! that still fit. The size reaches the caller's own OpenBLAS copy through
//! that copy's own `openblas_set_num_threads`, so one lone caller keeps the
//! whole budget and four concurrent callers (threads or processes of one
//! tree) run single-threaded BLAS instead of four full pools.
//!
//! The copy's configured count (environment, a setter, threadpoolctl) is the
//! ceiling: if something other than us changed it since our last call, that
//! value becomes the new ceiling. Sequential and OpenMP builds pass through
//! (the OpenMP build's own regions go through the region hooks). Other BLAS
//! (MKL, BLIS, FlexiBLAS) keep the static budget.
//!
//! Hooked: `{,scipy_}cblas_{s,d,c,z}{gemm,syrk,gemv}{,64_}`, which is what
//! numpy (`scipy_cblas_*64_`) and C programs (`cblas_*`) call, and the
//! Fortran `{,scipy_}{s,d,c,z}gemm_` that scipy.linalg and Fortran code call.

use super::grant::{self, GiveBack, Grant};
use super::table::Hook;
use super::{call, take_caller, trampoline};
use crate::runtime::Impl;
use crate::stackbuf::Quoted;
use core::sync::atomic::Ordering::Relaxed;
use log::debug;

type P = *mut core::ffi::c_void;

/// Sizes one BLAS call; returns the real function and the grant.
fn enter(ret: usize, hook: Hook) -> (usize, Grant) {
    let settings = super::ensure();
    // Resolution and sizing under one fence.
    let sized = super::target_and(ret, hook, |t| {
        let Some(s) = settings else {
            return Grant::default();
        };
        let Some((i, c)) = t.indexed_copy() else {
            return Grant::default();
        };
        if c.imp != Impl::Openblas || c.blas_parallel() != 2 {
            return Grant::default();
        }
        // Read, decide and set under the copy's lock: the count is
        // process-wide, and without the lock a stale "current" would look
        // like someone else's setting.
        // Held only for a get and a set; if it cannot be had the call
        // passes through unsized rather than wait.
        let Some(_held) = c.blas_lock.take(10_000) else {
            return Grant::default();
        };
        let cur = c.get_threads().unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32;
        let last = c.blas_current.load(Relaxed);
        if last == 0 || cur != last {
            c.blas_config.store(cur, Relaxed); // first call, or someone else set it
        }
        // The configured count is what the call asks for.
        let config = c.blas_config.load(Relaxed);
        // OpenBLAS splits each call's work by the count it reads when the
        // call starts: any size is correct, so the call gets what fits.
        let g = grant::take(Some((i, c)), config, s.cores(), false);
        if g.team() != cur {
            c.set_threads(g.team());
        }
        c.blas_current.store(g.team(), Relaxed);
        debug!(
            "blas_grant symbol={} ceiling={} team={}",
            Quoted(hook.name().to_bytes()),
            config.min(s.cores()),
            g.team()
        );
        g
    });
    let Some((t, g)) = sized else {
        super::abort_without_target()
    };
    (t.real, g.unwrap_or_default())
}

/// One hooked BLAS entry point: size, forward, give back.
macro_rules! blas {
    ($name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        unsafe extern "C-unwind" fn $body($($a: $t),*) {
            let (real, g) = enter(take_caller(), Hook::$name);
            let _give_back = GiveBack(g);
            call!(real, fn($($t),*) -> (), $($a),*);
        }
        trampoline!($name => $body);
    };
}

// Complex routines take alpha/beta by pointer; real ones
// by value in vector registers (the trampoline saves those too).
blas!(cblas_sgemm, blas_cblas_sgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, b: P, ldb: isize, beta: f32, c: P, ldc: isize));
blas!(cblas_dgemm, blas_cblas_dgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, b: P, ldb: isize, beta: f64, c: P, ldc: isize));
blas!(cblas_cgemm, blas_cblas_cgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(cblas_zgemm, blas_cblas_zgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(cblas_ssyrk, blas_cblas_ssyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, beta: f32, c: P, ldc: isize));
blas!(cblas_dsyrk, blas_cblas_dsyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, beta: f64, c: P, ldc: isize));
blas!(cblas_csyrk, blas_cblas_csyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(cblas_zsyrk, blas_cblas_zsyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(cblas_sgemv, blas_cblas_sgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: f32, a: P, lda: isize, x: P, incx: isize, beta: f32, y: P, incy: isize));
blas!(cblas_dgemv, blas_cblas_dgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: f64, a: P, lda: isize, x: P, incx: isize, beta: f64, y: P, incy: isize));
blas!(cblas_cgemv, blas_cblas_cgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(cblas_zgemv, blas_cblas_zgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(cblas_sgemm64_, blas_cblas_sgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, b: P, ldb: isize, beta: f32, c: P, ldc: isize));
blas!(cblas_dgemm64_, blas_cblas_dgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, b: P, ldb: isize, beta: f64, c: P, ldc: isize));
blas!(cblas_cgemm64_, blas_cblas_cgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(cblas_zgemm64_, blas_cblas_zgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(cblas_ssyrk64_, blas_cblas_ssyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, beta: f32, c: P, ldc: isize));
blas!(cblas_dsyrk64_, blas_cblas_dsyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, beta: f64, c: P, ldc: isize));
blas!(cblas_csyrk64_, blas_cblas_csyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(cblas_zsyrk64_, blas_cblas_zsyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(cblas_sgemv64_, blas_cblas_sgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: f32, a: P, lda: isize, x: P, incx: isize, beta: f32, y: P, incy: isize));
blas!(cblas_dgemv64_, blas_cblas_dgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: f64, a: P, lda: isize, x: P, incx: isize, beta: f64, y: P, incy: isize));
blas!(cblas_cgemv64_, blas_cblas_cgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(cblas_zgemv64_, blas_cblas_zgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(scipy_cblas_sgemm, blas_scipy_cblas_sgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, b: P, ldb: isize, beta: f32, c: P, ldc: isize));
blas!(scipy_cblas_dgemm, blas_scipy_cblas_dgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, b: P, ldb: isize, beta: f64, c: P, ldc: isize));
blas!(scipy_cblas_cgemm, blas_scipy_cblas_cgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_zgemm, blas_scipy_cblas_zgemm, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_ssyrk, blas_scipy_cblas_ssyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, beta: f32, c: P, ldc: isize));
blas!(scipy_cblas_dsyrk, blas_scipy_cblas_dsyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, beta: f64, c: P, ldc: isize));
blas!(scipy_cblas_csyrk, blas_scipy_cblas_csyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_zsyrk, blas_scipy_cblas_zsyrk, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_sgemv, blas_scipy_cblas_sgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: f32, a: P, lda: isize, x: P, incx: isize, beta: f32, y: P, incy: isize));
blas!(scipy_cblas_dgemv, blas_scipy_cblas_dgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: f64, a: P, lda: isize, x: P, incx: isize, beta: f64, y: P, incy: isize));
blas!(scipy_cblas_cgemv, blas_scipy_cblas_cgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(scipy_cblas_zgemv, blas_scipy_cblas_zgemv, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(scipy_cblas_sgemm64_, blas_scipy_cblas_sgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, b: P, ldb: isize, beta: f32, c: P, ldc: isize));
blas!(scipy_cblas_dgemm64_, blas_scipy_cblas_dgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, b: P, ldb: isize, beta: f64, c: P, ldc: isize));
blas!(scipy_cblas_cgemm64_, blas_scipy_cblas_cgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_zgemm64_, blas_scipy_cblas_zgemm64_, (order: isize, ta: isize, tb: isize, m: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, b: P, ldb: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_ssyrk64_, blas_scipy_cblas_ssyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f32, a: P, lda: isize, beta: f32, c: P, ldc: isize));
blas!(scipy_cblas_dsyrk64_, blas_scipy_cblas_dsyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: f64, a: P, lda: isize, beta: f64, c: P, ldc: isize));
blas!(scipy_cblas_csyrk64_, blas_scipy_cblas_csyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_zsyrk64_, blas_scipy_cblas_zsyrk64_, (order: isize, uplo: isize, trans: isize, n: isize, k: isize, alpha: P, a: P, lda: isize, beta: P, c: P, ldc: isize));
blas!(scipy_cblas_sgemv64_, blas_scipy_cblas_sgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: f32, a: P, lda: isize, x: P, incx: isize, beta: f32, y: P, incy: isize));
blas!(scipy_cblas_dgemv64_, blas_scipy_cblas_dgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: f64, a: P, lda: isize, x: P, incx: isize, beta: f64, y: P, incy: isize));
blas!(scipy_cblas_cgemv64_, blas_scipy_cblas_cgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));
blas!(scipy_cblas_zgemv64_, blas_scipy_cblas_zgemv64_, (order: isize, trans: isize, m: isize, n: isize, alpha: P, a: P, lda: isize, x: P, incx: isize, beta: P, y: P, incy: isize));

// Fortran-style GEMM, what scipy.linalg calls on its own
// OpenBLAS copy (`scipy_dgemm_`) and Fortran programs call (`dgemm_`): every
// argument by pointer, then the two hidden lengths of the character
// arguments, passed through as they are (a C caller that omits them passes
// whatever those slots hold, which the callee would have read anyway).
blas!(sgemm_, blas_sgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(dgemm_, blas_dgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(cgemm_, blas_cgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(zgemm_, blas_zgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(scipy_sgemm_, blas_scipy_sgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(scipy_dgemm_, blas_scipy_dgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(scipy_cgemm_, blas_scipy_cgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
blas!(scipy_zgemm_, blas_scipy_zgemm_, (ta: P, tb: P, m: P, n: P, k: P, alpha: P, a: P, lda: P, b: P, ldb: P, beta: P, c: P, ldc: P, ta_len: usize, tb_len: usize));
