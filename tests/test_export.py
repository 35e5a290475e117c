"""Exporting a benchmark folder: ONNX per level, VNN-LIB per sample, instances.csv, manifest."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

import bench
import bench.build.export as benchmark_module
from bench.formats.folder import load_manifest, verify_manifest
from bench.build.export import ExportedModel, write_benchmark
from bench.build.onnx_export import export_onnx
from bench.models.normalize import Normalize, with_normalization
from bench.formats.vnnlib import read_vnnlib

MEAN, STD = (0.1307,), (0.3081,)
SHAPE = (1, 8, 8)
NUM_CLASSES = 3
EPS = 0.1
DATASET = {"name": "tiny", "test_order": "as stored", "mean": MEAN, "std": STD,
           "input_shape": SHAPE, "num_classes": NUM_CLASSES}
CONFIG = {"dataset": "tiny", "eps": EPS, "levels": 1}


def tiny_model(seed: int, prune_amount: float = 0.0) -> nn.Sequential:
    """Conv+BN+ReLU+Linear with trained-looking BN statistics; optionally pruned, permanently."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, NUM_CLASSES))
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    if prune_amount:
        for module in (model[0], model[4]):
            prune.l1_unstructured(module, "weight", amount=prune_amount)
            prune.remove(module, "weight")  # permanent: plain parameters with zeros
    return model.eval()


def samples() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(123)
    x = torch.rand(3, *SHAPE)
    x[0, 0, 0, :4] = 0.0  # pixels at the range's ends, so the boxes clip
    x[1, 0, 1, :4] = 1.0
    x[2, 0, 2, :2] = 0.05
    y = torch.tensor([0, 1, 2])
    return x, y


def levels() -> list[ExportedModel]:
    dense = tiny_model(0)
    pruned = tiny_model(0, prune_amount=0.5)
    return [
        ExportedModel(level=0, model=dense, remain_ratio=1.0, clean_accuracy=0.9,
                      layer_sparsity={"0.weight": 0.0, "4.weight": 0.0}),
        ExportedModel(level=1, model=pruned, remain_ratio=0.5, clean_accuracy=0.85,
                      layer_sparsity={"0.weight": 0.5, "4.weight": 0.5}, extra={"seed": 7}),
    ]


def export(root: Path, models: list[ExportedModel] | None = None, n: int = 3) -> Path:
    x, y = samples()
    return write_benchmark(root, CONFIG, DATASET, models or levels(), x[:n], y[:n], list(range(n)),
                           eps=EPS, timeout=300.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("out") / "tiny-bench"
    export(root)
    return root


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_layout_and_instances_csv(exported: Path):
    assert relative_files(exported) == {
        "manifest.json", "instances.csv", "onnx/level_00.onnx", "onnx/level_01.onnx",
        "vnnlib/sample_0000.vnnlib", "vnnlib/sample_0001.vnnlib", "vnnlib/sample_0002.vnnlib",
    }
    assert (exported / "instances.csv").read_text() == (
        "onnx/level_00.onnx,vnnlib/sample_0000.vnnlib,300\n"
        "onnx/level_00.onnx,vnnlib/sample_0001.vnnlib,300\n"
        "onnx/level_00.onnx,vnnlib/sample_0002.vnnlib,300\n"
        "onnx/level_01.onnx,vnnlib/sample_0000.vnnlib,300\n"
        "onnx/level_01.onnx,vnnlib/sample_0001.vnnlib,300\n"
        "onnx/level_01.onnx,vnnlib/sample_0002.vnnlib,300\n"
    )


def test_manifest_fields(exported: Path):
    manifest = load_manifest(exported)
    assert manifest["format_version"] == 1
    assert manifest["benchmark"] == "tiny-bench"
    assert manifest["created"].endswith("+00:00")
    assert manifest["suite_version"] == bench.__version__
    assert manifest["config"] == CONFIG
    assert manifest["dataset"] == json.loads(json.dumps(DATASET))
    assert manifest["eps"] == EPS and manifest["timeout"] == 300.0

    level0, level1 = manifest["models"]
    assert level0["onnx"] == "onnx/level_00.onnx" and level1["onnx"] == "onnx/level_01.onnx"
    assert (level1["level"], level1["remain_ratio"], level1["clean_accuracy"]) == (1, 0.5, 0.85)
    assert level1["layer_sparsity"] == {"0.weight": 0.5, "4.weight": 0.5}
    assert level1["seed"] == 7 and "seed" not in level0
    for entry in (level0, level1):
        assert 0 <= entry["onnx_max_abs_diff"] < 1e-4
        assert "BatchNormalization" not in entry["onnx_ops"]
    # 2 (Normalize) + 36+4 (conv, BN folded into its bias) + 432+3 (linear)
    assert level0["parameters"] == level1["parameters"] == 477
    assert level1["nonzero_parameters"] == 477 - 18 - 216

    assert manifest["properties"] == [
        {"vnnlib": f"vnnlib/sample_{i:04d}.vnnlib", "sample_index": i, "label": i, "eps": EPS}
        for i in range(3)
    ]
    assert [(i["level"], i["sample_index"]) for i in manifest["instances"]] == [
        (level, s) for level in (0, 1) for s in range(3)]
    x, y = samples()
    for inst, model in zip(manifest["instances"], [m.model for m in levels() for _ in range(3)]):
        full = with_normalization(model, MEAN, STD).eval()
        predicted = int(full(x[inst["sample_index"]][None]).argmax())
        assert inst["correct"] is (predicted == inst["label"])
        assert inst["timeout"] == 300.0 and inst["label"] == int(y[inst["sample_index"]])


def test_file_hashes(exported: Path):
    files = load_manifest(exported)["files"]
    assert set(files) == relative_files(exported) - {"manifest.json"}
    for rel, digest in files.items():
        assert hashlib.sha256((exported / rel).read_bytes()).hexdigest() == digest
    assert verify_manifest(exported) == []


def test_onnx_is_bn_folded_and_matches_torch_on_raw_pixels(exported: Path):
    x, _ = samples()
    for exported_model in levels():
        path = exported / f"onnx/level_{exported_model.level:02d}.onnx"
        graph = onnx.load(str(path)).graph
        assert "BatchNormalization" not in {node.op_type for node in graph.node}
        assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, *SHAPE]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        mean = torch.tensor(MEAN).reshape(1, -1, 1, 1)
        std = torch.tensor(STD).reshape(1, -1, 1, 1)
        with torch.no_grad():
            reference = exported_model.model((x - mean) / std).numpy()
        for i in range(len(x)):
            (got,) = session.run(None, {"input": x[i:i + 1].numpy()})
            np.testing.assert_allclose(got, reference[i:i + 1], rtol=0, atol=1e-5)


def test_mask_zeros_survive_in_onnx(exported: Path):
    pruned = levels()[1].model
    graph = onnx.load(str(exported / "onnx/level_01.onnx")).graph
    by_size = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        by_size.setdefault(array.size, []).append(array)
    conv_weight, = by_size[pruned[0].weight.numel()]
    linear_weight, = by_size[pruned[4].weight.numel()]
    assert np.count_nonzero(conv_weight) == int(pruned[0].weight.count_nonzero()) == 18
    assert np.count_nonzero(linear_weight) == int(pruned[4].weight.count_nonzero()) == 216
    # Same positions, not just the same count (Gemm may store the weight transposed).
    linear_zeros = linear_weight == 0
    expected = pruned[4].weight.detach().numpy() == 0
    assert np.array_equal(linear_zeros, expected) or np.array_equal(linear_zeros, expected.T)
    assert np.array_equal(conv_weight == 0, pruned[0].weight.detach().numpy() == 0)


def test_vnnlib_boxes_and_output_specs(exported: Path):
    x, y = samples()
    for i in range(3):
        n_in, n_out, disjuncts = read_vnnlib(exported / f"vnnlib/sample_{i:04d}.vnnlib")
        assert (n_in, n_out) == (64, NUM_CLASSES)
        (box, specs), = disjuncts
        flat = x[i].numpy().astype(np.float64).reshape(-1)
        assert np.array_equal(box[:, 0], np.clip(flat - EPS, 0, 1))
        assert np.array_equal(box[:, 1], np.clip(flat + EPS, 0, 1))
        label = int(y[i])
        expected = set()
        for j in range(NUM_CLASSES):
            if j != label:
                row = np.zeros(NUM_CLASSES)
                row[label], row[j] = 1.0, -1.0  # Y_label - Y_j <= 0
                expected.add((tuple(row), (0.0,)))
        assert {(tuple(mat[0]), tuple(rhs)) for mat, rhs in specs} == expected
        assert all(mat.shape == (1, NUM_CLASSES) for mat, _ in specs)
    assert (box[:, 0] == 0).any() or (box[:, 1] == 1).any()


def test_verify_manifest_finds_tampering(exported: Path, tmp_path: Path):
    root = tmp_path / "copy"
    shutil.copytree(exported, root)
    vnnlib = root / "vnnlib/sample_0001.vnnlib"
    vnnlib.write_text(vnnlib.read_text() + "; edited by hand\n")
    (root / "onnx/level_01.onnx").unlink()
    problems = verify_manifest(root)
    assert any("vnnlib/sample_0001.vnnlib" in p and "sha256" in p for p in problems)
    assert any("onnx/level_01.onnx" in p and "missing" in p for p in problems)
    assert len(problems) == 2

    (root / "manifest.json").unlink()
    assert len(verify_manifest(root)) == 1


def test_disagreeing_onnx_raises_and_leaves_no_manifest(exported: Path, tmp_path: Path,
                                                        monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(exported, root)
    monkeypatch.setattr(benchmark_module, "check_onnx", lambda path, model, samples: 1e-3)
    with pytest.raises(RuntimeError, match="disagree"):
        export(root)
    # The old manifest described files this export was replacing: it must be gone.
    assert not (root / "manifest.json").exists()


def test_reexport_removes_stale_files(exported: Path, tmp_path: Path):
    root = tmp_path / "copy"
    shutil.copytree(exported, root)
    (root / "vnnlib/sample_0002.vnnlib.compiled").write_text("stale cache")
    export(root, models=levels()[:1], n=2)
    assert relative_files(root) == {
        "manifest.json", "instances.csv", "onnx/level_00.onnx",
        "vnnlib/sample_0000.vnnlib", "vnnlib/sample_0001.vnnlib",
    }
    assert verify_manifest(root) == []


def test_export_refuses_attached_prune_hooks(tmp_path: Path):
    model = tiny_model(0)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(RuntimeError, match="permanent"):
        export_onnx(model.eval(), SHAPE, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_normalize_is_a_frozen_depthwise_conv():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    layer = Normalize(mean, std)
    assert isinstance(layer.conv, nn.Conv2d) and layer.conv.groups == 3
    assert not any(p.requires_grad for p in layer.parameters())
    x = torch.rand(2, 3, 5, 5)
    expected = (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        Normalize((0.5, 0.5), (0.2,))
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))


def test_per_sample_fields_go_into_each_instance_entry(tmp_path: Path):
    models = levels()
    models[0].per_sample = {"unstable_relus": [5, 0, 7], "unstable_relus_ibp": [9, 1, 8]}
    models[1].per_sample = {"unstable_relus": [2, 0, 3], "unstable_relus_ibp": [4, 0, 6]}
    manifest = load_manifest(Path(export(tmp_path / "with-counts", models)).parent)
    assert [(i["level"], i["sample_index"], i["unstable_relus"], i["unstable_relus_ibp"])
            for i in manifest["instances"]] == [
        (0, 0, 5, 9), (0, 1, 0, 1), (0, 2, 7, 8), (1, 0, 2, 4), (1, 1, 0, 0), (1, 2, 3, 6)]
    # Older exports (no per-sample fields) simply lack them.
    assert "unstable_relus" not in load_manifest(Path(export(tmp_path / "plain")).parent)[
        "instances"][0]


@pytest.mark.parametrize("per_sample, problem", [
    ({"unstable_relus": [1, 2]}, "one scalar per sample"),
    ({"unstable_relus": [1, [2], 3]}, "one scalar per sample"),
    ({"correct": [True, True, True]}, "overwrite"),
])
def test_per_sample_fields_are_checked_before_anything_is_written(tmp_path: Path, per_sample,
                                                                   problem):
    models = levels()
    models[1].per_sample = per_sample
    with pytest.raises(ValueError, match=problem):
        export(tmp_path / "bad", models)
    assert not (tmp_path / "bad").exists()
