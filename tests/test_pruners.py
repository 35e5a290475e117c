"""SNIP, Taylor, HYDRA and the IMP+RS / IMP+NRS registrations, on the 8x8 digits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import make_config
from bench.models import build_model
from bench.pruning import PRUNERS, hydra, imp, taylor
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask, apply_mask, dense_mask
from bench.pruning.snip import SNIP
from bench.training.base import Batch, Trainer
from bench.training.crown_ibp import CrownIBP

BATCH = 64


def build(digits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn4", digits.input_shape, digits.num_classes)


def config(**overrides):
    values = dict(dataset="digits", prune_rate=0.2, batch_size=BATCH, eps=0.1, epochs=6)
    values.update(overrides)
    return make_config(**values)


def make_context(digits, normalizer, initial: nn.Module, seed: int = 0, n: int = 512,
                 **fields) -> PruneContext:
    return PruneContext({k: v.clone() for k, v in initial.state_dict().items()},
                        normalizer(digits.train_x[:n]), digits.train_y[:n],
                        torch.Generator().manual_seed(seed), normalizer=normalizer, **fields)


def partly_pruned(model: nn.Module, seed: int = 0) -> Mask:
    """A mask that already prunes 30% of each conv layer at random, so that "surviving
    weights only" is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.rand(m.shape, generator=generator) >= 0.3).float()
            for name, m in dense_mask(model).items()}


def direct_saliency(model: nn.Module, mask: Mask, batches, loss_fn) -> dict[str, torch.Tensor]:
    """|g * w|, g the gradient of the mean per-batch loss, computed here independently of
    bench.pruning.taylor.gradient_saliency."""
    model = copy.deepcopy(model)
    apply_mask(model, mask)
    model.train()
    names = list(mask)
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(params[name]) for name in names}
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model, x, y), [params[n] for n in names])
        for name, grad in zip(names, grads):
            total[name] += grad / len(batches)
    return {name: (total[name] * params[name]).detach().abs() for name in names}


def assert_prunes_lowest(scores: dict[str, torch.Tensor], old: Mask, new: Mask,
                         rate: float) -> None:
    """``new`` removes round(rate * alive) of ``old``'s weights, and every removed one scores
    at most every kept one (up to float noise between two gradient computations)."""
    for name in old:
        assert not (new[name].bool() & ~old[name].bool()).any(), "a pruned weight came back"
    alive = sum(int(m.sum()) for m in old.values())
    kept = sum(int(m.sum()) for m in new.values())
    assert alive - kept == round(rate * alive)
    dropped = torch.cat([scores[n][old[n].bool() & ~new[n].bool()] for n in old])
    survivors = torch.cat([scores[n][new[n].bool()] for n in old])
    assert dropped.max() <= survivors.min() * (1 + 1e-4) + 1e-12


def same_batches(context: PruneContext, seed: int, count: int):
    """The minibatches a pruner draws from ``context`` when its generator is seeded ``seed``."""
    replay = copy.copy(context)
    replay.generator = torch.Generator().manual_seed(seed)
    return taylor.saliency_batches(replay, BATCH, count)


# --- registry ---------------------------------------------------------------------------------

def test_new_pruners_are_registered_with_their_regularizers():
    for name in ("snip", "taylor", "hydra", "hydra+nrs", "imp+rs", "imp+nrs"):
        assert name in PRUNERS
        assert not PRUNERS.get(name).structured
        assert PRUNERS.get(name).default_rate == 0.2
    assert PRUNERS.get("imp+rs").regularizer == "rs"
    assert PRUNERS.get("imp+nrs").regularizer == "nrs"
    assert PRUNERS.get("hydra+nrs").regularizer == "nrs"
    assert PRUNERS.get("hydra").regularizer is None
    assert PRUNERS.get("snip").regularizer is None and PRUNERS.get("taylor").regularizer is None
    # IMP+RS/NRS prune exactly as IMP does; only their training differs
    assert PRUNERS.get("imp+rs").prune is imp.prune and PRUNERS.get("imp+nrs").prune is imp.prune
    assert PRUNERS.get("hydra+nrs").prune is PRUNERS.get("hydra").prune


def test_saliency_batches_are_disjoint_minibatches():
    # rows numbered by their label, so that every drawn sample can be identified
    context = PruneContext({}, torch.arange(200.0).view(200, 1, 1, 1), torch.arange(200),
                           torch.Generator().manual_seed(0))
    batches = taylor.saliency_batches(context, BATCH, 4)
    assert len(batches) == 3  # only 3 full batches of 64 fit in 200 samples
    assert all(x.shape[0] == BATCH and torch.equal(x.flatten().long(), y) for x, y in batches)
    drawn = torch.cat([y for _, y in batches])
    assert torch.unique(drawn).numel() == 3 * BATCH  # without replacement


# --- SNIP -------------------------------------------------------------------------------------

def test_snip_prunes_the_lowest_gradient_times_weight_at_initialization(digits, normalizer):
    initial, trained = build(digits, 0), build(digits, 1)
    mask = partly_pruned(initial)
    context = make_context(digits, normalizer, initial, seed=3)
    new = PRUNERS.get("snip").prune(config(), trained, mask, context)

    batches = same_batches(context, 3, SNIP.batches)
    scores = direct_saliency(initial, mask, batches, taylor.cross_entropy_loss)
    assert_prunes_lowest(scores, mask, new, 0.2)


def test_snip_ignores_the_trained_weights(digits, normalizer):
    initial = build(digits, 0)
    trained_a, trained_b = build(digits, 1), build(digits, 2)
    with torch.no_grad():  # also different BatchNorm statistics
        for module in trained_b.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(1.0)
                module.running_var.mul_(3.0)
    mask = partly_pruned(initial)
    a = PRUNERS.get("snip").prune(config(), trained_a, mask,
                                  make_context(digits, normalizer, initial, seed=5))
    b = PRUNERS.get("snip").prune(config(), trained_b, mask,
                                  make_context(digits, normalizer, initial, seed=5))
    assert all(torch.equal(a[n], b[n]) for n in a)
    # while the same criterion at the trained weights (Taylor) does depend on them
    t_a = PRUNERS.get("taylor").prune(config(), trained_a, mask,
                                      make_context(digits, normalizer, initial, seed=5))
    t_b = PRUNERS.get("taylor").prune(config(), trained_b, mask,
                                      make_context(digits, normalizer, initial, seed=5))
    assert any(not torch.equal(t_a[n], t_b[n]) for n in t_a)


# --- Taylor -----------------------------------------------------------------------------------

def squared_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


@pytest.mark.parametrize("loss_fn", [None, squared_logits], ids=["cross-entropy", "loss_fn"])
def test_taylor_prunes_the_lowest_gradient_times_trained_weight(digits, normalizer, loss_fn):
    initial, trained = build(digits, 0), build(digits, 1)
    mask = partly_pruned(trained)
    apply_mask(trained, mask)
    before = copy.deepcopy(trained.state_dict())
    context = make_context(digits, normalizer, initial, seed=7, loss_fn=loss_fn)
    new = PRUNERS.get("taylor").prune(config(), trained, mask, context)

    batches = same_batches(context, 7, taylor.TAYLOR.batches)
    assert len(batches) == taylor.TAYLOR.batches
    scores = direct_saliency(trained, mask, batches, loss_fn or taylor.cross_entropy_loss)
    assert_prunes_lowest(scores, mask, new, 0.2)
    # the trained model, BatchNorm statistics included, is left alone
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


# --- HYDRA ------------------------------------------------------------------------------------

class RecordingTrainer(Trainer):
    """Natural cross-entropy that records the conv weights each loss evaluation sees."""

    uses_eps = False

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__(config(), model, (1, 8, 8), 10)
        self.names = names
        self.seen: list[dict[str, torch.Tensor]] = []

    def loss(self, batch: Batch) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        self.seen.append({n: params[n].detach().clone() for n in self.names})
        return F.cross_entropy(self.model(batch.x), batch.y)


def kept_per_layer(mask: Mask, rate: float) -> dict[str, int]:
    """What HYDRA's per-layer top-k keeps: each layer loses round(rate * alive), as
    keep_largest rounds."""
    return {n: int(m.sum()) - round(rate * int(m.sum())) for n, m in mask.items()}


def test_hydra_trains_scores_only_and_keeps_the_top_fraction(digits, normalizer):
    initial, trained = build(digits, 0), build(digits, 1)
    mask = partly_pruned(trained)
    apply_mask(trained, mask)
    before = copy.deepcopy(trained.state_dict())
    recorders: list[RecordingTrainer] = []

    def make_trainer(model: nn.Module) -> Trainer:
        recorders.append(RecordingTrainer(model, list(mask)))
        return recorders[-1]

    context = make_context(digits, normalizer, initial, make_trainer=make_trainer)
    new, log = hydra.hydra_mask(config(), trained, mask, context, epochs=1, max_steps=6)

    assert log.steps == 6 and len(recorders[0].seen) == 6
    assert all(norm > 0 for norm in log.score_grad_norms)
    # every forward pass saw the frozen trained weights, some of them masked out, and exactly
    # the per-layer top-k of them kept
    expected = kept_per_layer(mask, 0.2)
    for seen in recorders[0].seen:
        for name, weight in seen.items():
            frozen = before[name]
            assert torch.all((weight == 0) | (weight == frozen))
            assert int((weight != 0).sum()) == expected[name]
    # the trained model is untouched, BatchNorm statistics included
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    # the new mask: a subset of the old one, (1 - rate) of each layer's survivors
    for name in mask:
        assert not (new[name].bool() & ~mask[name].bool()).any()
        assert int(new[name].sum()) == expected[name]


def test_hydra_score_training_moves_scores_not_weights(digits, normalizer):
    trained = build(digits, 1)
    mask = partly_pruned(trained)
    apply_mask(trained, mask)
    before = copy.deepcopy(trained.state_dict())
    context = make_context(digits, normalizer, build(digits, 0))
    start = hydra.scaled_scores(trained, mask)
    scores, log = hydra.train_scores(config(), trained, mask, context, epochs=1, max_steps=4)
    assert log.steps == 4
    assert any(not torch.equal(scores[n], start[n]) for n in mask)
    # scores of already-pruned weights get no gradient (their weight is zero) and stay zero
    assert all(torch.all(scores[n][mask[n] == 0] == 0) for n in mask)
    # train_scores restores the weights it wrote masked versions of; nothing else moved
    params = dict(trained.named_parameters())
    assert all(torch.equal(before[name], p.detach()) for name, p in params.items())


def test_hydra_score_gradient_is_the_straight_through_estimator(digits, normalizer):
    """One Adam step moves every score by about -lr * sign(dL/ds); dL/ds must be HYDRA's STE
    gradient, computed here with autograd through ``w * (m + |s| - stop_grad(|s|))``."""
    trained = build(digits, 1)
    mask = partly_pruned(trained)
    apply_mask(trained, mask)
    context = make_context(digits, normalizer, build(digits, 0), seed=11)
    start = hydra.scaled_scores(trained, mask)
    scores, _ = hydra.train_scores(config(grad_clip=0.0), copy.deepcopy(trained), mask, context,
                                   epochs=1, max_steps=1)

    n = context.train_x.shape[0]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(11))[:BATCH]
    model = copy.deepcopy(trained).train()
    hard = hydra.top_k_mask(start, mask, 0.2)
    leaves = {name: s.clone().requires_grad_(True) for name, s in start.items()}
    weights = dict(model.named_parameters())
    for name, s in leaves.items():
        weights[name] = weights[name].detach() * (hard[name] + s.abs() - s.abs().detach())
    logits = torch.func.functional_call(model, weights, (context.train_x[idx],))
    loss = F.cross_entropy(logits, context.train_y[idx])
    reference = torch.autograd.grad(loss, [leaves[n] for n in mask])
    for name, grad in zip(mask, reference):
        clear = grad.abs() > 1e-3 * grad.abs().max()  # Adam's eps blurs the tiniest ones
        moved = start[name] - scores[name]
        assert torch.equal(moved[clear].sign(), grad[clear].sign())
        assert torch.allclose(moved[clear].abs(), torch.full_like(moved[clear], hydra.HYDRA.score_lr),
                              rtol=1e-2)


def test_hydra_scores_get_gradients_from_crown_ibp(digits, normalizer):
    initial, trained = build(digits, 0), build(digits, 1)
    mask = dense_mask(trained)
    cfg = config()
    trainers: list[CrownIBP] = []

    def make_trainer(model: nn.Module) -> Trainer:
        trainers.append(CrownIBP(cfg, model, digits.input_shape, digits.num_classes))
        return trainers[-1]

    context = make_context(digits, normalizer, initial, make_trainer=make_trainer)
    before = copy.deepcopy(trained.state_dict())
    new, log = hydra.hydra_mask(cfg, trained, mask, context, epochs=1, max_steps=2)
    assert len(trainers) == 1 and log.steps == 2
    # the certified loss at the full eps: far above the natural loss of an untrained network
    assert all(loss > 2.5 for loss in log.losses)
    assert all(norm > 0 for norm in log.score_grad_norms)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    expected = kept_per_layer(mask, 0.2)
    assert {n: int(m.sum()) for n, m in new.items()} == expected


def test_hydra_without_score_training_is_layerwise_magnitude_pruning(digits, normalizer):
    trained = build(digits, 1)
    mask = partly_pruned(trained)
    apply_mask(trained, mask)
    context = make_context(digits, normalizer, build(digits, 0))
    new, log = hydra.hydra_mask(config(), trained, mask, context, epochs=0)
    assert log.steps == 0
    params = dict(trained.named_parameters())
    for name in mask:  # HYDRA's scaled init orders each layer like |w|
        layer_imp = keep_largest({name: params[name].detach().abs()}, {name: mask[name]}, 0.2)
        assert torch.equal(new[name], layer_imp[name])
    # with a single prunable layer, layer-wise is global: exactly IMP's mask
    only = {"3.weight": mask["3.weight"]}
    hydra_only, _ = hydra.hydra_mask(config(), trained, only, context, epochs=0)
    imp_only = PRUNERS.get("imp").prune(config(), trained, only, context)
    assert torch.equal(hydra_only["3.weight"], imp_only["3.weight"])


def test_hydra_needs_the_normalizer_for_a_certified_objective(digits, normalizer):
    trained = build(digits, 1)
    context = make_context(
        digits, normalizer, build(digits, 0),
        make_trainer=lambda m: CrownIBP(config(), m, digits.input_shape, digits.num_classes))
    context.normalizer = None
    with pytest.raises(ValueError, match="normalizer"):
        hydra.hydra_mask(config(), trained, dense_mask(trained), context, max_steps=1)
