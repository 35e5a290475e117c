"""The cascade of cheap stages and the persistent workers in ``bench run``.

On a tiny benchmark of our own format (an untrained MLP and its pruned copy, 12 samples, two of
them labelled wrongly), built without training: the cascade and ``--no-cascade`` must give the
same status on every instance both decide, each stage must decide its own kind of instance, and
the rows must say who decided and how long each stage took. The persistent worker must load each
model once, be killed and replaced when an instance overruns (a timeout), and cost exactly one
error row when it crashes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils import prune

import fake_verifier as fv
from bench.build.export import ExportedModel, write_benchmark
from bench.cli import main
from bench.errors import BenchError
from bench.formats.folder import read_manifest
from bench.run.results import read_rows
from bench.run.runner import run_benchmarks
from bench.verifiers import VERIFIERS, Parameter, Verdict
from bench.verifiers.milp import Milp
from bench.verifiers.stages import DECIDED_BY, LOAD, VERIFIER_STAGE, CascadeSettings, plan
from bench.verifiers.worker import OwnWorker, parse_worker_output

TESTS = Path(__file__).resolve().parent
EPS = 0.02
SAMPLES = 12
WRONG_LABELS = (0, 5)  # samples labelled against the dense model's own answer

pytestmark = pytest.mark.skipif(not Milp().is_installed(), reason="milp's modules are missing")


def write_cascade_benchmark(root: Path) -> Path:
    """Two levels of a 36-20-20-4 MLP on 6x6 inputs (level 1: half of each hidden layer's
    weights pruned); the labels are the dense model's answers except for ``WRONG_LABELS``."""
    torch.manual_seed(0)

    def mlp() -> nn.Sequential:
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 20),
                             nn.ReLU(), nn.Linear(20, 4)).eval()

    dense, pruned = mlp(), mlp()
    pruned.load_state_dict(dense.state_dict())
    for layer in (pruned[1], pruned[3]):
        prune.l1_unstructured(layer, "weight", amount=0.5)
        prune.remove(layer, "weight")
    x = torch.rand(SAMPLES, 1, 6, 6)
    with torch.no_grad():
        labels = dense(x).argmax(1)
    for index in WRONG_LABELS:
        labels[index] = (labels[index] + 1 + index % 3) % 4
    write_benchmark(root, {"model": "tiny-mlp"},
                    {"name": "tiny", "test_order": "random", "mean": [0.5], "std": [0.25],
                     "input_shape": [1, 6, 6], "num_classes": 4},
                    [ExportedModel(0, dense, 1.0, 0.5, {}), ExportedModel(1, pruned, 0.5, 0.5, {})],
                    x, labels, list(range(SAMPLES)), eps=EPS, timeout=60)
    return root


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return write_cascade_benchmark(tmp_path_factory.mktemp("cascade") / "tiny")


@pytest.fixture(scope="module")
def runs(bench_dir) -> dict:
    """``milp`` with the default cascade and without, each into its own database."""
    out = {}
    for name, cascade in (("cascade", CascadeSettings()), ("plain", None)):
        db = bench_dir.parent / f"{name}.db"
        summary = run_benchmarks([bench_dir], "milp", db, progress=False, cascade=cascade)
        rows = {(r["onnx"], r["vnnlib"]): r for r in read_rows(db)}
        out[name] = {"summary": summary, "rows": rows}
    return out


def test_cascade_and_no_cascade_agree_on_every_instance_both_decide(runs):
    cascade, plain = runs["cascade"]["rows"], runs["plain"]["rows"]
    assert set(cascade) == set(plain) and len(cascade) == 2 * SAMPLES
    both = [key for key in cascade if {cascade[key]["status"], plain[key]["status"]} <=
            {"sat", "unsat"}]
    assert len(both) == 2 * SAMPLES  # milp decides all of them, so this compares everything
    assert all(cascade[key]["status"] == plain[key]["status"] for key in both), \
        [(key, cascade[key]["status"], plain[key]["status"]) for key in both]


def test_each_stage_decides_its_own_kind_of_instance(runs, bench_dir):
    rows = runs["cascade"]["rows"]
    manifest = read_manifest(bench_dir)
    for instance in manifest["instances"]:
        row = rows[(instance["onnx"], instance["vnnlib"])]
        # The clean stage runs first: it decides exactly the misclassified samples.
        assert (row["decided_by"] == "clean") == (not instance["correct"]), (instance, row)
    by = [row["decided_by"] for row in rows.values()]
    assert set(by) <= {*DECIDED_BY, VERIFIER_STAGE}
    # This benchmark is made so that every kind of stage decides something.
    assert {"clean", "attack", VERIFIER_STAGE} <= set(by)
    assert any(stage.startswith("bounds:") for stage in by)
    for row in rows.values():
        expected = "unsat" if row["decided_by"].startswith("bounds:") else \
            "sat" if row["decided_by"] in ("clean", "attack") else row["status"]
        assert row["status"] == expected
    assert runs["cascade"]["summary"].decided_by == {stage: by.count(stage) for stage in set(by)}


def test_every_sat_of_the_cheap_stages_is_checked(runs):
    sats = [row for row in runs["cascade"]["rows"].values() if row["status"] == "sat"]
    assert sats and all(row["cex_check"] == "correct" for row in sats), \
        [row["cex_detail"] for row in sats]


def test_rows_name_the_verifier_and_keep_the_cascade_in_their_parameters(runs):
    cascade, plain = runs["cascade"]["rows"], runs["plain"]["rows"]
    assert {row["verifier"] for row in [*cascade.values(), *plain.values()]} == {"milp"}
    assert {row["timeout"] for row in cascade.values()} == {60.0}
    (with_hash,), (without_hash,) = ({r["params_hash"] for r in rows.values()}
                                     for rows in (cascade, plain))
    assert with_hash != without_hash
    params = json.loads(next(iter(cascade.values()))["verifier_params"])
    assert params["cascade"]["stages"] == ["clean", "attack", "bounds"]
    assert "cascade" not in json.loads(next(iter(plain.values()))["verifier_params"])
    # Without the cascade the verifier decides everything, and says so.
    assert {row["decided_by"] for row in plain.values()} == {VERIFIER_STAGE}
    assert {row["stage_times"] for row in plain.values()} == {None}


def test_stage_times_startup_and_the_summary(runs):
    for row in runs["cascade"]["rows"].values():
        times = json.loads(row["stage_times"])
        assert set(times) <= {*("clean", "attack"), *(f"bounds:{m}" for m in
                                                      ("IBP", "CROWN", "alpha-CROWN")),
                              LOAD, VERIFIER_STAGE}
        assert all(seconds >= 0 for seconds in times.values())
        assert (VERIFIER_STAGE in times) == (row["decided_by"] == VERIFIER_STAGE)
        assert row["wall_time"] >= sum(times.values()) - 1e-6
        assert row["startup_time"] == pytest.approx(row["wall_time"] - sum(times.values()),
                                                    abs=1e-6)
    summary = runs["cascade"]["summary"]
    assert 0 < summary.startup_seconds < summary.tool_seconds
    text = str(summary)
    assert "decided by (cascade clean,attack,bounds, then the verifier): " in text
    assert f"tool start-up (interpreter, imports, model loading): " \
           f"{summary.startup_seconds:.1f} s of the instances' {summary.tool_seconds:.1f} s" in text


def test_quick_bounds_run_before_the_attack_and_alpha_crown_after_it(runs):
    """IBP and CROWN take milliseconds, as the attack does, and prove most robust samples: they
    go first, so that no proved sample pays for an attack; alpha-CROWN (seconds) only after the
    attack has had its chance."""
    seen = set()
    for row in runs["cascade"]["rows"].values():
        times, by = json.loads(row["stage_times"]), row["decided_by"]
        if by in ("bounds:IBP", "bounds:CROWN"):
            assert "attack" not in times, row
        if by == "attack":
            assert {"bounds:IBP", "bounds:CROWN"} <= set(times), row
            assert "bounds:alpha-CROWN" not in times, row
        if by in ("bounds:alpha-CROWN", VERIFIER_STAGE):
            assert "attack" in times, row
        seen.add(by)
    assert {"attack", "bounds:IBP"} <= seen or {"attack", "bounds:CROWN"} <= seen, seen
    # An order the user gives is kept: bounds before the attack runs all of them first.
    assert plan(("clean", "bounds", "attack")) == [
        ("clean", ()), ("bounds", ("IBP", "CROWN", "alpha-CROWN")), ("attack", ())]
    assert plan(("attack",)) == [("attack", ())]


def _engine_facts(row: dict) -> dict:
    return json.loads((Path(row["log_path"]) / "engine.json").read_text())


def test_one_worker_loads_each_model_once(runs):
    rows = sorted(runs["cascade"]["rows"].values(), key=lambda r: (r["onnx"], r["vnnlib"]))
    facts = [_engine_facts(row) for row in rows]
    assert len({fact["pid"] for fact in facts}) == 1  # one worker answered all of them
    loads = [fact["model_loads"] for fact in facts]
    assert loads == [1] * SAMPLES + [2] * SAMPLES  # level 0 once, then level 1 once
    assert [fact["load_s"] > 0 for fact in facts] == \
        [True] + [False] * (SAMPLES - 1) + [True] + [False] * (SAMPLES - 1)


def test_peak_memory_is_the_instances_not_the_imports(runs):
    # The worker holds torch and the rest (hundreds of MB); an instance of this tiny MLP needs a
    # few MB at most.
    peaks = [row["peak_memory_mb"] for row in runs["cascade"]["rows"].values()]
    assert all(peak is not None and 0 <= peak < 64 for peak in peaks), peaks
    assert _engine_facts(next(iter(runs["cascade"]["rows"].values())))["rss_mb"] > 100


# --------------------------------------------------------------------------- external tools


def test_an_external_tool_gets_only_what_the_cheap_stages_left(bench_dir, tmp_path,
                                                               monkeypatch):
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv(fv.LEDGER_ENV, str(ledger))
    monkeypatch.setenv("FAKE_ANSWER", "unknown")
    db = tmp_path / "r.db"
    run_benchmarks([bench_dir], "fake-answer", db, progress=False, cascade=CascadeSettings(),
                   verifier_params={"linger": 0})
    rows = {row["vnnlib"] + row["onnx"]: row for row in read_rows(db)}
    to_tool = [row for row in rows.values() if row["decided_by"] is None]
    assert to_tool and all(row["status"] == "unknown" for row in to_tool)
    assert sorted(name for _, name in fv.read_ledger(ledger)) == \
        sorted(Path(row["vnnlib"]).name for row in to_tool)
    for row in rows.values():
        assert row["verifier"] == "fake-answer" and row["timeout"] == 60.0
        times = json.loads(row["stage_times"])
        assert (VERIFIER_STAGE in times) == (row in to_tool)
        if row in to_tool:
            assert row["wall_time"] >= sum(times.values()) - 1e-6


# --------------------------------------------------------------------------- process control


@VERIFIERS.register("fake-engine")
class FakeEngine(OwnWorker):
    """Runs ``tests/fake_engine_worker.py`` in the persistent worker."""

    name = "fake-engine"
    complete = True
    install_hint = "part of the tests (tests/test_cascade.py)"
    parameters = {"hang_on": Parameter(str, ""), "crash_on": Parameter(str, "")}
    worker_module = "fake_engine_worker"

    def version(self) -> str | None:
        return "test"

    def worker_args(self, instance) -> list[str]:
        return ["--hang-on", self.params["hang_on"], "--crash-on", self.params["crash_on"]]

    def parse(self, instance, workdir, stdout, stderr, returncode) -> Verdict:
        return parse_worker_output("fake-engine", workdir, stdout, stderr, returncode)[0]


@pytest.fixture
def fake_engine_path(monkeypatch):
    """The persistent worker finds ``fake_engine_worker`` on its path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(TESTS), os.environ.get("PYTHONPATH", "")])))


def _worker_pids(rows: list[dict]) -> list[int | None]:
    """The pid of the worker that answered each row (None: no answer)."""
    pids = []
    for row in rows:
        stats = Path(row["log_path"]) / "result.json"
        pids.append(json.loads(stats.read_text())["pid"] if stats.is_file() else None)
    return pids


def _level0(db: Path) -> list[dict]:
    return sorted((r for r in read_rows(db) if r["onnx"] == "onnx/level_00.onnx"),
                  key=lambda r: r["vnnlib"])


def test_an_overrunning_worker_is_killed_and_replaced(bench_dir, tmp_path, fake_engine_path,
                                                      no_leftover_children):
    db = tmp_path / "r.db"
    summary = run_benchmarks([bench_dir], "fake-engine", db, progress=False, timeout=3,
                             verifier_params={"hang_on": "sample_0003"})
    assert summary.counts == {"unsat": 2 * SAMPLES - 2, "timeout": 2}
    rows = _level0(db)
    hung = rows[3]
    assert hung["status"] == "timeout" and "persistent worker was killed" in hung["reason"]
    assert 3 <= hung["wall_time"] < 30
    pids = _worker_pids(rows)
    assert pids[3] is None and len(set(pids[:3])) == 1 and len(set(pids[4:])) == 1
    assert pids[0] != pids[4]  # a new worker after the kill
    assert all(row["model_given"] for row in
               (json.loads((Path(r["log_path"]) / "result.json").read_text())
                for r in rows if r["status"] == "unsat"))


def test_a_crashing_worker_costs_exactly_its_instance(bench_dir, tmp_path, fake_engine_path,
                                                      no_leftover_children):
    db = tmp_path / "r.db"
    summary = run_benchmarks([bench_dir], "fake-engine", db, progress=False,
                             verifier_params={"crash_on": "sample_0005"})
    assert summary.counts == {"unsat": 2 * SAMPLES - 2, "error": 2}
    rows = _level0(db)
    crashed = rows[5]
    assert crashed["status"] == "error"
    assert "persistent worker died under this instance (killed by signal 9)" in \
        crashed["reason"]
    pids = _worker_pids(rows)
    assert pids[5] is None and pids[4] != pids[6]
    # A rerun retries exactly the errors (which crash again).
    again = run_benchmarks([bench_dir], "fake-engine", db, progress=False,
                           verifier_params={"crash_on": "sample_0005"})
    assert again.counts == {"error": 2} and again.skipped == 2 * SAMPLES - 2


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("stages, message", [
    ("clean,magic", "--stages clean,magic: each stage at most once, from clean, attack, bounds"),
    ("clean,clean", "--stages clean,clean: each stage at most once"),
    (",", "--stages ',' names no stage"),
])
def test_bad_stages_are_refused_on_one_line(bench_dir, tmp_path, stages, message):
    result = CliRunner().invoke(main, ["run", "--instances", str(bench_dir), "--results",
                                       str(tmp_path / "r.db"), "--stages", stages, "--quiet"])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("inner, kept", [("CROWN", True), ("optimized", False)])
def test_alpha_crown_starts_from_crowns_inner_bounds_unless_told_otherwise(bench_dir, monkeypatch,
                                                                          inner, kept):
    """By default the cascade's alpha-CROWN keeps the inner layers' bounds that its CROWN found
    over the same box (``alpha_intermediate``); ``optimized`` lets auto_LiRPA optimize them."""
    import time

    from bench.verifiers import _lirpa_main
    from bench.verifiers.onnx_torch import LoadedModel
    from bench.verifiers.stages import run_stages

    given = []
    lower_bounds = _lirpa_main.Bounder.lower_bounds

    def recording(self, samples, rows, method, *args, intermediate=None, **kwargs):
        if method == "alpha-CROWN":
            given.append(intermediate)
        return lower_bounds(self, samples, rows, method, *args, intermediate=intermediate,
                            **kwargs)

    monkeypatch.setattr(_lirpa_main.Bounder, "lower_bounds", recording)
    manifest = read_manifest(bench_dir)
    wrong = next(entry for entry in manifest["instances"]
                 if entry["sample_index"] == WRONG_LABELS[0])  # no bound can prove it
    settings = CascadeSettings(stages=("bounds",), alpha_intermediate=inner)
    outcome = run_stages(LoadedModel(bench_dir / wrong["onnx"]), bench_dir / wrong["vnnlib"],
                         settings, None, time.monotonic() + 60)
    assert outcome.status is None and "bounds:alpha-CROWN" in outcome.times
    assert len(given) == 1 and (given[0] is not None) == kept
    if kept:
        assert len(given[0]) == 2  # the MLP's two ReLU layers


def test_alpha_intermediate_must_be_known():
    with pytest.raises(BenchError, match="alpha_intermediate must be one of CROWN, optimized"):
        CascadeSettings(alpha_intermediate="IBP")
