"""Difficulty from measurements, hardness vs instability, and the views verifier authors read."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import pytest
import torch
from click.testing import CliRunner

from bench.build.export import ExportedModel, write_benchmark
from bench.collate import hardness, stats
from bench.collate.difficulty import (REFERENCE, Thresholds, assess_benchmark, assess_results,
                                      hardness_score, read_results_rows, solve_time)
from bench.collate.report import make_tables
from bench.errors import BenchError
from bench.formats.folder import load_manifest
from bench.run.results import COLUMNS, ResultsDB
from test_tables import always_class_0  # predicts class 0: labels (0, 0, 0, 1, 0) make
#                                          sample 3 the one misclassified

TIMEOUT = 60.0
UNSTABLE = {0: [10, 20, 30, 0, 40], 1: [5, 6, 7, 8, 9]}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instances") / "graded-bench"
    dataset = {"name": "tiny", "test_order": "as stored", "mean": (0.5,), "std": (0.25,),
               "input_shape": (1, 6, 6), "num_classes": 3}
    models = [ExportedModel(level=level, model=always_class_0(level), remain_ratio=1 - level / 5,
                            clean_accuracy=0.7, layer_sparsity={},
                            per_sample={"unstable_relus": UNSTABLE[level],
                                        "unstable_relus_ibp": [2 * u for u in UNSTABLE[level]]})
              for level in (0, 1)]
    torch.manual_seed(0)
    write_benchmark(root, {"eps": 0.05}, dataset, models, torch.rand(5, 1, 6, 6),
                    torch.tensor([0, 0, 0, 1, 0]), list(range(5)), eps=0.05, timeout=TIMEOUT)
    return root


def row(root: Path, level: int, sample: int, verifier: str, status: str, wall: float,
        decided_by: str | None = None, cex: str | None = None, started: str = "01",
        **extra) -> dict:
    return {**dict.fromkeys(COLUMNS), "benchmark": root.name, "root": str(root),
            "onnx": f"onnx/level_{level:02d}.onnx", "vnnlib": f"vnnlib/sample_{sample:04d}.vnnlib",
            "verifier": verifier, "status": status, "wall_time": wall, "timeout": TIMEOUT,
            "decided_by": decided_by, "cex_check": cex,
            "started_at": f"2026-11-{started}T10:00:00+00:00", **extra}


def write(path: Path, rows: list[dict]) -> Path:
    with ResultsDB(path) as db:
        for r in rows:
            db.record(r)
    return path


@pytest.fixture(scope="module")
def databases(root, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("db")
    first = [
        # (0, 0): a cascade's CROWN bounds decide it: trivial.
        row(root, 0, 0, "milp", "unsat", 1.0),
        row(root, 0, 0, "cascade", "unsat", 0.2, "bounds:CROWN"),
        # (0, 1): 2 s of 60 (<= 5 %): easy; the cascade's start-up does not count.
        row(root, 0, 1, "milp", "unsat", 2.0),
        row(root, 0, 1, "cascade", "unsat", 2.5, "verifier", startup_time=0.4),
        # (0, 2): sat in 10 s: medium; the second database brings a faster cascade answer.
        row(root, 0, 2, "milp", "sat", 10.0, cex="correct"),
        row(root, 0, 2, "cascade", "timeout", 60.5, "verifier"),
        # (0, 3): misclassified sample: trivial, sat.
        row(root, 0, 3, "milp", "sat", 0.5, cex="correct"),
        # (0, 4): a sat without a valid counterexample decides nothing: open.
        row(root, 0, 4, "milp", "sat", 3.0, cex="invalid"),
        # (1, 0): 20 s: hard; the cascade's verifier stage is no cheap stage.
        row(root, 1, 0, "milp", "unsat", 20.0),
        row(root, 1, 0, "cascade", "unsat", 30.0, "verifier:bab"),
        # (1, 1): nobody decides: open (the second database's later error does not win).
        row(root, 1, 1, "milp", "timeout", 61.0),
        row(root, 1, 1, "cascade", "unknown", 5.0, "verifier"),
        # (1, 2): unsat against a valid counterexample: disputed.
        row(root, 1, 2, "milp", "unsat", 4.0),
        row(root, 1, 2, "cascade", "sat", 1.0, "attack", cex="correct_up_to_tolerance"),
        # (1, 3): unsat on a misclassified sample: disputed.
        row(root, 1, 3, "milp", "unsat", 1.0),
        # (1, 4): no result: unmeasured.
    ]
    second = [
        row(root, 0, 2, "cascade", "sat", 2.0, "attack", cex="correct", started="02"),
        row(root, 1, 1, "milp", "error", 0.1, started="03"),
    ]
    return [write(folder / "first.db", first), write(folder / "second.db", second)]


@pytest.fixture(scope="module")
def assessed(root, databases):
    rows = read_results_rows(databases)
    return assess_benchmark(root.name, load_manifest(root), rows, root)


def by_key(assessed) -> dict:
    return {(i.level, i.sample_index): i for i in assessed.instances}


def test_classes_outcomes_and_reference_times(assessed):
    found = {key: (i.difficulty, i.outcome, i.time, i.fastest)
             for key, i in by_key(assessed).items()}
    assert found == {
        (0, 0): ("trivial", "unsat", 0.2, "cascade"),
        (0, 1): ("easy", "unsat", 2.0, "milp"),  # cascade: 2.5 - 0.4 = 2.1
        (0, 2): ("trivial", "sat", 2.0, "cascade"),  # the attack decided it: a cheap stage
        (0, 3): ("trivial", "sat", 0.5, "milp"),
        (0, 4): ("open", "undecided", None, None),
        (1, 0): ("hard", "unsat", 20.0, "milp"),
        (1, 1): ("open", "undecided", None, None),
        (1, 2): ("disputed", "disputed", None, None),
        (1, 3): ("disputed", "disputed", None, None),
        (1, 4): ("unmeasured", "none", None, None),
    }
    assert assessed.verifiers == ["cascade", "milp"]
    items = by_key(assessed)
    assert items[(0, 1)].answers["cascade"].time == pytest.approx(2.1)
    assert items[(1, 1)].answers["milp"].status == "timeout"  # a decided row beats an error


def test_disagreements_are_marked_never_resolved(assessed):
    items = by_key(assessed)
    assert "unsat by milp" in items[(1, 2)].note
    assert "valid counterexample by cascade" in items[(1, 2)].note
    assert "misclassifies" in items[(1, 3)].note
    assert "sat without a valid counterexample by milp" in items[(0, 4)].note
    assert items[(1, 2)].solved == {} and items[(1, 3)].solved == {}  # nobody solved them


def test_thresholds_are_fractions_of_the_timeout(root, databases):
    rows = read_results_rows(databases)
    strict = assess_benchmark(root.name, load_manifest(root), rows, root, Thresholds(0.01, 0.1))
    assert {k: i.difficulty for k, i in by_key(strict).items() if k in [(0, 1), (1, 0)]} == \
        {(0, 1): "medium", (1, 0): "hard"}
    with pytest.raises(BenchError, match="0 < easy < medium < 1"):
        Thresholds(0.3, 0.2)


def test_solve_time_and_predicted_hardness():
    assert solve_time({"wall_time": 5.0, "startup_time": 1.5}) == 3.5
    assert solve_time({"wall_time": 5.0, "startup_time": None}) == 5.0
    assert solve_time({"wall_time": None}) is None
    assert hardness_score({"correct": True, "unstable_relus": 17}) == 17.0
    assert hardness_score({"correct": False, "unstable_relus": 17}) == 0.0
    assert hardness_score({"correct": True}) is None  # an older manifest: unknown
    assert hardness_score({"correct": True, "unstable_relus": True}) is None


def test_results_of_another_version_of_the_benchmark_are_left_out(root, tmp_path):
    db = write(tmp_path / "old.db", [row(root, 0, 1, "milp", "unsat", 2.0,
                                         benchmark_hash="0" * 64)])
    assessed = assess_benchmark(root.name, load_manifest(root), read_results_rows([db]), root)
    assert assessed.foreign == 1
    assert by_key(assessed)[(0, 1)].difficulty == "unmeasured"


def test_no_database_is_an_error():
    with pytest.raises(BenchError, match="--results"):
        read_results_rows([])


# --- Spearman ---------------------------------------------------------------------------------

def test_spearman_against_the_textbook_formula():
    x = list(range(1, 11))
    y = [2, 1, 4, 3, 7, 8, 6, 10, 9, 5]
    # No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), sum d^2 = 42.
    rho = 1 - 6 * 42 / (10 * 99)
    result = stats.spearman(x, y)
    assert (result.n, result.rho) == (10, pytest.approx(rho))
    # Its p-value: t = rho sqrt((n - 2) / (1 - rho^2)) on 8 degrees of freedom.
    t = rho * math.sqrt(8 / (1 - rho ** 2))
    from scipy.stats import t as student

    assert result.p_value == pytest.approx(2 * student.sf(t, 8))
    assert 0.013 < result.p_value < 0.014
    assert stats.spearman([1, 2, 3, 4], [8, 6, 4, 2]).rho == pytest.approx(-1.0)
    # Ties get mean ranks: x ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    assert stats.spearman([1, 2, 2, 3], [1, 2, 3, 4]).rho == pytest.approx(0.9486832980505138)


def test_spearman_undefined_cases():
    assert stats.spearman([1, 2], [3, 4]) == stats.Correlation(2, None, None)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) == stats.Correlation(3, None, None)
    with pytest.raises(ValueError):
        stats.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        stats.spearman([1, 2, float("nan")], [1, 2, 3])


def test_hardness_rows_per_verifier_level_and_bounds(assessed):
    rows = {(r.source, r.level, r.bounds): r for r in hardness.hardness_rows(assessed)}
    # milp, level 0: decisive answers (unsat at 1 and 2 s, valid sat at 10 and 0.5 s) against
    # 10, 20, 30 and 0 unstable ReLUs; the sat without a valid counterexample is left out.
    milp0 = rows[("milp", 0, "CROWN")]
    assert (milp0.correlation.n, milp0.correlation.rho, milp0.censored) == (4, 1.0, 0)
    # milp, level 1: unsat 20 s (5 ReLUs), timeout at 60 s (6), unsat 4 s (7), unsat 1 s (8).
    milp1 = rows[("milp", 1, "CROWN")].correlation
    assert milp1.n == 4 and rows[("milp", 1, "CROWN")].censored == 1
    assert milp1.rho == pytest.approx(stats.spearman([5, 6, 7, 8], [20, 60, 4, 1]).rho)
    # IBP counts are twice the CROWN ones here: the same ranks.
    assert rows[("milp", 0, "IBP")].correlation.rho == milp0.correlation.rho
    # The virtual best: reference times, open instances at the timeout, disputed left out.
    best0 = rows[(REFERENCE, 0, "CROWN")]
    assert (best0.correlation.n, best0.censored) == (5, 1)
    assert best0.correlation.rho == pytest.approx(
        stats.spearman([10, 20, 30, 0, 40], [0.2, 2.0, 2.0, 0.5, 60.0]).rho)
    everything = rows[(REFERENCE, hardness.ALL_LEVELS, "CROWN")].correlation
    assert everything.n == 7  # 5 at level 0; level 1: the hard and the open one
    sentence = hardness.summary_sentence(assessed, list(rows.values()))
    assert "Spearman ρ" in sentence and "N = 7" in sentence and "level 0" in sentence


# --- views: report, CLI -------------------------------------------------------------------------

def test_report_has_difficulty_cactus_scores_and_hardness(root, databases, tmp_path):
    from bench.run.results import merge

    merged = tmp_path / "merged.db"
    merge(databases, merged)
    out = tmp_path / "tables"
    written = make_tables(merged, out)
    stem = out / "verifiers" / root.name
    for suffix in ("difficulty.csv", "difficulty.md", "difficulty.png", "cactus.png",
                   "hardness.md", "hardness.csv", "hardness.png"):
        assert Path(f"{stem}.{suffix}") in written
    with open(f"{stem}.difficulty.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 10
    assert {(r["level"], r["sample_index"]): r["difficulty"] for r in table}[("1", "0")] == "hard"
    first = next(r for r in table if (r["level"], r["sample_index"]) == ("0", "1"))
    assert (first["milp_status"], first["milp_time_s"], first["reference_outcome"]) == \
        ("unsat", "2.0", "unsat")
    for image in ("difficulty.png", "cactus.png", "hardness.png"):
        assert matplotlib.image.imread(f"{stem}.{image}").shape[0] > 100
    report = (out / "report.md").read_text()
    assert "For verifier authors" in report and "Spearman ρ" in report
    assert "| verifier | score | correct | wrong |" in report  # the VNN-COMP score table
    # The score table is check_results', on this benchmark: milp's unsat on (1, 2) is wrong.
    lines = report.splitlines()
    start = lines.index("| verifier | score | correct | wrong | sat | unsat | timeout | unknown "
                        "| error | total |")
    scores = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
              for line in lines[start + 2:start + 4]}
    # milp: correct (0, 0), (0, 1), (0, 2), (0, 3), (1, 0); wrong: the unsat on (1, 2) against
    # a valid counterexample and on the misclassified (1, 3), and the invalid sat on (0, 4).
    assert scores["milp"][:3] == [str(10 * 5 - 150 * 3), "5", "3"]
    assert scores["cascade"][:3] == [str(10 * 5), "5", "0"]
    hardness_md = Path(f"{stem}.hardness.md").read_text()
    assert "| milp | 0 | CROWN | 4 | 0 | +1.00 |" in hardness_md


def test_difficulty_command_reads_several_databases(root, databases, tmp_path):
    from bench.cli import main

    out = tmp_path / "difficulty"
    args = ["difficulty", "--out", str(out)]
    for db in databases:
        args += ["--results", str(db)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = (out / "index.md").read_text()
    assert root.name in text and "disputed" in text
    with open(out / f"{root.name}.difficulty.csv", newline="") as handle:
        fastest = {(r["level"], r["sample_index"]): r["fastest"] for r in csv.DictReader(handle)}
    assert fastest[("0", "2")] == "cascade"  # only the second database has that answer
    bad = CliRunner().invoke(main, ["difficulty", "--results", str(databases[0]), "--easy", "0.5",
                                    "--medium", "0.2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "easy < medium" in bad.output


def test_benchmarks_without_a_manifest_are_named_not_assessed(root, tmp_path):
    db = write(tmp_path / "lost.db", [{**row(root, 0, 0, "milp", "unsat", 1.0),
                                       "benchmark": "gone", "root": str(tmp_path / "nowhere")}])
    assessed, skipped = assess_results(read_results_rows([db]))
    assert assessed == [] and skipped[0][0] == "gone"
