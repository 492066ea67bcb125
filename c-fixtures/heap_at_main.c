/* heap_at_main: whether the process has a C heap when main starts, read from
 * /proc/self/maps with raw system calls before anything here allocates; then
 * what the environment holds, and that the C library's own setenv, putenv
 * and unsetenv still work on it afterwards.
 *   heap_at_main=0|1
 *   ledger=<PARBUDGET_LEDGER or (unset)>  spincount=<GOMP_SPINCOUNT>
 *   after_set=<a new variable set with setenv>  after_put=<one with putenv>
 *   after_unset=<GOMP_SPINCOUNT after unsetenv>  after_replace=<PARBUDGET_LEDGER
 *   after setenv over it>  entries_ok=1 when every environ entry holds '='. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;
static char maps[1 << 16];
static char put[] = "PB_FIXTURE_PUT=two";

static const char *or_unset(const char *v) { return v ? v : "(unset)"; }

int main(void) {
    int fd = open("/proc/self/maps", O_RDONLY);
    size_t n = 0;
    ssize_t r;
    while (fd >= 0 && n < sizeof maps - 1 && (r = read(fd, maps + n, sizeof maps - 1 - n)) > 0) n += (size_t)r;
    if (fd >= 0) close(fd);
    maps[n] = 0;
    int heap = strstr(maps, "[heap]") != NULL;
    printf("heap_at_main=%d\n", heap);
    printf("ledger=%s\n", or_unset(getenv("PARBUDGET_LEDGER")));
    printf("spincount=%s\n", or_unset(getenv("GOMP_SPINCOUNT")));
    setenv("PB_FIXTURE_SET", "one", 1);
    putenv(put);
    unsetenv("GOMP_SPINCOUNT");
    setenv("PARBUDGET_LEDGER", "/replaced", 1);
    printf("after_set=%s\n", or_unset(getenv("PB_FIXTURE_SET")));
    printf("after_put=%s\n", or_unset(getenv("PB_FIXTURE_PUT")));
    printf("after_unset=%s\n", or_unset(getenv("GOMP_SPINCOUNT")));
    printf("after_replace=%s\n", or_unset(getenv("PARBUDGET_LEDGER")));
    int ok = 1;
    for (char **e = environ; *e; e++)
        if (!strchr(*e, '=')) ok = 0;
    printf("entries_ok=%d\n", ok);
    return 0;
}
