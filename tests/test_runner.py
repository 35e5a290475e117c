"""Reading benchmark folders and running a verifier over them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.run.results import ResultsDB
from bench.formats.folder import find_benchmarks, read_instances
from bench.run.runner import run_benchmarks
from bench.verifiers.marabou import Marabou

from paths import FIXTURES  # noqa: E402


@pytest.fixture
def benchmark(tmp_path) -> Path:
    folder = tmp_path / "benchmarks" / "test"
    shutil.copytree(FIXTURES, folder)
    return folder


def test_read_instances(benchmark):
    (benchmark / "instances.csv").write_text(
        "test_nano.onnx,test_nano.vnnlib,60\n\n  test_sat.onnx , test_prop.vnnlib , 12.5 \n\n")
    instances = read_instances(benchmark)
    assert [(i.onnx, i.vnnlib, i.timeout) for i in instances] == [
        ("test_nano.onnx", "test_nano.vnnlib", 60.0), ("test_sat.onnx", "test_prop.vnnlib", 12.5)]
    assert all(i.benchmark == "test" and i.root == benchmark.resolve() for i in instances)
    assert instances[1].onnx_path.is_file()


@pytest.mark.parametrize("content, line, message", [
    ("a.onnx,b.vnnlib,60\na.onnx,b.vnnlib\n", 2, "expected 'onnx,vnnlib,timeout'"),
    ("a.onnx,b.vnnlib,60,extra\n", 1, "expected 'onnx,vnnlib,timeout'"),
    ("a.onnx,b.vnnlib,soon\n", 1, "is not a number"),
    ("\na.onnx,b.vnnlib,-1\n", 2, "must be a finite number of seconds above 0"),
    (",b.vnnlib,60\n", 1, "expected 'onnx,vnnlib,timeout'"),
])
def test_malformed_instances_csv(benchmark, content, line, message):
    (benchmark / "instances.csv").write_text(content)
    with pytest.raises(BenchError, match=message) as err:
        read_instances(benchmark)
    assert f"instances.csv, line {line}" in str(err.value)


def test_find_benchmarks(benchmark, tmp_path):
    assert find_benchmarks(benchmark) == [benchmark]
    second = benchmark.parent / "another"
    second.mkdir()
    (second / "instances.csv").write_text("")
    (benchmark.parent / "not_a_benchmark").mkdir()
    assert find_benchmarks(benchmark.parent) == [second, benchmark]
    for empty in (tmp_path / "empty", tmp_path / "nowhere"):
        if empty.name == "empty":
            empty.mkdir()
        with pytest.raises(BenchError, match="bench build-instances") as err:
            find_benchmarks(empty)
        assert str(empty) in str(err.value)


@pytest.mark.skipif(not Marabou().is_installed(), reason="Marabou is not installed")
def test_run_then_rerun_skips(benchmark, tmp_path):
    results = tmp_path / "out" / "results.sqlite"
    summary = run_benchmarks([benchmark], "marabou", results, progress=False)
    assert summary.counts == {"unsat": 4, "sat": 1} and summary.skipped == 0
    assert summary.verifier_installed
    assert Path(summary.log_dir) == tmp_path / "out" / "results_logs"
    rows = ResultsDB(results).rows(benchmark="test", verifier="marabou")
    assert len(rows) == 5
    sat = [r for r in rows if r["status"] == "sat"]
    assert sat[0]["onnx"] == "test_sat.onnx" and sat[0]["cex_check"] in (
        "correct", "correct_up_to_tolerance")
    assert all(Path(r["log_path"]).is_dir() for r in rows)

    again = run_benchmarks([benchmark], "marabou", results, progress=False)
    assert again.counts == {} and again.skipped == 5

    forced = run_benchmarks([benchmark], "marabou", results, progress=False, rerun=True,
                            timeout=30)
    assert forced.run == 5 and forced.skipped == 0
    assert {r["timeout"] for r in ResultsDB(results).rows()} == {30.0}


@pytest.mark.skipif(not Marabou().is_installed(), reason="Marabou is not installed")
def test_errors_are_retried_and_one_failure_does_not_stop_the_run(benchmark, tmp_path):
    results = tmp_path / "results.sqlite"
    # A model the tool cannot load (a missing one is refused before any tool starts).
    (benchmark / "broken.onnx").write_bytes(b"not a model")
    (benchmark / "instances.csv").write_text(
        "broken.onnx,test_prop.vnnlib,30\ntest_unsat.onnx,test_prop.vnnlib,30\n")
    summary = run_benchmarks([benchmark], "marabou", results, progress=False,
                             log_dir=tmp_path / "logs")
    assert summary.counts == {"error": 1, "unsat": 1}
    assert (tmp_path / "logs").is_dir()
    again = run_benchmarks([benchmark], "marabou", results, progress=False)
    assert again.counts == {"error": 1} and again.skipped == 1


def test_verifier_not_installed_records_every_instance(benchmark, tmp_path, monkeypatch):
    monkeypatch.setattr(Marabou, "executable", "no-such-Marabou")
    results = tmp_path / "results.sqlite"
    summary = run_benchmarks([benchmark], "marabou", results, progress=False)
    assert summary.counts == {"error": 5} and not summary.verifier_installed
    assert summary.install_hint.startswith("pip install maraboupy")
    assert {r["reason"] for r in ResultsDB(results).rows()} == {summary.install_hint}


def test_unknown_verifier(benchmark, tmp_path):
    with pytest.raises(BenchError, match="unknown verifier"):
        run_benchmarks([benchmark], "no-such-tool", tmp_path / "r.sqlite", progress=False)


def test_summary_text():
    from bench.run.runner import RunSummary

    summary = RunSummary(counts={"unsat": 4, "sat": 1}, skipped=2, verifier="marabou",
                         verifier_installed=False, install_hint="pip install it",
                         results_path="r.db", log_dir="r_logs")
    assert str(summary) == ("marabou: 5 run (sat 1, unsat 4), 2 skipped (already decided); "
                            "results in r.db, logs in r_logs\nmarabou is not installed: "
                            "pip install it")


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-1", "0", "soon", "1e9"])
def test_bench_run_refuses_a_timeout_that_disables_the_hard_limit(benchmark, tmp_path, value):
    from click.testing import CliRunner

    from bench.cli import main

    result = CliRunner().invoke(main, ["run", "--instances", str(benchmark), "--results",
                                       str(tmp_path / "r.db"), "--timeout", value, "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --timeout: "), result.output
    assert not (tmp_path / "r.db").exists()  # refused before anything was created
    with pytest.raises(BenchError, match="--timeout: timeout "):
        run_benchmarks([benchmark], "milp", tmp_path / "r.db", timeout=float(value)
                       if value != "soon" else value, progress=False)


def test_milp_is_the_default_verifier():
    from click.testing import CliRunner

    from bench.cli import main

    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "[default: milp]" in " ".join(help_text.split())


def test_compressed_instance_files_are_inflated_and_broken_ones_never_reach_the_tool(
        tmp_path, monkeypatch):
    import gzip

    import fake_verifier as fv

    ledger = tmp_path / "ledger.txt"
    for name, value in fv.plugin_env(ledger).items():
        monkeypatch.setenv(name, value)
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0), ("unknown", 0.0)])
    good, broken = folder / "prop_0_000.vnnlib", folder / "prop_0_001.vnnlib"
    good.with_name(good.name + ".gz").write_bytes(gzip.compress(good.read_bytes()))
    broken.with_name(broken.name + ".gz").write_bytes(gzip.compress(broken.read_bytes())[:20])
    good.unlink()
    broken.unlink()
    (folder / "instances.csv").write_text("net0.onnx,prop_0_000.vnnlib.gz,30\n"
                                          "net0.onnx,prop_0_001.vnnlib.gz,30\n")
    summary = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False)
    assert summary.counts == {"unsat": 1, "error": 1}
    rows = {row["vnnlib"]: row for row in ResultsDB(tmp_path / "r.db").rows()}
    assert rows["prop_0_000.vnnlib.gz"]["status"] == "unsat"  # the tool read the plain copy
    assert rows["prop_0_001.vnnlib.gz"]["reason"].startswith("cannot use the instance's files")
    started = [name for event, name in fv.read_ledger(ledger) if event == "start"]
    assert len(started) == 1 and started[0].endswith("-prop_0_000.vnnlib")  # the plain copy
    # (the broken one never reached the tool)
    assert list((tmp_path / "r_cache").rglob("*prop_0_000.vnnlib"))  # beside the logs


def test_a_database_that_fails_mid_run_is_one_line_and_keeps_the_earlier_rows(tmp_path,
                                                                             monkeypatch):
    import sqlite3

    import fake_verifier as fv

    for name, value in fv.plugin_env().items():
        monkeypatch.setenv(name, value)
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 3)
    results = tmp_path / "r.db"
    real_record = ResultsDB.record
    written = []

    def record_until_full(self, result, **kwargs):
        if len(written) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real_record(self, result, **kwargs)
        written.append(result)

    monkeypatch.setattr(ResultsDB, "record", record_until_full)
    with pytest.raises(BenchError) as info:
        run_benchmarks([folder], fv.NAME, results, progress=False)
    assert str(results) in str(info.value) and "disk is full" in str(info.value)
    assert "\n" not in str(info.value)
    assert len(ResultsDB(results).rows()) == 1
