/* N short regions: a parallel-for reduction over LEN doubles each (the field
 * notes' oversubscription workload). usage: regions N LEN */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int len = argc > 2 ? atoi(argv[2]) : 40960;
    double *a = malloc(sizeof(double) * len);
    for (int i = 0; i < len; i++) a[i] = i * 1e-6;
    double total = 0;
    long teams = 0;
    for (int r = 0; r < n; r++) {
        double s = 0;
        int t = 1;
#pragma omp parallel for reduction(+ : s)
        for (int i = 0; i < len; i++) {
            s += a[i];
            if (i == 0) t = omp_get_num_threads();
        }
        total += s;
        teams += t;
    }
    printf("regions=%d\nmean_team=%.3f\nchecksum=%.3f\n", n, (double)teams / n, total);
    return 0;
}
