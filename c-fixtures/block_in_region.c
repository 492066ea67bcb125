/* A process stalled inside an OpenMP region (blocks on a pipe nobody writes),
 * for the signal report. Prints ready=1 once the region runs. */
#include <omp.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int fds[2];
    if (pipe(fds)) return 1;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_thread_num() == 0) {
            printf("ready=1\n");
            fflush(stdout);
            char c;
            (void)!read(fds[0], &c, 1);
        }
    }
    return 0;
}
