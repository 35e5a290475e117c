import numpy as np
import pytest

from bench.errors import BenchError
from bench.formats.vnnlib import parse_vnnlib, read_vnnlib, robustness_property

from paths import FIXTURES


def test_robustness_property_roundtrip_is_exact():
    x = np.array([0.0, 0.3, 0.95, 1.0])
    n_in, n_out, disjuncts = parse_vnnlib(robustness_property(x, label=2, eps=0.1, num_outputs=3))
    assert (n_in, n_out, len(disjuncts)) == (4, 3, 1)
    box, specs = disjuncts[0]
    np.testing.assert_array_equal(box[:, 0], np.clip(x - 0.1, 0, 1))
    np.testing.assert_array_equal(box[:, 1], np.clip(x + 0.1, 0, 1))
    # unsafe: Y_j >= Y_2, i.e. Y_2 - Y_j <= 0, for j in {0, 1}
    rows = sorted(tuple(mat[0]) for mat, rhs in specs)
    assert rows == [(-1.0, 0.0, 1.0), (0.0, -1.0, 1.0)]
    assert all(rhs.tolist() == [0.0] for _, rhs in specs)


@pytest.mark.skipif(not FIXTURES.exists(), reason="shared fixtures not present")
def test_foreign_properties_with_inputs_inside_disjuncts():
    n_in, n_out, disjuncts = read_vnnlib(FIXTURES / "test_tiny.vnnlib")
    assert (n_in, n_out) == (1, 1)
    box, specs = disjuncts[0]
    assert box.tolist() == [[-1.0, 1.0]]
    (mat, rhs), = specs  # Y_0 >= 100  <=>  -Y_0 <= -100
    assert mat.tolist() == [[-1.0]] and rhs.tolist() == [-100.0]
    n_in, n_out, disjuncts = read_vnnlib(FIXTURES / "test_prop.vnnlib")
    assert (n_in, n_out, len(disjuncts[0][1])) == (5, 5, 1)
    assert disjuncts[0][1][0][0].shape == (4, 5)  # a conjunction of four rows


@pytest.mark.parametrize("text, message", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "unbalanced"),
    ("(declare-const X_0 Real)\n(assert (< X_0 1))", "unsupported VNN-LIB comparison"),
    ("(declare-const Z Real)", "unexpected VNN-LIB variable"),
    ("(declare-const X_0 Real)\n(assert (<= X_3 1))", "declares only 1 inputs"),
])
def test_malformed_properties(text, message):
    with pytest.raises(BenchError, match=message):
        parse_vnnlib(text)


def test_exponential_expansion_is_refused():
    ors = " ".join("(or (>= Y_0 0) (>= Y_1 0))" for _ in range(20))  # 2**20 disjuncts
    text = "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (and " + ors + "))"
    with pytest.raises(BenchError, match="more than"):
        parse_vnnlib(text)


def test_unreadable_file(tmp_path):
    with pytest.raises(BenchError, match="cannot read VNN-LIB file"):
        read_vnnlib(tmp_path / "missing.vnnlib")
