"""A typical mixed program: numpy matmuls (numpy's OpenBLAS pool) from a
ThreadPoolExecutor, a ctypes-loaded OpenMP library (GNU libgomp), then
multiprocessing with the fork start method. Without parbudget the pools
oversubscribe the machine and the forked workers hang on GNU OpenMP."""
import ctypes
import multiprocessing as mp
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

lib = ctypes.CDLL(sys.argv[1])
lib.fix_regions.restype = ctypes.c_long


def blas_task(seed):
    a = np.random.default_rng(seed).random((400, 400))
    for _ in range(30):
        a = (a @ a) / 400.0
    return float(a[0, 0])


def omp_task(_):
    return lib.fix_regions(2000, 4096) / 2000.0


if __name__ == "__main__":
    t = time.perf_counter()
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(blas_task, range(8)))
    print("blas_threads_seconds=%.2f" % (time.perf_counter() - t), flush=True)
    t = time.perf_counter()
    print("omp_parent_mean_team=%.2f" % omp_task(0), flush=True)
    pool = mp.get_context("fork").Pool(4)
    try:
        teams = pool.map_async(omp_task, range(4)).get(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 30)
        print("fork_workers_mean_team=%s" % ",".join("%.2f" % x for x in teams))
        pool.close()
    except mp.TimeoutError:
        print("fork_workers=HUNG (GNU OpenMP after fork)")
        pool.terminate()
    pool.join()
    print("omp_seconds=%.2f" % (time.perf_counter() - t))
