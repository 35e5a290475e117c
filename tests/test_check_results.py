"""Trust checks over a hand-made results database."""
from __future__ import annotations

import json
import sqlite3

import pytest

from bench.collate.check_results import InstanceKey, check_results, format_report
from bench.errors import BenchError
from bench.run.results import ResultsDB
from bench.verifiers.harness import RunRecord


def _record(verifier: str, vnnlib: str, status: str, cex_check: str | None = None,
            cex_detail: str = "", benchmark: str = "b", onnx: str = "net.onnx") -> RunRecord:
    return RunRecord(
        benchmark=benchmark, root="/bench", onnx=onnx, vnnlib=vnnlib, verifier=verifier,
        verifier_version="1", timeout=60.0, status=status, reason="", wall_time=1.0,
        verifier_time=0.5, peak_memory_mb=10.0, peak_gpu_memory_mb=None, cex_check=cex_check,
        cex_detail=cex_detail, log_path=None, started_at="2026-01-01T00:00:00+00:00", host="h")


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "results.db"
    rows = [
        # p1: all agree unsat
        _record("milp", "p1.vnnlib", "unsat"), _record("marabou", "p1.vnnlib", "unsat"),
        _record("neuralsat", "p1.vnnlib", "unsat"),
        # p2: a soundness alarm: milp says unsat, marabou holds a valid (tolerance) cex
        _record("milp", "p2.vnnlib", "unsat"),
        _record("marabou", "p2.vnnlib", "sat", "correct_up_to_tolerance", "within 1e-4"),
        _record("neuralsat", "p2.vnnlib", "timeout"),
        # p3: neuralsat's sat has an invalid cex, the others say unsat: the sat is wrong
        _record("milp", "p3.vnnlib", "unsat"), _record("marabou", "p3.vnnlib", "unsat"),
        _record("neuralsat", "p3.vnnlib", "sat", "invalid", "outputs miss the region by 0.3"),
        # p4: all sat; milp's is valid, marabou reported none, neuralsat's could not be checked
        _record("milp", "p4.vnnlib", "sat", "correct", "ok"),
        _record("marabou", "p4.vnnlib", "sat", None),
        _record("neuralsat", "p4.vnnlib", "sat", "error", "counterexample check failed: boom"),
        # p5: errors and unknowns stay what they are
        _record("milp", "p5.vnnlib", "error"), _record("marabou", "p5.vnnlib", "unknown"),
        # the same file names in another benchmark are another instance
        _record("milp", "p2.vnnlib", "unsat", benchmark="other"),
    ]
    with ResultsDB(path) as db:
        for row in rows:
            db.record(row)
    return path


def test_soundness_alarm_lists_both_sides(db_path):
    report = check_results(db_path)
    assert len(report.soundness_alarms) == 1
    alarm = report.soundness_alarms[0]
    assert alarm.instance == InstanceKey("b", "net.onnx", "p2.vnnlib")
    assert alarm.unsat_by == ["milp"]
    assert [(a.verifier, a.cex_check) for a in alarm.counterexample_by] == [
        ("marabou", "correct_up_to_tolerance")]
    assert not report.ok


def test_sat_with_invalid_cex_against_unsat_is_the_wrong_one(db_path):
    report = check_results(db_path)
    assert [(w.instance.vnnlib, w.sat.verifier, w.unsat_by) for w in report.wrong_sats] == [
        ("p3.vnnlib", "neuralsat", ["marabou", "milp"])]


def test_unbacked_sats(db_path):
    report = check_results(db_path)
    found = {(u.instance.vnnlib, u.sat.verifier): u.problem for u in report.unbacked_sats}
    assert set(found) == {("p3.vnnlib", "neuralsat"), ("p4.vnnlib", "marabou"),
                          ("p4.vnnlib", "neuralsat")}
    assert found[("p4.vnnlib", "marabou")] == "no counterexample was checked"
    assert "could not be checked" in found[("p4.vnnlib", "neuralsat")]
    assert "invalid counterexample" in found[("p3.vnnlib", "neuralsat")]


def test_scores_and_counts(db_path):
    report = check_results(db_path)
    assert report.instances == 6 and report.results == 15
    assert report.verifiers == ["marabou", "milp", "neuralsat"]
    milp = report.scores["milp"]
    # p1 unsat +10, p2 unsat contradicted -150, p3 unsat +10, p4 sat valid +10, p5 error 0,
    # other/p2 unsat +10
    assert (milp.correct, milp.wrong, milp.score) == (4, 1, 40 - 150)
    assert milp.counts == {"sat": 1, "unsat": 4, "timeout": 0, "unknown": 0, "error": 1}
    marabou = report.scores["marabou"]
    # p1 +10, p2 valid sat +10, p3 +10, p4 sat without cex -150, p5 unknown 0
    assert (marabou.correct, marabou.wrong, marabou.score) == (3, 1, 30 - 150)
    neuralsat = report.scores["neuralsat"]
    # p1 +10, p2 timeout 0, p3 invalid sat -150, p4 unchecked sat -150
    assert (neuralsat.correct, neuralsat.wrong, neuralsat.score) == (1, 2, 10 - 300)
    assert neuralsat.counts["timeout"] == 1 and neuralsat.total == 4


def test_markdown(db_path):
    text = format_report(check_results(db_path))
    assert text.startswith(f"# Trust check of {db_path}")
    assert "**PROBLEMS FOUND**" in text
    assert "- **SOUNDNESS ALARM** b: net.onnx + p2.vnnlib: unsat by milp, but marabou " \
           "(correct_up_to_tolerance) found a valid counterexample" in text
    assert "sat by neuralsat is wrong (counterexample invalid" in text
    assert "| milp | -110 | 4 | 1 | 1 | 4 | 0 | 0 | 1 | 6 |" in text
    assert "| verifier | score | correct | wrong | sat | unsat | timeout | unknown | error | " \
           "total |" in text


def test_clean_database_is_ok(tmp_path):
    path = tmp_path / "clean.db"
    with ResultsDB(path) as db:
        db.record(_record("milp", "p.vnnlib", "sat", "correct"))
        db.record(_record("marabou", "p.vnnlib", "sat", "correct_up_to_tolerance"))
        db.record(_record("milp", "q.vnnlib", "unsat"))
    report = check_results(path)
    assert report.ok and report.scores["milp"].score == 20
    text = format_report(report)
    assert "**OK**" in text and "None: no unsat is contradicted" in text
    json.dumps(report.to_dict())  # plain data
    assert report.to_dict()["scores"]["milp"]["score"] == 20


def test_unknown_status_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "odd.db"
    with ResultsDB(path) as db:
        db.record({**_record("milp", "p.vnnlib", "unsat").to_dict(), "status": "maybe"})
    with pytest.raises(BenchError, match=r"'p.vnnlib', 'milp'\) has status 'maybe'"):
        check_results(path)


def test_missing_database_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="no results database"):
        check_results(tmp_path / "nothing.db")
    assert not (tmp_path / "nothing.db").exists()


def _benchmark_folder(root, correct: dict[str, bool]):
    """A folder with just a manifest: one model, one instance per property, ``correct`` as
    given (the check reads nothing else)."""
    root.mkdir()
    instances = [{"onnx": "net.onnx", "vnnlib": vnnlib, "timeout": 60.0, "level": 0,
                  "sample_index": index, "label": 3, "correct": ok}
                 for index, (vnnlib, ok) in enumerate(correct.items())]
    (root / "manifest.json").write_text(json.dumps({"format_version": 1, "instances": instances,
                                                    "models": [{"level": 0,
                                                                "onnx": "net.onnx"}]}))
    return root


def test_unsat_on_a_misclassified_sample_is_wrong_with_a_single_verifier(tmp_path):
    root = _benchmark_folder(tmp_path / "bench", {"p1.vnnlib": True, "p2.vnnlib": False,
                                                  "p3.vnnlib": False})
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        for vnnlib, status in (("p1.vnnlib", "unsat"), ("p2.vnnlib", "unsat"),
                               ("p3.vnnlib", "timeout")):
            db.record({**_record("milp", vnnlib, status).to_dict(), "root": str(root)})
    report = check_results(path)
    assert not report.ok and not report.soundness_alarms
    assert [(w.instance.vnnlib, w.verifier, w.sample_index, w.label)
            for w in report.misclassified_unsats] == [("p2.vnnlib", "milp", 1, 3)]
    milp = report.scores["milp"]
    # p1 correct unsat +10, p2 unsat on a misclassified sample -150, p3 timeout 0
    assert (milp.correct, milp.wrong, milp.score) == (1, 1, 10 - 150)
    text = format_report(report)
    assert "**PROBLEMS FOUND**" in text and "Unsat on misclassified samples (1)" in text
    assert "**WRONG UNSAT** b: net.onnx + p2.vnnlib: unsat by milp, but the model " \
           "misclassifies sample 1 (label 3)" in text
    assert report.unchecked_benchmarks == []


def test_benchmarks_without_a_manifest_are_listed_as_unchecked(db_path):
    report = check_results(db_path)
    assert [b for b, _ in report.unchecked_benchmarks] == ["b", "other"]
    assert "Not checked against misclassified samples" in format_report(report)


def test_checking_never_writes_to_the_database(tmp_path):
    # An older database: fewer columns than ResultsDB creates today, no WAL. Opening it with
    # ResultsDB would add columns; the check must leave every byte as it was.
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE results (benchmark TEXT, root TEXT, onnx TEXT, vnnlib TEXT, "
                     "verifier TEXT, status TEXT, started_at TEXT, UNIQUE (benchmark, onnx, "
                     "vnnlib, verifier))")
        conn.execute("INSERT INTO results VALUES ('b', '/nowhere', 'net.onnx', 'p.vnnlib', "
                     "'milp', 'unsat', '2026-01-01')")
    conn.close()
    before = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    report = check_results(path)
    assert report.results == 1 and report.scores["milp"].correct == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_cli_exits_1_on_a_wrong_unsat(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    root = _benchmark_folder(tmp_path / "bench", {"p.vnnlib": False})
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        db.record({**_record("milp", "p.vnnlib", "unsat").to_dict(), "root": str(root)})
    result = CliRunner().invoke(main, ["check-results", "--results", str(path)])
    assert result.exit_code == 1 and "WRONG UNSAT" in result.output
