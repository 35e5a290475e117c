"""alpha-beta-CROWN, installed by ``bench verifiers install abcrown`` or the user's checkout.

It is not on PyPI. ``install()`` clones the upstream repository at a pinned, tested commit (or
``--source``/``--ref``), with its auto_LiRPA submodule, into ``tools_dir()/abcrown`` and builds a
virtual environment beside it with its pinned dependencies (see ``install_abcrown``). Afterwards
``bench run --verifier abcrown`` needs nothing else; ``home=``/``python=`` (or ``ABCROWN_HOME``/
``ABCROWN_PYTHON``) point at another checkout and environment instead. It never runs in this
project's own environment (its imports fail there, e.g. ``numpy.lib.arraysetops``).

One instance: ``python <home>/complete_verifier/abcrown.py --config YAML --onnx_path O
--vnnlib_path V --timeout T --results_file R --save_adv_example --cex_path C --device D``. The
results file says ``sat``, ``unsat`` or ``timeout`` (alpha-beta-CROWN writes its ``unknown`` as
``timeout`` too) and, after ``sat``, the counterexample ``((X_0 v) ... (Y_0 v) ...)`` copied from
the cex file. It prints ``Result: <answer>`` and ``Time: <seconds>`` on stdout, and on the way
what decided (``verified_status unsafe-pgd`` after a successful attack, ``verified with init
bound!`` after incomplete verification, ``Verifying property Instance`` when branch and bound
starts): kept as the verdict's ``decided_by``.

Batch mode (``batch=true``, the default): ``--root_path DIR --csv_name FILE`` verifies every row
(``onnx,vnnlib,timeout``) of a CSV in one process, paying the start-up (4 to 15 s on a CPU) once
per model. Per row it prints a header ``%%% idx: I, vnnlib ID: I %%%`` and ``Result: <status> in
<t> seconds``, where the status is its internal one (``safe``, ``safe-incomplete``,
``unsafe-pgd``, ``unsafe-bab``, ``unknown``, with `` (timed out)`` appended when it overran);
its results file is then a pickle, which we do not read. Its saver writes every counterexample
to the same cex file, and the next row may overwrite it within milliseconds (seen on small
models), so batch mode plugs in its own saver through ``--adv_saver 'Customized("saver.py",
"save")'``, alpha-beta-CROWN's hook for custom savers: one file per row, ``<cex file>.<row
index>``. The harness (``run_batch``) enforces each row's timeout and counts the start-up.

alpha-beta-CROWN caches a parsed property as ``<vnnlib>.compiled`` next to the file and fails
where it cannot write it: a property in a folder that is not writable (or gzipped, which it does
not read) is copied into the run's own folder first. Nothing else is written into the benchmark.
``vnncomp_scripts/prepare_instance.sh`` of the checkout runs ``killall python``: never called.
"""
from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import yaml

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import DECIDED, Command, Parameter, Status, Verdict, Verifier
from bench.verifiers.abcrown_install import CHECKOUT, install_abcrown
from bench.verifiers.installer import (VENV_ENV, InstallRecord, install_tool, tool_folder,
                                       uninstall_tool)
from bench.verifiers.vnncomp_format import parse_counterexample, parse_vnncomp_result

RESULTS_FILE = "results.txt"  # one instance: the VNN-COMP results file
CEX_FILE = "cex.txt"  # where alpha-beta-CROWN saves a counterexample before copying it
BATCH_CSV = "instances.csv"
BATCH_RESULTS = "summary.pkl"  # batch mode: its pickle of statuses and times (unread)
BATCH_SAVER = "cex_saver.py"  # batch mode: the saver plugged into alpha-beta-CROWN

# Loaded by alpha-beta-CROWN itself (its Customized() hook), inside its own process: it may only
# use what it has there. ``example_idx`` is the CSV row being verified.
SAVER_SOURCE = '''"""Written by prune-bench: alpha-beta-CROWN's batch mode saves every counterexample to one
file; this saver gives each CSV row its own, <cex_path>.<row>, in the VNN-COMP format."""
import os

import arguments


def _flat(tensor):
    return [float(value) for value in tensor.detach().cpu().reshape(-1).tolist()]


def save(adv_input, adv_output, res_path):
    row = arguments.Globals.get("example_idx", -1)
    path = f"{res_path}.{row}"
    lines = [f"(X_{i} {value!r})" for i, value in enumerate(_flat(adv_input))]
    lines += [f"(Y_{j} {value!r})" for j, value in enumerate(_flat(adv_output))]
    with open(path + ".part", "w") as handle:
        handle.write("(" + "\\n".join(lines) + ")\\n")
    os.replace(path + ".part", path)  # never seen half-written
'''

_REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = _REPO_ROOT / "verifiers" / "abcrown"
NAMED_CONFIGS = {"cpu": ("cpu.yaml", "cpu"), "gpu": ("gpu.yaml", "cuda")}  # name -> file, device
DEVICES = ("cpu", "cuda")
TOOL = "alpha-beta-CROWN"
NAME = "abcrown"
HOME_ENV, PYTHON_ENV = "ABCROWN_HOME", "ABCROWN_PYTHON"

_TIME = re.compile(r"^Time: ([0-9.eE+-]+)\s*$", re.M)
# Batch mode's progress lines, in the order they appear.
_PROGRESS = re.compile(
    r"^\s*%+ idx: (?P<idx>\d+), vnnlib ID: \d+ %+\s*$"
    r"|^Result: (?P<status>.*?) in (?P<time>[0-9.eE+-]+) seconds\s*$",
    re.M)
_ERROR_LINE = re.compile(r"error|exception|assert|cannot|can't|not found|failed", re.I)
# Single-instance mode: what it prints when each stage decides (see the module docstring).
_ATTACK_FOUND = re.compile(r"^verified_status unsafe-pgd\s*$", re.M)
_INCOMPLETE_PROVED = re.compile(r"^verified with init bound!\s*$", re.M)
_BAB_STARTED = re.compile(r"^#+ Verifying property Instance", re.M)
# Its internal statuses (batch mode) by the stage that produced them.
_DECIDED_BY = {"unsafe-pgd": "attack", "safe-incomplete": "incomplete",
               "safe-incomplete-refine": "mip", "safe-mip": "mip", "unsafe-mip": "mip",
               "unsafe-bab": "bab", "safe": "bab"}


def _check_config(value: str) -> None:
    if value not in NAMED_CONFIGS and not Path(value).expanduser().is_file():
        raise ValueError(f"is neither {' nor '.join(NAMED_CONFIGS)} nor an existing YAML file")


@VERIFIERS.register(NAME)
class AbCrown(Verifier):
    name = NAME
    complete = True
    install_hint = (f"bench verifiers install abcrown (or set {HOME_ENV} to a checkout and "
                    f"{PYTHON_ENV} to the python of its own environment)")
    parameters = {
        "home": Parameter(str, help=f"the checkout; default ${HOME_ENV}, else the installed one"),
        "python": Parameter(str, help=f"its interpreter; default ${PYTHON_ENV}, else the "
                                      f"installed environment's"),
        "config": Parameter(str, "cpu", check=_check_config,
                            help="cpu | gpu (verifiers/abcrown/*.yaml) or a YAML file"),
        "device": Parameter(str, choices=DEVICES,
                            help="default: the named config's, or what a YAML file says"),
        "batch": Parameter(bool, True, help="one process per model (its CSV mode) instead of "
                                            "one per instance"),
        "attack": Parameter(bool, True, help="false skips its PGD attack (when one already "
                                             "ran, e.g. in a cascade)"),
    }

    # ------------------------------------------------------------------ installation

    def installed(self) -> InstallRecord | None:
        return InstallRecord.read(tool_folder(NAME))

    def home(self) -> Path | None:
        home = self.params["home"] or os.environ.get(HOME_ENV)
        if home:
            return Path(home).expanduser()
        record = self.installed()
        return Path(record.location) / CHECKOUT if record else None

    def script(self) -> Path | None:
        home = self.home()
        return home / "complete_verifier" / "abcrown.py" if home else None

    def python(self) -> str | None:
        """Its interpreter: ``python=``, ``$ABCROWN_PYTHON``, else the installed environment's;
        None when there is none (this project's own python cannot run it)."""
        python = self.params["python"] or os.environ.get(PYTHON_ENV)
        if python:
            return str(Path(python).expanduser())
        record = self.installed()
        return record.python if record else None

    def is_installed(self) -> bool:
        script = self.script()
        return script is not None and script.is_file() and self.python() is not None

    def version(self) -> str | None:
        """``git describe`` of the checkout, else the version of its bundled auto_LiRPA."""
        home = self.home()
        if home is None or not home.is_dir():
            return None
        if (home / ".git").exists():
            try:
                done = subprocess.run(["git", "-C", str(home), "describe", "--always", "--tags",
                                       "--dirty"], capture_output=True, text=True, timeout=10)
                if done.returncode == 0 and done.stdout.strip():
                    return done.stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        # A checkout without git metadata (a release archive): its auto_LiRPA says which.
        found = _lirpa_version(home)
        return f"auto_LiRPA-{found}" if found else None

    def install_info(self) -> str:
        record = self.installed()
        home = self.home()
        if record is None or home is None or home != Path(record.location) / CHECKOUT:
            return f"from {home}" if home else ""
        return record.summary()

    def install(self, *, force: bool = False, source: str | None = None, ref: str | None = None,
                dependencies: dict[str, str] | None = None, echo=print) -> str:
        record = install_tool(NAME, lambda folder, steps: install_abcrown(
            folder, steps, source=source, ref=ref, dependencies=dependencies or {}),
            force=force, echo=echo)
        return record.summary()

    def uninstall(self, echo=print) -> str:
        return uninstall_tool(NAME)

    def uses_gpu(self) -> bool:
        return not self._runs_on_cpu(self.config_path())

    # ------------------------------------------------------------------ configuration

    def config_path(self) -> Path:
        config = str(self.params["config"])
        if config in NAMED_CONFIGS:
            return CONFIG_DIR / NAMED_CONFIGS[config][0]
        return Path(config).expanduser().resolve()

    def device(self) -> str | None:
        """The device to pass with --device; None leaves it to a custom YAML."""
        if self.params["device"]:
            return str(self.params["device"])
        config = str(self.params["config"])
        return NAMED_CONFIGS[config][1] if config in NAMED_CONFIGS else None

    def _runs_on_cpu(self, config: Path) -> bool:
        device = self.device()
        if device is None:
            try:
                loaded = yaml.safe_load(config.read_text()) or {}
                device = (loaded.get("general") or {}).get("device")
            except (OSError, yaml.YAMLError, AttributeError):
                device = None
        return (device or "cuda") == "cpu"  # alpha-beta-CROWN's own default is cuda

    def _common_args(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """Interpreter, script, config and device; the environment."""
        script, python = self.script(), self.python()
        if script is None or not script.is_file() or python is None:
            raise BenchError(f"alpha-beta-CROWN is not installed: {self.install_hint}")
        config = self.config_path()
        argv = [python, str(script.resolve()), "--config", str(config),
                "--save_adv_example", "--cex_path", str((workdir / CEX_FILE).resolve())]
        device = self.device()
        if device is not None:
            argv += ["--device", device]
        if not self.params["attack"]:
            argv += ["--pgd_order", "skip"]
        # Unbuffered: batch mode is followed through its stdout while it runs. Its own python
        # must not see this project's PYTHONPATH (a checkout root on it shadows its auto_LiRPA).
        env = {"PYTHONUNBUFFERED": "1", **VENV_ENV}
        if self._runs_on_cpu(config):
            env["OMP_NUM_THREADS"] = "1"  # its PGD attack ran 10x slower with 2 threads
            env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA initialisation on a GPU machine either
        return argv, env

    # ------------------------------------------------------------------ one instance

    def command(self, instance: Instance, workdir: Path) -> Command:
        argv, env = self._common_args(workdir)
        onnx = instance.onnx_path.resolve()
        vnnlib = readable_vnnlib(instance.vnnlib_path.resolve(), workdir)
        argv += ["--onnx_path", str(onnx), "--vnnlib_path", str(vnnlib),
                 "--timeout", repr(float(instance.timeout)),
                 "--results_file", str((workdir / RESULTS_FILE).resolve())]
        # cwd = workdir: files it writes next to itself land among the logs.
        return Command(argv=argv, env=env, cwd=workdir)

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        times = _TIME.findall(stdout)
        verifier_time = float(times[-1]) if times else None
        results = workdir / RESULTS_FILE
        if returncode != 0:
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=_failure_reason(stdout, stderr, returncode))
        if not results.is_file():
            last = _last_line(stderr) or _last_line(stdout)
            return Verdict(Status.ERROR, verifier_time=verifier_time,
                           reason=f"{TOOL} exited with 0 but wrote no results file"
                                  + (f"; last output: {last}" if last else ""))
        verdict = parse_vnncomp_result(results.read_text(errors="replace"), TOOL)
        verdict.verifier_time = verifier_time
        verdict.decided_by = _single_decided_by(verdict.status, stdout)
        if verdict.status is Status.TIMEOUT:
            verdict.reason = (f"{TOOL} wrote timeout (it writes its own timeout and an "
                              f"undecided 'unknown' alike)")
        return verdict

    # ------------------------------------------------------------------ batch mode

    def supports_batch(self) -> bool:
        return bool(self.params["batch"])

    def batch_command(self, instances: list[Instance], workdir: Path) -> Command:
        if not instances:
            raise BenchError("abcrown: a batch needs at least one instance")
        argv, env = self._common_args(workdir)
        copies = workdir / "vnnlib"
        rows = []
        for index, instance in enumerate(instances):
            vnnlib = readable_vnnlib(instance.vnnlib_path.resolve(), copies, prefix=f"{index}_")
            # Absolute paths: its CSV mode joins them with --root_path, which keeps them as
            # they are; so copied properties can sit beside the benchmark's own.
            rows.append([str(instance.onnx_path.resolve()), str(vnnlib),
                         repr(float(instance.timeout))])
        csv_path = (workdir / BATCH_CSV).resolve()
        with open(csv_path, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        saver = (workdir / BATCH_SAVER).resolve()
        saver.write_text(SAVER_SOURCE)
        argv += ["--root_path", str(instances[0].root.resolve()), "--csv_name", str(csv_path),
                 "--results_file", str((workdir / BATCH_RESULTS).resolve()),
                 "--adv_saver", f"Customized({str(saver)!r}, 'save')"]
        return Command(argv=argv, env=env, cwd=workdir)

    def parse_batch_progress(self, instances: list[Instance], workdir: Path,
                             stdout: str) -> dict[int, Verdict]:
        verdicts: dict[int, Verdict] = {}
        for idx, raw, seconds in _batch_results(stdout):
            if not 0 <= idx < len(instances) or idx in verdicts:
                continue
            verdict = _batch_verdict(raw)
            verdict.verifier_time = seconds
            if verdict.status is Status.SAT:
                _attach_counterexample(verdict, workdir / f"{CEX_FILE}.{idx}")
            verdicts[idx] = verdict
        return verdicts


# --------------------------------------------------------------------------- helpers


def readable_vnnlib(vnnlib: Path, workdir: Path, prefix: str = "") -> Path:
    """``vnnlib`` itself where alpha-beta-CROWN can use it in place: plain text in a folder it
    may write its ``.compiled`` cache into. Otherwise a plain copy in ``workdir``."""
    gzipped = vnnlib.suffix == ".gz"
    if not gzipped and _writable(vnnlib.parent):
        return vnnlib
    workdir.mkdir(parents=True, exist_ok=True)
    if gzipped:
        copy = workdir / f"{prefix}{vnnlib.stem}"
        with gzip.open(vnnlib, "rb") as source, open(copy, "wb") as target:
            shutil.copyfileobj(source, target)
    else:
        copy = workdir / f"{prefix}{vnnlib.name}"
        shutil.copyfile(vnnlib, copy)
    return copy.resolve()


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _batch_results(stdout: str) -> list[tuple[int, str, float | None]]:
    """``(row index, raw status, seconds)`` for every ``Result:`` line, each attributed to the
    row of the header above it."""
    results = []
    current = -1
    for match in _PROGRESS.finditer(stdout):
        if match["idx"] is not None:
            current = int(match["idx"])
            continue
        try:
            seconds: float | None = float(match["time"])
        except ValueError:
            seconds = None
        results.append((current, match["status"].strip(), seconds))
    return results


def _batch_verdict(raw: str) -> Verdict:
    """A verdict from its internal status, mapped as its own single-instance mode maps it."""
    text = raw.lower()
    if "unknown" in text or "timeout" in text or "timed out" in text:
        return Verdict(Status.TIMEOUT, reason=f"{TOOL} reported {raw!r} (written as timeout, as "
                                              f"its results files do)")
    decided_by = _DECIDED_BY.get(text.split()[0]) if text.split() else None
    if "unsafe" in text:
        return Verdict(Status.SAT, decided_by=decided_by)
    if "safe" in text:
        return Verdict(Status.UNSAT, decided_by=decided_by)
    return Verdict(Status.ERROR, reason=f"{TOOL} reported an unexpected status {raw!r}")


def _single_decided_by(status: Status, stdout: str) -> str | None:
    """Which stage decided, from what single-instance mode printed on the way."""
    if status is Status.SAT and _ATTACK_FOUND.search(stdout):
        return "attack"
    if status is Status.UNSAT and _INCOMPLETE_PROVED.search(stdout):
        return "incomplete"
    if status in DECIDED and _BAB_STARTED.search(stdout):
        return "bab"
    return None


def _lirpa_version(home: Path) -> str | None:
    for init in (home / "auto_LiRPA" / "auto_LiRPA" / "__init__.py",
                 home / "complete_verifier" / "auto_LiRPA" / "__init__.py"):
        try:
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(),
                              re.M)
        except OSError:
            continue
        if found:
            return found[1]
    return None


def _attach_counterexample(verdict: Verdict, cex_file: Path) -> None:
    if not cex_file.is_file():
        verdict.reason = f"{TOOL} answered sat but saved no counterexample"
        return
    cex, problem = parse_counterexample(_read_text(cex_file))
    if problem:
        verdict.reason = f"{TOOL} answered sat but its counterexample is unusable: {problem}"
    else:
        verdict.counterexample = cex


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _failure_reason(stdout: str, stderr: str, returncode: int) -> str:
    """One line: the exception it died of where it printed one, else its last output."""
    if returncode < 0:
        try:
            exit_text = f"{TOOL} was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            exit_text = f"{TOOL} was killed by signal {-returncode}"
    else:
        exit_text = f"{TOOL} exited with code {returncode}"
    # A Python traceback ends with the exception's own line: the most telling one.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    message = (errors[-1] if errors else (lines[-1] if lines else _last_line(stdout)))[:300]
    return f"{exit_text}: {message}" if message else f"{exit_text} without output"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
