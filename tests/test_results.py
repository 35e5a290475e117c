"""The SQLite results database."""
from __future__ import annotations

import multiprocessing
import sqlite3
from dataclasses import replace

from bench.run.results import PROVENANCE_COLUMNS, ResultsDB
from bench.verifiers.harness import RunRecord


def record(**changes) -> RunRecord:
    base = RunRecord(
        benchmark="bench", root="/data/bench", onnx="onnx/a.onnx", vnnlib="vnnlib/p0.vnnlib",
        verifier="marabou", verifier_version="2.0.0", timeout=60.0, status="unsat", reason="",
        wall_time=1.5, verifier_time=1.2, peak_memory_mb=50.0, peak_gpu_memory_mb=None,
        cex_check=None, cex_detail="", log_path="/logs/x", started_at="2025-01-01T00:00:00+00:00",
        host="here")
    return replace(base, **changes)


def test_record_get_and_upsert(tmp_path):
    db = ResultsDB(tmp_path / "results.sqlite")
    first = record(status="error", reason="crashed")
    db.record(first)
    # A bare RunRecord carries no provenance (the runner adds it): those columns are NULL.
    assert db.get("bench", "onnx/a.onnx", "vnnlib/p0.vnnlib", "marabou") == \
        {**first.to_dict(), **dict.fromkeys(PROVENANCE_COLUMNS)}
    db.record(record(status="sat", cex_check="correct", wall_time=2.0))
    row = db.get("bench", "onnx/a.onnx", "vnnlib/p0.vnnlib", "marabou")
    assert row["status"] == "sat" and row["cex_check"] == "correct" and row["wall_time"] == 2.0
    assert len(db.rows()) == 1
    assert db.get("bench", "onnx/a.onnx", "vnnlib/p0.vnnlib", "other") is None


def test_rows_filter_and_order(tmp_path):
    db = ResultsDB(tmp_path / "results.sqlite")
    db.record(record(vnnlib="vnnlib/p1.vnnlib"))
    db.record(record(vnnlib="vnnlib/p0.vnnlib"))
    db.record(record(verifier="abcrown"))
    db.record(record(benchmark="other"))
    assert [r["vnnlib"] for r in db.rows(benchmark="bench", verifier="marabou")] == \
        ["vnnlib/p0.vnnlib", "vnnlib/p1.vnnlib"]
    assert len(db.rows(verifier="marabou")) == 3
    assert len(db.rows(benchmark="bench")) == 3
    assert len(db.rows()) == 4


def test_is_decided(tmp_path):
    db = ResultsDB(tmp_path / "results.sqlite")
    key = ("bench", "onnx/a.onnx", "vnnlib/p0.vnnlib", "marabou")
    assert not db.is_decided(*key)
    db.record(record(status="error"))
    assert not db.is_decided(*key)  # errors are retried
    for status in ("unsat", "sat", "unknown", "timeout"):
        db.record(record(status=status))
        assert db.is_decided(*key)
    # a timeout under a shorter limit is retried when the limit grows
    assert db.is_decided(*key, timeout=60.0)
    assert not db.is_decided(*key, timeout=120.0)


def test_persists_and_is_wal(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsDB(path) as db:
        db.record(record())
    assert len(ResultsDB(path).rows()) == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, worker: int, count: int) -> None:
    db = ResultsDB(path)
    for i in range(count):
        db.record(record(vnnlib=f"vnnlib/w{worker}_{i}.vnnlib", host=f"worker{worker}"))
        db.record(record(vnnlib="vnnlib/shared.vnnlib", host=f"worker{worker}"))  # contended row
    db.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "results.sqlite")
    ResultsDB(path).close()
    count = 150
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate runners
    workers = [context.Process(target=_writer, args=(path, w, count)) for w in range(2)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    rows = ResultsDB(path).rows()
    assert len(rows) == 2 * count + 1
    for w in range(2):
        assert sum(r["host"] == f"worker{w}" and "shared" not in r["vnnlib"] for r in rows) == count


def _open_new(path: str) -> str:
    try:
        ResultsDB(path).close()
        return "ok"
    except Exception as err:  # the message is the evidence the assertion shows
        return str(err)


def test_many_processes_opening_one_new_database_at_once_all_succeed(tmp_path):
    """Runs started together on a database that does not exist yet (a job array's first second)
    all start: creating the schema meets SQLite's lock-upgrade rule, which the busy timeout alone
    does not cover (about 1 start in 200 failed with "database is locked" before)."""
    context = multiprocessing.get_context("fork")
    with context.Pool(6) as pool:
        outcomes = [outcome for round_ in range(40)
                    for outcome in pool.map(_open_new, [str(tmp_path / f"r{round_}.db")] * 6)]
    assert [o for o in outcomes if o != "ok"] == []


def test_older_database_gains_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, benchmark TEXT NOT NULL, "
                 "onnx TEXT NOT NULL, vnnlib TEXT NOT NULL, verifier TEXT NOT NULL, "
                 "status TEXT NOT NULL, UNIQUE (benchmark, onnx, vnnlib, verifier))")
    conn.execute("INSERT INTO results (benchmark, onnx, vnnlib, verifier, status) "
                 "VALUES ('bench', 'onnx/a.onnx', 'vnnlib/p0.vnnlib', 'marabou', 'unsat')")
    conn.commit()
    conn.close()
    db = ResultsDB(path)
    old = db.get("bench", "onnx/a.onnx", "vnnlib/p0.vnnlib", "marabou")
    assert old["peak_memory_mb"] is None
    assert old["benchmark_hash"] is None and old["decided_by"] is None
    db.record(record(vnnlib="vnnlib/p1.vnnlib", benchmark_hash="abc", decided_by="bounds"))
    assert len(db.rows()) == 2
    new = db.get("bench", "onnx/a.onnx", "vnnlib/p1.vnnlib", "marabou")
    assert new["benchmark_hash"] == "abc" and new["decided_by"] == "bounds"
    from bench.run.results import read_rows, show

    assert {row["decided_by"] for row in read_rows(path)} == {None, "bounds"}
    assert "marabou" in show(path)
