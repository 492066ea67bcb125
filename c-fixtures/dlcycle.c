/* dlopen / use / dlclose cycles of two libraries built from the same object
 * (so their call sites sit at the same offsets), one bound to the system
 * libgomp and one to a renamed copy. When the second is loaded at the
 * address the first had, a cached "caller -> runtime copy" answer keyed by
 * address alone would send its regions to the wrong copy: every worker then
 * sees "thread 0 of 1" and the sum is wrong.
 * usage: dlcycle CYCLES LIB_A LIB_B [PIN...]   prints cycles=, wrong=,
 * same_address=, min_team=, max_team=
 * PIN: libraries loaded once and kept (the two libgomp copies): without the
 * shim, unloading a libgomp whose pool threads still run crashes the process
 * (their code is unmapped), so the plain baseline keeps them loaded. Under
 * the shim the registry pins every runtime copy it finds. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct bound_result { long sum; int team; int entered; int ids_ok; };
typedef void (*bound_fn)(long, struct bound_result *);

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s CYCLES LIB_A LIB_B\n", argv[0]); return 2; }
    int cycles = atoi(argv[1]);
    const long n = 100000;
    int wrong = 0, same = 0, min_team = 1 << 30, max_team = 0;
    uintptr_t last_a = 0;
    for (int i = 4; i < argc; i++)
        if (!dlopen(argv[i], RTLD_NOW | RTLD_LOCAL)) { printf("pin_error=%s\n", dlerror()); return 1; }
    for (int c = 0; c < cycles; c++) {
        for (int which = 0; which < 2; which++) {
            void *h = dlopen(argv[2 + which], RTLD_NOW | RTLD_LOCAL);
            if (!h) { printf("dlopen_error=%s\n", dlerror()); return 1; }
            bound_fn f = (bound_fn)dlsym(h, "bound_before");
            if (!f) { printf("dlsym_error=%s\n", dlerror()); return 1; }
            if (which == 0) last_a = (uintptr_t)f;
            else if ((uintptr_t)f == last_a) same++;
            struct bound_result r;
            f(n, &r);
            if (r.sum != n * (n + 1) / 2 || !r.ids_ok) wrong++;
            if (r.team < min_team) min_team = r.team;
            if (r.team > max_team) max_team = r.team;
            dlclose(h);
        }
    }
    printf("cycles=%d\nwrong=%d\nsame_address=%d\nmin_team=%d\nmax_team=%d\n", cycles, wrong, same, min_team, max_team);
    return 0;
}
