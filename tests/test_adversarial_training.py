"""FGSM+GradAlign, PGD and IBP (Fast-IBP) training on the 8x8 digits.

Attacks and IBP verification used for the checks are written here in pixel space,
independently of the trainers' normalized-coordinate code.
"""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bench.config import make_config
from bench.lirpa_compat import auto_LiRPA
from bench.models import build_model
from bench.models.mask import dense_mask
from bench.training import TRAINERS
from bench.models.normalize import Normalizer
from bench.training.base import Batch, accuracy, fit
from bench.training.fgsm_gradalign import FGSM, grad_align_regularizer
from bench.training.ibp import ibp_init, layers_after_residual_sum, robust_cross_entropy
from bench.training.pgd import linf_radius, pgd_attack
from helpers import ibp_verified_accuracy  # noqa: E402

from auto_LiRPA.perturbations import PerturbationLpNorm

EPS = 0.05
pytestmark = pytest.mark.usefixtures("one_thread")


def train(digits, training, model_name, epochs, lr=3e-3, seed=0):
    config = make_config(dataset="digits", model=model_name, training=training, eps=EPS,
                         eps_start_epoch=1, eps_length=2, batch_size=64, epochs=epochs, lr=lr,
                         seed=seed)
    torch.manual_seed(config.seed)
    model = build_model(model_name, digits.input_shape, digits.num_classes)
    if training == "ibp":
        ibp_init(model)  # what the pipeline does once, before saving the initial weights
    trainer = TRAINERS.get(training)(config, model, digits.input_shape, digits.num_classes)
    log = fit(trainer, dense_mask(model), digits.train_x, digits.train_y,
              Normalizer(digits.mean, digits.std), torch.Generator().manual_seed(config.seed),
              progress=False)
    return model, trainer, log


# Trained once per module; each is a few seconds on one core.
@pytest.fixture(scope="module")
def trained(digits):
    runs = {
        ("natural", "cnn4"): train(digits, "natural", "cnn4", epochs=8),
        ("fgsm", "cnn4"): train(digits, "fgsm", "cnn4", epochs=8),
        ("pgd", "cnn4"): train(digits, "pgd", "cnn4", epochs=8),
        ("natural", "mlp"): train(digits, "natural", "mlp", epochs=6),
        ("ibp", "mlp"): train(digits, "ibp", "mlp", epochs=6),
        ("ibp", "cnn4"): train(digits, "ibp", "cnn4", epochs=3),
    }
    return runs


def pgd_accuracy(model, x, y, normalizer, eps, steps=20, seed=1):
    """Accuracy under an L-inf PGD attack (random start, 2.5 * eps / steps), in pixel space."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x_adv = (x + (2 * torch.rand(x.shape, generator=generator) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(normalizer(x_adv)), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + 2.5 * eps / steps * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return float((model(normalizer(x_adv)).argmax(1) == y).float().mean())


def batch_of(digits, normalizer, n=64, eps=EPS, fraction=1.0):
    x, y = digits.train_x[:n], digits.train_y[:n]
    lower, upper = normalizer.box(x, eps)
    return Batch(normalizer(x), y, lower, upper, eps, fraction)


# (1) every trainer trains


@pytest.mark.parametrize("run", [("fgsm", "cnn4"), ("pgd", "cnn4"), ("ibp", "mlp"),
                                 ("ibp", "cnn4")])
def test_trainer_runs_end_to_end_above_chance(trained, digits, normalizer, run):
    model, _, log = trained[run]
    assert log.epochs > 0 and math.isfinite(log.final_loss)
    assert log.losses[-1] < log.losses[0]
    # chance is 0.1 on ten classes
    assert accuracy(model, digits.test_x, digits.test_y, normalizer) > 0.5


# (2) adversarial training buys robustness


@pytest.mark.parametrize("training", ["fgsm", "pgd"])
def test_adversarial_training_resists_pgd_better_than_natural(trained, digits, normalizer,
                                                              training):
    x, y = digits.test_x, digits.test_y
    natural = pgd_accuracy(trained["natural", "cnn4"][0], x, y, normalizer, EPS)
    robust = pgd_accuracy(trained[training, "cnn4"][0], x, y, normalizer, EPS)
    assert robust > natural + 0.05, (robust, natural)


def test_pgd_attack_stays_in_the_box_and_raises_the_loss(trained, digits, normalizer):
    model = trained["natural", "cnn4"][0].eval()
    batch = batch_of(digits, normalizer, n=128)
    x_adv = pgd_attack(model, batch.x, batch.y, batch.lower, batch.upper,
                       generator=torch.Generator().manual_seed(0))
    assert torch.all(x_adv >= batch.lower) and torch.all(x_adv <= batch.upper)
    with torch.no_grad():
        clean = F.cross_entropy(model(batch.x), batch.y)
        attacked = F.cross_entropy(model(x_adv), batch.y)
    assert attacked > clean


def test_radius_read_back_from_the_clipped_box_is_eps_over_std(digits, normalizer):
    batch = batch_of(digits, normalizer)
    radius = linf_radius(batch.x, batch.lower, batch.upper)
    assert radius.shape == (1, 1, 1, 1)
    assert radius.item() == pytest.approx(EPS / digits.std[0], rel=1e-5)


# (3) GradAlign


def test_gradalign_term_is_positive_and_reaches_the_weights(digits, normalizer):
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, 10)
    batch = batch_of(digits, normalizer)
    x = batch.x.clone().requires_grad_(True)
    grad_clean = torch.autograd.grad(F.cross_entropy(model(x), batch.y), x)[0]
    term = grad_align_regularizer(model, batch.x, batch.y, batch.lower, batch.upper, grad_clean)
    assert 0 < term.item() <= 2
    # double backprop: the term is a function of the input gradient, yet differentiable in
    # the weights of every layer
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    grads = torch.autograd.grad(term, weights)
    for grad in grads:
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_fgsm_trainer_without_gradalign_is_plain_fgsm(digits, normalizer):
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, 10)
    reference = copy.deepcopy(model)
    config = make_config(dataset="digits", training="fgsm", eps=EPS)
    trainer = TRAINERS.get("fgsm")(config, model, digits.input_shape, 10)
    trainer.params = dataclasses.replace(FGSM, grad_align_lambda=0.0)
    batch = batch_of(digits, normalizer)
    loss = trainer.loss(batch)
    loss.backward()

    # FGSM in pixel space: one step of eps along the gradient's sign, clipped to [0, 1].
    x, y = digits.train_x[:64], batch.y
    pixels = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(reference(normalizer(pixels)), y), pixels)[0]
    x_adv = (x + EPS * grad.sign()).clamp(0, 1)
    expected = F.cross_entropy(reference(normalizer(x_adv)), y)
    expected.backward()

    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name

    # the default lambda adds the (positive) GradAlign term on top of the same FGSM loss
    trainer.params = FGSM
    assert FGSM.grad_align_lambda == 0.2  # the paper's
    assert trainer.loss(batch).item() > loss.item()


def test_fgsm_before_the_eps_ramp_is_natural_cross_entropy(digits, normalizer):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10)
    trainer = TRAINERS.get("fgsm")(make_config(training="fgsm"), model, digits.input_shape, 10)
    batch = batch_of(digits, normalizer, eps=0.0, fraction=0.0)
    assert trainer.loss(batch).item() == pytest.approx(
        F.cross_entropy(model(batch.x), batch.y).item())


# (4) IBP training certifies


def test_ibp_training_verifies_more_than_natural_training(trained, digits, normalizer):
    x, y = digits.test_x, digits.test_y
    natural = ibp_verified_accuracy(trained["natural", "mlp"][0], x, y, normalizer, EPS,
                                    correct_only=True)
    certified = ibp_verified_accuracy(trained["ibp", "mlp"][0], x, y, normalizer, EPS,
                                      correct_only=True)
    assert certified > natural + 0.2, (certified, natural)


def test_ibp_loss_bounds_the_natural_loss_and_regularizes_during_warmup(digits, normalizer):
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, 10)
    ibp_init(model)
    trainer = TRAINERS.get("ibp")(make_config(training="ibp", eps=EPS), model,
                                  digits.input_shape, 10)
    batch = batch_of(digits, normalizer)  # eps at its maximum: no regularizer
    natural = F.cross_entropy(trainer.bounded(batch.x), batch.y).item()
    margin_lower, _ = trainer.bounded.compute_bounds(
        x=(auto_LiRPA.BoundedTensor(batch.x, PerturbationLpNorm(
            norm=float("inf"), x_L=batch.lower, x_U=batch.upper)),),
        method="IBP", C=torch.eye(10)[batch.y].unsqueeze(1) - torch.eye(10).unsqueeze(0),
        bound_upper=False)
    # worst-case logits are worse than the clean ones, so the robust loss is larger
    robust = trainer.loss(batch)
    assert robust.item() > natural
    assert robust.item() == pytest.approx(
        robust_cross_entropy(_drop_true_label(margin_lower, batch.y)).item(), rel=1e-5)

    # before the ramp (eps = 0): natural loss plus the warmup regularizers on a tiny box
    start = batch_of(digits, normalizer, eps=0.0, fraction=0.0)
    warmup = trainer.loss(start)
    warmup.backward()
    assert warmup.item() >= F.cross_entropy(trainer.bounded(start.x), start.y).item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ibp_trainer_hands_its_own_bounds_to_stability_regularizers(digits, normalizer):
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, 10)
    trainer = TRAINERS.get("ibp")(make_config(training="ibp", eps=EPS), model,
                                  digits.input_shape, 10)
    batch = batch_of(digits, normalizer)
    trainer.loss(batch)
    bounds = trainer.preactivation_bounds(batch)
    assert len(bounds) == 3  # two conv blocks and the hidden linear layer
    assert bounds[0].gamma is model[1].weight and bounds[2].gamma is None
    for b in bounds:
        assert torch.all(b.lower <= b.upper) and b.lower.requires_grad


def _drop_true_label(margins, y):
    keep = y.unsqueeze(1) != torch.arange(margins.shape[1]).unsqueeze(0)
    return margins[keep].view(len(y), -1)


# (5) IBP initialization


def test_ibp_init_rescales_hidden_weights_only(digits):
    torch.manual_seed(0)
    model = build_model("cnn4", digits.input_shape, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = ibp_init(model)
    # the two convolutions and the hidden linear layer; not the classifier, BN or biases
    assert changed == ["0.weight", "3.weight", "7.weight"]
    params = dict(model.named_parameters())
    for name in changed:
        weight = params[name]
        fan_in = weight[0].numel()
        assert weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.2)
        # so that an IBP bound's width is doubled by the layer (and halved by its ReLU)
        assert weight.abs().flatten(1).sum(1).mean().item() == pytest.approx(2.0, rel=0.2)
        assert not torch.equal(weight, before[name])
    for name, value in model.state_dict().items():
        if name not in changed:
            assert torch.equal(value, before[name]), name


def test_ibp_init_halves_layers_fed_by_a_residual_sum():
    torch.manual_seed(0)
    model = build_model("resnet18nr", (1, 28, 28), 10)
    halved = layers_after_residual_sum(model)
    # Fast-IBP's rule on auto_LiRPA's graph (Add -> ReLU -> Conv) picks exactly these: each
    # block's first conv and projection shortcut, except in the first block of the network
    assert halved == ["layers.0.1.conv1", "layers.1.0.conv1", "layers.1.0.shortcut.0",
                      "layers.1.1.conv1", "layers.2.0.conv1", "layers.2.0.shortcut.0",
                      "layers.2.1.conv1", "layers.3.0.conv1", "layers.3.0.shortcut.0",
                      "layers.3.1.conv1"]
    ibp_init(model)
    modules = dict(model.named_modules())
    for name, factor in (("layers.0.0.conv1", 1.0), ("layers.3.1.conv1", 0.5)):
        weight = modules[name].weight
        expected = factor * math.sqrt(2 * math.pi) / weight[0].numel()
        assert weight.std().item() == pytest.approx(expected, rel=0.2), name
    assert layers_after_residual_sum(build_model("cnn4", (1, 8, 8), 10)) == []


def test_ibp_init_is_deterministic_under_a_seed(digits):
    def initialized(seed):
        torch.manual_seed(seed)
        model = build_model("mlp", digits.input_shape, 10)
        ibp_init(model)
        return model.state_dict()

    a, b, c = initialized(3), initialized(3), initialized(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["1.weight"], c["1.weight"])

    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10)
    first = copy.deepcopy(model)
    ibp_init(model, generator=torch.Generator().manual_seed(7))
    ibp_init(first, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), first.parameters()))


# (6) BatchNorm statistics


def test_ibp_batchnorm_statistics_reach_the_model(trained, digits):
    model, trainer, _ = trained["ibp", "cnn4"]
    torch.manual_seed(0)
    fresh = build_model("cnn4", digits.input_shape, 10)
    bounded_state = trainer.bounded.state_dict()
    for index in (1, 4):  # the two BatchNorm layers
        bn = model[index]
        assert not torch.allclose(bn.running_mean, fresh[index].running_mean)
        assert torch.all(bn.running_var > 0)
        assert torch.equal(bn.running_mean, bounded_state[f"model.{index}.running_mean"])
        assert torch.equal(bn.running_var, bounded_state[f"model.{index}.running_var"])
