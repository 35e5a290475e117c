"""Per-level metrics: accuracies, verified accuracies, neuron instability."""
import pytest
import torch

from bench.data import load_dataset
from bench.build.metrics import level_metrics
from bench.models import build_model
from bench.models.normalize import Normalizer

KEYS = {"samples", "eps", "standard_accuracy", "pgd_accuracy", "pgd", "ibp_verified_accuracy",
        "crown_verified_accuracy", "instability", "instability_pre_bn", "instability_bounds",
        "unstable_ratio", "unstable_ratio_per_layer"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: a second thread buys nothing and costs a lot on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    digits = load_dataset("digits")
    normalizer = Normalizer(digits.mean, digits.std)
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, digits.num_classes)
    # A few steps of natural training so that accuracies are neither 0 nor 1, and BN has
    # running statistics of its own.
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for start in range(0, 960, 64):
        x, y = digits.train_x[start:start + 64], digits.train_y[start:start + 64]
        loss = torch.nn.functional.cross_entropy(model(normalizer(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, digits.test_x[:40], digits.test_y[:40], normalizer


def metrics(setup, eps, **options):
    model, x, y, normalizer = setup
    return level_metrics(model, x, y, normalizer, eps, pgd_steps=5, batch_size=25, **options)


def test_keys_and_the_order_of_accuracies(setup):
    result = metrics(setup, 0.02)
    assert set(result) == KEYS
    assert result["samples"] == 40
    assert result["pgd"] == {"steps": 5, "step_size": pytest.approx(0.01), "restarts": 1}
    assert 0.3 < result["standard_accuracy"] < 1.0
    # Verified implies robust to the attack, which implies correct.
    for verified in ("ibp_verified_accuracy", "crown_verified_accuracy"):
        assert result[verified] <= result["pgd_accuracy"] <= result["standard_accuracy"]
    assert result["crown_verified_accuracy"] > 0  # not a vacuous check at this eps
    assert result["instability"] > 0 and result["instability_pre_bn"] > 0
    assert 0 < result["unstable_ratio"] < 1
    assert len(result["unstable_ratio_per_layer"]) == 3  # two conv blocks and one FC layer
    assert all(0 <= r <= 1 for r in result["unstable_ratio_per_layer"])


def test_at_eps_zero_everything_collapses_to_standard_accuracy(setup):
    result = metrics(setup, 0.0)
    standard = result["standard_accuracy"]
    assert result["pgd_accuracy"] == standard
    assert result["ibp_verified_accuracy"] == standard
    assert result["crown_verified_accuracy"] == standard
    assert result["instability"] == 0.0 and result["instability_pre_bn"] == 0.0
    assert result["unstable_ratio"] == 0.0


def test_instability_grows_with_eps(setup):
    tiny, small, large = (metrics(setup, eps) for eps in (1e-7, 0.01, 0.05))
    assert tiny["instability"] < 1e-9 and tiny["unstable_ratio"] < 1e-3
    assert 0 < small["instability"] < large["instability"]
    assert small["unstable_ratio"] < large["unstable_ratio"]
    assert large["ibp_verified_accuracy"] <= small["ibp_verified_accuracy"]


def test_deterministic_and_leaves_the_model_alone(setup):
    model, *_ = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        first = metrics(setup, 0.05, pgd_restarts=2, seed=3)
        second = metrics(setup, 0.05, pgd_restarts=2, seed=3)
    finally:
        assert model.training  # its mode is its own
        model.eval()
    assert first == second
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
