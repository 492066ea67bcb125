"""8 tasks of 60 numpy matmuls (400x400), from one thread, a
ThreadPoolExecutor(4), or a multiprocessing Pool(4) (fork). Prints seconds."""
import sys
import time

import numpy as np

mode = sys.argv[1]
tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 8
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 60


def task(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((400, 400))
    b = rng.random((400, 400))
    for _ in range(reps):
        c = a @ b
    # Checked against the element computed without BLAS (math.fsum is exact
    # rounding of the true sum; BLAS may only reorder it).
    import math
    want = math.fsum(float(x) * float(y) for x, y in zip(a[0, :], b[:, 0]))
    return abs(float(c[0, 0]) - want) <= 1e-12 * abs(want)


if __name__ == "__main__":
    t = time.perf_counter()
    if mode == "serial":
        res = [task(i) for i in range(tasks)]
    elif mode == "threads":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as ex:
            res = list(ex.map(task, range(tasks)))
    else:
        import multiprocessing as mp

        pool = mp.get_context(mode).Pool(4)
        res = pool.map(task, range(tasks), chunksize=1)
        pool.close()
        pool.join()
    print("seconds=%.3f" % (time.perf_counter() - t))
    print("checksum_ok=%d" % int(len(res) == tasks and all(res)))
