"""Taylor pruning (TP; paper 3.4.1): first-order Taylor saliency of the trained weights.

Removing weight ``w`` changes the loss by about ``-g * w`` (first-order Taylor expansion, with
``g = dL/dw``), so the weights whose removal changes the loss least, ``|g * w|`` smallest, are
pruned (Molchanov et al. 2017/2019). The gradient is that of the level's training loss
(``PruneContext.loss_fn`` when the pipeline provides it, natural cross-entropy otherwise) at
the trained weights, averaged over ``TAYLOR.batches`` minibatches. The paper's code
(VITA-Group/CertifiedPruning, ``pruner.py``, ``taylor1ScorerAbs``) uses one minibatch of the
certified loss; a few minibatches make the estimate less noisy at the same cost order.

``gradient_saliency`` is shared with SNIP, which evaluates the same criterion at
initialization.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import BuildConfig, Hyperparameters, param
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask, apply_mask

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaylorParams(Hyperparameters):
    batches: int = param(4, "Minibatches (of --batch-size) the gradient is averaged over.")


TAYLOR = TaylorParams()


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The natural training loss, for pruners given no other objective."""
    return F.cross_entropy(model(x), y)


def saliency_batches(context: PruneContext, batch_size: int,
                     batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` disjoint random minibatches of the (normalized) training data, drawn with
    the context's seeded generator; fewer when the data runs out."""
    n = context.train_x.shape[0]
    order = torch.randperm(n, generator=context.generator)
    size = min(batch_size, n)
    count = max(1, min(batches, n // size))
    return [(context.train_x[order[b * size:(b + 1) * size]],
             context.train_y[order[b * size:(b + 1) * size]]) for b in range(count)]


def gradient_saliency(model: nn.Module, mask: Mask,
                      batches: list[tuple[torch.Tensor, torch.Tensor]],
                      loss_fn: LossFn) -> dict[str, torch.Tensor]:
    """``|g * w|`` for every masked weight, ``g`` the gradient of the mean of ``loss_fn`` over
    ``batches`` at the model's current weights. The model should already carry the mask
    (pruned weights are zero, so their saliency is zero; ``keep_largest`` ignores them
    anyway). The model is left in train mode with its gradients cleared; BatchNorm running
    statistics are updated, so pass a copy when that matters."""
    params = dict(model.named_parameters())
    # BatchNorm normalizes with batch statistics, as during the training whose loss this is.
    model.train()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        (loss_fn(model, x, y) / len(batches)).backward()
    scores = {}
    for name in mask:
        grad = params[name].grad
        if grad is None:
            raise RuntimeError(f"the loss does not depend on {name}; cannot score it")
        scores[name] = (grad * params[name]).detach().abs()
    model.zero_grad(set_to_none=True)
    return scores


@pruner("taylor", params=TAYLOR)
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    # A copy: the saliency pass runs BatchNorm in train mode, which would move the trained
    # model's running statistics.
    model = copy.deepcopy(trained_model)
    apply_mask(model, current_mask)
    batches = saliency_batches(context, config.training.batch_size, TAYLOR.batches)
    scores = gradient_saliency(model, current_mask, batches,
                               context.loss_fn or cross_entropy_loss)
    return keep_largest(scores, current_mask, config.pruning.prune_rate)
