/* fanout N CMD [ARGS...]: starts N copies of CMD (fork + exec) and waits for
 * all of them, like `make -j` or a job runner. It is the common parent of the
 * copies, so a shim loaded into it (LD_PRELOAD) sees the whole process tree.
 * Exit status: 0 if every copy exited 0, else 1. Each copy gets FANOUT_INDEX. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fanout N CMD [ARGS...]\n");
        return 2;
    }
    int n = atoi(argv[1]), bad = 0;
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 1; }
        if (p == 0) {
            char idx[16];
            snprintf(idx, sizeof idx, "%d", i);
            setenv("FANOUT_INDEX", idx, 1);
            execvp(argv[2], argv + 2);
            perror("exec");
            _exit(127);
        }
    }
    for (int i = 0; i < n; i++) {
        int st = 0;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
    }
    return bad;
}
