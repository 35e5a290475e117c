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


# --- hostile properties: refused, never allocated, linear --------------------------------------

DECLARE_2_IN_2_OUT = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
                      "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n")


@pytest.mark.parametrize("body, message", [
    # An index is checked against the declared count, never used as a size.
    ("(declare-const X_99999999999999 Real)", "index beyond any input or output count"),
    ("(declare-const X_0 Real)\n(declare-const X_7 Real)",
     "declares 2 X variables but not X_0 .. X_1"),
    (DECLARE_2_IN_2_OUT + "(assert (<= X_99999999999999 1))", "index beyond"),
    (DECLARE_2_IN_2_OUT + "(assert (<= X_2 1))", "uses X_2 but declares only 2 inputs"),
    (DECLARE_2_IN_2_OUT + "(assert (<= Y_5 Y_0))", "uses Y_5 but declares only 2 outputs"),
    # A negative index is not the last input.
    (DECLARE_2_IN_2_OUT + "(assert (<= X_-1 1))", "unexpected VNN-LIB token 'X_-1'"),
    (DECLARE_2_IN_2_OUT + "(assert (>= Y_-1 Y_0))", "unexpected VNN-LIB token 'Y_-1'"),
    ("(declare-const X_-1 Real)", "unexpected VNN-LIB variable"),
    # Declared before use, once, as Real.
    ("(assert (<= X_0 1))\n(declare-const X_0 Real)", "declares only 0 inputs"),
    ("(declare-const X_0 Real)\n(declare-const X_0 Real)", "declares X_0 twice"),
    ("(declare-const X_0 Int)", "unsupported VNN-LIB sort"),
    # Bounds are finite numbers.
    (DECLARE_2_IN_2_OUT + "(assert (<= X_0 inf))", "a finite number"),
    (DECLARE_2_IN_2_OUT + "(assert (>= X_0 nan))", "a finite number"),
    (DECLARE_2_IN_2_OUT + "(assert (<= X_0 1e400))", "a finite number"),
    (DECLARE_2_IN_2_OUT + "(assert (<= Y_0 1_000))", "a finite number"),
    # Nesting is bounded (the expansion is recursive).
    (DECLARE_2_IN_2_OUT + "(assert " + "(and " * 5000 + "(<= X_0 1)" + ")" * 5001,
     "nested more than 64 deep"),
    ("(declare-const X_0 Real) X_0", "unexpected top-level"),
])
def test_hostile_properties_are_refused(body, message):
    with pytest.raises(BenchError, match=message) as info:
        parse_vnnlib(body)
    assert "\n" not in str(info.value)


def test_disjuncts_times_inputs_is_bounded(monkeypatch):
    """Each disjunct with its own input bounds needs a box of every input: 10,000 disjuncts of
    a 100,000-input property would be 16 GB. Refused by the budget before it is built."""
    import bench.formats.vnnlib as module

    monkeypatch.setattr(module, "MAX_VALUES", 10_000)
    declarations = "".join(f"(declare-const X_{i} Real)\n" for i in range(100))
    text = (declarations + "(declare-const Y_0 Real)\n(assert (or "
            + " ".join(f"(and (<= X_{i} 1) (>= Y_0 0))" for i in range(100)) + "))")
    with pytest.raises(BenchError, match="more than 10000 numbers"):
        parse_vnnlib(text)
    # Disjuncts without input bounds of their own share the top-level box: no copy each.
    shared = (declarations + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
              + "".join(f"(assert (<= X_{i} 1))\n" for i in range(100))
              + "(assert (or " + " ".join("(>= Y_0 Y_1)" for _ in range(40)) + "))")
    n_in, n_out, disjuncts = parse_vnnlib(shared)
    assert (n_in, n_out, len(disjuncts), len(disjuncts[0][1])) == (100, 2, 1, 40)


def test_atoms_after_expansion_are_bounded(monkeypatch):
    import bench.formats.vnnlib as module

    monkeypatch.setattr(module, "MAX_ATOMS", 1000)
    big_and = "(and " + " ".join("(>= Y_0 0)" for _ in range(200)) + ")"
    text = ("(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(assert (and " + big_and
            + " (or (>= Y_0 Y_1) (<= Y_0 Y_1)) (or (>= Y_0 1) (<= Y_0 2))"
            + " (or (>= Y_1 1) (<= Y_1 2))))")  # 8 disjuncts x 203 atoms
    with pytest.raises(BenchError, match="1000 atoms"):
        parse_vnnlib(text)


def test_boxes_are_grouped_by_value():
    text = (DECLARE_2_IN_2_OUT + "(assert (or"
            + "".join(f" (and (<= X_0 {b}) (>= Y_0 Y_1))" for b in (1, 2, 1, 2, 3)) + "))")
    _, _, disjuncts = parse_vnnlib(text)
    assert [box[0, 1] for box, _ in disjuncts] == [1.0, 2.0, 3.0]
    assert [len(specs) for _, specs in disjuncts] == [2, 2, 1]


def test_large_property_parses_in_one_pass():
    """25,000 inputs (a 2.7 MB file), the shape of VNN-COMP's image properties."""
    x = np.linspace(0, 1, 25_000)
    n_in, n_out, disjuncts = parse_vnnlib(robustness_property(x, 3, 0.01, 10))
    assert (n_in, n_out, len(disjuncts), len(disjuncts[0][1])) == (25_000, 10, 1, 9)
    np.testing.assert_array_equal(disjuncts[0][0][:, 1], np.clip(x + 0.01, 0, 1))


def test_read_vnnlib_applies_the_size_limit_and_reads_gzip(tmp_path):
    import gzip

    from bench.formats.folder import Limits

    path = tmp_path / "p.vnnlib"
    text = robustness_property(np.array([0.5, 0.5]), 0, 0.1, 2)
    path.write_text(text)
    with pytest.raises(BenchError, match="more than the limit of 100"):
        read_vnnlib(path, Limits(vnnlib_bytes=100))
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_vnnlib(packed)[:2] == (2, 2)
    bomb = tmp_path / "bomb.vnnlib.gz"
    bomb.write_bytes(gzip.compress(b";" * 5000))
    with pytest.raises(BenchError, match="decompresses to more than the limit of 1000"):
        read_vnnlib(bomb, Limits(vnnlib_bytes=1000))
    latin = tmp_path / "latin.vnnlib"
    latin.write_bytes(b"; caf\xe9\n")
    with pytest.raises(BenchError, match="not UTF-8"):
        read_vnnlib(latin)


def test_default_property_limit_is_refused_before_parsing(tmp_path):
    from bench.formats.folder import Limits

    limit = Limits().vnnlib_bytes
    assert limit == 64 << 20
    path = tmp_path / "huge.vnnlib"
    with open(path, "wb") as handle:
        handle.truncate(limit + 1)  # sparse: costs no disk
    with pytest.raises(BenchError, match=f"more than the limit of {limit}"):
        read_vnnlib(path)


def test_long_malformed_numbers_are_refused_in_one_pass():
    """A million digits that do not end as a number: an ambiguous pattern would backtrack over
    them quadratically (10^12 steps); the reader's numerals match one way only."""
    digits = "1" * 1_000_000
    for tail in ("x", ".5e", "e+"):
        with pytest.raises(BenchError, match="unexpected VNN-LIB token"):
            parse_vnnlib(DECLARE_2_IN_2_OUT + f"(assert (<= X_0 {digits}{tail}))")
