"""CPU-sized models for the demo and the tests."""
from __future__ import annotations

import math

import torch.nn as nn

from bench.models import MODELS
from bench.models.layers import conv_block, flat_features


@MODELS.register("cnn4")
def cnn4(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two strided ConvBlocks (8 and 16 channels) and two FC layers: CNN-7L's shape, shrunk."""
    features = nn.Sequential(*conv_block(input_shape[0], 8, 4, 2), *conv_block(8, 16, 4, 2))
    return nn.Sequential(
        *features,
        nn.Flatten(),
        nn.Linear(flat_features(features, input_shape), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two hidden layers of 32 ReLUs; no convolution, so unstructured pruners see no conv weight
    and prune the first two linear layers instead (see ``bench.models.mask.prunable``)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )
