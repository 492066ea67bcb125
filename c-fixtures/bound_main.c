/* Not linked with any OpenMP runtime. dlopens libbound.so (bound to its own
 * renamed libgomp-deadbeef.so.1) RTLD_LOCAL and runs one of its regions; then
 * loads the system libgomp.so.1 RTLD_GLOBAL (as a later Python extension
 * might), and runs a region from a call site first used after that.
 * usage: bound_main PATH/libbound.so [GLOBAL=1|0] [N=1000000]
 * Prints before_*, after_* (sum, expected, team, ids_ok) and gomp_copies
 * (libgomp objects mapped at the end). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bound_result { long sum; int team; int entered; int ids_ok; };
typedef void (*bound_fn)(long, struct bound_result *);

static int count_gomp(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    const char *slash = strrchr(info->dlpi_name, '/');
    const char *base = slash ? slash + 1 : info->dlpi_name;
    if (strncmp(base, "libgomp", 7) == 0) ++*(int *)data;
    return 0;
}

static void show(const char *tag, struct bound_result *r, long n) {
    printf("%s_sum=%ld\n%s_expected=%ld\n%s_team=%d\n%s_entered=%d\n%s_ids_ok=%d\n",
           tag, r->sum, tag, n * (n + 1) / 2, tag, r->team, tag, r->entered, tag, r->ids_ok);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PATH/libbound.so [GLOBAL] [N]\n", argv[0]); return 2; }
    int global = argc > 2 ? atoi(argv[2]) : 1;
    long n = argc > 3 ? atol(argv[3]) : 1000000;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen_error=%s\n", dlerror()); return 1; }
    bound_fn before = (bound_fn)dlsym(h, "bound_before");
    bound_fn after = (bound_fn)dlsym(h, "bound_after");
    if (!before || !after) { printf("dlsym_error=%s\n", dlerror()); return 1; }

    struct bound_result r;
    before(n, &r);
    show("before", &r, n);

    if (global) {
        void *g = dlopen("libgomp.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (!g) { printf("dlopen_global_error=%s\n", dlerror()); return 1; }
    }
    printf("global_loaded=%d\n", global);

    after(n, &r);
    show("after", &r, n);

    int copies = 0;
    dl_iterate_phdr(count_gomp, &copies);
    printf("gomp_copies=%d\n", copies);
    return 0;
}
