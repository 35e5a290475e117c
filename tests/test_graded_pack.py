"""`bench pack --select graded` and the stratified selection of generate_properties.py."""
from __future__ import annotations

import copy
import csv
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bench.build.export import ExportedModel, write_benchmark
from bench.build.metrics import unstable_relus_per_sample
from bench.data import load_dataset
from bench.errors import BenchError
from bench.formats.folder import load_manifest, read_listing
from bench.models.normalize import Normalizer
from bench.run.results import COLUMNS, ResultsDB
from bench.share import generate_properties as script
from bench.share.check import check_benchmark
from bench.share.graded import parse_duration
from bench.share.pack import pack_benchmark

EPS, TIMEOUT, SAMPLES = 0.02, 300.0, 8
# Per sample (the same at both levels): the answers that make its difficulty class.
DESIGN = {
    0: ("trivial", [("milp", "unsat", 2.0, None, None),
                    ("cascade", "unsat", 0.1, "bounds:CROWN", None)]),
    1: ("easy", [("milp", "unsat", 5.0, None, None)]),
    2: ("easy", [("milp", "sat", 3.0, None, "correct")]),
    3: ("medium", [("milp", "unsat", 40.0, None, None)]),
    4: ("medium", [("milp", "sat", 50.0, None, "correct")]),
    5: ("hard", [("milp", "unsat", 200.0, None, None)]),
    6: ("open", [("milp", "timeout", 300.5, None, None),
                 ("cascade", "unknown", 20.0, "verifier", None)]),
    7: ("disputed", [("milp", "unsat", 10.0, None, None),
                     ("cascade", "sat", 1.0, "attack", "correct")]),
}


def _trained_mlp(digits, normalizer) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = normalizer(digits.train_x), digits.train_y
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def _pruned(model: nn.Module) -> nn.Module:
    """Half the first layer's weights (the smallest) set to zero."""
    pruned = copy.deepcopy(model)
    weight = pruned[1].weight
    weight[weight.abs() < weight.abs().median()] = 0.0
    return pruned


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Two levels of a small digits MLP x 8 test samples that both classify correctly, with
    the per-sample unstable ReLUs the build records."""
    digits = load_dataset("digits")
    normalizer = Normalizer(digits.mean, digits.std)
    dense = _trained_mlp(digits, normalizer)
    models = [dense, _pruned(dense)]
    with torch.no_grad():
        correct = [m(normalizer(digits.test_x)).argmax(1) == digits.test_y for m in models]
    indices = torch.nonzero(correct[0] & correct[1]).flatten()[:SAMPLES].tolist()
    x, y = digits.test_x[indices], digits.test_y[indices]
    exported = [ExportedModel(level=level, model=model, remain_ratio=1.0 - 0.5 * level,
                              clean_accuracy=float(correct[level].float().mean()),
                              layer_sparsity={},
                              per_sample=unstable_relus_per_sample(model,
                                                                   *normalizer.box(x, EPS)))
                for level, model in enumerate(models)]
    root = tmp_path_factory.mktemp("src") / "graded-digits"
    info = {"name": "digits", "test_order": digits.test_order, "mean": list(digits.mean),
            "std": list(digits.std), "input_shape": list(digits.input_shape),
            "num_classes": digits.num_classes}
    write_benchmark(root, {"dataset": "digits", "model": "mlp"}, info, exported, x, y, indices,
                    eps=EPS, timeout=TIMEOUT)
    return root


@pytest.fixture(scope="module")
def results(source, tmp_path_factory) -> Path:
    manifest = load_manifest(source)
    position = {p["sample_index"]: k for k, p in enumerate(manifest["properties"])}
    path = tmp_path_factory.mktemp("db") / "results.db"
    with ResultsDB(path) as db:
        for inst in manifest["instances"]:
            _, answers = DESIGN[position[inst["sample_index"]]]
            for verifier, status, wall, decided_by, cex in answers:
                db.record({**dict.fromkeys(COLUMNS), "benchmark": manifest["benchmark"],
                           "root": str(source), "onnx": inst["onnx"], "vnnlib": inst["vnnlib"],
                           "verifier": verifier, "status": status, "wall_time": wall,
                           "timeout": TIMEOUT, "decided_by": decided_by, "cex_check": cex,
                           "started_at": "2026-11-28T10:00:00+00:00",
                           "benchmark_hash": manifest["benchmark_hash"]})
    return path


@pytest.fixture(scope="module")
def graded(source, results, tmp_path_factory) -> Path:
    return pack_benchmark(source, tmp_path_factory.mktemp("pack") / "graded", select="graded",
                          results=[results])


def _rows(folder: Path) -> list[list[str]]:
    with open(folder / "instances.csv", newline="") as handle:
        return [row for row in csv.reader(handle) if row]


def _classes(folder: Path, source: Path) -> Counter:
    manifest = load_manifest(source)
    position = {p["vnnlib"]: k for k, p in enumerate(manifest["properties"])}
    return Counter(DESIGN[position[vnnlib]][0] for _, vnnlib, _ in _rows(folder))


def test_graded_pack_passes_check_and_takes_every_graded_class(source, graded):
    assert check_benchmark(graded) == []
    # 6 h fit all: 2 easy, 2 medium, 1 hard and 1 open per level; no trivial, no disputed.
    assert _classes(graded, source) == {"easy": 4, "medium": 4, "hard": 2, "open": 2}
    assert sum(float(r[2]) for r in _rows(graded)) == 12 * TIMEOUT <= 6 * 3600
    manifest = load_manifest(graded)
    assert manifest["packed"]["select"] == "graded"
    assert [(i["onnx"], i["vnnlib"]) for i in manifest["instances"]] == \
        [tuple(r[:2]) for r in _rows(graded)]
    assert {i["difficulty"] for i in manifest["instances"]} == {"easy", "medium", "hard", "open"}
    assert manifest["benchmark_hash"] == read_listing(graded).benchmark_hash


def test_generate_properties_in_a_graded_pack(graded, tmp_path):
    """VNN-COMP's rerun draws a stratified selection on the shipped models; still checks."""
    folder = shutil.copytree(graded, tmp_path / "rerun")
    done = _run_script(folder, 5)
    assert done.returncode == 0, done.stderr
    assert check_benchmark(folder) == []
    pool = np.load(folder / "data" / "pool.npz", allow_pickle=False)
    rows = _rows(folder)
    assert {r[0] for r in rows} == {str(m) for m in pool["onnx"]}
    assert len(rows) == len(pool["onnx"]) * int(pool["properties"])
    assert sum(float(r[2]) for r in rows) <= float(pool["max_total_timeout"])


def test_budget_is_filled_with_a_mix_of_classes(source, results, tmp_path):
    packed = pack_benchmark(source, tmp_path / "small", select="graded", results=[results],
                            max_total_timeout=5 * TIMEOUT)
    assert check_benchmark(packed) == []
    # Round 1: hard, open, medium, easy; round 2: the other hard one; then the budget is full.
    assert _classes(packed, source) == {"hard": 2, "open": 1, "medium": 1, "easy": 1}
    per_level = Counter(row[0] for row in _rows(packed))
    assert sorted(per_level.values()) == [2, 3]  # the levels as balanced as 5 allows
    readme = (packed / "README.md").read_text()
    assert "used: 1500 s by 5 instances" in readme
    assert "passed over for lack of budget: 3 easy, 3 medium, 1 open" in readme
    assert "Left out by the rule: 2 disputed, 2 trivial" in readme
    # Expected outcomes balanced within a class: the first medium and easy are unsat.
    mix = [line for line in readme.splitlines() if line.startswith("| medium |")]
    assert mix == ["| medium | 1 | 0 | 0 | 1 | 300 |"]


def test_trivial_instances_only_on_request(source, results, tmp_path):
    packed = pack_benchmark(source, tmp_path / "trivial", select="graded", results=[results],
                            include_trivial=True)
    assert _classes(packed, source)["trivial"] == 2
    assert "disputed" not in _classes(packed, source)


def test_reference_results_in_readme_and_csv(source, graded):
    readme = (graded / "README.md").read_text()
    assert "## Selection: graded by measured difficulty" in readme
    assert "## Reference results" in readme
    for figure in ("difficulty.png", "cactus.png"):
        assert (graded / "reference" / f"reference.{figure}").stat().st_size > 1000
        assert f"reference/reference.{figure}" in readme
    assert "| verifier | score | correct | wrong |" in readme  # VNN-COMP scores
    with open(graded / "reference" / "reference.difficulty.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["onnx"], r["vnnlib"]) for r in table] == [tuple(r[:2]) for r in _rows(graded)]
    hard = [r for r in table if r["difficulty"] == "hard"]
    assert {(r["milp_status"], r["milp_time_s"], r["reference_outcome"]) for r in hard} == \
        {("unsat", "200.0", "unsat")}
    opened = [r for r in table if r["difficulty"] == "open"]
    assert {(r["milp_status"], r["cascade_status"], r["reference_outcome"]) for r in opened} == \
        {("timeout", "unknown", "undecided")}
    # Each shipped instance's line in the README, with every verifier's status and time.
    assert "| hard | unsat | 200.00 | — | unsat (200.00 s) |" in readme


def test_graded_needs_results_and_refuses_a_seed(source, results, tmp_path):
    with pytest.raises(BenchError, match="--results"):
        pack_benchmark(source, tmp_path / "a", select="graded")
    with pytest.raises(BenchError, match="drop --seed"):
        pack_benchmark(source, tmp_path / "b", select="graded", results=[results], seed=1)
    with pytest.raises(BenchError, match="graded|qualifies|fits"):
        pack_benchmark(source, tmp_path / "c", select="graded", results=[results],
                       max_total_timeout=100)
    assert not any(tmp_path.iterdir())


def test_graded_pack_from_the_command_line(source, results, tmp_path):
    from bench.cli import main

    out = tmp_path / "cli"
    done = CliRunner().invoke(main, ["pack", str(source), "--out", str(out), "--select",
                                     "graded", "--budget", "25m", "--results", str(results)])
    assert done.exit_code == 0, done.output
    assert sum(float(r[2]) for r in _rows(out)) <= 25 * 60
    assert "| `onnx/level_00.onnx` | 0 |" in (out / "README.md").read_text()
    too_much = CliRunner().invoke(main, ["pack", str(source), "--out", str(tmp_path / "x"),
                                         "--budget", "7h"])
    assert too_much.exit_code == 2 and "6h" in too_much.output


def test_parse_duration():
    assert [parse_duration(t) for t in ("6h", "90m", "30min", "3600s", "1.5h", "120")] == \
        [21600, 5400, 1800, 3600, 5400, 120]
    for bad in ("", "6 hours", "-1h", "0", "inf", "h"):
        with pytest.raises(BenchError, match="duration"):
            parse_duration(bad)


# --- generate_properties.py: stratified by predicted difficulty --------------------------------

def _run_script(folder: Path, seed: int) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, "generate_properties.py", str(seed)], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)


def test_pool_predicts_difficulty_as_the_build_measured_it(source, graded):
    pool = np.load(graded / "data" / "pool.npz", allow_pickle=False)
    manifest = load_manifest(source)
    levels = [str(m) for m in pool["onnx"]]
    for inst in manifest["instances"]:
        assert pool["unstable_relus"][levels.index(inst["onnx"]), inst["sample_index"]] == \
            inst["unstable_relus"]
    assert pool["hardness"].shape == (pool["x"].shape[0],)
    assert np.allclose(pool["hardness"], np.where(pool["correct"], pool["unstable_relus"],
                                                  0).mean(axis=0))
    assert "equal the manifest's `unstable_relus` in 16." in (graded / "README.md").read_text()


def test_every_seed_draws_the_same_spread_of_predicted_difficulty(source, tmp_path):
    packed = pack_benchmark(source, tmp_path / "all")
    pool = np.load(packed / "data" / "pool.npz", allow_pickle=False)
    count, groups = int(pool["properties"]), int(pool["strata"])
    assert (count, groups) == (SAMPLES, SAMPLES)
    cut = script.strata(pool["correct"], pool["hardness"], count, groups)
    group_of = {int(position): g for g, members in enumerate(cut) for position in members}
    selections, spreads = [], []
    for seed in range(5):
        folder = shutil.copytree(packed, tmp_path / f"seed{seed}")
        done = _run_script(folder, seed)
        assert done.returncode == 0, done.stderr
        assert check_benchmark(folder) == []
        chosen = sorted({row[1] for row in _rows(folder)})
        positions = [int(np.flatnonzero(pool["index"] == int(rel[-11:-7]))[0]) for rel in chosen]
        selections.append(frozenset(positions))
        spreads.append(sorted(group_of[p] for p in positions))
        manifest = load_manifest(folder)
        assert all(isinstance(i["unstable_relus"], int) for i in manifest["instances"])
    assert all(spread == list(range(groups)) for spread in spreads)  # one from each group
    assert len(set(selections)) == 5  # while the samples differ


def test_select_stratified_quotas_and_candidates():
    rng = np.random.default_rng(7)
    hardness = rng.integers(0, 100, size=60).astype(float)
    hardness[[3, 4]] = np.nan  # unknown: never a candidate
    correct = np.ones((2, 60), dtype=bool)
    correct[1, 10] = False  # misclassified by one model: never a candidate
    cut = script.strata(correct, hardness, 9, 4)
    assert [len(g) for g in cut] == [14, 14, 14, 15]  # 57 candidates, larger groups last
    assert all(hardness[a].max() <= hardness[b].min() for a, b in zip(cut, cut[1:]))
    group_of = {int(p): g for g, members in enumerate(cut) for p in members}
    for seed in range(6):
        chosen = script.select_stratified(correct, hardness, 9, seed, 4)
        assert list(chosen) == sorted(chosen) and len(set(chosen)) == 9
        assert not {3, 4, 10} & set(chosen.tolist())
        # 9 = 2 + 2 + 2 + 3: the extra one from the hardest group.
        assert sorted(Counter(group_of[int(p)] for p in chosen).items()) == \
            [(0, 2), (1, 2), (2, 2), (3, 3)]
        assert np.array_equal(chosen, script.select_stratified(correct, hardness, 9, seed, 4))
    assert len(script.select_stratified(correct, hardness, 100, 0, 4)) == 57  # all of them


def test_an_older_pool_without_hardness_draws_uniformly(source, tmp_path):
    packed = pack_benchmark(source, tmp_path / "old")
    pool = dict(np.load(packed / "data" / "pool.npz", allow_pickle=False))
    for key in ("hardness", "unstable_relus", "strata"):
        pool.pop(key)
    np.savez_compressed(packed / "data" / "pool.npz", **pool)
    assert _run_script(packed, 3).returncode == 0
    chosen = sorted({row[1] for row in _rows(packed)})
    expected = script.select(pool["correct"], int(pool["properties"]), 3)
    assert chosen == [f"vnnlib/sample_{int(pool['index'][p]):04d}.vnnlib" for p in expected]
