"""Shards for batch schedulers, merging their databases, and showing provenance."""
from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import fake_verifier as fv
from bench.cli.run import merge as merge_command
from bench.cli.run import results as results_command
from bench.errors import BenchError
from bench.run.results import ResultsDB, describe_provenance, merge, read_rows, show
from bench.run.runner import run_benchmarks, shard_instances
from bench.shards import Shard, stable_hash
from bench.formats.folder import Instance
from bench.verifiers.harness import RunRecord


def instances(n: int, benchmarks: int = 3) -> list[Instance]:
    return [Instance(f"bench{i % benchmarks}", Path("/x"), f"onnx/level_{i % 4:02d}.onnx",
                     f"vnnlib/sample_{i:04d}.vnnlib", 60.0) for i in range(n)]


def keys(items: list[Instance]) -> list[tuple[str, str, str]]:
    return [(i.benchmark, i.onnx, i.vnnlib) for i in items]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_complete(count):
    everything = instances(200)
    shards = [keys(shard_instances(everything, f"{k}/{count}")) for k in range(1, count + 1)]
    flat = [key for shard in shards for key in shard]
    assert sorted(flat) == sorted(keys(everything)) and len(set(flat)) == len(flat)
    if count > 1:
        assert all(shards)  # 200 instances: no shard is empty


def test_shards_do_not_depend_on_order_or_on_other_instances():
    everything = instances(100)
    shuffled = random.Random(1).sample(everything, len(everything))
    for k in (1, 2, 3):
        mine = set(keys(shard_instances(everything, f"{k}/3")))
        assert set(keys(shard_instances(shuffled, f"{k}/3"))) == mine
        assert set(keys(shard_instances(everything[:40], f"{k}/3"))) == \
            mine & set(keys(everything[:40]))
    # The hash is part of the format: shard files made by one version must match another's.
    assert stable_hash("bench", "a.onnx", "p.vnnlib") == 0x4CDC33A9873817FA


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "2", "a/b", "1/2/3"])
def test_bad_shards(text):
    with pytest.raises(BenchError, match="shard"):
        Shard.parse(text)
    assert str(Shard.parse("3/4")) == "3/4"


@pytest.fixture
def plugin(monkeypatch):
    for name, value in fv.plugin_env().items():
        monkeypatch.setenv(name, value)


def test_shard_runs_merge_into_one_database_without_duplicates(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0), ("unknown", 0.0)] * 4,
                               models=2)
    parts = []
    for k in (1, 2, 3):
        summary = run_benchmarks([folder], fv.NAME, tmp_path / f"shard{k}.db", progress=False,
                                 shard=f"{k}/3")
        assert summary.shard == f"{k}/3" and f"in shard {k}/3" in str(summary)
        parts.append(tmp_path / f"shard{k}.db")
    sizes = [len(ResultsDB(p).rows()) for p in parts]
    assert sum(sizes) == 16

    target = tmp_path / "all.db"
    first = merge(parts, target)
    assert (first.inserted, first.replaced, first.kept) == (16, 0, 0)
    rows = ResultsDB(target).rows()
    assert len(rows) == 16 and len({(r["onnx"], r["vnnlib"]) for r in rows}) == 16
    # Idempotent: merging again (or a shard into the whole) changes nothing.
    second = merge(parts + [target], target)
    assert (second.inserted, second.replaced, second.kept) == (0, 0, 16)
    assert second.skipped_sources == [str(target)]
    assert ResultsDB(target).rows() == rows
    # The merged database is complete: a run over everything has nothing left to do.
    assert run_benchmarks([folder], fv.NAME, target, progress=False).skipped == 16


def _record(**changes) -> RunRecord:
    base = RunRecord(
        benchmark="b", root="/b", onnx="net.onnx", vnnlib="p.vnnlib", verifier="v",
        verifier_version="1.0", timeout=60.0, status="unsat", reason="", wall_time=1.0,
        verifier_time=None, peak_memory_mb=1.0, peak_gpu_memory_mb=None, cex_check=None,
        cex_detail="", log_path=None, started_at="2025-01-01T10:00:00+00:00", host="a")
    return replace(base, **changes)


def _db(path: Path, *records: RunRecord) -> Path:
    with ResultsDB(path) as db:
        for record in records:
            db.record(record)
    return path


def test_merge_keeps_the_decided_then_the_newer_row(tmp_path):
    early, late = "2025-01-01T10:00:00+00:00", "2025-01-02T10:00:00+00:00"
    target = _db(tmp_path / "target.db",
                 _record(vnnlib="a", status="error", started_at=late),  # error, newer
                 _record(vnnlib="b", status="unsat", started_at=early),
                 _record(vnnlib="c", status="timeout", started_at=late),
                 _record(vnnlib="d", status="unsat", started_at=early, host="target"))
    source = _db(tmp_path / "source.db",
                 _record(vnnlib="a", status="unknown", started_at=early),  # decided beats error
                 _record(vnnlib="b", status="sat", started_at=late),  # newer decided wins
                 _record(vnnlib="c", status="unsat", started_at=early),  # older loses
                 _record(vnnlib="d", status="unsat", started_at=early, host="source"),  # tie
                 _record(vnnlib="e", status="error", started_at=early))  # new key
    summary = merge([source], target)
    assert (summary.inserted, summary.replaced, summary.kept) == (1, 2, 2)
    got = {r["vnnlib"]: (r["status"], r["host"]) for r in read_rows(target)}
    assert got == {"a": ("unknown", "a"), "b": ("sat", "a"), "c": ("timeout", "a"),
                   "d": ("unsat", "target"), "e": ("error", "a")}
    # An error never replaces a decided row, however new.
    newer_error = _db(tmp_path / "newer.db", _record(vnnlib="b", status="error",
                                                     started_at="2030-01-01T00:00:00+00:00"))
    assert merge([newer_error], target).kept == 1


def test_merge_reads_older_databases_and_rejects_others(tmp_path):
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, benchmark TEXT NOT NULL, "
                 "onnx TEXT NOT NULL, vnnlib TEXT NOT NULL, verifier TEXT NOT NULL, "
                 "status TEXT NOT NULL, UNIQUE (benchmark, onnx, vnnlib, verifier))")
    conn.execute("INSERT INTO results (benchmark, onnx, vnnlib, verifier, status) "
                 "VALUES ('b', 'net.onnx', 'p.vnnlib', 'v', 'unsat')")
    conn.commit()
    conn.close()
    summary = merge([old], tmp_path / "new.db")
    assert summary.inserted == 1
    (row,) = read_rows(tmp_path / "new.db")
    assert row["status"] == "unsat" and row["params_hash"] is None
    columns = sqlite3.connect(old).execute("PRAGMA table_info(results)").fetchall()
    assert len(columns) == 6  # the source is only read, never migrated

    (tmp_path / "junk.db").write_text("not a database at all, just text" * 100)
    for bad in (tmp_path / "junk.db", tmp_path / "missing.db"):
        with pytest.raises(BenchError):
            merge([bad], tmp_path / "new.db")


def test_show_and_describe_provenance(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0), ("error", 0.0)])
    db = tmp_path / "r.db"
    run_benchmarks([folder], fv.NAME, db, progress=False)
    text = show(db)
    for fragment in ("fake-sleep", "1.0-test", "0.1.0", "cpu", "error 1 unsat 1",
                     '{"flavour":"plain","gpu":false}'):
        assert fragment in text, text
    per_instance = show(db, instances=True)
    assert len(per_instance.splitlines()) == 2 + 2 and "prop_0_001.vnnlib" in per_instance
    assert "no results" in show(db, verifier="nobody")
    line = describe_provenance(ResultsDB(db).rows())
    assert line.startswith("fake-sleep 1.0-test, parameters ") and "prune-bench 0.1.0" in line


def test_cli_commands(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 4)
    for k in (1, 2):
        run_benchmarks([folder], fv.NAME, tmp_path / f"s{k}.db", progress=False, shard=f"{k}/2")
    runner = CliRunner()
    result = runner.invoke(merge_command, [str(tmp_path / "s1.db"), str(tmp_path / "s2.db"),
                                           "--into", str(tmp_path / "all.db")])
    assert result.exit_code == 0 and "4 new, 0 replaced, 0 kept" in result.output
    result = runner.invoke(results_command, ["show", "--results", str(tmp_path / "all.db")])
    assert result.exit_code == 0 and "unsat 4" in result.output
    result = runner.invoke(results_command, ["show", "--results", str(tmp_path / "all.db"),
                                             "--instances", "--status", "unsat"])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 6
