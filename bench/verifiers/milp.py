"""An exact complete verifier on the CPU: a big-M MILP (Tjeng et al. 2019) solved by HiGHS.

The work happens in a separate process, ``bench.verifiers._milp_main`` (see its docstring), so
that the harness can time and kill it like any other tool: it converts the ONNX model as the
``lirpa`` worker does, encodes the ReLU network exactly with bounds from auto_LiRPA, and solves one
single-threaded HiGHS MILP per spec. ``sat`` is reported only with a point that onnxruntime
confirms; ``unknown`` means the MILP's point failed that check (a floating-point tie), never
that something failed; every failure (an unsupported op, a solver error) is an ``error``.

The worker writes a VNN-COMP result file (read with ``bench.verifiers.vnncomp_format``) and a
JSON file beside it with its own elapsed time and, for ``unknown`` and ``timeout``, the reason.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from importlib import metadata
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.verifiers.base import Command, Instance, Status, Verdict, Verifier
from bench.verifiers.vnncomp_format import parse_vnncomp_result

RESULT_FILE = "result.txt"
STATS_FILE = "result.json"  # written by the worker next to RESULT_FILE
BOUNDS = ("CROWN", "IBP", "interval")  # the worker's --bounds choices
_REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _importable() -> bool:
    """HiGHS, scipy, onnx2torch, onnxruntime and auto_LiRPA (through the project's patches)
    import. Cached: importing torch and auto_LiRPA takes seconds."""
    try:
        import highspy  # noqa: F401
        import onnx2torch  # noqa: F401
        import onnxruntime  # noqa: F401
        import scipy.sparse  # noqa: F401

        from bench.lirpa_compat import auto_LiRPA  # noqa: F401
    except Exception:
        return False
    return True


@VERIFIERS.register("milp")
class Milp(Verifier):
    name = "milp"
    complete = True
    install_hint = ("pip install highspy scipy onnx2torch && pip install --no-deps auto-lirpa==0.3 "
                    "(imported through bench.lirpa_compat)")
    parameters = {
        "bounds": "CROWN",  # CROWN | IBP | interval: what tightens the big-M constants
    }

    def is_installed(self) -> bool:
        return _importable()

    def version(self) -> str | None:
        try:
            return f"highspy {metadata.version('highspy')}"
        except metadata.PackageNotFoundError:
            return None

    def command(self, instance: Instance, workdir: Path) -> Command:
        bounds = str(self.params["bounds"])
        if bounds not in BOUNDS:
            raise BenchError(f"milp: unknown bounds {bounds!r}; choose one of {', '.join(BOUNDS)}")
        argv = [sys.executable, "-m", "bench.verifiers._milp_main",
                "--onnx", str(instance.onnx_path.resolve()),
                "--vnnlib", str(instance.vnnlib_path.resolve()),
                "--result", str((workdir / RESULT_FILE).resolve()),
                "--timeout", repr(float(instance.timeout)),
                "--bounds", bounds]
        # The worker is a module of this package, which need not be installed: put the checkout
        # first on the path. One thread for torch as for HiGHS (threads=1 in the worker): CPU
        # runs are measured single-threaded.
        python_path = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH"))
                                      if p)
        return Command(argv=argv, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": python_path})

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        if returncode != 0:
            return Verdict(Status.ERROR, reason=_failure_reason(stderr, stdout, returncode))
        result = workdir / RESULT_FILE
        if not result.is_file():
            return Verdict(Status.ERROR,
                           reason=f"the worker exited with 0 but wrote no {RESULT_FILE}")
        stats, problem = _read_stats(workdir / STATS_FILE)
        if problem:
            return Verdict(Status.ERROR, reason=problem)
        verdict = parse_vnncomp_result(result.read_text(errors="replace"), tool="the milp worker")
        verdict.verifier_time = stats["time_s"]
        if verdict.status in (Status.UNKNOWN, Status.TIMEOUT):
            verdict.reason = str(stats.get("reason") or verdict.reason)
        return verdict


def _read_stats(path: Path) -> tuple[dict, str]:
    """The worker's JSON file (with a valid ``time_s``), or a reason it is unusable."""
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, f"the worker wrote a result but no {path.name}"
    except (OSError, ValueError) as err:
        return {}, f"malformed {path.name}: {err}"
    elapsed = stats.get("time_s") if isinstance(stats, dict) else None
    if not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        return {}, f"malformed {path.name}: no valid time_s"
    return stats, ""


def _failure_reason(stderr: str, stdout: str, returncode: int) -> str:
    """The worker's own ``milp:`` line when it printed one, else its last line of output."""
    if returncode < 0:
        exit_text = f"the milp worker was killed by signal {-returncode}"
    else:
        exit_text = f"the milp worker exited with code {returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("milp:")]
    if own:
        return own[-1][:400]
    last = lines[-1] if lines else next(
        (line.strip() for line in reversed(stdout.splitlines()) if line.strip()), "")
    return exit_text + (f": {last[:300]}" if last else " without output")
