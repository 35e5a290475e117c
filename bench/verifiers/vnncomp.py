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

Each tool keeps its own identity: rows are recorded as ``vnncomp:<tool>`` (``result_name``), with
``<tool>`` from ``tool=`` or else the tool folder's name (its parent's, where the folder has a
generic name such as ``vnncomp_scripts``), so two tools never overwrite each other's results.

``install_tool.sh v1`` (VNN-COMP's install step) runs through the same installer as every tool
(``bench verifiers install vnncomp -o tool_dir=DIR``, or ``--source URL-or-PATH [--ref C] -o
tool=NAME`` to clone the tool first into ``tools_dir()/vnncomp-NAME``); its output goes to the
install log and an install record names the tool folder, which ``tool=NAME`` then finds.
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
from bench.verifiers.base import (Command, Parameter, Status, Verdict, Verifier, at_least,
                                  positive)
from bench.verifiers.harness import run_process
from bench.verifiers.installer import (InstallRecord, Steps, install_tool, tool_folder,
                                       uninstall_tool)
from bench.verifiers.vnncomp_format import parse_vnncomp_result

VERSION_STRING = "v1"
RUN_SCRIPT = "run_instance.sh"
PREPARE_SCRIPT = "prepare_instance.sh"
INSTALL_SCRIPT = "install_tool.sh"
RESULTS_FILE = "results.txt"
# Folder names that say nothing about the tool: its identity is the folder above.
_GENERIC_FOLDERS = ("vnncomp_scripts", "vnncomp", "scripts", "vnncomp_scripts_v1")
# Commands that kill processes by name, i.e. possibly ours: never run a script that uses them.
_KILL_BY_NAME = re.compile(r"(^|[\s;&|(`])(killall|pkill)\b")


def _check_tool_name(value: str) -> None:
    if not _safe_name(value) or _safe_name(value) != value:
        raise ValueError("must be a plain name (letters, digits, '.', '_', '-')")




def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or ""


def _folder_name(tool: str) -> str:
    """The installer folder of a VNN-COMP tool: ``vnncomp-<tool>``."""
    return f"vnncomp-{tool}"



@VERIFIERS.register("vnncomp")
class VnnComp(Verifier):
    name = "vnncomp"
    # Competition tools may answer sat and unsat anywhere; an incomplete one says unknown.
    complete = True
    install_hint = ("point --verifier-option tool_dir=DIR at a folder holding the tool's VNN-COMP "
                    "run_instance.sh (bench verifiers install vnncomp -o tool_dir=DIR runs its "
                    "install_tool.sh), or name an installed tool with tool=NAME")
    parameters = {
        "tool_dir": Parameter(str, help="folder of run_instance.sh (and prepare_instance.sh); "
                                        "default: the installed tool's"),
        "tool": Parameter(str, check=_check_tool_name,
                          help="the tool's name, recorded as vnncomp:<tool>; default: the tool "
                               "folder's name"),
        "category": Parameter(str, help="the CATEGORY argument; default: the benchmark's name"),
        "grace": Parameter(float, 60.0, check=at_least(0),
                           help="seconds from SIGTERM (at the timeout) to SIGKILL, as VNN-COMP's"),
        "prepare": Parameter(bool, True, help="run prepare_instance.sh where there is one"),
        "prepare_timeout": Parameter(float, 300.0, check=positive,
                                     help="hard limit for prepare_instance.sh, outside the "
                                          "instance's time"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.grace = self.params["grace"]

    def tool_dir(self) -> Path | None:
        folder = self.params["tool_dir"]
        if folder:
            return Path(folder).expanduser().resolve()
        record = InstallRecord.read(tool_folder(_folder_name(self.params["tool"])))  \
            if self.params["tool"] else None
        return Path(record.extra["tool_dir"]) if record and "tool_dir" in record.extra else None

    def tool_name(self) -> str | None:
        """The tool's identity: ``tool=``, else the name of its folder (of the folder above a
        generic ``vnncomp_scripts``)."""
        if self.params["tool"]:
            return str(self.params["tool"])
        folder = self.tool_dir()
        if folder is None:
            return None
        named = folder.parent if folder.name.lower() in _GENERIC_FOLDERS else folder
        return _safe_name(named.name) or None

    @property
    def result_name(self) -> str:
        tool = self.tool_name()
        return f"{self.name}:{tool}" if tool else self.name

    def install_info(self) -> str:
        folder = self.tool_dir()
        return f"{self.result_name} in {folder}" if folder else ""

    def install(self, *, force: bool = False, source: str | None = None, ref: str | None = None,
                dependencies: dict[str, str] | None = None, echo=print) -> str:
        """Run the tool's ``install_tool.sh v1``: in ``tool_dir``, or in a clone of ``source``
        at ``ref`` made in ``tools_dir()/vnncomp-<tool>`` (``tool=`` is then required)."""
        if dependencies:
            raise BenchError("vnncomp installs a tool with its own install_tool.sh; "
                             "--dependency does not apply")
        if source is None and self.params["tool_dir"] is None:
            raise BenchError("vnncomp needs the tool: -o tool_dir=DIR (a folder with "
                             f"{INSTALL_SCRIPT}), or --source URL-or-PATH with -o tool=NAME")
        if source is not None and not self.params["tool"]:
            raise BenchError("installing a VNN-COMP tool from --source needs its name: "
                             "-o tool=NAME")
        tool = self.tool_name() or "tool"
        record = install_tool(_folder_name(tool), lambda folder, steps: self._install(
            folder, steps, tool, source, ref), force=force, echo=echo)
        return record.summary()

    def _install(self, folder: Path, steps: Steps, tool: str, source: str | None,
                 ref: str | None) -> InstallRecord:
        commit = ""
        if source is not None:
            commit = steps.git_clone(f"cloning {source}", source, folder / "repo", ref)
            scripts = _find_scripts(folder / "repo", self.params["tool_dir"], steps)
        else:
            scripts = self.tool_dir()
            if scripts is None or not (scripts / INSTALL_SCRIPT).is_file():
                raise steps.fail("finding the tool", f"no {INSTALL_SCRIPT} in {scripts}")
        _refuse_killers(scripts / INSTALL_SCRIPT, "")
        steps.run(f"running {INSTALL_SCRIPT} {VERSION_STRING}",
                  _script_argv(scripts / INSTALL_SCRIPT) + [VERSION_STRING], cwd=scripts)
        return InstallRecord(tool=f"{self.name}:{tool}", location=str(folder),
                             source=source or str(scripts), commit=commit,
                             extra={"tool_dir": str(scripts)})

    def uninstall(self, echo=print) -> str:
        if not self.params["tool"]:
            raise BenchError("vnncomp uninstalls a tool by its name: -o tool=NAME")
        return uninstall_tool(_folder_name(str(self.params["tool"])))

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
        if self.params["prepare"] and prepare_script.is_file():
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
        outcome = run_process(argv, self.params["prepare_timeout"], grace=self.grace,
                              cwd=workdir, stdout_path=stdout, stderr_path=stderr)
        if outcome.timed_out:
            raise BenchError(f"{PREPARE_SCRIPT} did not finish within "
                             f"{self.params['prepare_timeout']:g} s")
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


def _find_scripts(repo: Path, relative: str | None, steps: Steps) -> Path:
    """The folder of the clone that holds install_tool.sh: ``relative`` if given, else the one
    folder that has it."""
    if relative:
        folder = (repo / relative).resolve()
        if not folder.is_relative_to(repo.resolve()) or not (folder / INSTALL_SCRIPT).is_file():
            raise steps.fail("finding the tool", f"no {INSTALL_SCRIPT} in {relative} of the clone")
        return folder
    found = sorted(path.parent for path in repo.rglob(INSTALL_SCRIPT) if ".git" not in path.parts)
    if len(found) != 1:
        raise steps.fail("finding the tool", f"{len(found)} folders of the clone hold "
                                             f"{INSTALL_SCRIPT}; name one with -o tool_dir=")
    return found[0]


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
