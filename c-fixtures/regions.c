/* N short regions: a parallel-for reduction over LEN doubles each (the field
 * notes' oversubscription workload). usage: regions N LEN
 * loop_s: the regions' own time, without start-up and exit (an exit while
 * libgomp's idle worker still spins takes a few ms more on this machine, a
 * whole scheduler tick or two, which the process's wall time carries).
 * region_us: the median over blocks of CHUNK regions of a block's time per
 * region: a block that another tenant of the machine interrupted counts
 * once, as one slow block, instead of adding its delay to the total. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHUNK 100
static double since(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) * 1e-9;
}
static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int len = argc > 2 ? atoi(argv[2]) : 40960;
    double *a = malloc(sizeof(double) * len);
    for (int i = 0; i < len; i++) a[i] = i * 1e-6;
    double total = 0;
    long teams = 0;
    struct timespec t0, t1, c0, c1;
    int nchunks = n / CHUNK, k = 0;
    double *chunk = malloc(sizeof(double) * (nchunks + 1));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    c0 = t0;
    for (int r = 0; r < n; r++) {
        double s = 0;
        int t = 1;
#pragma omp parallel for reduction(+ : s)
        for (int i = 0; i < len; i++) {
            s += a[i];
            if (i == 0) t = omp_get_num_threads();
        }
        total += s;
        teams += t;
        if ((r + 1) % CHUNK == 0 && k < nchunks) {
            clock_gettime(CLOCK_MONOTONIC, &c1);
            chunk[k++] = since(&c0, &c1) / CHUNK;
            c0 = c1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("regions=%d\nmean_team=%.3f\nchecksum=%.3f\n", n, (double)teams / n, total);
    printf("loop_s=%.6f\n", since(&t0, &t1));
    if (k > 0) {
        qsort(chunk, k, sizeof(double), cmp);
        printf("region_us=%.4f\n", (k % 2 ? chunk[k / 2] : (chunk[k / 2 - 1] + chunk[k / 2]) / 2) * 1e6);
    }
    return 0;
}
