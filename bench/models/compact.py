"""A model's output channels, read from a mask, and their physical removal for export.

Structured pruners (``bench.pruning.structured``) express "channel ``c`` of this convolution is
pruned" as an ordinary ``Mask`` that zeroes the convolution's ``weight[c]`` and ``bias[c]`` and
the following BatchNorm's ``weight[c]`` and ``bias[c]``. Zeroing the convolution alone is not
enough: BatchNorm would still add ``beta - gamma * mean / std`` and ReLU would pass that constant
on. With gamma and beta masked the channel's BatchNorm output is exactly 0 (in train and eval mode
alike), so removing the channel, as ``compact_model`` does with Torch-Pruning before export,
leaves the network's function unchanged.

Grouped and depthwise convolutions (such as the export's ``Normalize``) are never channel-pruned:
their channels are tied to their input channels.

This module belongs to the models (pruning decides which channels go, the export removes them),
so that neither pruning nor training imports the other for it. Torch-Pruning is imported where
it is used: it takes seconds to import, and every lookup in ``MODELS`` imports this package.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from bench.models.mask import Mask, apply_mask

Keep = dict[str, torch.Tensor]  # conv module name -> bool tensor (out_channels,), True = kept


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str | None]]:
    """``(conv name, name of the BatchNorm that normalizes its output, or None)`` for every
    channel-prunable convolution, in forward order.

    A BatchNorm belongs to a convolution when it is the next leaf module and has one feature per
    output channel; for the ``nn.Sequential`` models of ``bench.models`` module order is forward
    order."""
    leaves = [(name, module) for name, module in model.named_modules()
              if not list(module.children())]
    pairs: list[tuple[str, str | None]] = []
    for i, (name, module) in enumerate(leaves):
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            continue
        bn_name = None
        if i + 1 < len(leaves):
            next_name, next_module = leaves[i + 1]
            if (isinstance(next_module, nn.BatchNorm2d)
                    and next_module.num_features == module.out_channels):
                bn_name = next_name
        pairs.append((name, bn_name))
    return pairs


def channel_params(model: nn.Module, conv_name: str, bn_name: str | None) -> list[str]:
    """Names of the parameters whose entry ``c`` (first dimension) belongs to output channel
    ``c`` of the convolution: conv weight and bias, BatchNorm weight and bias."""
    modules = dict(model.named_modules())
    names = [f"{conv_name}.weight"]
    if modules[conv_name].bias is not None:
        names.append(f"{conv_name}.bias")
    if bn_name is not None and modules[bn_name].affine:
        names += [f"{bn_name}.weight", f"{bn_name}.bias"]
    return names


def kept_channels(model: nn.Module, mask: Mask) -> Keep:
    """Which output channels of each convolution ``mask`` keeps.

    A channel is pruned when every mask entry that belongs to it is zero. This reads structured
    masks (from ``channel_mask``) and also the conv-weights-only dense mask of level 0, where
    every channel is kept."""
    keep: Keep = {}
    for conv_name, bn_name in conv_bn_pairs(model):
        out_channels = dict(model.named_modules())[conv_name].out_channels
        alive = torch.zeros(out_channels, dtype=torch.bool)
        present = False
        for name in channel_params(model, conv_name, bn_name):
            if name in mask:
                present = True
                alive |= mask[name].reshape(out_channels, -1).bool().any(dim=1).cpu()
        keep[conv_name] = alive if present else torch.ones(out_channels, dtype=torch.bool)
    return keep


def channel_remain_ratio(model: nn.Module, mask: Mask) -> float:
    """Fraction of the convolutions' output channels that ``mask`` keeps: the remain ratio of
    neuron pruning in the paper's Table 2."""
    keep = kept_channels(model, mask)
    total = sum(k.numel() for k in keep.values())
    return float(sum(int(k.sum()) for k in keep.values()) / total) if total else 1.0


def _infer_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The smallest square input a ``bench.models`` CNN accepts, worked out backwards from the
    first ``Linear``'s input features through every convolution (stride, padding, kernel).
    Any input the model accepts gives Torch-Pruning the same channel dependencies, because the
    flattened layout only depends on the last feature map, which the Linear layer fixes."""
    leaves = [m for m in model.modules() if not list(m.children())]
    convs = [m for m in leaves if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("cannot infer the input shape of a model without convolutions")
    linear = next((m for m in leaves if isinstance(m, nn.Linear)), None)
    side = 1
    if linear is not None:
        spatial = linear.in_features // convs[-1].out_channels
        side = math.isqrt(spatial)
        if side * side * convs[-1].out_channels != linear.in_features:
            raise ValueError("cannot infer the input shape (non-square feature map); pass "
                             "input_shape")
    for conv in reversed(convs):
        (stride, _), (pad, _), (kernel, _), (dilation, _) = (
            conv.stride, conv.padding, conv.kernel_size, conv.dilation)
        side = max((side - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1, 1)
    return convs[0].in_channels, side, side


def compact_model(model: nn.Module, mask: Mask,
                  input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A deep copy of ``model`` with the channels ``mask`` prunes physically removed.

    Torch-Pruning's dependency graph removes each convolution's pruned output channels together
    with everything that depends on them: the following BatchNorm, the next convolution's input
    channels and, through ``Flatten``, the first ``Linear`` layer's input features. The pruned
    channels output exactly zero in the masked model, so the compact model computes the same
    function (up to float rounding). ``input_shape`` (C, H, W) is only used to trace the model;
    by default it is inferred from the layer sizes. ``model`` itself is not modified."""
    pairs = conv_bn_pairs(model)
    keep = kept_channels(model, mask)
    _check_removable(model, mask, pairs, keep)
    compact = copy.deepcopy(model)
    apply_mask(compact, mask)
    compact.zero_grad(set_to_none=True)
    to_prune = {name: torch.nonzero(~k).flatten().tolist() for name, k in keep.items()}
    if not any(to_prune.values()):
        return compact

    # Tracing puts every module in eval mode; each module's own flag is restored afterwards.
    training = {name: m.training for name, m in compact.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in compact.named_parameters()}
    device = next(compact.parameters()).device
    shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(compact)
    # Torch-Pruning traces through autograd: an input that requires grad gives every layer's
    # output a grad_fn even if some parameters are frozen. In eval mode the tracing forward pass
    # leaves BatchNorm running statistics untouched.
    example = torch.zeros(1, *shape, device=device, requires_grad=True)
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(compact, example_inputs=example, verbose=False)
    modules = dict(compact.named_modules())
    for conv_name, idxs in to_prune.items():
        if idxs:
            graph.get_pruning_group(modules[conv_name], tp.prune_conv_out_channels, idxs).prune()
    # Torch-Pruning replaces pruned tensors with fresh Parameters (requires_grad=True).
    for name, param in compact.named_parameters():
        param.requires_grad_(requires_grad[name])
    for name, module in compact.named_modules():
        module.training = training[name]
    return compact


def _check_removable(model: nn.Module, mask: Mask, pairs: list[tuple[str, str | None]],
                     keep: Keep) -> None:
    """Removing a channel is exact only if the mask makes its output exactly zero; refuse masks
    that do not (e.g. an unstructured mask that zeroed a whole conv row but not the BatchNorm)."""
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        kept = keep[conv_name]
        if not bool(kept.any()):
            raise ValueError(f"{conv_name}: the mask prunes every channel; a structured pruner "
                             "must keep at least one per layer")
        if bool(kept.all()):
            continue
        needed = channel_params(model, conv_name, bn_name)
        if bn_name is not None and modules[bn_name].affine:
            # gamma = beta = 0 makes the BatchNorm output zero whatever the convolution does.
            needed = [n for n in needed if n.startswith(f"{bn_name}.")]
        elif bn_name is not None:
            raise ValueError(f"{bn_name}: cannot remove channels before a BatchNorm without "
                             "affine parameters (its output would not be zero)")
        missing = [n for n in needed if n not in mask]
        if missing:
            raise ValueError(f"{conv_name}: the mask prunes channels but has no entry for "
                             f"{', '.join(missing)}, so they would not output zero; build it "
                             "with channel_mask")


def exportable_model(model: nn.Module, mask: Mask, structured: bool,
                     input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The model to export: physically smaller for structured pruners, ``model`` itself (whose
    zeros are already in place) otherwise."""
    return compact_model(model, mask, input_shape) if structured else model


def model_stats(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Parameter count, nonzero parameter count and FLOPs of one forward pass on one sample.

    FLOPs are Torch-Pruning's ``count_ops_and_params`` count, which counts multiply-accumulates
    (MACs) for convolutions and linear layers; zeros inside a dense tensor still count, so only a
    compact model shows the savings of structured pruning."""
    parameters = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    import torch_pruning as tp

    device = next(model.parameters()).device
    with torch.no_grad():
        flops, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape, device=device))
    return {"parameters": int(parameters), "nonzero_parameters": int(nonzero),
            "flops": int(flops)}
