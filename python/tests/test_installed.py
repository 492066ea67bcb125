"""The installed wheel, as a user gets it: run by scripts/test-wheel with the
Python of a fresh venv where `pip install target/wheels/parbudget-*.whl`
(plus numpy, ipykernel and jupyter_client) was run, and no cargo on PATH.

Environment (set by scripts/test-wheel):
  PARBUDGET_WHEEL        the wheel that was installed
  PARBUDGET_BASE_PYTHON  a Python outside the venv, for --user and system installs
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import unittest
import zipfile
from pathlib import Path

import parbudget

VENV = Path(sys.prefix)
BIN = VENV / "bin"
LAUNCHER = BIN / "parbudget"
PY = sys.executable
MATMUL = "import numpy; a = numpy.ones((400, 400)); (a @ a).sum()"


def clean_env(**extra: str) -> dict:
    """This environment without any parbudget or pool variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.startswith("PARBUDGET_")
            or k == "LD_PRELOAD"
            or k.endswith("_NUM_THREADS")
            or k.endswith("_MAX_THREADS")
            or k.startswith("OMP_")
        )
    }
    env.update(extra)
    return env


def run(args, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


class Layout(unittest.TestCase):
    def test_no_rust_toolchain_on_path(self):
        self.assertIsNone(shutil.which("cargo"), "these tests must run with cargo off PATH")
        self.assertIsNone(shutil.which("rustc"))

    def test_installed_not_the_source_tree(self):
        self.assertTrue(
            Path(parbudget.__file__).resolve().is_relative_to(VENV.resolve()), parbudget.__file__
        )

    def test_launcher_on_the_venv_path_and_shim_in_prefix_lib(self):
        self.assertEqual(Path(shutil.which("parbudget")), LAUNCHER)
        self.assertEqual(Path(parbudget.library_path()), (VENV / "lib/libparbudget.so").resolve())

    def test_one_version(self):
        wheel = Path(os.environ["PARBUDGET_WHEEL"]).name
        version = wheel.split("-")[1]
        self.assertEqual(parbudget.__version__, version)
        self.assertEqual(ok(run([LAUNCHER, "--version"])).stdout.strip(), f"parbudget {version}")
        r = ok(run([PY, "-m", "parbudget", "--version"]))
        self.assertEqual(r.stdout.strip(), f"parbudget {version}")

    def test_wheel_carries_the_shim_as_data(self):
        with zipfile.ZipFile(os.environ["PARBUDGET_WHEEL"]) as z:
            names = z.namelist()
        self.assertTrue(any(n.endswith(".data/data/lib/libparbudget.so") for n in names), names)
        self.assertTrue(any(n.endswith(".data/scripts/parbudget") for n in names), names)


class Module(unittest.TestCase):
    def test_status_is_none_without_the_shim(self):
        self.assertIsNone(parbudget.status())
        r = ok(run([PY, "-c", "import parbudget; print(parbudget.status())"]))
        self.assertEqual(r.stdout.strip(), "None")

    def test_status_is_the_live_report(self):
        code = (
            "import json, numpy, parbudget\n"
            "a = numpy.ones((400, 400))\n"
            "for _ in range(3): a @ a\n"
            "print(json.dumps(parbudget.status()))\n"
        )
        r = ok(run([LAUNCHER, "run", "--cores", "2", "--", PY, "-c", code]))
        s = json.loads(r.stdout)
        self.assertEqual(s["budget"], 2)
        self.assertEqual(s["budget_source"], "env")
        self.assertEqual(s["pid"] > 0, True)
        self.assertEqual(s["trigger"], "call")
        blas = [x for x in s["runtimes"] if x["impl"] == "openblas"]
        self.assertEqual(len(blas), 1, s["runtimes"])
        self.assertIn("numpy.libs", blas[0]["path"])
        self.assertGreaterEqual(blas[0]["regions"], 3, blas[0])  # sized calls so far
        self.assertLessEqual(blas[0]["threads_peak"], 2)
        self.assertEqual(s["ledger"]["budget"], 2)
        self.assertGreaterEqual(s["ledger"]["members"], 1)
        # The asking thread gave back the lease its BLAS calls left.
        self.assertEqual(s["ledger"]["held_here"], 0)
        self.assertEqual(s["ledger"]["leased_here"], 0)

    def test_status_reads_a_live_ledger_with_two_members(self):
        # A child joins the parent's ledger: the report is live, not the
        # one written at exit. A process joins at its first region, BLAS call
        # or thread-count query: each asks libgomp's omp_get_max_threads once.
        join = ("import ctypes; ctypes.CDLL('libgomp.so.1', mode=ctypes.RTLD_GLOBAL); "
                "ctypes.CDLL(None).omp_get_max_threads()")
        code = (
            "import os, subprocess, sys, time, parbudget\n"
            + join + "\n"
            "p = subprocess.Popen([sys.executable, '-c', " + repr(join + "; import time; time.sleep(30)") + "])\n"
            "for _ in range(200):\n"
            "    if parbudget.status()['ledger']['members'] >= 2: break\n"
            "    time.sleep(0.05)\n"
            "print(parbudget.status()['ledger']['members'])\n"
            "p.kill(); p.wait()\n"
        )
        r = ok(run([LAUNCHER, "run", "--cores", "1", "--", PY, "-c", code]))
        self.assertEqual(r.stdout.strip(), "2", r.stderr)

    def test_library_path_follows_parbudget_lib(self):
        so = parbudget.library_path()
        code = (
            "import parbudget\n"
            "try:\n    parbudget.library_path()\n"
            "except FileNotFoundError as e:\n    print('FNF', e)\n"
        )
        r = ok(run([PY, "-c", code], env=clean_env(PARBUDGET_LIB="/nonexistent/libparbudget.so")))
        self.assertIn("FNF PARBUDGET_LIB=/nonexistent/libparbudget.so is not a file", r.stdout)
        r = ok(run([PY, "-c", "import parbudget; print(parbudget.library_path())"],
                   env=clean_env(PARBUDGET_LIB=so)))
        self.assertEqual(r.stdout.strip(), so)

    def test_environ(self):
        so = parbudget.library_path()
        self.assertEqual(parbudget.environ(), {"LD_PRELOAD": so})
        self.assertEqual(parbudget.environ(3), {"LD_PRELOAD": so, "PARBUDGET_CORES": "3"})
        e = parbudget.environ(cores=1, log="info", fork="serial", report="stderr")
        self.assertEqual(e["PARBUDGET_LOG"], "info")
        self.assertEqual(e["PARBUDGET_FORK"], "serial")
        self.assertEqual(e["PARBUDGET_REPORT"], "stderr")
        for bad in (0, 4097, -1, 2.0, "2", True):
            with self.assertRaises(ValueError, msg=repr(bad)):
                parbudget.environ(bad)
        with self.assertRaises(ValueError):
            parbudget.environ(fork="sometimes")
        # The user's own preload stays, after ours; another copy of ours goes.
        code = "import parbudget; print(parbudget.environ()['LD_PRELOAD'])"
        r = ok(run([PY, "-c", code], env=clean_env(LD_PRELOAD="")))
        self.assertEqual(r.stdout.strip(), so)
        fake = str(Path(tempfile.mkdtemp()) / "libparbudget.so")
        env = clean_env()
        env["LD_PRELOAD_TEST"] = f"/x/libfoo.so {fake}:/y/libbar.so"
        code = (
            "import os, parbudget\n"
            "os.environ['LD_PRELOAD'] = os.environ['LD_PRELOAD_TEST']\n"
            "print(parbudget.environ()['LD_PRELOAD'])\n"
        )
        r = ok(run([PY, "-c", code], env=env))
        self.assertEqual(r.stdout.strip(), f"{so}:/x/libfoo.so:/y/libbar.so")

    def test_environ_puts_a_subprocess_under_the_budget(self):
        code = (
            "import os, subprocess, sys, parbudget\n"
            "env = {**os.environ, **parbudget.environ(cores=1)}\n"
            "subprocess.run([sys.executable, '-c', "
            "'import parbudget; print(parbudget.status()[\"budget\"])'], env=env, check=True)\n"
        )
        self.assertEqual(ok(run([PY, "-c", code])).stdout.strip(), "1")


class Cli(unittest.TestCase):
    def test_the_bar_run(self):
        code = "import parbudget; print(parbudget.status()['budget'])"
        r = ok(run([PY, "-m", "parbudget", "run", "--cores", "1", "--", "python", "-c", code]))
        self.assertEqual(r.stdout.strip(), "1")

    def test_the_bar_doctor_json_names_numpys_openblas(self):
        r = ok(run([LAUNCHER, "doctor", "--json", "--", "python", "-c", MATMUL]))
        rep = json.loads(r.stdout)
        blas = [x for x in rep["runtimes"] if x["impl"] == "openblas"]
        self.assertTrue(blas and "scipy_openblas" in blas[0]["path"], rep["runtimes"])
        self.assertTrue(blas[0]["path"].startswith(str(VENV)), blas[0]["path"])
        self.assertEqual(rep["exit_code"], 0)

    def test_python_m_doctor_summary_shows_numpy_version(self):
        r = ok(run([PY, "-m", "parbudget", "doctor", "--cores", "2", "--", PY, "-c", MATMUL]))
        self.assertIn("budget: 2 cores (from env)", r.stdout)
        self.assertIn("[numpy 2.", r.stdout)

    def test_bad_usage_one_line_exit_2(self):
        for args in (["frobnicate"], ["run", "--frobnicate", "--", "true"], ["kernel", "nope"],
                     ["kernel", "install", "--user", "--sys-prefix"], ["run"]):
            for launcher in ([LAUNCHER], [PY, "-m", "parbudget"]):
                r = run(launcher + args)
                self.assertEqual(r.returncode, 2, (launcher, args, r.stderr))
                self.assertEqual(len(r.stderr.splitlines()), 1, (args, r.stderr))
                self.assertTrue(r.stderr.startswith("parbudget: "), r.stderr)

    def test_help_is_claps(self):
        r = ok(run([LAUNCHER, "--help"]))
        for word in ("run", "doctor", "kernel", "Usage: parbudget <COMMAND>"):
            self.assertIn(word, r.stdout)
        r = ok(run([PY, "-m", "parbudget", "kernel", "install", "--help"]))
        for word in ("--cores", "--name", "--user", "--sys-prefix", "--force"):
            self.assertIn(word, r.stdout)

    def test_broken_install_names_where_it_looked(self):
        d = Path(tempfile.mkdtemp(prefix="pb-broken-"))
        (d / "bin").mkdir()
        shutil.copy2(LAUNCHER, d / "bin/parbudget")
        r = run([d / "bin/parbudget", "run", "--", "true"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn(f"looked at {d}/bin/libparbudget.so and {d}/lib/libparbudget.so",
                      r.stderr)
        shutil.rmtree(d)


class OtherInstalls(unittest.TestCase):
    """pip install --user, and a system install (staged with --root so the
    machine's Python is left alone: the same scheme paths, relocated)."""

    base = os.environ.get("PARBUDGET_BASE_PYTHON", "")

    def pip(self, *args, env=None):
        extra = []
        stdlib = sysconfig.get_paths()["stdlib"]
        r = run([self.base, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        stdlib = r.stdout.strip() or stdlib
        if Path(stdlib, "EXTERNALLY-MANAGED").exists():
            extra = ["--break-system-packages"]  # only into a scratch directory
        return ok(run([self.base, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                       "--disable-pip-version-check", "--no-warn-script-location", *extra,
                       *args, os.environ["PARBUDGET_WHEEL"]], env=env, timeout=300))

    def setUp(self):
        if not self.base:
            self.fail("PARBUDGET_BASE_PYTHON is not set (scripts/test-wheel sets it)")
        self.tmp = Path(tempfile.mkdtemp(prefix="pb-installs-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, bin_dir: Path, env: dict):
        launcher = bin_dir / "parbudget"
        self.assertTrue(launcher.is_file(), launcher)
        code = ("import parbudget; print(parbudget.status()['budget']); "
                "print(parbudget.library_path())")
        r = ok(run([launcher, "run", "--cores", "1", "--", self.base, "-c", code], env=env))
        budget, lib = r.stdout.split()
        self.assertEqual(budget, "1")
        self.assertEqual(lib, str((bin_dir / "../lib/libparbudget.so").resolve()))
        r = ok(run([self.base, "-m", "parbudget", "run", "--cores", "1", "--",
                    self.base, "-c", code], env=env))
        self.assertEqual(r.stdout.split()[0], "1")

    def test_user_install(self):
        env = clean_env(PYTHONUSERBASE=str(self.tmp / "userbase"))
        env.pop("PYTHONPATH", None)
        self.pip("--user", env=env)
        self.check(self.tmp / "userbase/bin", env)
        # `kernel` finds the Python it was installed for (pythonX.Y whose
        # user site holds the package), and says what that Python lacks.
        env["PATH"] = f"{Path(self.base).parent}:/usr/bin:/bin"
        r = run([self.tmp / "userbase/bin/parbudget", "kernel", "list"], env=env)
        base_real = ok(run([self.base, "-c", "import sys; print(sys.executable)"],
                           env=env)).stdout.strip()
        if r.returncode != 0:  # no ipykernel in the base Python
            self.assertEqual(r.returncode, 1)
            self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
            self.assertIn(f"needed in {Path(base_real).parent}", r.stderr)

    def test_system_install(self):
        self.pip("--root", str(self.tmp / "root"))
        paths = json.loads(ok(run([self.base, "-c",
            "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"])).stdout)
        rel = lambda p: self.tmp / "root" / Path(p).relative_to("/")  # noqa: E731
        env = clean_env(PYTHONPATH=str(rel(paths["purelib"])))
        self.check(rel(paths["scripts"]), env)


class Kernel(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pb-jupyter-"))
        self.env = clean_env(
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            IPYTHONDIR=str(self.tmp / "ipython"),
        )
        self.saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)

    def tearDown(self):
        for name in ("pbtest", "pbuser"):
            run([LAUNCHER, "kernel", "remove", name], env=self.env)
        os.environ.clear()
        os.environ.update(self.saved)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def execute(self, kernel_name: str, code: str) -> str:
        from jupyter_client.manager import start_new_kernel

        km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=90)
        out = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        try:
            reply = kc.execute_interactive(code, timeout=90, output_hook=hook)
            self.assertEqual(reply["content"]["status"], "ok", "".join(out))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        return "".join(out)

    def test_kernel_runs_notebooks_under_the_budget(self):
        r = ok(run([LAUNCHER, "kernel", "install", "--cores", "1", "--name", "pbtest",
                    "--sys-prefix"], env=self.env))
        spec_dir = VENV / "share/jupyter/kernels/pbtest"
        self.assertIn(str(spec_dir), r.stdout)
        spec = json.loads((spec_dir / "kernel.json").read_text())
        # The venv's own kernel argv: its python, -m ipykernel_launcher.
        self.assertEqual(Path(spec["argv"][0]).parent, BIN)
        self.assertTrue(Path(spec["argv"][0]).samefile(PY))
        self.assertEqual(spec["argv"][1:3], ["-m", "ipykernel_launcher"])
        self.assertEqual(spec["env"]["LD_PRELOAD"], parbudget.library_path())
        self.assertEqual(spec["env"]["PARBUDGET_CORES"], "1")
        self.assertIn("pbtest\tcores=1", ok(run([LAUNCHER, "kernel", "list"], env=self.env)).stdout)

        out = self.execute(
            "pbtest",
            "import json, os, parbudget\n"
            "s = parbudget.status()\n"
            "print(json.dumps({'budget': s['budget'], 'members': s['ledger']['members'],"
            " 'omp': os.environ.get('OMP_NUM_THREADS')}))\n",
        )
        got = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(got, {"budget": 1, "members": 1, "omp": "1"}, out)

        # An existing kernelspec stays unless --force.
        r = run([LAUNCHER, "kernel", "install", "--cores", "2", "--name", "pbtest",
                 "--sys-prefix"], env=self.env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertIn("already exists", r.stderr)
        self.assertIn("--force", r.stderr)
        self.assertEqual(json.loads((spec_dir / "kernel.json").read_text())["env"]
                         ["PARBUDGET_CORES"], "1")
        ok(run([PY, "-m", "parbudget", "kernel", "install", "--cores", "2", "--name", "pbtest",
                "--sys-prefix", "--force"], env=self.env))
        self.assertEqual(json.loads((spec_dir / "kernel.json").read_text())["env"]
                         ["PARBUDGET_CORES"], "2")

        ok(run([LAUNCHER, "kernel", "remove", "pbtest"], env=self.env))
        self.assertFalse(spec_dir.exists())
        r = run([LAUNCHER, "kernel", "remove", "pbtest"], env=self.env)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)

    def test_user_kernelspec_and_no_budget_given(self):
        ok(run([LAUNCHER, "kernel", "install", "--name", "pbuser"], env=self.env))
        spec_dir = self.tmp / "data/kernels/pbuser"
        spec = json.loads((spec_dir / "kernel.json").read_text())
        self.assertNotIn("PARBUDGET_CORES", spec["env"])
        out = self.execute("pbuser", "import parbudget; print(parbudget.status()['budget_source'])")
        self.assertIn(out.strip(), ("affinity", "cgroup"))

    def test_refuses_to_remove_a_foreign_kernelspec(self):
        r = run([LAUNCHER, "kernel", "remove", "python3"], env=self.env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not installed by parbudget", r.stderr)
        self.assertTrue((VENV / "share/jupyter/kernels/python3/kernel.json").exists())


if __name__ == "__main__":
    unittest.main()
