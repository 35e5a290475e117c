"""Any tool that speaks VNN-COMP's scripts interface, run as VNN-COMP runs it.

A tool folder holds ``run_instance.sh`` and optionally ``prepare_instance.sh``. For each instance
VNN-COMP runs ``prepare_instance.sh v1 CATEGORY ONNX VNNLIB`` (outside the instance's time; a
failure means the tool skips the instance), then ``run_instance.sh v1 CATEGORY ONNX VNNLIB
RESULTS TIMEOUT`` with absolute paths, and kills it 60 s after the timeout. The results file
(``bench.verifiers.vnncomp_format``) is the answer, whatever the script's exit code; the exit
code only explains a missing or unreadable file.

Here the harness's timeout applies: SIGTERM at the timeout, SIGKILL ``grace`` (default 60) seconds
later. Some tools' prepare scripts clean up with ``killall python`` (alpha-beta-CROWN's does),
which would kill this harness too: such a script is refused, and ``prepare=false`` skips it.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers import VERIFIERS
from bench.formats.folder import Instance
from bench.verifiers.base import Command, Status, Verdict, Verifier
from bench.verifiers.harness import run_process
from bench.verifiers.vnncomp_format import parse_vnncomp_result

VERSION_STRING = "v1"
RUN_SCRIPT = "run_instance.sh"
PREPARE_SCRIPT = "prepare_instance.sh"
RESULTS_FILE = "results.txt"
# Commands that kill processes by name, i.e. possibly ours: never run a script that uses them.
_KILL_BY_NAME = re.compile(r"(^|[\s;&|(`])(killall|pkill)\b")


@VERIFIERS.register("vnncomp")
class VnnComp(Verifier):
    name = "vnncomp"
    # Competition tools may answer sat and unsat anywhere; an incomplete one says unknown.
    complete = True
    install_hint = ("point --verifier-option tool_dir=DIR at a folder holding the tool's VNN-COMP "
                    "run_instance.sh (and prepare_instance.sh, if it has one)")
    parameters = {
        "tool_dir": None,  # folder of run_instance.sh / prepare_instance.sh
        "category": None,  # the CATEGORY argument; default: the benchmark's name
        "grace": 60.0,  # seconds from SIGTERM (at the timeout) to SIGKILL, as VNN-COMP's 60 s
        "prepare": True,  # run prepare_instance.sh where there is one
        "prepare_timeout": 300.0,  # hard limit for prepare_instance.sh, not part of the timeout
    }

    def __init__(self, **params):
        super().__init__(**params)
        try:
            self.grace = float(self.params["grace"])
        except (TypeError, ValueError):
            raise BenchError(f"vnncomp: grace={self.params['grace']!r} is not a number") from None

    def tool_dir(self) -> Path | None:
        folder = self.params["tool_dir"]
        return Path(folder).expanduser().resolve() if folder else None

    def is_installed(self) -> bool:
        folder = self.tool_dir()
        return folder is not None and (folder / RUN_SCRIPT).is_file()

    def version(self) -> str | None:
        """``git describe`` of the repository holding the tool folder, if it is in one."""
        folder = self.tool_dir()
        if folder is None or not folder.is_dir():
            return None
        try:
            done = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--tags",
                                   "--dirty"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        version = done.stdout.strip() if done.returncode == 0 else ""
        return version or None

    def command(self, instance: Instance, workdir: Path) -> Command:
        folder = self.tool_dir()
        if folder is None or not (folder / RUN_SCRIPT).is_file():
            raise BenchError(f"no {RUN_SCRIPT} in {folder}: {self.install_hint}")
        run_script = folder / RUN_SCRIPT
        _refuse_killers(run_script, "")
        category = str(self.params["category"] or instance.benchmark)
        onnx = _plain(instance.onnx_path.resolve(), workdir)
        vnnlib = _plain(instance.vnnlib_path.resolve(), workdir)
        prepare_script = folder / PREPARE_SCRIPT
        if self.bool_param("prepare") and prepare_script.is_file():
            _refuse_killers(prepare_script, " (or pass --verifier-option prepare=false)")
            self._prepare(prepare_script, category, onnx, vnnlib, workdir)
        argv = _script_argv(run_script) + [VERSION_STRING, category, str(onnx), str(vnnlib),
                                           str((workdir / RESULTS_FILE).resolve()),
                                           f"{instance.timeout:g}"]
        return Command(argv=argv, cwd=workdir)

    def _prepare(self, script: Path, category: str, onnx: Path, vnnlib: Path,
                 workdir: Path) -> None:
        """Run prepare_instance.sh under its own hard limit; raise if it fails."""
        argv = _script_argv(script) + [VERSION_STRING, category, str(onnx), str(vnnlib)]
        (workdir / "prepare_command.txt").write_text(shlex.join(argv) + "\n")
        stdout, stderr = workdir / "prepare_stdout.log", workdir / "prepare_stderr.log"
        outcome = run_process(argv, float(self.params["prepare_timeout"]), grace=self.grace,
                              cwd=workdir, stdout_path=stdout, stderr_path=stderr)
        if outcome.timed_out:
            raise BenchError(f"{PREPARE_SCRIPT} did not finish within "
                             f"{float(self.params['prepare_timeout']):g} s")
        if outcome.returncode != 0:
            last = _last_line(_read_text(stderr)) or _last_line(_read_text(stdout))
            raise BenchError(f"{PREPARE_SCRIPT} exited with code {outcome.returncode}"
                             + (f": {last}" if last else ""))

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        results = workdir / RESULTS_FILE
        exit_text = _exit_text(returncode)
        if not results.is_file():
            last = _last_line(stderr) or _last_line(stdout)
            return Verdict(Status.ERROR, reason=f"{exit_text} and wrote no results file"
                                                + (f"; last output: {last}" if last else ""))
        verdict = parse_vnncomp_result(results.read_text(errors="replace"), RUN_SCRIPT)
        if returncode != 0:
            # VNN-COMP trusts the results file whatever the exit code; we do not: an answer
            # from a tool that then crashed is not evidence (a wrong unsat is the worst bug).
            answer = verdict.status.value
            verdict = Verdict(Status.ERROR, verifier_time=verdict.verifier_time,
                              reason=f"{exit_text} after writing '{answer}'"
                                     + (f"; {verdict.reason}" if verdict.reason else ""))
        return verdict


def _script_argv(script: Path) -> list[str]:
    """Run a script directly where it is executable (its shebang decides), else with bash,
    which is what VNN-COMP's scripts are written for."""
    return [str(script)] if os.access(script, os.X_OK) else ["bash", str(script)]


def _refuse_killers(script: Path, advice: str) -> None:
    for number, line in enumerate(_read_text(script).splitlines(), start=1):
        code = line.split("#", 1)[0]
        if _KILL_BY_NAME.search(code):
            raise BenchError(f"{script} kills processes by name (line {number}: "
                             f"{line.strip()[:80]!r}), which could kill this harness; "
                             f"refusing to run it{advice}")


def _plain(path: Path, workdir: Path) -> Path:
    """``path``, or an uncompressed copy in ``workdir`` for a gzipped benchmark file (VNN-COMP
    unzips its benchmarks before running tools), inflated no further than the size limit of
    its kind (``bench.formats.folder.Limits``): a gzip bomb is a ``BenchError``, not a full
    disk."""
    from bench.formats.folder import Limits, inflate

    if not path.name.endswith(".gz"):
        return path
    return inflate(path, workdir / path.name[:-3], Limits().for_file(path)).resolve()


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"{RUN_SCRIPT} was killed by signal {-returncode}"
    return f"{RUN_SCRIPT} exited with code {returncode}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
