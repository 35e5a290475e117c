"""What every pruner receives besides the model and the current mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from bench.models.mask import Mask
from bench.models.normalize import Normalizer
from bench.training.base import Trainer


@dataclass
class PruneContext:
    """Everything a data- or initialization-dependent pruner (SNIP, Taylor, ...) may need."""

    initial_state: dict[str, torch.Tensor]  # the weights the level was rewound to
    train_x: torch.Tensor  # normalized training inputs
    train_y: torch.Tensor
    generator: torch.Generator  # seeded: random pruners stay reproducible
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # The level's training objective, for pruners that optimize it (HYDRA): builds the
    # configured trainer (with its regularizers) around a model. None: natural cross-entropy.
    make_trainer: Callable[[nn.Module], Trainer] | None = None
    # Maps raw pixels to the model's input; pruners need it to build the eps box around
    # ``train_x`` (which is already normalized). None: the eps box cannot be built.
    normalizer: Normalizer | None = None


def keep_largest(scores: dict[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    """Globally prune ``fraction`` of the weights that ``mask`` still keeps, those with the
    lowest scores, and return the new mask. Already-pruned weights stay pruned."""
    alive = torch.cat([scores[n][mask[n].bool()].flatten() for n in mask])
    n_prune = int(round(fraction * alive.numel()))
    if n_prune == 0:
        return {n: m.clone() for n, m in mask.items()}
    # The n_prune-th smallest surviving score is the threshold; ties are broken by a stable
    # sort over the concatenation so that exactly n_prune weights go.
    order = torch.argsort(alive, stable=True)
    prune_flat = torch.zeros(alive.numel(), dtype=torch.bool)
    prune_flat[order[:n_prune]] = True
    new_mask: Mask = {}
    offset = 0
    for name, keep in mask.items():
        alive_here = keep.bool()
        count = int(alive_here.sum())
        drop = torch.zeros_like(alive_here)
        drop[alive_here] = prune_flat[offset:offset + count]
        offset += count
        new_mask[name] = (alive_here & ~drop).to(keep.dtype)
    return new_mask
