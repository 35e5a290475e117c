"""IMP (Frankle & Carbin 2018): globally prune the smallest-magnitude surviving conv weights."""
from __future__ import annotations

import torch.nn as nn

from bench.config import BuildConfig
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask


@pruner("imp")
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    params = dict(trained_model.named_parameters())
    scores = {name: params[name].detach().abs() for name in current_mask}
    return keep_largest(scores, current_mask, config.pruning.prune_rate)
