/* A constructor (running inside dlopen, which holds glibc's dl_load_lock)
 * waits for a thread that itself creates a thread. A pthread_create hook
 * that takes the loader's lock (dladdr, dlopen) deadlocks here. */
#include <pthread.h>
static void *leaf(void *p) { return p; }
static void *middle(void *p) {
    pthread_t t;
    pthread_create(&t, NULL, leaf, NULL);
    pthread_join(t, NULL);
    return p;
}
static int done;
__attribute__((constructor)) static void wait_for_threads(void) {
    pthread_t t;
    pthread_create(&t, NULL, middle, NULL);
    pthread_join(t, NULL);
    done = 1;
}
int ctorwait_done(void) { return done; }
