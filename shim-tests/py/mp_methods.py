"""multiprocessing Pool(2) with the spawn or forkserver start method, numpy
BLAS tasks. While the pool lives, the parent audits its ledger with
`parbudget ledger --json`. Prints the parent's pid, the workers' pids and
parents, the forkserver's pid, the ledger each worker joined, and which of
them the audit lists as members.
usage: mp_methods.py LAUNCHER spawn|forkserver"""
import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time


def task(seed):
    import numpy as np

    # Small integers: every sum is exact, whatever the team splits (numpy's
    # OpenBLAS 0.3.31 rounds a 300x300 product differently on 1 and 2 threads).
    a = np.random.default_rng(seed).integers(0, 8, (300, 300)).astype(float)
    b = a
    for _ in range(5):
        b = a @ a
    a = b
    time.sleep(0.2)  # both workers get tasks
    return os.getpid(), os.getppid(), os.environ.get("PARBUDGET_LEDGER", ""), hashlib.sha256(a.tobytes()).hexdigest()[:16]


if __name__ == "__main__":
    launcher, method = sys.argv[1], sys.argv[2]
    ctx = mp.get_context(method)
    pool = ctx.Pool(2)
    res = pool.map(task, range(6), chunksize=1)
    members = set()
    if os.environ.get("PARBUDGET_LEDGER"):  # none without the shim
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the audit is no member
        audit = json.loads(subprocess.run([launcher, "ledger", "--json", os.environ["PARBUDGET_LEDGER"]],
                                          capture_output=True, text=True, env=env, timeout=20).stdout)[0]
        members = {m["pid"] for m in audit["members"] if m["alive"]}
    server = 0
    if method == "forkserver":
        from multiprocessing import forkserver

        server = forkserver._forkserver._forkserver_pid
    pool.close()
    pool.join()
    if server:
        # Stop it now (what multiprocessing's own tests do), so it writes its
        # report as our child; by itself it leaves after we exit.
        forkserver._forkserver._stop()
    workers = sorted({r[0] for r in res})
    print("parent=%d" % os.getpid())
    print("ledger=%s" % os.environ.get("PARBUDGET_LEDGER", ""))
    print("workers=%s" % ",".join(map(str, workers)))
    print("worker_parents=%s" % ",".join(sorted({str(r[1]) for r in res})))
    print("worker_ledgers=%s" % ",".join(sorted({r[2] for r in res})))
    print("forkserver=%d" % server)
    print("parent_in_audit=%d" % int(os.getpid() in members))
    print("workers_in_audit=%d" % sum(w in members for w in workers))
    print("forkserver_in_audit=%d" % int(server in members))
    print("digest=%s" % hashlib.sha256(",".join(r[3] for r in res).encode()).hexdigest()[:16])
