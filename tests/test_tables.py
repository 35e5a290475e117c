"""Collating a results database and a benchmark manifest into tables and plots."""
from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.export.benchmark import ExportedModel, write_benchmark
from bench.tables import make_tables

SCHEMA = """
CREATE TABLE results (
    benchmark TEXT NOT NULL, root TEXT NOT NULL, onnx TEXT NOT NULL, vnnlib TEXT NOT NULL,
    verifier TEXT NOT NULL, verifier_version TEXT, timeout REAL, status TEXT NOT NULL,
    reason TEXT, wall_time REAL, verifier_time REAL, peak_memory_mb REAL,
    peak_gpu_memory_mb REAL, cex_check TEXT, cex_detail TEXT, log_path TEXT, started_at TEXT,
    host TEXT,
    UNIQUE (benchmark, onnx, vnnlib, verifier)
)
"""


def always_class_0(seed: int) -> nn.Module:
    """A small CNN whose output bias makes it predict class 0 on every input, so which samples
    are classified correctly is known: labels (0, 0, 1) give correct, correct, wrong."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():
        model[4].bias.copy_(torch.tensor([100.0, 0.0, 0.0]))
    return model.eval()


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instances") / "tiny-bench"
    dataset = {"name": "tiny", "test_order": "as stored", "mean": (0.5,), "std": (0.25,),
               "input_shape": (1, 6, 6), "num_classes": 3}
    models = [
        ExportedModel(level=0, model=always_class_0(0), remain_ratio=1.0, clean_accuracy=0.7,
                      layer_sparsity={}),
        ExportedModel(level=1, model=always_class_0(1), remain_ratio=0.8, clean_accuracy=0.7,
                      layer_sparsity={}),
    ]
    torch.manual_seed(0)
    x = torch.rand(3, 1, 6, 6)
    y = torch.tensor([0, 0, 1])
    write_benchmark(root, {"eps": 0.05}, dataset, models, x, y, [0, 1, 2], eps=0.05, timeout=60)
    return root


def result(root: Path, level: int, sample: int, verifier: str, status: str,
           wall_time: float = 1.0, memory: float = 100.0) -> dict:
    return {
        "benchmark": root.name, "root": str(root), "onnx": f"onnx/level_{level:02d}.onnx",
        "vnnlib": f"vnnlib/sample_{sample:04d}.vnnlib", "verifier": verifier,
        "verifier_version": "1.2", "timeout": 60.0, "status": status, "reason": "",
        "wall_time": wall_time, "verifier_time": None, "peak_memory_mb": memory,
        "peak_gpu_memory_mb": None, "cex_check": None, "cex_detail": None, "log_path": None,
        "started_at": "2026-11-26T10:00:00+00:00", "host": "test",
    }


def write_db(path: Path, rows: list[dict]) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        for row in rows:
            names = ", ".join(row)
            conn.execute(f"INSERT INTO results ({names}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    conn.close()
    return path


@pytest.fixture
def tables(benchmark_root: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    r = benchmark_root
    rows = [
        # level 0: two correct samples verified; unsat on the misclassified one must not count.
        result(r, 0, 0, "crown", "unsat", wall_time=2.0, memory=150.0),
        result(r, 0, 1, "crown", "unsat", wall_time=4.0, memory=250.0),
        result(r, 0, 2, "crown", "unsat", wall_time=6.0, memory=200.0),
        # level 1: one verified; a timeout and an error never count.
        result(r, 1, 0, "crown", "unsat", wall_time=1.0),
        result(r, 1, 1, "crown", "timeout", wall_time=60.5),
        result(r, 1, 2, "crown", "error", wall_time=0.5),
        # a second verifier: sat and error, the rest missing.
        result(r, 0, 0, "milp", "error"),
        result(r, 0, 1, "milp", "sat"),
        # a result for a level this export does not have (an older export of the same name).
        {**result(r, 0, 0, "crown", "unsat"), "onnx": "onnx/level_07.onnx"},
    ]
    db = write_db(tmp_path / "results.sqlite", rows)
    out = tmp_path / "tables"
    return out, make_tables(db, out)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_written_files(tables):
    out, written = tables
    names = sorted(p.name for p in written)
    assert names == sorted([
        "tiny-bench__crown.md", "tiny-bench__crown.csv", "tiny-bench__crown.png",
        "tiny-bench__milp.md", "tiny-bench__milp.csv", "tiny-bench__milp.png", "index.md",
    ])
    assert all(p.parent == out and p.is_file() for p in written)
    index = (out / "index.md").read_text()
    for name in names:
        if name != "index.md":
            assert f"]({name})" in index


def test_verified_accuracy_counts_only_unsat_on_correct_samples(tables):
    out, _ = tables
    level0, level1 = read_csv(out / "tiny-bench__crown.csv")
    # Samples 0 and 1 are classified correctly (label 0), sample 2 is not (label 1).
    assert level0["standard_accuracy"] == level1["standard_accuracy"] == "66.67"
    assert level0["verified_accuracy"] == "66.67"  # the misclassified unsat does not count
    assert level0["unsat_misclassified"] == "1"
    assert level1["verified_accuracy"] == "33.33"  # timeout and error do not count

    milp0, milp1 = read_csv(out / "tiny-bench__milp.csv")
    assert milp0["verified_accuracy"] == milp1["verified_accuracy"] == "0.0"
    assert (milp0["sat"], milp0["error"], milp0["missing"]) == ("1", "1", "1")
    assert milp1["missing"] == "3" and milp1["mean_time_s"] == milp1["peak_memory_mb"] == ""


def test_csv_content(tables):
    out, _ = tables
    assert (out / "tiny-bench__crown.csv").read_text() == (
        "level,remain_ratio,samples,standard_accuracy,verified_accuracy,mean_time_s,"
        "peak_memory_mb,sat,unsat,timeout,unknown,error,missing,unsat_misclassified\n"
        "0,1.0,3,66.67,66.67,4.0,250.0,0,3,0,0,0,0,1\n"
        "1,0.8,3,66.67,33.33,20.667,100.0,0,1,1,0,1,0,0\n"
    )


def test_markdown_reports_statuses_and_warnings(tables):
    out, _ = tables
    text = (out / "tiny-bench__crown.md").read_text()
    assert "# tiny-bench: crown" in text and "version 1.2" in text
    assert "| 1 | 80.0% | 3 | 66.7 | 33.3 | 20.67 | 100 | 0 | 1 | 1 | 0 | 1 | 0 | 0 |" in text
    assert "misclassified" in text and "1 result(s) name files" in text


def test_plot_is_a_png(tables):
    out, _ = tables
    path = out / "tiny-bench__crown.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_no_results_is_a_user_error(tmp_path: Path):
    empty = write_db(tmp_path / "empty.sqlite", [])
    with pytest.raises(BenchError, match="bench run"):
        make_tables(empty, tmp_path / "out")
    with pytest.raises(BenchError, match="bench run"):
        make_tables(tmp_path / "absent.sqlite", tmp_path / "out")


def test_moved_benchmark_is_a_user_error(tmp_path: Path, benchmark_root: Path):
    moved = tmp_path / "tiny-bench"  # the DB names a folder that holds no manifest
    db = write_db(tmp_path / "results.sqlite", [result(moved, 0, 0, "crown", "unsat")])
    with pytest.raises(BenchError, match="manifest.json"):
        make_tables(db, tmp_path / "out")
