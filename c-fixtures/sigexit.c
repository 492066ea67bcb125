/* `_exit` called from a signal handler that may interrupt the loader: the
 * main thread loops dlopen/dlclose of LIB while an interval timer fires
 * SIGALRM, whose handler calls _exit(3). usage: sigexit LIB   exits 3 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; _exit(3); }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {0, 2000 + (getpid() % 7) * 300}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (;;) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (h) dlclose(h);
    }
}
