/* Calls every team-starting GNU OpenMP entry point the shim hooks, directly
 * through the GOMP ABI (as libgomp 12 exports it, libgomp_g.h), each with an
 * explicit num_threads of TEAM (2), and checks what the body saw and computed:
 *
 *   NAME_team=  the team size the body saw (omp_get_num_threads)
 *   NAME_ok=    1 when every thread of that team ran the body once (thread ids
 *               0..team-1 each once), every loop iteration / section ran
 *               exactly once and the sum over them equals the closed form
 *
 * GOMP_parallel_reductions comes from a task-reduction construct (gcc emits it
 * for `parallel reduction(task, ...)`; its descriptor is gcc's business).
 * The host-teams entries (GOMP_teams_reg, GOMP_teams, GOMP_teams4) start no
 * threads in libgomp: it runs the teams one after another on the caller and
 * sets the thread-limit ICV (LLVM libomp's GOMP_teams_reg forks its teams and
 * may run fewer than asked). Each runs on a fresh pthread (that ICV would
 * otherwise stay on the main thread) with thread_limit 64 and prints
 * NAME_team= (the number of teams run: 3; 1 for GOMP_teams, which runs
 * nothing), NAME_limit= (the thread limit the runtime itself holds, read
 * through dlsym on the runtime's handle, which the shim does not intercept:
 * 64 without the shim, the budget under it) and NAME_ok=.
 *
 * Last, the queries and the setter: omp_get_max_threads, omp_get_thread_limit,
 * omp_set_num_threads(8) then omp_get_max_threads again.
 * regions_made= counts the sized calls (every entry above but the teams
 * entries and GOMP_parallel_end): the shim's report must count as many.
 * Built with gcc (libgomp) and, without GOMP_teams4 which libomp lacks, for
 * LLVM libomp's GOMP compatibility layer (-DNO_TEAMS4). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef RUNTIME_LIB
#define RUNTIME_LIB "libgomp.so.1"
#endif

typedef void (*body_t)(void *);

/* parallel.c */
void GOMP_parallel(body_t, void *, unsigned num_threads, unsigned flags);
void GOMP_parallel_start(body_t, void *, unsigned num_threads);
void GOMP_parallel_end(void);
/* sections.c */
void GOMP_parallel_sections(body_t, void *, unsigned num_threads, unsigned count, unsigned flags);
void GOMP_parallel_sections_start(body_t, void *, unsigned num_threads, unsigned count);
unsigned GOMP_sections_next(void);
void GOMP_sections_end_nowait(void);
/* loop.c */
#define LOOP_CHUNKED(name)                                                                        \
    void GOMP_parallel_loop_##name(body_t, void *, unsigned, long start, long end, long incr,     \
                                   long chunk, unsigned flags);
#define LOOP_RUNTIME(name)                                                                        \
    void GOMP_parallel_loop_##name(body_t, void *, unsigned, long start, long end, long incr,     \
                                   unsigned flags);
LOOP_CHUNKED(static)
LOOP_CHUNKED(dynamic)
LOOP_CHUNKED(guided)
LOOP_CHUNKED(nonmonotonic_dynamic)
LOOP_CHUNKED(nonmonotonic_guided)
LOOP_RUNTIME(runtime)
LOOP_RUNTIME(nonmonotonic_runtime)
LOOP_RUNTIME(maybe_nonmonotonic_runtime)
void GOMP_parallel_loop_static_start(body_t, void *, unsigned, long, long, long, long chunk);
void GOMP_parallel_loop_dynamic_start(body_t, void *, unsigned, long, long, long, long chunk);
void GOMP_parallel_loop_guided_start(body_t, void *, unsigned, long, long, long, long chunk);
void GOMP_parallel_loop_runtime_start(body_t, void *, unsigned, long, long, long);
bool GOMP_loop_static_next(long *, long *);
bool GOMP_loop_dynamic_next(long *, long *);
bool GOMP_loop_guided_next(long *, long *);
bool GOMP_loop_runtime_next(long *, long *);
bool GOMP_loop_nonmonotonic_dynamic_next(long *, long *);
bool GOMP_loop_nonmonotonic_guided_next(long *, long *);
bool GOMP_loop_nonmonotonic_runtime_next(long *, long *);
bool GOMP_loop_maybe_nonmonotonic_runtime_next(long *, long *);
void GOMP_loop_end_nowait(void);
/* teams.c, target.c */
void GOMP_teams_reg(body_t, void *, unsigned num_teams, unsigned thread_limit, unsigned flags);
void GOMP_teams(unsigned num_teams, unsigned thread_limit);
bool GOMP_teams4(unsigned low, unsigned high, unsigned thread_limit, bool first);

enum { TEAM = 2, N = 1000, SECTIONS = 10, LIMIT = 64 };
/* Iterations i = START, START+INCR, ... (N of them): start, end and incr
 * other than 0, N, 1, and a chunk, so that every argument, the stack-passed
 * ones included, must arrive intact. */
static const long START = 10, INCR = 3, CHUNK = 7;

static int regions_made;

struct region {
    bool (*next)(long *, long *); /* loops */
    int team;                     /* max omp_get_num_threads() seen */
    int bodies;                   /* threads that ran the body */
    unsigned ids;                 /* bit per omp_get_thread_num() */
    int id_twice;
    long sum;
    int hits[N];
};

static void enter_body(struct region *r) {
    int t = omp_get_num_threads();
    unsigned bit = 1u << (omp_get_thread_num() & 31);
    __atomic_add_fetch(&r->bodies, 1, __ATOMIC_SEQ_CST);
    if (__atomic_fetch_or(&r->ids, bit, __ATOMIC_SEQ_CST) & bit)
        __atomic_store_n(&r->id_twice, 1, __ATOMIC_SEQ_CST);
    int cur = __atomic_load_n(&r->team, __ATOMIC_SEQ_CST);
    while (t > cur && !__atomic_compare_exchange_n(&r->team, &cur, t, false, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {
    }
}

static int team_ok(const struct region *r) {
    return r->team >= 1 && r->bodies == r->team && !r->id_twice &&
           r->ids == (r->team >= 32 ? ~0u : (1u << r->team) - 1);
}

static void plain_body(void *p) {
    struct region *r = p;
    enter_body(r);
    __atomic_add_fetch(&r->sum, omp_get_thread_num() + 1, __ATOMIC_SEQ_CST);
}

static void loop_body(void *p) {
    struct region *r = p;
    enter_body(r);
    long s, e;
    while (r->next(&s, &e))
        for (long i = s; i < e; i += INCR) {
            long k = (i - START) / INCR;
            if (k >= 0 && k < N) __atomic_add_fetch(&r->hits[k], 1, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&r->sum, i, __ATOMIC_SEQ_CST);
        }
    GOMP_loop_end_nowait();
}

static void sections_body(void *p) {
    struct region *r = p;
    enter_body(r);
    for (unsigned s = GOMP_sections_next(); s; s = GOMP_sections_next()) {
        if (s <= SECTIONS) __atomic_add_fetch(&r->hits[s - 1], 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&r->sum, s, __ATOMIC_SEQ_CST);
    }
    GOMP_sections_end_nowait();
}

static int hits_ok(const struct region *r, int n) {
    for (int i = 0; i < n; i++)
        if (r->hits[i] != 1) return 0;
    return 1;
}

static void report(const char *name, const struct region *r, int ok) {
    printf("%s_team=%d\n%s_ok=%d\n", name, r->team, name, ok && team_ok(r));
}

static void report_plain(const char *name, const struct region *r) {
    report(name, r, r->sum == (long)r->team * (r->team + 1) / 2);
}

static void report_loop(const char *name, const struct region *r) {
    long want = N * START + INCR * (long)N * (N - 1) / 2;
    report(name, r, hits_ok(r, N) && r->sum == want);
}

static void report_sections(const char *name, const struct region *r) {
    report(name, r, hits_ok(r, SECTIONS) && r->sum == SECTIONS * (SECTIONS + 1) / 2);
}

static struct region *fresh(bool (*next)(long *, long *)) {
    static struct region r;
    memset(&r, 0, sizeof r);
    r.next = next;
    return &r;
}

#define END (START + INCR * N)

#define RUN_LOOP(name, nextfn)                                                                    \
    do {                                                                                          \
        struct region *r = fresh(nextfn);                                                         \
        GOMP_parallel_loop_##name(loop_body, r, TEAM, START, END, INCR, CHUNK, 0);                \
        regions_made++;                                                                           \
        report_loop("GOMP_parallel_loop_" #name, r);                                              \
    } while (0)

#define RUN_LOOP_RUNTIME(name, nextfn)                                                            \
    do {                                                                                          \
        struct region *r = fresh(nextfn);                                                         \
        GOMP_parallel_loop_##name(loop_body, r, TEAM, START, END, INCR, 0);                       \
        regions_made++;                                                                           \
        report_loop("GOMP_parallel_loop_" #name, r);                                              \
    } while (0)

/* The _start forms: the runtime starts the team's other threads, the caller
 * runs the body itself, then ends the region with GOMP_parallel_end. */
#define RUN_LOOP_START(name, nextfn)                                                              \
    do {                                                                                          \
        struct region *r = fresh(nextfn);                                                         \
        GOMP_parallel_loop_##name##_start(loop_body, r, TEAM, START, END, INCR, CHUNK);           \
        loop_body(r);                                                                             \
        GOMP_parallel_end();                                                                      \
        end_calls++;                                                                              \
        regions_made++;                                                                           \
        report_loop("GOMP_parallel_loop_" #name "_start", r);                                     \
    } while (0)

/* GOMP_parallel_reductions: gcc emits it for a task reduction on a parallel. */
static void run_reductions(void) {
    long x = 0;
    int team = 0, bodies = 0, ids_twice = 0;
    unsigned ids = 0;
#pragma omp parallel reduction(task, + : x) num_threads(TEAM)
    {
        int t = omp_get_num_threads();
        unsigned bit = 1u << (omp_get_thread_num() & 31);
#pragma omp atomic
        bodies++;
        if (__atomic_fetch_or(&ids, bit, __ATOMIC_SEQ_CST) & bit)
            __atomic_store_n(&ids_twice, 1, __ATOMIC_SEQ_CST);
#pragma omp critical
        if (t > team) team = t;
#pragma omp single
        for (int i = 0; i < N; i++) {
#pragma omp task in_reduction(+ : x)
            x += i;
        }
    }
    regions_made++;
    int ok = x == (long)N * (N - 1) / 2 && bodies == team && !ids_twice &&
             ids == (1u << team) - 1;
    printf("GOMP_parallel_reductions_team=%d\nGOMP_parallel_reductions_ok=%d\n", team, ok);
}

/* The thread limit the runtime itself holds for this thread: through the
 * runtime's own handle, which an LD_PRELOADed shim does not intercept. */
static int raw_thread_limit(void) {
    static int (*real)(void);
    if (!real) {
        void *h = dlopen(RUNTIME_LIB, RTLD_NOW | RTLD_NOLOAD);
        real = h ? (int (*)(void))dlsym(h, "omp_get_thread_limit") : NULL;
        if (!real) return -1;
    }
    return real();
}

struct teams {
    int calls;
    int num_teams;
    unsigned team_nums;
    int limit;
};

static void teams_body(void *p) {
    /* libgomp runs host teams one after another on this thread; LLVM
     * libomp's GOMP_teams_reg forks them (and may run fewer than asked). */
    struct teams *t = p;
    __atomic_add_fetch(&t->calls, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&t->num_teams, omp_get_num_teams(), __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&t->team_nums, 1u << (omp_get_team_num() & 31), __ATOMIC_SEQ_CST);
    if (omp_get_team_num() == 0) t->limit = raw_thread_limit();
}

static void *teams_reg_thread(void *out) {
    struct teams *t = out;
    GOMP_teams_reg(teams_body, t, 3, LIMIT, 0);
    return NULL;
}

static void *teams_thread(void *out) {
    struct teams *t = out;
    GOMP_teams(3, LIMIT); /* only records the thread limit */
    t->calls = t->num_teams = 1;
    t->team_nums = 1;
    t->limit = raw_thread_limit();
    return NULL;
}

#ifndef NO_TEAMS4
static void *teams4_thread(void *out) {
    struct teams *t = out;
    /* What gcc emits for `target teams num_teams(3) thread_limit(64)`. */
    for (bool first = true; GOMP_teams4(3, 3, LIMIT, first); first = false) teams_body(t);
    return NULL;
}
#endif

static void run_teams(const char *name, void *(*fn)(void *)) {
    struct teams t = {0};
    pthread_t th;
    pthread_create(&th, NULL, fn, &t);
    pthread_join(th, NULL);
    int ok = t.num_teams >= 1 && t.num_teams <= 3 && t.calls == t.num_teams &&
             t.team_nums == (1u << t.num_teams) - 1 && t.limit >= 1;
    printf("%s_team=%d\n%s_limit=%d\n%s_ok=%d\n", name, t.num_teams, name, t.limit, name, ok);
}

int main(void) {
    int end_calls = 0;
    struct region *r;

    r = fresh(NULL);
    GOMP_parallel(plain_body, r, TEAM, 0);
    regions_made++;
    report_plain("GOMP_parallel", r);

    run_reductions();

    r = fresh(NULL);
    GOMP_parallel_sections(sections_body, r, TEAM, SECTIONS, 0);
    regions_made++;
    report_sections("GOMP_parallel_sections", r);

    RUN_LOOP(static, GOMP_loop_static_next);
    RUN_LOOP(dynamic, GOMP_loop_dynamic_next);
    RUN_LOOP(guided, GOMP_loop_guided_next);
    RUN_LOOP(nonmonotonic_dynamic, GOMP_loop_nonmonotonic_dynamic_next);
    RUN_LOOP(nonmonotonic_guided, GOMP_loop_nonmonotonic_guided_next);
    RUN_LOOP_RUNTIME(runtime, GOMP_loop_runtime_next);
    RUN_LOOP_RUNTIME(nonmonotonic_runtime, GOMP_loop_nonmonotonic_runtime_next);
    RUN_LOOP_RUNTIME(maybe_nonmonotonic_runtime, GOMP_loop_maybe_nonmonotonic_runtime_next);

    r = fresh(NULL);
    GOMP_parallel_start(plain_body, r, TEAM);
    plain_body(r);
    GOMP_parallel_end();
    end_calls++;
    regions_made++;
    report_plain("GOMP_parallel_start", r);

    r = fresh(NULL);
    GOMP_parallel_sections_start(sections_body, r, TEAM, SECTIONS);
    sections_body(r);
    GOMP_parallel_end();
    end_calls++;
    regions_made++;
    report_sections("GOMP_parallel_sections_start", r);

    RUN_LOOP_START(static, GOMP_loop_static_next);
    RUN_LOOP_START(dynamic, GOMP_loop_dynamic_next);
    RUN_LOOP_START(guided, GOMP_loop_guided_next);
    {
        r = fresh(GOMP_loop_runtime_next);
        GOMP_parallel_loop_runtime_start(loop_body, r, TEAM, START, END, INCR);
        loop_body(r);
        GOMP_parallel_end();
        end_calls++;
        regions_made++;
        report_loop("GOMP_parallel_loop_runtime_start", r);
    }
    printf("GOMP_parallel_end_calls=%d\n", end_calls);

    run_teams("GOMP_teams_reg", teams_reg_thread);
    run_teams("GOMP_teams", teams_thread);
#ifndef NO_TEAMS4
    run_teams("GOMP_teams4", teams4_thread);
#endif

    printf("omp_get_max_threads=%d\n", omp_get_max_threads());
    printf("omp_get_thread_limit=%d\n", omp_get_thread_limit());
    omp_set_num_threads(8);
    printf("omp_set_num_threads_then_max=%d\n", omp_get_max_threads());
    printf("regions_made=%d\n", regions_made);
    return 0;
}
