/* The ladder's bottom rung (scripts/ladder): a preload whose GOMP_parallel
 * only forwards to the next definition, as the least any interposer does. */
#define _GNU_SOURCE
#include <dlfcn.h>

typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    static gomp_parallel_fn real;
    if (!real) real = (gomp_parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
    real(fn, data, num_threads, flags);
}
