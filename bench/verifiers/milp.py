"""An exact complete verifier on the CPU: a big-M MILP (Tjeng et al. 2019) solved by HiGHS.

The work happens in a separate process, ``bench.verifiers._milp_main`` (see its docstring; under
``bench run``, the persistent worker that runs it: ``bench.verifiers.engine``), so that the
harness can time and kill it like any other tool: it converts the ONNX model as the
``lirpa`` worker does, encodes the ReLU network exactly with bounds from auto_LiRPA, and solves one
single-threaded HiGHS MILP per spec. ``sat`` is reported only with a point that onnxruntime
confirms; ``unknown`` means the MILP's point failed that check (a floating-point tie), never
that something failed; every failure (an unsupported op, a solver error) is an ``error``.

The worker writes a VNN-COMP result file (read with ``bench.verifiers.vnncomp_format``) and a
JSON file beside it with its own elapsed time and, for ``unknown`` and ``timeout``, the reason.
"""
from __future__ import annotations

from pathlib import Path

from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import Parameter, Status, Verdict
from bench.verifiers.worker import (RESULT_FILE, STATS_FILE, OwnWorker,  # noqa: F401
                                    parse_worker_output)

BOUNDS = ("CROWN", "IBP", "interval")  # the worker's --bounds choices


@VERIFIERS.register("milp")
class Milp(OwnWorker):
    name = "milp"
    complete = True
    install_hint = ("pip install highspy scipy onnx2torch && pip install --no-deps auto-lirpa==0.3 "
                    "(imported through bench.lirpa_compat)")
    parameters = {
        "bounds": Parameter(str, "CROWN", choices=BOUNDS,
                            help="what tightens the big-M constants"),
    }
    # HiGHS, scipy, onnx2torch, onnxruntime and auto_LiRPA (through the project's patches).
    modules = ("highspy", "onnx2torch", "onnxruntime", "scipy.sparse", "bench.lirpa_compat")
    package = "highspy"
    version_format = "highspy {version}"

    worker_module = "bench.verifiers._milp_main"

    def worker_args(self, instance: Instance) -> list[str]:
        return ["--timeout", repr(float(instance.timeout)), "--bounds", str(self.params["bounds"])]

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verdict, stats = parse_worker_output("milp", workdir, stdout, stderr, returncode)
        if verdict.status in (Status.UNKNOWN, Status.TIMEOUT):
            verdict.reason = str(stats.get("reason") or verdict.reason)
        return verdict
