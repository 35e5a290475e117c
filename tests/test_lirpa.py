"""The ``lirpa`` verifier: exact answers at eps=0, valid counterexamples, soundness against an
independent attack, errors that stay errors, and the VNN-COMP test fixtures.

Runs through the harness start one worker process each (seconds of imports), so they are few and
run two at a time; the soundness cross-check calls the worker's ``main`` in this process.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.formats.folder import Instance
from bench.verifiers import Status
from bench.verifiers import _lirpa_main as worker
from bench.verifiers.harness import RunRecord, run_instance
from bench.verifiers.lirpa import RESULT_FILE, STATS_FILE, Lirpa, parse_result_file
from bench.formats.vnnlib import robustness_property

from paths import FIXTURES  # noqa: E402
NUM_CLASSES = 10


# --------------------------------------------------------------------------- models and files


def _normalize(channels: int, mean: float = 0.13, std: float = 0.31) -> nn.Conv2d:
    """Normalization as the exported models have it: a 1x1 depthwise convolution."""
    conv = nn.Conv2d(channels, channels, 1, groups=channels)
    with torch.no_grad():
        conv.weight.fill_(1 / std)
        conv.bias.fill_(-mean / std)
    return conv


def _cnn(seed: int, channels: int = 1, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    half = (side + 1) // 2
    return nn.Sequential(
        _normalize(channels), nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * half * half, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES),
    ).eval()


def _mlp(seed: int, channels: int = 1, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        _normalize(channels), nn.Flatten(), nn.Linear(channels * side * side, 20), nn.ReLU(),
        nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, NUM_CLASSES),
    ).eval()


def _plain_mlp(seed: int, channels: int = 1, side: int = 8) -> nn.Module:
    """No normalization: the graph starts with Flatten."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 24), nn.ReLU(),
                         nn.Linear(24, NUM_CLASSES)).eval()


class _FixedBatchCNN(nn.Module):
    """Flattens with ``reshape(1, -1)``: the ONNX graph has a Reshape to a batch of 1, so the
    converted model cannot run a batch (the worker's attack must notice and go one by one)."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        half = (side + 1) // 2
        self.normalize = _normalize(channels)
        self.conv = nn.Conv2d(channels, 4, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(4 * half * half, 16), nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(self.normalize(x)))
        return self.fc2(torch.relu(self.fc1(hidden.reshape(1, -1))))

    def batched(self) -> nn.Module:
        """The same function (shared weights) for batches, for the test's own attack."""
        return nn.Sequential(self.normalize, self.conv, nn.ReLU(), nn.Flatten(), self.fc1,
                             nn.ReLU(), self.fc2)


def _fixed_batch_cnn(seed: int, channels: int = 1, side: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return _FixedBatchCNN(channels, side).eval()


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["output"])


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)[None]).numpy().reshape(-1)


def _point(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # float32 values, so that an eps=0 box is exactly representable
    return rng.random(shape, dtype=np.float32)


def _write_property(path: Path, x: np.ndarray, label: int, eps: float) -> None:
    path.write_text(robustness_property(x, label, eps, NUM_CLASSES))


def _box(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    flat = x.astype(np.float64).reshape(-1)
    return np.clip(flat - eps, 0, 1), np.clip(flat + eps, 0, 1)


def _ort_logits(onnx_path: Path, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {"input": np.asarray(x, dtype=np.float32).reshape(1, *shape)}
    return np.asarray(session.run(None, feed)[0], dtype=np.float64).reshape(-1)


def _assert_valid_cex(onnx_path: Path, x0: np.ndarray, label: int, eps: float,
                      cex: dict[str, list[float]], shape: tuple[int, ...]) -> None:
    """Independent check with onnxruntime: x in the box, and some other logit >= the label's."""
    x = np.asarray(cex["x"], dtype=np.float64)
    lo, hi = _box(x0, eps)
    assert x.shape == lo.shape and np.all(lo <= x) and np.all(x <= hi)
    assert np.float32(x).astype(np.float64).tolist() == x.tolist()  # reported exactly
    y = _ort_logits(onnx_path, x, shape)
    assert np.delete(y, label).max() >= y[label]
    np.testing.assert_allclose(cex["y"], y, rtol=1e-6, atol=1e-6)


def _run_all(verifier: Lirpa, instances: dict[str, Instance], log_dir: Path
             ) -> dict[str, RunRecord]:
    """Harness runs, two at a time (the worker spends most of its time importing)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(run_instance, verifier, instance, log_dir)
                   for key, instance in instances.items()}
        return {key: future.result() for key, future in futures.items()}


# --------------------------------------------------------------------------- harness runs


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory) -> dict:
    """Our own exported CNN and MLP: eps=0 around a point (both), eps=1 (CNN), a corrupted file."""
    root = tmp_path_factory.mktemp("lirpa_bench")
    shape = (1, 8, 8)
    rng = np.random.default_rng(1)
    models = {"cnn": _cnn(3), "mlp": _mlp(4)}
    cases, instances = {}, {}
    for name, model in models.items():
        _export(model, shape, root / f"{name}.onnx")
        # A point whose top two logits are clearly apart: eps=0 bounds are exact up to float32
        # rounding, but a proof needs a margin of PROOF_MARGIN.
        while True:
            x = _point(rng, shape)
            top = np.sort(_logits(model, x))
            if top[-1] - top[-2] > 100 * worker.PROOF_MARGIN:
                break
        label = int(np.argmax(_logits(model, x)))
        _write_property(root / f"{name}_exact.vnnlib", x, label, 0.0)
        cases[f"{name}_exact"] = (x, label, 0.0)
        instances[f"{name}_exact"] = Instance("own", root, f"{name}.onnx",
                                              f"{name}_exact.vnnlib", 60)

    x, label = cases["cnn_exact"][:2]
    # Precondition for "sat": some point of the whole input cube changes the CNN's class.
    samples = rng.random((4000, *shape), dtype=np.float32)
    with torch.no_grad():
        out = models["cnn"](torch.from_numpy(samples)).numpy()
    assert (np.delete(out, label, axis=1).max(axis=1) >= out[:, label]).any()
    _write_property(root / "cnn_huge.vnnlib", x, label, 1.0)
    cases["cnn_huge"] = (x, label, 1.0)
    instances["cnn_huge"] = Instance("own", root, "cnn.onnx", "cnn_huge.vnnlib", 60)

    data = (root / "cnn.onnx").read_bytes()
    (root / "corrupt.onnx").write_bytes(data[: len(data) // 2])  # a truncated download
    instances["corrupt"] = Instance("own", root, "corrupt.onnx", "cnn_exact.vnnlib", 60)

    runs = _run_all(Lirpa(), instances, root / "logs")
    return {"root": root, "shape": shape, "cases": cases, "runs": runs}


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_eps_zero_around_the_argmax_is_unsat(own_runs, name):
    record = own_runs["runs"][f"{name}_exact"]
    assert record.status == Status.UNSAT.value, record.reason
    assert record.verifier_time is not None and 0 < record.verifier_time <= record.wall_time


def test_huge_eps_gives_a_valid_counterexample(own_runs):
    record = own_runs["runs"]["cnn_huge"]
    assert record.status == Status.SAT.value, record.reason
    assert record.cex_check == "correct", record.cex_detail
    # Check it again without the project's checker: read the result file ourselves.
    workdir = Path(record.log_path)
    verdict = parse_result_file((workdir / RESULT_FILE).read_text())
    x0, label, eps = own_runs["cases"]["cnn_huge"]
    _assert_valid_cex(own_runs["root"] / "cnn.onnx", x0, label, eps, verdict.counterexample,
                      own_runs["shape"])


def test_corrupted_onnx_is_an_error(own_runs):
    record = own_runs["runs"]["corrupt"]
    assert record.status == Status.ERROR.value
    assert "cannot read ONNX model" in record.reason


# --------------------------------------------------------------------------- soundness


def _independent_attack(model: nn.Module, lo: np.ndarray, hi: np.ndarray, label: int,
                        shape: tuple[int, ...], rng: np.random.Generator) -> bool:
    """Whether dense sampling or a PGD different from the worker's (a logit-margin loss, fixed
    step, many restarts, box vertices) finds a point where another logit is >= the label's."""
    if isinstance(model, _FixedBatchCNN):
        model = model.batched()
    lo_t = torch.from_numpy(lo.astype(np.float32)).reshape(1, *shape)
    hi_t = torch.from_numpy(hi.astype(np.float32)).reshape(1, *shape)
    width = hi_t - lo_t

    def violated(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(x)
        others = torch.cat([out[:, :label], out[:, label + 1:]], dim=1)
        return others.max(dim=1).values >= out[:, label]

    uniform = lo_t + width * torch.from_numpy(rng.random((3000, *shape), dtype=np.float32))
    vertices = torch.where(torch.from_numpy(rng.random((1000, *shape)) < 0.5), lo_t, hi_t)
    if violated(uniform).any() or violated(vertices).any():
        return True
    x = uniform[:20].clone()
    for _ in range(40):
        x.requires_grad_(True)
        out = model(x)
        others = torch.cat([out[:, :label], out[:, label + 1:]], dim=1)
        margin = out[:, label] - torch.logsumexp(10 * others, dim=1) / 10  # smooth max
        (grad,) = torch.autograd.grad(margin.sum(), x)
        x = torch.minimum(torch.maximum(x.detach() - 0.1 * width * grad.sign(), lo_t), hi_t)
        if violated(x).any():
            return True
    return False


@pytest.fixture
def one_thread():
    """torch on one thread, as the harness runs the worker (OMP_NUM_THREADS=1): these tensors
    are tiny, and two threads on a busy two-core machine mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_soundness_against_sampling_and_an_independent_attack(tmp_path, one_thread):
    counts = {"sat": 0, "unsat": 0, "unknown": 0}
    builders = [(_cnn, (1, 8, 8)), (_mlp, (1, 8, 8)), (_cnn, (3, 5, 5)), (_mlp, (2, 4, 4)),
                (_fixed_batch_cnn, (1, 6, 6)), (_plain_mlp, (1, 8, 8))]
    for trial in range(20):
        rng = np.random.default_rng(700 + trial)
        build, shape = builders[trial % len(builders)]
        model = build(100 + trial, channels=shape[0], side=shape[1])
        onnx_path = tmp_path / f"net{trial}.onnx"
        _export(model, shape, onnx_path)
        x = _point(rng, shape)
        logits = _logits(model, x)
        # Mostly the true argmax, sometimes the runner-up (sat at small eps).
        label = int(np.argsort(logits)[-1 if trial % 5 else -2])
        eps = float(10 ** rng.uniform(-3, -0.7))
        vnnlib = tmp_path / f"prop{trial}.vnnlib"
        _write_property(vnnlib, x, label, eps)
        result = tmp_path / f"result{trial}.txt"
        # Odd trials without PGD (the box centre only): their "unsat" rests on the bounds
        # alone, which the independent attack then tries to refute.
        steps, restarts = ("50", "3") if trial % 2 == 0 else ("0", "1")
        code = worker.main(["--onnx", str(onnx_path), "--vnnlib", str(vnnlib),
                            "--result", str(result), "--pgd-steps", steps,
                            "--pgd-restarts", restarts])
        assert code == 0
        verdict = parse_result_file(result.read_text())
        counts[verdict.status.value] += 1
        context = f"trial {trial}: {build.__name__} {shape}, label {label}, eps {eps:.4g}"
        if verdict.status is Status.SAT:
            _assert_valid_cex(onnx_path, x, label, eps, verdict.counterexample, shape)
        elif verdict.status is Status.UNSAT:
            lo, hi = _box(x, eps)
            assert not _independent_attack(model, lo, hi, label, shape, rng), context
    # Not vacuous: both decisions happened.
    assert counts["sat"] >= 2 and counts["unsat"] >= 5, counts


# --------------------------------------------------------------------------- alpha-CROWN


def test_alpha_slopes_stay_in_the_unit_interval_and_get_a_gradient():
    """bench.lirpa_compat's clamp of the ReLU slopes: the value clamped to [0, 1] where the
    neuron is unstable (any slope there gives sound bounds), 1 where active, 0 where inactive;
    the gradient passes even at 0 and 1, where alpha-CROWN starts (torch's clamp stops it)."""
    from bench.lirpa_compat import auto_LiRPA  # noqa: F401  (applies the patches)
    from auto_LiRPA.operators.activation import BoundRelu

    lower = torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.5, -2.0])
    upper = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
    slope = torch.tensor([-0.5, 1.5, 0.0, 1.0, 0.3, 0.7], requires_grad=True)
    lb_slope, _, _ = BoundRelu._relu_mask_alpha(lower, upper, slope, None)
    assert lb_slope.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    lb_slope.sum().backward()
    assert slope.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _mlp_bounder(tmp_path: Path, seed: int, eps: float = 0.02):
    """A small MLP exported to ONNX, its Bounder, and a robustness box around a random point:
    ``(model, shape, rng, lo, hi, rows, bounder, samples)``."""
    from bench.verifiers.onnx_torch import LoadedModel

    shape = (1, 8, 8)
    model = _mlp(seed, channels=shape[0], side=shape[1])
    onnx_path = tmp_path / "mlp.onnx"
    _export(model, shape, onnx_path)
    rng = np.random.default_rng(seed)
    x = _point(rng, shape)
    label = int(np.argmax(_logits(model, x)))
    lo, hi = _box(x, eps)
    rows = np.delete(np.eye(NUM_CLASSES)[label] - np.eye(NUM_CLASSES), label, axis=0)
    loaded = LoadedModel(onnx_path)
    bounder = worker.Bounder(loaded.network, loaded.prepared_shape, loaded.conv_mode)
    samples = bounder.samples((lo.astype(np.float32), hi.astype(np.float32)))
    return model, shape, rng, lo, hi, rows, bounder, samples


def test_alpha_crown_improves_on_crown_and_stays_sound(tmp_path, one_thread):
    """With the slopes free to move, alpha-CROWN's bounds are CROWN's or better (on some row
    strictly), and never above the network's value at a sampled point of the box."""
    model, shape, rng, lo, hi, rows, bounder, samples = _mlp_bounder(tmp_path, 3)
    crown = bounder.lower_bounds(samples, rows, "CROWN")
    alpha = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=20)
    assert np.all(alpha >= crown - 1e-5), (alpha, crown)
    assert np.any(alpha > crown + 1e-3), (alpha, crown)
    points = lo + (hi - lo) * rng.random((2000, lo.size))
    values = rows @ _batch_logits(model, points, shape).T
    assert np.all(alpha[:, None] <= values + 1e-5)


def _count_alpha_steps(bounder) -> list:
    """A list that grows by one per alpha-CROWN step of ``bounder`` (auto_LiRPA asks the stop
    criterion once per step)."""
    steps: list = []
    set_options = bounder.module.set_bound_opts

    def counting(options):
        criterion = options.get("optimize_bound_args", {}).get("stop_criterion_func")
        if criterion is not None:
            def counted(lower):
                steps.append(1)
                return criterion(lower)
            options["optimize_bound_args"]["stop_criterion_func"] = counted
        return set_options(options)

    bounder.module.set_bound_opts = counting
    return steps


def test_alpha_crown_stops_once_every_bound_clears_its_target(tmp_path, one_thread):
    """The cascade and the lirpa verifier only need each bound past its right-hand side: once
    all are, further steps are wasted. On the demo, alpha-CROWN ran all 20 steps on every
    property it proved (about 7 s each), because auto_LiRPA 0.3 stops only on a criterion that
    is a tensor, not a bool."""
    *_, rows, bounder, samples = _mlp_bounder(tmp_path, 3)
    crown = bounder.lower_bounds(samples, rows, "CROWN")
    steps = _count_alpha_steps(bounder)
    best = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=200)
    unstopped = len(steps)
    target = crown + (best - crown) / 2 - 1e-4  # halfway: reached long before the best bound
    steps.clear()
    stopped = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=200,
                                   stop_above=target)
    assert np.all(stopped > target)
    assert len(steps) < unstopped / 4, (len(steps), unstopped)


def test_alpha_crown_gives_up_once_it_stalls_when_asked(tmp_path, one_thread):
    """The cascade's alpha-CROWN stops once no bound can reach its target at the pace of its
    last steps (the property goes to the verifier); without ``give_up_with`` (the lirpa
    verifier), every step runs. Either way the bounds are sound and at least CROWN's."""
    model, shape, rng, lo, hi, rows, bounder, samples = _mlp_bounder(tmp_path, 3)
    crown = bounder.lower_bounds(samples, rows, "CROWN")
    steps = _count_alpha_steps(bounder)
    out_of_reach = crown + 1.0
    kept_on = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=60,
                                   stop_above=out_of_reach)
    assert len(steps) == 60
    steps.clear()
    gave_up = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=60,
                                   stop_above=out_of_reach, give_up_with=[1] * len(rows))
    assert worker.AlphaStop.GIVE_UP_AFTER <= len(steps) < 20, len(steps)
    assert np.all(gave_up >= crown - 1e-5) and np.all(gave_up <= kept_on + 1e-5)
    points = lo + (hi - lo) * rng.random((2000, lo.size))
    values = rows @ _batch_logits(model, points, shape).T
    assert np.all(gave_up[:, None] <= values + 1e-5)


def test_alpha_crown_on_crowns_inner_bounds_keeps_them_and_stays_sound(tmp_path, one_thread):
    """Given CROWN's bounds of the ReLUs' inputs (the cascade's default), alpha-CROWN leaves
    them as they are and optimizes the output's relaxation only: at least CROWN's bounds (better
    on some row), and never above a sampled value."""
    model, shape, rng, lo, hi, rows, bounder, samples = _mlp_bounder(tmp_path, 3)
    crown = bounder.lower_bounds(samples, rows, "CROWN")
    inner = bounder.relu_input_bounds()
    assert len(inner) == 2  # the MLP's two ReLU layers
    bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=20)  # every layer's
    assert any(not torch.equal(after[0], inner[name][0])
               for name, after in bounder.relu_input_bounds().items())
    kept = bounder.lower_bounds(samples, rows, "alpha-CROWN", iterations=20, intermediate=inner)
    for name, (lower, upper) in bounder.relu_input_bounds().items():
        assert torch.equal(lower, inner[name][0]) and torch.equal(upper, inner[name][1]), name
    assert np.all(kept >= crown - 1e-5) and np.any(kept > crown + 1e-4), (kept, crown)
    points = lo + (hi - lo) * rng.random((2000, lo.size))
    values = rows @ _batch_logits(model, points, shape).T
    assert np.all(kept[:, None] <= values + 1e-5)


def _alpha_stop_calls(criterion, bounds: list[list[float]]) -> list[list[bool]]:
    return [criterion(torch.tensor([row])).reshape(-1).tolist() for row in bounds]


def test_alpha_stop_gives_up_only_on_a_spec_none_of_whose_rows_can_reach():
    """A spec is excluded by any one of its rows: the criterion gives up (all True) only when
    every row of some spec stays short of its target at twice the pace of its last two steps,
    and never before its third bound."""
    target = np.zeros(2)
    # One spec of two rows: row 0 has stalled far below, row 1 still climbs fast enough.
    climbing = worker.AlphaStop(target, steps=10, spec_rows=[2])
    calls = _alpha_stop_calls(climbing, [[-1.0, -1.0], [-0.99, -0.6], [-0.99, -0.5],
                                         [-0.99, -0.45], [-0.99, -0.4]])
    assert all(call == [False, False] for call in calls) and not climbing.gave_up
    # The same rows as two specs: row 0 alone cannot reach, so the property cannot be proved.
    split = worker.AlphaStop(target, steps=10, spec_rows=[1, 1])
    calls = _alpha_stop_calls(split, [[-1.0, -1.0], [-0.99, -0.6], [-0.99, -0.5]])
    assert calls == [[False, False], [False, False], [True, True]] and split.gave_up
    # One step without a gain is not a stall while the step before it gained enough.
    paused = worker.AlphaStop(np.zeros(1), steps=10, spec_rows=[1])
    calls = _alpha_stop_calls(paused, [[-1.0], [-0.9], [-0.9], [-0.9]])
    assert calls == [[False], [False], [False], [True]]
    # Hopeless from the start, but the first two bounds are never judged.
    early = worker.AlphaStop(target, steps=10, spec_rows=[1, 1])
    assert _alpha_stop_calls(early, [[-5.0, -5.0], [-5.0, -5.0]]) == [[False, False]] * 2
    # A row that cleared its target counts as reached; without spec_rows: the targets only.
    plain = worker.AlphaStop(target, steps=10)
    assert _alpha_stop_calls(plain, [[-5.0, 1.0]] * 4) == [[False, True]] * 4


def test_a_failed_bound_leaves_no_state_behind(tmp_path, monkeypatch):
    """A persistent worker keeps one bounded module per model. When a computation fails (on the
    FGSM study models, auto_LiRPA 0.3's sparse alpha failed with "shape mismatch"), the next box
    must get a clean module: before, the leftover state made the next CROWN fail too, and 121 of
    200 instances of one level became errors."""
    *_, rows, bounder, samples = _mlp_bounder(tmp_path, 4)
    expected = bounder.lower_bounds(samples, rows, "CROWN")
    poisoned = bounder.module

    def fail(*args, **kwargs):
        raise RuntimeError("shape mismatch: value tensor of shape [9, 1, 64]")

    monkeypatch.setattr(poisoned, "compute_bounds", fail)
    with pytest.raises(worker.WorkerError, match="shape mismatch"):
        bounder.lower_bounds(samples, rows, "alpha-CROWN")
    assert bounder.module is not poisoned
    assert np.allclose(bounder.lower_bounds(samples, rows, "CROWN"), expected)
    # Dense slopes for alpha-CROWN: the sparse ones failed on boxes whose unstable set changed.
    assert bounder.module.bound_opts["sparse_features_alpha"] is False
    assert bounder.module.bound_opts["sparse_spec_alpha"] is False


def _batch_logits(model: nn.Module, points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(points, dtype=torch.float32).reshape(-1, *shape)).numpy()


# --------------------------------------------------------------------------- VNN-COMP fixtures


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_vnncomp_test_fixtures(tmp_path):
    rows = [line.split(",") for line in (FIXTURES / "instances.csv").read_text().split()]
    instances = {onnx: Instance("test", FIXTURES, onnx, vnnlib, float(timeout))
                 for onnx, vnnlib, timeout in rows}
    runs = _run_all(Lirpa(), instances, tmp_path)
    for onnx in ("test_nano.onnx", "test_tiny.onnx", "test_small.onnx"):
        assert runs[onnx].status in ("unsat", "unknown"), (onnx, runs[onnx].reason)
    # Known sat (ACAS Xu 1-7, property 3): never unsat; a counterexample must be valid.
    assert runs["test_sat.onnx"].status in ("sat", "unknown", "error"), runs["test_sat.onnx"]
    if runs["test_sat.onnx"].status == "sat":
        assert runs["test_sat.onnx"].cex_check == "correct", runs["test_sat.onnx"].cex_detail
    # Known unsat (ACAS Xu 1-6, property 3): never sat.
    assert runs["test_unsat.onnx"].status in ("unsat", "unknown", "error"), runs["test_unsat.onnx"]


# --------------------------------------------------------------------------- parse()


def _parse(tmp_path: Path, result: str | None, stats: str | None = '{"time_s": 1.5}',
           returncode: int = 0, stderr: str = ""):
    if result is not None:
        (tmp_path / RESULT_FILE).write_text(result)
    if stats is not None:
        (tmp_path / STATS_FILE).write_text(stats)
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 10)
    return Lirpa().parse(instance, tmp_path, "", stderr, returncode)


def test_parse_answers_and_time(tmp_path):
    verdict = _parse(tmp_path, "sat\n((X_0 0.5)\n (X_1 -1e-3)\n (Y_0 2.0))\n")
    assert verdict.status is Status.SAT and verdict.verifier_time == 1.5
    assert verdict.counterexample == {"x": [0.5, -0.001], "y": [2.0]}
    assert _parse(tmp_path, "unsat\n").status is Status.UNSAT
    assert _parse(tmp_path, "unknown\n").status is Status.UNKNOWN


@pytest.mark.parametrize("result, stats, returncode, stderr, reason", [
    (None, None, 0, "", "no result.txt"),
    ("", '{"time_s": 1}', 0, "", "first line"),
    ("holds\n", '{"time_s": 1}', 0, "", "first line"),
    ("sat\n", '{"time_s": 1}', 0, "", "no counterexample"),
    ("sat\n((X_1 0.5) (Y_0 1))\n", '{"time_s": 1}', 0, "", "indices"),
    ("sat\n((X_0 nan) (Y_0 1))\n", '{"time_s": 1}', 0, "", "X_0"),
    ("unsat\n", None, 0, "", "no result.json"),
    ("unsat\n", "{not json", 0, "", "malformed result.json"),
    ("unsat\n", '{"time_s": 1}', 2, "Traceback...\nlirpa: onnx2torch cannot convert", "onnx2torch"),
    (None, None, -9, "", "signal 9"),
])
def test_parse_failures_are_errors(tmp_path, result, stats, returncode, stderr, reason):
    verdict = _parse(tmp_path, result, stats, returncode, stderr)
    assert verdict.status is Status.ERROR
    assert reason in verdict.reason


def test_stats_file_is_where_the_worker_writes_it():
    assert Path(RESULT_FILE).with_suffix(".json").name == STATS_FILE


def test_command_runs_the_worker_single_threaded(tmp_path):
    instance = Instance("b", tmp_path, "m.onnx", "p.vnnlib", 10)
    command = Lirpa(method="alpha-CROWN", pgd_steps=7).command(instance, tmp_path)
    assert command.argv[1:3] == ["-m", "bench.verifiers._lirpa_main"]
    assert command.argv[command.argv.index("--method") + 1] == "alpha-CROWN"
    assert command.argv[command.argv.index("--pgd-steps") + 1] == "7"
    assert command.argv[command.argv.index("--result") + 1] == str(tmp_path / RESULT_FILE)
    assert command.env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("params, message", [
    ({"method": "magic"}, "method='magic' is not one of CROWN, alpha-CROWN"),
    ({"device": "cuda"}, "device='cuda' is not one of cpu"),
    ({"pgd_steps": "many"}, "pgd_steps='many' is not an integer"),
    ({"pgd_restarts": -1}, "pgd_restarts=-1 must be at least 0"),
])
def test_bad_parameters_are_refused_up_front(params, message):
    with pytest.raises(BenchError, match=message):
        Lirpa(**params)
