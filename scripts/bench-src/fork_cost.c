/* fork_cost N: N times fork(); the child calls _exit(0) at once and the parent
 * waits for it, after 20 warm-up forks. Prints the mean cost of one
 * fork + exit + wait. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int one(void) {
    pid_t p = fork();
    if (p < 0) return -1;
    if (p == 0) _exit(0);
    int st = 0;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    for (int i = 0; i < 20; i++)
        if (one()) return 1;
    double t0 = now();
    for (int i = 0; i < n; i++)
        if (one()) return 1;
    double dt = now() - t0;
    printf("forks=%d\nus_per_op=%.3f\n", n, dt / n * 1e6);
    return 0;
}
