/* dlopens the library named on the command line and calls its `*_done`. */
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen_error=%s\n", dlerror()); return 1; }
    int (*done)(void) = (int (*)(void))dlsym(h, "ctorwait_done");
    printf("loaded=1\ndone=%d\n", done ? done() : -1);
    return 0;
}
