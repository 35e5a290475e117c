"""The ``milp`` verifier: agreement with Marabou, valid counterexamples, unsat answers that an
independent attack cannot refute, the VNN-COMP test fixtures, errors that stay errors, and the
time limit.

Most runs call the worker's ``main`` in this process (a subprocess spends seconds importing torch
and auto_LiRPA); a few go through the harness, in background threads while the rest runs.
"""
from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.formats.folder import Instance
from bench.verifiers import VERIFIERS, Status
from bench.verifiers import _milp_main as worker
from bench.verifiers.cex import check_counterexample
from bench.verifiers.harness import RunRecord, run_instance
from bench.verifiers.marabou import Marabou
from bench.verifiers.milp import RESULT_FILE, STATS_FILE, Milp
from bench.verifiers.onnx_torch import LoadedModel, WorkerError
from bench.verifiers.stages import CascadeSettings, run_stages
from bench.verifiers.vnncomp_format import parse_vnncomp_result
from bench.formats.vnnlib import read_vnnlib, robustness_property

from paths import FIXTURES  # noqa: E402
KNOWN = {
    ("test_nano.onnx", "test_nano.vnnlib"): "unsat",
    ("test_tiny.onnx", "test_tiny.vnnlib"): "unsat",
    ("test_small.onnx", "test_small.vnnlib"): "unsat",
    ("test_sat.onnx", "test_prop.vnnlib"): "sat",
    ("test_unsat.onnx", "test_prop.vnnlib"): "unsat",
}
NUM_CLASSES = 10
AGREEMENT_CASES = 10
EPS_CYCLE = (0.005, 0.02, 0.05)  # small eps is mostly unsat, larger mostly sat
# The solver as it was before the attack, the MIP starts and LP tightening: with interval bounds
# ACAS Xu 1-6 takes it minutes (LP tightening decides it in a second).
SLOW_SOLVER = {"tighten": "none", "attack_restarts": 0, "mip_start": False}
# alpha-CROWN, all the LP tightening it wants, and an attack too weak to decide much (no steps):
# the MILPs start from its nearest misses.
HINTED_SOLVER = {"bounds": "alpha-CROWN", "tighten_share": 1.0, "attack_steps": 0,
                 "attack_restarts": 2}

pytestmark = pytest.mark.skipif(not Milp().is_installed(),
                                reason=f"the milp verifier's packages are missing: "
                                       f"{Milp.install_hint}")


# --------------------------------------------------------------------------- models and files


def _normalize(channels: int, mean: float = 0.13, std: float = 0.31) -> nn.Conv2d:
    """Normalization as the exported models have it: a 1x1 depthwise convolution."""
    conv = nn.Conv2d(channels, channels, 1, groups=channels)
    with torch.no_grad():
        conv.weight.fill_(1 / std)
        conv.bias.fill_(-mean / std)
    return conv


def _cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        _normalize(1), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
    return model.eval(), (1, 8, 8)


def _mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        _normalize(1), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, NUM_CLASSES))
    return model.eval(), (1, 4, 4)


class _Mixed(nn.Module):
    """Ops beyond Conv/Linear/Flatten: Sub/Div normalization, padding, average pooling, a
    residual Add of two input-dependent tensors, Reshape and a Mul by a constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.skip = nn.Conv2d(2, 3, 1)
        self.fc1 = nn.Linear(12, 12)
        self.fc2 = nn.Linear(12, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.2) / 0.3
        h = torch.relu(self.conv(x)) + self.skip(x)
        h = self.pool(torch.relu(h)).reshape(1, -1) * 1.5
        return self.fc2(torch.relu(self.fc1(h)))


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["output"])


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)[None]).numpy().reshape(-1)


def _box(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    flat = x.astype(np.float64).reshape(-1)
    return np.clip(flat - eps, 0, 1), np.clip(flat + eps, 0, 1)


def _run_worker(onnx: Path, vnnlib: Path, result: Path, timeout: float = 60,
                **params) -> tuple[int, str, dict]:
    """The worker in this process with the milp verifier's ``params`` as the verifier passes
    them: (exit code, first line of the result, stats)."""
    result.parent.mkdir(parents=True, exist_ok=True)
    code = worker.main(["--onnx", str(onnx), "--vnnlib", str(vnnlib), "--result", str(result),
                        "--timeout", str(timeout), *Milp(**params).worker_options()],
                       started_at=time.time())
    if code != 0:
        return code, "", {}
    stats = json.loads(result.with_suffix(".json").read_text())
    return code, result.read_text().splitlines()[0], stats


def _independent_attack(model: nn.Module, lo: np.ndarray, hi: np.ndarray, label: int,
                        shape: tuple[int, ...], rng: np.random.Generator) -> bool:
    """Whether dense sampling, box vertices or a PGD (logit-margin loss, many restarts) finds a
    point where another logit is >= the label's."""
    lo_t = torch.from_numpy(lo.astype(np.float32)).reshape(1, *shape)
    hi_t = torch.from_numpy(hi.astype(np.float32)).reshape(1, *shape)
    width = hi_t - lo_t

    def violated(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(x)
        others = torch.cat([out[:, :label], out[:, label + 1:]], dim=1)
        return others.max(dim=1).values >= out[:, label]

    uniform = lo_t + width * torch.from_numpy(rng.random((4000, *shape), dtype=np.float32))
    vertices = torch.where(torch.from_numpy(rng.random((2000, *shape)) < 0.5), lo_t, hi_t)
    if violated(uniform).any() or violated(vertices).any():
        return True
    x = uniform[:32].clone()
    for _ in range(60):
        x.requires_grad_(True)
        out = model(x)
        others = torch.cat([out[:, :label], out[:, label + 1:]], dim=1)
        margin = out[:, label] - torch.logsumexp(10 * others, dim=1) / 10  # smooth max
        (grad,) = torch.autograd.grad(margin.sum(), x)
        x = torch.minimum(torch.maximum(x.detach() - 0.05 * width * grad.sign(), lo_t), hi_t)
        if violated(x).any():
            return True
    return False


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread, as the worker has under the harness (OMP_NUM_THREADS=1): on a busy
    2-core machine two spinning OpenMP threads made these tiny models 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """Tiny CNNs (1x8x8) and MLPs (1x4x4) with robustness properties around random points, and a
    copy of the VNN-COMP fixtures (their folder is read-only)."""
    root = tmp_path_factory.mktemp("milp_bench")
    for i, case in _cases(root).items():
        _export(case["model"], case["shape"], case["onnx"])
        case["vnnlib"].write_text(robustness_property(case["x"], case["label"], case["eps"],
                                                      NUM_CLASSES))
    if FIXTURES.is_dir():
        shutil.copytree(FIXTURES, root / "vnncomp")
    return root


def _cases(root: Path) -> dict[int, dict]:
    """Case i: a CNN (even i) or an MLP (odd i) with seed i, a random point, its predicted
    label and an eps from EPS_CYCLE; deterministic, so the files and the models agree."""
    cases = {}
    for i in range(AGREEMENT_CASES):
        model, shape = (_cnn if i % 2 == 0 else _mlp)(i)
        x = np.random.default_rng(i).random(shape, dtype=np.float32)
        cases[i] = {"model": model, "shape": shape, "x": x,
                    "label": int(np.argmax(_logits(model, x))),
                    "eps": EPS_CYCLE[i % len(EPS_CYCLE)],
                    "onnx": root / f"net{i}.onnx", "vnnlib": root / f"prop{i}.vnnlib"}
    return cases


@pytest.fixture(scope="module")
def cases(bench_dir) -> dict[int, dict]:
    return _cases(bench_dir)


@pytest.fixture(scope="module")
def harness_runs(bench_dir) -> dict[str, Future]:
    """Harness runs in two background threads (they wait on subprocesses): a CNN instance and
    the sat fixture, and the time limit on a fixture that is slow with interval bounds only."""
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {
        "cnn": (Milp(), Instance("own", bench_dir, "net2.onnx", "prop2.vnnlib", 60)),
        "timeout": (Milp(bounds="interval", **SLOW_SOLVER),
                    Instance("test", bench_dir / "vnncomp", "test_unsat.onnx",
                             "test_prop.vnnlib", 8)),
    }
    if (bench_dir / "vnncomp").is_dir():
        jobs["fixture_sat"] = (Milp(), Instance("test", bench_dir / "vnncomp", "test_sat.onnx",
                                                "test_prop.vnnlib", 60))
    else:
        del jobs["timeout"]
    futures = {key: pool.submit(run_instance, verifier, instance, bench_dir / "logs")
               for key, (verifier, instance) in jobs.items()}
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def milp_answers(cases, bench_dir, harness_runs) -> dict[int, tuple[str, dict]]:
    """The worker in this process on every agreement case (the harness runs go on meanwhile)."""
    answers = {}
    for i, case in cases.items():
        code, status, stats = _run_worker(case["onnx"], case["vnnlib"],
                                          bench_dir / f"milp{i}" / RESULT_FILE)
        assert code == 0, f"case {i}: the worker failed"
        answers[i] = (status, stats)
    return answers


@pytest.fixture(scope="module")
def marabou_answers(cases, bench_dir) -> dict[int, RunRecord]:
    if not Marabou().is_installed():
        pytest.skip("Marabou is not installed")
    return {i: run_instance(Marabou(), Instance("own", bench_dir, case["onnx"].name,
                                                case["vnnlib"].name, 60), bench_dir / "logs")
            for i, case in cases.items()}


# --------------------------------------------------------------------------- agreement, soundness


def test_registered():
    assert VERIFIERS.get("milp") is Milp
    assert Milp.complete
    assert Milp().is_installed()
    assert Milp().version().startswith("highspy ")


def test_agrees_with_marabou(milp_answers, marabou_answers):
    pairs = {i: (milp_answers[i][0], marabou_answers[i].status) for i in milp_answers}
    assert all(m == r for m, r in pairs.values()), pairs
    decided = [m for m, _ in pairs.values()]
    # Not vacuous: both answers occur.
    assert decided.count("sat") >= 2 and decided.count("unsat") >= 3, pairs


def test_counterexamples_are_exactly_valid(milp_answers, cases, bench_dir):
    sats = [i for i, (status, _) in milp_answers.items() if status == "sat"]
    assert sats
    for i in sats:
        case = cases[i]
        verdict = parse_vnncomp_result((bench_dir / f"milp{i}" / RESULT_FILE).read_text())
        x = np.asarray(verdict.counterexample["x"])
        lo, hi = _box(case["x"], case["eps"])
        assert np.all(lo <= x) and np.all(x <= hi)
        check = check_counterexample(case["onnx"], case["vnnlib"], x, verdict.counterexample["y"])
        assert check.outcome == "correct", (i, check.detail)


def test_unsat_is_not_refuted_by_sampling_or_pgd(milp_answers, cases):
    unsats = [i for i, (status, _) in milp_answers.items() if status == "unsat"]
    assert unsats
    rng = np.random.default_rng(5)
    for i in unsats:
        case = cases[i]
        lo, hi = _box(case["x"], case["eps"])
        assert not _independent_attack(case["model"], lo, hi, case["label"], case["shape"], rng), i


def test_stats_describe_the_encoding(milp_answers):
    _, stats = milp_answers[0]
    encoding = stats["encodings"][0]
    assert encoding["neurons"] == [64, 16]
    assert all(source == "interval+auto_LiRPA" for source in encoding["bounds_source"])
    assert stats["time_s"] > 0 and stats["specs"]


def test_harness_run_of_a_cnn(harness_runs, milp_answers):
    record = harness_runs["cnn"].result()
    assert record.verifier == "milp" and record.verifier_version.startswith("highspy")
    assert record.status == milp_answers[2][0] == "sat", record.reason
    assert record.cex_check == "correct", record.cex_detail
    assert 0 < record.verifier_time <= record.wall_time


# --------------------------------------------------------------------------- attack, hints, bounds


@pytest.fixture(scope="module")
def other_answers(cases, bench_dir, milp_answers) -> dict[str, dict[int, tuple[str, dict]]]:
    """The agreement cases under other settings: the solver as it was before the attack, the MIP
    starts and LP tightening (``baseline``), and ``hinted`` (HINTED_SOLVER)."""
    settings = {"baseline": SLOW_SOLVER, "hinted": HINTED_SOLVER}
    answers: dict[str, dict[int, tuple[str, dict]]] = {}
    for name, params in settings.items():
        answers[name] = {}
        for i, case in cases.items():
            code, status, stats = _run_worker(case["onnx"], case["vnnlib"],
                                              bench_dir / f"{name}{i}" / RESULT_FILE, **params)
            assert code == 0, f"{name}, case {i}: the worker failed"
            answers[name][i] = (status, stats)
    return answers


def test_solver_settings_agree(milp_answers, other_answers):
    """The attack, the hints and the tighter bounds change how an answer is found, never the
    answer."""
    statuses = {i: (status, *(other[i][0] for other in other_answers.values()))
                for i, (status, _) in milp_answers.items()}
    assert all(len(set(answers)) == 1 for answers in statuses.values()), statuses
    decided = [answers[0] for answers in statuses.values()]
    assert decided.count("sat") >= 2 and decided.count("unsat") >= 3, statuses


def test_what_the_cascade_attack_falsifies_the_attack_decides(milp_answers, cases):
    """The worker's attack is the cascade's attack stage (the same defaults and seed): every
    case that stage falsifies is sat at once, before any bounds or MILP (never a timeout)."""
    settings = CascadeSettings(stages=("attack",))
    milp = Milp()
    assert (milp.params["attack_restarts"], milp.params["attack_steps"],
            milp.params["attack_targeted"]) == \
        (settings.attack_restarts, settings.attack_steps, settings.attack_targeted) and \
        settings.seed == 0
    falsified = []
    for i, case in cases.items():
        outcome = run_stages(LoadedModel(case["onnx"]), case["vnnlib"], settings, None,
                             time.monotonic() + 60)
        if outcome.status == "sat":
            falsified.append(i)
            status, stats = milp_answers[i]
            assert status == "sat" and stats["decided_by"] == "attack", (i, status, stats)
            assert set(stats["phases"]) == {"attack"}, i
    assert falsified  # not vacuous; test_counterexamples_are_exactly_valid checks the points


def test_hints_and_tightening_are_used(milp_answers, other_answers):
    """Not vacuous: the MILPs were given the attack's points, and LP tightening ran."""
    specs = [spec for _, stats in other_answers["hinted"].values() for spec in stats["specs"]]
    assert any(spec.get("start_accepted") for spec in specs)
    assert any(stats["phases"].get("tightening", {}).get("lps", 0) > 0
               for _, stats in milp_answers.values())
    hinted = [stats["phases"]["bounds"]["method"] for _, stats in other_answers["hinted"].values()
              if "bounds" in stats["phases"]]
    assert hinted and set(hinted) == {"alpha-CROWN"}


def test_a_start_never_costs_the_answer(monkeypatch, cases, bench_dir, other_answers):
    """HiGHS can end a MIP that it was given a start for without a decision (seen: "objective
    target reached" with no feasible point); the worker then solves again without the start,
    and the answer is the same."""
    import highspy

    hinted = other_answers["hinted"]
    i = next(i for i, (_, stats) in hinted.items()
             if any(spec.get("start_accepted") for spec in stats["specs"]))
    started: set[int] = set()
    set_solution, model_status = highspy.Highs.setSolution, highspy.Highs.getModelStatus

    def start_then(self, *args):
        started.add(id(self))
        return set_solution(self, *args)

    def undecided_if_started(self):
        if id(self) in started:
            started.discard(id(self))
            return highspy.HighsModelStatus.kSolveError
        return model_status(self)

    monkeypatch.setattr(highspy.Highs, "setSolution", start_then)
    monkeypatch.setattr(highspy.Highs, "getModelStatus", undecided_if_started)
    code, status, stats = _run_worker(cases[i]["onnx"], cases[i]["vnnlib"],
                                      bench_dir / f"dropped{i}" / RESULT_FILE,
                                      **HINTED_SOLVER)
    assert code == 0 and status == hinted[i][0], (i, status)
    assert any("without_start_after" in spec for spec in stats["specs"])


def test_lp_bounds_hold_for_any_multipliers():
    """LP tightening keeps weak-duality bounds: below the LP's minimum whatever the multipliers
    (random ones, a wrong sign), and equal to it with the solver's own dual."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    rows, columns = 12, 8
    A = scipy.sparse.csr_matrix(rng.normal(size=(rows, columns)))
    row_lo = np.where(rng.random(rows) < 0.3, -np.inf, -1 - rng.random(rows))
    row_hi = np.where(rng.random(rows) < 0.3, np.inf, 1 + rng.random(rows))
    col_lo, col_hi = -rng.random(columns), rng.random(columns)
    system = worker.DualSystem(A, row_lo, row_hi, col_lo, col_hi)
    for _ in range(5):
        cost = rng.normal(size=columns)
        h = worker._highs(10.0)
        worker._pass_model(h, A, row_lo, row_hi, col_lo, col_hi, cost)
        h.run()
        minimum = h.getInfo().objective_function_value
        dual = np.asarray(h.getSolution().row_dual)
        assert system.lower_bound(cost, dual) == pytest.approx(minimum, abs=1e-7)
        for multipliers in (rng.normal(size=rows), -dual, np.zeros(rows)):
            assert system.lower_bound(cost, multipliers) <= minimum + 1e-9


def test_parameters_round_trip_to_the_worker(tmp_path):
    """Every parameter reaches the worker as given (typed, or as ``--verifier-option`` text),
    the defaults are the worker's, and bad values are refused before any instance runs."""
    params = {"bounds": "alpha-CROWN", "alpha_iterations": 7, "tighten": "none",
              "tighten_share": 0.25, "attack_restarts": 3, "attack_steps": 0, "attack_targeted": False,
              "mip_start": False}
    assert set(params) == set(Milp.parameters)  # every parameter is tried
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 12.5)
    as_text = {name: str(value).lower() if isinstance(value, bool) else str(value)
               for name, value in params.items()}
    for given in (params, as_text):
        args = worker.parse_args(Milp(**given).worker_argv(instance, tmp_path))
        assert {name: getattr(args, name) for name in params} == params
        assert args.timeout == 12.5
    args = worker.parse_args(Milp().worker_argv(instance, tmp_path))
    assert {name: getattr(args, name) for name in params} == worker.DEFAULTS
    for bad in ({"tighten_share": 1.5}, {"attack_restarts": -1}, {"alpha_iterations": 0},
                {"tighten": "milp"}, {"mip_start": "perhaps"}):
        with pytest.raises(BenchError):
            Milp(**bad)
    # The worker checks too, as an error and not an exit (a persistent worker parses them).
    args.tighten_share = 2.0
    with pytest.raises(WorkerError, match="tighten-share"):
        worker.run(args, time.monotonic() + 10)


# --------------------------------------------------------------------------- other models and ops


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # auto_LiRPA tracing a Reshape
def test_mixed_ops_are_encoded_exactly(tmp_path):
    """eps = 0 decides by the network's exact value (the worker also checks its encoding against
    onnxruntime); a large box is sat with a valid counterexample, or unsat where sampling agrees."""
    torch.manual_seed(0)
    model, shape = _Mixed().eval(), (2, 4, 4)
    onnx = tmp_path / "mixed.onnx"
    _export(model, shape, onnx)
    rng = np.random.default_rng(0)
    while True:
        x = rng.random(shape, dtype=np.float32)
        top = np.sort(_logits(model, x))
        if top[-1] - top[-2] > 1e-2:
            break
    label = int(np.argmax(_logits(model, x)))
    for eps, name in ((0.0, "exact"), (0.3, "large")):
        vnnlib = tmp_path / f"{name}.vnnlib"
        vnnlib.write_text(robustness_property(x, label, eps, NUM_CLASSES))
        code, status, stats = _run_worker(onnx, vnnlib, tmp_path / name / RESULT_FILE)
        assert code == 0
        if eps == 0.0:
            assert status == "unsat"
        elif status == "sat":
            verdict = parse_vnncomp_result((tmp_path / name / RESULT_FILE).read_text())
            check = check_counterexample(onnx, vnnlib, verdict.counterexample["x"],
                                         verdict.counterexample["y"])
            assert check.outcome == "correct", check.detail
        else:
            assert status == "unsat"
            lo, hi = _box(x, eps)
            assert not _independent_attack(model, lo, hi, label, shape, rng)


def test_unsupported_op_is_an_error(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(),
                          nn.Linear(8, NUM_CLASSES)).eval()
    _export(model, (1, 4, 4), tmp_path / "sigmoid.onnx")
    x = np.full((1, 4, 4), 0.5, dtype=np.float32)
    (tmp_path / "p.vnnlib").write_text(robustness_property(x, 0, 0.1, NUM_CLASSES))
    # Without the attack, which finds (and confirms) a counterexample before any encoding.
    code, _, _ = _run_worker(tmp_path / "sigmoid.onnx", tmp_path / "p.vnnlib",
                             tmp_path / RESULT_FILE, attack_restarts=0)
    assert code == worker.EXIT_ERROR
    assert not (tmp_path / RESULT_FILE).exists()
    assert "milp: unsupported operation Sigmoid" in capsys.readouterr().err


def test_corrupted_onnx_is_an_error(tmp_path, bench_dir, capsys):
    data = (bench_dir / "net0.onnx").read_bytes()
    (tmp_path / "corrupt.onnx").write_bytes(data[: len(data) // 2])
    code, _, _ = _run_worker(tmp_path / "corrupt.onnx", bench_dir / "prop0.vnnlib",
                             tmp_path / RESULT_FILE)
    assert code == worker.EXIT_ERROR
    assert "milp: cannot read ONNX model" in capsys.readouterr().err


# --------------------------------------------------------------------------- VNN-COMP fixtures


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_vnncomp_fixtures_give_their_known_answers(bench_dir, tmp_path):
    folder = bench_dir / "vnncomp"
    for (onnx, vnnlib), known in KNOWN.items():
        result = tmp_path / onnx / RESULT_FILE
        code, status, _ = _run_worker(folder / onnx, folder / vnnlib, result)
        assert code == 0 and status == known, (onnx, status)
        if status == "sat":
            verdict = parse_vnncomp_result(result.read_text())
            check = check_counterexample(folder / onnx, folder / vnnlib,
                                         verdict.counterexample["x"], verdict.counterexample["y"])
            assert check.outcome == "correct", check.detail


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_vnncomp_sat_fixture_through_the_harness(harness_runs):
    record = harness_runs["fixture_sat"].result()
    assert record.status == "sat" and record.cex_check == "correct", record.reason


# --------------------------------------------------------------------------- time limit


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_time_limit_in_process(bench_dir, tmp_path):
    """ACAS Xu 1-6 with interval bounds only takes minutes: the worker stops itself in time."""
    folder = bench_dir / "vnncomp"
    start = time.monotonic()
    code, status, stats = _run_worker(folder / "test_unsat.onnx", folder / "test_prop.vnnlib",
                                      tmp_path / RESULT_FILE, timeout=3, bounds="interval",
                                      **SLOW_SOLVER)
    elapsed = time.monotonic() - start
    assert code == 0 and status == "timeout"
    assert "time limit of 3 s" in stats["reason"]
    assert elapsed < 3 + 1.0


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_time_limit_through_the_harness(harness_runs):
    record = harness_runs["timeout"].result()
    assert record.status == "timeout", record.reason
    # The worker counts its limit from its own start (imports included) and stops before the
    # harness's hard limit; under heavy load the harness may have to stop it instead.
    assert record.wall_time < record.timeout + 5.0 + 1.0
    assert "time limit of 8 s" in record.reason or "hard timeout" in record.reason


# --------------------------------------------------------------------------- parsing and command


def _parse(tmp_path: Path, result: str | None, stats: str | None = '{"time_s": 1.5}',
           returncode: int = 0, stderr: str = ""):
    if result is not None:
        (tmp_path / RESULT_FILE).write_text(result)
    if stats is not None:
        (tmp_path / STATS_FILE).write_text(stats)
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 10)
    return Milp().parse(instance, tmp_path, "", stderr, returncode)


def test_parse_answers_time_and_reasons(tmp_path):
    verdict = _parse(tmp_path, "sat\n((X_0 0.5)\n (X_1 -1e-3)\n (Y_0 2.0))\n")
    assert verdict.status is Status.SAT and verdict.verifier_time == 1.5
    assert verdict.counterexample == {"x": [0.5, -0.001], "y": [2.0]}
    assert _parse(tmp_path, "unsat\n").status is Status.UNSAT
    verdict = _parse(tmp_path, "unknown\n", '{"time_s": 2, "reason": "a tie"}')
    assert verdict.status is Status.UNKNOWN and verdict.reason == "a tie"
    verdict = _parse(tmp_path, "timeout\n", '{"time_s": 9, "reason": "time limit of 9 s"}')
    assert verdict.status is Status.TIMEOUT and verdict.reason == "time limit of 9 s"


@pytest.mark.parametrize("result, stats, returncode, stderr, reason", [
    (None, None, 0, "", "no result.txt"),
    ("", '{"time_s": 1}', 0, "", "first line"),
    ("maybe\n", '{"time_s": 1}', 0, "", "first line 'maybe'"),
    ("unsat\n", None, 0, "", "no result.json"),
    ("unsat\n", '{"time_s": -1}', 0, "", "no valid time_s"),
    (None, None, 2, "Traceback...\nmilp: unsupported operation Sigmoid", "unsupported operation"),
    (None, None, -9, "", "signal 9"),
])
def test_parse_failures_are_errors(tmp_path, result, stats, returncode, stderr, reason):
    verdict = _parse(tmp_path, result, stats, returncode, stderr)
    assert verdict.status is Status.ERROR
    assert reason in verdict.reason


def test_sat_with_a_malformed_counterexample_is_an_error(tmp_path):
    # Our worker checks its counterexample before writing it: a sat without a readable one
    # means a broken result file (bench.verifiers.worker.parse_result_file).
    verdict = _parse(tmp_path, "sat\n((X_1 0.5) (Y_0 1))\n")
    assert verdict.status is Status.ERROR and verdict.counterexample is None
    assert "indices" in verdict.reason


def test_command_runs_the_worker_single_threaded(tmp_path):
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 12.5)
    command = Milp(bounds="IBP").command(instance, tmp_path)
    assert command.argv[1:3] == ["-m", "bench.verifiers._milp_main"]
    assert command.argv[command.argv.index("--bounds") + 1] == "IBP"
    assert command.argv[command.argv.index("--timeout") + 1] == "12.5"
    assert command.argv[command.argv.index("--result") + 1] == str(tmp_path / RESULT_FILE)
    assert command.env["OMP_NUM_THREADS"] == "1"
    # A bad value is refused when the verifier is made, before any instance runs.
    with pytest.raises(BenchError,
                       match="bounds='magic' is not one of CROWN, alpha-CROWN, IBP, interval"):
        Milp(bounds="magic")


def test_vnnlib_boxes_of_the_cases_are_what_the_tests_assume(cases):
    # Guards the soundness tests: they rebuild the box from (x, eps) themselves.
    case = cases[0]
    _, _, disjuncts = read_vnnlib(case["vnnlib"])
    lo, hi = _box(case["x"], case["eps"])
    np.testing.assert_array_equal(disjuncts[0][0][:, 0], lo)
    np.testing.assert_array_equal(disjuncts[0][0][:, 1], hi)
