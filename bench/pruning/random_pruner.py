"""Random pruning: the sanity check of paper 3.4.1."""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.config import BuildConfig
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask


@pruner("random")
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    scores = {n: torch.rand(m.shape, generator=context.generator) for n, m in current_mask.items()}
    return keep_largest(scores, current_mask, config.pruning.prune_rate)
