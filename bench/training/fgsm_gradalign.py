"""FGSM adversarial training with GradAlign (Andriushchenko & Flammarion, NeurIPS 2020).

The paper's adversarial training method (4.1.3, "FGSM" for short). Each step:

1. FGSM from a zero start: the input gradient g at x, then
   ``delta = clip(fgsm_alpha * eps * sign(g), -eps, eps)``, clipped into the valid pixel range.
   With a zero start and fgsm_alpha >= 1 this is the corner ``x + eps * sign(g)`` of the box:
   the reference's ``--fgsm_alpha 1.25`` and a step of exactly eps give the same point.
2. Cross-entropy at ``x + delta``.
3. GradAlign: ``lambda * (1 - cos(g, g_rand))``, batch-averaged, where g_rand is the input
   gradient at a uniformly random point of the box, taken with ``create_graph=True`` so that
   the term is differentiable in the weights (double backpropagation). As in the reference
   code (``train.py`` of tml-epfl/understanding-fast-adv-training, and ``grad_align.py`` of
   the paper's VITA-Group/CertifiedPruning), g at x is the detached FGSM gradient, so the
   regularizer's gradient flows through g_rand only, and samples where either gradient is zero
   are left out of the average.

Hyperparameters (``FGSMParams``; the trainer reads them from ``self.params``, so a test can
replace them on an instance):

- ``grad_align_lambda = 0.2``: Andriushchenko & Flammarion's value for CIFAR-10 at eps 8/255,
  and the default (``--grad_align_cos_lambda 0.2``) of the paper's own ``fgsm_train.py``, whose
  configs never override it, so the paper used 0.2 for every dataset and eps (2/255, 8/255,
  and 0.1 on FashionMNIST). We follow the paper. Andriushchenko & Flammarion themselves scale
  lambda with eps, log-linearly through their tuned points: on CIFAR-10
  ``0.02 * 10 ** (eps_255 / 8)`` (0.036 at 2/255, 0.2 at 8/255, 2.0 at 16/255), on SVHN
  ``1.5625 * 1.6 ** (eps_255 / 8)`` (1.76 at 2/255, 2.5 at 8/255) (``sh/exps_diff_eps_*.sh``);
  they publish no MNIST-family value. Lambda does not follow the eps ramp: like theirs, it is
  fixed per run.
- ``fgsm_alpha = 1.25`` with a zero start: their ``--fgsm_alpha`` default and
  ``--attack_init=zero`` for every GradAlign run; the paper's code has the same default.
- The eps of each step is the ramped eps of ``fit`` (the paper's code also feeds the
  SmoothedScheduler's eps to FGSM). Before the ramp starts (eps = 0) the loss is plain
  cross-entropy, which is what FGSM + GradAlign reduce to there (x + delta = x, cos = 1).

The optimizer the paper pairs with it (SGD, lr 0.01, momentum 0.9, weight decay 5e-4) comes
from the configuration, not from here.

All of this runs in normalized coordinates, with the box ``[batch.lower, batch.upper]`` (eps
ball intersected with the valid pixel range). A signed step of eps per pixel is a step of
eps / std per channel there (``bench.training.pgd.linf_radius``); the cosine is taken between
gradients in normalized coordinates, which equals the pixel-space cosine for one-channel data
and otherwise differs from it only through the spread of the per-channel std (the largest
CIFAR-10 std is 1.07 times the smallest).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import Hyperparameters, param
from bench.training import TRAINERS
from bench.training.base import Batch, Trainer
from bench.training.pgd import clip_to_box, input_gradient, linf_radius


@dataclass(frozen=True)
class FGSMParams(Hyperparameters):
    grad_align_lambda: float = param(0.2, "Weight of the GradAlign regularizer (the paper's, "
                                     "for every dataset and eps).")
    fgsm_alpha: float = param(1.25, "FGSM step from a zero start, in units of eps.")


FGSM = FGSMParams()


def fgsm_point(x: torch.Tensor, grad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
               alpha: float = FGSM.fgsm_alpha) -> torch.Tensor:
    """FGSM from a zero start: one signed step of ``alpha * radius``, projected onto the box."""
    radius = linf_radius(x, lower, upper)
    delta = (alpha * radius * grad.sign()).clamp(-radius, radius)
    return clip_to_box(x + delta, lower, upper).detach()


def grad_align_regularizer(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           lower: torch.Tensor, upper: torch.Tensor,
                           grad_clean: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos(grad_clean, g_rand)`` with g_rand the input gradient at a uniform random
    point of the box, kept differentiable in the model's parameters (double backprop)."""
    radius = linf_radius(x, lower, upper)
    noise = (2 * torch.rand_like(x) - 1) * radius
    x_rand = clip_to_box(x + noise, lower, upper)
    grad_rand = input_gradient(model, x_rand, y, create_graph=True)
    g1, g2 = grad_clean.detach().flatten(1), grad_rand.flatten(1)
    # A zero gradient has no direction; the reference drops such samples from the mean.
    nonzero = (g1.norm(dim=1) > 0) & (g2.norm(dim=1) > 0)
    if not bool(nonzero.any()):
        return grad_rand.sum() * 0.0  # keeps the graph, so backward still works
    g1, g2 = g1[nonzero], g2[nonzero]
    cos = (g1 / g1.norm(dim=1, keepdim=True) * (g2 / g2.norm(dim=1, keepdim=True))).sum(1)
    return 1.0 - cos.mean()


@TRAINERS.register("fgsm")
class FGSMGradAlign(Trainer):
    params: FGSMParams = FGSM

    def loss(self, batch: Batch) -> torch.Tensor:
        if batch.eps <= 0:
            return F.cross_entropy(self.model(batch.x), batch.y)
        grad_clean = input_gradient(self.model, batch.x, batch.y)
        x_adv = fgsm_point(batch.x, grad_clean, batch.lower, batch.upper, self.params.fgsm_alpha)
        loss = F.cross_entropy(self.model(x_adv), batch.y)
        if self.params.grad_align_lambda > 0:
            loss = loss + self.params.grad_align_lambda * grad_align_regularizer(
                self.model, batch.x, batch.y, batch.lower, batch.upper, grad_clean)
        return loss
