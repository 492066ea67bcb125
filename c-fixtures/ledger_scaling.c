/* ledger_scaling T N [CLAUSE [LONE]]: T threads start together (barrier) and
 * each enters N short GNU OpenMP regions; then, after every thread has been
 * joined, the main thread alone enters LONE (default 50) regions without a
 * clause. CLAUSE: 0 (default) no num_threads clause, 1 or 2 num_threads(1|2).
 *
 * In each region every team member spins briefly, and a thread other than
 * the master counts itself in `extras` while it runs the body, so the largest
 * number of extra workers running bodies at one instant is seen (a region's
 * body runs inside the shim's grant, so under a budget B with no clause it can
 * never exceed B - 1). Prints threads, entries, min_team, max_team,
 * mean_team, max_extras (over the T threads' regions), lone_min_team,
 * lone_max_team. */
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static long entries = 500;
static int clause = 0;
static pthread_barrier_t start;
static atomic_int extras;
static atomic_int max_extras;
static volatile unsigned sink;

struct out {
    long teams;
    int min_team, max_team;
};

static void body(int *team) {
    if (omp_get_thread_num() == 0) {
        *team = omp_get_num_threads();
    } else {
        int now = atomic_fetch_add(&extras, 1) + 1;
        int seen = atomic_load(&max_extras);
        while (now > seen && !atomic_compare_exchange_weak(&max_extras, &seen, now)) {
        }
    }
    for (unsigned i = 0; i < 2000; i++) sink += i;
    if (omp_get_thread_num() != 0) atomic_fetch_sub(&extras, 1);
}

static int region(int c) {
    int team = 0;
    if (c == 1) {
#pragma omp parallel num_threads(1)
        body(&team);
    } else if (c == 2) {
#pragma omp parallel num_threads(2)
        body(&team);
    } else {
#pragma omp parallel
        body(&team);
    }
    return team;
}

static void *worker(void *p) {
    struct out *o = p;
    o->teams = 0;
    o->min_team = 1 << 30;
    o->max_team = 0;
    pthread_barrier_wait(&start);
    for (long r = 0; r < entries; r++) {
        int t = region(clause);
        o->teams += t;
        if (t < o->min_team) o->min_team = t;
        if (t > o->max_team) o->max_team = t;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) entries = atol(argv[2]);
    if (argc > 3) clause = atoi(argv[3]);
    long lone = argc > 4 ? atol(argv[4]) : 50;
    if (n < 1 || n > 256 || entries < 1 || clause < 0 || clause > 2 || lone < 0) {
        fprintf(stderr, "usage: ledger_scaling T(1..256) N [CLAUSE 0|1|2 [LONE]]\n");
        return 2;
    }
    pthread_t th[256];
    static struct out outs[256];
    pthread_barrier_init(&start, NULL, (unsigned)n);
    for (int i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, worker, &outs[i]) != 0) return 1;
    long total = 0;
    int lo = 1 << 30, hi = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += outs[i].teams;
        if (outs[i].min_team < lo) lo = outs[i].min_team;
        if (outs[i].max_team > hi) hi = outs[i].max_team;
    }
    int max_ex = atomic_load(&max_extras);
    int lone_lo = 1 << 30, lone_hi = 0;
    for (long r = 0; r < lone; r++) {
        int t = region(0);
        if (t < lone_lo) lone_lo = t;
        if (t > lone_hi) lone_hi = t;
    }
    if (lone == 0) lone_lo = lone_hi = 0;
    printf("threads=%d\nclause=%d\nentries=%ld\nmin_team=%d\nmax_team=%d\nmean_team=%.4f\nmax_extras=%d\n"
           "lone_regions=%ld\nlone_min_team=%d\nlone_max_team=%d\n",
           n, clause, n * entries, lo, hi, (double)total / ((double)n * entries), max_ex, lone,
           lone_lo, lone_hi);
    return 0;
}
