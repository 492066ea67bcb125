/* Linked to libearly (threads from a constructor) and libgomp. */
#include <omp.h>
#include <stdio.h>
int early_threads_ran(void);
int main(void) {
    omp_set_num_threads(64);
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
        team = omp_get_num_threads();
    }
    printf("early_threads=%d\nteam=%d\n", early_threads_ran(), team);
    return 0;
}
