"""An exact complete verifier on the CPU: a big-M MILP (Tjeng et al. 2019) solved by HiGHS.

The work happens in a separate process, ``bench.verifiers._milp_main`` (see its docstring; under
``bench run``, the persistent worker that runs it: ``bench.verifiers.engine``), so that the
harness can time and kill it like any other tool: it converts the ONNX model as the
``lirpa`` worker does, attacks it with PGD, encodes the ReLU network exactly with bounds from
auto_LiRPA (tightened by LPs), and solves one single-threaded HiGHS MILP per spec, started from
the attack's nearest misses. ``sat`` is reported only with a point that onnxruntime confirms;
``unknown`` means the MILP's point failed that check (a floating-point tie), never that
something failed; every failure (an unsupported op, a solver error) is an ``error``.

The worker writes a VNN-COMP result file (read with ``bench.verifiers.vnncomp_format``) and a
JSON file beside it with its own elapsed time and, for ``unknown`` and ``timeout``, the reason.
"""
from __future__ import annotations

from pathlib import Path

from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers._milp_main import BOUND_METHODS, DEFAULTS, TIGHTENING  # numpy only
from bench.verifiers.base import Parameter, Status, Verdict, at_least
from bench.verifiers.worker import (RESULT_FILE, STATS_FILE, OwnWorker,  # noqa: F401
                                    parse_worker_output)


def _share(value: float) -> None:
    """A ``Parameter.check``: a share of the time, in [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")


@VERIFIERS.register("milp")
class Milp(OwnWorker):
    name = "milp"
    complete = True
    install_hint = ("pip install highspy scipy onnx2torch && pip install --no-deps auto-lirpa==0.3 "
                    "(imported through bench.lirpa_compat)")
    parameters = {
        "bounds": Parameter(str, DEFAULTS["bounds"], choices=tuple(BOUND_METHODS),
                            help="auto_LiRPA's intermediate bounds for the big-M constants "
                                 "(alpha-CROWN: optimized, slower), or interval only"),
        "alpha_iterations": Parameter(int, DEFAULTS["alpha_iterations"], check=at_least(1),
                                      help="alpha-CROWN's optimization steps"),
        "tighten": Parameter(str, DEFAULTS["tighten"], choices=TIGHTENING,
                             help="lp: tighten each unstable ReLU's bounds by LP, layer by "
                                  "layer (MIPVerify), before the MILP"),
        "tighten_share": Parameter(float, DEFAULTS["tighten_share"], check=_share,
                                   help="most of the time left that LP tightening may use"),
        "attack_restarts": Parameter(int, DEFAULTS["attack_restarts"], check=at_least(0),
                                     help="PGD restarts before the MILP; 0: no attack"),
        "attack_steps": Parameter(int, DEFAULTS["attack_steps"], check=at_least(0),
                                  help="PGD steps per restart"),
        "attack_targeted": Parameter(bool, DEFAULTS["attack_targeted"],
                                     help="besides the restarts, one PGD start per spec aimed "
                                          "at that spec alone"),
        "mip_start": Parameter(bool, DEFAULTS["mip_start"],
                               help="give HiGHS the attack's nearest miss of each spec as "
                                    "a starting point (a hint only)"),
    }
    # HiGHS, scipy, onnx2torch, onnxruntime and auto_LiRPA (through the project's patches).
    modules = ("highspy", "onnx2torch", "onnxruntime", "scipy.sparse", "bench.lirpa_compat")
    package = "highspy"
    version_format = "highspy {version}"

    worker_module = "bench.verifiers._milp_main"

    def worker_args(self, instance: Instance) -> list[str]:
        return ["--timeout", repr(float(instance.timeout)), *self.worker_options()]

    def worker_options(self) -> list[str]:
        """The parameters as the worker's options (``--name value``, ``--[no-]mip-start``)."""
        options = []
        for name, value in self.params.items():
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                options.append(flag if value else "--no-" + flag[2:])
            else:
                options += [flag, str(value)]
        return options

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verdict, stats = parse_worker_output("milp", workdir, stdout, stderr, returncode)
        if verdict.status in (Status.UNKNOWN, Status.TIMEOUT):
            verdict.reason = str(stats.get("reason") or verdict.reason)
        return verdict
