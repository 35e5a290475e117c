"""PGD adversarial training (Madry et al. 2018), an extra beside the paper's methods.

Each step trains on the cross-entropy at a PGD adversary: a uniform random start inside the
L-inf box, then ``steps`` signed-gradient steps of ``step_factor * eps / steps`` (``PGDParams``),
each followed by projection onto the box. The box is the batch's eps ball intersected with the
valid pixel range, so projecting onto ``[batch.lower, batch.upper]`` is exact.

Everything happens in normalized coordinates, where the ball's radius is ``eps / std`` per
channel. The trainer is not given ``std``; :func:`linf_radius` reads the radius back from the
clipped box (see there). The attack helpers here are shared with FGSM+GradAlign
(``bench.training.fgsm_gradalign``) and usable for evaluation.

As in the reference implementations (Madry et al.'s, and Andriushchenko & Flammarion's
``attack_pgd_training``), the model stays in training mode during the attack, so BatchNorm uses
batch statistics for the adversarial inputs it is trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import Hyperparameters, param
from bench.training import TRAINERS
from bench.training.base import Batch, Trainer

# Madry et al. train with 7 steps of 2/255 at eps 8/255 on CIFAR-10 and 40 steps of 0.01 at
# eps 0.3 on MNIST; 10 steps with a step of 2.5 * eps / steps (the rule of the MadryLab
# ``robustness`` library, which lets a run reach the far side of the ball from any start) is
# the common middle ground, and what Andriushchenko & Flammarion call PGD-10.
@dataclass(frozen=True)
class PGDParams(Hyperparameters):
    steps: int = param(10, "PGD steps of the training adversary (PGD-10).")
    step_factor: float = param(2.5, "Step size as a multiple of eps / steps.")


PGD_TRAINING = PGDParams()


def linf_radius(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The L-inf radius in normalized units, per channel, shaped to broadcast against ``x``.

    A pixel p keeps the side min(eps, p) below it and min(eps, 1 - p) above it after clipping
    to [0, 1]; for eps <= 0.5 one of the two is always eps, so ``max(x - lower, upper - x)``
    is exactly ``eps / std`` at every element. For larger eps the maximum over the batch and
    spatial positions is still exact if one pixel of the channel is >= eps or <= 1 - eps;
    otherwise it errs small (a shorter step, never a point outside the box: perturbed inputs
    are clipped into the box anyway).
    """
    half_width = torch.maximum(x - lower, upper - x)
    dims = [0] + list(range(2, x.dim()))
    return half_width.amax(dim=dims, keepdim=True)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """Gradient of the mean cross-entropy with respect to the input ``x``. With
    ``create_graph`` the result stays differentiable in the model's parameters (double
    backpropagation); without, it is detached and no parameter gradient is accumulated."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def clip_to_box(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lower), upper)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor,
               upper: torch.Tensor, steps: int = PGD_TRAINING.steps,
               step_factor: float = PGD_TRAINING.step_factor, random_start: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """An L-inf PGD adversary for cross-entropy inside the box ``[lower, upper]`` around ``x``
    (all normalized). Returns detached adversarial inputs; the model's mode is left as is."""
    radius = linf_radius(x, lower, upper)
    step = step_factor * radius / steps
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_adv = clip_to_box(x + (2 * noise - 1) * radius, lower, upper)
    else:
        x_adv = x.detach().clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)
        x_adv = clip_to_box(x_adv + step * grad.sign(), lower, upper)
    return x_adv.detach()


@TRAINERS.register("pgd")
class PGD(Trainer):
    params: PGDParams = PGD_TRAINING

    def loss(self, batch: Batch) -> torch.Tensor:
        if batch.eps <= 0:
            # Before the eps ramp the ball is a point: PGD would only repeat the clean input.
            return F.cross_entropy(self.model(batch.x), batch.y)
        x_adv = pgd_attack(self.model, batch.x, batch.y, batch.lower, batch.upper,
                           steps=self.params.steps, step_factor=self.params.step_factor)
        return F.cross_entropy(self.model(x_adv), batch.y)
