"""scipy.linalg.blas.dgemm (Fortran scipy_dgemm_ on scipy's own OpenBLAS copy), from one
thread or a ThreadPoolExecutor(4)."""
import sys, numpy as np
from scipy.linalg import blas
from concurrent.futures import ThreadPoolExecutor
a = np.asfortranarray(np.random.default_rng(0).random((400, 400)))
def task(_):
    for _ in range(15):
        c = blas.dgemm(1.0, a, a)
    # Checked against the element computed without BLAS.
    import math
    want = math.fsum(float(x) * float(y) for x, y in zip(a[3, :], a[:, 9]))
    return abs(float(c[3, 9]) - want) <= 1e-12 * want
if sys.argv[1] == "threads":
    with ThreadPoolExecutor(4) as ex: r = list(ex.map(task, range(8)))
else:
    r = [task(0) for _ in range(2)]
print("ok=%d" % int(len(r) > 0 and all(r)))
