"""joblib Parallel(n_jobs=2) (loky workers) running numpy BLAS tasks.
Prints a digest of the results and the worker pids."""
import hashlib
import os

import numpy as np
from joblib import Parallel, delayed


def task(seed):
    # Small integers: every sum is exact, whatever the team splits (numpy's
    # OpenBLAS rounds a product of random floats differently on 1 and 2
    # threads on some CPUs), so the digest is the same at any team size.
    a = np.random.default_rng(seed).integers(0, 8, (300, 300)).astype(float)
    for _ in range(5):
        b = a @ a
    return os.getpid(), hashlib.sha256(b.tobytes()).hexdigest()[:16]


res = Parallel(n_jobs=2)(delayed(task)(s) for s in range(6))
print("digest=%s" % hashlib.sha256(",".join(r[1] for r in res).encode()).hexdigest()[:16])
print("workers=%s" % ",".join(str(p) for p in sorted({r[0] for r in res})))
