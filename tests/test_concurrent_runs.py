"""Several runs on one results database: no run takes another's answer, no instance is verified
twice, no decided row is lost to another run's error; claims of dead runs are taken over."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import fake_verifier as fv
from bench.run import claims
from bench.run.claims import RunIdentity
from bench.run.results import ResultsDB, read_rows
from bench.run.runner import run_benchmarks
from bench.verifiers import VERIFIERS
from bench.verifiers.harness import RunRecord

COUNT = 6


@pytest.fixture
def plugin(monkeypatch):
    for name, value in fv.plugin_env().items():
        monkeypatch.setenv(name, value)


def bench_run(folder: Path, db: Path, ledger: Path, answer: str, log: Path,
              workers: int = 1) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bench.cli", "run", "--instances", str(folder), "--verifier",
            "fake-answer", "--results", str(db), "--quiet", "--workers", str(workers)]
    env = {**os.environ, **fv.plugin_env(ledger), "FAKE_ANSWER": answer}
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def answers(ledger: Path) -> list[tuple[str, str, str]]:
    """(answer, vnnlib file name, the folder the tool was given) per tool run."""
    return [(fields[0].removeprefix("answer="), fields[1], fields[4])
            for fields in map(str.split, ledger.read_text().splitlines())
            if fields[0].startswith("answer=")]


@pytest.mark.parametrize("workers", [(1, 1), (1, 2)], ids=["serial-serial", "serial-pool"])
def test_two_runs_side_by_side_never_take_each_others_answers(tmp_path, workers):
    """A tool that only says `unknown` and one that only says `unsat`, started at the same time
    on the same database: each row is the answer of the tool that ran for it, and each
    instance ran once."""
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * COUNT)
    db, ledger = tmp_path / "results.db", tmp_path / "ledger.txt"
    runs = {answer: bench_run(folder, db, ledger, answer, tmp_path / f"{answer}.log", count)
            for answer, count in zip(("unknown", "unsat"), workers)}
    for answer, process in runs.items():
        assert process.wait(300) == 0, (tmp_path / f"{answer}.log").read_text()
    for answer in runs:
        # "fake-answer: 3 run (unknown 3), ...": each run saw its own tool's answer only.
        output = (tmp_path / f"{answer}.log").read_text()
        seen = re.search(r" run(?: \(([^)]*)\))?,", output)
        assert seen is not None, output
        assert {part.split()[0] for part in (seen[1] or "").split(", ") if part} <= {answer}, \
            output

    tool_runs = answers(ledger)
    assert len(tool_runs) == COUNT, f"instances verified more than once: {tool_runs}"
    rows = read_rows(db)
    assert len(rows) == COUNT
    by_folder = {}
    for answer, _, workdir in tool_runs:
        by_folder.setdefault(workdir, []).append(answer)
    for row in rows:
        assert by_folder.get(row["log_path"]) == [row["status"]], (row, by_folder)
    assert read_rows(db) and not ResultsDB(db).conn.execute("SELECT * FROM claims").fetchall()


def _row(status: str, started_at: str, params: str = "h") -> dict:
    record = RunRecord(
        benchmark="b", root="/b", onnx="net.onnx", vnnlib="p.vnnlib", verifier="v",
        verifier_version="1", timeout=60.0, status=status, reason="", wall_time=1.0,
        verifier_time=None, peak_memory_mb=1.0, peak_gpu_memory_mb=None, cex_check=None,
        cex_detail="", log_path=None, started_at=started_at, host="h")
    return {**record.to_dict(), "params_hash": params}


def test_an_error_never_replaces_a_concurrent_runs_answer(tmp_path):
    db = ResultsDB(tmp_path / "results.db")
    run = replace(RunIdentity.here(), started_at="2025-01-01T10:00:00+00:00")
    key = ("b", "net.onnx", "p.vnnlib", "v")
    # Another run decided the instance after this run started: its answer stands.
    db.record(_row("unsat", "2025-01-01T10:05:00+00:00"))
    db.record(_row("error", "2025-01-01T10:06:00+00:00"), by=run)
    assert db.get(*key)["status"] == "unsat"
    # An answer from before this run started (what --rerun redoes) is replaced, even by an error
    # (retried next time) ...
    db.record(_row("unsat", "2025-01-01T09:00:00+00:00"))
    db.record(_row("error", "2025-01-01T10:06:00+00:00"), by=run)
    assert db.get(*key)["status"] == "error"
    # ... and so is one obtained with other parameters; a decided row always replaces.
    db.record(_row("unsat", "2025-01-01T10:05:00+00:00", params="other"))
    db.record(_row("error", "2025-01-01T10:06:00+00:00"), by=run)
    assert db.get(*key)["status"] == "error"
    db.record(_row("timeout", "2025-01-01T10:07:00+00:00"), by=run)
    assert db.get(*key)["status"] == "timeout"


def _plant_claim(db_path: Path, owner: RunIdentity, vnnlib: str, heartbeat: float) -> None:
    with ResultsDB(db_path) as db:
        db.conn.execute(
            "INSERT INTO claims (benchmark, onnx, vnnlib, verifier, run_id, host, boot_id, pid, "
            "pid_start, claimed_at, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("bench", "net0.onnx", vnnlib, fv.NAME, owner.run_id, owner.host, owner.boot_id,
             owner.pid, owner.pid_start, owner.started_at, heartbeat))


def test_claims_of_live_runs_are_left_alone_and_dead_ones_taken_over(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 4)
    db = tmp_path / "results.db"
    ResultsDB(db).close()
    alive = RunIdentity.here()  # this very process: alive
    dead_process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True)
    dead = replace(alive, run_id="dead-run", pid=int(dead_process.stdout),
                   pid_start=12345)  # a pid and start time that no longer name a process
    elsewhere = replace(alive, run_id="remote-run", host="another-host", boot_id="x")
    _plant_claim(db, alive, "prop_0_000.vnnlib", time.time())
    _plant_claim(db, dead, "prop_0_001.vnnlib", time.time())
    _plant_claim(db, elsewhere, "prop_0_002.vnnlib", time.time())  # fresh heartbeat
    _plant_claim(db, replace(elsewhere, run_id="silent-run"), "prop_0_003.vnnlib",
                 time.time() - claims.LEASE_S - 1)  # no sign of life for longer than the lease

    summary = run_benchmarks([folder], fv.NAME, db, progress=False)
    assert summary.counts == {"unsat": 2} and summary.elsewhere == 2
    assert {row["vnnlib"] for row in read_rows(db)} == {"prop_0_001.vnnlib", "prop_0_003.vnnlib"}
    with ResultsDB(db) as handle:
        left = {row["run_id"] for row in handle.conn.execute("SELECT run_id FROM claims")}
    assert left == {alive.run_id, "remote-run"}  # ours released, theirs untouched
    assert "2 left to another run on the same database" in str(summary)


def test_rerun_redoes_what_was_decided_before_it_started_only(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 3)
    db = tmp_path / "results.db"
    first = run_benchmarks([folder], fv.NAME, db, progress=False)
    assert first.counts == {"unsat": 3}  # most likely within the second the rerun starts
    # One row as a concurrent run would leave it while the rerun goes on: started after it.
    with ResultsDB(db) as handle:
        handle.conn.execute("UPDATE results SET started_at = '2999-01-01T00:00:00+00:00' "
                            "WHERE vnnlib = 'prop_0_002.vnnlib'")
    again = run_benchmarks([folder], fv.NAME, db, progress=False, rerun=True)
    assert again.counts == {"unsat": 2} and again.skipped == 1


@VERIFIERS.register("fake-named")
class _Named(fv.FakeSleep):
    """Like ``vnncomp``: one adapter, rows named after the tool it runs."""

    @property
    def result_name(self) -> str:
        return f"{self.name}:special"


def test_rows_are_keyed_by_the_result_name(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 2)
    db = tmp_path / "results.db"
    summary = run_benchmarks([folder], "fake-named", db, progress=False)
    assert summary.verifier == "fake-sleep:special"
    rows = read_rows(db)
    assert {row["verifier"] for row in rows} == {"fake-sleep:special"}
    assert all("/fake-sleep_special/" in row["log_path"] for row in rows)
    # The verifier decided them (the Addendum's vocabulary; the tool names no path of its own).
    assert {row["decided_by"] for row in rows} == {"verifier"}
    again = run_benchmarks([folder], "fake-named", db, progress=False)
    assert again.skipped == 2
