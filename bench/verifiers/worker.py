"""What the verifiers that run one of this package's own worker processes share (``lirpa``,
``milp``): building the worker's command, and reading what it leaves behind.

A worker is a module run as ``python -m bench.verifiers._<tool>_main --onnx ... --vnnlib ...
--result <workdir>/result.txt``. It writes a VNN-COMP result file (``sat`` with its
counterexample, ``unsat``, ``timeout`` or ``unknown``) and a JSON file of statistics next to it
(at least its own elapsed ``time_s``); on failure it prints a ``<tool>: reason`` line on stderr
and exits non-zero without a result file.

``bench run`` does not start a process per instance for these: the persistent worker
(``bench.verifiers.engine``) imports torch once, keeps each model, and answers the same
arguments (``OwnWorker.worker_argv``) with the same files in the same folder, which ``parse``
reads either way.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import ClassVar

from bench.formats.folder import Instance
from bench.parallel import one_thread_environment
from bench.verifiers.base import Command, Status, Verdict, Verifier, module_found
from bench.verifiers.vnncomp_format import parse_counterexample

RESULT_FILE = "result.txt"
STATS_FILE = "result.json"

_REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULES = ("torch", "auto_LiRPA")  # what every worker of this package imports


class OwnWorker(Verifier):
    """A verifier whose worker is ``worker_module``, a module of this package: one process per
    instance (``command``), or the persistent worker, which runs the module's ``run`` on the
    same arguments (``worker_argv``)."""

    worker_module: ClassVar[str]

    def worker_args(self, instance: Instance) -> list[str]:
        """The tool's own options for ``instance`` (after ``--onnx``, ``--vnnlib``,
        ``--result``)."""
        return []

    def worker_argv(self, instance: Instance, workdir: Path) -> list[str]:
        """The worker's arguments for ``instance``, writing into ``workdir``."""
        return ["--onnx", str(instance.onnx_path.resolve()),
                "--vnnlib", str(instance.vnnlib_path.resolve()),
                "--result", str((workdir / RESULT_FILE).resolve()), *self.worker_args(instance)]

    def command(self, instance: Instance, workdir: Path) -> Command:
        return Command(argv=[sys.executable, "-m", self.worker_module,
                             *self.worker_argv(instance, workdir)], env=worker_environment())

    def is_installed(self) -> bool:
        """Every module it needs can be found. Not imported: importing torch and its company
        takes seconds, and a runner or pool worker has no use for them (the worker process
        imports them; where that fails, each instance's error says why)."""
        return all(module_found(module) for module in (*self.modules, *WORKER_MODULES))


def worker_environment() -> dict[str, str]:
    """What a worker process adds to the environment. The worker is a module of this package,
    which need not be installed: the checkout goes first on the path. One thread: CPU runs are
    measured single-threaded (with two threads on two cores, torch ran many times slower next
    to other work)."""
    python_path = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**one_thread_environment(), "PYTHONPATH": python_path}


def parse_worker_output(tool: str, workdir: Path, stdout: str, stderr: str,
                        returncode: int) -> tuple[Verdict, dict]:
    """The worker's verdict (with its own time) and its statistics; every unexpected outcome is
    an ERROR with a reason."""
    if returncode != 0:
        return Verdict(Status.ERROR, reason=failure_reason(tool, stderr, stdout, returncode)), {}
    result = workdir / RESULT_FILE
    if not result.is_file():
        return Verdict(Status.ERROR,
                       reason=f"the {tool} worker exited with 0 but wrote no {RESULT_FILE}"), {}
    stats, problem = read_stats(workdir / STATS_FILE)
    if problem:
        return Verdict(Status.ERROR, reason=problem), {}
    return parse_result_file(result.read_text(errors="replace"), stats["time_s"]), stats


def parse_result_file(text: str, verifier_time: float | None = None) -> Verdict:
    """A result file as our workers write it; anything else is an ERROR. Stricter than
    ``vnncomp_format.parse_vnncomp_result`` for foreign tools: our workers check their
    counterexample before writing it, so a sat without a readable one means a broken file."""
    lines = text.strip().splitlines()
    answer = lines[0].strip() if lines else ""
    if answer == "unsat":
        return Verdict(Status.UNSAT, verifier_time=verifier_time)
    if answer in ("unknown", "timeout"):
        return Verdict(Status(answer), verifier_time=verifier_time)
    if answer != "sat":
        return Verdict(Status.ERROR, verifier_time=verifier_time,
                       reason=f"malformed {RESULT_FILE}: first line {answer[:80]!r}")
    cex, problem = parse_counterexample("\n".join(lines[1:]))
    if problem:
        return Verdict(Status.ERROR, verifier_time=verifier_time,
                       reason=f"malformed counterexample in {RESULT_FILE}: {problem}")
    return Verdict(Status.SAT, counterexample=cex, verifier_time=verifier_time)


def read_stats(path: Path) -> tuple[dict, str]:
    """The worker's JSON statistics (with a valid ``time_s``), or a reason they are unusable."""
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


def failure_reason(tool: str, stderr: str, stdout: str, returncode: int) -> str:
    """The worker's own ``<tool>:`` line when it printed one, else its last line of output."""
    if returncode < 0:
        exit_text = f"the {tool} worker was killed by signal {-returncode}"
    else:
        exit_text = f"the {tool} worker exited with code {returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(f"{tool}:")]
    if own:
        return own[-1][:400]
    last = lines[-1] if lines else next(
        (line.strip() for line in reversed(stdout.splitlines()) if line.strip()), "")
    return exit_text + (f": {last[:300]}" if last else " without output")
