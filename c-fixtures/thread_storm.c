/* W threads each create and join N short threads: a storm to count exactly.
 * The short threads end in turn by returning, by pthread_exit, and by being
 * cancelled. usage: thread_storm W N */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static int per;
static void *nothing(void *p) { return p; }
static void *exits(void *p) { pthread_exit(p); }
static void *waits_for_cancel(void *p) {
    for (;;) pthread_testcancel();
    return p;
}
static void *creator(void *p) {
    for (int i = 0; i < per; i++) {
        pthread_t t;
        void *(*fn)(void *) = i % 3 == 0 ? nothing : i % 3 == 1 ? exits : waits_for_cancel;
        if (pthread_create(&t, NULL, fn, NULL) == 0) {
            if (fn == waits_for_cancel) pthread_cancel(t);
            pthread_join(t, NULL);
        } else {
            __sync_fetch_and_add((int *)p, 1);
        }
    }
    return NULL;
}
int main(int argc, char **argv) {
    int w = argc > 1 ? atoi(argv[1]) : 4;
    per = argc > 2 ? atoi(argv[2]) : 1000;
    int failed = 0;
    pthread_t th[64];
    for (int i = 0; i < w && i < 64; i++) pthread_create(&th[i], NULL, creator, &failed);
    for (int i = 0; i < w && i < 64; i++) pthread_join(th[i], NULL);
    printf("created=%d\nfailed=%d\n", w + w * per - failed, failed);
    return 0;
}
