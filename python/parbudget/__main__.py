"""``python -m parbudget ...``: the ``parbudget`` launcher, for the Python it
was installed with (``run``, ``doctor``, ``kernel``; ``--help`` lists them)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from typing import List, Optional

from . import _distribution_file


def _launcher_candidates() -> List[str]:
    cands = []
    recorded = _distribution_file("parbudget")  # the wheel's script
    if recorded:
        cands.append(recorded)
    cands.append(os.path.join(sysconfig.get_path("scripts"), "parbudget"))
    which = shutil.which("parbudget")
    if which:
        cands.append(which)
    return cands


def main(argv: Optional[List[str]] = None) -> int:
    """Exec the launcher with ``argv`` (default ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    cands = _launcher_candidates()
    exe = next((c for c in cands if os.path.isfile(c) and os.access(c, os.X_OK)), None)
    if exe is None:
        print(
            f"parbudget: the parbudget launcher is not installed: looked at {', '.join(cands)} "
            "(a broken install: reinstall parbudget)",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    # `parbudget kernel` writes kernelspecs for this Python.
    env["PARBUDGET_PYTHON"] = sys.executable
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, [exe] + args, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
