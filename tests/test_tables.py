"""Collating a results database and a benchmark manifest into tables and plots."""
from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.build.export import ExportedModel, write_benchmark
from bench.collate.report import make_tables

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
    per_benchmark = sorted([
        "tiny-bench__crown.md", "tiny-bench__crown.csv", "tiny-bench__crown.png",
        "tiny-bench__milp.md", "tiny-bench__milp.csv", "tiny-bench__milp.png", "index.md",
    ])
    assert sorted(p.name for p in written if p.parent == out
                  and not p.name.startswith("report.")) == per_benchmark
    assert {out / "report.md", out / "report.html"} <= set(written)
    assert all(p.is_file() and out in p.parents for p in written)
    index = (out / "index.md").read_text()
    assert "](report.md)" in index.split("\n## ")[0]  # the report is linked at the top
    for name in per_benchmark:
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
    # No result at all: no interval, but the whole band of correctly classified samples.
    assert milp1["verified_ci_low"] == milp1["verified_ci_high"] == ""
    assert (milp1["band_low"], milp1["band_high"]) == ("0.0", "66.67")


def test_csv_content(tables):
    out, _ = tables
    assert (out / "tiny-bench__crown.csv").read_text() == (
        "level,remain_ratio,samples,standard_accuracy,verified_accuracy,verified_ci_low,"
        "verified_ci_high,band_low,band_high,mean_time_s,"
        "peak_memory_mb,sat,unsat,timeout,unknown,error,missing,unsat_misclassified,"
        "pairs,delta_pp,gained,lost,p_value,p_holm\n"
        # Wilson 2/3 = [20.77, 93.85]; nothing undecided; level 0 is not compared with itself.
        "0,1.0,3,66.67,66.67,20.77,93.85,66.67,66.67,4.0,250.0,0,3,0,0,0,0,1,,,,,,\n"
        # The timeout on a correct sample widens the band; the error on the misclassified one
        # does not. Sample 1 was verified at level 0 only: one pair lost, McNemar p = 1.
        "1,0.8,3,66.67,33.33,6.15,79.23,33.33,66.67,20.667,100.0,0,1,1,0,1,0,0,"
        "3,-33.33,0,1,1.0,1.0\n"
    )


def test_markdown_reports_statuses_and_warnings(tables):
    out, _ = tables
    text = (out / "tiny-bench__crown.md").read_text()
    assert "# tiny-bench: crown" in text and "version 1.2" in text
    assert "| 1 | 80.0% | 3 | 66.7 | 33.3 | 6.2–79.2 | 33.3–66.7 | 20.67 | 100 | 0 | 1 | 1 | 0 " \
           "| 1 | 0 | 0 | -33.3 | 0 / 1 | 1.000 | 1.000 |" in text
    assert "| 0 | 100.0% | 3 | 66.7 | 66.7 | 20.8–93.8 | 66.7–66.7 |" in text
    assert "Wilson" in text and "McNemar" in text and "Undecided band" in text
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


# --- summaries over seeds, figures and the report (aggregate.py, render.py, figures.py) -----
#
# Two pruners (imp: unstructured, with every per-level metric; slim: structured, without PGD or
# instability metrics) x two seeds x three levels, four correctly classified samples each, so
# verified accuracy = 25 % per unsat. The manifests are written directly: the tables read
# nothing else of a benchmark folder.

N_SAMPLES = 4
SEEDS = (100, 200)
# (pruner, seed) -> per level: (unsat count, remain ratio, standard accuracy); imp also has
# pgd accuracy, instability, pre-BN instability and unstable ratio.
PLAN = {
    ("imp", 100): [(2, 1.0, 0.80), (3, 0.8, 0.85), (2, 0.64, 0.78)],
    ("imp", 200): [(2, 1.0, 0.82), (4, 0.8, 0.83), (3, 0.64, 0.80)],
    ("slim", 100): [(2, 1.0, 0.80), (2, 0.89, 0.82), (3, 0.79, 0.81)],
    ("slim", 200): [(2, 1.0, 0.82), (3, 0.90, 0.82), (2, 0.80, 0.81)],
}
IMP_EXTRA = {100: [(0.60, 10.0, 20.0, 0.30), (0.65, 6.0, 12.0, 0.20), (0.55, 4.0, 8.0, 0.10)],
             200: [(0.62, 12.0, 24.0, 0.32), (0.66, 8.0, 16.0, 0.22), (0.58, 5.0, 10.0, 0.12)]}
# Wall time per instance: per (pruner, seed), the same at every level.
WALL = {("imp", 100): 2.0, ("slim", 100): 4.0, ("imp", 200): 6.0, ("slim", 200): 8.0}
TRAINING = "fast_ibp"  # an underscore, to check the LaTeX escapes
SLUG = f"fmnist__cnn7__{TRAINING}__eps2-255__crown"


def fake_manifest(pruner: str, seed: int, config_extra: dict | None = None) -> dict:
    structured = pruner == "slim"
    models, instances, files = [], [], {}
    for level, (_, remain, std) in enumerate(PLAN[(pruner, seed)]):
        onnx = f"onnx/level_{level:02d}.onnx"
        entry = {"onnx": onnx, "level": level, "remain_ratio": remain, "clean_accuracy": std - 0.1,
                 "standard_accuracy": std, "layer_sparsity": {}, "seed": seed,
                 "pruner": pruner, "structured": structured}
        if pruner == "imp":
            pgd, instability, pre_bn, unstable = IMP_EXTRA[seed][level]
            entry.update(pgd_accuracy=pgd, instability=instability, instability_pre_bn=pre_bn,
                         unstable_ratio=unstable, unstable_ratio_per_layer=[unstable])
        models.append(entry)
        # Both pruners train the same dense network per seed (no regularizer).
        files[onnx] = f"dense-{seed}" if level == 0 else f"{pruner}-{seed}-{level}"
        instances += [{"onnx": onnx, "vnnlib": f"vnnlib/sample_{i:04d}.vnnlib", "timeout": 60.0,
                       "level": level, "sample_index": i, "label": 0, "correct": True}
                      for i in range(N_SAMPLES)]
    config = {"dataset": "fmnist", "model": "cnn7", "training": TRAINING, "pruner": pruner,
              "eps": 2 / 255, "seed": seed, "out": "instances", **(config_extra or {})}
    return {"format_version": 1, "benchmark": f"{pruner}-{seed}",
            "created": "2026-11-25T09:00:00+00:00", "suite_version": "0.1.0",
            "config": config, "dataset": {"name": "fmnist"}, "eps": 2 / 255, "timeout": 60.0,
            "models": models, "instances": instances, "files": files}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Path, list[Path]]:
    from bench.run.results import ResultsDB

    base = tmp_path_factory.mktemp("seeded")
    rows = []
    for (pruner, seed), plan in PLAN.items():
        root = base / "instances" / f"{pruner}-{seed}"
        root.mkdir(parents=True)
        (root / "manifest.json").write_text(json.dumps(fake_manifest(pruner, seed)))
        for level, (unsat, _, _) in enumerate(plan):
            for sample in range(N_SAMPLES):
                rows.append({
                    **result(root, level, sample, "crown", "unsat" if sample < unsat else "timeout",
                             wall_time=WALL[(pruner, seed)], memory=100.0 * (level + 1)),
                    "peak_gpu_memory_mb": 1000.0 - 100 * level, "suite_version": "0.1.0",
                    "device": "cuda:0 (NVIDIA H100)", "params_hash": "abc123",
                    "host": f"host-{seed}",
                    "started_at": f"2026-11-2{6 if seed == 100 else 7}T10:00:0{level}+00:00"})
    with ResultsDB(base / "results.db") as db:
        for row in rows:
            db.record(row)
    out = base / "tables"
    return out, make_tables(base / "results.db", out)


def read_summary(out: Path) -> dict[str, dict]:
    return {row["method"]: row for row in read_csv(out / "summary" / f"{SLUG}.csv")}


def test_summary_means_and_stds_over_seeds(seeded):
    out, _ = seeded
    rows = read_summary(out)
    assert list(rows) == ["Dense", "imp", "slim"]  # one Dense: both share level 0's network
    dense, imp, slim = rows["Dense"], rows["imp"], rows["slim"]
    assert (dense["level"], dense["seeds"], dense["verified_accuracy"]) == ("0", "2", "50.0")
    assert dense["verified_accuracy_std"] == "0.0"
    assert dense["standard_accuracy"] == "81.0" and dense["standard_accuracy_std"] == "1.4142"
    assert dense["adversarial_accuracy"] == "61.0"  # slim has no PGD: imp's alone
    # Dense time pools both pruners' level 0 within a seed (3 s, 7 s), then over seeds.
    assert (dense["mean_time_s"], dense["mean_time_s_std"]) == ("5.0", "2.8284")
    # imp: level 1 verifies 75 % and 100 %.
    assert (imp["level"], imp["verified_accuracy"], imp["verified_accuracy_std"]) == \
        ("1", "87.5", "17.6777")
    assert (imp["remain_ratio"], imp["remain_ratio_std"]) == ("0.8", "0.0")
    assert (imp["standard_accuracy"], imp["adversarial_accuracy"]) == ("84.0", "65.5")
    assert (imp["mean_time_s"], imp["type"]) == ("4.0", "unstructured")
    assert slim["type"] == "structured"
    assert slim["adversarial_accuracy"] == slim["adversarial_accuracy_std"] == ""
    assert {r["verifier_version"] for r in rows.values()} == {"1.2"}
    assert imp["host"] == "host-100; host-200" and imp["device"] == "cuda:0 (NVIDIA H100)"


def test_best_level_breaks_ties_towards_the_sparser_level(seeded):
    out, _ = seeded
    slim = read_summary(out)["slim"]
    # Levels 1 and 2 both verify 62.5 % on average; level 2 keeps fewer channels.
    assert (slim["level"], slim["verified_accuracy"]) == ("2", "62.5")
    assert (slim["remain_ratio"], slim["remain_ratio_std"]) == ("0.795", "0.0071")
    levels = {(r["method"], r["level"]): r for r in
              read_csv(out / "levels" / f"{SLUG}.csv")}
    assert [levels[("slim", lv)]["best"] for lv in "012"] == ["False", "False", "True"]
    assert [levels[("imp", lv)]["best"] for lv in "012"] == ["False", "True", "False"]


def test_certified_lottery_tickets_need_a_significant_improvement(seeded):
    out, _ = seeded
    levels = {(r["method"], r["level"]): r for r in
              read_csv(out / "levels" / f"{SLUG}.csv")}
    # Dense: std 81 %, ver 50 %. imp level 1 verifies 3 more samples than its dense level and
    # none fewer (seed 100: sample 2; seed 200: samples 2, 3), and its std is higher, yet three
    # discordant pairs cannot show a difference: McNemar p = 2 / 2^3 = 0.25, Holm over imp's
    # two pruned levels 0.5. No star anywhere at 4 samples x 2 seeds.
    imp1 = levels[("imp", "1")]
    assert (imp1["pairs"], imp1["gained"], imp1["lost"]) == ("8", "3", "0")
    assert (imp1["delta_pp"], imp1["p_value"], imp1["p_holm"]) == ("37.5", "0.25", "0.5")
    assert imp1["pairs_for_80_power"] == "19"  # Connor: (1.96·√.375 + .84·√(.375-.375²))²/.375²
    assert float(imp1["delta_ci_low"]) <= 37.5 <= float(imp1["delta_ci_high"])
    assert not {key for key, row in levels.items() if row["lottery_ticket"] == "True"}
    assert levels[("imp", "0")]["p_value"] == ""  # the dense level is not compared with itself
    rows = read_summary(out)
    assert (rows["Dense"]["lottery_ticket"], rows["imp"]["lottery_ticket"]) == ("False", "False")
    markdown = (out / "summary" / f"{SLUG}.md").read_text()
    assert "| imp | unstructured | 1 | 0.80 ± 0.00 | 84.0 ± 1.4 | 65.5 ± 0.7 | 87.5 ± 17.7 | " \
           "52.9–97.8 | 87.5–100.0 | +37.5 [" in markdown
    assert "| 0.500 | 4.00 ± 2.83 | 2 |  |" in markdown
    # The Dense row pools the seeds once each (imp and slim share the dense network): Wilson
    # over 2 seeds x 4 samples, 4 verified; every timeout is on a correct sample.
    assert "| Dense |  | 0 | 1.00 ± 0.00 | 81.0 ± 1.4 | 61.0 ± 1.4 | 50.0 ± 0.0 | 21.5–78.5 | " \
           "50.0–100.0 |  |  | 5.00 ± 2.83 | 2 |  |" in markdown


def test_missing_metrics_render_as_a_dash(seeded):
    out, _ = seeded
    markdown = (out / "summary" / f"{SLUG}.md").read_text()
    slim = next(line for line in markdown.splitlines() if line.startswith("| slim "))
    assert slim.split(" | ")[5] == "—"  # adv
    per_level = (out / "levels" / f"{SLUG}.md").read_text()
    slim0 = next(line for line in per_level.splitlines() if line.startswith("| slim | 0 "))
    assert slim0.count("—") == 6  # adv, IBP, CROWN ver, instability, pre-BN, unstable ratio
    imp1 = next(line for line in per_level.splitlines() if line.startswith("| imp | 1 "))
    assert imp1.count("—") == 2 and "| 7 ± 1.414 | 14 ± 2.828 | 0.210 ± 0.014 |" in imp1
    assert read_summary(out)["slim"]["adversarial_accuracy"] == ""  # CSV: empty, not a dash


def test_latex_is_booktabs_and_escaped(seeded):
    from bench.collate.render import latex_escape

    out, _ = seeded
    tex = (out / "summary" / f"{SLUG}.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"std (\%)" in tex and r"fast\_ibp" in tex and "fast_ibp" not in tex.replace(
        r"\label{tab:fmnist:cnn7:fast_ibp", "")
    assert r"87.5 $\pm$ 17.7" in tex and r"$\star$ \\" in tex
    assert "±" not in tex and "★" not in tex and "—" not in tex
    assert latex_escape("a_b & 50% #1 {x} ~ ^ $") == \
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \$"


def test_figures_are_pngs(seeded):
    out, written = seeded
    figures = sorted(p.name for p in written if p.parent == out / "figures")
    assert figures == sorted([f"verified__{SLUG}.png", f"cost__{SLUG}.png",
                              f"instability__{SLUG.removesuffix('__crown')}.png",
                              f"unstable_ratio__{SLUG.removesuffix('__crown')}.png"])
    for name in figures:
        path = out / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def links(text: str, pattern: str) -> list[str]:
    return [link for link in re.findall(pattern, text) if not link.startswith("http")]


def test_report_links_resolve_and_carry_provenance(seeded):
    out, written = seeded
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    md_links = links(markdown, r"\]\(([^)]+)\)")
    html_links = links(html, r'(?:href|src)="([^"]+)"')
    assert set(md_links) == set(html_links)
    for link in md_links:
        assert (out / link).is_file(), link
    # Every table and figure is linked from the report.
    linked = {(out / link).resolve() for link in md_links}
    assert {p.resolve() for p in written if p.name not in ("report.md", "report.html")} <= linked
    for text in ("crown", "1.2", "abc123", "host-100", "host-200", "cuda:0 (NVIDIA H100)",
                 "0.1.0", "2026-11-26T10:00:00+00:00", "2026-11-27T10:00:02+00:00"):
        assert text in markdown and text in html
    # Result counts per status on host-100 (seed 100): unsat 2+3+2 (imp) + 2+2+3 (slim).
    assert "| crown | 1.2 | abc123 | 0.1.0 | host-100 | cuda:0 (NVIDIA H100) | 24 | 0 | 14 | 10 " \
        in markdown
    index = (out / "index.md").read_text()
    assert index.index("](report.md)") < index.index("## ")


def test_build_variants_are_not_averaged_as_seeds():
    from bench.collate.aggregate import make_groups, make_run, summary_rows

    runs = [make_run(None, fake_manifest("imp", seed, {"prune_rate": rate}), f"imp-{seed}-{rate}")
            for seed in SEEDS for rate in (0.2, 0.5)]
    groups = make_groups(runs)
    assert [(g.label, sorted(r.seed for r in g.runs)) for g in groups] == [
        ("imp (prune_rate=0.2)", ["100", "200"]), ("imp (prune_rate=0.5)", ["100", "200"])]
    # Same seeds, same level-0 files: one Dense row for both.
    assert [r.method for r in summary_rows(groups)][:2] == ["Dense", "imp (prune_rate=0.2)"]

    other = fake_manifest("slim", 100)
    other["files"]["onnx/level_00.onnx"] = "regularized"
    groups = make_groups([make_run(None, fake_manifest("imp", 100), "imp-100"),
                          make_run(None, other, "slim-100")])
    assert [r.method for r in summary_rows(groups) if r.dense] == ["Dense (imp)", "Dense (slim)"]


def test_eps_text():
    from bench.collate.aggregate import eps_text

    assert [eps_text(e) for e in (2 / 255, 8 / 255, 0.1, 0.2, 0.05)] == \
        ["2/255", "8/255", "0.1", "0.2", "0.05"]


def test_seeds_are_grouped_by_the_experiment_hash():
    from bench.collate.aggregate import make_groups, make_run

    def with_experiment(pruner, seed, name, digest, extra=None):
        manifest = fake_manifest(pruner, seed, extra)
        manifest["experiment"] = {"name": name, "hash": digest, "seed": seed}
        return make_run(None, manifest, f"{name}-{seed}")

    # Seeds of one experiment share the hash even where the flat config differs in a field
    # that is not part of the experiment (the fallback would split them); two experiments of
    # one name stay apart, labelled with their hash.
    runs = [with_experiment("imp", 100, "imp-nrs", "aaaa1111bbbb", {"out": "a"}),
            with_experiment("imp", 200, "imp-nrs", "aaaa1111bbbb", {"note": "x"}),
            with_experiment("imp", 100, "imp-nrs", "cccc2222dddd"),
            with_experiment("slim", 100, "slimming", "eeee3333ffff")]
    groups = make_groups(runs)
    assert [(g.label, sorted(r.seed for r in g.runs)) for g in groups] == [
        ("imp-nrs (aaaa1111)", ["100", "200"]), ("imp-nrs (cccc2222)", ["100"]),
        ("slimming", ["100"])]
    # Without the hash the same manifests fall back to pruner and build options.
    fallback = make_groups([make_run(None, fake_manifest("imp", 100, {"note": "x"}), "a"),
                            make_run(None, fake_manifest("imp", 200, {"note": "x"}), "b")])
    assert [(g.label, len(g.runs)) for g in fallback] == [("imp", 2)]


def test_grouped_configuration_is_read_for_the_setting():
    from bench.collate.aggregate import make_run, setting_of

    manifest = fake_manifest("imp", 100)
    manifest["config"] = {"data": {"dataset": "mnist"}, "model": {"model": "cnn4"},
                          "training": {"training": "crown-ibp"}, "pruning": {"pruner": "imp"}}
    run = make_run(None, manifest, "imp-100")
    assert setting_of(run, "milp").title() == "mnist, cnn4, crown-ibp, ε = 2/255, milp"
    assert run.pruner == "imp" and run.seed == "100"


def _level(level, std, comparison=None):
    from bench.collate.aggregate import LevelStats, Stat

    return LevelStats(level, 1, {"standard_accuracy": Stat(std, None, 1),
                                 "verified_accuracy": Stat(50.0, None, 1)},
                      comparison=comparison)


def _comparison(gained, lost, p_holm):
    from bench.collate.aggregate import LevelComparison

    pairs = 100
    return LevelComparison(1, pairs, gained, lost, 100.0 * (gained - lost) / pairs,
                           (0.0, 1.0), p_holm, p_holm, 0.5, 10)


def test_lottery_ticket_rule():
    from bench.collate.aggregate import lottery_tickets

    levels = {
        0: _level(0, 80.0),
        1: _level(1, 80.0, _comparison(12, 1, 0.01)),  # std ties the dense one: a ticket
        2: _level(2, 82.0, _comparison(12, 1, 0.05)),  # p_holm = alpha: still significant
        3: _level(3, 82.0, _comparison(12, 1, 0.051)),  # better, not significantly
        4: _level(4, 79.9, _comparison(12, 1, 0.001)),  # lower standard accuracy
        5: _level(5, 85.0, _comparison(1, 12, 0.001)),  # significantly *worse*
        6: _level(6, 85.0),  # never compared (no paired results)
    }
    assert lottery_tickets(levels) == {1, 2}
    del levels[0]
    assert lottery_tickets(levels) == set()  # no dense level, no ticket


def test_headline_sentences():
    from bench.collate.aggregate import Group, Setting
    from bench.collate.report import headline

    setting = Setting("mnist", "cnn", "crown-ibp", 0.1, "milp")
    group = Group("imp", "imp", False, [])
    group.levels = {0: _level(0, 80.0), 1: _level(1, 81.0, _comparison(12, 1, 0.01))}
    group.best = 1
    text = headline(group, setting)
    assert text.startswith("**imp** (mnist, cnn, crown-ibp, ε = 0.1, milp): at its best level")
    assert "On the same 100 samples (1 seed), Δ = +11.0 pp (95% CI 0.0 to +1.0): " \
           "significantly higher" in text
    assert "Holm-adjusted p = 0.010" in text
    group.levels[1] = _level(1, 81.0, _comparison(3, 1, 0.6))
    text = headline(group, setting)
    assert "no significant difference at 100 samples" in text
    assert "would need about 10 paired samples" in text and "power at 100: 50%" in text
    assert "have no result yet" not in text
    group.levels[1].missing = 3
    assert "3 instance(s) of these two levels have no result yet" in headline(group, setting)
    group.levels[1] = _level(1, 81.0, None)
    assert "nothing to compare" in headline(group, setting)
