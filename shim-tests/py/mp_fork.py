"""multiprocessing with the fork start method (and os.fork) after the parent
ran a GNU OpenMP region through ctypes or scikit-learn."""
import ctypes
import multiprocessing as mp
import os
import sys

which = sys.argv[1]
if which == "sklearn":
    import numpy as np
    from sklearn.cluster import KMeans

    X = np.random.default_rng(0).random((4000, 8))

    def work(_):
        # The whole fitted result: equal in parent and workers, bitwise.
        km = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
        return "%r/%d" % (float(km.inertia_), int(km.labels_.sum()))
else:
    lib = ctypes.CDLL(sys.argv[2])

    def work(_):
        return lib.fix_team(0)

print("parent=%s" % work(0), flush=True)
if len(sys.argv) > 3 and sys.argv[3] == "osfork":
    pid = os.fork()
    if pid == 0:
        print("osfork_child=%s" % work(0), flush=True)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    print("osfork_status=%d" % os.waitstatus_to_exitcode(st))
else:
    ctx = mp.get_context("fork")
    pool = ctx.Pool(int(os.environ.get("MP_POOL", "2")))
    res = pool.map_async(work, range(4)).get(timeout=20)
    pool.close()  # workers then exit on their own (terminate() would SIGTERM them)
    pool.join()
    print("pool_results=%s" % ",".join(map(str, res)))
print("done=1")
