"""Killing ``bench run`` or ``bench build-instances`` with SIGKILL at any moment, then running it
again, completes exactly the remaining work: no finished result is lost, none is run twice. And
the results database stays consistent with several processes writing at once."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

import fake_verifier as fv
from bench.run.results import ResultsDB, merge, read_rows
from bench.verifiers.harness import RunRecord

DELAY = 0.5  # seconds per instance: long enough to kill between results
COUNT = 10


def cli_has(command: str, option: str) -> bool:
    """Whether bench/cli.py wires ``option`` into ``command`` already."""
    from click.testing import CliRunner

    from bench.cli import main

    return option in CliRunner().invoke(main, [command, "--help"]).output


def run_command(folder: Path, db: Path, workers: int | None) -> list[str]:
    """``bench run`` in a fresh interpreter; with workers, through the library when the CLI does
    not offer ``--workers`` yet."""
    if workers is None or cli_has("run", "--workers"):
        extra = ["--workers", str(workers)] if workers else []
        return [sys.executable, "-m", "bench.cli", "run", "--instances", str(folder),
                "--verifier", fv.NAME, "--results", str(db), "--quiet", *extra]
    code = (f"from bench.run.runner import run_benchmarks; print(run_benchmarks([{str(folder)!r}], "
            f"{fv.NAME!r}, {str(db)!r}, progress=False, workers={workers}))")
    return [sys.executable, "-c", code]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 60,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"finished before the kill point (exit {process.returncode}):"
                                 f"\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.02)


def sigkill(process: subprocess.Popen) -> None:
    """SIGKILL the main process only, as `kill -9 <pid>` would, and check that nothing it
    started stays behind (workers die with it; their tools are killed on the way out)."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    workers = [c for c in children if _is_worker(c)]
    _, alive = psutil.wait_procs(workers, timeout=15)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"workers outlived the killed runner: {alive}"


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return "multiprocessing" in " ".join(proc.cmdline())
    except psutil.Error:
        return False  # already gone


def db_rows(db: Path) -> dict[tuple, dict]:
    if not db.exists():
        return {}
    return {(r["onnx"], r["vnnlib"]): r for r in ResultsDB(db).rows()}


@pytest.mark.parametrize("workers", [None, 2], ids=["serial", "two-workers"])
def test_kill_run_at_several_points_then_finish(tmp_path, workers):
    folder = fv.make_benchmark(tmp_path / "bench",
                               [("unsat", DELAY), ("unknown", DELAY)] * (COUNT // 2))
    db, ledger, log = tmp_path / "results.db", tmp_path / "ledger.txt", tmp_path / "log.txt"
    env = fv.plugin_env(ledger)
    argv = run_command(folder, db, workers)
    finished: dict[tuple, dict] = {}  # every row seen after a kill, as it was then
    mark = 0  # ledger lines written before the current run

    def check_run(what: str) -> dict[tuple, dict]:
        """No row of an earlier run changed, and no instance that had one was started again."""
        nonlocal mark
        rows = db_rows(db)
        for key, row in finished.items():
            assert rows[key] == row, f"{key} changed ({what})"
        events = fv.read_ledger(ledger)
        again = {name for event, name in events[mark:] if event == "start"}
        assert not again & {vnnlib for _, vnnlib in finished}, f"rerun finished ones ({what})"
        finished.update(rows)
        mark = len(events)
        return rows

    kill_points = {
        "in flight, nothing finished": lambda: any(e == "start" for e, _ in fv.read_ledger(ledger)),
        "one more finished": lambda: len(db_rows(db)) >= len(finished) + 1,
        "several more finished": lambda: len(db_rows(db)) >= len(finished) + 3,
    }
    for what, condition in kill_points.items():
        process = start(argv, env, log)
        wait_for(condition, process, log=log)
        sigkill(process)
        rows = check_run(f"killed: {what}")
        assert len(rows) < COUNT, "the run finished before the kill"
        if what.startswith("in flight"):
            assert len(rows) <= (workers or 1)  # only what was in flight at the kill

    started = time.monotonic()
    process = start(argv, env, log)
    assert process.wait(120) == 0, log.read_text()
    seconds = time.monotonic() - started
    remaining = COUNT - len(finished)
    final = check_run("the last run")
    assert len(final) == COUNT  # every instance exactly once (the key is unique)
    assert sorted(r["status"] for r in final.values()) == ["unknown"] * 5 + ["unsat"] * 5
    # Over all runs, an instance was started more than once only when a kill interrupted it.
    starts = [name for event, name in fv.read_ledger(ledger) if event == "start"]
    assert set(starts) == {vnnlib for _, vnnlib in final}
    assert len(starts) - COUNT <= len(kill_points) * (workers or 1)
    print(f"last run: {remaining} instances in {seconds:.1f} s")


@pytest.mark.parametrize("workers", [None, 2], ids=["serial", "two-workers"])
def test_sigterm_stops_the_tools_too(tmp_path, workers):
    """A plain `kill` (or a closed terminal) ends the run without leaving its tools running."""
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 60.0)] * 2)
    db, ledger, log = tmp_path / "results.db", tmp_path / "ledger.txt", tmp_path / "log.txt"
    process = start(run_command(folder, db, workers), fv.plugin_env(ledger), log)
    wanted = workers or 1
    wait_for(lambda: len(fv.read_ledger(ledger)) >= wanted, process, log=log)
    tools = [psutil.Process(int(line.split()[2])) for line in ledger.read_text().splitlines()]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) != 0
    _, alive = psutil.wait_procs(tools, timeout=15)
    for leftover in alive:
        leftover.kill()
    assert not alive, "a tool outlived its runner"
    assert db_rows(db) == {}  # an interrupted instance has no row: the next run does it


def test_killed_worker_processes_die_with_the_runner(tmp_path):
    """run_tasks' processes get SIGKILL when their parent dies (PR_SET_PDEATHSIG)."""
    code = ("import time\nfrom bench import parallel\n"
            "if __name__ == '__main__':\n"
            "    parallel.run_tasks(time.sleep, [60, 60], [parallel.Slot('cpu')] * 2,\n"
            "                        lambda *a: None)\n")
    script = tmp_path / "driver.py"
    script.write_text(code)
    with open(tmp_path / "log.txt", "wb") as log:  # a child killed while starting complains
        process = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=log,
                                   start_new_session=True)
    deadline = time.monotonic() + 60
    while len(psutil.Process(process.pid).children()) < 2:  # wait for both task processes
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=15)
    for leftover in alive:
        leftover.kill()
    assert not alive


BUILD_CONFIG = """\
dataset: digits
model: mlp
training: natural
epochs: 3
levels: 2
samples: 2
train_samples: 600
batch_size: 50
timeout: 30
"""


def build_command(config: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "build-instances", "--config", str(config),
            "--out", str(root / "out"), "--runs-dir", str(root / "runs"), "--quiet"]


def weights(root: Path) -> dict[str, dict]:
    import torch  # here, not at the top: spawned writer processes import this module

    (run,) = (root / "runs").glob("*/seed_0")
    return {f"{level.name}/{name}": torch.load(level / name, weights_only=True)
            for level in sorted(run.glob("level_*")) for name in ("model.pt", "mask.pt")}


def test_kill_build_mid_training_then_resume_gives_the_same_weights(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(BUILD_CONFIG)
    log = tmp_path / "log.txt"

    # The uninterrupted reference runs alongside (most of a build's time is imports).
    reference = start(build_command(config, tmp_path / "reference"), {}, tmp_path / "ref.txt")
    killed_root = tmp_path / "killed"
    process = start(build_command(config, killed_root), {}, log)
    level0 = lambda: any((killed_root / "runs").glob("*/seed_0/level_00/done.json"))  # noqa: E731
    wait_for(level0, process, timeout=300, log=log)
    sigkill(process)
    (run,) = (killed_root / "runs").glob("*/seed_0")
    assert not (run / "level_02" / "done.json").exists(), "killed too late to test anything"
    assert not list((killed_root / "out").glob("*/manifest.json"))
    level0_stamp = (run / "level_00" / "model.pt").stat().st_mtime_ns

    process = start(build_command(config, killed_root), {}, log)
    assert process.wait(300) == 0, log.read_text()
    assert (run / "level_00" / "model.pt").stat().st_mtime_ns == level0_stamp  # not retrained
    assert reference.wait(300) == 0, (tmp_path / "ref.txt").read_text()

    import torch

    expected, got = weights(tmp_path / "reference"), weights(killed_root)
    assert sorted(got) == sorted(expected) and len(got) == 6
    for name, tensors in expected.items():
        assert tensors.keys() == got[name].keys()
        for key, tensor in tensors.items():
            assert torch.equal(tensor, got[name][key]), f"{name}:{key} differs"
    (ref_bench,) = (tmp_path / "reference" / "out").iterdir()
    (bench,) = (killed_root / "out").iterdir()
    assert (bench / "instances.csv").read_text() == (ref_bench / "instances.csv").read_text()


# --------------------------------------------------------------------------- concurrent writers


def _record(vnnlib: str, host: str) -> dict:
    record = RunRecord(
        benchmark="b", root="/b", onnx="net.onnx", vnnlib=vnnlib, verifier="v",
        verifier_version="1", timeout=60.0, status="unsat", reason="", wall_time=1.0,
        verifier_time=None, peak_memory_mb=1.0, peak_gpu_memory_mb=None, cex_check=None,
        cex_detail="", log_path=None, started_at="2025-01-01T00:00:00+00:00", host=host)
    return {**record.to_dict(), "suite_version": "0", "device": "cpu", "params_hash": "h",
            "verifier_params": "{}"}


def _writer(path: str, worker: int, count: int) -> None:
    db = ResultsDB(path)  # a fresh process opens (and on an old file, migrates) on its own
    for i in range(count):
        db.record(_record(f"w{worker}_{i}.vnnlib", f"worker{worker}"))
        db.record(_record(f"shared{i % 5}.vnnlib", f"worker{worker}"))  # contended rows
    db.close()


def test_concurrent_writers_and_a_merge_keep_the_database_consistent(tmp_path):
    target = tmp_path / "results.db"
    source = tmp_path / "shard.db"
    with ResultsDB(source) as db:
        for i in range(200):
            db.record(_record(f"merged{i}.vnnlib", "elsewhere"))
    # The target starts in an older schema: every writer opens it at once and migrates it.
    conn = sqlite3.connect(target)
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, benchmark TEXT NOT NULL, "
                 "onnx TEXT NOT NULL, vnnlib TEXT NOT NULL, verifier TEXT NOT NULL, "
                 "status TEXT NOT NULL, UNIQUE (benchmark, onnx, vnnlib, verifier))")
    conn.commit()
    conn.close()

    count, writers = 60, 4
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(target), w, count))
                 for w in range(writers)]
    for process in processes:
        process.start()
    summary = merge([source], target)  # while they write
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert summary.inserted == 200

    rows = read_rows(target)
    assert len(rows) == writers * count + 5 + 200
    assert len({(r["benchmark"], r["onnx"], r["vnnlib"], r["verifier"]) for r in rows}) == len(rows)
    for w in range(writers):
        assert sum(r["host"] == f"worker{w}" and r["vnnlib"].startswith("w") for r in rows) == count
    assert {r["host"] for r in rows if r["vnnlib"].startswith("shared")} <= \
        {f"worker{w}" for w in range(writers)}
    conn = sqlite3.connect(target)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------------------- tools' own children


def _ledger_pids(ledger: Path, event: str, vnnlib: str | None = None) -> list[int]:
    """The pids of the ledger's ``event`` lines (of instance ``vnnlib`` only, if given)."""
    lines = [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []
    return [int(fields[2]) for fields in lines
            if fields[0] == event and vnnlib in (None, fields[1])]


def _all_gone(pids: list[int], what: str) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for leftover in alive:
        leftover.kill()
    assert not alive, f"{what} outlived the kill: {alive}"


def test_sigkill_of_a_serial_run_takes_the_tools_children_along(tmp_path):
    """PR_SET_PDEATHSIG reached only the tool's own process; its child (started by the tool,
    in the tool's group) kept running after `kill -9` of `bench run --workers 1`."""
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 60.0)] * 2, child=(0, 1))
    db, ledger, log = tmp_path / "results.db", tmp_path / "ledger.txt", tmp_path / "log.txt"
    argv = [sys.executable, "-m", "bench.cli", "run", "--instances", str(folder), "--verifier",
            fv.NAME, "--results", str(db), "--quiet", "--workers", "1"]
    process = start(argv, fv.plugin_env(ledger), log)
    wait_for(lambda: bool(_ledger_pids(ledger, "child")), process, log=log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _all_gone(_ledger_pids(ledger, "start"), "the tool")
    _all_gone(_ledger_pids(ledger, "child"), "the tool's child")


def test_sigkill_of_one_pool_worker_takes_its_tools_children_along(tmp_path):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 60.0)] + [("unsat", 0.1)] * 3,
                               child=(0,))
    db, ledger, log = tmp_path / "results.db", tmp_path / "ledger.txt", tmp_path / "log.txt"
    process = start(run_command(folder, db, workers=2), fv.plugin_env(ledger), log)
    try:
        wait_for(lambda: bool(_ledger_pids(ledger, "child")), process, log=log)
        (tool_pid,) = _ledger_pids(ledger, "start", "prop_0_000.vnnlib")
        worker = next(p for p in psutil.Process(tool_pid).parents() if _is_worker(p))
        worker.kill()
        _all_gone([tool_pid], "the tool")
        _all_gone(_ledger_pids(ledger, "child"), "the tool's child")
        assert process.wait(120) == 0, log.read_text()  # the run goes on without that worker
    finally:
        if process.poll() is None:
            sigkill(process)
    rows = db_rows(db)
    assert len(rows) == 4 and rows[("net0.onnx", "prop_0_000.vnnlib")]["status"] == "error"
    assert "worker process died" in rows[("net0.onnx", "prop_0_000.vnnlib")]["reason"]
