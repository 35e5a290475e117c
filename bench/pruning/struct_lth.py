"""StructLTH (paper 3.4.1): a structured lottery ticket found through IMP.

One level: (1) an IMP step globally marks the lowest-magnitude ``rate`` of the surviving conv
weights; (2) channels are ranked by the total magnitude of the weights IMP kept in them; (3) the
lowest-ranked ``rate`` of the remaining channels are pruned; (4) the kept channels are refilled:
the weights IMP marked inside them come back ("refill the IMP-pruned weights in the remaining
channels"), so the result is a purely channel-wise mask.

Channels are ranked globally across layers, like the IMP step that scores them. A channel's
total magnitude grows with its fan-in, so layers with few inputs per channel tend to lose
channels first; at least one channel per layer is always kept.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.config import BuildConfig
from bench.pruning import pruner
from bench.pruning.base import PruneContext, keep_largest
from bench.models.mask import Mask
from bench.models.compact import kept_channels
from bench.pruning.structured import (channel_mask, prune_lowest_channels, prune_rate,
                                      require_channels)

NAME = "structlth"


def channel_scores(model: nn.Module, imp_mask: Mask) -> dict[str, torch.Tensor]:
    """Per conv, the L1 norm of each output channel's weights that ``imp_mask`` keeps."""
    params = dict(model.named_parameters())
    scores = {}
    for name, keep in imp_mask.items():
        conv_name = name.removesuffix(".weight")
        kept_weights = params[name].detach().abs() * keep.to(params[name].device)
        scores[conv_name] = kept_weights.flatten(start_dim=1).sum(dim=1).cpu()
    return scores


@pruner(NAME, structured=True)
def prune(config: BuildConfig, trained_model: nn.Module, current_mask: Mask,
          context: PruneContext) -> Mask:
    rate = prune_rate(config, NAME)
    pairs = require_channels(trained_model, NAME)
    keep = kept_channels(trained_model, current_mask)
    params = dict(trained_model.named_parameters())
    # (1) IMP step over the conv weights that survive (pruned channels have all-zero rows).
    surviving = {}
    for conv_name, _ in pairs:
        weight = f"{conv_name}.weight"
        row = keep[conv_name].to(params[weight].device).reshape(-1, *[1] * (params[weight].dim() - 1))
        surviving[weight] = current_mask.get(weight, torch.ones_like(params[weight])) * row
    scores = {name: params[name].detach().abs() for name in surviving}
    imp_mask = keep_largest(scores, surviving, rate)
    # (2) + (3) rank channels by their IMP-kept magnitude and prune the lowest globally.
    new_keep = prune_lowest_channels(channel_scores(trained_model, imp_mask), keep, rate)
    # (4) refill: channel_mask keeps every weight of a kept channel.
    return channel_mask(trained_model, new_keep)
