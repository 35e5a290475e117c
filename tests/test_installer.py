"""The installer that every installable verifier shares (``bench.verifiers.installer``), tried
on tiny git repositories made here: alpha-beta-CROWN's install (clone at a commit, sparse
checkout, submodule from a local source, pip steps, smoke test, record), reinstall and failure
(nothing half-made), uninstall, the CLI, and VNN-COMP's ``install_tool.sh`` through ``vnncomp``.

pip is replaced by a recorder and the new environment's python by this one (the real install
unpacks gigabytes); a real install from local clones runs where ``ABCROWN_SOURCE`` names one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.formats.folder import read_instances
from bench.verifiers import abcrown_install
from bench.verifiers.abcrown import AbCrown
from bench.verifiers.harness import run_batch
from bench.verifiers.installer import (TOOLS_ENV, InstallRecord, Steps, install_tool,
                                       uninstall_tool)
from bench.verifiers.vnncomp import VnnComp

from paths import FIXTURES  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always",
       "-c", "init.defaultBranch=main"]


def git(folder: Path, *args: str) -> str:
    return subprocess.run(GIT + ["-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(folder: Path, files: dict[str, str]) -> str:
    """A git repository holding ``files``; returns its commit."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "release")
    return git(folder, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path) -> dict[str, Path | str]:
    """alpha-beta-CROWN in small: complete_verifier/ with a symlink to its auto_LiRPA
    submodule (whose URL is one that cannot be reached here), example models, a fork."""
    lirpa = tmp_path / "src" / "auto_LiRPA"
    make_repo(lirpa, {"auto_LiRPA/__init__.py": "__version__ = '0.7.1'\n"})
    fork = tmp_path / "src" / "onnx2pytorch"
    fork_commit = make_repo(fork, {"setup.py": "raise SystemExit('never run: pip is faked')\n"})
    repo = tmp_path / "src" / "alpha-beta-CROWN"
    make_repo(repo, {"complete_verifier/abcrown.py": "import auto_LiRPA\n",
                     "complete_verifier/models/big.pth": "weights\n",
                     "complete_verifier/datasets/x.npy": "data\n"})
    (repo / "complete_verifier" / "auto_LiRPA").symlink_to("../auto_LiRPA/auto_LiRPA")
    git(repo, "submodule", "add", "-q", str(lirpa), "auto_LiRPA")
    git(repo, "config", "-f", ".gitmodules", "submodule.auto_LiRPA.url",
        "https://unreachable.invalid/auto_LiRPA.git")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "with auto_LiRPA")
    return {"repo": repo, "commit": git(repo, "rev-parse", "HEAD"), "lirpa": lirpa,
            "fork": fork, "fork_commit": fork_commit}


@pytest.fixture
def pip_calls(tmp_path, monkeypatch) -> list[list[str]]:
    """The tools folder under tmp_path; pip recorded, not run; a venv whose python is this
    one (the smoke test and the version lookup really run)."""
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    monkeypatch.delenv("ABCROWN_HOME", raising=False)
    monkeypatch.delenv("ABCROWN_PYTHON", raising=False)
    monkeypatch.delenv(abcrown_install.TORCH_INDEX_ENV, raising=False)
    monkeypatch.delenv(abcrown_install.TORCH_ENV, raising=False)
    monkeypatch.setattr(abcrown_install, "cuda_present", lambda: False)
    calls: list[list[str]] = []

    def make_venv(self, venv, python=None):
        python_path = venv / "bin" / "python"
        python_path.parent.mkdir(parents=True)
        python_path.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        python_path.chmod(0o755)
        return python_path

    monkeypatch.setattr(Steps, "make_venv", make_venv)
    monkeypatch.setattr(Steps, "pip", lambda self, venv, step, *args: calls.append(list(args)))
    return calls


def install(upstream, **overrides) -> str:
    options = {"source": str(upstream["repo"]), "ref": upstream["commit"],
               "dependencies": {"auto_LiRPA": str(upstream["lirpa"]),
                                "onnx2pytorch": str(upstream["fork"])}, **overrides}
    return AbCrown().install(echo=lambda line: None, **options)


@pytest.fixture
def fork_pinned(upstream, monkeypatch):
    monkeypatch.setattr(abcrown_install, "ONNX2PYTORCH_COMMIT", upstream["fork_commit"])


# --------------------------------------------------------------------------- abcrown


def test_install_from_local_sources(upstream, pip_calls, fork_pinned, tmp_path):
    summary = install(upstream)
    folder = tmp_path / "tools" / "abcrown"
    assert summary == f"commit {upstream['commit'][:12]} in {folder}"
    record = InstallRecord.read(folder)
    assert record.commit == upstream["commit"] and record.source == str(upstream["repo"])
    assert record.versions["auto_LiRPA"] == "0.7.1"
    assert record.extra["onnx2pytorch_commit"] == upstream["fork_commit"]
    assert record.extra["auto_LiRPA_commit"] == git(upstream["lirpa"], "rev-parse", "HEAD")
    assert record.seconds >= 0 and record.size_mb > 0 and record.installed_at
    checkout = folder / "alpha-beta-CROWN"
    # Its example models and datasets are left out; the fork's clone is not kept.
    assert (checkout / "complete_verifier" / "abcrown.py").is_file()
    assert not (checkout / "complete_verifier" / "models").exists()
    assert not (checkout / "complete_verifier" / "datasets").exists()
    assert not (folder / "onnx2pytorch").exists()
    # torch from the CPU index (no NVIDIA driver here), then the pinned requirements, then
    # the fork without its dependencies.
    torch, pinned, fork = pip_calls
    assert torch == [*abcrown_install.TORCH_REQUIREMENTS.split(), "--extra-index-url",
                     abcrown_install.CPU_INDEX]
    assert pinned == list(abcrown_install.PINNED_REQUIREMENTS)
    assert fork[0] == "--no-deps"
    # Installed: no variable needed, and `bench verifiers` can say which commit.
    verifier = AbCrown()
    assert verifier.is_installed() and verifier.home() == checkout
    assert verifier.python() == str(folder / "venv" / "bin" / "python")
    assert verifier.version() == git(checkout, "describe", "--always", "--tags", "--dirty")
    assert upstream["commit"][:12] in verifier.install_info()


def test_install_is_kept_and_reinstall_failure_restores_it(upstream, pip_calls, fork_pinned,
                                                             tmp_path, monkeypatch):
    install(upstream)
    folder = tmp_path / "tools" / "abcrown"
    before = InstallRecord.read(folder)
    monkeypatch.setattr(Steps, "run", lambda *a, **k: pytest.fail("must not run anything"))
    assert install(upstream) == before.summary()  # already there: nothing to do
    monkeypatch.undo()
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    with pytest.raises(BenchError) as failed:
        install(upstream, ref="0" * 40, force=True)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("installing abcrown failed at cloning")
    assert "checking out 0000000000" in message and "abcrown.install.log" in message
    # The old install is back, whole, and nothing else is left beside it.
    assert InstallRecord.read(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["abcrown", "abcrown.install.log"]


def test_a_failed_first_install_leaves_nothing(upstream, pip_calls, fork_pinned, tmp_path):
    with pytest.raises(BenchError, match="failed at cloning .*no-such-repo"):
        install(upstream, source=str(tmp_path / "no-such-repo"))
    assert not (tmp_path / "tools" / "abcrown").exists()
    assert not AbCrown().is_installed()
    with pytest.raises(BenchError, match="no git dependency torchvision"):
        install(upstream, dependencies={"torchvision": "x"})


def test_an_interrupted_install_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))

    def build(folder, steps):
        (folder / "half").write_text("made")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        install_tool("demo", build, echo=lambda line: None)
    assert not (tmp_path / "tools" / "demo").exists()
    # A folder without a record (an install killed with SIGKILL) is never used, and the next
    # install replaces it; a folder that no install made is never removed.
    (tmp_path / "tools" / "demo").mkdir()
    (tmp_path / "tools" / "demo" / "mine.txt").write_text("the user's")
    with pytest.raises(BenchError, match="was not made by bench verifiers install"):
        install_tool("demo", lambda folder, steps: InstallRecord("demo", str(folder)))
    with pytest.raises(BenchError, match="was not made by bench verifiers install"):
        uninstall_tool("demo")
    assert (tmp_path / "tools" / "demo" / "mine.txt").is_file()
    (tmp_path / "tools" / "demo" / "mine.txt").unlink()
    (tmp_path / "tools" / "demo" / "half").write_text("made")
    (tmp_path / "tools" / "demo" / ".made-by-prune-bench").write_text("demo")
    assert InstallRecord.read(tmp_path / "tools" / "demo") is None
    record = install_tool("demo", lambda folder, steps: InstallRecord("demo", str(folder)),
                          echo=lambda line: None)
    assert InstallRecord.read(tmp_path / "tools" / "demo") == record


def test_uninstall(upstream, pip_calls, fork_pinned, tmp_path):
    install(upstream)
    assert AbCrown().uninstall() == f"abcrown removed from {tmp_path / 'tools' / 'abcrown'}"
    assert not AbCrown().is_installed()
    with pytest.raises(BenchError, match="not installed"):
        uninstall_tool("abcrown")


def test_cli_install_list_uninstall(upstream, pip_calls, fork_pinned, tmp_path):
    runner = CliRunner()
    done = runner.invoke(main, ["verifiers", "install", "abcrown", "--source",
                                str(upstream["repo"]), "--ref", upstream["commit"],
                                "--dependency", f"auto_LiRPA={upstream['lirpa']}",
                                "--dependency", f"onnx2pytorch={upstream['fork']}"])
    assert done.exit_code == 0, done.output
    assert f"abcrown: commit {upstream['commit'][:12]}" in done.output
    listing = runner.invoke(main, ["verifiers"])
    line = next(l for l in listing.output.splitlines() if l.startswith("abcrown"))
    assert "installed" in line and f"commit {upstream['commit'][:12]}" in line
    gone = runner.invoke(main, ["verifiers", "uninstall", "abcrown"])
    assert gone.exit_code == 0 and "removed" in gone.output


@pytest.mark.parametrize("args, fragment", [
    (["marabou"], "marabou is not installed by bench"),
    (["abcrown", "-o", "batch=maybe"], "batch='maybe' is not a boolean"),
    (["abcrown", "--dependency", "onnx2pytorch"], "expected NAME=URL-or-PATH"),
    (["vnncomp"], "vnncomp needs the tool"),
])
def test_cli_install_errors_are_one_line(args, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    result = CliRunner().invoke(main, ["verifiers", "install", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- vnncomp

RUN_INSTANCE = "#!/bin/bash\necho unsat > \"$5\"\n"


def test_vnncomp_tool_installed_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    scripts = tmp_path / "nnenum" / "vnncomp_scripts"
    scripts.mkdir(parents=True)
    (scripts / "install_tool.sh").write_text("#!/bin/bash\n[ \"$1\" = v1 ] || exit 1\n"
                                             "echo ok > installed.txt\n")
    (scripts / "run_instance.sh").write_text(RUN_INSTANCE)
    result = CliRunner().invoke(main, ["verifiers", "install", "vnncomp", "-o",
                                       f"tool_dir={scripts}"])
    assert result.exit_code == 0, result.output
    assert (scripts / "installed.txt").read_text() == "ok\n"  # run in its own folder, with v1
    record = InstallRecord.read(tmp_path / "tools" / "vnncomp-nnenum")
    assert record.tool == "vnncomp:nnenum" and record.extra["tool_dir"] == str(scripts)
    # Found again by its name alone.
    verifier = VnnComp(tool="nnenum")
    assert verifier.tool_dir() == scripts and verifier.is_installed()
    assert verifier.result_name == "vnncomp:nnenum"


def test_vnncomp_tool_cloned_from_a_source(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    commit = make_repo(tmp_path / "mytool-src", {
        "vnncomp_scripts/install_tool.sh": "#!/bin/bash\ntouch built\n",
        "vnncomp_scripts/run_instance.sh": RUN_INSTANCE})
    with pytest.raises(BenchError, match="needs its name"):
        VnnComp().install(source=str(tmp_path / "mytool-src"))
    VnnComp(tool="mytool").install(source=str(tmp_path / "mytool-src"), echo=lambda line: None)
    verifier = VnnComp(tool="mytool")
    scripts = tmp_path / "tools" / "vnncomp-mytool" / "repo" / "vnncomp_scripts"
    assert verifier.tool_dir() == scripts and (scripts / "built").is_file()
    assert InstallRecord.read(tmp_path / "tools" / "vnncomp-mytool").commit == commit


def test_vnncomp_install_script_failure_or_killall_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    scripts = tmp_path / "bad" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "install_tool.sh").write_text("#!/bin/bash\necho 'no conda here' >&2\nexit 3\n")
    with pytest.raises(BenchError, match="failed at running install_tool.sh v1: no conda here"):
        VnnComp(tool_dir=str(scripts)).install(echo=lambda line: None)
    assert not (tmp_path / "tools" / "vnncomp-bad").exists()
    (scripts / "install_tool.sh").write_text("#!/bin/bash\nsudo killall -9 python\n")
    with pytest.raises(BenchError, match="kills processes by name"):
        VnnComp(tool_dir=str(scripts)).install(echo=lambda line: None)


# --------------------------------------------------------------------------- the real thing


@pytest.mark.skipif(not os.environ.get("ABCROWN_SOURCE"),
                    reason="set ABCROWN_SOURCE to a clone of alpha-beta-CROWN (and "
                           "ABCROWN_AUTO_LIRPA_SOURCE, ABCROWN_ONNX2PYTORCH_SOURCE where GitHub "
                           "cannot be reached) for a real install (minutes, several GB)")
def test_real_install_and_run(tmp_path, monkeypatch):
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    monkeypatch.delenv("ABCROWN_HOME", raising=False)
    monkeypatch.delenv("ABCROWN_PYTHON", raising=False)
    dependencies = {name: os.environ[variable] for name, variable in (
        ("auto_LiRPA", "ABCROWN_AUTO_LIRPA_SOURCE"),
        ("onnx2pytorch", "ABCROWN_ONNX2PYTORCH_SOURCE")) if os.environ.get(variable)}
    AbCrown().install(source=os.environ["ABCROWN_SOURCE"], dependencies=dependencies,
                      echo=lambda line: None)
    folder = tmp_path / "test"
    shutil.copytree(FIXTURES, folder)
    (folder / "instances.csv").write_text("test_sat.onnx,test_prop.vnnlib,120\n"
                                          "test_unsat.onnx,test_prop.vnnlib,120\n")
    sat, unsat = run_batch(AbCrown(), read_instances(folder), tmp_path / "logs")
    assert (sat.status, unsat.status) == ("sat", "unsat"), (sat.reason, unsat.reason)
    assert sat.cex_check in ("correct", "correct_up_to_tolerance"), sat.cex_detail
