/* A library bound to its own renamed (auditwheel-style) libgomp copy:
 * compiled with -fopenmp but linked only against libgomp-deadbeef.so.1 (see
 * the Makefile). Two functions with separate parallel call sites; each region
 * splits 1..N by omp_get_thread_num()/omp_get_num_threads(), so the result is
 * right only if the copy that runs the team is the copy the body asks. A team
 * started by another copy leaves every worker "thread 0 of 1" here: each adds
 * the whole range (sum = team x expected) and id 0 is seen several times. */
#include <omp.h>

struct bound_result {
    long sum;      /* of 1..N, each thread adding its own chunk */
    int team;      /* largest omp_get_num_threads() seen by the body */
    int entered;   /* threads that ran the body */
    int ids_ok;    /* every id 0..team-1 seen exactly once, and nothing else */
};

#define MAXT 256

static long chunk_sum(long n, int id, int team) {
    long per = (n + team - 1) / team, lo = (long)id * per + 1, hi = lo + per - 1, s = 0;
    if (hi > n) hi = n;
    for (long i = lo; i <= hi; i++) s += i;
    return s;
}

static void finish(struct bound_result *r, int *seen) {
    int ok = r->team >= 1 && r->team <= MAXT && r->entered == r->team;
    for (int i = 0; i < MAXT; i++)
        if (seen[i] != (i < r->team ? 1 : 0)) ok = 0;
    r->ids_ok = ok;
}

/* The call site used before any other libgomp is loaded. */
void bound_before(long n, struct bound_result *r) {
    int seen[MAXT] = {0};
    r->sum = 0; r->team = 0; r->entered = 0;
#pragma omp parallel
    {
        int id = omp_get_thread_num(), team = omp_get_num_threads();
        __atomic_fetch_add(&r->sum, chunk_sum(n, id, team), __ATOMIC_RELAXED);
        __atomic_fetch_add(&r->entered, 1, __ATOMIC_RELAXED);
        if (id >= 0 && id < MAXT) __atomic_fetch_add(&seen[id], 1, __ATOMIC_RELAXED);
        int t = __atomic_load_n(&r->team, __ATOMIC_RELAXED);
        while (team > t && !__atomic_compare_exchange_n(&r->team, &t, team, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
    finish(r, seen);
}

/* A separate call site, first used after the main program loaded another
 * libgomp RTLD_GLOBAL. (Different body on purpose, and built with
 * -fno-ipa-icf, so the two are never folded into one call site.) */
void bound_after(long n, struct bound_result *r) {
    int seen[MAXT] = {0};
    r->sum = 0; r->team = 0; r->entered = 0;
#pragma omp parallel
    {
        int team = omp_get_num_threads(), id = omp_get_thread_num();
        long part = chunk_sum(n, id, team);
        __atomic_fetch_add(&r->entered, 1, __ATOMIC_RELAXED);
        if (id >= 0 && id < MAXT) __atomic_fetch_add(&seen[id], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&r->sum, part, __ATOMIC_RELAXED);
        int t = __atomic_load_n(&r->team, __ATOMIC_RELAXED);
        while (team > t && !__atomic_compare_exchange_n(&r->team, &t, team, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
    finish(r, seen);
}
