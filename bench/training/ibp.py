"""IBP certified training as in Fast-IBP (Shi et al., NeurIPS 2021, "Fast Certified Robust
Training with Short Warmup"; code: shizhouxing/Fast-Certified-Robust-Training), the certified
method of the paper's Appendix B.1 ("FastIBP").

Three parts, each as in their code:

- **IBP initialization**, :func:`ibp_init`. It must run ONCE, right after the model is built
  and before its initial weights are saved: lottery-ticket rewinding sends every pruning level
  back to those saved weights, so re-initializing inside the trainer (constructed anew per
  level) would break level k's link to level 0. ``IBP.initialize`` (the ``Trainer.initialize``
  hook) runs it for the pipeline.
- **Loss**: IBP bounds through auto_LiRPA (``compute_bounds(method=None, IBP=True)``) with a
  specification matrix C of margins ``logit_y - logit_j`` (j != y), and the robust
  cross-entropy ``CE(-[0, lower margins], 0)``, auto_LiRPA's non-loss-fusion recipe. No loss
  fusion (Fast-IBP leaves it out, and the paper's B.1 reports it that way) and no natural
  cross-entropy mixed in: like Fast-IBP, the loss is the pure robust loss whenever eps > 0 and
  the natural cross-entropy only while eps is 0.
- **Warmup regularizers** (their ``compute_reg``, default ``--reg-obj relu tightness``): the
  bound-tightness term ``relu(tol - tightness_0 / tightness_l) / tol`` and the ReLU-balance
  term ``(relu(tol - r_mean) + relu(tol - r_var)) / tol`` over the pre-activation bounds of
  every ReLU layer l, averaged over layers and weighted by ``reg_lambda * (1 - eps / eps_max)``,
  so they fade out as eps ramps up and are gone at full eps. While eps is still 0 they are
  computed on a box of half-width ``min_eps_reg`` around x (their ``--min-eps-reg``); all three
  in ``FastIBPParams``.

The bounded module is built once per trainer and shares the model's parameters (so the
pipeline's masks, re-applied to the model after every step, hold inside the bounds too).
auto_LiRPA keeps its own copies of BatchNorm's running statistics; :meth:`IBP.finish` copies
them back into the model.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.fx
import torch.nn.functional as F

from bench.config import BuildConfig, Hyperparameters, param
from bench.lirpa_compat import auto_LiRPA
from bench.training import TRAINERS
from bench.training.base import Batch, Trainer
from bench.training.crown_ibp import copy_buffers
from bench.training.regularizers import lirpa_preactivation_bounds

from auto_LiRPA.bound_ops import BoundRelu  # noqa: E402  (after the compat import)
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


# Fast-IBP's defaults (parser.py, add_arguments_regularizers_and_init), used for MNIST and
# CIFAR-10 alike; their README advises 0.1-0.2 for TinyImageNet only. Their --min-eps-reg is in
# pixels and clipped to the valid range; ours is in normalized units and unclipped, since a batch
# at eps = 0 carries no box to read the scale or the range from. At this size neither matters:
# the regularizers look at ratios of bound widths and at signs.
@dataclass(frozen=True)
class FastIBPParams(Hyperparameters):
    reg_lambda: float = param(0.5, "Weight of the warmup regularizers at eps = 0 "
                              "(--reg-lambda).")
    reg_tol: float = param(0.5, "tau of the warmup regularizers (--tol).")
    min_eps_reg: float = param(1e-6, "Half-width of the box the regularizers use while eps = 0 "
                               "(--min-eps-reg), in normalized units.")


FAST_IBP = FastIBPParams()


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> list[str]:
    """Fast-IBP's IBP initialization (their ``manual_init.ibp_init``), in place.

    Every weight matrix or kernel except the last one (the classifier) is redrawn from
    ``N(0, sigma^2)`` with ``sigma = sqrt(2 * pi) / fan_in``, so that ``E sum_i |w_i| = 2``:
    an IBP bound's width is doubled by the layer and about halved by the ReLU after it, which
    keeps certified bounds from exploding with depth at initialization. Biases, BatchNorm
    parameters and the classifier keep their values. Then, as in their code, the weight of
    every convolution or linear layer fed by ``f(a + b)`` (a residual sum through one
    operation, the ReLU of a residual block) is halved, because the sum adds two bound widths
    (:func:`layers_after_residual_sum`).

    Draws from ``generator``, or from torch's global generator: seeded, it is deterministic.
    Returns the names of the re-initialized parameters.
    """
    weights = [(name, p) for name, p in model.named_parameters() if name.endswith("weight")]
    changed = []
    with torch.no_grad():
        for name, weight in weights[:-1]:
            if weight.dim() < 2:
                continue  # a BatchNorm scale
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
            weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in, generator=generator)
            changed.append(name)
        modules = dict(model.named_modules())
        for name in layers_after_residual_sum(model):
            modules[name].weight.div_(2)
    return changed


def layers_after_residual_sum(model: nn.Module) -> list[str]:
    """Names of the Conv2d/Linear modules whose input is ``f(a + b)`` for one operation f.

    Fast-IBP finds them on auto_LiRPA's graph (a BoundConv or BoundLinear whose input node's
    first input is a BoundAdd); torch.fx gives the same graph without an example input."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())

    def is_add(node: object) -> bool:
        return isinstance(node, torch.fx.Node) and (
            (node.op == "call_function" and node.target in (operator.add, torch.add))
            or (node.op == "call_method" and node.target == "add"))

    found = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target],
                                                      (nn.Conv2d, nn.Linear)):
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.args and is_add(source.args[0]):
            found.append(node.target)
    return found


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C of shape (B, K-1, K) whose rows give ``logit_y - logit_j`` for every j != y."""
    eye = torch.eye(num_classes, device=y.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    others = y.unsqueeze(1) != torch.arange(num_classes, device=y.device).unsqueeze(0)
    return c[others].view(y.shape[0], num_classes - 1, num_classes)


def robust_cross_entropy(margin_lower: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits ``-lower margins`` (the true class's logit is 0),
    as auto_LiRPA's examples and Fast-IBP's ``get_crown_loss`` compute it."""
    padded = torch.cat([torch.zeros_like(margin_lower[:, :1]), margin_lower], dim=1)
    return F.cross_entropy(-padded, torch.zeros_like(margin_lower[:, 0], dtype=torch.long))


def fast_ibp_regularizer(bounded: nn.Module, lower: torch.Tensor, upper: torch.Tensor,
                         tol: float = FAST_IBP.reg_tol) -> torch.Tensor:
    """Fast-IBP's tightness + ReLU-balance regularizers (unweighted), read from the IBP bounds
    of the last ``compute_bounds`` call on ``bounded`` for the input box ``[lower, upper]``."""
    tightness_0 = ((upper - lower) / 2).mean()
    loss_tightness = lower.new_zeros(())
    loss_relu = lower.new_zeros(())
    relus = [node for node in bounded.modules() if isinstance(node, BoundRelu)]
    for node in relus:
        pre_lower, pre_upper = node.inputs[0].lower, node.inputs[0].upper
        center = (pre_upper + pre_lower) / 2
        tightness = ((pre_upper - pre_lower) / 2).mean()
        loss_tightness = loss_tightness + F.relu(tol - tightness_0 / tightness.clamp(min=1e-12)) / tol

        active, inactive = pre_lower > 0, pre_upper < 0
        if not (bool(active.any()) and bool(inactive.any())):
            # The ratios below are 0/0 or x/0 here. Fast-IBP drops non-finite terms; its
            # finite fallback of a constant would backpropagate NaN through the divisions.
            continue
        mean_active = (center * active).mean()
        mean_inactive = (center * inactive).mean()
        spread = (center - center.mean()) ** 2
        var_active = (spread * active).sum()
        var_inactive = (spread * inactive).sum()
        mean_ratio = mean_active / -mean_inactive
        var_ratio = var_active / var_inactive
        mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio.clamp(min=1e-12))
        var_ratio = torch.minimum(var_ratio, 1 / var_ratio.clamp(min=1e-12))
        term = (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
        if bool(torch.isfinite(term)):
            loss_relu = loss_relu + term
    count = max(1, len(relus))
    return (loss_tightness + loss_relu) / count


class _Logits(nn.Module):
    """Holds the model under the attribute ``model``, so that the bounded module's state-dict
    names carry the ``model.`` prefix that ``copy_buffers`` expects (the prefix
    ``CrossEntropyWrapper`` gives CROWN-IBP's bounded module)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@TRAINERS.register("ibp")
class IBP(Trainer):
    params: FastIBPParams = FAST_IBP

    def __init__(self, config: BuildConfig, model: nn.Module, input_shape: tuple[int, ...],
                 num_classes: int, regularizers: list | None = None):
        super().__init__(config, model, input_shape, num_classes, regularizers)
        self.bounded = auto_LiRPA.BoundedModule(
            _Logits(model), torch.zeros(2, *input_shape),
            bound_opts={"relu": "adaptive"}, device="cpu")
        self.bounded.train()

    @staticmethod
    def initialize(model: nn.Module) -> None:
        """Fast-IBP's initialization, once per run before the initial weights are saved."""
        ibp_init(model)

    def loss(self, batch: Batch) -> torch.Tensor:
        # Fast-IBP regularizes during warmup only, with weight lambda * (1 - eps / eps_max).
        intensity = (self.params.reg_lambda * (1.0 - batch.eps_fraction)
                     if self.config.properties.eps > 0 else 0.0)
        regularize = intensity > 0
        if batch.eps <= 0 and not regularize:
            # Through the bounded module, whose BN statistics are the ones kept up to date.
            return F.cross_entropy(self.bounded(batch.x), batch.y)
        if batch.eps > 0:
            lower, upper = batch.lower, batch.upper
        else:
            lower, upper = batch.x - self.params.min_eps_reg, batch.x + self.params.min_eps_reg
        ptb = PerturbationLpNorm(norm=float("inf"), eps=batch.eps, x_L=lower, x_U=upper)
        x = auto_LiRPA.BoundedTensor(batch.x, ptb)
        logits = self.bounded(x)  # clean forward: sets BN's batch statistics for the bounds
        margin_lower, _ = self.bounded.compute_bounds(
            IBP=True, method=None, C=margin_spec(batch.y, self.num_classes), bound_upper=False)
        if batch.eps > 0:
            loss = robust_cross_entropy(margin_lower)
        else:
            loss = F.cross_entropy(logits, batch.y)
        if regularize:
            loss = loss + intensity * fast_ibp_regularizer(self.bounded, lower, upper,
                                                           self.params.reg_tol)
        return loss

    def preactivation_bounds(self, batch: Batch) -> list:
        """The ReLU input bounds ``loss`` just computed on this batch (paper 4.1.3: RS/NRS use
        the certified trainer's own bounds); ``fit`` calls ``loss`` first, and only asks for
        these when eps > 0, where ``loss`` always bounds the batch's box."""
        return lirpa_preactivation_bounds(self.bounded, self.model)

    def finish(self) -> None:
        copy_buffers(self.bounded, self.model)
