/* T threads each run N cblas_dgemm calls (256x256) on Debian's OpenBLAS,
 * checking every result. usage: blas_threads T N */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static int calls = 20;
static void *work(void *out) {
    int n = 256, ok = 1;
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = malloc(sizeof(double) * n * n);
    for (int i = 0; i < n * n; i++) { a[i] = 1.0; b[i] = 0.5; }
    for (int r = 0; r < calls; r++) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 2.0, a, n, b, n, 0.0, c, n);
        ok &= c[0] == (double)n && c[n * n - 1] == (double)n;
    }
    *(int *)out = ok;
    free(a); free(b); free(c);
    return NULL;
}
int main(int argc, char **argv) {
    int t = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2) calls = atoi(argv[2]);
    pthread_t th[64];
    int ok[64];
    if (t > 64) t = 64;
    for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, work, &ok[i]);
    int all = 1;
    for (int i = 0; i < t; i++) { pthread_join(th[i], NULL); all &= ok[i]; }
    printf("threads=%d\nresults_ok=%d\n", t, all);
    return 0;
}
