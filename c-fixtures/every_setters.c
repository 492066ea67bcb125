/* The thread-count setters of MKL and BLIS, each called once with 64 (through
 * the loader's binding, so the shim's hook runs), then the runtime's own
 * count: SYMBOL_then= (64 without the shim, the budget under it).
 * Built twice: -DUSE_MKL (libmkl_rt from PyPI's mkl; run with
 * MKL_DYNAMIC=FALSE, or MKL caps the count at the cores itself) and
 * -DUSE_BLIS (Debian's libblis).
 *
 * libmkl_rt's lowercase mkl_set_num_threads and mkl_set_num_threads_local are
 * aliases of its Fortran entries (MKL_SET_NUM_THREADS, mkl_set_num_threads_):
 * they take the count by reference. C code reaches them by value only
 * through mkl_service.h, whose macros turn them into MKL_Set_Num_Threads and
 * MKL_Set_Num_Threads_Local. So they are called here with a pointer, as their
 * ABI is. */
#include <stdint.h>
#include <stdio.h>

#ifdef USE_MKL
int MKL_Get_Max_Threads(void);
void MKL_Set_Num_Threads(int);
int MKL_Set_Num_Threads_Local(int);
void mkl_set_num_threads(const int *);
int mkl_set_num_threads_local(const int *);

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* every line out before a crash */
    const int want = 64, none = 0;
    printf("initial=%d\n", MKL_Get_Max_Threads());
    MKL_Set_Num_Threads(want);
    printf("MKL_Set_Num_Threads_then=%d\n", MKL_Get_Max_Threads());
    MKL_Set_Num_Threads(1);
    MKL_Set_Num_Threads_Local(want);
    printf("MKL_Set_Num_Threads_Local_then=%d\n", MKL_Get_Max_Threads());
    MKL_Set_Num_Threads_Local(0); /* 0: back to the global setting */
    mkl_set_num_threads(&want);
    printf("mkl_set_num_threads_then=%d\n", MKL_Get_Max_Threads());
    MKL_Set_Num_Threads(1);
    mkl_set_num_threads_local(&want);
    printf("mkl_set_num_threads_local_then=%d\n", MKL_Get_Max_Threads());
    mkl_set_num_threads_local(&none);
    printf("setters_done=1\n");
    return 0;
}
#endif

#ifdef USE_BLIS
typedef int64_t dim_t;
void bli_thread_set_num_threads(dim_t);
dim_t bli_thread_get_num_threads(void);

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("initial=%ld\n", (long)bli_thread_get_num_threads());
    bli_thread_set_num_threads(64);
    printf("bli_thread_set_num_threads_then=%ld\n", (long)bli_thread_get_num_threads());
    printf("setters_done=1\n");
    return 0;
}
#endif
