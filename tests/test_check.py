"""`bench check`: validate any benchmark folder, ours or anyone's."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.formats.folder import Limits, safe_join
from bench.share.check import Problem, check_benchmark, format_problems
from bench.errors import BenchError
from bench.build.export import ExportedModel, write_benchmark
from bench.formats.vnnlib import robustness_property

from paths import FIXTURES  # noqa: E402


def write_tiny_benchmark(root: Path, vnnlib_version: int = 1) -> Path:
    """Our format, without training: an untrained 16-8-3 MLP on 4x4 images, 3 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    samples = torch.rand(3, 1, 4, 4)
    write_benchmark(
        root, {"model": "tiny"},
        {"name": "tiny", "test_order": "random", "mean": [0.5], "std": [0.25],
         "input_shape": [1, 4, 4], "num_classes": 3},
        [ExportedModel(level=0, model=model, remain_ratio=1.0, clean_accuracy=0.5,
                       layer_sparsity={})],
        samples, torch.tensor([0, 1, 2]), [0, 1, 2], eps=0.05, timeout=60,
        vnnlib_version=vnnlib_version)
    return root


@pytest.fixture
def ours(tmp_path) -> Path:
    return write_tiny_benchmark(tmp_path / "ours")


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def set_instances(folder: Path, *rows: str) -> None:
    (folder / "instances.csv").write_text("".join(f"{row}\n" for row in rows))
    (folder / "manifest.json").unlink(missing_ok=True)  # these tests are about the paths


def test_our_folder_passes(ours):
    assert check_benchmark(ours) == []
    assert format_problems([], ours) == f"{ours}: OK"


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures not present")
def test_foreign_vnncomp_folder_passes():
    # instances.csv without subfolders, general output constraints, inputs outside [0, 1],
    # 1-input models, an IR-3 model that lists its initializers as inputs.
    assert check_benchmark(FIXTURES) == []


def test_tampered_file_fails_its_hash(ours):
    with open(ours / "vnnlib" / "sample_0001.vnnlib", "a") as handle:
        handle.write("; tampered\n")  # still a valid property: only the hash can tell
    problems = check_benchmark(ours)
    assert [(p.path, p.severity) for p in problems] == [("vnnlib/sample_0001.vnnlib", "error")]
    assert "sha256" in problems[0].message
    assert "1 error(s)" in format_problems(problems)


def test_absolute_path_is_an_error(ours):
    set_instances(ours, f"{ours / 'onnx' / 'level_00.onnx'},vnnlib/sample_0000.vnnlib,60")
    (problem,) = errors(check_benchmark(ours))
    assert problem.path == "instances.csv"
    assert "line 1" in problem.message and "absolute" in problem.message


def test_dotdot_escape_is_an_error(ours):
    set_instances(ours, "onnx/level_00.onnx,vnnlib/sample_0000.vnnlib,60",
                  "onnx/../../ours/onnx/level_00.onnx,vnnlib/sample_0000.vnnlib,60")
    (problem,) = errors(check_benchmark(ours))
    assert "line 2" in problem.message and "'..'" in problem.message


def test_symlink_out_of_the_folder_is_an_error(ours, tmp_path):
    outside = tmp_path / "outside.vnnlib"
    shutil.copyfile(ours / "vnnlib" / "sample_0000.vnnlib", outside)
    os.symlink(outside, ours / "vnnlib" / "link.vnnlib")
    set_instances(ours, "onnx/level_00.onnx,vnnlib/link.vnnlib,60")
    problems = errors(check_benchmark(ours))
    assert {p.path for p in problems} == {"vnnlib/link.vnnlib", "instances.csv"}
    assert any("outside the benchmark folder" in p.message and "line 1" in p.message
               for p in problems)


def test_symlink_inside_the_folder_is_fine(ours):
    os.symlink("sample_0000.vnnlib", ours / "vnnlib" / "alias.vnnlib")
    set_instances(ours, "onnx/level_00.onnx,vnnlib/alias.vnnlib,60")
    assert check_benchmark(ours) == []


def test_truncated_onnx_is_an_error(ours):
    path = ours / "onnx" / "level_00.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    problems = errors(check_benchmark(ours))
    onnx_problems = [p for p in problems if p.path == "onnx/level_00.onnx"]
    assert any("not a valid ONNX model" in p.message for p in onnx_problems)


def test_truncated_gzip_is_an_error(ours):
    path = ours / "onnx" / "level_00.onnx"
    packed = gzip.compress(path.read_bytes())
    (ours / "onnx" / "level_00.onnx.gz").write_bytes(packed[: len(packed) // 2])
    path.unlink()
    (ours / "manifest.json").unlink()
    (problem,) = check_benchmark(ours)
    assert problem.path == "onnx/level_00.onnx.gz" and "truncated" in problem.message


def test_gzipped_folder_passes(ours):
    for path in list(ours.glob("onnx/*.onnx")) + list(ours.glob("vnnlib/*.vnnlib")):
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    (ours / "manifest.json").unlink()  # its hashes are of the plain files
    assert check_benchmark(ours) == []


def test_vnnlib_with_wrong_input_count_is_an_error(ours):
    (ours / "manifest.json").unlink()
    x = np.full(15, 0.5)  # the model takes 16
    (ours / "vnnlib" / "sample_0002.vnnlib").write_text(robustness_property(x, 0, 0.1, 3))
    (problem,) = check_benchmark(ours)
    assert problem.path == "vnnlib/sample_0002.vnnlib"
    assert "declares 15 inputs but onnx/level_00.onnx takes 16" in problem.message


def test_unparsable_vnnlib_is_an_error(ours):
    (ours / "manifest.json").unlink()
    path = ours / "vnnlib" / "sample_0000.vnnlib"
    path.write_text(path.read_text()[:200])  # cut mid-file: unbalanced parentheses
    (problem,) = check_benchmark(ours)
    assert problem.path == "vnnlib/sample_0000.vnnlib" and "does not parse" in problem.message


def test_files_above_the_limit_are_errors(ours):
    problems = errors(check_benchmark(ours, Limits(onnx_bytes=100)))
    assert [p.path for p in problems] == ["onnx/level_00.onnx"]
    assert "more than the limit of 100" in problems[0].message
    problems = errors(check_benchmark(ours, Limits(csv_bytes=10)))
    assert [p.path for p in problems] == ["instances.csv"]


def test_gzip_bomb_is_refused_without_inflating_it(ours):
    (ours / "manifest.json").unlink()
    path = ours / "vnnlib" / "sample_0000.vnnlib"
    Path(f"{path}.gz").write_bytes(gzip.compress(b";" * (4 << 20)))  # 4 MiB of comment
    path.unlink()
    (problem,) = errors(check_benchmark(ours, Limits(vnnlib_bytes=1 << 20)))
    assert problem.path == "vnnlib/sample_0000.vnnlib.gz"
    assert "decompresses to more than" in problem.message


def test_missing_file_and_bad_rows(ours):
    set_instances(ours, "onnx/level_00.onnx,vnnlib/nope.vnnlib,60",
                  "onnx/level_00.onnx,vnnlib/sample_0000.vnnlib,-5",
                  "just one field")
    messages = sorted(f"{p.path}: {p.message}" for p in check_benchmark(ours))
    assert messages == [
        "instances.csv: line 2: timeout must be a finite number of seconds above 0 and at most "
        "604800 (one week), got '-5'",
        "instances.csv: line 3: expected 'onnx,vnnlib,timeout', got 'just one field'",
        "vnnlib/nope.vnnlib: missing (listed in instances.csv, line 1)",
    ]


def test_over_six_hours_is_a_warning(ours):
    set_instances(ours, "onnx/level_00.onnx,vnnlib/sample_0000.vnnlib,30000")
    (problem,) = check_benchmark(ours)
    assert problem.severity == "warning" and "6 hours" in problem.message


def test_hostile_manifest_paths_are_not_hashed(ours):
    manifest = (ours / "manifest.json").read_text()
    hostile = manifest.replace('"files": {', '"files": {"/etc/passwd": "0", ', 1)
    (ours / "manifest.json").write_text(hostile)
    problems = errors(check_benchmark(ours))
    assert [p.path for p in problems] == ["manifest.json"]
    assert "absolute" in problems[0].message


def test_not_a_directory(tmp_path):
    with pytest.raises(BenchError, match="not a directory"):
        check_benchmark(tmp_path / "missing")


def test_safe_join(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert safe_join(root, "a/x.onnx") == (root / "a" / "x.onnx").resolve()
    assert safe_join(root, "./a/../x.onnx") == (root / "x.onnx").resolve()
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root / "loop1", root / "loop2")
    for bad, why in [("/etc/passwd", "absolute"), ("\\x", "absolute"), ("C:x", "absolute"),
                     ("..", "'..'"), ("../x", "'..'"), ("a/../../x", "'..'"),
                     ("a\\..\\..\\x", "'..'"), ("up/x", "outside"), ("", "empty"),
                     ("loop1/x", "cannot be resolved")]:
        with pytest.raises(BenchError, match=why) as info:
            safe_join(root, bad, "instances.csv, line 7")
        assert str(info.value).startswith("instances.csv, line 7: ")
        assert "\n" not in str(info.value)
