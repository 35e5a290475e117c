"""Certified training with CROWN-IBP and loss fusion (Xu et al. 2020, through auto_LiRPA).

The model is wrapped in auto_LiRPA's ``CrossEntropyWrapper`` so that the bound of the
cross-entropy itself is computed (loss fusion), and bounded once per level. While eps ramps up,
the upper bound mixes CROWN-IBP and IBP as ``factor * crown + (1 - factor) * ibp`` with
``factor = 1 - eps / eps_max``, as auto_LiRPA's ``cifar_training.py`` does; at full eps it is
pure IBP. Before the ramp (eps = 0) the loss is the natural cross-entropy of the model itself:
the same function as the wrapper's, at ~60 % of the cost of a step through auto_LiRPA's graph.

The bounded module shares the model's parameters but keeps its own copies of BatchNorm's
running statistics: they are handed over (``copy_buffers``) whenever training moves between the
model and the bounded module, and at the end (``finish``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import BuildConfig
from bench.lirpa_compat import auto_LiRPA
from bench.training import TRAINERS
from bench.training.base import Batch, Trainer

BoundedModule = auto_LiRPA.BoundedModule
BoundedTensor = auto_LiRPA.BoundedTensor
from auto_LiRPA import CrossEntropyWrapper  # noqa: E402
from auto_LiRPA.bound_ops import BoundExp  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


def bounded_loss_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int):
    example_x = torch.zeros(2, *input_shape)
    example_y = torch.zeros(2, dtype=torch.long)
    bounded = BoundedModule(
        CrossEntropyWrapper(model), (example_x, example_y),
        bound_opts={"relu": "adaptive", "loss_fusion": True}, device="cpu",
    )
    exp_node = next(node for node in bounded.modules() if isinstance(node, BoundExp))
    return bounded, exp_node


def copy_buffers(bounded: nn.Module, model: nn.Module, into_bounded: bool = False) -> None:
    """Write the BatchNorm running statistics kept inside ``bounded`` to ``model`` (or, with
    ``into_bounded``, the model's into ``bounded``)."""
    bounded_state = bounded.state_dict()
    own = dict(model.named_buffers())
    with torch.no_grad():
        for name, buffer in own.items():
            kept = bounded_state.get(f"model.{name}")  # CrossEntropyWrapper's attribute
            if kept is None and name.endswith("num_batches_tracked"):
                continue  # auto_LiRPA does not track it; BN uses its momentum, not this count
            if kept is None:
                raise RuntimeError(f"auto_LiRPA lost the buffer {name}; cannot export BN stats")
            if into_bounded:
                kept.copy_(buffer)
            else:
                buffer.copy_(kept)


@TRAINERS.register("crown-ibp")
class CrownIBP(Trainer):
    def __init__(self, config: BuildConfig, model: nn.Module, input_shape, num_classes: int,
                 regularizers: list | None = None):
        super().__init__(config, model, input_shape, num_classes, regularizers)
        self.bounded, self.exp_node = bounded_loss_model(model, input_shape, num_classes)
        self.bounded.train()
        self.statistics_in_model = False  # whether the model's BN statistics are the newer

    def loss(self, batch: Batch) -> torch.Tensor:
        if batch.eps <= 0:
            if not self.statistics_in_model:
                copy_buffers(self.bounded, self.model)
                self.statistics_in_model = True
            return F.cross_entropy(self.model(batch.x), batch.y)
        if self.statistics_in_model:
            copy_buffers(self.bounded, self.model, into_bounded=True)
            self.statistics_in_model = False
        ptb = PerturbationLpNorm(norm=float("inf"), eps=batch.eps, x_L=batch.lower,
                                 x_U=batch.upper)
        x = BoundedTensor(batch.x, ptb)
        self.bounded(x, batch.y)
        _, ibp_upper = self.bounded.compute_bounds(
            x=(x, batch.y), IBP=True, C=None, method=None, bound_lower=False, bound_upper=True)
        factor = 1.0 - batch.eps_fraction
        if factor < 1e-5:
            upper = ibp_upper
        else:
            _, crown_upper = self.bounded.compute_bounds(
                IBP=False, C=None, method="backward", bound_lower=False, bound_upper=True)
            upper = factor * crown_upper + (1.0 - factor) * ibp_upper
        # log of the bounded sum of exp(logit_j - logit_y), shifted back by the Exp node's max.
        return torch.mean(torch.log(upper) + self.exp_node.max_input)

    def preactivation_bounds(self, batch: Batch) -> list:
        """The ReLU input bounds ``loss`` just computed on this batch (paper 4.1.3: RS/NRS use
        auto_LiRPA's bounds in certified training); ``fit`` calls ``loss`` first."""
        from bench.training.regularizers import lirpa_preactivation_bounds

        return lirpa_preactivation_bounds(self.bounded, self.model)

    def finish(self) -> None:
        if not self.statistics_in_model:
            copy_buffers(self.bounded, self.model)
