"""`bench results export`: one row per instance and verifier, to CSV and Parquet."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.collate.export import FIXED_COLUMNS, export_results, instance_frame
from bench.errors import BenchError
from bench.run.results import COLUMNS, ResultsDB

LABELS = (4, 7)
CORRECT = {(0, 0): True, (0, 1): False, (1, 0): True, (1, 1): True}


def manifest() -> dict:
    """Two levels x two samples; instances carry a per-sample statistic, the models a scalar
    and a per-layer list, the properties their eps."""
    instances = [{"onnx": f"onnx/level_{level:02d}.onnx",
                  "vnnlib": f"vnnlib/sample_{sample:04d}.vnnlib", "timeout": 30.0,
                  "level": level, "sample_index": 10 + sample, "label": LABELS[sample],
                  "correct": CORRECT[(level, sample)], "unstable_relus": 5 * level + sample,
                  "bounds": [-1.5, 2.0]}
                 for level in (0, 1) for sample in (0, 1)]
    return {
        "format_version": 1, "benchmark": "tiny", "config": {"pruner": "imp", "seed": 7},
        "experiment": {"name": "imp-demo", "hash": "0123456789abcdef", "seed": 7},
        "eps": 0.02, "timeout": 30.0,
        "models": [{"level": level, "onnx": f"onnx/level_{level:02d}.onnx",
                    "remain_ratio": 0.8 ** level, "standard_accuracy": 0.9 - 0.1 * level,
                    "unstable_ratio_per_layer": [0.1, 0.2]} for level in (0, 1)],
        "properties": [{"vnnlib": f"vnnlib/sample_{sample:04d}.vnnlib",
                        "sample_index": 10 + sample, "label": LABELS[sample], "eps": 0.02}
                       for sample in (0, 1)],
        "instances": instances,
    }


def row(root: Path, level: int, sample: int, status: str, verifier: str = "milp") -> dict:
    return {**dict.fromkeys(COLUMNS), "benchmark": "tiny", "root": str(root),
            "onnx": f"onnx/level_{level:02d}.onnx", "vnnlib": f"vnnlib/sample_{sample:04d}.vnnlib",
            "verifier": verifier, "verifier_version": "2.0", "timeout": 30.0, "status": status,
            "wall_time": 1.5 + level, "peak_memory_mb": 100.0 + sample,
            "started_at": "2026-01-01T00:00:00+00:00", "host": "h"}


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(manifest()))
    foreign = tmp_path / "foreign"  # a VNN-COMP folder of someone else: no manifest
    foreign.mkdir()
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        db.record(row(root, 0, 0, "unsat"))
        db.record(row(root, 0, 1, "unsat"))  # misclassified: not verified
        db.record(row(root, 1, 0, "timeout"))  # level 1, sample 1: no result yet
        db.record({**row(root, 0, 0, "sat"), "verifier": "lirpa"})
        db.record({**row(root, 9, 0, "unsat")})  # a file the manifest does not list
        db.record({**row(foreign, 0, 0, "unsat"), "benchmark": "foreign"})
    return path


def test_one_row_per_instance_and_verifier(results):
    frame = instance_frame(results)
    assert list(frame.columns[:len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    # foreign: its one result; tiny: 4 instances + 1 unlisted result for milp, 4 for lirpa.
    assert len(frame) == 1 + 5 + 4
    milp = frame[(frame.benchmark == "tiny") & (frame.verifier == "milp")]
    listed = milp[milp.level.notna()].set_index(["level", "sample_index"])
    assert list(listed.status.astype(object).where(listed.status.notna(), None)) == [
        "unsat", "unsat", "timeout", None]
    assert list(listed.verified.astype(object).where(listed.verified.notna(), None)) == [
        True, False, False, None]
    assert list(listed.label) == [4, 7, 4, 7] and list(listed.correct) == [True, False, True,
                                                                          True]
    first = listed.loc[(0, 10)]
    assert (first.experiment_name, first.experiment_hash, first.seed) == \
        ("imp-demo", "0123456789abcdef", 7)
    assert (first.wall_time, first.peak_memory_mb, first.verifier_version) == (1.5, 100.0, "2.0")
    assert pd.isna(first.decided_by)  # the runner does not record it (yet)
    assert listed.loc[(1, 10)].remain_ratio == pytest.approx(0.8)


def test_manifest_fields_come_along(results):
    frame = instance_frame(results)
    tiny = frame[(frame.benchmark == "tiny") & frame.level.notna()]
    assert sorted(tiny.unstable_relus.unique()) == [0, 1, 5, 6]  # per sample and level
    assert set(tiny.bounds) == {"[-1.5, 2.0]"}  # a list, as JSON text
    assert set(tiny.property_eps) == {0.02}
    assert sorted(tiny.model_standard_accuracy.unique()) == pytest.approx([0.8, 0.9])
    assert "model_unstable_ratio_per_layer" not in frame.columns  # per level, not scalar
    assert "instance_timeout" not in frame.columns and set(tiny.timeout) == {30.0}


def test_results_without_a_manifest_are_kept(results):
    frame = instance_frame(results)
    unlisted = frame[(frame.benchmark == "tiny") & frame.level.isna()]
    assert list(unlisted.onnx) == ["onnx/level_09.onnx"] and pd.isna(unlisted.verified.iloc[0])
    foreign = frame[frame.benchmark == "foreign"]
    assert list(foreign.status) == ["unsat"] and pd.isna(foreign.experiment_name.iloc[0])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_cli_writes_a_file_that_reads_back(results, tmp_path, fmt):
    out = tmp_path / "out" / f"instances.{fmt}"
    result = CliRunner().invoke(main, ["results", "export", "--results", str(results),
                                       "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 10 rows to {out}"
    back = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert len(back) == 10 and list(back.columns[:len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    assert set(back.status.dropna()) == {"unsat", "timeout", "sat"}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial file left


def test_user_errors(results, tmp_path):
    with pytest.raises(BenchError, match="unknown export format"):
        export_results(results, tmp_path / "x.json", "json")
    with pytest.raises(BenchError, match="is a folder"):
        export_results(results, tmp_path, "csv")
    result = CliRunner().invoke(main, ["results", "export", "--results",
                                       str(tmp_path / "none.db"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "bench run" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("missing, fmt", [("pandas", "csv"), ("pyarrow", "parquet")])
def test_a_missing_export_extra_is_a_one_line_error(results, tmp_path, monkeypatch, missing,
                                                     fmt):
    """pandas and pyarrow are the `export` extra, which `make demo` does not install."""
    monkeypatch.setitem(__import__("sys").modules, missing, None)  # import raises ImportError
    out = tmp_path / f"x.{fmt}"
    result = CliRunner().invoke(main, ["results", "export", "--results", str(results),
                                       "--format", fmt, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert missing in result.output and "prune-bench[export]" in result.output
    assert "Traceback" not in result.output and not out.exists()
