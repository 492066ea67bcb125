"""A Dask LocalCluster (2 worker processes, 1 thread each) running BLAS-heavy
tasks: one alone, then N at once. Prints each phase's seconds, a digest of
the results, and what each worker process saw of the shim: its ledger name
and members (from the shim's own live report, when it is loaded there).
usage: dask_blas.py [N [config]]   (N tasks at once, default 4)
  config: the driver runs without the shim and gives it to the workers only
          through Dask's distributed.nanny.pre-spawn-environ (the Nanny puts it
          in os.environ right before it spawns the worker process): the
          variables of parbudget.environ(cores=2), one PARBUDGET_LEDGER name,
          and Dask's own OMP/MKL/OPENBLAS_NUM_THREADS=1 left out"""
import ctypes
import hashlib
import json
import os
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4


def task(seed):
    import numpy as np

    # Small integers: every sum is exact, whatever the team splits (numpy's
    # OpenBLAS rounds a product of random floats differently on 1 and 2
    # threads on some CPUs), so the digest is the same at any team size.
    a = np.random.default_rng(seed).integers(0, 8, (1000, 1000)).astype(float)
    for _ in range(8):
        b = a @ a
    lib = ctypes.CDLL(None)
    report = None
    try:
        f = lib.parbudget_report_json
        f.restype = ctypes.c_ssize_t
        buf = ctypes.create_string_buffer(1 << 16)
        n = f(buf, len(buf))
        if 0 < n <= len(buf):
            report = json.loads(buf.raw[:n])
    except AttributeError:
        pass
    ledger = report["ledger"] if report else None
    return (
        hashlib.sha256(b.tobytes()).hexdigest()[:16],
        os.getpid(),
        os.environ.get("PARBUDGET_LEDGER", ""),
        ledger["members"] if ledger else 0,
        os.environ.get("OPENBLAS_NUM_THREADS", ""),
    )


if __name__ == "__main__":
    import dask
    from dask.distributed import Client, LocalCluster

    named = None
    if len(sys.argv) > 2 and sys.argv[2] == "config":
        import parbudget

        named = "/parbudget-dasktest-%d" % os.getpid()
        env = {"MALLOC_TRIM_THRESHOLD_": "65536", **parbudget.environ(cores=2), "PARBUDGET_LEDGER": named}
        dask.config.set({"distributed.nanny.pre-spawn-environ": env})
        print("driver_preloaded=%d" % int(hasattr(ctypes.CDLL(None), "parbudget_report_json")))

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(task, 99).result()  # warm: workers import numpy
        t = time.perf_counter()
        alone = client.submit(task, 0, pure=False).result()
        print("alone_seconds=%.3f" % (time.perf_counter() - t))
        t = time.perf_counter()
        many = client.gather([client.submit(task, s, pure=False) for s in range(1, N + 1)])
        print("many_seconds=%.3f" % (time.perf_counter() - t))
        res = [alone] + many
        print("digest=%s" % hashlib.sha256(",".join(r[0] for r in res).encode()).hexdigest()[:16])
        print("worker_pids=%d" % len({r[1] for r in res}))
        print("ledgers=%s" % ",".join(sorted({r[2] or "-" for r in res})))
        print("max_members=%d" % max(r[3] for r in res))
        print("worker_openblas_env=%s" % ",".join(sorted({r[4] or "unset" for r in res})))
    if named:
        try:
            os.unlink("/dev/shm" + named)  # a chosen name outlives its members
        except FileNotFoundError:
            pass
