/* The OpenMP half of the two-phase program (scripts/bench-src/twophase.py),
 * loaded through ctypes. Built by scripts/bench into target/bench/libtwophase.so
 * (gcc -fopenmp: GNU libgomp).
 *
 * tp_regions(regions, len, seed, teams): `regions` parallel loops without a
 * num_threads clause (static schedule), each over `len` elements of integer
 * hashing with a 64-bit integer reduction, so the result is exact at any team
 * size (unsigned addition is associative): the checksum must be the same with
 * and without the shim. Adds each region's team size to *teams.
 *
 * tp_set_threads(n): omp_set_num_threads(n) on the calling thread (its own
 * nthreads ICV). */
#include <omp.h>
#include <stdint.h>

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t tp_regions(int regions, int len, uint64_t seed, long *teams) {
    uint64_t total = 0;
    for (int r = 0; r < regions; r++) {
        uint64_t acc = 0;
        int team = 0;
        uint64_t base = mix(seed * 1000003u + (uint64_t)r);
#pragma omp parallel for schedule(static) reduction(+ : acc)
        for (int i = 0; i < len; i++) {
            if (i == 0) team = omp_get_num_threads();
            acc += mix(base + (uint64_t)i) >> 16;
        }
        *teams += team;
        total += acc;
    }
    return total;
}

void tp_set_threads(int n) { omp_set_num_threads(n); }
