/* lease_idle MODE N [IDLE_MS]: a thread runs N short GNU OpenMP regions
 * without a clause, then goes idle while another runs regions.
 *   thread: the main thread runs N regions, then starts a thread that runs N
 *           regions while the main thread waits for it; then the main thread
 *           runs N more.
 *   idle:   the main thread runs N regions, prints `idle=1` (flushed), sleeps
 *           IDLE_MS, then runs N more (another process runs its own
 *           regions meanwhile).
 * Each region sums 4096 doubles (a reduction: its value must not depend on
 * the team). Prints first_min_team, first_mean_team, worker_min_team,
 * worker_mean_team (thread mode), after_min_team, after_mean_team, sum. */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEN 4096
static double a[LEN];
static long n = 1000;

struct teams {
    int min;
    double mean;
    double sum;
};

static struct teams regions(void) {
    struct teams t = {1 << 30, 0, 0};
    long total = 0;
    for (long r = 0; r < n; r++) {
        double s = 0;
        int team = 1;
#pragma omp parallel for reduction(+ : s)
        for (int i = 0; i < LEN; i++) {
            s += a[i];
            if (i == 0) team = omp_get_num_threads();
        }
        t.sum += s;
        total += team;
        if (team < t.min) t.min = team;
    }
    t.mean = (double)total / n;
    return t;
}

static struct teams worker_teams;
static void *worker(void *arg) {
    (void)arg;
    worker_teams = regions();
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "thread";
    n = argc > 2 ? atol(argv[2]) : 1000;
    long idle_ms = argc > 3 ? atol(argv[3]) : 1000;
    for (int i = 0; i < LEN; i++) a[i] = i * 1e-3;
    struct teams first = regions();
    printf("first_min_team=%d\nfirst_mean_team=%.3f\n", first.min, first.mean);
    double sum = first.sum;
    if (strcmp(mode, "thread") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
        pthread_join(t, NULL);
        printf("worker_min_team=%d\nworker_mean_team=%.3f\n", worker_teams.min, worker_teams.mean);
        sum += worker_teams.sum;
    } else {
        printf("idle=1\n");
        fflush(stdout);
        struct timespec ts = {idle_ms / 1000, (idle_ms % 1000) * 1000000L};
        /* The whole time, even when a signal (a report signal) cuts it. */
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    struct teams after = regions();
    sum += after.sum;
    printf("after_min_team=%d\nafter_mean_team=%.3f\nsum=%.6f\n", after.min, after.mean, sum);
    return 0;
}
