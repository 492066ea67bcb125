/* A preload for tests: counts the C heap calls whose caller is code of
 * libparbudget.so (the shim's own allocations; what libc allocates on the
 * shim's behalf, in setenv or dlopen, has libc as the caller and is not
 * counted). Preload it before the shim: LD_PRELOAD="libcountmalloc.so shim".
 * Prints shim_heap_calls=N to stderr at exit. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_long calls;
static __thread int inside;

/* dladdr takes the loader's (recursive) lock and allocates nothing. */
static void note(void *caller) {
    if (inside) return;
    inside = 1;
    Dl_info info;
    if (dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "libparbudget"))
        atomic_fetch_add(&calls, 1);
    inside = 0;
}

void *malloc(size_t n) { note(__builtin_return_address(0)); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(__builtin_return_address(0)); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { note(__builtin_return_address(0)); return __libc_realloc(p, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    note(__builtin_return_address(0));
    void *p = __libc_memalign(align, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

__attribute__((destructor)) static void report(void) {
    char line[64];
    int len = snprintf(line, sizeof line, "shim_heap_calls=%ld\n", atomic_load(&calls));
    if (write(2, line, len) < 0) {}
}
