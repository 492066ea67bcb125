/* The heap test's canary: a library whose file name contains "libparbudget"
 * and which allocates from the C heap in its constructor, so the counting
 * preload (libcountmalloc.c) is seen to count such calls. */
#include <stdlib.h>

void *parbudget_canary_block; /* exported, so the call is not optimised away */
__attribute__((constructor)) static void allocate(void) { parbudget_canary_block = malloc(64); }
