"""Soak test (scripts/soak): a mixed workload under the shim, every member in
one shared named ledger, with random SIGKILLs; invariants checked every second.

Workers (each one process group, with a timeout, its output checked):
threads of GNU and LLVM OpenMP regions, single-threaded region loops, threads
of Debian OpenBLAS dgemm, a fork/vfork/posix_spawn/thread storm with regions
and BLAS, dlopen/dlclose cycles of two OpenMP libraries at one address, and
Python (numpy BLAS from threads, a ctypes-loaded libgomp library, then a
fork-started multiprocessing Pool). A killer SIGKILLs a random worker's whole
process group at random moments.

Every second, from `parbudget ledger --json NAME` (the audit; it reads the
ledger without locking it):
- the audit succeeds and the ledger validates, with the budget we set;
- `used` equals the threads its member slots hold (a lock-free read can catch
  an update half-done, and a member killed inside the critical section leaves
  them apart until the next lock: apart for more than 5 s is a failure);
- each live member's slot holds at most (its threads that can be inside a
  region or BLAS call at once) x budget, and `used` is at most those
  callers (each counts itself) + budget - 1 (the extras granted because they
  fit: each such grant left room for its caller) + the extras promised teams
  may keep over the budget (callers in workers that make promises x
  (budget - 1)) + what dead members' slots still hold (taken back at the
  next short request);
- no worker runs past its timeout (a hang).
At the end: no worker left, a fresh process gets the whole budget, `used` is
0 with no live member, and no /dev/shm file of ours is left.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(ROOT, "target/release/libparbudget.so")
LAUNCHER = os.path.join(ROOT, "target/release/parbudget")
FIX = os.path.join(ROOT, "target/fixtures")
PY = os.path.join(ROOT, "target/venv/bin/python")

PY_WORK = r"""
import ctypes, multiprocessing as mp, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
a = np.full((160, 160), 1.0); b = np.full((160, 160), 0.5)
def f(i):
    c = a @ b
    return bool((c == 80.0).all())
with ThreadPoolExecutor(3) as ex:
    ok_threads = all(ex.map(f, range(24)))
lib = ctypes.CDLL(sys.argv[1])
lib.fix_regions.restype = ctypes.c_long
teams = lib.fix_regions(300, 512)
with mp.get_context("fork").Pool(2) as p:
    ok_pool = all(p.map(f, range(8)))
print("ok_threads=%d" % ok_threads)
print("ok_pool=%d" % ok_pool)
print("teams_ok=%d" % (300 <= teams <= 600))
"""


def kv(text):
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def check_threads_omp(k, t, r):
    m = float(k.get("mean_team", "0"))
    return k.get("regions") == str(t * r) and 1.0 <= m <= 2.0


def check_regions(k, n, length):
    want = n * (length * (length - 1) / 2) * 1e-6
    got = float(k.get("checksum", "nan"))
    return k.get("regions") == str(n) and abs(got - want) <= 1e-6 * want


def check_storm(k, children):
    return (
        k.get("children") == str(children)
        and k.get("children_ok") == str(children)
        and k.get("spawns") == k.get("spawns_ok")
        and k.get("regions_bad") == "0"
        and k.get("blas_bad") == "0"
        and k.get("threads_bad") == "0"
    )


# name: (argv, callers, promises, check, timeout s). `callers`: threads of the
# process that can be inside a region or BLAS call at once; `promises`: may
# keep a promised team over the budget (a num_threads clause, a team asked
# through omp_get_max_threads).
KINDS = {
    "omp_threads_gcc": (
        [f"{FIX}/threads_omp_gcc", "3", "400"], 3, False,
        lambda k: check_threads_omp(k, 3, 400), 60),
    "omp_threads_clang": (
        [f"{FIX}/threads_omp_clang", "3", "400"], 3, False,
        lambda k: check_threads_omp(k, 3, 400), 60),
    "regions_gcc": (
        [f"{FIX}/regions_gcc", "3000", "4096"], 1, False,
        lambda k: check_regions(k, 3000, 4096), 60),
    "regions_clang": (
        [f"{FIX}/regions_clang", "3000", "4096"], 1, False,
        lambda k: check_regions(k, 3000, 4096), 60),
    "blas_debian": (
        [f"{FIX}/blas_threads", "3", "30"], 3, False,
        lambda k: k.get("results_ok") == "1", 60),
    "storm": (
        [f"{FIX}/storm", "2", "40"], 4, True,
        lambda k: check_storm(k, 40), 90),
    "dlcycle": (
        [f"{FIX}/dlcycle", "40", f"{FIX}/libbound_sys.so", f"{FIX}/libbound.so"], 1, True,
        lambda k: k.get("cycles") == "40" and k.get("wrong") == "0", 60),
    "python": (
        [PY, "-c", PY_WORK, f"{FIX}/libregions.so"], 4, True,
        lambda k: k.get("ok_threads") == "1" and k.get("ok_pool") == "1"
        and k.get("teams_ok") == "1", 90),
}
# Processes our workers start themselves (forked children, pool workers,
# spawned /bin/true) are members too: one caller each, maybe promised.
DESCENDANT_CALLERS = 1


class Worker:
    def __init__(self, kind, env, logdir, seq):
        argv, self.callers, self.promises, self.check, self.timeout = KINDS[kind]
        self.kind = kind
        self.out_path = os.path.join(logdir, f"{seq:06d}-{kind}.out")
        self.err_path = os.path.join(logdir, f"{seq:06d}-{kind}.err")
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.start = time.monotonic()
        self.killed = False
        self.hung = False
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
            process_group=0)
        self.pid = self.proc.pid

    def killpg(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self):
        self.out.close()
        self.err.close()


def clean_env(cores, name):
    env = {
        k: v for k, v in os.environ.items()
        if not (k.startswith("PARBUDGET_") or k == "LD_PRELOAD" or k.endswith("_NUM_THREADS")
                or k.endswith("_MAX_THREADS") or k == "VECLIB_MAXIMUM_THREADS"
                or k.startswith("OMP_"))
    }
    env.update(LD_PRELOAD=SHIM, PARBUDGET_CORES=str(cores), PARBUDGET_LEDGER=name)
    return env


def read_again(name):
    """used and the members' held sum, read again through the launcher. (Until
    now this read the file with the layout of version 1, whose size no ledger
    has had since the cells came: every re-read failed, and a transient was
    only ever cleared by the next check.)"""
    l, _ = audit(name)
    return None if l is None else (l["used"], l["held_by_members"])


def audit(name):
    r = subprocess.run([LAUNCHER, "ledger", "--json", name], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return json.loads(r.stdout)[0], None


def descendant_of(pid):
    """`descendant of KIND-pgid` from /proc (workers lead their own groups)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        return f"a process of group {fields[2]}, parent {fields[1]}"
    except (OSError, ValueError, IndexError):
        return "gone"


def our_shm_files(name, pids):
    """/dev/shm files the soak's processes made: its ledger, or a generated
    ledger name (parbudget-UID-PID-TIME) of one of its workers."""
    found = []
    for f in os.listdir("/dev/shm"):
        if "/" + f == name:
            found.append(f)
        elif f.startswith("parbudget-"):
            parts = f.split("-")
            if len(parts) >= 4 and parts[2].isdigit() and int(parts[2]) in pids:
                found.append(f)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    a = ap.parse_args()
    for p in [SHIM, LAUNCHER, PY] + [KINDS[k][0][0] for k in KINDS]:
        if not os.path.exists(p):
            sys.exit(f"soak: {p} missing (cargo build --release; make -C c-fixtures; scripts/setup)")
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    name = f"/parbudget-soak-{os.getpid()}"
    if os.path.exists("/dev/shm" + name):
        os.unlink("/dev/shm" + name)
    logdir = os.path.join(ROOT, "target/soak", str(os.getpid()))
    os.makedirs(logdir, exist_ok=True)
    env = clean_env(a.cores, name)
    budget = a.cores

    failures = []
    def fail(msg):
        failures.append(msg)
        print(f"soak FAIL: {msg}", file=sys.stderr, flush=True)

    stats = dict(started=0, completed=0, killed=0, kills=0, checks=0, transient=0,
                 max_used=0, max_members=0, shed=0)
    by_kind = {k: [0, 0, 0] for k in KINDS}  # started, completed ok, killed
    running = []
    all_pids = set()
    seq = 0
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    next_check = t0 + 1
    next_kill = t0 + rng.uniform(0.5, 3.0)
    next_progress = t0 + 30
    apart_since = None

    def reap(w, rc):
        w.close()
        running.remove(w)
        if w.killed:
            stats["killed"] += 1
            by_kind[w.kind][2] += 1
            if not w.hung:
                os.unlink(w.out_path)
                os.unlink(w.err_path)
            return
        out = open(w.out_path).read()
        err = open(w.err_path).read()
        shim_lines = [l for l in err.splitlines() if l.startswith("parbudget[")]
        # A member killed inside the critical section leaves the lock
        # EOWNERDEAD: the next one repairs it and says so (ledger_repaired).
        unexpected = [l for l in shim_lines if "ledger_repaired" not in l]
        if rc != 0 or not w.check(kv(out)):
            fail(f"{w.kind} pid {w.pid}: exit {rc}, wrong or missing result "
                 f"(see {w.out_path}): {out[-400:]!r} {err[-400:]!r}")
        elif unexpected:
            fail(f"{w.kind} pid {w.pid}: unexpected shim lines: {unexpected[:3]}")
        else:
            stats["completed"] += 1
            by_kind[w.kind][1] += 1
            os.unlink(w.out_path)
            os.unlink(w.err_path)

    def check():
        nonlocal apart_since
        stats["checks"] += 1
        now = time.monotonic()
        for w in running:
            if now - w.start > w.timeout:
                fail(f"{w.kind} pid {w.pid} hung: running {now - w.start:.0f} s "
                     f"(timeout {w.timeout} s)")
                w.killed = w.hung = True  # not judged on its output; logs kept
                w.killpg()
        if not os.path.exists("/dev/shm" + name):
            return  # no member has run a region yet
        l, err = audit(name)
        if l is None:
            fail(f"audit failed: {err}")
            return
        if l["budget"] != budget:
            fail(f"audit: budget {l['budget']}, expected {budget}")
        used = l["used"]
        stats["max_used"] = max(stats["max_used"], used)
        stats["max_members"] = max(stats["max_members"], len(l["members"]))
        if used != l["held_by_members"]:
            # A lock-free read can catch an update half-done: read again.
            for _ in range(5):
                d = read_again(name)
                if d is not None and d[0] == d[1]:
                    break
                time.sleep(0.002)
            else:
                if apart_since is None:
                    apart_since = now
                elif now - apart_since > 5:
                    fail(f"audit: used {used} != held by members {l['held_by_members']} "
                         f"for {now - apart_since:.1f} s: {l}")
                    apart_since = None
                stats["transient"] += 1
                return
            stats["transient"] += 1
        apart_since = None
        # Killed workers count until reaped: a zombie is "alive" to the
        # audit and keeps its slot until the next short request.
        mine = {w.pid: w for w in running}
        callers = promised = dead_held = 0
        for m in l["members"]:
            w = mine.get(m["pid"])
            if not m["alive"]:
                dead_held += m["held"]
                continue
            c = w.callers if w else DESCENDANT_CALLERS
            p = w.promises if w else True
            if m["held"] > c * budget:
                fail(f"audit: member {m['pid']} ({w.kind if w else descendant_of(m['pid'])}) holds "
                     f"{m['held']} > {c} callers x budget {budget}: {l}")
            callers += c
            if p:
                promised += c * (budget - 1)
        # Each caller counts itself; extras granted because they fit leave
        # at least the caller's own thread of the budget: together at most
        # budget - 1 outstanding; promised extras come on top.
        bound = callers + (budget - 1) + promised + dead_held
        if used > bound:
            fail(f"audit: used {used} > bound {bound} (callers {callers}, promised "
                 f"{promised}, dead members' {dead_held}): {l}")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # A CI timeout's SIGTERM (and SIGINT, ignored in background jobs) still
    # kills every worker group and removes the ledger (the finally below).
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"soak: {a.minutes} min, seed {seed}, ledger {name}, budget {budget}, "
          f"{a.concurrency} workers at once, logs {logdir}", flush=True)
    try:
        while True:
            now = time.monotonic()
            for w in list(running):
                rc = w.proc.poll()
                if rc is not None:
                    reap(w, rc)
            if now < end:
                while len(running) < a.concurrency:
                    kind = rng.choice(list(KINDS))
                    seq += 1
                    w = Worker(kind, env, logdir, seq)
                    running.append(w)
                    all_pids.add(w.pid)
                    stats["started"] += 1
                    by_kind[kind][0] += 1
            elif not running:
                break
            elif now > end + 120:
                fail(f"workers still running 120 s after the end: {[w.kind for w in running]}")
                for w in running:
                    w.killed = w.hung = True
                    w.killpg()
            if now >= next_kill and now < end:
                victims = [w for w in running if not w.killed]
                if victims:
                    w = rng.choice(victims)
                    w.killed = True
                    w.killpg()
                    stats["kills"] += 1
                next_kill = now + rng.uniform(0.3, 3.0)
            if now >= next_check:
                check()
                next_check += 1
                if next_check < now:
                    stats["shed"] += 1
                    next_check = now + 1
            if now >= next_progress:
                print(f"soak: {int(now - t0)} s, {stats['completed']} completed, "
                      f"{stats['kills']} kills, {stats['checks']} checks, "
                      f"{len(failures)} failures", flush=True)
                next_progress += 30
            time.sleep(0.02)
        check()

        # The end: a fresh process gets the whole budget; nothing held.
        t = time.monotonic()
        r = subprocess.run([f"{FIX}/omp_teams_gcc", "0", str(budget)], env=env,
                           capture_output=True, text=True, timeout=30)
        fresh_ms = (time.monotonic() - t) * 1000
        k = kv(r.stdout)
        if r.returncode != 0 or k.get("initial_max_threads") != str(budget) \
                or k.get("clause_team") != str(budget):
            fail(f"a fresh process did not get the whole budget: {r.stdout!r} {r.stderr!r}")
        l, err = audit(name)
        if l is None:
            fail(f"final audit failed: {err}")
        else:
            live = [m for m in l["members"] if m["alive"]]
            if l["used"] != 0 or live:
                fail(f"final audit: used {l['used']}, live members {live}: {l}")
    finally:
        for w in running:
            w.killpg()
        if os.path.exists("/dev/shm" + name):
            os.unlink("/dev/shm" + name)
    time.sleep(0.2)
    left = our_shm_files(name, all_pids)
    if left:
        fail(f"/dev/shm files left behind: {left}")
    dur = time.monotonic() - t0
    kinds = " ".join(f"{k}={v[0]}/{v[1]}/{v[2]}" for k, v in by_kind.items())
    print(f"soak: by kind (started/ok/killed): {kinds}")
    print(f"soak {'ok' if not failures else 'FAILED'}: duration_s={dur:.0f} seed={seed} "
          f"workers={stats['started']} completed_ok={stats['completed']} "
          f"kills={stats['kills']} invariant_checks={stats['checks']} "
          f"transient_used_mismatch={stats['transient']} max_used={stats['max_used']} "
          f"max_members={stats['max_members']} fresh_process_ms={fresh_ms:.0f} "
          f"failures={len(failures)}", flush=True)
    try:
        os.rmdir(logdir)  # empty unless a worker failed
    except OSError:
        pass
    if failures:
        for f in failures[:20]:
            print(f"  - {f}")
        sys.exit(1)


if __name__ == "__main__":
    main()
