"""Marabou (maraboupy 2.0.0 from PyPI): a complete SMT-based verifier with a CLI.

``Marabou net.onnx prop.vnnlib --timeout T --summary-file F`` reads our ONNX and VNN-LIB 1.0
directly. The summary file's first word is the answer (``sat``, ``unsat``, ``TIMEOUT``, ``ERROR``,
``UNKNOWN``); the counterexample is only printed on stdout (``Input assignment:`` / ``Output:``
blocks, six decimals: ``--export-assignment`` writes the same precision, with internal variable
numbers). The engine's statistics give its own elapsed time in milliseconds ("Total time
elapsed"); instances decided during preprocessing print none.
"""
from __future__ import annotations

import math
import re
import signal
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import (Command, Parameter, Status, Verdict, Verifier, at_least,
                                  find_executable)

SUMMARY_FILE = "summary.txt"

# Marabou's own UNKNOWN stays unknown (kept apart from errors, never counted as verified).
_ANSWERS = {"sat": Status.SAT, "unsat": Status.UNSAT, "TIMEOUT": Status.TIMEOUT,
            "UNKNOWN": Status.UNKNOWN}
_ASSIGNMENT = re.compile(r"^\s*([xy])(\d+)\s*=\s*(\S+)\s*$")
_ELAPSED = re.compile(r"Total time elapsed:\s*(\d+)\s*milli")
_ERROR_LINE = re.compile(r"error|exception|cannot|can't|doesn't exist|not found|failed", re.I)


@VERIFIERS.register("marabou")
class Marabou(Verifier):
    name = "marabou"
    complete = True
    install_hint = "pip install maraboupy==2.0.0 (Python 3.11 wheel)"
    parameters = {
        "num_workers": Parameter(int, 1, check=at_least(1),
                                 help="Marabou's --num-workers (parallel DeepSoI workers)"),
        "verbosity": Parameter(int, 1, choices=(0, 1, 2),
                               help="1: statistics at start and end; 2: every few seconds"),
    }
    executable = "Marabou"
    package = "maraboupy"

    def command(self, instance: Instance, workdir: Path) -> Command:
        executable = find_executable(self.executable)
        if executable is None:
            raise BenchError(f"Marabou is not installed: {self.install_hint}")
        onnx, vnnlib = instance.onnx_path.resolve(), instance.vnnlib_path.resolve()
        # Marabou picks its parsers by suffix: anything else would be read as .nnet or as its
        # own property format and fail obscurely (or crash).
        if onnx.suffix != ".onnx" or vnnlib.suffix != ".vnnlib":
            raise BenchError(f"Marabou reads only uncompressed .onnx and .vnnlib files, "
                             f"got {onnx.name} and {vnnlib.name}")
        # Marabou's timeout is whole seconds; rounding down lets it stop by itself (and say
        # TIMEOUT) just before the harness's hard timeout.
        seconds = max(1, math.floor(instance.timeout))
        argv = [executable, str(onnx), str(vnnlib),
                "--timeout", str(seconds),
                "--summary-file", str(workdir / SUMMARY_FILE),
                "--num-workers", str(self.params["num_workers"]),
                "--verbosity", str(self.params["verbosity"])]
        # cwd = workdir: Marabou writes stray files (assignment.txt) into its working directory.
        return Command(argv=argv, env={"OMP_NUM_THREADS": "1"}, cwd=workdir)

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verifier_time = _elapsed_seconds(stdout)
        summary = workdir / SUMMARY_FILE
        words = summary.read_text(errors="replace").split() if summary.is_file() else []
        answer = words[0] if words else ""
        if returncode != 0:
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=_failure_reason(stdout, stderr, returncode, answer))
        status = _ANSWERS.get(answer)
        if status is None:
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=_failure_reason(stdout, stderr, returncode, answer))
        if status is Status.SAT:
            cex = _counterexample(stdout)
            reason = "" if cex else "Marabou answered sat but printed no input assignment"
            return Verdict(Status.SAT, counterexample=cex, verifier_time=verifier_time,
                           reason=reason)
        reasons = {Status.TIMEOUT: "Marabou's own timeout", Status.UNKNOWN: "Marabou answered UNKNOWN"}
        reason = reasons.get(status, "")
        return Verdict(status, verifier_time=verifier_time, reason=reason)



def _elapsed_seconds(stdout: str) -> float | None:
    """The engine's last reported total time; None when it printed no statistics."""
    times = _ELAPSED.findall(stdout)
    return int(times[-1]) / 1000 if times else None


def _counterexample(stdout: str) -> dict[str, list[float]] | None:
    """The ``xI = v`` / ``yJ = v`` lines after the final ``sat`` line."""
    lines = stdout.splitlines()
    try:
        start = len(lines) - 1 - lines[::-1].index("sat")
    except ValueError:
        return None
    values: dict[str, dict[int, float]] = {"x": {}, "y": {}}
    for line in lines[start + 1:]:
        match = _ASSIGNMENT.match(line)
        if match:
            values[match[1]][int(match[2])] = float(match[3])
    cex = {}
    for key, found in values.items():
        # Indices must be 0..n-1 with none missing, or the vector would be silently shifted.
        if found and sorted(found) == list(range(len(found))):
            cex[key] = [found[i] for i in range(len(found))]
    return cex if "x" in cex else None


def _failure_reason(stdout: str, stderr: str, returncode: int, answer: str) -> str:
    """One line: Marabou's own error message if it printed one, else what is known."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        exit_text = f"Marabou was killed by {name}"
    else:
        exit_text = f"Marabou exited with code {returncode}"
    # Marabou explains some failures on stdout ("Error: the specified network file ... doesn't
    # exist!") and reports exceptions on stderr ("Caught a MarabouError error. Code: 8 ...").
    explained = [line.strip() for line in stdout.splitlines() if line.startswith("Error:")]
    message = (explained[0][:300] if explained else "") or _first_error_line(stderr) \
        or _first_error_line(stdout)
    if answer and answer not in _ANSWERS:
        return f"Marabou answered {answer}" + (f": {message}" if message else "")
    if message:
        return f"{exit_text}: {message}"
    if answer:
        return f"{exit_text} after answering {answer}"
    last = _last_line(stderr) or _last_line(stdout)
    return f"{exit_text} without an answer" + (f"; last output: {last}" if last else "")


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and _ERROR_LINE.search(line):
            return line[:300]
    return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
