"""The CPU-waiting loop (OpenBLAS spinning against GNU OpenMP): 100 times, a numpy matmul on
OpenBLAS, then 21 short GNU OpenMP regions through ctypes. Prints seconds."""
import ctypes
import sys
import time

import numpy as np

lib = ctypes.CDLL(sys.argv[1])
lib.fix_regions.restype = ctypes.c_long
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 100
rng = np.random.default_rng(0)
U = rng.random((600, 100))
V = rng.random((600, 100))
t = time.perf_counter()
teams = 0
for _ in range(iters):
    W = U @ V.T
    teams += lib.fix_regions(21, 40960)
print("seconds=%.3f" % (time.perf_counter() - t))
print("mean_region_team=%.3f" % (teams / (21 * iters)))
import math
want = math.fsum(float(x) * float(y) for x, y in zip(U[5, :], V[7, :]))
print("ok=%d" % int(W.shape == (600, 600) and abs(float(W[5, 7]) - want) <= 1e-12 * want))
