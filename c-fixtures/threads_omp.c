/* The main thread starts T threads (default 4); they wait at a barrier so they
 * run concurrently, then each enters R regions (default 300) of a short
 * parallel region and records its team sizes. Prints the mean team and the
 * most extra workers (thread number > 0) ever inside a region body at once,
 * across all teams: what the budget bounds, whatever the scheduling. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static int regions = 300;
static pthread_barrier_t start;
static int extras_now, extras_max;
static double work_of(int r) {
    double s = 0;
    for (int i = 0; i < 20000; i++) s += (i ^ r) * 1e-9;
    return s;
}
static void *worker(void *out) {
    pthread_barrier_wait(&start);
    long teams = 0;
    double acc = 0;
    for (int r = 0; r < regions; r++) {
        int t = 0;
#pragma omp parallel reduction(+ : acc)
        {
#pragma omp single
            t = omp_get_num_threads();
            int extra = omp_get_thread_num() > 0;
            if (extra) {
                int now = __atomic_add_fetch(&extras_now, 1, __ATOMIC_SEQ_CST);
                int seen = __atomic_load_n(&extras_max, __ATOMIC_SEQ_CST);
                while (now > seen &&
                       !__atomic_compare_exchange_n(&extras_max, &seen, now, 0, __ATOMIC_SEQ_CST,
                                                    __ATOMIC_SEQ_CST)) {
                }
            }
            acc += work_of(r);
            if (extra) __atomic_sub_fetch(&extras_now, 1, __ATOMIC_SEQ_CST);
        }
        teams += t;
    }
    *(long *)out = teams;
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) regions = atoi(argv[2]);
    pthread_t th[64];
    long teams[64];
    if (n > 64) n = 64;
    pthread_barrier_init(&start, NULL, n);
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, worker, &teams[i]);
    long total = 0;
    for (int i = 0; i < n; i++) { pthread_join(th[i], NULL); total += teams[i]; }
    printf("threads=%d\nregions=%d\nmean_team=%.3f\nmax_extras=%d\n", n, n * regions,
           (double)total / (n * regions), extras_max);
    return 0;
}
