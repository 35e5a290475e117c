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
from importlib import metadata
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.verifiers._lirpa_main import METHODS as _WORKER_METHODS  # numpy only; torch stays out
from bench.formats.folder import Instance
from bench.verifiers.base import Command, Status, Verdict, Verifier
from bench.verifiers.worker import (RESULT_FILE, STATS_FILE, parse_result_file,  # noqa: F401
                                    parse_worker_output, worker_command)

METHODS = tuple(_WORKER_METHODS)  # CROWN, alpha-CROWN, CROWN-IBP, IBP



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
        return worker_command(
            "bench.verifiers._lirpa_main", instance, workdir,
            "--method", method,
            "--pgd-steps", str(int(self.params["pgd_steps"])),
            "--pgd-restarts", str(int(self.params["pgd_restarts"])),
            "--device", str(self.params["device"]),
            "--seed", str(int(self.params["seed"])))

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verdict, _ = parse_worker_output("lirpa", workdir, stdout, stderr, returncode)
        if verdict.status is Status.UNKNOWN:
            verdict.reason = ("the bounds did not prove the property and PGD found no "
                              "counterexample")
        return verdict
