"""HYDRA (Sehwag et al. 2020; paper 3.4.1): learn which weights to keep.

Every surviving conv weight gets an importance score. With the trained weights frozen, the
scores are optimized on the level's training objective through the hard top-k mask they
select, and the final top-k is the next level's mask. Paper 3.4.1: under certified training
HYDRA's adversarial loss becomes the certified loss, i.e. the loss of the trainer the
configuration names (``PruneContext.make_trainer``; natural cross-entropy without one), with
its regularizers: HYDRA+NRS is HYDRA on networks trained (and scored) with the NRS loss.

Following the reference implementation (inspire-group/hydra, ``models/layers.py`` and
``utils/model.py``) and the paper's own port of it (VITA-Group/CertifiedPruning,
``LTH-training/hydra.py``):

- scores start at ``sqrt(6 / fan_in) * w / max|w|`` per layer (``initialize_scaled_score``),
  so the first mask is each layer's magnitude (LWM) mask;
- the mask keeps the largest ``|score|`` *per layer* (``GetSubnet`` runs inside each layer),
  here ``1 - prune_rate`` of each layer's surviving weights, rounded as ``keep_largest``. The
  per-layer score scaling only makes sense with per-layer top-k; note that IMP in this
  package prunes globally, so zero score-training steps give layer-wise, not global, IMP;
- the straight-through estimator passes the gradient of the masked weight to the scores
  (``GetSubnet.backward`` is the identity, taken through ``|score|``).

auto_LiRPA traces the model into its own graph, so no custom autograd function may live in
the model. The straight-through estimator is done by hand instead: before each step the
effective weights ``w * m(s)`` are written into the (shared) weight tensors, the objective's
gradient with respect to them is taken, and ``dL/ds = dL/dw_eff * w * sign(s)`` (the STE
with ``dm/d|s| := 1``) is given to the scores. No optimizer ever holds the weights.

Hyperparameters (``HydraParams``, from the paper's ``configs/cibp_hydra.yml``): Adam, lr 1e-3,
lr x0.1 at 50% and 75% of the score training (epochs 10 and 15 of 20), the full eps throughout
(the paper's code uses ``FixedScheduler(eps)``; at full eps the CROWN-IBP trainer computes pure
IBP). The paper scores for 20 epochs next to 200 training epochs; we keep that ratio,
``ceil(0.1 * epochs)`` epochs (1 for the default 6-epoch CPU builds). HYDRA's
original SGD lr 0.1 with cosine decay is not used: it was tuned for adversarial training of
full-size networks, and Adam makes the step size independent of the tiny ``g * w`` scale.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import BuildConfig, Hyperparameters, param
from bench.models.mask import Mask, apply_mask
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.training.base import Batch


@dataclass(frozen=True)
class HydraParams(Hyperparameters):
    score_epoch_fraction: float = param(
        0.1, "Score-training epochs per training epoch, at least one (paper: 20 / 200).")
    score_lr: float = param(1e-3, "Adam learning rate of the scores (paper's cibp_hydra.yml).")
    score_lr_milestones: tuple[float, ...] = param(
        (0.5, 0.75), "Fractions of the score training after which the lr drops.")
    score_lr_gamma: float = param(0.1, "Factor of each lr drop.")


HYDRA = HydraParams()

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (normalized x, y) -> loss


@dataclass
class ScoreLog:
    """What happened during score training (for tests and diagnostics)."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    score_grad_norms: list[float] = field(default_factory=list)  # before clipping


def score_epochs(config: BuildConfig) -> int:
    return max(1, math.ceil(HYDRA.score_epoch_fraction * config.training.epochs))


def scaled_scores(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """HYDRA's ``initialize_scaled_score``: ``sqrt(6 / fan_in) * w / max|w|`` per layer, close
    to a Kaiming-uniform initialization in scale while ordered like the weight magnitudes."""
    params = dict(model.named_parameters())
    scores = {}
    for name, keep in mask.items():
        weight = params[name].detach() * keep
        fan_in = nn.init._calculate_correct_fan(weight, "fan_in")
        largest = weight.abs().max()
        # A fully pruned layer has nothing to rank; keep its scores at zero.
        scale = math.sqrt(6.0 / fan_in) / largest if largest > 0 else 0.0
        scores[name] = weight * scale
    return scores


def top_k_mask(scores: dict[str, torch.Tensor], mask: Mask, rate: float) -> Mask:
    """Per layer, keep the ``1 - rate`` fraction of the surviving weights with the largest
    ``|score|`` (HYDRA's ``GetSubnet``, restricted to weights the mask still keeps)."""
    new_mask: Mask = {}
    for name, keep in mask.items():
        new_mask.update(keep_largest({name: scores[name].detach().abs()}, {name: keep}, rate))
    return new_mask


def make_objective(config: BuildConfig, model: nn.Module, context: PruneContext) -> Objective:
    """The level's training loss (plus its regularizers) at the full eps, as a function of a
    normalized minibatch; natural cross-entropy when the context carries no trainer."""
    if context.make_trainer is None:
        return lambda x, y: F.cross_entropy(model(x), y)

    trainer = context.make_trainer(model)
    eps = config.properties.eps if trainer.uses_eps else 0.0
    normalizer = context.normalizer
    if eps > 0 and normalizer is None:
        raise ValueError("HYDRA under a certified trainer needs PruneContext.normalizer to "
                         "build the eps box around the (normalized) training inputs")

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if eps > 0:
            raw = x * normalizer.std + normalizer.mean  # back to pixels, where eps is defined
            lower, upper = normalizer.box(raw, eps)
            batch = Batch(x, y, lower, upper, eps, 1.0)
        else:
            batch = Batch(x, y, x, x, 0.0, 0.0)
        loss = trainer.loss(batch)
        if trainer.regularizers and batch.eps > 0:  # as bench.training.base.fit adds them
            loss = loss + trainer.regularization(batch)
        return loss

    return objective


def train_scores(config: BuildConfig, model: nn.Module, mask: Mask, context: PruneContext,
                 epochs: int, max_steps: int | None = None,
                 ) -> tuple[dict[str, torch.Tensor], ScoreLog]:
    """Optimize HYDRA's scores for ``model`` (already masked with ``mask``) for ``epochs``
    passes over the training data, or ``max_steps`` steps if fewer. Writes masked weights
    into ``model`` while it runs and restores its weights before returning; its BatchNorm
    statistics do move (train mode), so pass a copy. Returns the final scores."""
    rate = config.pruning.prune_rate
    params = dict(model.named_parameters())
    frozen = {name: params[name].detach().clone() for name in mask}
    scores = {name: s.clone().requires_grad_(True)
              for name, s in scaled_scores(model, mask).items()}
    objective = make_objective(config, model, context)

    n = context.train_x.shape[0]
    batch_size = min(config.training.batch_size, n)
    batches = max(1, n // batch_size)  # drop the last partial batch, as fit does
    total = epochs * batches if max_steps is None else min(max_steps, epochs * batches)
    optimizer = torch.optim.Adam(list(scores.values()), lr=HYDRA.score_lr)
    # Milestones count steps; a milestone at step 0 would decay the lr before the first step.
    lr_decay = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [max(1, int(f * total)) for f in HYDRA.score_lr_milestones],
        HYDRA.score_lr_gamma)

    log = ScoreLog()
    model.train()
    try:
        while log.steps < total:
            order = torch.randperm(n, generator=context.generator)
            for b in range(batches):
                if log.steps >= total:
                    break
                idx = order[b * batch_size:(b + 1) * batch_size]
                with torch.no_grad():
                    keep = top_k_mask(scores, mask, rate)
                    for name in mask:
                        params[name].copy_(frozen[name] * keep[name])
                model.zero_grad(set_to_none=True)
                loss = objective(context.train_x[idx], context.train_y[idx])
                loss.backward()
                for name, score in scores.items():
                    # STE: d(w * m)/dm = w, dm/d|s| := 1, d|s|/ds = sign(s).
                    score.grad = params[name].grad * frozen[name] * score.detach().sign()
                grads = list(scores.values())
                log.score_grad_norms.append(
                    float(torch.linalg.vector_norm(torch.stack(
                        [torch.linalg.vector_norm(s.grad) for s in grads]))))
                if config.training.grad_clip > 0:
                    nn.utils.clip_grad_norm_(grads, config.training.grad_clip)
                optimizer.step()
                lr_decay.step()
                log.losses.append(float(loss.detach()))
                log.steps += 1
    finally:
        with torch.no_grad():
            for name in mask:
                params[name].copy_(frozen[name])
        model.zero_grad(set_to_none=True)
    return {name: s.detach() for name, s in scores.items()}, log


def hydra_mask(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
               context: PruneContext, epochs: int | None = None,
               max_steps: int | None = None) -> tuple[Mask, ScoreLog]:
    """HYDRA's next mask for ``trained_model`` and the score-training log. ``epochs``
    defaults to ``score_epochs(config)``; the trained model itself is not modified."""
    model = copy.deepcopy(trained_model)
    apply_mask(model, current_mask)
    scores, log = train_scores(config, model, current_mask, context,
                               score_epochs(config) if epochs is None else epochs, max_steps)
    return top_k_mask(scores, current_mask, config.pruning.prune_rate), log


@pruner("hydra", params=HYDRA)
@pruner("hydra+nrs", regularizer="nrs", params=HYDRA)
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    return hydra_mask(config, trained_model, current_mask, context)[0]
