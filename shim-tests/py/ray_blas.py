"""A local Ray cluster (num_cpus=2) whose workers get the shim only through
ray.init(runtime_env={"env_vars": ...}): the driver itself runs without it.
Two tasks at once (a rendezvous makes them two workers), then one task alone
on a reused worker. Prints what the workers saw: their pids, the ledger they
joined and its members (`parbudget ledger --json NAME`), OMP_NUM_THREADS,
threadpoolctl's OpenBLAS size, and the mean team the shim granted the lone
task's BLAS calls.
usage: ray_blas.py LAUNCHER ray|budget
  ray     env_vars = parbudget.environ(cores=2) + PARBUDGET_LEDGER: Ray sets
          OMP_NUM_THREADS to the task's CPUs (1) before the worker imports numpy
  budget  the same plus OMP_NUM_THREADS=2 (the budget), which Ray then keeps"""
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import time

import parbudget
import ray

launcher, mode = sys.argv[1], sys.argv[2]
ledger = "/parbudget-raytest-%d" % os.getpid()
env = parbudget.environ(cores=2)
env["PARBUDGET_LEDGER"] = ledger
if mode == "budget":
    env["OMP_NUM_THREADS"] = "2"


def live_report():
    try:
        f = ctypes.CDLL(None).parbudget_report_json
    except AttributeError:
        return None
    f.restype = ctypes.c_ssize_t
    buf = ctypes.create_string_buffer(1 << 16)
    n = f(buf, len(buf))
    return json.loads(buf.raw[:n]) if 0 < n <= len(buf) else None


def blas_team_sum():
    rep = live_report()
    if rep is None:
        return 0, 0.0
    obs = [r for r in rep["runtimes"] if r["impl"] == "openblas"]
    return sum(r["regions"] for r in obs), sum(r["regions"] * r["mean_team"] for r in obs)


@ray.remote(num_cpus=0)
class Rendezvous:
    def __init__(self, n):
        self.n, self.seen = n, 0

    def arrive(self):
        self.seen += 1

    def count(self):
        return self.seen


@ray.remote
def task(seed, meet=None):
    import numpy as np
    from threadpoolctl import threadpool_info

    if meet is not None:
        ray.get(meet.arrive.remote())
        t = time.monotonic()
        while ray.get(meet.count.remote()) < 2 and time.monotonic() - t < 20:
            time.sleep(0.01)
    r0, s0 = blas_team_sum()
    # Small integers: every sum is exact, whatever the team splits (numpy's
    # OpenBLAS rounds a product of random floats differently on 1 and 2
    # threads on some CPUs), so the digest is the same at any team size.
    a = np.random.default_rng(seed).integers(0, 8, (600, 600)).astype(float)
    for _ in range(6):
        b = a @ a
    r1, s1 = blas_team_sum()
    rep = live_report()
    return {
        "pid": os.getpid(),
        "digest": hashlib.sha256(b.tobytes()).hexdigest()[:16],
        "ledger": os.environ.get("PARBUDGET_LEDGER", ""),
        "preloaded": rep is not None,
        "members": rep["ledger"]["members"] if rep else 0,
        "omp": os.environ.get("OMP_NUM_THREADS", "unset"),
        "tp_openblas": [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"],
        "calls": r1 - r0,
        "team": (s1 - s0) / (r1 - r0) if r1 > r0 else 0.0,
    }


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
try:
    meet = Rendezvous.remote(2)
    pair = ray.get([task.remote(1, meet), task.remote(2, meet)], timeout=60)
    audit = json.loads(subprocess.run([launcher, "ledger", "--json", ledger], capture_output=True,
                                      text=True, timeout=20).stdout)[0]
    alone = ray.get(task.remote(3), timeout=60)
finally:
    ray.shutdown()
    try:
        os.unlink("/dev/shm" + ledger)  # a chosen name outlives its members
    except FileNotFoundError:
        pass
pids = sorted({r["pid"] for r in pair})
members = sorted(m["pid"] for m in audit["members"])
print("driver_preloaded=%d" % int(live_report() is not None))
print("pair_workers=%d" % len(pids))
print("pair_preloaded=%s" % ",".join(str(int(r["preloaded"])) for r in pair))
print("pair_ledgers=%s" % ",".join(sorted({r["ledger"] for r in pair})))
print("workers_in_audit=%d" % sum(p in members for p in pids))
print("audit_members=%d" % len(members))
print("audit_budget=%d" % audit["budget"])
print("alone_reused=%d" % int(alone["pid"] in pids))
print("alone_omp=%s" % alone["omp"])
print("alone_tp_openblas=%s" % ",".join(map(str, alone["tp_openblas"])))
print("alone_calls=%d" % alone["calls"])
print("alone_team=%.3f" % alone["team"])
print("digest=%s" % hashlib.sha256(",".join(r["digest"] for r in pair + [alone]).encode()).hexdigest()[:16])
