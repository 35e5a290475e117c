"""VNN-LIB 2.0 properties, checked with the reference parser (the PyPI package `vnnlib`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bench.share.check import check_benchmark
from bench.build.export import ExportedModel, write_benchmark
from bench.formats.vnnlib import parse_vnnlib, robustness_property
from bench.formats.vnnlib2 import format_number, is_vnnlib2, robustness_property_v2

vnnlib = pytest.importorskip("vnnlib")
import vnnlib.compat  # noqa: E402  (after importorskip)


def compat_cases(text: str) -> list[tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]]:
    """(input box, [(A, b)]) per case, as the reference parser reads a 2.0 file."""
    query = vnnlib.parse_query_string(text)
    return [(np.asarray(case.input_box, dtype=np.float64),
             [(np.asarray(p.coeff_matrix, dtype=np.float64), np.asarray(p.rhs, dtype=np.float64))
              for p in case.output_constraints])
            for case in vnnlib.compat.transform(query)]


def assert_same_property(text_v1: str, text_v2: str) -> None:
    """The 2.0 file bounds the same box and has the same unsafe disjuncts as the 1.0 file."""
    _, _, disjuncts = parse_vnnlib(text_v1)
    cases = compat_cases(text_v2)
    assert len(cases) == len(disjuncts) == 1
    (box2, specs2), (box1, specs1) = cases[0], disjuncts[0]
    assert np.array_equal(box2, box1)  # exact: both files say the same float64 bounds
    assert len(specs2) == len(specs1)
    for (a2, b2), (a1, b1) in zip(specs2, specs1):
        assert np.array_equal(a2, a1) and np.array_equal(b2, b1)


@pytest.mark.parametrize("shape,label,eps", [((1, 8, 8), 3, 0.1), ((3, 4, 4), 0, 2 / 255),
                                             ((1, 2, 2), 1, 0.0)])
def test_same_box_and_output_constraints_as_the_1_0_file(shape, label, eps):
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, 1.0, 1e-9]  # clipped at both ends, and a value with an exponent
    text_v2 = robustness_property_v2(x, label, eps, 10)
    assert is_vnnlib2(text_v2) and not is_vnnlib2(robustness_property(x, label, eps, 10))
    assert_same_property(robustness_property(x, label, eps, 10), text_v2)
    network = vnnlib.parse_query_string(text_v2).networks[0]
    assert list(network.inputs[0].shape) == [1, *shape]
    assert list(network.outputs[0].shape) == [1, 10]


def test_format_number_round_trips_without_exponent():
    for value in [0.0, -0.0, 1.0, 0.1, 1e-9, 0.30000000000000004, 123.5, -2.0, 1 / 3]:
        text = format_number(value)
        assert "e" not in text and "." in text and float(text) == value
    assert format_number(1.0) == "1.0" and format_number(-0.0) == "0.0"
    with pytest.raises(ValueError):
        format_number(float("inf"))


def test_rejects_a_shape_that_does_not_fit():
    with pytest.raises(ValueError, match="input_shape"):
        robustness_property_v2(np.zeros((1, 2, 2)), 0, 0.1, 3, input_shape=(1, 5))


def _write(root, version: int | None) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    samples = torch.rand(2, 1, 4, 4)
    extra = {} if version is None else {"vnnlib_version": version}
    write_benchmark(root, {}, {"name": "tiny", "test_order": "random", "mean": [0.5],
                               "std": [0.25], "input_shape": [1, 4, 4], "num_classes": 3},
                    [ExportedModel(0, model, 1.0, 0.5, {})], samples, torch.tensor([2, 0]),
                    [0, 1], eps=0.05, timeout=60, **extra)
    return samples, json.loads((root / "manifest.json").read_text())


def test_write_benchmark_writes_2_0_when_asked(tmp_path):
    samples, manifest = _write(tmp_path / "v2", 2)
    assert manifest["vnnlib_version"] == 2
    for x, label, prop in zip(samples, [2, 0], manifest["properties"]):
        assert prop["vnnlib"].endswith(".vnnlib")  # the extension stays
        text = (tmp_path / "v2" / prop["vnnlib"]).read_text()
        assert is_vnnlib2(text)
        assert_same_property(robustness_property(x.numpy(), label, 0.05, 3), text)
    # bench check reads 2.0 with the vnnlib package and matches sizes against the ONNX model.
    assert check_benchmark(tmp_path / "v2") == []


def test_write_benchmark_default_is_still_1_0(tmp_path):
    _, manifest = _write(tmp_path / "v1", None)
    assert manifest["vnnlib_version"] == 1
    text = (tmp_path / "v1" / "vnnlib" / "sample_0000.vnnlib").read_text()
    assert not is_vnnlib2(text) and "(declare-const X_0 Real)" in text


def test_write_benchmark_rejects_other_versions(tmp_path):
    with pytest.raises(ValueError, match="vnnlib_version"):
        _write(tmp_path / "v3", 3)


def test_generate_properties_writes_what_bench_writes():
    """bench pack ships generate_properties.py, which cannot import bench: its copies of the
    writers must stay byte-identical to bench's."""
    from bench.share import generate_properties as script

    x = np.random.default_rng(3).random((3, 4, 4)).astype(np.float32)
    for label, eps in ((0, 0.1), (7, 1 / 255)):
        assert script.robustness_property(x, label, eps, 10) == \
            robustness_property(x, label, eps, 10)
        assert script.robustness_property_v2(x, label, eps, 10) == \
            robustness_property_v2(x, label, eps, 10)
