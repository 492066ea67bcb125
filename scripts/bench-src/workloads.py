"""Python workloads of scripts/bench. Run as: python workloads.py NAME [ARGS].

Every workload prints key=value lines; the bench times the whole process.
BENCH_TPCTL=N: call threadpoolctl.threadpool_limits(N) inside each worker
(thread or process) around its work. BENCH_WORKER_ENV="K=V,K=V": set these
variables in each worker process before it imports numpy (loky's way; for
threads the bench sets them on the process instead, since the environment is
per process).

  blas_threads TASKS MATMULS N   ThreadPoolExecutor(4), TASKS tasks of MATMULS NxN matmuls
  blas_procs   TASKS MATMULS N   multiprocessing Pool(4) (fork), same tasks; the
                                 parent never imports numpy, so workers load it fresh
  cpu_wait     ITERS LIB          ITERS times: numpy U @ V.T (OpenBLAS), then
                                 21 short libgomp regions through ctypes fix_regions
"""
import os
import sys

WORKERS = 4


def _limits():
    n = os.environ.get("BENCH_TPCTL")
    if not n:
        import contextlib
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=int(n))


def _task(args):
    matmuls, n, seed = args
    import numpy as np
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    b = rng.random((n, n))
    with _limits():
        c = a
        for _ in range(matmuls):
            c = a @ b
            c *= 1.0 / n
    return float(c[0, 0])


def _worker_init():
    for kv in filter(None, os.environ.get("BENCH_WORKER_ENV", "").split(",")):
        k, v = kv.split("=", 1)
        os.environ[k] = v


def blas_threads(tasks, matmuls, n):
    from concurrent.futures import ThreadPoolExecutor
    import numpy  # noqa: F401  (load OpenBLAS before the threads start)
    with ThreadPoolExecutor(WORKERS) as ex:
        out = list(ex.map(_task, [(matmuls, n, s) for s in range(tasks)]))
    print("tasks=%d\nchecksum=%.6f" % (len(out), sum(out)))


def blas_procs(tasks, matmuls, n):
    import multiprocessing as mp
    assert "numpy" not in sys.modules
    with mp.get_context("fork").Pool(WORKERS, initializer=_worker_init) as pool:
        out = pool.map(_task, [(matmuls, n, s) for s in range(tasks)], chunksize=1)
    print("tasks=%d\nchecksum=%.6f" % (len(out), sum(out)))


def cpu_wait(iters, lib_path):
    import ctypes
    import numpy as np
    lib = ctypes.CDLL(lib_path)
    lib.fix_regions.restype = ctypes.c_long
    lib.fix_regions.argtypes = [ctypes.c_int, ctypes.c_int]
    rng = np.random.default_rng(0)
    u = rng.random((1000, 64))
    v = rng.random((1000, 64))
    teams = 0
    with _limits():
        for _ in range(iters):
            w = u @ v.T
            teams += lib.fix_regions(21, 4096)
    print("iters=%d\nmean_team=%.3f\nchecksum=%.3f" % (iters, teams / (21.0 * iters), float(w[0, 0])))


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    if name == "blas_threads":
        blas_threads(*map(int, args))
    elif name == "blas_procs":
        blas_procs(*map(int, args))
    elif name == "cpu_wait":
        cpu_wait(int(args[0]), args[1])
    else:
        sys.exit("unknown workload " + name)
