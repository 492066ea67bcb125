/* LLVM/Intel regions as clang emits them: __kmpc_fork_call for every
 * `parallel`, preceded by __kmpc_push_num_threads when it has a num_threads
 * clause. Built with clang for LLVM libomp and for Intel libiomp5. For each
 * region prints NAME_team= (the team the body saw) and NAME_ok= (every thread
 * 0..team-1 ran the body once and the computed result is the closed form):
 *
 *   noclause    `parallel` without a clause (fork_call alone)
 *   clause2     num_threads(2)
 *   clause8     num_threads(8) (above a budget of 2: cut to it under the shim)
 *   manyargs    num_threads(2), the body shares 12 variables: the variadic
 *               fork_call passes most of them on the stack
 *   loop        num_threads(2), a dynamic worksharing loop and a reduction
 *   afterset    no clause, after omp_set_num_threads(8) and
 *               omp_get_max_threads() (the promise of that answer)
 *
 * Also the queries (omp_get_max_threads, omp_get_thread_limit, and
 * omp_get_max_threads after omp_set_num_threads(8)), and fork_calls= /
 * push_calls= (how many of each this program made: every fork_call is a
 * region the shim's report must count). */
#include <omp.h>
#include <stdio.h>

enum { N = 1000 };

struct seen {
    int team;
    int bodies;
    unsigned ids;
    int twice;
};

static void note(struct seen *s) {
    int t = omp_get_num_threads();
    unsigned bit = 1u << (omp_get_thread_num() & 31);
    __atomic_add_fetch(&s->bodies, 1, __ATOMIC_SEQ_CST);
    if (__atomic_fetch_or(&s->ids, bit, __ATOMIC_SEQ_CST) & bit)
        __atomic_store_n(&s->twice, 1, __ATOMIC_SEQ_CST);
    int cur = __atomic_load_n(&s->team, __ATOMIC_SEQ_CST);
    while (t > cur && !__atomic_compare_exchange_n(&s->team, &cur, t, 0, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {
    }
}

static int seen_ok(const struct seen *s) {
    return s->team >= 1 && s->team <= 31 && s->bodies == s->team && !s->twice &&
           s->ids == (1u << s->team) - 1;
}

static void report(const char *name, const struct seen *s, int ok) {
    printf("%s_team=%d\n%s_ok=%d\n", name, s->team, name, ok && seen_ok(s));
}

/* Each thread adds its id+1: the sum is team*(team+1)/2. */
#define PLAIN_BODY(s, sum)                                                                        \
    {                                                                                             \
        note(&s);                                                                                 \
        __atomic_add_fetch(&sum, omp_get_thread_num() + 1, __ATOMIC_SEQ_CST);                     \
    }

int main(void) {
    int fork_calls = 0, push_calls = 0;

    {
        struct seen s = {0};
        long sum = 0;
#pragma omp parallel
        PLAIN_BODY(s, sum)
        fork_calls++;
        report("noclause", &s, sum == (long)s.team * (s.team + 1) / 2);
    }
    {
        struct seen s = {0};
        long sum = 0;
#pragma omp parallel num_threads(2)
        PLAIN_BODY(s, sum)
        fork_calls++, push_calls++;
        report("clause2", &s, sum == (long)s.team * (s.team + 1) / 2);
    }
    {
        struct seen s = {0};
        long sum = 0;
#pragma omp parallel num_threads(8)
        PLAIN_BODY(s, sum)
        fork_calls++, push_calls++;
        report("clause8", &s, sum == (long)s.team * (s.team + 1) / 2);
    }
    {
        /* Twelve shared variables plus the seen record: clang passes each as
         * a pointer argument of __kmpc_fork_call, most of them on the stack. */
        struct seen s = {0};
        long a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0, a9 = 0,
             a10 = 0, a11 = 0;
#pragma omp parallel num_threads(2)
        {
            note(&s);
            long v = omp_get_thread_num() + 1;
            __atomic_add_fetch(&a0, v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a1, 2 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a2, 3 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a3, 4 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a4, 5 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a5, 6 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a6, 7 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a7, 8 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a8, 9 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a9, 10 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a10, 11 * v, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&a11, 12 * v, __ATOMIC_SEQ_CST);
        }
        fork_calls++, push_calls++;
        long t = (long)s.team * (s.team + 1) / 2;
        int ok = a0 == t && a1 == 2 * t && a2 == 3 * t && a3 == 4 * t && a4 == 5 * t &&
                 a5 == 6 * t && a6 == 7 * t && a7 == 8 * t && a8 == 9 * t && a9 == 10 * t &&
                 a10 == 11 * t && a11 == 12 * t;
        report("manyargs", &s, ok);
    }
    {
        /* A parallel with a worksharing loop inside (one fork_call): every
         * thread notes itself, then takes dynamic chunks of the loop. */
        struct seen s = {0};
        static int hits[N];
        long sum = 0;
#pragma omp parallel num_threads(2) reduction(+ : sum)
        {
            note(&s);
#pragma omp for schedule(dynamic, 7)
            for (int i = 0; i < N; i++) {
                __atomic_add_fetch(&hits[i], 1, __ATOMIC_SEQ_CST);
                sum += i;
            }
        }
        fork_calls++, push_calls++;
        int ok = sum == (long)N * (N - 1) / 2;
        for (int i = 0; i < N; i++) ok &= hits[i] == 1;
        report("loop", &s, ok);
    }

    printf("omp_get_max_threads=%d\n", omp_get_max_threads());
    printf("omp_get_thread_limit=%d\n", omp_get_thread_limit());
    omp_set_num_threads(8);
    /* Through a volatile pointer (still the GOT entry, so still the hook):
     * clang's OpenMP optimizer folds a direct omp_get_max_threads() after
     * omp_set_num_threads(8) to the constant 8 without calling it. */
    int (*volatile get_max)(void) = omp_get_max_threads;
    printf("omp_set_num_threads_then_max=%d\n", get_max());
    {
        struct seen s = {0};
        long sum = 0;
#pragma omp parallel
        PLAIN_BODY(s, sum)
        fork_calls++;
        report("afterset", &s, sum == (long)s.team * (s.team + 1) / 2);
    }
    printf("fork_calls=%d\npush_calls=%d\n", fork_calls, push_calls);
    return 0;
}
