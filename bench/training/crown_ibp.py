"""Certified training with CROWN-IBP and loss fusion (Xu et al. 2020, through auto_LiRPA).

The model is wrapped in auto_LiRPA's ``CrossEntropyWrapper`` so that the bound of the
cross-entropy itself is computed (loss fusion), and bounded once per level. While eps ramps up,
the upper bound mixes CROWN-IBP and IBP as ``factor * crown + (1 - factor) * ibp`` with
``factor = 1 - eps / eps_max``, as auto_LiRPA's ``cifar_training.py`` does; at full eps it is
pure IBP. The bounded module shares the model's parameters but keeps its own copies of
BatchNorm's running statistics; ``finish`` writes them back.
"""
from __future__ import annotations

import torch
import torch.nn as nn

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


def copy_buffers_back(bounded: nn.Module, model: nn.Module) -> None:
    """Write BatchNorm running statistics kept inside ``bounded`` back to ``model``."""
    bounded_state = bounded.state_dict()
    own = dict(model.named_buffers())
    with torch.no_grad():
        for name, buffer in own.items():
            source = bounded_state.get(f"model.{name}")  # CrossEntropyWrapper's attribute
            if source is None and name.endswith("num_batches_tracked"):
                continue  # auto_LiRPA does not track it; BN uses its momentum, not this count
            if source is None:
                raise RuntimeError(f"auto_LiRPA lost the buffer {name}; cannot export BN stats")
            buffer.copy_(source)


@TRAINERS.register("crown-ibp")
class CrownIBP(Trainer):
    def __init__(self, config: BuildConfig, model: nn.Module, input_shape, num_classes: int,
                 regularizers: list | None = None):
        super().__init__(config, model, input_shape, num_classes, regularizers)
        self.bounded, self.exp_node = bounded_loss_model(model, input_shape, num_classes)
        self.bounded.train()

    def loss(self, batch: Batch) -> torch.Tensor:
        if batch.eps <= 0:
            # Before the ramp: natural loss, through the bounded module so that its BN
            # statistics are the ones that keep being updated.
            return torch.log(self.bounded(batch.x, batch.y)).mean()
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
        copy_buffers_back(self.bounded, self.model)
