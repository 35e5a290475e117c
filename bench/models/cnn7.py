"""CNN-7L, the paper's Table 1: five ConvBlocks (Conv, BN, ReLU), FC(·,100), ReLU, FC(100, classes).

For 3x32x32 input the first FC has 2048 inputs; for 1x28x28 input the first conv
takes one channel and the first FC 1152 inputs, as the paper's FashionMNIST variant.

The layer sizes of Table 1 give 0.67M parameters for CIFAR-10, not the 6.7M the paper states;
we follow the table.
"""
from __future__ import annotations

import torch.nn as nn

from bench.models import MODELS
from bench.models.layers import conv_block, flat_features

# (out_channels, kernel, stride) per ConvBlock; padding 1 throughout, as in Table 1's sizes.
CNN7_BLOCKS = ((32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2), (128, 4, 2))


@MODELS.register("cnn7")
def cnn7(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels = input_shape[0]
    for out_channels, kernel, stride in CNN7_BLOCKS:
        layers += conv_block(channels, out_channels, kernel, stride)
        channels = out_channels
    features = nn.Sequential(*layers)
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(flat_features(features, input_shape), 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )
