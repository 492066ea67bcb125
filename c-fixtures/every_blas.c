/* Calls every BLAS routine the shim sizes per call that one OpenBLAS copy
 * defines, through the loader's binding (linked against the copy: PLT/GOT,
 * never dlsym on a handle, which a preloaded shim cannot see), and checks
 * each result against a reference computed here with plain loops. Inputs are
 * small integers, so every result is exact in any precision and compared
 * bitwise. Built once per copy (see the Makefile):
 *
 *   every_blas_debian  Debian's OpenBLAS: cblas_{s,d,c,z}{gemm,syrk,gemv},
 *                      Fortran {s,d,c,z}gemm_, openblas_set_num_threads,
 *                      goto_set_num_threads
 *   every_blas_numpy   numpy's libscipy_openblas64_ (64-bit integers):
 *                      scipy_cblas_*64_, scipy_openblas_set_num_threads64_,
 *                      scipy_goto_set_num_threads64_, openblas_set_num_threads_local
 *   every_blas_scipy   scipy's libscipy_openblas: scipy_cblas_*, Fortran
 *                      scipy_{s,d,c,z}gemm_, scipy_openblas_set_num_threads,
 *                      scipy_goto_set_num_threads, openblas_set_num_threads_local
 *   every_blas_numpy1  numpy 1.26's libopenblas64_ (64-bit integers, 64_ suffix,
 *                      no prefix): cblas_*64_, openblas_set_num_threads64_,
 *                      goto_set_num_threads64_
 *
 * Prints SYMBOL_ok= for each routine, blas_calls= (the calls made: each is a
 * call the shim's report must count as sized), then for each setter
 * SYMBOL_then= the copy's thread count after SYMBOL(8) (8 without the shim,
 * the budget under it). Shapes are not square, leading dimensions are padded
 * and vector strides are not 1, and the padding must stay untouched. */
#include <complex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef BLAS_INT
#define BLAS_INT int
#endif
typedef BLAS_INT bint;

#define P3_(a, b, c) a##b##c
#define P3(a, b, c) P3_(a, b, c)
#define STR_(x) #x
#define STR(x) STR_(x)
/* CBLAS_PREFIX: cblas_ or scipy_cblas_; SUFFIX: empty or 64_ */
#define CB(x) P3(CBLAS_PREFIX, x, SUFFIX)
/* FORTRAN_PREFIX: empty or scipy_ */
#define FB(x) P3(FORTRAN_PREFIX, x, _)

enum { RowMajor = 101, NoTrans = 111, Trans = 112, ConjTrans = 113, Upper = 121 };

#define GEMM(t) void CB(t##gemm)(int, int, int, bint, bint, bint, ALPHA, const void *, bint,      \
                                 const void *, bint, ALPHA, void *, bint);
#define SYRK(t) void CB(t##syrk)(int, int, int, bint, bint, ALPHA, const void *, bint, ALPHA,     \
                                 void *, bint);
#define GEMV(t) void CB(t##gemv)(int, int, bint, bint, ALPHA, const void *, bint, const void *,   \
                                 bint, ALPHA, void *, bint);
#define ALPHA float
GEMM(s) SYRK(s) GEMV(s)
#undef ALPHA
#define ALPHA double
GEMM(d) SYRK(d) GEMV(d)
#undef ALPHA
#define ALPHA const void *
GEMM(c) SYRK(c) GEMV(c) GEMM(z) SYRK(z) GEMV(z)
#undef ALPHA

#ifndef NO_FORTRAN
#define FGEMM(t) void FB(t##gemm)(const char *, const char *, const bint *, const bint *,        \
                                  const bint *, const void *, const void *, const bint *,         \
                                  const void *, const bint *, const void *, void *, const bint *, \
                                  size_t, size_t);
FGEMM(s) FGEMM(d) FGEMM(c) FGEMM(z)
#endif

void SET1(int);
void SET2(int);
int GETN(void);
#ifdef HAVE_LOCAL
int openblas_set_num_threads_local(int);
#endif

enum kind { S, D, C, Z };
static const size_t ELEM[] = {4, 8, 8, 16};
static int calls;

static double complex get(enum kind k, const void *p, long i) {
    switch (k) {
    case S: return ((const float *)p)[i];
    case D: return ((const double *)p)[i];
    case C: return CMPLXF(((const float *)p)[2 * i], ((const float *)p)[2 * i + 1]);
    default: return CMPLX(((const double *)p)[2 * i], ((const double *)p)[2 * i + 1]);
    }
}

/* Small integers (real part -3..3, imaginary part -2..2): exact everywhere. */
static void *filled(enum kind k, long n, int seed) {
    void *p = malloc(ELEM[k] * n);
    for (long i = 0; i < n; i++) {
        double re = (double)((i * 7 + seed) % 7) - 3, im = (double)((i * 5 + seed) % 5) - 2;
        switch (k) {
        case S: ((float *)p)[i] = re; break;
        case D: ((double *)p)[i] = re; break;
        case C: ((float *)p)[2 * i] = re, ((float *)p)[2 * i + 1] = im; break;
        case Z: ((double *)p)[2 * i] = re, ((double *)p)[2 * i + 1] = im; break;
        }
    }
    return p;
}

static void *copy_of(enum kind k, const void *p, long n) {
    void *q = malloc(ELEM[k] * n);
    memcpy(q, p, ELEM[k] * n);
    return q;
}

/* The scalar alpha or beta as the routine takes it: by value for real
 * precisions (the caller passes it), by pointer for complex (this buffer). */
struct scalar {
    float f[2];
    double d[2];
};
static struct scalar scalar(double complex v) {
    struct scalar s = {{crealf(v), cimagf(v)}, {creal(v), cimag(v)}};
    return s;
}
static const void *sptr(enum kind k, const struct scalar *s) {
    return k == C ? (const void *)s->f : (const void *)s->d;
}

/* alpha, beta: complex for complex precisions, real otherwise. */
static double complex alpha_of(enum kind k) { return k >= C ? CMPLX(1, 1) : 2; }
static double complex beta_of(enum kind k) { return k >= C ? CMPLX(2, -1) : 3; }

/* Element i of `got` is exactly `want`. */
static int same(enum kind k, const void *got, long i, double complex want) {
    return get(k, got, i) == want;
}

/* --- gemm, row-major: C(MxN) = alpha op(A) B + beta C, op = (Conj)Trans ---- */
static int test_gemm(enum kind k) {
    enum { M = 3, N = 4, K = 5 };
    bint lda = M + 1, ldb = N + 2, ldc = N + 1;
    int ta = k >= C ? ConjTrans : Trans; /* A is stored K x M */
    void *a = filled(k, K * lda, 1), *b = filled(k, K * ldb, 2), *c = filled(k, M * ldc, 3);
    void *c0 = copy_of(k, c, M * ldc);
    double complex al = alpha_of(k), be = beta_of(k);
    struct scalar sa = scalar(al), sb = scalar(be);
    switch (k) {
    case S: CB(sgemm)(RowMajor, ta, NoTrans, M, N, K, sa.f[0], a, lda, b, ldb, sb.f[0], c, ldc); break;
    case D: CB(dgemm)(RowMajor, ta, NoTrans, M, N, K, sa.d[0], a, lda, b, ldb, sb.d[0], c, ldc); break;
    case C: CB(cgemm)(RowMajor, ta, NoTrans, M, N, K, sptr(k, &sa), a, lda, b, ldb, sptr(k, &sb), c, ldc); break;
    case Z: CB(zgemm)(RowMajor, ta, NoTrans, M, N, K, sptr(k, &sa), a, lda, b, ldb, sptr(k, &sb), c, ldc); break;
    }
    calls++;
    int ok = 1;
    for (long i = 0; i < M; i++)
        for (long j = 0; j < ldc; j++) {
            double complex want = get(k, c0, i * ldc + j);
            if (j < N) {
                double complex s = 0;
                for (long l = 0; l < K; l++) {
                    double complex x = get(k, a, l * lda + i);
                    s += (ta == ConjTrans ? conj(x) : x) * get(k, b, l * ldb + j);
                }
                want = al * s + be * want;
            }
            ok &= same(k, c, i * ldc + j, want);
        }
    free(a), free(b), free(c), free(c0);
    return ok;
}

/* --- syrk, row-major upper: C(NxN) = alpha op(A) op(A)^T + beta C --------- */
static int test_syrk(enum kind k) {
    enum { N = 4, K = 3 };
    int tr = k >= C ? NoTrans : Trans; /* Trans: A is K x N; NoTrans: N x K */
    bint lda = tr == Trans ? N + 1 : K + 1, ldc = N + 2;
    long arows = tr == Trans ? K : N;
    void *a = filled(k, arows * lda, 4), *c = filled(k, N * ldc, 5);
    void *c0 = copy_of(k, c, N * ldc);
    double complex al = alpha_of(k), be = beta_of(k);
    struct scalar sa = scalar(al), sb = scalar(be);
    switch (k) {
    case S: CB(ssyrk)(RowMajor, Upper, tr, N, K, sa.f[0], a, lda, sb.f[0], c, ldc); break;
    case D: CB(dsyrk)(RowMajor, Upper, tr, N, K, sa.d[0], a, lda, sb.d[0], c, ldc); break;
    case C: CB(csyrk)(RowMajor, Upper, tr, N, K, sptr(k, &sa), a, lda, sptr(k, &sb), c, ldc); break;
    case Z: CB(zsyrk)(RowMajor, Upper, tr, N, K, sptr(k, &sa), a, lda, sptr(k, &sb), c, ldc); break;
    }
    calls++;
    int ok = 1;
    for (long i = 0; i < N; i++)
        for (long j = 0; j < ldc; j++) {
            double complex want = get(k, c0, i * ldc + j);
            if (j >= i && j < N) { /* the upper triangle; the rest untouched */
                double complex s = 0;
                for (long l = 0; l < K; l++) {
                    double complex x = tr == Trans ? get(k, a, l * lda + i) : get(k, a, i * lda + l);
                    double complex y = tr == Trans ? get(k, a, l * lda + j) : get(k, a, j * lda + l);
                    s += x * y;
                }
                want = al * s + be * want;
            }
            ok &= same(k, c, i * ldc + j, want);
        }
    free(a), free(c), free(c0);
    return ok;
}

/* --- gemv, row-major: y = alpha op(A) x + beta y, A is M x N -------------- */
static int test_gemv(enum kind k) {
    enum { M = 5, N = 3 };
    bint lda = N + 1, incx = 2, incy = 3;
    int tr = k >= C ? ConjTrans : NoTrans;
    long xlen = tr == NoTrans ? N : M, ylen = tr == NoTrans ? M : N;
    void *a = filled(k, M * lda, 6), *x = filled(k, xlen * incx, 7), *y = filled(k, ylen * incy, 8);
    void *y0 = copy_of(k, y, ylen * incy);
    double complex al = alpha_of(k), be = beta_of(k);
    struct scalar sa = scalar(al), sb = scalar(be);
    switch (k) {
    case S: CB(sgemv)(RowMajor, tr, M, N, sa.f[0], a, lda, x, incx, sb.f[0], y, incy); break;
    case D: CB(dgemv)(RowMajor, tr, M, N, sa.d[0], a, lda, x, incx, sb.d[0], y, incy); break;
    case C: CB(cgemv)(RowMajor, tr, M, N, sptr(k, &sa), a, lda, x, incx, sptr(k, &sb), y, incy); break;
    case Z: CB(zgemv)(RowMajor, tr, M, N, sptr(k, &sa), a, lda, x, incx, sptr(k, &sb), y, incy); break;
    }
    calls++;
    int ok = 1;
    for (long e = 0; e < ylen * incy; e++) {
        double complex want = get(k, y0, e);
        if (e % incy == 0) {
            long r = e / incy;
            double complex s = 0;
            for (long l = 0; l < xlen; l++) {
                double complex av = tr == NoTrans ? get(k, a, r * lda + l) : conj(get(k, a, l * lda + r));
                s += av * get(k, x, l * incx);
            }
            want = al * s + be * want;
        }
        ok &= same(k, y, e, want);
    }
    free(a), free(x), free(y), free(y0);
    return ok;
}

#ifndef NO_FORTRAN
/* --- Fortran gemm, column-major: C(MxN) = alpha A op(B) + beta C, op(B) =
 * B^T (B^H for complex), B stored N x K -------------------------------------- */
static int test_fgemm(enum kind k) {
    const bint M = 3, N = 4, K = 5, lda = M + 1, ldb = N + 2, ldc = M + 2;
    const char *tb = k >= C ? "C" : "T";
    void *a = filled(k, K * lda, 9), *b = filled(k, K * ldb, 10), *c = filled(k, N * ldc, 11);
    void *c0 = copy_of(k, c, N * ldc);
    double complex al = alpha_of(k), be = beta_of(k);
    struct scalar sa = scalar(al), sb = scalar(be);
    const void *pa = k == S || k == C ? (const void *)sa.f : (const void *)sa.d;
    const void *pb = k == S || k == C ? (const void *)sb.f : (const void *)sb.d;
    switch (k) {
    case S: FB(sgemm)("N", tb, &M, &N, &K, pa, a, &lda, b, &ldb, pb, c, &ldc, 1, 1); break;
    case D: FB(dgemm)("N", tb, &M, &N, &K, pa, a, &lda, b, &ldb, pb, c, &ldc, 1, 1); break;
    case C: FB(cgemm)("N", tb, &M, &N, &K, pa, a, &lda, b, &ldb, pb, c, &ldc, 1, 1); break;
    case Z: FB(zgemm)("N", tb, &M, &N, &K, pa, a, &lda, b, &ldb, pb, c, &ldc, 1, 1); break;
    }
    calls++;
    int ok = 1;
    for (long j = 0; j < N; j++)
        for (long i = 0; i < ldc; i++) {
            double complex want = get(k, c0, i + j * ldc);
            if (i < M) {
                double complex s = 0;
                for (long l = 0; l < K; l++) {
                    double complex bv = get(k, b, j + l * ldb);
                    s += get(k, a, i + l * lda) * (*tb == 'C' ? conj(bv) : bv);
                }
                want = al * s + be * want;
            }
            ok &= same(k, c, i + j * ldc, want);
        }
    free(a), free(b), free(c), free(c0);
    return ok;
}
#endif

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* every line out before a crash */
    static const char *cb_names[4][3] = {
        {STR(CB(sgemm)), STR(CB(ssyrk)), STR(CB(sgemv))},
        {STR(CB(dgemm)), STR(CB(dsyrk)), STR(CB(dgemv))},
        {STR(CB(cgemm)), STR(CB(csyrk)), STR(CB(cgemv))},
        {STR(CB(zgemm)), STR(CB(zsyrk)), STR(CB(zgemv))},
    };
    int all = 1;
    for (int k = S; k <= Z; k++) {
        int g = test_gemm(k), s = test_syrk(k), v = test_gemv(k);
        printf("%s_ok=%d\n%s_ok=%d\n%s_ok=%d\n", cb_names[k][0], g, cb_names[k][1], s,
               cb_names[k][2], v);
        all &= g & s & v;
    }
#ifndef NO_FORTRAN
    static const char *f_names[4] = {STR(FB(sgemm)), STR(FB(dgemm)), STR(FB(cgemm)),
                                     STR(FB(zgemm))};
    for (int k = S; k <= Z; k++) {
        int f = test_fgemm(k);
        printf("%s_ok=%d\n", f_names[k], f);
        all &= f;
    }
#endif
    printf("blas_all_ok=%d\nblas_calls=%d\n", all, calls);

    /* The setters last: each asks for 8 threads; the copy's count after it. */
    printf("initial_threads=%d\n", GETN());
    SET1(8);
    printf("%s_then=%d\n", STR(SET1), GETN());
    SET1(1);
    SET2(8);
    printf("%s_then=%d\n", STR(SET2), GETN());
#ifdef HAVE_LOCAL
    SET1(1);
    openblas_set_num_threads_local(8);
    printf("openblas_set_num_threads_local_then=%d\n", GETN());
#endif
    return 0;
}
