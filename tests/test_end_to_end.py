"""The whole pipeline on a tiny configuration, through the CLI: build, check, verify, collate."""
import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.data import load_dataset
from bench.formats.folder import verify_manifest
from bench.run.results import ResultsDB
from bench.formats.vnnlib import read_vnnlib

EPS = 0.02


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    config = root / "tiny.yaml"
    config.write_text(
        "dataset: digits\nmodel: mlp\ntraining: crown-ibp\npruner: imp\n"
        f"eps: {EPS}\nepochs: 3\neps_start_epoch: 1\neps_length: 2\nlevels: 1\n"
        "samples: 4\ntimeout: 30\ntrain_samples: 1000\nbatch_size: 64\nlr: 0.003\n"
    )
    result = CliRunner().invoke(main, ["build-instances", "--config", str(config), "--out",
                                       str(root / "instances"), "--runs-dir", str(root / "runs"),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (bench_dir,) = (root / "instances").iterdir()
    return root, bench_dir


def test_layout_and_manifest(workspace):
    _, bench_dir = workspace
    rows = list(csv.reader((bench_dir / "instances.csv").open()))
    assert len(rows) == 2 * 4  # levels 0 and 1, four samples each
    for onnx_path, vnnlib_path, timeout in rows:
        assert (bench_dir / onnx_path).is_file() and (bench_dir / vnnlib_path).is_file()
        assert float(timeout) == 30
    manifest = json.loads((bench_dir / "manifest.json").read_text())
    assert [m["level"] for m in manifest["models"]] == [0, 1]
    assert manifest["models"][1]["remain_ratio"] == pytest.approx(0.8, abs=0.01)
    assert verify_manifest(bench_dir) == []
    # The experiment's identity: its seeds are found by name.
    experiment = manifest["experiment"]
    assert experiment["name"] == "digits-mlp-crown-ibp-imp" and experiment["seed"] == 0
    name = f"{experiment['name']}-{experiment['hash']}-seed0"
    assert bench_dir.name == manifest["benchmark"] == name
    assert experiment["settings"]["training"]["epochs"] == 3
    assert experiment["settings"]["training"]["momentum"] == 0.9  # defaults included
    assert manifest["config"]["epochs"] == 3 and manifest["config"]["seed"] == 0


def test_every_onnx_matches_torch_and_every_property_matches_the_data(workspace):
    root, bench_dir = workspace
    manifest = json.loads((bench_dir / "manifest.json").read_text())
    data = load_dataset("digits")
    for model in manifest["models"]:
        assert model["onnx_max_abs_diff"] < 1e-4
        session = ort.InferenceSession(str(bench_dir / model["onnx"]),
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for inst in (i for i in manifest["instances"] if i["onnx"] == model["onnx"]):
            x = data.test_x[inst["sample_index"]].numpy()[None]
            logits = session.run(None, {name: x})[0][0]
            assert (int(np.argmax(logits)) == inst["label"]) == inst["correct"]
    for prop in manifest["properties"]:
        n_in, n_out, disjuncts = read_vnnlib(bench_dir / prop["vnnlib"])
        x = data.test_x[prop["sample_index"]].numpy().reshape(-1).astype(np.float64)
        assert (n_in, n_out, len(disjuncts)) == (64, 10, 1)
        box, specs = disjuncts[0]
        np.testing.assert_array_equal(box[:, 0], np.clip(x - EPS, 0, 1))
        np.testing.assert_array_equal(box[:, 1], np.clip(x + EPS, 0, 1))
        assert prop["label"] == int(data.test_y[prop["sample_index"]])
        assert len(specs) == 9  # "some other logit >= the true logit"
        for mat, rhs in specs:
            assert mat[0, prop["label"]] == 1 and mat.sum() == 0 and rhs[0] == 0


@pytest.mark.parametrize("verifier", ["marabou", "lirpa"])
def test_verifiers_run_and_counterexamples_check_out(workspace, verifier):
    root, bench_dir = workspace
    results = root / "results.db"
    result = CliRunner().invoke(main, ["run", "--instances", str(root / "instances"),
                                       "--verifier", verifier, "--results", str(results),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = ResultsDB(results).rows(verifier=verifier)
    assert len(rows) == 8
    assert all(r["status"] != "error" for r in rows), [r["reason"] for r in rows]
    if verifier == "marabou":  # complete: every instance is decided within the timeout
        assert {r["status"] for r in rows} <= {"sat", "unsat"}
    for r in rows:
        if r["status"] == "sat":
            assert r["cex_check"] in ("correct", "correct_up_to_tolerance"), r["cex_detail"]
    # a rerun skips everything already decided
    again = CliRunner().invoke(main, ["run", "--instances", str(root / "instances"),
                                      "--verifier", verifier, "--results", str(results),
                                      "--quiet"], catch_exceptions=False)
    assert "8 skipped" in again.output


def test_marabou_and_lirpa_agree_where_both_decide(workspace):
    root, _ = workspace
    rows = ResultsDB(root / "results.db").rows()
    by_instance = {}
    for r in rows:
        by_instance.setdefault((r["onnx"], r["vnnlib"]), {})[r["verifier"]] = r["status"]
    assert by_instance, "run the verifier tests first"
    for statuses in by_instance.values():
        decided = {s for s in statuses.values() if s in ("sat", "unsat")}
        assert len(decided) <= 1, statuses


def test_tables(workspace):
    root, bench_dir = workspace
    out = root / "tables"
    result = CliRunner().invoke(main, ["tables", "--results", str(root / "results.db"),
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = out / f"{bench_dir.name}__marabou.csv"
    rows = list(csv.DictReader(table.open()))
    assert [int(r["level"]) for r in rows] == [0, 1]
    manifest = json.loads((bench_dir / "manifest.json").read_text())
    db = {(r["onnx"], r["vnnlib"]): r for r in ResultsDB(root / "results.db").rows(verifier="marabou")}
    for row, model in zip(rows, manifest["models"]):
        expected = sum(1 for i in manifest["instances"] if i["onnx"] == model["onnx"]
                       and i["correct"] and db[(i["onnx"], i["vnnlib"])]["status"] == "unsat")
        assert float(row["verified_accuracy"]) == pytest.approx(100 * expected / 4)
    assert (out / f"{bench_dir.name}__marabou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rebuild_skips_finished_levels(workspace):
    root, bench_dir = workspace
    (run_dir,) = (root / "runs").glob("*/seed_0")
    manifest = json.loads((bench_dir / "manifest.json").read_text())
    levels_hash = manifest["experiment"]["levels_hash"]
    assert run_dir.parent.name == f"digits-mlp-crown-ibp-imp-{levels_hash}"
    stamp = (run_dir / "level_01" / "model.pt").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["build-instances", "--config", str(root / "tiny.yaml"),
                                       "--out", str(root / "instances"), "--runs-dir",
                                       str(root / "runs"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0
    assert (run_dir / "level_01" / "model.pt").stat().st_mtime_ns == stamp
    assert verify_manifest(bench_dir) == []


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The library example in the README, as written, on a tiny configuration instead of the
    demo's: it builds, verifies with the cascade and milp, and collates."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'load_yaml("configs/demo.yaml")' in example
    (tmp_path / "tiny.yaml").write_text(
        "dataset: digits\nmodel: mlp\ntraining: crown-ibp\npruner: imp\n"
        f"eps: {EPS}\nepochs: 1\nlevels: 1\nsamples: 3\ntimeout: 30\ntrain_samples: 300\n")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.replace("configs/demo.yaml", "tiny.yaml"), "README.md", "exec"),
         namespace)
    assert sum(namespace["summary"].counts.values()) == 6  # 2 levels x 3 properties
    rows = ResultsDB(tmp_path / "results" / "results.db").rows()
    assert len(rows) == 6 and {row["verifier"] for row in rows} == {"milp"}
    assert (tmp_path / "tables" / "index.md").is_file()
