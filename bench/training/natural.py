"""Natural (standard) training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.training import TRAINERS
from bench.training.base import Batch, Trainer


@TRAINERS.register("natural")
class Natural(Trainer):
    uses_eps = False

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.model(batch.x), batch.y)
