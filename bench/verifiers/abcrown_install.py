"""How ``bench verifiers install abcrown`` builds alpha-beta-CROWN (through ``installer``).

Into ``tools_dir()/abcrown``:

1. ``alpha-beta-CROWN/``: a clone of ``source`` (default the public repository) at ``ref``
   (default ``PINNED_COMMIT``, the release we tested), without its example models and datasets
   (``complete_verifier/models``, ``complete_verifier/datasets``: about 60 MB that verifying an
   ONNX model never reads), and its ``auto_LiRPA`` submodule at the commit the release names;
2. ``venv/``: a virtual environment with torch (``TORCH_REQUIREMENTS``; with no NVIDIA driver
   present, from PyTorch's CPU index where it can be reached), the dependencies of its
   ``environment_pyt280.yaml`` at the versions pinned there (``PINNED_REQUIREMENTS``), and the
   onnx2pytorch fork it needs at ``ONNX2PYTORCH_COMMIT``, installed without its dependencies;
3. a smoke test: ``complete_verifier/abcrown.py`` imports in the new environment.

Sources, for machines without GitHub: ``source`` (``--source``) may be a local clone, and
``dependencies`` (``--dependency auto_LiRPA=PATH``, ``--dependency onnx2pytorch=PATH``) replace
the URLs of the two git dependencies. Environment variables change the torch wheels:
``PRUNE_BENCH_TORCH`` (requirements, default ``TORCH_REQUIREMENTS``) and
``PRUNE_BENCH_TORCH_INDEX`` (an extra index for a CPU-only machine; empty: none).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.errors import BenchError
from bench.verifiers.installer import (VENV_ENV, InstallRecord, Steps, clean_env, git_source,
                                       venv_python)

REPOSITORY = "https://github.com/Verified-Intelligence/alpha-beta-CROWN.git"
PINNED_COMMIT = "8250d5fbd530c76e5e3243db28b3cad5fbaef740"  # "Dec 2025 release"
CHECKOUT = "alpha-beta-CROWN"
VENV = "venv"
# Not needed to verify ONNX models, and not in every mirror: left out of the checkout.
SPARSE = ["/*", "!/complete_verifier/models/", "!/complete_verifier/datasets/"]

# environment_pyt270.yaml names this commit of the fork (the newest one we could test).
ONNX2PYTORCH = "https://github.com/Verified-Intelligence/onnx2pytorch.git"
ONNX2PYTORCH_COMMIT = "8447c42c3192dad383e5598edc74dddac5706ee2"
DEPENDENCY_NAMES = ("auto_LiRPA", "onnx2pytorch")

# Its environment_pyt280.yaml pins torch 2.8.0; we tested the release on CPU with 2.14.1.
TORCH_REQUIREMENTS = "torch==2.14.1 torchvision==0.29.1"
TORCH_ENV, TORCH_INDEX_ENV = "PRUNE_BENCH_TORCH", "PRUNE_BENCH_TORCH_INDEX"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What complete_verifier imports, at environment_pyt280.yaml's versions.
PINNED_REQUIREMENTS = (
    "numpy==2.3.3", "scipy==1.16.3", "pandas==2.3.3", "pyyaml==6.0.3", "appdirs==1.4.4",
    "sortedcontainers==2.4.0", "packaging==25.0", "psutil==7.0.0", "tqdm==4.67.1",
    "onnx==1.19.1", "onnxruntime==1.23.2", "onnxoptimizer==0.3.13", "onnxsim==0.4.36",
    "skl2onnx==1.19.1", "gurobipy==12.0.0", "graphviz==0.21", "termcolor==3.3.0",
)
REPORTED = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnx2pytorch")

_SMOKE = ("import sys; sys.path.insert(0, sys.argv[1]); import abcrown, auto_LiRPA; "
          "print(auto_LiRPA.__version__)")


def cuda_present() -> bool:
    """Whether an NVIDIA driver answers (then PyPI's default, CUDA, torch wheels are right)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def install_abcrown(folder: Path, steps: Steps, *, source: str | None = None,
                    ref: str | None = None,
                    dependencies: dict[str, str] | None = None) -> InstallRecord:
    """Build alpha-beta-CROWN into ``folder`` (see the module docstring); returns its record."""
    dependencies = dict(dependencies or {})
    unknown = sorted(set(dependencies) - set(DEPENDENCY_NAMES))
    if unknown:
        raise BenchError(f"abcrown has no git dependency {', '.join(unknown)}; "
                         f"it has: {', '.join(DEPENDENCY_NAMES)}")
    source = source or REPOSITORY
    checkout = folder / CHECKOUT
    commit = steps.git_clone(f"cloning {source}", source, checkout, ref or PINNED_COMMIT,
                             sparse=SPARSE)
    submodule = ["git", "-C", str(checkout), "-c", "protocol.file.allow=always"]
    if "auto_LiRPA" in dependencies:
        submodule += ["-c", f"submodule.auto_LiRPA.url={git_source(dependencies['auto_LiRPA'])}"]
    steps.run("cloning its auto_LiRPA submodule",
              submodule + ["submodule", "update", "--init", "--", "auto_LiRPA"])
    lirpa_commit = steps.run("reading auto_LiRPA's commit",
                             ["git", "-C", str(checkout / "auto_LiRPA"), "rev-parse", "HEAD"]).strip()

    venv = folder / VENV
    python = steps.make_venv(venv)
    torch = os.environ.get(TORCH_ENV) or TORCH_REQUIREMENTS
    index = os.environ.get(TORCH_INDEX_ENV, "" if cuda_present() else CPU_INDEX)
    steps.pip(venv, f"installing {torch}" + (f" (extra index {index})" if index else ""),
              *torch.split(), *(["--extra-index-url", index] if index else []))
    steps.pip(venv, "installing its pinned dependencies", *PINNED_REQUIREMENTS)

    fork_source = dependencies.get("onnx2pytorch", ONNX2PYTORCH)
    fork = folder / "onnx2pytorch"
    fork_commit = steps.git_clone(f"cloning onnx2pytorch from {fork_source}", fork_source, fork,
                                  ONNX2PYTORCH_COMMIT)
    steps.pip(venv, "installing onnx2pytorch", "--no-deps", str(fork))
    shutil.rmtree(fork)  # installed as a package; the clone is not used

    output = steps.run("checking that it starts",
                       [str(python), "-c", _SMOKE, str(checkout / "complete_verifier")],
                       env=VENV_ENV)
    lines = output.strip().splitlines()
    versions = _versions(venv)
    versions["auto_LiRPA"] = lines[-1].strip() if lines else ""
    return InstallRecord(
        tool="abcrown", location=str(folder), source=source, commit=commit,
        python=str(python), versions=versions,
        extra={"auto_LiRPA_commit": lirpa_commit, "onnx2pytorch_source": fork_source,
               "onnx2pytorch_commit": fork_commit, "torch_requirements": torch,
               "torch_index": index})


def _versions(venv: Path) -> dict[str, str]:
    code = ("import sys\nfrom importlib import metadata\nfor name in sys.argv[1:]:\n"
            "    try: print(name, metadata.version(name))\n"
            "    except metadata.PackageNotFoundError: print(name, '-')\n")
    done = subprocess.run([str(venv_python(venv)), "-c", code, *REPORTED], capture_output=True,
                          text=True, env=clean_env())
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)

