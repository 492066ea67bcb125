/* scaling T N [CLAUSE]: the ledger-scaling row of scripts/bench (issue 16,
 * goal 4). T threads start together (barrier) and each enters N short GNU
 * OpenMP regions with a trivial body, one after another. CLAUSE (default 1):
 *   1  #pragma omp parallel num_threads(1): every entry takes the ledger
 *      (enter + leave) but no worker is woken, so the time is the region
 *      entry path itself (libgomp's and, under the shim, the ledger's);
 *   2  num_threads(2): a clause within the budget, kept exactly (team 2 each,
 *      over the budget when threads overlap), so each entry also wakes a worker;
 *   0  no clause: the ledger's "what fits" (2 for a lone caller, mostly 1 when
 *      threads overlap).
 * Prints threads, entries, ns_per_entry = wall / (T * N) (from the barrier
 * to the last thread's end; throughput cost, since the T threads share the
 * cores) and mean_team. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long entries = 100000;
static int clause = 1;
static pthread_barrier_t start;
static volatile int sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *worker(void *out) {
    long teams = 0;
    pthread_barrier_wait(&start);
    for (long r = 0; r < entries; r++) {
        int t = 0;
        if (clause == 1) {
#pragma omp parallel num_threads(1)
            t = omp_get_num_threads();
        } else if (clause == 2) {
#pragma omp parallel num_threads(2)
            {
                if (omp_get_thread_num() == 0) t = omp_get_num_threads();
                sink = 1;
            }
        } else {
#pragma omp parallel
            {
                if (omp_get_thread_num() == 0) t = omp_get_num_threads();
                sink = 1;
            }
        }
        teams += t;
    }
    *(long *)out = teams;
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2) entries = atol(argv[2]);
    if (argc > 3) clause = atoi(argv[3]);
    if (n < 1 || n > 256 || entries < 1 || clause < 0 || clause > 2) {
        fprintf(stderr, "usage: scaling T(1..256) N [CLAUSE 0|1|2]\n");
        return 2;
    }
    pthread_t th[256];
    long teams[256];
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, worker, &teams[i]) != 0) return 1;
    pthread_barrier_wait(&start);
    double t0 = now();
    long total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += teams[i];
    }
    double dt = now() - t0;
    double all = (double)n * (double)entries;
    printf("threads=%d\nclause=%d\nentries=%.0f\nns_per_entry=%.1f\nmean_team=%.3f\n", n, clause, all,
           dt / all * 1e9, total / all);
    return 0;
}
