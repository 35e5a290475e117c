"""auto_LiRPA (CROWN and friends) as an incomplete verifier, behind a PGD attack.

The work happens in a separate process, ``bench.verifiers._lirpa_main``, so that the harness can
time and kill it like any other tool. It converts the ONNX model with onnx2torch, attacks each
input box with PGD (a counterexample is confirmed with onnxruntime before it is reported), and
otherwise bounds the property's output constraints with auto_LiRPA. It writes a VNN-COMP result
file (``sat`` + counterexample, ``unsat`` or ``unknown``) and a JSON file beside it with its own
elapsed time. An ``unknown`` means the bounds were too loose, never that something failed: every
failure (an unsupported op, a model onnx2torch or auto_LiRPA cannot handle) is an ``error``.
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
from bench.verifiers._lirpa_main import METHODS as _WORKER_METHODS  # numpy only; torch stays out
from bench.verifiers.base import Command, Instance, Status, Verdict, Verifier
from bench.verifiers.vnncomp_format import parse_counterexample

RESULT_FILE = "result.txt"
STATS_FILE = "result.json"  # the worker writes its stats next to --result, suffix .json
METHODS = tuple(_WORKER_METHODS)  # CROWN, alpha-CROWN, CROWN-IBP, IBP

_REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _importable() -> bool:
    """auto_LiRPA (through the project's torch 2.x patches), onnx2torch and onnxruntime import.
    Cached: importing torch and auto_LiRPA takes seconds."""
    try:
        import onnx2torch  # noqa: F401
        import onnxruntime  # noqa: F401

        from bench.lirpa_compat import auto_LiRPA  # noqa: F401
    except Exception:
        return False
    return True


@VERIFIERS.register("lirpa")
class Lirpa(Verifier):
    name = "lirpa"
    complete = False
    install_hint = ("pip install onnx2torch && pip install --no-deps auto-lirpa==0.3 "
                    "(imported through bench.lirpa_compat)")
    parameters = {
        "method": "CROWN",  # CROWN | alpha-CROWN | CROWN-IBP | IBP
        "pgd_steps": 100,  # steps of each PGD restart
        "pgd_restarts": 5,  # starting points per input box (the first is the box centre)
        "device": "cpu",  # only cpu: the worker refuses anything else
        "seed": 0,  # PGD's random starting points
    }

    def is_installed(self) -> bool:
        return _importable()

    def version(self) -> str | None:
        try:
            return metadata.version("auto_LiRPA")
        except metadata.PackageNotFoundError:
            return None

    def command(self, instance: Instance, workdir: Path) -> Command:
        method = str(self.params["method"])
        if method not in METHODS:
            raise BenchError(f"lirpa: unknown method {method!r}; "
                             f"choose one of {', '.join(METHODS)}")
        if self.params["device"] != "cpu":
            raise BenchError(f"lirpa: device {self.params['device']!r} is not supported; use cpu")
        argv = [sys.executable, "-m", "bench.verifiers._lirpa_main",
                "--onnx", str(instance.onnx_path.resolve()),
                "--vnnlib", str(instance.vnnlib_path.resolve()),
                "--result", str((workdir / RESULT_FILE).resolve()),
                "--method", method,
                "--pgd-steps", str(int(self.params["pgd_steps"])),
                "--pgd-restarts", str(int(self.params["pgd_restarts"])),
                "--device", str(self.params["device"]),
                "--seed", str(int(self.params["seed"]))]
        # The worker is a module of this package, which need not be installed: put the checkout
        # first on the path. One thread: CPU runs are measured single-threaded (PGD and CROWN
        # ran slower with 2 threads on 2 cores in alpha-beta-CROWN).
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
        verifier_time, problem = _read_time(workdir / STATS_FILE)
        if problem:
            return Verdict(Status.ERROR, reason=problem)
        return parse_result_file(result.read_text(errors="replace"), verifier_time)


def parse_result_file(text: str, verifier_time: float | None = None) -> Verdict:
    """A VNN-COMP result file as the worker writes it; anything else is an ERROR. Stricter than
    ``vnncomp_format.parse_vnncomp_result`` for foreign tools: our worker checks its
    counterexample before writing it, so a sat without a readable one means a broken file."""
    lines = text.strip().splitlines()
    answer = lines[0].strip() if lines else ""
    if answer == "unsat":
        return Verdict(Status.UNSAT, verifier_time=verifier_time)
    if answer == "unknown":
        return Verdict(Status.UNKNOWN, verifier_time=verifier_time,
                       reason="the bounds did not prove the property and PGD found no "
                              "counterexample")
    if answer != "sat":
        return Verdict(Status.ERROR, verifier_time=verifier_time,
                       reason=f"malformed {RESULT_FILE}: first line {answer[:80]!r}")
    cex, problem = parse_counterexample("\n".join(lines[1:]))
    if problem:
        return Verdict(Status.ERROR, verifier_time=verifier_time,
                       reason=f"malformed counterexample in {RESULT_FILE}: {problem}")
    return Verdict(Status.SAT, counterexample=cex, verifier_time=verifier_time)


def _read_time(path: Path) -> tuple[float | None, str]:
    """The worker's own elapsed time from its JSON file, or a reason it is unusable."""
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"the worker wrote a result but no {path.name}"
    except (OSError, ValueError) as err:
        return None, f"malformed {path.name}: {err}"
    elapsed = stats.get("time_s") if isinstance(stats, dict) else None
    if not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        return None, f"malformed {path.name}: no valid time_s"
    return float(elapsed), ""


def _failure_reason(stderr: str, stdout: str, returncode: int) -> str:
    """The worker's own ``lirpa:`` line when it printed one, else its last line of output."""
    if returncode < 0:
        exit_text = f"the lirpa worker was killed by signal {-returncode}"
    else:
        exit_text = f"the lirpa worker exited with code {returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("lirpa:")]
    if own:
        return own[-1][:400]
    last = lines[-1] if lines else next(
        (line.strip() for line in reversed(stdout.splitlines()) if line.strip()), "")
    return f"{exit_text}" + (f": {last[:300]}" if last else " without output")
