/* fork_gomp_cost MODE N [LEN]: what a fork from the master thread of a GNU
 * OpenMP (libgomp) team costs. Every region is `parallel for
 * num_threads(2) reduction(+)` over LEN doubles (default 40960) on the main
 * thread, so the main thread is the master of a 2-thread team before each
 * fork (under parbudget's default fork policy `fresh` the shim frees that
 * pool with omp_pause_resource_all(omp_pause_hard) before every fork, and the
 * next region builds it again). Every child calls _exit(0) at once: it runs no
 * region, so it does not hang without the shim either. 20 warm-up iterations.
 *
 *   fork N     N x { region; time: fork + child _exit + waitpid }
 *              us_per_op = mean time of one fork + _exit + waitpid
 *   rebuild N  N x { fork + _exit + waitpid; time: region 1; time: region 2 }
 *              us_per_op = mean time of the parent's first region after a fork;
 *              warm_us = mean time of the region right after it (warm pool)
 *   loop N     the whole loop N x { region; fork + _exit + waitpid }, timed,
 *              then the same loop without the fork, timed
 *              total_ms = the loop with fork; nofork_ms = without;
 *              us_per_op = (total - nofork) / N, the added cost per iteration
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double *g_buf;
static int g_len = 40960;
static double g_sink;
static long g_teams, g_regions;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void region(void) {
    double s = 0;
    int t = 0;
#pragma omp parallel for num_threads(2) reduction(+ : s)
    for (int i = 0; i < g_len; i++) {
        s += g_buf[i] * 0.5 + i;
        if (i == 0) t = omp_get_num_threads();
    }
    g_sink += s;
    g_teams += t;
    g_regions++;
}

static int fork_wait(void) {
    pid_t p = fork();
    if (p < 0) return -1;
    if (p == 0) _exit(0);
    int st = 0;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "fork";
    int n = argc > 2 ? atoi(argv[2]) : 1000;
    if (argc > 3) g_len = atoi(argv[3]);
    g_buf = calloc(g_len, sizeof(double));
    for (int i = 0; i < g_len; i++) g_buf[i] = i % 7;
    for (int i = 0; i < 20; i++) {
        region();
        if (fork_wait()) return 1;
    }
    g_teams = g_regions = 0;
    if (!strcmp(mode, "fork")) {
        double total = 0;
        for (int i = 0; i < n; i++) {
            region();
            double t0 = now();
            if (fork_wait()) return 1;
            total += now() - t0;
        }
        printf("forks=%d\nus_per_op=%.3f\n", n, total / n * 1e6);
    } else if (!strcmp(mode, "rebuild")) {
        double first = 0, warm = 0;
        for (int i = 0; i < n; i++) {
            if (fork_wait()) return 1;
            double t0 = now();
            region();
            double t1 = now();
            region();
            double t2 = now();
            first += t1 - t0;
            warm += t2 - t1;
        }
        printf("forks=%d\nus_per_op=%.3f\nwarm_us=%.3f\nfirst_minus_warm_us=%.3f\n", n, first / n * 1e6,
               warm / n * 1e6, (first - warm) / n * 1e6);
    } else if (!strcmp(mode, "loop")) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            region();
            if (fork_wait()) return 1;
        }
        double t1 = now();
        for (int i = 0; i < n; i++) region();
        double t2 = now();
        printf("forks=%d\ntotal_ms=%.3f\nnofork_ms=%.3f\nus_per_op=%.3f\n", n, (t1 - t0) * 1e3,
               (t2 - t1) * 1e3, ((t1 - t0) - (t2 - t1)) / n * 1e6);
    } else {
        fprintf(stderr, "fork_gomp_cost: unknown mode %s\n", mode);
        return 2;
    }
    printf("mean_team=%.3f\nchecksum=%.6g\n", g_regions ? (double)g_teams / g_regions : 0.0, g_sink);
    return 0;
}
