"""Building blocks shared by the architectures."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_block(in_channels: int, out_channels: int, kernel: int, stride: int) -> list[nn.Module]:
    """The paper's ConvBlock: convolution, BatchNorm, ReLU (padding 1)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


def flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features.eval()(torch.zeros(1, *input_shape)).numel())
