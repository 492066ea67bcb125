/* pthread_create called from a thread with a small stack, right after a new
 * runtime library was loaded (so the shim's hook has discovery work to do
 * on that stack). usage: smallstack STACK_KIB LIB   prints ok=1 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *leaf(void *p) { return p; }

static void *small(void *p) {
    pthread_t t;
    if (pthread_create(&t, NULL, leaf, p) != 0) return NULL;
    void *r = NULL;
    pthread_join(t, &r);
    return r;
}

int main(int argc, char **argv) {
    size_t kib = argc > 1 ? (size_t)atoi(argv[1]) : 64;
    if (argc > 2 && !dlopen(argv[2], RTLD_NOW | RTLD_LOCAL)) { printf("dlopen_error=%s\n", dlerror()); return 1; }
    pthread_attr_t a;
    pthread_attr_init(&a);
    if (pthread_attr_setstacksize(&a, kib * 1024) != 0) { printf("stacksize_error=1\n"); return 1; }
    pthread_t t;
    static int token = 42;
    if (pthread_create(&t, &a, small, &token) != 0) { printf("create_error=1\n"); return 1; }
    void *r = NULL;
    pthread_join(t, &r);
    printf("ok=%d\n", r == &token);
    return 0;
}
