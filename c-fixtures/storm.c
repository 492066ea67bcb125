/* A fork and thread storm: F threads fork CHILDREN children in all (each
 * forking thread first leads a 2-thread GNU OpenMP team, so every fork goes
 * through the shim's pool pause; each child runs a region, then exits with a
 * code that says whether it was right), while other
 * threads run regions and BLAS calls, create and join threads, vfork+exec
 * and posix_spawn /bin/true.
 * usage: storm F CHILDREN   prints children=, children_ok=, spawns_ok=,
 * regions_ok=, blas_ok=, threads_ok= */
#define _GNU_SOURCE
#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static atomic_int stop, children, children_ok, spawns_ok = 0, spawns = 0;
static atomic_long regions_bad, blas_bad, threads_bad;
static int per_thread;

static int region_ok(void) {
    long s = 0;
#pragma omp parallel for num_threads(2) reduction(+ : s)
    for (int i = 0; i < 1000; i++) s += i;
    return s == 499500L;
}

static int blas_ok(void) {
    double a[16], b[16], c[16];
    for (int i = 0; i < 16; i++) { a[i] = 1.0; b[i] = 2.0; c[i] = 0.0; }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 4, 4, 4, 1.0, a, 4, b, 4, 0.0, c, 4);
    for (int i = 0; i < 16; i++) if (c[i] != 8.0) return 0;
    return 1;
}

static void *forker(void *p) {
    (void)p;
    for (int i = 0; i < per_thread; i++) {
        if (!region_ok()) atomic_fetch_add(&regions_bad, 1);
        pid_t pid = fork();
        /* The child runs an OpenMP region (the shim's fork protocol and its
         * ledger in the child) and exits. No BLAS there: OpenBLAS's memory
         * lock may be held by a parent thread at fork time and is never reset
         * in the child (a hang with or without the shim). */
        if (pid == 0) _exit(region_ok() ? 0 : 3);
        if (pid < 0) continue;
        int st = 0;
        waitpid(pid, &st, 0);
        atomic_fetch_add(&children, 1);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) atomic_fetch_add(&children_ok, 1);
    }
    return NULL;
}

static void *worker(void *p) {
    (void)p;
    while (!atomic_load(&stop)) {
        if (!region_ok()) atomic_fetch_add(&regions_bad, 1);
        if (!blas_ok()) atomic_fetch_add(&blas_bad, 1);
    }
    return NULL;
}

static void *nothing(void *p) { return p; }

static void *creator(void *p) {
    (void)p;
    while (!atomic_load(&stop)) {
        pthread_t t;
        void *r = NULL;
        if (pthread_create(&t, NULL, nothing, (void *)1) == 0) {
            pthread_join(t, &r);
            if (r != (void *)1) atomic_fetch_add(&threads_bad, 1);
        }
    }
    return NULL;
}

static void *spawner(void *p) {
    (void)p;
    char *argv[] = {"/bin/true", NULL};
    while (!atomic_load(&stop)) {
        pid_t pid;
        int st = 0;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) == 0) {
            waitpid(pid, &st, 0);
            atomic_fetch_add(&spawns, 1);
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) atomic_fetch_add(&spawns_ok, 1);
        }
        pid = vfork();
        if (pid == 0) { execve("/bin/true", argv, environ); _exit(127); }
        if (pid > 0) {
            waitpid(pid, &st, 0);
            atomic_fetch_add(&spawns, 1);
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) atomic_fetch_add(&spawns_ok, 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int f = argc > 1 ? atoi(argv[1]) : 8, total = argc > 2 ? atoi(argv[2]) : 1000;
    per_thread = total / f;
    pthread_t forkers[64], others[4];
    if (f > 64) f = 64;
    pthread_create(&others[0], NULL, worker, NULL);
    pthread_create(&others[1], NULL, worker, NULL);
    pthread_create(&others[2], NULL, creator, NULL);
    pthread_create(&others[3], NULL, spawner, NULL);
    for (int i = 0; i < f; i++) pthread_create(&forkers[i], NULL, forker, NULL);
    for (int i = 0; i < f; i++) pthread_join(forkers[i], NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(others[i], NULL);
    printf("children=%d\nchildren_ok=%d\nspawns=%d\nspawns_ok=%d\nregions_bad=%ld\nblas_bad=%ld\nthreads_bad=%ld\n",
           atomic_load(&children), atomic_load(&children_ok), atomic_load(&spawns), atomic_load(&spawns_ok),
           atomic_load(&regions_bad), atomic_load(&blas_bad), atomic_load(&threads_bad));
    return 0;
}
