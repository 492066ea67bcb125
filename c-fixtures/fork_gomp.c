/* Fork after OpenMP: the measured variants of the hazard (see the modes).
 * usage: fork_gomp MODE   (see the switch below)
 * The parent waits for the child up to FORK_WAIT seconds (default 8); a child
 * still running then is killed and reported as child_hung=1. */
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* 1 while every region so far summed 0..9999 right (a team that is not
 * what the body counts on, or a broken pool, shows here). */
static int g_sum_ok = 1;

static int region(int clause) {
    int t = 0;
    long s = 0;
    if (clause > 0) {
#pragma omp parallel num_threads(clause) reduction(+ : s)
        {
#pragma omp single
            t = omp_get_num_threads();
#pragma omp for
            for (int i = 0; i < 10000; i++) s += i;
        }
    } else {
#pragma omp parallel reduction(+ : s)
        {
#pragma omp single
            t = omp_get_num_threads();
#pragma omp for
            for (int i = 0; i < 10000; i++) s += i;
        }
    }
    if (s != 49995000L) g_sum_ok = 0;
    return t;
}

static int dynamic_loop(void) {
    int t = 0;
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < 100; i++)
        if (i == 0) t = omp_get_num_threads();
    return t;
}

static int sections(void) {
    int t = 0;
#pragma omp parallel sections
    {
#pragma omp section
        t = omp_get_num_threads();
#pragma omp section
        (void)0;
    }
    return t;
}

static void *region_on_thread(void *p) { *(int *)p = region(0); return NULL; }

static int wait_child(pid_t pid, const char *who) {
    int waited = 0, limit = getenv("FORK_WAIT") ? atoi(getenv("FORK_WAIT")) : 8;
    int st = 0;
    struct timespec ms = {0, 10 * 1000 * 1000};
    while (waitpid(pid, &st, WNOHANG) == 0) {
        nanosleep(&ms, NULL);
        if (++waited > limit * 100) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            printf("%s_hung=1\n", who);
            fflush(stdout);
            return -1;
        }
    }
    printf("%s_hung=0\n%s_status=%d\n", who, who, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    fflush(stdout);
    return st;
}

static void child_work(const char *mode, char **argv) {
    if (!strcmp(mode, "both") || !strcmp(mode, "default") || !strcmp(mode, "helper") || !strcmp(mode, "teams1")) {
        printf("child_team=%d\n", region(0));
        fflush(stdout);
    }
    if (!strcmp(mode, "both") || !strcmp(mode, "clause4")) {
        printf("child_clause_team=%d\n", region(4));
        fflush(stdout);
    }
    if (!strcmp(mode, "dynamic")) printf("child_dynamic_team=%d\n", dynamic_loop());
    if (!strcmp(mode, "sections")) printf("child_sections_team=%d\n", sections());
    if (!strcmp(mode, "one_then_default")) {
        printf("child_one_team=%d\n", region(1));
        printf("child_team=%d\n", region(0));
    }
    if (!strcmp(mode, "newthread")) {
        int t = 0;
        pthread_t th;
        pthread_create(&th, NULL, region_on_thread, &t);
        pthread_join(th, NULL);
        printf("child_newthread_team=%d\n", t);
    }
    if (!strcmp(mode, "grandchild")) {
        printf("child_team=%d\n", region(0));
        fflush(stdout);
        pid_t g = fork();
        if (g == 0) {
            printf("grandchild_team=%d\n", region(0));
            fflush(stdout);
            _exit(0);
        }
        wait_child(g, "grandchild");
    }
    if (!strcmp(mode, "inregion")) {
        printf("child_team=%d\n", region(0));
        fflush(stdout);
        if (getenv("CHILD_CLAUSE")) {
            printf("child_clause_team=%d\n", region(atoi(getenv("CHILD_CLAUSE"))));
        }
    }
    if (!strcmp(mode, "vfork")) {
        /* This child runs no region (so it has asked the shim nothing), then
         * vforks a grandchild that _exits at once, as after a failed exec:
         * the grandchild shares this child's memory, so it must write no
         * report and leave this child's own report alone. */
        pid_t v = vfork();
        if (v == 0) _exit(3);
        int st = 0;
        waitpid(v, &st, 0);
        printf("vfork_pid=%d\nvfork_status=%d\nchild_pid=%d\n", (int)v,
               WIFEXITED(st) ? WEXITSTATUS(st) : -1, (int)getpid());
        fflush(stdout);
    }
    if (!strcmp(mode, "exec")) {
        fflush(stdout);
        execl(argv[0], argv[0], "exec-child", (char *)NULL);
        _exit(99);
    }
    fflush(stdout);
}

static const char *g_mode;
static char **g_argv;

static void *fork_from_thread(void *p) {
    (void)p;
    printf("parent_team=%d\n", region(2));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        printf("child_team=%d\n", region(0));
        fflush(stdout);
        _exit(0);
    }
    wait_child(pid, "child");
    return NULL;
}

/* The fork happens on the master thread inside a 2-thread region: libgomp
 * refuses to free a pool there, so the shim must fall back. */
static void fork_in_region(char **argv) {
#pragma omp parallel num_threads(2)
    {
#pragma omp master
        {
            printf("parent_team=%d\n", omp_get_num_threads());
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                child_work("inregion", argv);
                printf("child_sum_ok=%d\n", g_sum_ok);
                fflush(stdout);
                _exit(0);
            }
            wait_child(pid, "child");
        }
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "both";
    g_mode = mode;
    g_argv = argv;
    if (!strcmp(mode, "exec-child")) {
        printf("exec_child_team=%d\n", region(2));
        return 0;
    }
    if (!strcmp(mode, "inregion")) {
        fork_in_region(argv);
        printf("parent_after_team=%d\n", region(2));
        return 0;
    }
    if (!strcmp(mode, "forkthread")) {
        pthread_t th;
        pthread_create(&th, NULL, fork_from_thread, NULL);
        pthread_join(th, NULL);
        return 0;
    }
    if (!strcmp(mode, "helper")) {
        int t = 0;
        pthread_t th;
        pthread_create(&th, NULL, region_on_thread, &t);
        pthread_join(th, NULL);
        printf("parent_team=%d\n", t);
    } else if (!strcmp(mode, "teams1")) {
        printf("parent_team=%d\n", region(1));
    } else {
        printf("parent_team=%d\n", region(2));
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        child_work(mode, argv);
        printf("child_sum_ok=%d\n", g_sum_ok);
        fflush(stdout);
        _exit(0);
    }
    wait_child(pid, "child");
    printf("parent_after_team=%d\n", region(2));
    printf("parent_sum_ok=%d\n", g_sum_ok);
    return 0;
}
