"""The in-memory form every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # float32, (N, C, H, W), raw pixels in [0, 1]
    train_y: torch.Tensor  # int64, (N,)
    test_x: torch.Tensor  # float32, (M, C, H, W), in the documented test order
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per-channel normalization, applied outside the bounded model
    std: tuple[float, ...]
    num_classes: int
    test_order: str  # what "the first N test samples" means for this dataset

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])
