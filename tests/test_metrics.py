"""Per-level metrics: accuracies, verified accuracies, neuron instability."""
import contextlib

import pytest
import torch
from torch import nn

import bench.build.metrics
from bench.build.metrics import count_relus, level_metrics, unstable_relus_per_sample
from bench.data import load_dataset
from bench.lirpa_compat import dense_small_conv_transpose
from bench.models import build_model
from bench.models.normalize import Normalizer

KEYS = {"samples", "eps", "standard_accuracy", "pgd_accuracy", "pgd", "ibp_verified_accuracy",
        "crown_verified_accuracy", "instability", "instability_pre_bn", "instability_bounds",
        "unstable_ratio", "unstable_ratio_per_layer", "per_sample"}
pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert result["per_sample"] == {"unstable_relus": [0] * 40, "unstable_relus_ibp": [0] * 40}
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


def test_count_relus_of_cnn4_on_digits(setup):
    model, *_ = setup
    # 8 x 4 x 4 after the first strided conv, 16 x 2 x 2 after the second, 64 in the FC layer.
    assert count_relus(model, (1, 8, 8)) == 8 * 4 * 4 + 16 * 2 * 2 + 64 == 256
    model.train()
    try:
        count_relus(model, (1, 8, 8))
        assert model.training  # its mode is its own
    finally:
        model.eval()


def test_per_sample_unstable_relus_add_up_to_the_unstable_ratio(setup):
    model, x, _, normalizer = setup
    result = metrics(setup, 0.03)
    per_sample = result["per_sample"]
    relus = count_relus(model, (1, 8, 8))
    assert set(per_sample) == {"unstable_relus", "unstable_relus_ibp"}
    for counts in per_sample.values():
        assert len(counts) == 40 and all(isinstance(c, int) and 0 <= c <= relus for c in counts)
    assert len(set(per_sample["unstable_relus"])) > 1  # they differ from sample to sample
    # The per-level ratio is their mean over samples and neurons (same CROWN bounds).
    assert sum(per_sample["unstable_relus"]) == pytest.approx(
        result["unstable_ratio"] * 40 * relus, abs=1e-6)
    # CROWN's intermediate bounds are intersected with IBP's: never more unstable ReLUs.
    assert all(c <= i for c, i in zip(per_sample["unstable_relus"],
                                      per_sample["unstable_relus_ibp"]))
    assert sum(per_sample["unstable_relus_ibp"]) > sum(per_sample["unstable_relus"])


def test_counts_from_any_network_and_box_match_the_builds(setup):
    """What pack computes for samples the build did not see, on a network given its boxes in
    its own input coordinates, is what level_metrics computes."""
    model, x, _, normalizer = setup
    expected = metrics(setup, 0.03)["per_sample"]
    lower, upper = normalizer.box(x, 0.03)
    assert unstable_relus_per_sample(model, lower, upper, batch_size=16) == expected
    # A sample's counts are its own, whatever shares its batch (auto_LiRPA bounds with CROWN
    # only the neurons IBP finds unstable in some sample of the batch).
    assert unstable_relus_per_sample(model, lower[5:], upper[5:], batch_size=7) == \
        {name: counts[5:] for name, counts in expected.items()}
    alone = unstable_relus_per_sample(model, lower[3:4], upper[3:4])
    assert alone == {name: counts[3:4] for name, counts in expected.items()}


def test_a_samples_counts_do_not_depend_on_the_rest_of_its_batch():
    """auto_LiRPA bounds with CROWN only the neurons IBP finds unstable in some sample of the
    batch, and here CROWN's bound of the second ReLU is looser than IBP's: z2 = relu(x1) + x2
    with x1 in [-0.9, 1] and x2 = 0.2 is in [0.2, 1.2] by IBP, but CROWN's lower relaxation
    relu(x1) >= x1 gives -0.7. Sample B (x2 = -0.5) makes z2 IBP-unstable, so next to B,
    sample A would get CROWN's bound; intersected with IBP's, A has one unstable ReLU (x1)
    wherever it is."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))  # relu(x1) + x2
        net[2].bias.zero_()
    lower = torch.tensor([[-0.9, 0.2], [-0.9, -0.5]])
    upper = torch.tensor([[1.0, 0.2], [1.0, -0.5]])
    alone = unstable_relus_per_sample(net, lower[:1], upper[:1])
    together = unstable_relus_per_sample(net, lower, upper)
    assert alone == {"unstable_relus": [1], "unstable_relus_ibp": [1]}
    assert together == {"unstable_relus": [1, 2], "unstable_relus_ibp": [1, 2]}


@pytest.mark.parametrize("shape, weight, options", [
    ((300, 8, 4, 4), (8, 1, 4, 4), {"stride": 2}),  # CROWN's patches of a strided conv
    ((50, 16, 1, 1), (16, 8, 4, 4), {"stride": 2}),
    ((400, 6, 5, 5), (6, 2, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    ((400, 4, 5, 5), (4, 2, 3, 3), {"padding": 1, "dilation": 2, "groups": 2}),
    ((20, 8, 4, 4), (8, 1, 4, 4), {"stride": 2}),  # fewer planes than a plane has entries
    ((3, 8, 14, 14), (8, 1, 4, 4), {"stride": 2}),  # too large for the product: torch's own
])
def test_dense_small_conv_transpose_computes_what_torch_does(shape, weight, options):
    from auto_LiRPA.operators import convolution

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    w = torch.randn(weight, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, w, None, **options)
    with dense_small_conv_transpose():
        got = convolution.F.conv_transpose2d(x, w, None, **options)
    assert not convolution.F.dense  # off again on leaving
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _conv_transpose_kernels(x, w, options) -> tuple[torch.Tensor, set[str]]:
    """auto_LiRPA's conv_transpose2d on ``x`` and the aten kernels it ran."""
    from auto_LiRPA.operators import convolution

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        out = convolution.F.conv_transpose2d(x, w, **options)
    return out, {event.name for event in profile.events()}


@pytest.mark.parametrize("shape, weight, options", [
    ((9, 8, 14, 14), (8, 1, 4, 4), {"stride": 2, "padding": 1}),  # 9 margins, MNIST's 1st layer
    ((53, 8, 4, 4), (8, 1, 4, 4), {"stride": 2}),  # patches of 53 unstable neurons
    ((5, 4, 6, 6), (4, 1, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1,
                                  "dilation": 2}),
])
def test_a_single_output_channel_conv_transpose_runs_torchs_native_kernel(shape, weight,
                                                                          options):
    """oneDNN's transposed convolution is 3-5x slower than torch's native one for a single
    output channel (CROWN's backward pass through a grayscale network's first layer): auto_LiRPA
    gets the native kernel there, with the same values and gradients."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, requires_grad=True)
    w = torch.randn(weight, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, w, None, **options)
    got, kernels = _conv_transpose_kernels(x, w, options)
    assert "aten::slow_conv_transpose2d" in kernels
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(expected.shape, generator=generator)
    expected_grad, = torch.autograd.grad(expected, x, upstream)
    got_grad, = torch.autograd.grad(got, x, upstream)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, weight, options", [
    ((9, 16, 7, 7), (16, 8, 4, 4), {"stride": 2, "padding": 1}),  # 8 output channels
    ((9, 4, 6, 6), (4, 1, 3, 3), {"groups": 2}),  # 2 output channels, one per group
    ((9, 8, 6, 6), (8, 1, 3, 3), {"bias": torch.ones(1)}),
])
def test_other_conv_transposes_keep_torchs_own_kernel(shape, weight, options):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    w = torch.randn(weight, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, w, **options)
    got, kernels = _conv_transpose_kernels(x, w, options)
    assert "aten::slow_conv_transpose2d" not in kernels
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_metrics_do_not_depend_on_the_dense_conv_transpose(setup, monkeypatch):
    """The build's metrics compute CROWN's conv_transpose2d on small planes as a matrix
    product (speed only): the same unstable ReLUs per sample and the same verified accuracies
    as auto_LiRPA's own path, instability up to float32 rounding."""
    fast = metrics(setup, 0.05)
    monkeypatch.setattr(bench.build.metrics, "dense_small_conv_transpose",
                        contextlib.nullcontext)
    slow = metrics(setup, 0.05)
    assert fast["per_sample"] == slow["per_sample"]
    assert sum(fast["per_sample"]["unstable_relus"]) > 0  # the CROWN pass had work to do
    for key in ("standard_accuracy", "pgd_accuracy", "ibp_verified_accuracy",
                "crown_verified_accuracy", "unstable_ratio"):
        assert fast[key] == slow[key]
    for key in ("instability", "instability_pre_bn"):
        assert fast[key] == pytest.approx(slow[key], rel=1e-5)
