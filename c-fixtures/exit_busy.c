/* A process that ends while its threads are busy: THREADS threads spin on
 * the CPU (signals directed at the process land on any of them) and the main
 * thread ends the process after MS milliseconds, through exit(0) or, with
 * mode `_exit`, through _exit(0).
 * usage: exit_busy THREADS MS [exit|_exit]   prints threads=N, exits 0 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

static void *spin(void *arg) {
    (void)arg;
    while (!stop) {
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int n = atoi(argv[1]);
    long ms = atol(argv[2]);
    int quick = argc > 3 && strcmp(argv[3], "_exit") == 0;
    pthread_t t;
    int made = 0;
    for (int i = 0; i < n; i++)
        if (pthread_create(&t, NULL, spin, NULL) == 0) made++;
    printf("threads=%d\n", made);
    fflush(stdout);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    if (quick) _exit(0);
    exit(0);
}
