/* Debian's OpenBLAS (pthreads): thread count before and after
 * openblas_set_num_threads(N), and a dgemm that must still be right. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 64;
    printf("initial=%d\n", openblas_get_num_threads());
    openblas_set_num_threads(want);
    printf("after_set=%d\n", openblas_get_num_threads());
    int n = 256;
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = malloc(sizeof(double) * n * n);
    for (int i = 0; i < n * n; i++) { a[i] = 1.0; b[i] = 2.0; c[i] = 0.0; }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a, n, b, n, 0.0, c, n);
    printf("dgemm_ok=%d\n", c[0] == 2.0 * n && c[n * n - 1] == 2.0 * n);
    return 0;
}
