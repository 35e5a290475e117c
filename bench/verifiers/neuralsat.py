"""NeuralSAT (``neuralsat`` 0.2.17 on PyPI): a complete DPLL(T) verifier, in its own venv.

The wheel installs a top-level package named ``src`` (no console script): ``src/main.py`` is the
CLI, and it imports its siblings as top-level modules (``from helper...``, ``from verifier...``),
which works because Python puts the script's folder first on ``sys.path``. It pins torch>=2.9,
torchvision, torchaudio and gurobipy, and its ``src`` would shadow anything else of that name, so
it never goes into the project's environment: ``install()`` makes a virtual environment of its
own (by default ``~/.cache/prune-bench/verifiers/neuralsat/venv``; ``$PRUNE_BENCH_TOOLS`` moves
the whole tools folder).

``main.py --net N --spec S --device cpu --timeout T --result_file R --export_cex`` writes R in
VNN-COMP's format (``sat`` plus ``((X_0 v) ... (Y_0 v))``, ``unsat``, ``unknown``, ``timeout``)
and prints ``status,runtime`` as its last line of stdout (its own time, counted after its
imports). Two answers of its own are not VNN-COMP's: ``invalid_counterexample`` (its attack found
a point that failed its own check) and ``early_stop`` (it gave up); both are ``unknown`` here.
"""
from __future__ import annotations

import math
import re
from email.parser import HeaderParser
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import (Command, Parameter, Status, Verdict, Verifier, at_least)
from bench.verifiers.installer import (TOOLS_ENV, VENV_ENV, InstallRecord, Steps,
                                       install_tool, tool_folder, uninstall_tool, venv_python)
from bench.verifiers.vnncomp_format import parse_vnncomp_result

PACKAGE = "neuralsat"
VERSION = "0.2.17"
RESULT_FILE = "result.txt"
DEVICES = ("cpu", "cuda")
# NeuralSAT starts its own clock after importing torch and its modules (a few seconds on a CPU),
# so its --timeout is this much shorter than the harness's hard limit, so that it usually stops by
# itself (and says "timeout") before being killed. Never below half the limit.
STARTUP_ALLOWANCE_S = 5.0

# Its own answers that are not VNN-COMP's, with what they mean.
_OWN_ANSWERS = {
    "invalid_counterexample": "NeuralSAT found a point that failed its own counterexample check",
    "early_stop": "NeuralSAT stopped early without a decision",
}
_RUNTIME_LINE = re.compile(r"^([a-z_]+),(\d+(?:\.\d+)?)\s*$")


# --------------------------------------------------------------------------- where it lives


def default_venv() -> Path:
    return tool_folder(PACKAGE) / "venv"


def _site_packages(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python3*/site-packages"))


def find_main(venv: Path) -> Path | None:
    """NeuralSAT's ``src/main.py`` inside ``venv``, or None."""
    for site in _site_packages(venv):
        main = site / "src" / "main.py"
        if main.is_file():
            return main
    return None


def installed_version(venv: Path) -> str | None:
    """The version in the venv's ``neuralsat-*.dist-info/METADATA`` (read, not imported: the
    package itself says 0.2.15 in ``src/__init__.py``)."""
    for site in _site_packages(venv):
        for info in sorted(site.glob(f"{PACKAGE}-*.dist-info")):
            try:
                headers = HeaderParser().parsestr((info / "METADATA").read_text())
            except OSError:
                continue
            if headers.get("Name", "").lower() == PACKAGE and headers.get("Version"):
                return headers["Version"]
    return None


def install_neuralsat(folder: Path, steps: Steps, python: str | None = None) -> InstallRecord:
    """Build NeuralSAT into ``folder`` (through ``installer.install_tool``): a virtual
    environment ``folder/venv`` made by ``python`` (default: this one; NeuralSAT needs 3.10 to
    3.13) with ``neuralsat==0.2.17`` from PyPI (it unpacks several GB: torch's CUDA build), and
    a check that its modules import."""
    venv = folder / "venv"
    steps.make_venv(venv, python)
    steps.pip(venv, f"installing {PACKAGE}=={VERSION}", f"{PACKAGE}=={VERSION}")
    main = find_main(venv)
    if main is None:
        raise steps.fail("checking the install", "no src/main.py in its site-packages")
    # Its own modules, imported the way main.py imports them.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import helper.network.read_onnx, helper.spec.objective, verifier.verifier")
    steps.run("checking that it starts", [str(venv_python(venv)), "-c", code, str(main.parent)],
              env=VENV_ENV)
    return InstallRecord(tool=PACKAGE, location=str(folder), source=f"PyPI {PACKAGE}=={VERSION}",
                         python=str(venv_python(venv)),
                         versions={PACKAGE: installed_version(venv) or VERSION})


# --------------------------------------------------------------------------- the verifier


@VERIFIERS.register("neuralsat")
class NeuralSAT(Verifier):
    name = "neuralsat"
    complete = True
    install_hint = (f"bench verifiers install neuralsat (pip install {PACKAGE}=={VERSION} into "
                    f"its own venv under ${TOOLS_ENV} or ~/.cache/prune-bench/verifiers)")
    parameters = {
        "venv": Parameter(str, "", help="the venv's folder; empty: the installed one"),
        "device": Parameter(str, "cpu", choices=DEVICES),
        "batch": Parameter(int, 1000, check=at_least(1),
                           help="--batch: branches verified per iteration (NeuralSAT's default)"),
        "threads": Parameter(int, 1, check=at_least(1),
                             help="OMP/MKL threads (CPU runs are measured single-threaded)"),
    }

    @property
    def venv(self) -> Path:
        configured = str(self.params["venv"] or "")
        return Path(configured).expanduser() if configured else default_venv()

    def is_installed(self) -> bool:
        return venv_python(self.venv).is_file() and find_main(self.venv) is not None

    def version(self) -> str | None:
        return installed_version(self.venv)

    def install(self, *, force: bool = False, source: str | None = None, ref: str | None = None,
                dependencies: dict[str, str] | None = None, echo=print) -> str:
        if source or ref or dependencies or self.params["venv"]:
            raise BenchError(f"neuralsat installs {PACKAGE}=={VERSION} from PyPI into "
                             f"{tool_folder(PACKAGE)}: drop --source/--ref/--dependency and venv=")
        return install_tool(PACKAGE, install_neuralsat, force=force, echo=echo).summary()

    def uninstall(self, echo=print) -> str:
        return uninstall_tool(PACKAGE)

    def command(self, instance: Instance, workdir: Path) -> Command:
        main = find_main(self.venv)
        if main is None or not venv_python(self.venv).is_file():
            raise BenchError(f"NeuralSAT is not installed in {self.venv}: {self.install_hint}")
        device = str(self.params["device"])
        onnx, vnnlib = instance.onnx_path.resolve(), instance.vnnlib_path.resolve()
        # NeuralSAT picks its parser by suffix (.onnx or .pth) and reads plain VNN-LIB only.
        if onnx.suffix != ".onnx" or vnnlib.suffix != ".vnnlib":
            raise BenchError(f"NeuralSAT reads only uncompressed .onnx and .vnnlib files, "
                             f"got {onnx.name} and {vnnlib.name}")
        argv = [str(venv_python(self.venv)), str(main),
                "--net", str(onnx), "--spec", str(vnnlib),
                "--device", device,
                "--timeout", f"{own_timeout(instance.timeout):g}",
                "--batch", str(self.params["batch"]),
                "--result_file", str((workdir / RESULT_FILE).resolve()),
                "--export_cex",
                "--verbosity", "1"]
        threads = str(self.params["threads"])
        # The harness adds these to its own environment.
        env = {**VENV_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA initialisation on a GPU machine either
        # cwd = workdir: anything it writes beside itself stays with this instance's logs.
        return Command(argv=argv, env=env, cwd=workdir)

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        verifier_time = _own_runtime(stdout)
        if returncode != 0:
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=_failure_reason(stdout, stderr, returncode))
        result = workdir / RESULT_FILE
        if not result.is_file():
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=f"NeuralSAT exited with 0 but wrote no {RESULT_FILE}"
                                  + _last_line_suffix(stderr or stdout))
        text = result.read_text(errors="replace")
        first = text.strip().splitlines()[0].strip() if text.strip() else ""
        if first in _OWN_ANSWERS:
            return Verdict(Status.UNKNOWN, verifier_time=verifier_time, reason=_OWN_ANSWERS[first])
        verdict = parse_vnncomp_result(text, tool="NeuralSAT")
        verdict.verifier_time = verifier_time
        return verdict



def own_timeout(timeout: float) -> float:
    """NeuralSAT's --timeout for a hard limit of ``timeout`` seconds (see STARTUP_ALLOWANCE_S)."""
    return max(timeout - STARTUP_ALLOWANCE_S, timeout / 2, 1.0)


def _own_runtime(stdout: str) -> float | None:
    """The ``status,runtime`` line that main.py prints last; None without one."""
    for line in reversed(stdout.splitlines()):
        match = _RUNTIME_LINE.match(line.strip())
        if match:
            value = float(match[2])
            return value if math.isfinite(value) else None
    return None


def _failure_reason(stdout: str, stderr: str, returncode: int) -> str:
    if returncode < 0:
        exit_text = f"NeuralSAT was killed by signal {-returncode}"
    else:
        exit_text = f"NeuralSAT exited with code {returncode}"
    return exit_text + (_last_line_suffix(stderr) or _last_line_suffix(stdout) or " without output")


def _last_line_suffix(text: str) -> str:
    """``: <last non-empty line>`` (a traceback's last line names the exception), or ''."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""
