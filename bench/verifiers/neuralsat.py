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
import os
import re
import subprocess
import sys
from email.parser import HeaderParser
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import Command, Status, Verdict, Verifier
from bench.verifiers.vnncomp_format import parse_vnncomp_result

PACKAGE = "neuralsat"
VERSION = "0.2.17"
TOOLS_ENV = "PRUNE_BENCH_TOOLS"  # the folder that holds every separately installed tool
RESULT_FILE = "result.txt"
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


def tools_dir() -> Path:
    """Where separately installed verifiers live: ``$PRUNE_BENCH_TOOLS``, else
    ``~/.cache/prune-bench/verifiers``."""
    configured = os.environ.get(TOOLS_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "prune-bench" / "verifiers"


def default_venv() -> Path:
    return tools_dir() / PACKAGE / "venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


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


def install(target_dir: str | Path | None = None, *, force: bool = False,
            python: str | None = None) -> Path:
    """Create a virtual environment at ``target_dir`` (default ``default_venv()``) and
    ``pip install neuralsat==0.2.17`` into it; returns the venv's folder.

    Does nothing if that version is already installed there, unless ``force``. pip's output goes
    to this process's stdout/stderr: the install downloads or unpacks several GB (torch's CUDA
    build) and takes minutes. ``python`` is the interpreter that creates the venv (default: this
    one; NeuralSAT needs 3.10 to 3.13). Raises ``BenchError`` when a step fails."""
    venv = Path(target_dir).expanduser() if target_dir is not None else default_venv()
    if not force and installed_version(venv) == VERSION and find_main(venv) is not None:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    creator = python or sys.executable
    if not venv_python(venv).is_file():
        _run_step([creator, "-m", "venv", str(venv)],
                  f"cannot create a virtual environment at {venv}")
    _run_step([str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
               f"{PACKAGE}=={VERSION}"],
              f"pip could not install {PACKAGE}=={VERSION} into {venv}")
    problem = _smoke_test(venv)
    if problem:
        raise BenchError(f"{PACKAGE} was installed into {venv} but does not start: {problem}")
    return venv


def _run_step(argv: list[str], failure: str) -> None:
    try:
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL)
    except OSError as err:
        raise BenchError(f"{failure}: {err}") from None
    if completed.returncode != 0:
        raise BenchError(f"{failure} (exit code {completed.returncode}; see the output above)")


def _smoke_test(venv: Path) -> str:
    """'' when NeuralSAT's own modules import in the venv (the way main.py imports them), else
    the last line of the failure."""
    main = find_main(venv)
    if main is None:
        return "no src/main.py in its site-packages"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import helper.network.read_onnx, helper.spec.objective, verifier.verifier")
    completed = subprocess.run([str(venv_python(venv)), "-c", code, str(main.parent)],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               env=_clean_env())
    if completed.returncode == 0:
        return ""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {completed.returncode}"


# For the venv's python: the project's PYTHONPATH must not shadow the venv's packages (an empty
# value adds nothing to sys.path), and neither may a user site.
_VENV_ENV = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}


def _clean_env() -> dict[str, str]:
    return {**os.environ, **_VENV_ENV}


# --------------------------------------------------------------------------- the verifier


@VERIFIERS.register("neuralsat")
class NeuralSAT(Verifier):
    name = "neuralsat"
    complete = True
    install_hint = (f"bench verifiers install neuralsat (pip install {PACKAGE}=={VERSION} into "
                    f"its own venv under ${TOOLS_ENV} or ~/.cache/prune-bench/verifiers)")
    parameters = {
        "venv": "",  # the venv's folder; '' = default_venv()
        "device": "cpu",  # cpu | cuda
        "batch": 1000,  # --batch: branches verified per iteration (NeuralSAT's default)
        "threads": 1,  # OMP/MKL threads (CPU runs are measured single-threaded)
    }

    @property
    def venv(self) -> Path:
        configured = str(self.params["venv"] or "")
        return Path(configured).expanduser() if configured else default_venv()

    def is_installed(self) -> bool:
        return venv_python(self.venv).is_file() and find_main(self.venv) is not None

    def version(self) -> str | None:
        return installed_version(self.venv)

    def command(self, instance: Instance, workdir: Path) -> Command:
        main = find_main(self.venv)
        if main is None or not venv_python(self.venv).is_file():
            raise BenchError(f"NeuralSAT is not installed in {self.venv}: {self.install_hint}")
        device = str(self.params["device"])
        if device not in ("cpu", "cuda"):
            raise BenchError(f"neuralsat: device must be cpu or cuda, got {device!r}")
        onnx, vnnlib = instance.onnx_path.resolve(), instance.vnnlib_path.resolve()
        # NeuralSAT picks its parser by suffix (.onnx or .pth) and reads plain VNN-LIB only.
        if onnx.suffix != ".onnx" or vnnlib.suffix != ".vnnlib":
            raise BenchError(f"NeuralSAT reads only uncompressed .onnx and .vnnlib files, "
                             f"got {onnx.name} and {vnnlib.name}")
        argv = [str(venv_python(self.venv)), str(main),
                "--net", str(onnx), "--spec", str(vnnlib),
                "--device", device,
                "--timeout", f"{own_timeout(instance.timeout):g}",
                "--batch", str(int(self.params["batch"])),
                "--result_file", str((workdir / RESULT_FILE).resolve()),
                "--export_cex",
                "--verbosity", "1"]
        threads = str(int(self.params["threads"]))
        # The harness adds these to its own environment.
        env = {**_VENV_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
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
