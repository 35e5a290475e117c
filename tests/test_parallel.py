"""Parallel runs on one machine: the same results as a serial run, GPU pinning, lost workers,
progress, provenance, and parallel build sweeps."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

import bench
import fake_verifier as fv
from bench import parallel
from bench.run import executors
from bench.config import make_config
from bench.run.results import ResultsDB, params_hash
from bench.formats.folder import read_instances
from bench.verifiers import Parameter, Verifier
from bench.progress import Progress
from bench.run.runner import run_benchmarks
from bench.build.sweep import run_builds
from bench.verifiers.marabou import Marabou

from paths import FIXTURES  # noqa: E402
SPECS = [("unsat", 0.2), ("unknown", 0.05), ("error", 0.0), ("timeout", 0.1), ("unsat", 0.3),
         ("unknown", 0.0)]


@pytest.fixture
def plugin(monkeypatch):
    """Spawned workers find the fake verifier through the plugin variable."""
    for name, value in fv.plugin_env().items():
        monkeypatch.setenv(name, value)


def statuses(path: Path) -> dict[tuple[str, str, str], str]:
    return {(r["benchmark"], r["onnx"], r["vnnlib"]): r["status"] for r in ResultsDB(path).rows()}


def test_two_workers_give_the_same_results_as_serial(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", SPECS, models=2)
    serial = run_benchmarks([folder], fv.NAME, tmp_path / "serial.db", progress=False)
    parallel = run_benchmarks([folder], fv.NAME, tmp_path / "parallel.db", progress=False,
                              workers=2)
    assert parallel.workers == 2 and serial.workers == 1
    assert parallel.counts == serial.counts == {"unsat": 4, "unknown": 4, "error": 2,
                                                "timeout": 2}
    assert statuses(tmp_path / "parallel.db") == statuses(tmp_path / "serial.db")
    assert len(statuses(tmp_path / "parallel.db")) == 12

    # Every row carries its provenance.
    for row in ResultsDB(tmp_path / "parallel.db").rows():
        assert row["verifier_version"] == "1.0-test" and row["host"] and row["started_at"]
        assert row["suite_version"] == bench.__version__
        assert row["params_hash"] == params_hash({"gpu": False, "flavour": "plain"})
        assert row["verifier_params"] == '{"flavour":"plain","gpu":false}'
        assert row["device"].startswith("cpu")

    again = run_benchmarks([folder], fv.NAME, tmp_path / "parallel.db", progress=False,
                           workers=2)
    assert again.counts == {"error": 2} and again.skipped == 10  # errors are retried


@pytest.mark.skipif(not Marabou().is_installed(), reason="Marabou is not installed")
def test_marabou_with_two_workers_matches_serial(tmp_path):
    folder = tmp_path / "test"
    shutil.copytree(FIXTURES, folder)
    serial = run_benchmarks([folder], "marabou", tmp_path / "serial.db", progress=False)
    parallel = run_benchmarks([folder], "marabou", tmp_path / "parallel.db", progress=False,
                              workers=2)
    assert parallel.counts == serial.counts == {"unsat": 4, "sat": 1}
    assert statuses(tmp_path / "parallel.db") == statuses(tmp_path / "serial.db")
    sat = ResultsDB(tmp_path / "parallel.db").rows(status="sat")
    assert sat[0]["cex_check"] in ("correct", "correct_up_to_tolerance")


def test_one_worker_per_gpu_each_pinned(tmp_path, plugin, monkeypatch):
    # Two GPUs as a scheduler would hand them out (CUDA_VISIBLE_DEVICES=3,5): one worker each,
    # and the tool sees only its own.
    monkeypatch.setattr(parallel, "detect_gpus", lambda: ["3", "5"])
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.3)] * 6)
    summary = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False,
                             verifier_params={"gpu": True})
    assert summary.workers == 2 and summary.counts == {"unsat": 6}
    seen = set()
    for row in ResultsDB(tmp_path / "r.db").rows():
        cuda = row["reason"].removeprefix("cuda=")
        assert row["device"].startswith(f"cuda:{cuda}")
        seen.add(cuda)
    assert seen <= {"3", "5"} and seen  # usually both; each row matches its worker's device
    # A CPU verifier on the same machine keeps a single, unpinned, in-process runner.
    assert parallel.make_slots(None, use_gpus=False) == [parallel.Slot(parallel.describe_cpu())]
    assert [s.cuda_visible_devices for s in parallel.make_slots(3, use_gpus=True)] == \
        ["3", "5", "3"]


def test_a_dead_worker_costs_only_its_instance(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.1)] * 6, kill_worker=(2,))
    summary = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False, workers=2)
    assert summary.counts == {"unsat": 5, "error": 1}
    (error,) = ResultsDB(tmp_path / "r.db").rows(status="error")
    assert error["vnnlib"] == "prop_0_002.vnnlib" and "worker process died" in error["reason"]


def test_changing_a_parameter_reruns_everything(tmp_path, plugin):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 3)
    run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False)
    same = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False)
    other = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False,
                           verifier_params={"flavour": "other"})
    assert same.skipped == 3 and other.run == 3
    assert {r["params_hash"] for r in ResultsDB(tmp_path / "r.db").rows()} == \
        {params_hash({"gpu": False, "flavour": "other"})}


def test_progress_counts_and_time_left():
    stream = io.StringIO()  # not a terminal: plain lines, no bar
    progress = Progress(total=10, already_done=4, desc="tool", stream=stream, interval=0.0)
    assert progress.eta() is None and "4/10 done (none run yet; 4 skipped)" in progress.line()
    progress.advance("unsat")
    progress.advance("timeout")
    progress.advance("unsat")
    assert progress.done == 7 and progress.eta() is not None and progress.eta() >= 0
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # one per result (interval 0) and one at the end
    assert lines[-1].startswith("tool: 7/10 done (timeout 1, unsat 2; 4 skipped)")
    assert "elapsed" in lines[-1] and "left" in lines[-1]


def test_progress_off_prints_nothing(tmp_path, plugin):
    stream = io.StringIO()
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 2)
    run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False, progress_stream=stream)
    assert stream.getvalue() == ""
    run_benchmarks([folder], fv.NAME, tmp_path / "r2.db", progress=True, progress_stream=stream)
    assert stream.getvalue().strip().startswith(f"{fv.NAME}: 2/2 done (unsat 2; 0 skipped)")


def tiny_configs(tmp_path: Path, seeds=(0, 1)) -> list:
    return [make_config({"dataset": "digits", "model": "mlp", "training": "natural",
                         "epochs": 1, "levels": 1, "samples": 1, "train_samples": 200,
                         "batch_size": 50, "seed": seed, "out": str(tmp_path / "out"),
                         "runs_dir": str(tmp_path / "runs")}) for seed in seeds]


def test_build_sweep_in_two_processes(tmp_path):
    messages: list[str] = []
    outcomes = run_builds(tiny_configs(tmp_path), workers=2, progress=False,
                          echo=messages.append)
    assert sorted(o.seed for o in outcomes) == [0, 1]
    assert all(o.error is None and not o.skipped for o in outcomes)
    assert all((Path(o.root) / "manifest.json").is_file() for o in outcomes)
    assert messages[-1].startswith("[2/2] ")
    # Run again: both complete, nothing is rebuilt.
    again = run_builds(tiny_configs(tmp_path), workers=2, progress=False, echo=messages.append)
    assert all(o.skipped for o in again)


def test_a_worker_that_cannot_start_stops_the_run(tmp_path):
    # A verifier the workers do not know (say, a plugin missing on that side) is a setup error:
    # the run stops with the worker's traceback instead of writing an error row per instance.
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 3)
    spec = executors.RunSpec(verifier="no-such-verifier", params={}, log_dir=tmp_path / "logs",
                             results_path=tmp_path / "r.db", provenance={})
    units = [[instance] for instance in read_instances(folder)]
    with pytest.raises(executors.WorkerFailed, match="unknown verifier 'no-such-verifier'"):
        executors.run_pool(spec, units, [parallel.Slot("cpu")] * 2, lambda key, status: None)
    assert ResultsDB(tmp_path / "r.db").rows() == []


def test_which_verifiers_use_a_gpu():
    from bench.run.runner import uses_gpu

    class ByParameter(fv.FakeSleep):
        parameters = {"device": Parameter(str, "cpu")}
        uses_gpu = Verifier.uses_gpu  # the default: the device parameter decides

    assert not uses_gpu(fv.FakeSleep()) and uses_gpu(fv.FakeSleep(gpu=True))
    assert not uses_gpu(ByParameter()) and uses_gpu(ByParameter(device="cuda:1"))
