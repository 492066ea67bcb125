/* A library whose constructor starts threads, as numpy's OpenBLAS does: these
 * pthread_create calls may reach the shim before its own constructor ran. */
#include <pthread.h>
#include <stdio.h>

static volatile int ran;
static void *work(void *p) { __sync_fetch_and_add(&ran, 1); return p; }

__attribute__((constructor)) static void early(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, work, NULL);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
}

int early_threads_ran(void) { return ran; }
