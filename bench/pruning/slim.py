"""Network Slimming (Liu et al. 2017; paper 3.4.1): train with an L1 penalty on BatchNorm scales
(the ``slim`` regularizer) and prune the channels with the smallest ``|gamma|``.

As in Liu et al., one threshold is taken over the gammas of all layers together (global), here
pruning ``rate`` of the remaining channels per level; every layer keeps at least one channel.
"""
from __future__ import annotations

import torch.nn as nn

from bench.config import BuildConfig
from bench.errors import BenchError
from bench.pruning import pruner
from bench.pruning.base import PruneContext
from bench.models.mask import Mask
from bench.models.compact import kept_channels
from bench.pruning.structured import (channel_mask, prune_lowest_channels, prune_rate,
                                      require_channels)

NAME = "slim"


@pruner(NAME, regularizer="slim", structured=True)
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    modules = dict(trained_model.named_modules())
    scores = {}
    for conv_name, bn_name in require_channels(trained_model, NAME):
        if bn_name is None or not modules[bn_name].affine:
            raise BenchError(f"pruner {NAME!r} ranks channels by their BatchNorm scale, but "
                             f"convolution {conv_name!r} has no affine BatchNorm after it")
        scores[conv_name] = modules[bn_name].weight.detach().abs().cpu()
    # Pruned channels have gamma masked to 0; they are excluded as already pruned, not ranked.
    keep = kept_channels(trained_model, current_mask)
    return channel_mask(trained_model, prune_lowest_channels(scores, keep, prune_rate(config, NAME)))
