"""alpha-beta-CROWN, from the user's own checkout (it is not on PyPI; we never install or ship it).

One instance: ``python <home>/complete_verifier/abcrown.py --config YAML --onnx_path O
--vnnlib_path V --timeout T --results_file R --save_adv_example --cex_path C --device D``. The
results file says ``sat``, ``unsat`` or ``timeout`` (alpha-beta-CROWN writes its ``unknown`` as
``timeout`` too) and, after ``sat``, the counterexample ``((X_0 v) ... (Y_0 v) ...)`` copied from
the cex file. It prints ``Result: <answer>`` and ``Time: <seconds>`` on stdout.

Batch mode (``batch=true``): ``--root_path DIR --csv_name FILE`` verifies every row
(``onnx,vnnlib,timeout``) of a CSV in one process, paying the start-up (4 to 15 s on a CPU) once.
Per row it prints a header ``%%% idx: I, vnnlib ID: I %%%`` and ``Result: <status> in <t>
seconds``, where the status is its internal one (``safe``, ``safe-incomplete``, ``unsafe-pgd``,
``unsafe-bab``, ``unknown``, with `` (timed out)`` appended when it overran); its results file is
then a pickle, which we do not read. Its saver writes every counterexample to the same cex file,
and the next row may overwrite it within milliseconds (seen on small models), so batch mode
plugs in its own saver through ``--adv_saver 'Customized("saver.py", "save")'``, alpha-beta-
CROWN's hook for custom savers: one file per row, ``<cex file>.<row index>``. The harness
(``run_batch``) enforces each row's timeout.

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
import sys
from pathlib import Path

import yaml

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import Command, Status, Verdict, Verifier
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

_TIME = re.compile(r"^Time: ([0-9.eE+-]+)\s*$", re.M)
# Batch mode's progress lines, in the order they appear.
_PROGRESS = re.compile(
    r"^\s*%+ idx: (?P<idx>\d+), vnnlib ID: \d+ %+\s*$"
    r"|^Result: (?P<status>.*?) in (?P<time>[0-9.eE+-]+) seconds\s*$",
    re.M)
_ERROR_LINE = re.compile(r"error|exception|assert|cannot|can't|not found|failed", re.I)


@VERIFIERS.register("abcrown")
class AbCrown(Verifier):
    name = "abcrown"
    complete = True
    install_hint = ("clone alpha-beta-CROWN and set ABCROWN_HOME=/path/to/alpha-beta-CROWN "
                    "(or --verifier-option home=...)")
    parameters = {
        "home": None,  # the checkout; default $ABCROWN_HOME
        "config": "cpu",  # cpu | gpu (verifiers/abcrown/*.yaml) | a path to a YAML file
        "device": None,  # cpu | cuda; default: the named config's, or what a custom YAML says
        "python": None,  # its interpreter; default $ABCROWN_PYTHON, else this one
        "batch": False,  # one process per model (its CSV mode) instead of one per instance
    }

    # ------------------------------------------------------------------ installation

    def home(self) -> Path | None:
        home = self.params["home"] or os.environ.get("ABCROWN_HOME")
        return Path(home).expanduser() if home else None

    def script(self) -> Path | None:
        home = self.home()
        return home / "complete_verifier" / "abcrown.py" if home else None

    def python(self) -> str:
        return str(self.params["python"] or os.environ.get("ABCROWN_PYTHON") or sys.executable)

    def is_installed(self) -> bool:
        script = self.script()
        return script is not None and script.is_file()

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
        for init in (home / "auto_LiRPA" / "auto_LiRPA" / "__init__.py",
                     home / "complete_verifier" / "auto_LiRPA" / "__init__.py"):
            try:
                found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(),
                                  re.M)
            except OSError:
                continue
            if found:
                return f"auto_LiRPA-{found[1]}"
        return None

    # ------------------------------------------------------------------ configuration

    def config_path(self) -> Path:
        config = str(self.params["config"])
        if config in NAMED_CONFIGS:
            path = CONFIG_DIR / NAMED_CONFIGS[config][0]
        else:
            path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise BenchError(f"abcrown: config {config!r} is neither cpu, gpu nor a YAML file "
                             f"({path} does not exist)")
        return path

    def device(self) -> str | None:
        """The device to pass with --device; None leaves it to a custom YAML."""
        device = self.params["device"]
        if device:
            if device not in DEVICES:
                raise BenchError(f"abcrown: device {device!r} is not one of {', '.join(DEVICES)}")
            return str(device)
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
        script = self.script()
        if script is None or not script.is_file():
            raise BenchError(f"alpha-beta-CROWN is not installed: {self.install_hint}")
        config = self.config_path()
        argv = [self.python(), str(script.resolve()), "--config", str(config),
                "--save_adv_example", "--cex_path", str((workdir / CEX_FILE).resolve())]
        device = self.device()
        if device is not None:
            argv += ["--device", device]
        # Unbuffered: batch mode is followed through its stdout while it runs.
        env = {"PYTHONUNBUFFERED": "1"}
        if self._runs_on_cpu(config):
            env["OMP_NUM_THREADS"] = "1"  # its PGD attack ran 10x slower with 2 threads
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
        if verdict.status is Status.TIMEOUT:
            verdict.reason = (f"{TOOL} wrote timeout (it writes its own timeout and an "
                              f"undecided 'unknown' alike)")
        return verdict

    # ------------------------------------------------------------------ batch mode

    def supports_batch(self) -> bool:
        return self.bool_param("batch")

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
    if "unsafe" in text:
        return Verdict(Status.SAT)
    if "safe" in text:
        return Verdict(Status.UNSAT)
    return Verdict(Status.ERROR, reason=f"{TOOL} reported an unexpected status {raw!r}")


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
