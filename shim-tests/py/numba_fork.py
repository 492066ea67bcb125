"""numba's OpenMP threading layer runs a parallel loop, then the process
forks and the child runs it again. numba itself terminates such a child
("fork() called from a process already using GNU OpenMP"); the shim cannot
rescue it and must say so, and what to do instead."""
import os

import numpy as np
from numba import config, njit, prange


@njit(parallel=True)
def total(a):
    s = 0.0
    for i in prange(a.shape[0]):
        s += a[i]
    return s


a = np.arange(100000, dtype=np.float64)
print("parent=%r\nlayer=%s" % (total(a), config.THREADING_LAYER), flush=True)
pid = os.fork()
if pid == 0:
    print("child=%r" % total(a), flush=True)
    os._exit(0)
_, st = os.waitpid(pid, 0)
print("child_status=%d" % os.waitstatus_to_exitcode(st))
