/* Regions that split their work by the team size they ASKED for, never by
 * omp_get_num_threads() (as xgboost's ParallelFor2d does): thread i processes
 * blocks [i*chunk, (i+1)*chunk) with chunk = ceil(B/n). A team smaller than n
 * silently skips the blocks of the threads that never came, and the call's
 * sum comes out wrong.
 *
 * usage: split_by_n T R MODE [N]
 *   T pthreads (started together at a barrier) each make R calls.
 *   MODE clause:    #pragma omp parallel num_threads(n), n = N (default 2)
 *        noclause:  n = omp_get_max_threads(); #pragma omp parallel
 *                   (with dynamic adjustment off, OpenMP gives such a region
 *                   exactly omp_get_max_threads() threads)
 *        selfcheck: asks num_threads(n-1) but splits by n: a team one short
 *                   of the split, so every call must come out wrong; proves
 *                   the check catches missing blocks.
 * Prints calls, wrong_calls, max_team, min_team (omp_get_num_threads() seen
 * by thread 0, for reporting only), min_n, max_n (the n split by), dynamic;
 * in noclause mode also first_extras (the sum over threads of their first
 * answer minus 1: the extra threads promised to threads that asked together)
 * and first_ask_spread_ms (from the first thread's first question to the
 * last thread's first answer), and ended_before_last_answer (1: a thread had
 * ended, and given back what its promise held back, before the last thread
 * was answered, so the threads did not ask together). With ASK_FIRST set,
 * the main thread asks omp_get_max_threads() before it starts the threads
 * (and runs nothing);
 * with ASK_FIRST=set, it starts them first, then asks and calls
 * omp_set_num_threads(1) before it lets them go. With HELPERS set, worker i
 * waits i x 5 ms after the barrier, asks, then starts and joins a helper
 * thread that does nothing and waits 40 ms (outside any region) before its
 * first region (as scikit-learn's HistGradientBoosting does: it asks, bins
 * its data on a joblib thread pool, then runs its OpenMP regions itself),
 * so each helper starts, and no region runs, when the next worker asks. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define B 64     /* blocks per call */
#define W 256    /* items per block */
#define MAXT 64

enum mode { CLAUSE, NOCLAUSE, SELFCHECK };
static enum mode mode = CLAUSE;
static int calls_per_thread = 2000, req_n = 2;
static pthread_barrier_t start;
static int helpers;
static int ids;

static void *helper(void *arg) { return arg; }

struct stats { long calls, wrong; int max_team, min_team, max_n, min_n, first_n; double first_ask_ms, first_answer_ms, end_ms; };

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static unsigned long block_value(int b, unsigned call) {
    unsigned long s = 0;
    for (unsigned i = (unsigned)b * W; i < (unsigned)(b + 1) * W; i++)
        s += ((i * 2654435761u) ^ call) >> 7;
    return s;
}

static void do_blocks(unsigned long *acc, int id, int n, unsigned call) {
    int chunk = (B + n - 1) / n;
    int lo = id * chunk, hi = lo + chunk;
    if (hi > B) hi = B;
    for (int b = lo; b < hi; b++) acc[b] = block_value(b, call);
}

static void *worker(void *arg) {
    struct stats *st = arg;
    unsigned long acc[B];
    st->max_team = 0; st->min_team = 1 << 30; st->max_n = 0; st->min_n = 1 << 30;
    pthread_barrier_wait(&start);
    if (helpers) {
        struct timespec d = {0, 5000000L * __atomic_fetch_add(&ids, 1, __ATOMIC_RELAXED)};
        nanosleep(&d, NULL);
    }
    for (int c = 0; c < calls_per_thread; c++) {
        unsigned call = (unsigned)c * 7919u;
        int n, team = 0;
        memset(acc, 0, sizeof acc);
        if (mode == NOCLAUSE) {
            if (c == 0) st->first_ask_ms = now_ms();
            n = omp_get_max_threads();
            if (c == 0) { st->first_n = n; st->first_answer_ms = now_ms(); }
            if (c == 0 && helpers) {
                pthread_t h;
                struct timespec work = {0, 40000000L};
                if (pthread_create(&h, NULL, helper, NULL) == 0) pthread_join(h, NULL);
                nanosleep(&work, NULL);
            }
#pragma omp parallel
            {
                int id = omp_get_thread_num();
                if (id == 0) team = omp_get_num_threads();
                do_blocks(acc, id, n, call);
            }
        } else {
            n = req_n;
            int ask = mode == SELFCHECK ? n - 1 : n;
#pragma omp parallel num_threads(ask)
            {
                int id = omp_get_thread_num();
                if (id == 0) team = omp_get_num_threads();
                do_blocks(acc, id, n, call);
            }
        }
        unsigned long got = 0, want = 0;
        for (int b = 0; b < B; b++) { got += acc[b]; want += block_value(b, call); }
        st->calls++;
        if (got != want) st->wrong++;
        if (team > st->max_team) st->max_team = team;
        if (team < st->min_team) st->min_team = team;
        if (n > st->max_n) st->max_n = n;
        if (n < st->min_n) st->min_n = n;
    }
    st->end_ms = now_ms();
    return NULL;
}

int main(int argc, char **argv) {
    int t = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) calls_per_thread = atoi(argv[2]);
    if (argc > 3) {
        if (!strcmp(argv[3], "clause")) mode = CLAUSE;
        else if (!strcmp(argv[3], "noclause")) mode = NOCLAUSE;
        else if (!strcmp(argv[3], "selfcheck")) mode = SELFCHECK;
        else { fprintf(stderr, "bad mode %s\n", argv[3]); return 2; }
    }
    if (argc > 4) req_n = atoi(argv[4]);
    if (t < 1) t = 1;
    if (t > MAXT) t = MAXT;
    if (req_n < 1 || (mode == SELFCHECK && req_n < 2)) { fprintf(stderr, "bad n\n"); return 2; }
    pthread_t th[MAXT];
    static struct stats st[MAXT];
    const char *ask_first = getenv("ASK_FIRST");
    helpers = getenv("HELPERS") != NULL;
    int then_set = ask_first && !strcmp(ask_first, "set");
    if (ask_first && !then_set) printf("main_n=%d\n", omp_get_max_threads());
    pthread_barrier_init(&start, NULL, then_set ? t + 1 : t);
    for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, worker, &st[i]);
    if (then_set) {
        printf("main_n=%d\n", omp_get_max_threads());
        omp_set_num_threads(1);
        pthread_barrier_wait(&start);
    }
    long calls = 0, wrong = 0;
    int max_team = 0, min_team = 1 << 30, max_n = 0, min_n = 1 << 30, first_extras = 0;
    double first_lo = 1e300, first_hi = 0, end_lo = 1e300;
    for (int i = 0; i < t; i++) {
        pthread_join(th[i], NULL);
        calls += st[i].calls; wrong += st[i].wrong;
        if (st[i].max_team > max_team) max_team = st[i].max_team;
        if (st[i].min_team < min_team) min_team = st[i].min_team;
        if (st[i].max_n > max_n) max_n = st[i].max_n;
        if (st[i].min_n < min_n) min_n = st[i].min_n;
        first_extras += st[i].first_n > 0 ? st[i].first_n - 1 : 0;
        if (st[i].first_ask_ms < first_lo) first_lo = st[i].first_ask_ms;
        if (st[i].first_answer_ms > first_hi) first_hi = st[i].first_answer_ms;
        if (st[i].end_ms < end_lo) end_lo = st[i].end_ms;
    }
    printf("threads=%d\ncalls=%ld\nwrong_calls=%ld\nmax_team=%d\nmin_team=%d\nmax_n=%d\nmin_n=%d\ndynamic=%d\n",
           t, calls, wrong, max_team, min_team, max_n, min_n, omp_get_dynamic());
    if (mode == NOCLAUSE)
        printf("first_extras=%d\nfirst_ask_spread_ms=%.3f\nended_before_last_answer=%d\n", first_extras,
               first_hi - first_lo, end_lo < first_hi);
    return 0;
}
