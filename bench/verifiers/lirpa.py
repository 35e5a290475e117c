"""auto_LiRPA (CROWN and friends) as an incomplete verifier, behind a PGD attack.

The work happens in a separate process, ``bench.verifiers._lirpa_main`` (under ``bench run``, the
persistent worker that runs it: ``bench.verifiers.engine``), so that the harness can time and
kill it like any other tool. It converts the ONNX model with onnx2torch, attacks each
input box with PGD (a counterexample is confirmed with onnxruntime before it is reported), and
otherwise bounds the property's output constraints with auto_LiRPA. It writes a VNN-COMP result
file (``sat`` + counterexample, ``unsat`` or ``unknown``) and a JSON file beside it with its own
elapsed time. An ``unknown`` means the bounds were too loose, never that something failed: every
failure (an unsupported op, a model onnx2torch or auto_LiRPA cannot handle) is an ``error``.
"""
from __future__ import annotations

from pathlib import Path

from bench.verifiers import VERIFIERS
from bench.verifiers._lirpa_main import METHODS as _WORKER_METHODS  # numpy only; torch stays out
from bench.formats.folder import Instance
from bench.verifiers.base import Parameter, Status, Verdict, at_least
from bench.verifiers.worker import (RESULT_FILE, STATS_FILE, OwnWorker,  # noqa: F401
                                    parse_result_file, parse_worker_output)

METHODS = tuple(_WORKER_METHODS)  # CROWN, alpha-CROWN, CROWN-IBP, IBP




@VERIFIERS.register("lirpa")
class Lirpa(OwnWorker):
    name = "lirpa"
    complete = False
    install_hint = ("pip install onnx2torch && pip install --no-deps auto-lirpa==0.3 "
                    "(imported through bench.lirpa_compat)")
    parameters = {
        "method": Parameter(str, "CROWN", choices=METHODS),
        "pgd_steps": Parameter(int, 100, check=at_least(0), help="steps of each PGD restart"),
        "pgd_restarts": Parameter(int, 5, check=at_least(0),
                                  help="starting points per input box (the first is its centre)"),
        "pgd_targeted": Parameter(bool, True, help="besides the restarts, one PGD start per "
                                                   "spec aimed at that spec alone"),
        "device": Parameter(str, "cpu", choices=("cpu",), help="the worker runs on the CPU only"),
        "seed": Parameter(int, 0, help="PGD's random starting points"),
    }
    # auto_LiRPA (through the project's torch 2.x patches), onnx2torch and onnxruntime.
    modules = ("onnx2torch", "onnxruntime", "bench.lirpa_compat")
    package = "auto_LiRPA"

    worker_module = "bench.verifiers._lirpa_main"

    def worker_args(self, instance: Instance) -> list[str]:
        return ["--method", str(self.params["method"]),
                "--pgd-steps", str(self.params["pgd_steps"]),
                "--pgd-restarts", str(self.params["pgd_restarts"]),
                "--pgd-targeted" if self.params["pgd_targeted"] else "--no-pgd-targeted",
                "--device", str(self.params["device"]),
                "--seed", str(self.params["seed"])]

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verdict, _ = parse_worker_output("lirpa", workdir, stdout, stderr, returncode)
        if verdict.status is Status.UNKNOWN:
            verdict.reason = ("the bounds did not prove the property and PGD found no "
                              "counterexample")
        return verdict
