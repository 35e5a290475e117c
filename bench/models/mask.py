"""Masks over a model's prunable weights.

A mask maps parameter names (as in ``model.named_parameters()``) to 0/1 float tensors of the
parameter's shape. Applying it multiplies the weights in place; because auto_LiRPA's bounded
module shares the original model's parameters, re-applying the mask after every optimizer step
keeps pruned weights at zero inside and outside the bounded graph (``torch.nn.utils.prune``
hooks would not fire there).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

Mask = dict[str, torch.Tensor]


def prunable(model: nn.Module) -> list[str]:
    """Names of the weights unstructured pruners may prune: convolution weights only (paper
    3.4.1). A model without convolutions (an MLP) prunes its hidden linear layers instead, never
    the output layer."""
    conv = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if conv:
        return conv
    linear = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[:-1]


def dense_mask(model: nn.Module) -> Mask:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name]) for name in prunable(model)}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        params[name].mul_(keep.to(params[name].device))


def mask_gradients(model: nn.Module, mask: Mask) -> None:
    """Zero the gradients of pruned weights, so that optimizer state (Adam's moments) never
    builds up on them."""
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(keep.to(grad.device))


def remain_ratio(mask: Mask) -> float:
    """Fraction of the masked weight matrices/kernels still kept. Biases and BatchNorm
    parameters that structured pruners also mask are not weights and are not counted."""
    weights = [m for m in mask.values() if m.dim() > 1]
    total = sum(m.numel() for m in weights)
    return float(sum(m.sum().item() for m in weights) / total) if total else 1.0


def layer_sparsity(mask: Mask) -> dict[str, float]:
    """Fraction of each layer's weights that are pruned."""
    return {name: 1.0 - float(m.mean().item()) for name, m in mask.items() if m.dim() > 1}


def save_mask(mask: Mask, path: Path) -> None:
    torch.save({k: v.to(torch.bool) for k, v in mask.items()}, path)


def load_mask(path: Path) -> Mask:
    from bench.checkpoints import load_tensors  # tensors only, never pickled code

    raw = load_tensors(path)
    return {k: v.to(torch.float32) for k, v in raw.items()}
