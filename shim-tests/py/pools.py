"""numpy's OpenBLAS and a ctypes-loaded OpenMP library, both loaded after
start: what threadpoolctl sees, and whether a matmul adds threads."""
import ctypes
import os
import sys

import numpy as np
from threadpoolctl import threadpool_info

lib = ctypes.CDLL(sys.argv[1])
print("fix_team=%d" % lib.fix_team(0))
print("fix_clause_team=%d" % lib.fix_team(64))
for info in threadpool_info():
    print("pool_%s_%s=%d" % (info["internal_api"], "numpy" if "numpy" in info["filepath"] else os.path.basename(info["filepath"]).split(".")[0], info["num_threads"]))
before = len(os.listdir("/proc/self/task"))
a = np.random.default_rng(0).random((1500, 1500))
b = a @ a
print("matmul_ok=%d" % int(abs(b[0, 0] - (a[0] @ a[:, 0])) < 1e-6))
print("tasks_before=%d" % before)
print("tasks_after=%d" % len(os.listdir("/proc/self/task")))
