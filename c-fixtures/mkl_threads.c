/* Intel MKL (libmkl_rt from PyPI's mkl, Intel OpenMP threading): reports the
 * thread count after MKL_Set_Num_Threads(SET), then T threads each run N
 * cblas_dgemm calls (256x256), checking results. usage: mkl_threads SET T N */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { RowMajor = 101, NoTrans = 111 };
void cblas_dgemm(int, int, int, int, int, int, double, const double *, int, const double *, int,
                 double, double *, int);
int MKL_Get_Max_Threads(void);
void MKL_Set_Num_Threads(int);

static int calls = 10;
static void *work(void *out) {
    int n = 256, ok = 1;
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = malloc(sizeof(double) * n * n);
    for (int i = 0; i < n * n; i++) { a[i] = 1.0; b[i] = 0.5; }
    for (int r = 0; r < calls; r++) {
        cblas_dgemm(RowMajor, NoTrans, NoTrans, n, n, n, 2.0, a, n, b, n, 0.0, c, n);
        ok &= c[0] == (double)n && c[n * n - 1] == (double)n;
    }
    *(int *)out = ok;
    free(a); free(b); free(c);
    return NULL;
}
int main(int argc, char **argv) {
    int set = argc > 1 ? atoi(argv[1]) : 64, t = argc > 2 ? atoi(argv[2]) : 1;
    if (argc > 3) calls = atoi(argv[3]);
    printf("initial=%d\n", MKL_Get_Max_Threads());
    if (set > 0) MKL_Set_Num_Threads(set);
    printf("after_set=%d\n", MKL_Get_Max_Threads());
    pthread_t th[64];
    int ok[64], all = 1;
    if (t > 64) t = 64;
    for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, work, &ok[i]);
    for (int i = 0; i < t; i++) { pthread_join(th[i], NULL); all &= ok[i]; }
    printf("results_ok=%d\n", all);
    return 0;
}
