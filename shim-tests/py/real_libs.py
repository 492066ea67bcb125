"""Real libraries, real work: what a program computes must not change under
the shim. Usage:

    real_libs.py MODE [WORKLOAD ...]

WORKLOADs (default: all): hgb kmeans argmin knn xgb2 xgbdef scipy numpy.
Each prints, for its outputs:

    W_int=<sha256 of its integer outputs' bytes>   (labels, indices; if any)
    W_f=<sha256 of its float outputs' bytes>
    W_chk=<repr of a fixed random-weighted sum of its float outputs>
    W_mag=<repr of the same sum of magnitudes, the scale for a tolerance>

`W_f` is compared bitwise, `W_chk` within a tolerance for the workloads whose
float results legitimately depend on the thread count (see real_libs.rs).

MODEs (keys get a prefix where one process prints several results):

    alone          each workload once, in the main thread
    threads        4 Python threads at once (a Barrier), each running every
                   workload: keys t0_ .. t3_
    fork           every workload in the parent (no prefix), then os.fork():
                   the child runs every workload again (child_), then a
                   multiprocessing "fork" Pool(2) runs each workload once
                   (pool_); a child that does not answer within FORK_WAIT s is
                   reported as child_status=hang
    procs          2 subprocesses at once (this script, mode alone, same
                   environment: under the shim they join this tree's
                   ledger), their keys relayed with p0_ and p1_; each
                   subprocess's exit code as p0_status, p1_status
    global_after   one KMeans fit (first_kmeans_), then ctypes.CDLL(
                   "libgomp.so.1", RTLD_GLOBAL), then every workload (no
                   prefix): KMeans again, the others for the first time
    global_before  ctypes.CDLL("libgomp.so.1", RTLD_GLOBAL) before numpy,
                   scikit-learn or xgboost is imported, then every workload
    hold STOPFILE LIB
                   background load for the shared-ledger test: the
                   c-fixtures' libregions.so (GNU OpenMP, through ctypes)
                   runs short parallel regions back to back, so this process
                   holds budget nearly all the time; prints ready=1 after the
                   first batch, stops when STOPFILE exists (or after 150 s),
                   prints regions=N mean_team=T
"""
import ctypes
import hashlib
import os
import sys
import threading
import time

FORK_WAIT = 90


def data(seed, shape):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape)


# Each workload returns (integer outputs, float outputs), lists of arrays.


def w_hgb():
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = data(0, (3000, 10))
    y = X[:, 0] * 2 + X[:, 1] ** 2
    m = HistGradientBoostingRegressor(
        max_iter=20, random_state=0, early_stopping=False
    ).fit(X, y)
    return [], [m.predict(X)]


def w_kmeans():
    import numpy as np
    from sklearn.cluster import KMeans

    X = data(1, (3000, 10))
    km = KMeans(n_clusters=8, n_init=1, random_state=0, max_iter=30).fit(X)
    return [km.labels_], [km.cluster_centers_, np.array([km.inertia_])]


def w_argmin():
    from sklearn.metrics import pairwise_distances_argmin_min

    X = data(2, (2000, 10))
    Y = data(3, (300, 10))
    idx, dist = pairwise_distances_argmin_min(X, Y)
    return [idx], [dist]


def w_knn():
    from sklearn.neighbors import NearestNeighbors

    X = data(4, (1000, 5))
    Q = data(5, (100, 5))
    dist, idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(X).kneighbors(Q)
    return [idx], [dist]


def _xgb(params):
    import xgboost as xgb

    X = data(6, (2000, 20))
    y = X[:, 0] - 2 * X[:, 1] + X[:, 2] * X[:, 3]
    d = xgb.DMatrix(X, label=y)
    booster = xgb.train(dict(params, tree_method="hist", seed=0), d, num_boost_round=20)
    return [], [booster.predict(d)]


def w_xgb2():
    return _xgb({"nthread": 2})


def w_xgbdef():
    return _xgb({})


def w_scipy():
    import scipy.linalg as sl

    A = data(7, (300, 300)) + 300 * __import__("numpy").eye(300)
    B = data(8, (300, 300))
    x = sl.solve(A, B)
    lu, piv = sl.lu_factor(A)
    p, l, u = sl.lu(A)
    c = sl.blas.dgemm(1.0, A, B)  # Fortran dgemm_ on scipy's own OpenBLAS
    return [piv, p], [x, lu, l, u, c]


def w_numpy():
    A = data(9, (400, 400))
    B = data(10, (400, 400))
    return [], [A @ B, (A.T @ B) @ A]


WORKLOADS = {
    "hgb": w_hgb,
    "kmeans": w_kmeans,
    "argmin": w_argmin,
    "knn": w_knn,
    "xgb2": w_xgb2,
    "xgbdef": w_xgbdef,
    "scipy": w_scipy,
    "numpy": w_numpy,
}


def digest(arrays):
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def checksum(arrays):
    """(sum, sum of magnitudes) of the float outputs, each element weighted by
    a fixed random weight; math.fsum so that the checksum itself does not
    depend on any thread count (np.dot would: OpenBLAS ddot is threaded)."""
    import math

    import numpy as np

    total, mag = [], []
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64).ravel()
        w = np.random.default_rng(1000 + i).uniform(0.5, 1.5, a.size)
        wa = (w * a).tolist()
        total.append(math.fsum(wa))
        mag.append(math.fsum(map(abs, wa)))
    return math.fsum(total), math.fsum(mag)


def run(name):
    ints, floats = WORKLOADS[name]()
    out = {}
    if ints:
        out[name + "_int"] = digest(ints)
    out[name + "_f"] = digest(floats)
    chk, mag = checksum(floats)
    out[name + "_chk"] = repr(chk)
    out[name + "_mag"] = repr(mag)
    return out


def run_all(names, prefix=""):
    lines = []
    for n in names:
        try:
            res = run(n)
        except Exception as e:  # a failure is a result: report it, go on
            res = {n + "_error": "%s: %s" % (type(e).__name__, str(e).replace("\n", " ")[:200])}
        lines += ["%s%s=%s" % (prefix, k, v) for k, v in res.items()]
    return lines


def emit(lines):
    sys.stdout.write("".join(l + "\n" for l in lines))
    sys.stdout.flush()


def preload_libgomp_global():
    ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
    print("libgomp_global=1", flush=True)


def main():
    mode = sys.argv[1]
    if mode == "hold":
        return hold(sys.argv[2], sys.argv[3])
    if mode == "procs":
        return procs_mode(sys.argv[2:])
    names = sys.argv[2:] or list(WORKLOADS)

    if mode == "global_before":
        preload_libgomp_global()
    # import everything first, so the modes differ only in what they test
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import xgboost  # noqa: F401

    if mode in ("alone", "global_before"):
        emit(run_all(names))
    elif mode == "global_after":
        emit(run_all(["kmeans"], "first_"))
        preload_libgomp_global()
        emit(run_all(names))
    elif mode == "threads":
        threads_mode(names)
    elif mode == "fork":
        fork_mode(names)
    else:
        sys.exit("unknown mode " + mode)
    print("done=1", flush=True)


def threads_mode(names, n=4):
    barrier = threading.Barrier(n)
    results = [None] * n

    def body(i):
        barrier.wait()
        results[i] = run_all(names, "t%d_" % i)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        emit(r or [])  # a thread that died leaves its keys missing


def procs_mode(names, n=2):
    import subprocess

    ps = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "alone"] + names,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for i, p in enumerate(ps):
        try:
            out, _ = p.communicate(timeout=FORK_WAIT)
            status = "exit%d" % p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            status = "hang"
        emit(["p%d_%s" % (i, l) for l in out.splitlines() if l])
        emit(["p%d_status=%s" % (i, status)])
    print("done=1", flush=True)


def pool_task(name):
    return run_all([name], "pool_")


def fork_mode(names):
    emit(run_all(names))
    # os.fork: the child reruns everything and sends its lines back.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            text = "\n".join(run_all(names, "child_")) + "\n"
            os.write(w, text.encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w)
    text, status = wait_child(pid, r)
    emit([l for l in text.splitlines() if l])
    emit(["child_status=%s" % status])

    # multiprocessing with the fork start method (what joblib users hit)
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    pool = ctx.Pool(2)
    try:
        res = pool.map_async(pool_task, names).get(timeout=FORK_WAIT)
        for lines in res:
            emit(lines)
        emit(["pool_status=ok"])
        pool.close()
    except mp.TimeoutError:
        emit(["pool_status=hang"])
        pool.terminate()
    pool.join()


def wait_child(pid, fd):
    import select

    deadline = time.monotonic() + FORK_WAIT
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return b"".join(chunks).decode(), "hang"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    return b"".join(chunks).decode(), "exit%d" % code


def hold(stopfile, lib):
    lib = ctypes.CDLL(lib)
    lib.fix_regions.restype = ctypes.c_long
    regions = teams = 0
    deadline = time.monotonic() + 150
    while not os.path.exists(stopfile) and time.monotonic() < deadline:
        teams += lib.fix_regions(200, 1 << 16)
        regions += 200
        if regions == 200:
            print("ready=1", flush=True)
    print("regions=%d" % regions)
    print("mean_team=%.3f" % (teams / max(regions, 1)), flush=True)


if __name__ == "__main__":
    main()
