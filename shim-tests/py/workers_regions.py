"""N worker processes (multiprocessing, fork or spawn) each run R short libgomp
regions through ctypes; prints each worker's mean team. The parent runs no
region itself, so fork children are not in the fork-after-OpenMP case."""
import ctypes
import multiprocessing as mp
import sys

lib_path, method, n, regions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def work(_):
    lib = ctypes.CDLL(lib_path)
    lib.fix_regions.restype = ctypes.c_long
    return lib.fix_regions(regions, 4096) / regions


if __name__ == "__main__":
    ctx = mp.get_context(method)
    pool = ctx.Pool(n)
    means = pool.map(work, range(n), chunksize=1)
    pool.close()
    pool.join()
    print("means=%s" % ",".join("%.3f" % m for m in means))
    print("mean_of_means=%.3f" % (sum(means) / len(means)))
