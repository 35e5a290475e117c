"""The real Marabou CLI on the VNN-COMP test fixtures, through the harness."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.formats.folder import Instance, read_instances
from bench.verifiers import VERIFIERS, Status
from bench.verifiers.harness import run_instance
from bench.verifiers.marabou import Marabou

from paths import FIXTURES  # noqa: E402
KNOWN = {
    ("test_nano.onnx", "test_nano.vnnlib"): "unsat",
    ("test_tiny.onnx", "test_tiny.vnnlib"): "unsat",
    ("test_small.onnx", "test_small.vnnlib"): "unsat",
    ("test_sat.onnx", "test_prop.vnnlib"): "sat",
    ("test_unsat.onnx", "test_prop.vnnlib"): "unsat",
}

pytestmark = pytest.mark.skipif(not Marabou().is_installed(), reason="Marabou is not installed")


@pytest.fixture
def benchmark(tmp_path) -> Path:
    folder = tmp_path / "test"
    shutil.copytree(FIXTURES, folder)
    return folder


def test_registered():
    assert VERIFIERS.get("marabou") is Marabou
    assert Marabou.complete
    assert Marabou().version() == "2.0.0"


def test_known_answers(benchmark, tmp_path):
    verifier = Marabou()
    instances = read_instances(benchmark)
    assert {(i.onnx, i.vnnlib) for i in instances} == set(KNOWN)
    for instance in instances:
        record = run_instance(verifier, instance, tmp_path / "logs")
        assert record.status == KNOWN[(instance.onnx, instance.vnnlib)], record.reason
        assert record.verifier == "marabou" and record.verifier_version == "2.0.0"
        assert 0 < record.wall_time < 30
        assert record.peak_memory_mb > 0
        if record.status == "sat":
            # Marabou prints six decimals and its point sits on the box's edge: accepted, but
            # possibly only up to tolerance.
            assert record.cex_check in ("correct", "correct_up_to_tolerance"), record.cex_detail
            assert record.verifier_time is not None and record.verifier_time <= record.wall_time
        else:
            assert record.cex_check is None
        assert (Path(record.log_path) / "stdout.log").read_text().startswith("Network:")


def test_counterexample_is_parsed(benchmark, tmp_path):
    instance = Instance("test", benchmark, "test_sat.onnx", "test_prop.vnnlib", 60)
    workdir = tmp_path / "work"
    workdir.mkdir()
    verifier = Marabou()
    command = verifier.command(instance, workdir)
    assert command.env == {"OMP_NUM_THREADS": "1"}
    assert command.argv[command.argv.index("--timeout") + 1] == "60"
    record = run_instance(verifier, instance, tmp_path / "logs")
    stdout = (Path(record.log_path) / "stdout.log").read_text()
    verdict = verifier.parse(instance, Path(record.log_path), stdout, "", 0)
    assert verdict.status is Status.SAT
    assert len(verdict.counterexample["x"]) == 5 and len(verdict.counterexample["y"]) == 5


def test_mismatched_property_is_an_error(benchmark, tmp_path):
    # A 1-input property on a 5-input network: Marabou fails, and that must stay an error.
    instance = Instance("test", benchmark, "test_sat.onnx", "test_nano.vnnlib", 30)
    record = run_instance(Marabou(), instance, tmp_path / "logs")
    assert record.status == "error" and record.reason.startswith("Marabou exited with code")
    assert "MarabouError" in record.reason


def test_missing_network_is_an_error(benchmark, tmp_path):
    instance = Instance("test", benchmark, "missing.onnx", "test_prop.vnnlib", 30)
    record = run_instance(Marabou(), instance, tmp_path / "logs")
    assert record.status == "error" and "missing.onnx" in record.reason


def test_compressed_files_are_refused(benchmark, tmp_path):
    instance = Instance("test", benchmark, "test_sat.onnx", "test_prop.vnnlib.gz", 30)
    record = run_instance(Marabou(), instance, tmp_path / "logs")
    assert record.status == "error" and "uncompressed" in record.reason


@pytest.mark.parametrize("summary, stdout, returncode, status, reason", [
    ("unsat 0 1 0\n", "unsat\n", 0, Status.UNSAT, ""),
    ("TIMEOUT 5 10 0\n", "Timeout\n", 0, Status.TIMEOUT, "Marabou's own timeout"),
    ("UNKNOWN 0 1 0\n", "UNKNOWN\n", 0, Status.UNKNOWN, "Marabou answered UNKNOWN"),
    ("ERROR 0 1 0\n", "Error\n", 0, Status.ERROR, "Marabou answered ERROR: Error"),
    (None, "Network: a.onnx\n", -11, Status.ERROR,
     "Marabou was killed by SIGSEGV without an answer; last output: Network: a.onnx"),
    ("unsat 0 1 0\n", "unsat\n", 3, Status.ERROR, "Marabou exited with code 3 after answering unsat"),
    ("sat 0 1 0\n", "sat\n", 0, Status.SAT, "Marabou answered sat but printed no input assignment"),
])
def test_parse(tmp_path, summary, stdout, returncode, status, reason):
    if summary is not None:
        (tmp_path / "summary.txt").write_text(summary)
    instance = Instance("t", tmp_path, "a.onnx", "b.vnnlib", 10)
    verdict = Marabou().parse(instance, tmp_path, stdout, "", returncode)
    assert verdict.status is status and verdict.reason == reason
    assert status is not Status.UNSAT or verdict.counterexample is None


def random_mlp(path: Path, sizes: list[int], seed: int = 0) -> int:
    """A random ReLU MLP (torch's default init) as ONNX; returns its label at x = 0.5."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, prev = [], [], "x"
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1 / np.sqrt(n_in)
        weights += [numpy_helper.from_array(
                        rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32), f"w{k}"),
                    numpy_helper.from_array(
                        rng.uniform(-bound, bound, n_out).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{k}", f"b{k}"], [f"h{k}"], transB=1))
        prev = f"h{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, sizes[-1]])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.full((1, sizes[0]), 0.5, np.float32)
    return int(ort.InferenceSession(str(path)).run(None, {"x": x})[0].argmax())


def test_hard_instance_is_killed_at_the_timeout(tmp_path):
    import numpy as np
    import psutil

    from bench.formats.vnnlib import robustness_property

    # Marabou 2.0 needs well over 15 s here (and overshoots its own --timeout by ~2 s).
    label = random_mlp(tmp_path / "hard.onnx", [20, 200, 200, 200, 5])
    (tmp_path / "hard.vnnlib").write_text(robustness_property(np.full(20, 0.5), label, 0.1, 5))
    instance = Instance("hard", tmp_path, "hard.onnx", "hard.vnnlib", 2.0)
    record = run_instance(Marabou(), instance, tmp_path / "logs", grace=2.0)
    assert record.status == "timeout", record.reason
    assert 2.0 <= record.wall_time < 4.5
    assert record.peak_memory_mb > 0  # how far Marabou got in 2 s depends on the machine's load
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path / "hard.onnx") in (p.info["cmdline"] or [])
                and p.status() != psutil.STATUS_ZOMBIE]
