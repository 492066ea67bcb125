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
  xgb_threads  ROWS ROUNDS NTHREAD
                                 4 threads at once, each trains xgboost (hist, ROWS x 20,
                                 ROUNDS rounds; NTHREAD 0 = xgboost's default, all cores)
                                 on its own data and predicts; checksum of all predictions
  hgb_threads  ROWS ITERS        4 threads at once, each fits scikit-learn's
                                 HistGradientBoostingRegressor (ROWS x 10, ITERS iterations)
                                 and predicts; checksum of all predictions
  fork_pool    METHOD TASKS REGIONS LEN LIB
                                 the main thread runs 2-thread libgomp regions (ctypes
                                 fix_team(2) + fix_regions), then multiprocessing Pool(2)
                                 with start method METHOD runs TASKS tasks of
                                 fix_regions(REGIONS, LEN); prints each task's own time
                                 (task_ms_median), the workers' mean team, and child_hung=1
                                 when the pool did not finish within FORK_WAIT s;
                                 BENCH_START_METHOD overrides METHOD
  dask_blas    TASKS REPS         Dask LocalCluster(n_workers=2, threads_per_worker=1);
                                 REPS times, TASKS tasks at once, each 8 chained
                                 1000x1000 matmuls; work_s = median seconds of one
                                 batch (cluster start-up and imports excluded);
                                 checksum of all results
  halving                        HalvingGridSearchCV(HistGradientBoostingClassifier(),
                                 12 candidates, n_jobs=2) on 4000x20 (loky workers);
                                 work_s = the fit; checksum = best params and score
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


def _checksum(preds):
    # repr of a float sum in a fixed order: equal strings = bit-identical predictions
    # (summed per thread in task order, then across tasks in task order)
    total = 0.0
    for p in preds:
        total += float(p.astype("float64").sum())
    return repr(total)


def _in_threads(fn, n):
    """Runs fn(0..n-1) on n threads started together; returns (results in
    order, seconds from the start barrier to the last thread's end)."""
    import threading
    import time
    out, errs = [None] * n, []
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            with _limits():
                out[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below, fails the run
            errs.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    work = time.perf_counter() - t0
    if errs:
        raise errs[0]
    return out, work


def _regression_data(seed, rows, cols):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols))
    w = rng.standard_normal(cols)
    y = x @ w + np.sin(3 * x[:, 0]) * x[:, 1] + 0.1 * rng.standard_normal(rows)
    return x, y


def xgb_threads(rows, rounds, nthread):
    import xgboost as xgb
    params = {"tree_method": "hist", "max_depth": 6, "eta": 0.3, "seed": 0}
    if nthread > 0:
        params["nthread"] = nthread

    def one(i):
        x, y = _regression_data(100 + i, rows, 20)
        d = xgb.DMatrix(x, label=y, nthread=nthread if nthread > 0 else None)
        booster = xgb.train(params, d, num_boost_round=rounds)
        return booster.predict(d)

    preds, work = _in_threads(one, WORKERS)
    print("threads=%d\nrounds=%d\nwork_s=%.4f\nchecksum=%s" % (WORKERS, rounds, work, _checksum(preds)))


def hgb_threads(rows, iters):
    from sklearn.ensemble import HistGradientBoostingRegressor

    def one(i):
        x, y = _regression_data(200 + i, rows, 10)
        m = HistGradientBoostingRegressor(max_iter=iters, early_stopping=False, random_state=0)
        m.fit(x, y)
        return m.predict(x)

    preds, work = _in_threads(one, WORKERS)
    print("threads=%d\niters=%d\nwork_s=%.4f\nchecksum=%s" % (WORKERS, iters, work, _checksum(preds)))


_LIB = None


def _lib(path):
    global _LIB
    if _LIB is None:
        import ctypes
        _LIB = ctypes.CDLL(path)
        _LIB.fix_regions.restype = ctypes.c_long
        _LIB.fix_regions.argtypes = [ctypes.c_int, ctypes.c_int]
        _LIB.fix_team.restype = ctypes.c_int
        _LIB.fix_team.argtypes = [ctypes.c_int]
    return _LIB


def _pool_task(args):
    import time
    regions, length, path = args
    lib = _lib(path)
    t0 = time.perf_counter()
    teams = lib.fix_regions(regions, length)
    return time.perf_counter() - t0, teams / float(regions), os.getpid()


def fork_pool(method, tasks, regions, length, path):
    import multiprocessing as mp
    import time
    method = os.environ.get("BENCH_START_METHOD", method)
    lib = _lib(path)
    parent_team = lib.fix_team(2)  # this thread is now master of a 2-thread libgomp team
    lib.fix_regions(regions, length)
    print("start_method=%s\nparent_team=%d" % (method, parent_team), flush=True)
    limit = float(os.environ.get("FORK_WAIT", "8"))
    ctx = mp.get_context(method)
    t0 = time.perf_counter()
    pool = ctx.Pool(2)
    try:
        res = pool.map_async(_pool_task, [(regions, length, path)] * tasks, chunksize=1)
        out = res.get(timeout=limit)
    except mp.TimeoutError:
        # hung workers: kill them and leave (Pool.terminate can itself take
        # seconds here, and the pool's threads would keep the process alive)
        print("child_hung=1", flush=True)
        for p in pool._pool:
            p.kill()
        os._exit(0)
    pool.close()
    pool.join()
    wall = time.perf_counter() - t0
    times = sorted(t for t, _, _ in out)
    med = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    print("child_hung=0\ntasks=%d\nworkers=%d\npool_s=%.4f\ntask_ms_median=%.3f\ntask_ms_mean=%.3f"
          % (len(out), len(set(p for _, _, p in out)), wall, med * 1e3, sum(times) / len(times) * 1e3))
    print("mean_team=%.3f" % (sum(t for _, t, _ in out) / len(out)))
    print("parent_after_team=%d" % lib.fix_team(2))


def _median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _dask_task(seed):
    # the task: 8 chained 1000x1000 matmuls. Small integers, capped
    # at 7 after each product (np.minimum: 0.5 ms, where np.fmod took 30 ms,
    # longer than the product): every sum is exact in any order, so the checksum
    # is the same at any team size (numpy's OpenBLAS rounds a product of
    # random floats differently on 1 and 2 threads on some CPUs: on an
    # AVX-512 EPYC at this size).
    import hashlib
    import numpy as np
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, (1000, 1000)).astype(float)
    b = a
    for _ in range(8):
        b = np.minimum(a @ b, 7.0)
    return hashlib.sha256(b.tobytes()).hexdigest()[:16]


def _dask_warm():
    import numpy as np
    a = np.ones((500, 500))
    return float((a @ a)[0, 0])


def dask_blas(tasks, reps):
    import hashlib
    import time
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_dask_warm)  # both workers import numpy and start their BLAS pool
        times, out = [], []
        for r in range(reps):
            t0 = time.perf_counter()
            out += client.gather([client.submit(_dask_task, r * tasks + s, pure=False) for s in range(tasks)])
            times.append(time.perf_counter() - t0)
        env = client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
    print("tasks=%d\nreps=%d\nbatches_s=%s\nwork_s=%.4f" % (tasks, reps, ",".join("%.3f" % t for t in times),
                                                          _median(times)))
    print("worker_openblas_env=%s" % ",".join(sorted(set(env.values()))))
    print("checksum=%s" % hashlib.sha256(",".join(out).encode()).hexdigest()[:16])


def halving():
    import time
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV
    x, y = make_classification(n_samples=4000, n_features=20, n_informative=10, random_state=0)
    grid = {"learning_rate": [0.05, 0.1, 0.2], "max_leaf_nodes": [15, 31], "max_iter": [50, 100]}
    search = HalvingGridSearchCV(HistGradientBoostingClassifier(random_state=0), grid, n_jobs=2,
                                 random_state=0)
    t0 = time.perf_counter()
    search.fit(x, y)
    work = time.perf_counter() - t0
    print("candidates=%d\nwork_s=%.4f" % (search.n_candidates_[0], work))
    print("best_score=%r" % float(search.best_score_))
    print("checksum=%s/%r" % (sorted(search.best_params_.items()), float(search.best_score_)))


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    if name == "blas_threads":
        blas_threads(*map(int, args))
    elif name == "blas_procs":
        blas_procs(*map(int, args))
    elif name == "cpu_wait":
        cpu_wait(int(args[0]), args[1])
    elif name == "xgb_threads":
        xgb_threads(*map(int, args))
    elif name == "hgb_threads":
        hgb_threads(*map(int, args))
    elif name == "fork_pool":
        fork_pool(args[0], *map(int, args[1:4]), args[4])
    elif name == "dask_blas":
        dask_blas(*map(int, args))
    elif name == "halving":
        halving()
    else:
        sys.exit("unknown workload " + name)
