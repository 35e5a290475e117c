"""Installing verifiers that live in a folder of their own: one code path for every tool.

``bench verifiers install NAME`` calls ``Verifier.install``; tools that bench can install
(``neuralsat``, ``abcrown``, a VNN-COMP tool folder through ``vnncomp``) implement it with
``install_tool`` below, which gives every one of them the same guarantees:

- everything lives in one folder, ``tools_dir()/<tool>`` (``$PRUNE_BENCH_TOOLS``, else
  ``~/.cache/prune-bench/verifiers``), next to an install record ``install.json`` (what was
  installed from where: commit, versions, interpreter) written last, so a folder without a
  record is never used;
- a reinstall first moves the old install aside and puts it back if the new one fails; a failed
  install removes what it made: nothing half-made is left behind;
- the output of every step (git, pip, a tool's own install script) goes to
  ``tools_dir()/<tool>.install.log``, and a failure is one line naming the step and the last
  line of its output.

Virtual environments are made with this interpreter's ``venv`` module and used through their
``bin/python`` only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bench.errors import BenchError

TOOLS_ENV = "PRUNE_BENCH_TOOLS"  # the folder that holds every separately installed tool
RECORD_FILE = "install.json"
MARKER_FILE = ".made-by-prune-bench"  # written first: only such folders are ever removed
# For a tool's own python: the project's PYTHONPATH must not shadow its packages (an empty value
# adds nothing to sys.path), and neither may a user site.
VENV_ENV = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}

Echo = Callable[[str], None]


def tools_dir() -> Path:
    """Where separately installed verifiers live: ``$PRUNE_BENCH_TOOLS``, else
    ``~/.cache/prune-bench/verifiers``."""
    configured = os.environ.get(TOOLS_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "prune-bench" / "verifiers"


def tool_folder(tool: str) -> Path:
    return tools_dir() / tool


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_env() -> dict[str, str]:
    """This process's environment with ``VENV_ENV`` applied: for running a tool's own python."""
    return {**os.environ, **VENV_ENV}


# --------------------------------------------------------------------------- the record


@dataclass
class InstallRecord:
    """What ``install.json`` says about one installed tool."""

    tool: str
    location: str  # the tool's folder
    source: str = ""  # where it came from: a repository URL or path, a package index
    commit: str = ""  # the commit checked out, for tools installed from a repository
    python: str = ""  # the interpreter that runs it
    versions: dict[str, str] = field(default_factory=dict)  # its key packages
    installed_at: str = ""  # ISO 8601, UTC
    seconds: float = 0.0  # how long the install took
    size_mb: float = 0.0  # disk use of the folder
    extra: dict[str, str] = field(default_factory=dict)  # tool-specific facts

    def write(self, folder: Path) -> None:
        partial = folder / (RECORD_FILE + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        os.replace(partial, folder / RECORD_FILE)

    @classmethod
    def read(cls, folder: Path) -> "InstallRecord | None":
        """The record in ``folder``, or None where there is none (or it is unreadable: then the
        install is incomplete)."""
        try:
            data = json.loads((folder / RECORD_FILE).read_text())
            known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
            return cls(**known)
        except (OSError, ValueError, TypeError):
            return None

    def summary(self) -> str:
        """One line: commit (or the first version) and where."""
        what = f"commit {self.commit[:12]}" if self.commit else ", ".join(
            f"{name} {version}" for name, version in list(self.versions.items())[:1])
        return f"{what} in {self.location}".strip()


# --------------------------------------------------------------------------- steps


class Steps:
    """Runs the steps of one install, each one's output appended to the install log. A step
    that fails raises BenchError: ``installing TOOL failed at STEP: <last line>``."""

    def __init__(self, tool: str, log_path: Path, echo: Echo):
        self.tool, self.log_path, self.echo = tool, log_path, echo

    def fail(self, step: str, detail: str) -> BenchError:
        return BenchError(f"installing {self.tool} failed at {step}: {detail} "
                          f"(full output in {self.log_path})")

    def run(self, step: str, argv: list[str], cwd: Path | None = None,
            env: dict[str, str] | None = None) -> str:
        """Run ``argv``; returns its output (also logged)."""
        self.echo(f"{self.tool}: {step}")
        with open(self.log_path, "a") as log:
            log.write(f"\n$ {' '.join(map(str, argv))}\n")
            log.flush()
            try:
                done = subprocess.run([str(a) for a in argv], cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, errors="replace",
                                      env={**os.environ, **(env or {})})
            except OSError as err:
                log.write(f"cannot start: {err}\n")
                raise self.fail(step, f"cannot start {argv[0]}: {err}") from None
            log.write(done.stdout)
        if done.returncode != 0:
            raise self.fail(step, _last_line(done.stdout) or f"exit code {done.returncode}")
        return done.stdout

    def make_venv(self, venv: Path, python: str | None = None) -> Path:
        self.run("creating its virtual environment",
                 [python or sys.executable, "-m", "venv", str(venv)])
        return venv_python(venv)

    def pip(self, venv: Path, step: str, *args: str) -> None:
        self.run(step, [str(venv_python(venv)), "-m", "pip", "install",
                        "--disable-pip-version-check", *args], env=VENV_ENV)

    def git_clone(self, step: str, source: str, target: Path, ref: str | None,
                  sparse: list[str] | None = None) -> str:
        """Clone ``source`` (URL or local path) into ``target`` and check out ``ref`` (default:
        its HEAD); ``sparse``: gitignore-style patterns of what to check out. Returns the
        commit checked out."""
        # file:// and plain paths alike; protocol.file.allow lets submodules come from paths.
        self.run(step, ["git", "clone", "--quiet", "--no-checkout", git_source(source),
                        str(target)])
        git = ["git", "-C", str(target), "-c", "advice.detachedHead=false"]
        if sparse:
            self.run(f"{step} (choosing files)",
                     git + ["sparse-checkout", "set", "--no-cone", *sparse])
        self.run(f"{step} (checking out {ref or 'HEAD'})",
                 git + ["checkout", "--quiet", ref or "HEAD"])
        return self.run(f"{step} (reading the commit)",
                        git + ["rev-parse", "HEAD"]).strip()


def git_source(source: str) -> str:
    """A local path made absolute (git needs it so for submodule URLs); a URL as it is."""
    path = Path(source).expanduser()
    return str(path.resolve()) if "://" not in source and path.exists() else source


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --------------------------------------------------------------------------- one install


Build = Callable[[Path, Steps], InstallRecord]


def install_tool(tool: str, build: Build, *, force: bool = False, echo: Echo = print,
                 folder: Path | None = None) -> InstallRecord:
    """Install ``tool`` into ``folder`` (default ``tool_folder(tool)``) with ``build(folder,
    steps)``, which returns the record to write. An existing complete install is kept unless
    ``force``; a reinstall keeps the old one until the new one is complete; a failure (also
    Ctrl-C) removes what was made and restores the old install. Returns the record."""
    folder = Path(folder) if folder is not None else tool_folder(tool)
    existing = InstallRecord.read(folder)
    if existing is not None and not force:
        echo(f"{tool} is already installed ({existing.summary()}); --force reinstalls it")
        return existing
    folder.parent.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{tool}.install.log"
    log_path.write_text(f"installing {tool} into {folder} at {_utc_now()}\n")
    aside = folder.with_name(f".{folder.name}.previous")
    _remove(aside)  # a leftover of an install that was killed
    if folder.exists():
        _refuse_foreign(folder)
        if existing is not None:
            os.replace(folder, aside)
        else:
            _remove(folder)  # half-made by an install that was killed: never used
    started = time.monotonic()
    try:
        folder.mkdir()
        (folder / MARKER_FILE).write_text(f"{tool}\n")
        record = build(folder, Steps(tool, log_path, echo))
        record.installed_at = _utc_now()
        record.seconds = round(time.monotonic() - started, 1)
        record.size_mb = round(_size_mb(folder), 1)
        record.write(folder)
    except BaseException:
        _remove(folder)
        if aside.exists():
            os.replace(aside, folder)
        raise
    _remove(aside)
    echo(f"{tool} installed in {record.seconds:g} s, {record.size_mb:g} MB: {record.summary()}")
    return record


def uninstall_tool(tool: str, folder: Path | None = None) -> str:
    folder = Path(folder) if folder is not None else tool_folder(tool)
    if not folder.exists():
        raise BenchError(f"{tool} is not installed in {folder}: nothing to remove")
    _refuse_foreign(folder)
    _remove(folder)
    return f"{tool} removed from {folder}"


def _refuse_foreign(folder: Path) -> None:
    """Never remove a folder that an install did not make (say, ``$PRUNE_BENCH_TOOLS`` pointed
    at a folder of the user's own)."""
    ours = (folder / MARKER_FILE).is_file() or (folder / RECORD_FILE).is_file()
    if folder.is_dir() and any(folder.iterdir()) and not ours:
        raise BenchError(f"{folder} exists and was not made by bench verifiers install; move it "
                         f"away or point {TOOLS_ENV} elsewhere")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _size_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / (1024 * 1024)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
