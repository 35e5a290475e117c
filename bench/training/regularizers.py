"""Training regularizers that pruning methods train with (IMP+RS, IMP+NRS, Network Slimming).

A regularizer is ``fn(trainer, batch) -> scalar tensor``, added to the training loss with a
weight on every batch where eps > 0. ``build_regularizers`` picks the one a pruner declares
(``bench.pruning.Pruner.regularizer``) unless the configuration overrides it
(``regularizer_name``). Each entry of ``REGULARIZERS`` declares its default weight and its own
hyperparameters, which the experiment's hash covers.

The stability regularizers (paper 3.4.2) act on bounds ``[l, u]`` of every ReLU's input over the
batch's eps box, which ``trainer.preactivation_bounds(batch)`` supplies: by default IBP through
auto_LiRPA (``ibp_preactivation_bounds``, as the paper does for adversarial training), while a
certified trainer reuses the bounds its loss already computed (``lirpa_preactivation_bounds``,
paper 4.1.3). ``fit`` calls ``trainer.loss(batch)`` before ``trainer.regularization(batch)``, so
those bounds belong to the current batch.

Normalization of RS and NRS: per ReLU layer the mean over the batch and the layer's neurons,
summed over layers (one term per layer, as Xiao et al. 2019; a per-layer mean keeps the layers
on the same scale whatever their width). The paper's own code (VITA-Group/CertifiedPruning)
instead takes one mean over all neurons, and in its auto_LiRPA path over BN-fed layers only:
its values are smaller by about the number of ReLU layers, so a weight tuned there is not
directly comparable.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from bench.config import BuildConfig, Hyperparameters, param
from bench.errors import BenchError
from bench.lirpa_compat import auto_LiRPA
from auto_LiRPA.bound_ops import BoundBatchNormalization, BoundParams, BoundRelu  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


@dataclass(frozen=True)
class NRSParams(Hyperparameters):
    # A pruned channel has gamma = 0 exactly: its BN output is the constant beta, so l = u =
    # beta and l*u >= 0; with the clamp the NRS term saturates at -tanh(+large) = -1 with a zero
    # gradient, instead of dividing by zero. Nearly-zero but unpruned channels get a large but
    # finite ratio, as eq. 5 says they should.
    gamma_squared_min: float = param(1e-12, "Lower limit of gamma^2 in NRS's denominator.")


NRS = NRSParams()


@dataclass
class NeuronBounds:
    """Bounds on the input of one ReLU layer (its pre-activation) for a batch."""

    lower: torch.Tensor  # (B, C, H, W) or (B, F)
    upper: torch.Tensor
    gamma: torch.Tensor | None  # weight of the BatchNorm feeding this ReLU, (C,); None if none


def _batchnorm_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


def _model_parameter(model: nn.Module, param: torch.Tensor, bounded_name: str) -> torch.Tensor:
    """The parameter of ``model`` that a BoundedModule node holds.

    auto_LiRPA 0.3 shares the model's Parameter objects; should a version copy them, fall back
    to the traced name (``model.1.weight`` under CrossEntropyWrapper, ``1.weight`` bare)."""
    named = list(model.named_parameters())
    for _, own in named:
        if own is param:
            return own
    for name, own in named:
        if bounded_name == name or bounded_name.endswith("." + name):
            return own
    raise RuntimeError(f"BatchNorm weight {bounded_name!r} of the bounded graph is not a "
                       "parameter of the model")


def lirpa_preactivation_bounds(bounded: nn.Module, model: nn.Module) -> list[NeuronBounds]:
    """Read the ReLU input bounds that the last ``bounded.compute_bounds`` left on its nodes.

    No propagation happens here: in CROWN-IBP these are the IBP intermediate bounds the loss was
    computed from, still attached to the autograd graph, so a loss on them trains the weights.
    ``gamma`` is ``model``'s BatchNorm weight for a ReLU whose input node is a BatchNorm."""
    result = []
    for node in bounded.modules():
        if not isinstance(node, BoundRelu):
            continue
        source = node.inputs[0]
        lower, upper = getattr(source, "lower", None), getattr(source, "upper", None)
        if lower is None or upper is None:
            raise RuntimeError(
                f"ReLU node {node.name} has no input bounds: compute_bounds must run on this "
                "batch first (the trainer's loss does that before the regularizer)")
        gamma = None
        if isinstance(source, BoundBatchNormalization):
            weight_node = source.inputs[1]
            gamma = _model_parameter(model, weight_node.param,
                                     getattr(weight_node, "ori_name", weight_node.name))
        result.append(NeuronBounds(lower, upper, gamma))
    if not result:
        raise RuntimeError("the bounded model has no ReLU")
    return result


def _bounded_sharing_parameters(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A BoundedModule over ``model`` that uses ``model``'s own Parameter objects.

    It is traced from a copy: building one reloads the traced model's state dict, which bumps
    the version counters of its parameters, and would break the backward pass of a loss that
    used them before (the regularizer runs after the trainer's loss)."""
    clone = copy.deepcopy(model)
    bounded = auto_LiRPA.BoundedModule(clone, example, device=str(example.device))
    own = {id(copied): original for copied, original in zip(clone.parameters(),
                                                             model.parameters())}
    for node in bounded.modules():
        if isinstance(node, BoundParams):
            if id(node.param) not in own:
                raise RuntimeError(f"auto_LiRPA node {node.name} holds a parameter that is not "
                                   "the traced model's")
            node.param = own[id(node.param)]
    return bounded


def ibp_preactivation_bounds(trainer, batch) -> list[NeuronBounds]:
    """IBP bounds, through auto_LiRPA, on every ReLU input of ``trainer.model`` for the box
    ``batch.lower..batch.upper`` (normalized coordinates), differentiable w.r.t. the weights.

    The BoundedModule is built once and cached on the trainer (``_ibp_bounded``). It shares the
    model's parameters but keeps its own BN buffers; it follows the model's train/eval mode, so
    in training BN uses the clean batch's statistics (from the forward pass below), as the
    model's own forward does. The running statistics it updates are its own and never used."""
    model = trainer.model
    bounded = getattr(trainer, "_ibp_bounded", None)
    if bounded is None or getattr(trainer, "_ibp_bounded_source", None) is not model:
        example = torch.zeros(2, *batch.x.shape[1:], device=batch.x.device)
        bounded = _bounded_sharing_parameters(model, example)
        trainer._ibp_bounded = bounded
        trainer._ibp_bounded_source = model
    bounded.train(model.training)
    for node in bounded.modules():
        if isinstance(node, BoundParams):
            # Its forward calls param.requires_grad_(node.training): in eval mode it would
            # freeze the model's own parameters. Keep each parameter's flag as it is.
            node.training = node.param.requires_grad
    ptb = PerturbationLpNorm(norm=float("inf"), eps=batch.eps, x_L=batch.lower, x_U=batch.upper)
    # The forward pass sets BN's batch statistics (train mode) that IBP through BN then uses;
    # compute_bounds without x reuses this input instead of clearing it again.
    bounded(auto_LiRPA.BoundedTensor(batch.x, ptb))
    bounded.compute_bounds(method="IBP", bound_lower=True, bound_upper=True)
    return lirpa_preactivation_bounds(bounded, model)


def _without_gradient_to(loss: torch.Tensor, params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``loss`` with the same value and the same gradient to everything but ``params``, which
    get none from it.

    Detaching gamma in eq. 5's denominator is not enough to stop NRS from training gamma: the
    bounds l and u are themselves affine in gamma (l = gamma * l_hat + beta), and deeper
    bounds depend on earlier layers' gammas. Since the bounds may be shared with the training
    loss (CROWN-IBP), they cannot be recomputed with gamma detached; instead subtract
    g . (p - p.detach()) with g = dloss/dp: it is 0 in value and cancels the gradient this
    loss sends to p (exactly, up to float rounding: |residual| ~ 1e-8). The price is one more
    backward pass through the bounds' graph (scripts/bench_nrs_overhead.py measures it)."""
    params = [p for p in params if p.requires_grad]
    if not params or not loss.requires_grad:
        return loss
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    correction = [(g * (p - p.detach())).sum() for g, p in zip(grads, params) if g is not None]
    return loss - torch.stack(correction).sum() if correction else loss


def _stability_loss(bounds: list[NeuronBounds],
                    gamma_squared_min: float | None) -> torch.Tensor:
    """RS's sum of per-layer means; with ``gamma_squared_min`` (NRS) each product is divided by
    its BatchNorm channel's gamma^2, clamped from below."""
    total = torch.zeros((), device=bounds[0].lower.device)
    for layer in bounds:
        product = layer.lower * layer.upper
        if gamma_squared_min is not None and layer.gamma is not None:
            shape = (1, -1) + (1,) * (product.ndim - 2)  # per channel, over H and W
            gamma_squared = layer.gamma.detach().pow(2).clamp_min(gamma_squared_min)
            product = product / gamma_squared.view(shape)
        total = total + (-torch.tanh(1.0 + product)).mean()
    return total


def rs_loss(trainer, batch) -> torch.Tensor:
    """RS loss (Xiao et al. 2019; paper eq. 4): -tanh(1 + l*u) per ReLU neuron, averaged per
    layer and summed over layers. Its gradient reaches every parameter the bounds depend on,
    BatchNorm weights included."""
    return _stability_loss(trainer.preactivation_bounds(batch), gamma_squared_min=None)


def nrs_loss(trainer, batch) -> torch.Tensor:
    """Normalized RS loss (paper eq. 5): -tanh(1 + l*u / gamma^2) with gamma the weight of the
    BatchNorm channel feeding the neuron, averaged per layer and summed over layers.

    As the paper requires, no gradient of this loss reaches any BatchNorm weight (through the
    denominator or through the bounds; see ``_without_gradient_to``): it trains the weights
    that shape the pre-BN bounds, not BN's scale. A ReLU not fed by BatchNorm (after a Linear
    layer) has no gamma and gets the plain RS term (gamma = 1). gamma^2 is clamped from below
    at ``NRS.gamma_squared_min`` so that pruned channels (gamma = 0) give no NaN or inf."""
    bounds = trainer.preactivation_bounds(batch)
    loss = _stability_loss(bounds, REGULARIZERS["nrs"].params.gamma_squared_min)
    frozen = {id(p): p for p in _batchnorm_weights(trainer.model)}
    frozen.update({id(b.gamma): b.gamma for b in bounds if b.gamma is not None})
    return _without_gradient_to(loss, frozen.values())


def bn_slim_loss(trainer, batch) -> torch.Tensor:
    """Network Slimming (Liu et al. 2017): L1 norm of every BatchNorm scale gamma."""
    gammas = [m.weight.abs().sum() for m in trainer.model.modules()
              if isinstance(m, nn.BatchNorm2d) and m.weight is not None]
    return torch.stack(gammas).sum() if gammas else torch.zeros(())


@dataclass(frozen=True)
class Regularizer:
    fn: Callable  # (trainer, batch) -> scalar tensor
    default_weight: float
    params: Hyperparameters = Hyperparameters()


# Paper 4.1.2: NRS weight 0.01, L1 on gamma 1e-4; RS gets NRS's weight (the paper compares them
# at equal weight).
REGULARIZERS: dict[str, Regularizer] = {
    "rs": Regularizer(rs_loss, 0.01),
    "nrs": Regularizer(nrs_loss, 0.01, NRS),
    "slim": Regularizer(bn_slim_loss, 1e-4),
}
NO_REGULARIZER = "none"


def regularizer_choices() -> list[str]:
    return [NO_REGULARIZER, *sorted(REGULARIZERS)]


def regularizer_name(config: BuildConfig, pruner) -> str:
    """The regularizer a build trains with: the configured one, else the pruner's own, else
    ``"none"``."""
    name = config.pruning.regularizer
    if name is None:
        name = pruner.regularizer or NO_REGULARIZER
    if name != NO_REGULARIZER and name not in REGULARIZERS:
        raise BenchError(f"unknown regularizer {name!r}; choose one of: "
                         + ", ".join(regularizer_choices()))
    return name


def build_regularizers(config: BuildConfig, pruner) -> list[tuple[float, Callable]]:
    name = regularizer_name(config, pruner)
    if name == NO_REGULARIZER:
        return []
    regularizer = REGULARIZERS[name]
    weight = config.pruning.regularizer_weight
    return [(regularizer.default_weight if weight is None else weight, regularizer.fn)]
