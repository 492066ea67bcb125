"""The forking thread ran teams in two libgomp copies (scikit-learn's vendored
one through KMeans, the system one through a ctypes library), then os.fork():
the child runs both again. Prints each result in the parent and the child,
and the child's team in the ctypes library."""
import ctypes
import os
import sys

import numpy as np
from sklearn.cluster import KMeans

lib = ctypes.CDLL(sys.argv[1])
X = np.random.default_rng(0).random((4000, 8))


def both():
    km = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
    return "%r/%d" % (float(km.inertia_), int(km.labels_.sum())), lib.fix_team(0)


fit, team = both()
print("parent_fit=%s\nparent_team=%d" % (fit, team), flush=True)
pid = os.fork()
if pid == 0:
    fit, team = both()
    print("child_fit=%s\nchild_team=%d" % (fit, team), flush=True)
    os._exit(0)
_, st = os.waitpid(pid, 0)
print("child_status=%d" % os.waitstatus_to_exitcode(st))
fit, team = both()
print("parent_after_fit=%s\nparent_after_team=%d" % (fit, team))
