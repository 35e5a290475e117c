"""Per-channel input normalization: ``Normalizer`` for training, ``Normalize`` for export.

Trained models take normalized inputs (see docs/ARCHITECTURE.md): trainers, pruners and metrics
normalize raw pixels with ``Normalizer`` outside the model, because auto_LiRPA cannot bound a
normalization layer inside it. The exported ONNX takes raw pixels in [0, 1], so normalization is
prepended at export time. It is written as a frozen 1x1 depthwise ``Conv`` rather than
``Sub``/``Div`` because every verifier (and auto_LiRPA) handles a Conv, while some reject or
mishandle elementwise arithmetic with constant tensors.
"""
from __future__ import annotations

import torch
from torch import nn


class Normalizer:
    """``(x - mean) / std`` per channel on raw pixels, and the eps box around them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def box(self, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The L-inf ball of radius ``eps`` around raw ``x``, clipped to the valid pixel range
        [0, 1], in normalized coordinates."""
        lower = (x - eps).clamp(0.0, 1.0)
        upper = (x + eps).clamp(0.0, 1.0)
        return self(lower), self(upper)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as ``Conv2d(C, C, 1, groups=C)`` with weight ``1/std``
    and bias ``-mean/std``. Its parameters never train."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per channel")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive per channel (got {tuple(std)})")
        channels = mean_t.numel()
        self.mean = tuple(float(v) for v in mean_t)
        self.std = tuple(float(v) for v in std_t)
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, groups=channels, bias=True)
        with torch.no_grad():
            # Computed in float64 and rounded once, so the conv is as close to (x-mean)/std as
            # float32 allows.
            self.conv.weight.copy_((1.0 / std_t).reshape(channels, 1, 1, 1))
            self.conv.bias.copy_(-mean_t / std_t)
        self.conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def with_normalization(model: nn.Module, mean: tuple[float, ...],
                       std: tuple[float, ...]) -> nn.Sequential:
    """``model`` preceded by ``Normalize(mean, std)``: a model of raw pixels. ``model`` is shared,
    not copied. The normalization lives on the same device as ``model``'s parameters."""
    normalize = Normalize(mean, std)
    first = next(model.parameters(), None)
    if first is not None:
        normalize = normalize.to(first.device)
    return nn.Sequential(normalize, model)
