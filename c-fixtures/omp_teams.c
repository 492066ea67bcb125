/* Reports OpenMP team sizes: after an optional omp_set_num_threads(N), for a
 * region without clause and one with num_threads(CLAUSE).
 * usage: omp_teams [SET] [CLAUSE]   prints key=value lines. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int set = argc > 1 ? atoi(argv[1]) : 0;
    int clause = argc > 2 ? atoi(argv[2]) : 64;
    printf("initial_max_threads=%d\n", omp_get_max_threads());
    if (set > 0) omp_set_num_threads(set);
    printf("max_threads=%d\n", omp_get_max_threads());
    int team = 0, clause_team = 0, loop_team = 0;
#pragma omp parallel
    {
#pragma omp single
        team = omp_get_num_threads();
    }
#pragma omp parallel num_threads(clause)
    {
#pragma omp single
        clause_team = omp_get_num_threads();
    }
    long sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(dynamic)
    for (int i = 0; i < 1000; i++) {
        sum += i;
        if (i == 0) loop_team = omp_get_num_threads();
    }
    printf("team=%d\nclause_team=%d\nloop_team=%d\nsum=%ld\n", team, clause_team, loop_team, sum);
#ifdef KMP_VERSION_MAJOR
    /* LLVM libomp / Intel libiomp5 (their omp.h): how long an idle worker
     * spins before it sleeps, in ms, as the runtime took it from the
     * environment at its first region. */
    printf("blocktime_ms=%d\n", kmp_get_blocktime());
#endif
    return 0;
}
