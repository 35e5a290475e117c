"""Channel (neuron) pruning expressed as an ordinary ``Mask``: which channels go.

Structured pruners (StructLTH, Network Slimming; paper 3.4.1) decide which output channels of
each convolution survive and return the same kind of mask as unstructured pruners, built by
``channel_mask``, so every trainer keeps working unchanged (it re-applies the mask after each
optimizer step). How a channel is represented in a mask, and its physical removal before export,
belong to the models: ``bench.models.compact``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.config import BuildConfig
from bench.errors import BenchError
from bench.models.compact import Keep, channel_params, conv_bn_pairs
from bench.models.mask import Mask
from bench.pruning import PRUNERS


def prune_rate(config: BuildConfig, pruner_name: str) -> float:
    """The per-level rate: the configured one, or the pruner's default (0.11 of the remaining
    channels for structured pruners, paper 4.1.2) when the configuration leaves it unset."""
    if config.pruning.prune_rate is not None:
        return config.pruning.prune_rate
    return PRUNERS.get(pruner_name).default_rate


def channel_mask(model: nn.Module, keep: Keep) -> Mask:
    """The mask that keeps exactly the channels in ``keep`` and every weight inside them (kept
    channels are dense). Convolutions missing from ``keep`` keep all their channels."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    mask: Mask = {}
    for conv_name, bn_name in conv_bn_pairs(model):
        conv = modules[conv_name]
        kept = keep.get(conv_name, torch.ones(conv.out_channels, dtype=torch.bool))
        if kept.shape != (conv.out_channels,):
            raise ValueError(f"{conv_name}: keep has shape {tuple(kept.shape)}, expected "
                             f"({conv.out_channels},)")
        kept = kept.to(device=params[f"{conv_name}.weight"].device, dtype=torch.bool)
        for name in channel_params(model, conv_name, bn_name):
            shape = params[name].shape
            per_channel = kept.reshape(-1, *([1] * (len(shape) - 1)))
            mask[name] = per_channel.expand(shape).to(params[name].dtype).clone()
    return mask


def prune_lowest_channels(scores: dict[str, torch.Tensor], keep: Keep, fraction: float) -> Keep:
    """Prune ``fraction`` of the channels that ``keep`` still keeps, those with the lowest scores,
    ranked globally across layers (as IMP ranks weights, and as Network Slimming thresholds all
    gammas together). Already-pruned channels stay pruned, and every layer keeps at least one
    channel (a layer without channels would disconnect the network); a channel skipped for that
    reason is replaced by the next-lowest one elsewhere, so exactly
    ``round(fraction * remaining)`` channels go whenever that many can."""
    alive_total = sum(int(k.sum()) for k in keep.values())
    n_prune = int(round(fraction * alive_total))
    new_keep = {name: k.clone() for name, k in keep.items()}
    candidates = [(float(scores[name][c]), order, name, c)
                  for order, (name, k) in enumerate(keep.items())
                  for c in torch.nonzero(k).flatten().tolist()]
    # Ties go to the earlier layer and lower channel index: deterministic, like a stable sort.
    candidates.sort()
    remaining = {name: int(k.sum()) for name, k in keep.items()}
    pruned = 0
    for _, _, name, c in candidates:
        if pruned == n_prune:
            break
        if remaining[name] <= 1:
            continue
        new_keep[name][c] = False
        remaining[name] -= 1
        pruned += 1
    return new_keep


def require_channels(model: nn.Module, pruner_name: str) -> list[tuple[str, str | None]]:
    """``conv_bn_pairs(model)``, or a ``BenchError`` when the model has no convolution whose
    channels a structured pruner could remove."""
    pairs = conv_bn_pairs(model)
    if not pairs:
        raise BenchError(f"pruner {pruner_name!r} removes convolution channels, but the model "
                         "has no convolution; use an unstructured pruner (e.g. imp)")
    return pairs
