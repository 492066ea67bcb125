/* Nested regions: an outer team of OUTER threads, each running an inner region
 * of INNER threads. Prints the outer team and the largest inner team. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int outer = argc > 1 ? atoi(argv[1]) : 2, inner = argc > 2 ? atoi(argv[2]) : 2;
    omp_set_max_active_levels(2);
    int outer_team = 0, inner_max = 0;
#pragma omp parallel num_threads(outer)
    {
#pragma omp single
        outer_team = omp_get_num_threads();
#pragma omp parallel num_threads(inner)
        {
#pragma omp single
            {
                int t = omp_get_num_threads();
#pragma omp critical
                if (t > inner_max) inner_max = t;
            }
        }
    }
    /* After the nest, a lone region gets the whole budget back. */
    int after = 0;
#pragma omp parallel
    {
#pragma omp single
        after = omp_get_num_threads();
    }
    printf("outer_team=%d\ninner_max=%d\nafter_team=%d\n", outer_team, inner_max, after);
    return 0;
}
