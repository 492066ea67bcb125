/* create_cost N: N times pthread_create + pthread_join of a thread that does
 * nothing, after 100 warm-up pairs. Prints the mean cost of one pair. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *nothing(void *p) { return p; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    pthread_t t;
    for (int i = 0; i < 100; i++) {
        if (pthread_create(&t, NULL, nothing, NULL) != 0) return 1;
        pthread_join(t, NULL);
    }
    double t0 = now();
    for (int i = 0; i < n; i++) {
        if (pthread_create(&t, NULL, nothing, NULL) != 0) return 1;
        pthread_join(t, NULL);
    }
    double dt = now() - t0;
    printf("pairs=%d\nus_per_op=%.3f\n", n, dt / n * 1e6);
    return 0;
}
