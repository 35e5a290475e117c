"""Counterexample checking, on the VNN-COMP test fixtures and on a 2-input identity model where
ties can be made exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bench.errors import BenchError
from bench.verifiers.cex import CexCheck, check_counterexample

from paths import FIXTURES  # noqa: E402
SAT_ONNX, UNSAT_ONNX = FIXTURES / "test_sat.onnx", FIXTURES / "test_unsat.onnx"
PROP = FIXTURES / "test_prop.vnnlib"

# What Marabou 2.0 prints for test_sat + test_prop (six decimals). x2 = 0.493380 lies 3.2e-7
# below the box's lower bound 0.4933803235848431, so it is only correct up to tolerance.
MARABOU_X = [-0.298553, 0.009549, 0.493380, 0.300000, 0.407543]
MARABOU_Y = [-0.020321, -0.018836, -0.018955, -0.017867, -0.017838]
BOX_LOWER = np.array([-0.30353115613746867, -0.009549296585513092, 0.4933803235848431, 0.3, 0.3])
BOX_UPPER = np.array([-0.29855281193475053, 0.009549296585513092, 0.49999999998567607, 0.5, 0.5])


def in_box(x) -> list[float]:
    return list(np.clip(np.asarray(x, dtype=np.float64), BOX_LOWER, BOX_UPPER))


def test_marabou_counterexample_is_correct_up_to_tolerance():
    check = check_counterexample(SAT_ONNX, PROP, MARABOU_X, MARABOU_Y)
    assert check == CexCheck("correct_up_to_tolerance", check.detail)
    assert check.valid and "outside input box #0 by 3.24e-07" in check.detail
    # The outputs do reach the unsafe region: only the box is missed (no negative miss).
    assert "outputs reach its unsafe region" in check.detail and "miss" not in check.detail


def test_counterexample_inside_the_box_is_correct():
    check = check_counterexample(SAT_ONNX, PROP, in_box(MARABOU_X), MARABOU_Y)
    assert check.outcome == "correct", check.detail
    assert check_counterexample(SAT_ONNX, PROP, in_box(MARABOU_X)).outcome == "correct"


def test_point_outside_the_box_is_invalid():
    x = in_box(MARABOU_X)
    x[0] += 0.01
    check = check_counterexample(SAT_ONNX, PROP, x)
    assert check.outcome == "invalid" and "outside every input box" in check.detail
    assert not check.valid


def test_wrong_outputs_are_invalid():
    y = list(MARABOU_Y)
    y[0] = -0.03  # 50% off
    check = check_counterexample(SAT_ONNX, PROP, in_box(MARABOU_X), y)
    assert check.outcome == "invalid" and "reported outputs do not match" in check.detail
    check = check_counterexample(SAT_ONNX, PROP, in_box(MARABOU_X), MARABOU_Y[:3])
    assert check.outcome == "invalid" and "reported outputs do not match" in check.detail


def test_point_of_a_safe_network_is_invalid():
    # test_unsat is verified on this property: no point of the box reaches the unsafe region.
    check = check_counterexample(UNSAT_ONNX, PROP, in_box(MARABOU_X))
    assert check.outcome == "invalid" and "do not reach the unsafe region" in check.detail


@pytest.mark.parametrize("x", [None, [], [0.1, 0.2], [np.nan] * 5])
def test_missing_or_malformed_x_is_invalid(x):
    assert check_counterexample(SAT_ONNX, PROP, x).outcome == "invalid"


# --- exact ties on y = x (identity), unsafe when Y_0 >= Y_1 -----------------------------------


@pytest.fixture
def identity(tmp_path) -> tuple[Path, Path]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_path = tmp_path / "identity.onnx"
    onnx.save(model, onnx_path)
    vnnlib_path = tmp_path / "prop.vnnlib"
    vnnlib_path.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
        "(assert (>= X_1 0))\n(assert (<= X_1 1))\n"
        "(assert (>= Y_0 Y_1))\n")
    return onnx_path, vnnlib_path


@pytest.mark.parametrize("x, outcome", [
    ([0.5, 0.5], "correct"),  # exactly on the tie: the unsafe region is closed
    ([0.75, 0.5], "correct"),
    ([1.0, 1.0], "correct"),  # on the box's corner
    ([0.5, 0.50005], "correct_up_to_tolerance"),  # misses the tie by 5e-5
    ([1.00005, 0.5], "correct_up_to_tolerance"),  # outside the box by 5e-5
    ([0.5, 0.5002], "invalid"),  # misses the tie by 2e-4
    ([1.0002, 0.5], "invalid"),  # outside the box by 2e-4
])
def test_ties_and_tolerance(identity, x, outcome):
    check = check_counterexample(*identity, x)
    assert check.outcome == outcome, check.detail


def test_reported_outputs_within_rtol(identity):
    assert check_counterexample(*identity, [0.5, 0.25], [0.5002, 0.25]).outcome == "correct"
    check = check_counterexample(*identity, [0.5, 0.25], [0.501, 0.25])  # 2e-3 relative
    assert check.outcome == "invalid" and "do not match" in check.detail


def test_nudged_outputs_do_not_count(identity):
    # The tool claims outputs on the unsafe side of the tie (within rtol); the model's real
    # outputs are not unsafe, and those are what the property is checked on.
    check = check_counterexample(*identity, [0.5, 0.5004], [0.5004, 0.5004])
    assert check.outcome == "invalid" and "do not reach the unsafe region" in check.detail


def two_disjuncts(folder: Path, first: str, second: str) -> Path:
    """A property over the identity model's two inputs and outputs: ``(or (and first) (and
    second))``."""
    path = folder / "two_boxes.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
                    "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                    f"(assert (or (and {first})\n            (and {second})))\n")
    return path


def test_second_disjunct(identity, tmp_path):
    onnx_path, _ = identity
    vnnlib_path = two_disjuncts(
        tmp_path, "(>= X_0 0) (<= X_0 0.1) (>= X_1 0) (<= X_1 0.1) (>= Y_0 Y_1)",
        "(>= X_0 0.8) (<= X_0 0.9) (>= X_1 0) (<= X_1 0.1) (>= Y_0 Y_1)")
    assert check_counterexample(onnx_path, vnnlib_path, [0.85, 0.05]).outcome == "correct"
    assert check_counterexample(onnx_path, vnnlib_path, [0.5, 0.05]).outcome == "invalid"


def test_tolerance_message_names_the_disjunct_closest_to_holding(identity, tmp_path):
    onnx_path, _ = identity
    # x = (0.50008, 0.50006): outside box #0 by 8e-5 (its outputs reach the region), inside
    # box #1 (its outputs miss the region by 2e-5). Box #1 comes closer to holding.
    vnnlib_path = two_disjuncts(
        tmp_path, "(>= X_0 0) (<= X_0 0.5) (>= X_1 0) (<= X_1 1) (>= Y_0 Y_1)",
        "(>= X_0 0.5) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_1 Y_0)")
    check = check_counterexample(onnx_path, vnnlib_path, [0.50008, 0.50006])
    assert check.outcome == "correct_up_to_tolerance"
    assert "x is in input box #1" in check.detail
    assert "miss its unsafe region by 2e-05" in check.detail and "by -" not in check.detail


def test_broken_benchmark_files_raise(identity, tmp_path):
    onnx_path, _ = identity
    with pytest.raises(BenchError):
        check_counterexample(tmp_path / "missing.onnx", PROP, [0.0, 0.0])
    with pytest.raises(BenchError, match="declares 5 inputs"):
        check_counterexample(onnx_path, PROP, [0.5, 0.5])


def test_hostile_property_raises_instead_of_reading_the_wrong_input(identity, tmp_path):
    """X_-1 once read the last input; now the property is refused (the harness records the
    check as failed, never the counterexample as valid)."""
    onnx_path, _ = identity
    vnnlib_path = tmp_path / "negative.vnnlib"
    vnnlib_path.write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
        "(assert (>= X_-1 0))\n(assert (<= X_-1 1))\n"
        "(assert (>= Y_0 Y_1))\n")
    with pytest.raises(BenchError, match="X_-1"):
        check_counterexample(onnx_path, vnnlib_path, [0.5, 0.5])


def test_gzipped_model_and_property(identity, tmp_path):
    import gzip

    for path in identity:
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
    onnx_gz, vnnlib_gz = (Path(f"{path}.gz") for path in identity)
    assert check_counterexample(onnx_gz, vnnlib_gz, [0.75, 0.5]).outcome == "correct"
