"""The ``neuralsat`` verifier: its venv layout, command, parsing and the whole harness path with a
fake NeuralSAT (CI never installs the real one: several GB), and the real tool where its venv
exists (``bench verifiers install neuralsat``)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.errors import BenchError
from bench.formats.folder import Instance
from bench.verifiers import VERIFIERS, Status
from bench.verifiers import neuralsat as ns
from bench.verifiers.harness import run_instance
from bench.verifiers.installer import InstallRecord, Steps, install_tool
from bench.verifiers.neuralsat import RESULT_FILE, NeuralSAT

from paths import FIXTURES  # noqa: E402

# A stand-in for src/main.py: stdlib only, it behaves as FAKE_NEURALSAT says and records its
# command line and environment in args.json in its working directory.
FAKE_MAIN = r'''
import argparse, json, os, sys
parser = argparse.ArgumentParser()
for flag in ("--net", "--spec", "--device", "--timeout", "--batch", "--result_file",
             "--verbosity"):
    parser.add_argument(flag)
parser.add_argument("--export_cex", action="store_true")
args = parser.parse_args()
with open("args.json", "w") as handle:
    json.dump({"argv": sys.argv, "env": {k: os.environ.get(k) for k in
               ("PYTHONPATH", "PYTHONNOUSERSITE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")},
               "sys_path": sys.path}, handle)
mode = os.environ["FAKE_NEURALSAT"]
if mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: CUDA out of memory", file=sys.stderr)
    sys.exit(1)
if mode != "no_result":
    with open(args.result_file, "w") as handle:
        print(mode, file=handle)
        if mode == "sat":
            print("((X_0 -1.0)\n (Y_0 -1.0))", file=handle)
print(f"{mode},1.2345")
'''


def _fake_venv(root: Path, version: str = ns.VERSION) -> Path:
    venv = root / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "src").mkdir(parents=True)
    (site / "src" / "main.py").write_text(FAKE_MAIN)
    info = site / f"neuralsat-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: neuralsat\nVersion: {version}\n")
    (venv / "bin").mkdir()
    # Any python runs the stand-in; the real layout has the venv's own interpreter here.
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def _identity_benchmark(root: Path) -> Path:
    """y = x on one input, X_0 in [-1, 1], unsafe when Y_0 <= -0.5: sat at x = -1."""
    folder = root / "bench"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])], "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(folder / "identity.onnx"))
    (folder / "prop.vnnlib").write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
        "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (<= Y_0 -0.5))\n")
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[NeuralSAT, Instance, Path]:
    venv = _fake_venv(tmp_path)
    folder = _identity_benchmark(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/the/project/lives")
    instance = Instance("b", folder, "identity.onnx", "prop.vnnlib", 30)
    return NeuralSAT(venv=str(venv)), instance, tmp_path


# --------------------------------------------------------------------------- layout and install


def test_registered():
    assert VERIFIERS.get("neuralsat") is NeuralSAT
    assert NeuralSAT.complete


def test_tools_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ns.TOOLS_ENV, str(tmp_path / "tools"))
    assert ns.default_venv() == tmp_path / "tools" / "neuralsat" / "venv"
    assert NeuralSAT().venv == tmp_path / "tools" / "neuralsat" / "venv"
    monkeypatch.delenv(ns.TOOLS_ENV)
    assert ns.default_venv() == Path.home() / ".cache" / "prune-bench" / "verifiers" / \
        "neuralsat" / "venv"


def test_installed_and_version_from_the_venv(tmp_path):
    venv = _fake_venv(tmp_path)
    verifier = NeuralSAT(venv=str(venv))
    assert verifier.is_installed() and verifier.version() == "0.2.17"
    missing = NeuralSAT(venv=str(tmp_path / "nothing"))
    assert not missing.is_installed() and missing.version() is None


def test_not_installed_is_an_error_with_the_hint(tmp_path):
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 10)
    record = run_instance(NeuralSAT(venv=str(tmp_path / "nothing")), instance, tmp_path / "logs")
    assert record.status == "error" and "bench verifiers install neuralsat" in record.reason


def test_install_keeps_an_existing_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ns.TOOLS_ENV, str(tmp_path / "tools"))
    folder = tmp_path / "tools" / "neuralsat"
    venv = _fake_venv(folder)
    InstallRecord(tool="neuralsat", location=str(folder), versions={"neuralsat": "0.2.17"},
                  python=str(venv / "bin" / "python")).write(folder)
    monkeypatch.setattr(Steps, "run", lambda *a, **k: pytest.fail("must not run pip"))
    assert NeuralSAT().install(echo=lambda line: None) == f"neuralsat 0.2.17 in {folder}"
    assert NeuralSAT().is_installed()


def test_install_failure_is_a_bench_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(ns.TOOLS_ENV, str(tmp_path / "tools"))
    with pytest.raises(BenchError, match="installing neuralsat failed at creating its virtual "
                                         "environment: cannot start"):
        install_tool("neuralsat", lambda folder, steps: ns.install_neuralsat(
            folder, steps, python=str(tmp_path / "no-python")), echo=lambda line: None)
    assert not (tmp_path / "tools" / "neuralsat").exists()
    with pytest.raises(BenchError, match="from PyPI"):
        NeuralSAT().install(source="https://example.org/neuralsat.git")


# --------------------------------------------------------------------------- command and parsing


def test_command(fake):
    verifier, instance, tmp_path = fake
    workdir = tmp_path / "work"
    command = verifier.command(instance, workdir)
    assert command.argv[0] == str(verifier.venv / "bin" / "python")
    assert command.argv[1].endswith("site-packages/src/main.py")
    args = command.argv
    assert args[args.index("--net") + 1] == str(instance.onnx_path.resolve())
    assert args[args.index("--spec") + 1] == str(instance.vnnlib_path.resolve())
    assert args[args.index("--device") + 1] == "cpu"
    assert args[args.index("--timeout") + 1] == "25"  # 30 s less the start-up allowance
    assert args[args.index("--result_file") + 1] == str((workdir / RESULT_FILE).resolve())
    assert "--export_cex" in args
    assert command.env["PYTHONPATH"] == "" and command.env["OMP_NUM_THREADS"] == "1"
    assert command.env["CUDA_VISIBLE_DEVICES"] == ""
    assert command.cwd == workdir
    with pytest.raises(BenchError, match="device"):
        NeuralSAT(venv=str(verifier.venv), device="tpu").command(instance, workdir)
    gz = Instance("b", instance.root, "identity.onnx.gz", "prop.vnnlib", 30)
    with pytest.raises(BenchError, match="uncompressed"):
        verifier.command(gz, workdir)


def test_own_timeout_leaves_room_for_the_start_up():
    assert ns.own_timeout(300) == 295
    assert ns.own_timeout(6) == 3
    assert ns.own_timeout(1) == 1


@pytest.mark.parametrize("mode, status, reason", [
    ("sat", "sat", ""),
    ("unsat", "unsat", ""),
    ("unknown", "unknown", "NeuralSAT reported unknown"),
    ("timeout", "timeout", "NeuralSAT reported timeout"),
    ("invalid_counterexample", "unknown", "failed its own counterexample check"),
    ("early_stop", "unknown", "stopped early"),
    ("restart", "error", "NeuralSAT wrote first line 'restart', not a VNN-COMP answer"),
    ("crash", "error", "exited with code 1: RuntimeError: CUDA out of memory"),
    ("no_result", "error", "wrote no result.txt"),
])
def test_harness_with_a_fake_neuralsat(fake, monkeypatch, mode, status, reason):
    verifier, instance, tmp_path = fake
    monkeypatch.setenv("FAKE_NEURALSAT", mode)
    record = run_instance(verifier, instance, tmp_path / "logs")
    assert record.status == status and reason in record.reason, record.reason
    assert record.verifier_version == "0.2.17"
    if mode != "crash":
        assert record.verifier_time == 1.2345
    if status == "sat":
        assert record.cex_check == "correct", record.cex_detail
    seen = json.loads((Path(record.log_path) / "args.json").read_text())
    # The project's PYTHONPATH does not reach the tool's interpreter.
    assert seen["env"]["PYTHONPATH"] == ""
    assert "/somewhere/the/project/lives" not in seen["sys_path"]
    assert seen["env"]["PYTHONNOUSERSITE"] == "1"


def test_parse_runtime_line_and_malformed_counterexample(fake):
    verifier, instance, tmp_path = fake
    workdir = tmp_path / "parse"
    workdir.mkdir()
    (workdir / RESULT_FILE).write_text("sat\n((X_1 0.5))\n")
    verdict = verifier.parse(instance, workdir, "log line\nsat,3.5\n", "", 0)
    # The claim stays, without a counterexample (the harness's check then calls it invalid).
    assert verdict.status is Status.SAT and verdict.counterexample is None
    assert "indices" in verdict.reason
    assert verdict.verifier_time == 3.5
    (workdir / RESULT_FILE).write_text("unsat\n")
    assert verifier.parse(instance, workdir, "", "", 0).verifier_time is None
    verdict = verifier.parse(instance, workdir, "", "", -9)
    assert verdict.status is Status.ERROR and "signal 9" in verdict.reason


# --------------------------------------------------------------------------- the real tool


REAL = NeuralSAT()


@pytest.mark.skipif(not REAL.is_installed(),
                    reason=f"NeuralSAT is not installed in {REAL.venv} (bench verifiers install "
                           f"neuralsat)")
@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_real_neuralsat_on_vnncomp_fixtures(tmp_path):
    folder = tmp_path / "test"
    shutil.copytree(FIXTURES, folder)
    cases = {("test_sat.onnx", "test_prop.vnnlib"): "sat",
             ("test_tiny.onnx", "test_tiny.vnnlib"): "unsat"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(run_instance, REAL, Instance("test", folder, *key, 60),
                                    tmp_path / "logs") for key in cases}
        records = {key: future.result() for key, future in futures.items()}
    for key, known in cases.items():
        record = records[key]
        assert record.status == known, (key, record.reason)
        assert record.verifier_version == ns.VERSION
        assert record.verifier_time is not None and record.verifier_time <= record.wall_time
        if known == "sat":
            assert record.cex_check in ("correct", "correct_up_to_tolerance"), record.cex_detail


def test_fake_venv_layout_matches_the_wheel():
    """The stand-in's layout is the wheel's: top-level ``src`` with ``main.py`` (checked against
    the real venv where there is one)."""
    if not REAL.is_installed():
        pytest.skip("NeuralSAT is not installed")
    main = ns.find_main(REAL.venv)
    assert main is not None and main.parent.name == "src"
    assert (main.parent / "verifier" / "verifier.py").is_file()
    assert os.access(ns.venv_python(REAL.venv), os.X_OK)
