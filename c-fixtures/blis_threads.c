/* BLIS (Debian's libblis): the thread count after bli_thread_set_num_threads(N). */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
typedef int64_t dim_t;
void bli_thread_set_num_threads(dim_t n);
dim_t bli_thread_get_num_threads(void);
int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 64;
    bli_thread_set_num_threads(want);
    printf("after_set=%ld\n", (long)bli_thread_get_num_threads());
    return 0;
}
