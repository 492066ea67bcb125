"""parbudget from Python: one core budget for every native thread pool.

The budget itself is enforced by ``libparbudget.so``, an ``LD_PRELOAD`` shim
that must be loaded when the process starts (``parbudget run -- CMD`` or
``python -m parbudget run -- CMD`` does that). This module does not load it;
it tells whether this process runs under it and hands out what another
process needs to run under it:

- :func:`status`: the shim's live report of this process, or ``None``;
- :func:`library_path`: the absolute path of the installed ``libparbudget.so``;
- :func:`environ`: the variables that put a process under the budget.

It has no dependencies beyond the standard library.
"""

from __future__ import annotations

import ctypes
import json
import operator
import os
import site
import sys
from typing import Any, Dict, List, Optional

__all__ = ["status", "library_path", "environ", "__version__"]

LIBRARY_NAME = "libparbudget.so"


def _distribution_file(name: str) -> Optional[str]:
    """The installed path of a file of the parbudget distribution, from its
    RECORD (pip records where it put the wheel's data and scripts)."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    try:
        files = metadata.distribution("parbudget").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            p = os.path.abspath(str(f.locate()))
            if os.path.isfile(p):
                return p
    return None


def _version() -> str:
    try:
        from importlib import metadata

        return metadata.version("parbudget")
    except Exception:
        return "unknown"


__version__: str = _version()


def _library_candidates() -> List[str]:
    cands = []
    recorded = _distribution_file(LIBRARY_NAME)
    if recorded:
        cands.append(recorded)
    for base in (sys.prefix, getattr(site, "USER_BASE", None)):
        if base:
            cands.append(os.path.join(base, "lib", LIBRARY_NAME))
    return cands


def library_path() -> str:
    """Return the absolute path of ``libparbudget.so``.

    The same rule as the ``parbudget`` launcher: ``PARBUDGET_LIB`` if it is
    set, else the copy this package was installed with (the wheel puts it in
    ``<prefix>/lib``, beside the launcher's ``<prefix>/bin``).

    Raises:
        FileNotFoundError: ``PARBUDGET_LIB`` is not a file, or no installed
            copy was found (the message names where it looked).
    """
    env = os.environ.get("PARBUDGET_LIB")
    if env:
        if os.path.isfile(env):
            return os.path.realpath(env)
        raise FileNotFoundError(f"PARBUDGET_LIB={env} is not a file")
    cands = _library_candidates()
    for c in cands:
        if os.path.isfile(c):
            return os.path.realpath(c)
    raise FileNotFoundError(
        f"{LIBRARY_NAME} not found: looked at {', '.join(cands)} "
        "(a broken install: reinstall parbudget, or set PARBUDGET_LIB)"
    )


def environ(
    cores: Optional[int] = None,
    *,
    log: Optional[str] = None,
    fork: Optional[str] = None,
    report: Optional[str] = None,
) -> Dict[str, str]:
    """Return the environment variables that put a process under the budget.

    For tools that start processes from an env dict (``subprocess``,
    ``multiprocessing`` workers started by a launcher, job schedulers)::

        subprocess.run(cmd, env={**os.environ, **parbudget.environ(cores=4)})

    Args:
        cores: the budget, 1 to 4096 (``PARBUDGET_CORES``); ``None`` leaves it
            to the shim (the affinity mask capped by the cgroup CPU quota).
        log: ``PARBUDGET_LOG`` (``error``, ``warn``, ``info``, ``debug``,
            ``trace`` or env_logger directives).
        fork: ``PARBUDGET_FORK``: ``fresh``, ``serial``, ``abort`` or ``warn``.
        report: ``PARBUDGET_REPORT``: ``stderr`` or a JSON file path (``%p``
            becomes the pid).

    Returns:
        ``LD_PRELOAD`` with the absolute path of ``libparbudget.so`` first and
        this process's other ``LD_PRELOAD`` entries after it, plus the
        ``PARBUDGET_*`` variables that were given. Only these keys: merge them
        into the environment you pass on.

    Raises:
        ValueError: a value out of range.
        FileNotFoundError: see :func:`library_path`.
    """
    env: Dict[str, str] = {}
    lib = library_path()
    others = [
        e
        for e in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":")
        if e and os.path.basename(e) != LIBRARY_NAME
    ]
    env["LD_PRELOAD"] = ":".join([lib] + others)
    if cores is not None:
        try:
            n = operator.index(cores)  # int, numpy integers; not 2.0 or "2"
        except TypeError:
            n = 0
        if isinstance(cores, bool) or not 1 <= n <= 4096:
            raise ValueError(f"cores must be a whole number from 1 to 4096, not {cores!r}")
        env["PARBUDGET_CORES"] = str(n)
    if log is not None:
        env["PARBUDGET_LOG"] = str(log)
    if fork is not None:
        if fork not in ("fresh", "serial", "abort", "warn"):
            raise ValueError(f"fork must be fresh, serial, abort or warn, not {fork!r}")
        env["PARBUDGET_FORK"] = fork
    if report is not None:
        env["PARBUDGET_REPORT"] = str(report)
    return env


def _report_fn() -> Any:
    """The shim's ``parbudget_report_json`` if the shim is loaded here."""
    try:
        # The global scope: where a preloaded shim's symbols are. Never
        # dlopen the shim itself: it must be preloaded to work.
        scope = ctypes.CDLL(None)
        fn = scope.parbudget_report_json
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_ssize_t
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return fn


def status() -> Optional[Dict[str, Any]]:
    """Return the shim's live report of this process, or ``None``.

    ``None`` when ``libparbudget.so`` is not loaded in this process (it was
    not preloaded) or has not initialised yet. Otherwise the report the shim
    writes at exit, as of now, parsed from its own JSON
    (``parbudget_report_json``): ``budget`` and ``budget_source``,
    ``fork_policy``, ``runtimes`` (each pool copy loaded: ``kind``, ``impl``,
    ``path``, ``threads_created``/``live``/``peak``, ``regions``,
    ``mean_team``, ``requests_cut``, ``over_budget``, ...), ``ledger``
    (``scope``, ``budget``, ``used``, ``members``, ``held_here``),
    ``other_threads`` and ``warnings``. The README lists every key.
    """
    fn = _report_fn()
    if fn is None:
        return None
    size = 16384
    for _ in range(16):
        buf = ctypes.create_string_buffer(size)
        n = fn(buf, size)
        if n < 0:
            return None
        if n <= size:
            return json.loads(buf.raw[:n].decode("utf-8"))
        size = n + 4096  # it may grow before the next call
    raise RuntimeError("parbudget_report_json: the report kept growing")
