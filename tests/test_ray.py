"""Verifier runs and build sweeps on a Ray cluster: a local one, started here on 127.0.0.1 with
2 CPUs and one pretend GPU (Ray only counts GPUs; it sets CUDA_VISIBLE_DEVICES for the tasks
that ask for one, which is what we check)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fake_verifier as fv
from bench.run.results import ResultsDB
from bench.run.runner import run_benchmarks
from bench.build.sweep import run_builds

ray = pytest.importorskip("ray")

SPECS = [("unsat", 0.1), ("unknown", 0.0), ("error", 0.0), ("unsat", 0.2)]


@pytest.fixture(scope="module")
def cluster():
    """The cluster's address. Its processes inherit the plugin variables from here."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in fv.plugin_env().items():
            patch.setenv(name, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def statuses(path: Path) -> dict[tuple[str, str], str]:
    return {(r["onnx"], r["vnnlib"]): r["status"] for r in ResultsDB(path).rows()}


def test_ray_gives_the_same_results_as_serial(cluster, tmp_path):
    folder = fv.make_benchmark(tmp_path / "bench", SPECS, models=2)
    serial = run_benchmarks([folder], fv.NAME, tmp_path / "serial.db", progress=False)
    on_ray = run_benchmarks([folder], fv.NAME, tmp_path / "ray.db", progress=False,
                            executor="ray")
    assert on_ray.counts == serial.counts == {"unsat": 4, "unknown": 2, "error": 2}
    assert statuses(tmp_path / "ray.db") == statuses(tmp_path / "serial.db")
    for row in ResultsDB(tmp_path / "ray.db").rows():
        assert row["device"].startswith("cpu") and row["reason"] == "cuda=-"  # no GPU asked
        assert row["params_hash"] and row["suite_version"] and row["host"]
    again = run_benchmarks([folder], fv.NAME, tmp_path / "ray.db", progress=False,
                           executor="ray")
    assert again.skipped == 6 and again.counts == {"error": 2}


def test_a_gpu_verifier_asks_ray_for_a_gpu(cluster, tmp_path):
    folder = fv.make_benchmark(tmp_path / "bench", [("unsat", 0.0)] * 3)
    summary = run_benchmarks([folder], fv.NAME, tmp_path / "r.db", progress=False,
                             executor="ray", verifier_params={"gpu": True})
    assert summary.counts == {"unsat": 3}
    for row in ResultsDB(tmp_path / "r.db").rows():
        assert row["reason"] == "cuda=0"  # Ray pinned the task to the cluster's one GPU
        assert row["device"].startswith("cuda:0")


def test_a_new_driver_joins_the_cluster_by_address(cluster, tmp_path):
    folder = fv.make_benchmark(tmp_path / "bench", SPECS)
    db = tmp_path / "r.db"
    code = (f"from bench.run.runner import run_benchmarks\n"
            f"print(run_benchmarks([{str(folder)!r}], {fv.NAME!r}, {str(db)!r}, "
            f"progress=False, executor='ray', ray_address={cluster!r}))")
    env = {**os.environ, **fv.plugin_env()}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 run (error 1, unknown 1, unsat 2)" in result.stdout
    assert len(ResultsDB(db).rows()) == 4


def test_build_sweep_on_ray(cluster, tmp_path):
    from test_parallel import tiny_configs

    messages: list[str] = []
    outcomes = run_builds(tiny_configs(tmp_path), executor="ray", progress=False,
                          echo=messages.append)
    assert sorted(o.seed for o in outcomes) == [0, 1]
    assert all(o.error is None and (Path(o.root) / "manifest.json").is_file() for o in outcomes)
    assert len(messages) == 2
