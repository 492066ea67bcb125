"""``parbudget kernel install|list|remove``: Jupyter kernelspecs under the budget.

The launcher parses the command line and runs this module in the Python the
kernel is for (its ``sys.executable`` goes into the kernel's argv). Not a
public interface: its arguments are the launcher's business. Every failure is
one line on stderr, ``parbudget: ...``, and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

from . import LIBRARY_NAME, __version__


class _Fail(Exception):
    pass


def _jupyter() -> Any:
    try:
        from ipykernel import kernelspec as ipk
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as e:
        raise _Fail(
            f"ipykernel and jupyter_client are needed in {sys.executable} ({e}): "
            f"{sys.executable} -m pip install ipykernel"
        ) from None
    return ipk, KernelSpecManager


def _is_ours(spec: Dict[str, Any]) -> bool:
    if "parbudget" in (spec.get("metadata") or {}):
        return True
    pre = (spec.get("env") or {}).get("LD_PRELOAD", "")
    return any(os.path.basename(e) == LIBRARY_NAME for e in pre.split(":"))


def _install(name: str, sys_prefix: bool, force: bool, env: Dict[str, str]) -> int:
    ipk, KernelSpecManager = _jupyter()
    ksm = KernelSpecManager()
    if sys_prefix:
        dest = os.path.join(os.path.abspath(sys.prefix), "share", "jupyter", "kernels", name)
    else:
        dest = os.path.join(ksm.user_kernel_dir, name)
    if os.path.exists(dest) and not force:
        raise _Fail(f"kernelspec {name} already exists at {dest}: pass --force to replace it")
    base = ipk.get_kernel_dict()
    cores = env.get("PARBUDGET_CORES")
    budget = f"{cores} core{'s' if cores != '1' else ''}" if cores else "auto budget"
    metadata = dict(base.get("metadata") or {})
    metadata["parbudget"] = {"version": __version__, "cores": int(cores) if cores else None}
    overrides = {
        "display_name": f"{base.get('display_name', 'Python 3')} [parbudget, {budget}]",
        "env": {**(base.get("env") or {}), **env},
        "metadata": metadata,
    }
    tmp = tempfile.mkdtemp(prefix="parbudget-kernel-")
    try:
        src = ipk.write_kernel_spec(os.path.join(tmp, name), overrides=overrides)
        if sys_prefix:
            path = ksm.install_kernel_spec(src, kernel_name=name, prefix=sys.prefix, replace=True)
        else:
            path = ksm.install_kernel_spec(src, kernel_name=name, user=True, replace=True)
    except OSError as e:
        raise _Fail(f"cannot write kernelspec {name} at {dest}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"installed kernelspec {name} ({overrides['display_name']}) in {path}")
    return 0


def _ours() -> Dict[str, Dict[str, Any]]:
    _, KernelSpecManager = _jupyter()
    specs = KernelSpecManager().get_all_specs()
    return {n: s for n, s in sorted(specs.items()) if _is_ours(s.get("spec") or {})}


def _list() -> int:
    ours = _ours()
    if not ours:
        print("no parbudget kernelspecs")
    for name, s in ours.items():
        spec = s.get("spec") or {}
        cores = (spec.get("env") or {}).get("PARBUDGET_CORES") or "auto"
        python = (spec.get("argv") or ["?"])[0]
        print(f"{name}\tcores={cores}\tpython={python}\t{s.get('resource_dir')}")
    return 0


def _remove(name: str) -> int:
    _, KernelSpecManager = _jupyter()
    specs = KernelSpecManager().get_all_specs()
    if name not in specs:
        raise _Fail(f"no kernelspec named {name} (parbudget kernel list shows them)")
    s = specs[name]
    where = s.get("resource_dir")
    if not _is_ours(s.get("spec") or {}):
        raise _Fail(
            f"kernelspec {name} at {where} was not installed by parbudget; "
            "remove it with jupyter kernelspec remove"
        )
    try:
        shutil.rmtree(where)
    except OSError as e:
        raise _Fail(f"cannot remove {where}: {e}") from None
    print(f"removed kernelspec {name} from {where}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point for the launcher: ``install``, ``list`` or ``remove``."""
    p = argparse.ArgumentParser(prog="parbudget kernel")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install")
    i.add_argument("--name", required=True)
    w = i.add_mutually_exclusive_group()
    w.add_argument("--user", action="store_true")
    w.add_argument("--sys-prefix", action="store_true")
    i.add_argument("--force", action="store_true")
    i.add_argument("--env", action="append", default=[])
    sub.add_parser("list")
    r = sub.add_parser("remove")
    r.add_argument("name")
    a = p.parse_args(argv)
    try:
        if a.cmd == "install":
            env = dict(kv.split("=", 1) for kv in a.env)
            return _install(a.name, a.sys_prefix, a.force, env)
        if a.cmd == "list":
            return _list()
        return _remove(a.name)
    except _Fail as e:
        print(f"parbudget: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
