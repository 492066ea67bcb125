"""The two-phase program of scripts/bench (issue 16, goal 6): the same numpy
BLAS and OpenMP work, in two phases of equal parts, that no single static
thread setting serves well.

  python twophase.py LIB TASKS MATMULS N REGIONS LEN [ROUNDS]

LIB: target/bench/libtwophase.so (scripts/bench-src/twophase_omp.c). One task
= MATMULS numpy N x N matmuls (OpenBLAS) and REGIONS libgomp parallel loops of
LEN elements (no num_threads clause), in ROUNDS rounds (default 2) of
MATMULS/ROUNDS matmuls then REGIONS/ROUNDS regions.

  phase 1: one caller (the main thread) runs TASKS tasks one after another;
  phase 2: 4 threads run TASKS tasks at once (ThreadPoolExecutor(4)).

Both phases run the same tasks (same seeds), so they do equal work. Prints
phase1_s, phase2_s, total_s (the two phases, imports excluded), team1/team2
(mean OpenMP team per phase), mean_team, and checksum: exact integer sums of
the OpenMP part and the repr of the BLAS results' sum in task order; it must
be the same with and without the shim. N must be one whose result OpenBLAS
gives bitwise equal at 1 and 2 threads: numpy 2.4's OpenBLAS 0.3.31 (Haswell
kernels) gives different last bits for 300, 350 and 500 but equal ones for
200, 256, 320, 384, 400 and 512 (when N/threads is not a multiple of the
kernel's unroll, the edge kernel sums in another order). The program checks
that phase 1 and phase 2 computed the same results.

BENCH_TPCTL=N: each phase-2 task thread runs its task inside
threadpoolctl.threadpool_limits(N) (phase 1's lone caller is not limited: the
per-worker rule of joblib, written by hand).
"""
import ctypes
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from workloads import _limits  # the bench's one reading of BENCH_TPCTL

WORKERS = 4


def main():
    lib_path, tasks, matmuls, n, regions, length = sys.argv[1], *map(int, sys.argv[2:7])
    rounds = int(sys.argv[7]) if len(sys.argv) > 7 else 2
    lib = ctypes.CDLL(lib_path)
    lib.tp_regions.restype = ctypes.c_uint64
    lib.tp_regions.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.POINTER(ctypes.c_long)]

    inputs = []
    for s in range(tasks):
        rng = np.random.default_rng(1000 + s)
        inputs.append((rng.random((n, n)), rng.random((n, n))))

    def task(s, limited):
        a, b = inputs[s]
        teams = ctypes.c_long(0)
        omp_sum = 0
        blas_sum = 0.0
        with _limits() if limited else _nolimit():
            for rnd in range(rounds):
                c = a
                for _ in range(max(1, matmuls // rounds)):
                    c = a @ b
                    c *= 1.0 / n
                blas_sum += float(c[0, 0]) + float(c[-1, -1])
                omp_sum += lib.tp_regions(max(1, regions // rounds), length, s * rounds + rnd, ctypes.byref(teams))
        return omp_sum % (1 << 64), blas_sum, teams.value

    t0 = time.perf_counter()
    out1 = [task(s, False) for s in range(tasks)]
    t1 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as ex:
        out2 = list(ex.map(lambda s: task(s, True), range(tasks)))
    t2 = time.perf_counter()

    per_phase_regions = tasks * max(1, regions // rounds) * rounds
    team1 = sum(t for _, _, t in out1) / per_phase_regions
    team2 = sum(t for _, _, t in out2) / per_phase_regions
    assert [o[:2] for o in out1] == [o[:2] for o in out2], "phase 1 and phase 2 computed different results"
    omp_total = sum(o for o, _, _ in out1) % (1 << 64)
    blas_total = 0.0
    for _, b, _ in out1:
        blas_total += b
    print("tasks=%d\nphase1_s=%.4f\nphase2_s=%.4f\ntotal_s=%.4f" % (tasks, t1 - t0, t2 - t1, t2 - t0))
    print("team1=%.3f\nteam2=%.3f\nmean_team=%.3f" % (team1, team2, (team1 + team2) / 2))
    print("checksum=%016x:%r" % (omp_total, blas_total))


def _nolimit():
    import contextlib
    return contextlib.nullcontext()


if __name__ == "__main__":
    main()
