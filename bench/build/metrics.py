"""Per-level metrics of a trained model (paper 3.4.2, Fig. 5 and 6, Table 2).

``level_metrics`` measures, on raw [0, 1] samples and an L-inf radius eps in pixel units:

- ``standard_accuracy``;
- ``pgd_accuracy``: robust to an L-inf PGD attack (cross-entropy, random start, restarts; steps
  of ``METRICS.pgd_step_factor * eps / steps``) in the pixel box clipped to [0, 1]; a sample
  counts as broken as soon as any iterate of any restart is misclassified;
- ``ibp_verified_accuracy`` and ``crown_verified_accuracy``: auto_LiRPA IBP and CROWN
  (``method="backward"``) lower bounds of the margins ``logit_y - logit_j`` (spec
  ``C = e_y - e_j``, j != y) all positive, on a correctly classified sample. Verified implies
  robust to PGD, so both are at most ``pgd_accuracy``;
- ``instability`` (paper eq. 1): the sum over ReLU neurons with ``l < 0 < u`` of ``-l*u``,
  averaged over samples. The bounds are CROWN's intermediate bounds, i.e. those that the
  CROWN verification above is computed from (the first layer's are exact interval bounds of
  an affine map of the box; every later layer's come from a full CROWN backward pass,
  intersected with the IBP bounds of the same layer, as complete verifiers intersect them).
  The intersection also makes every number here a property of each sample alone: auto_LiRPA
  computes CROWN bounds only for the neurons that IBP finds unstable in SOME sample of the
  batch, and CROWN bounds (looser than IBP's for some neurons of certifiably trained networks)
  would otherwise make a sample's figures depend on which samples share its batch;
- ``instability_pre_bn``: the same on pre-BN bounds (Fig. 5): for a ReLU fed by BatchNorm, the
  CROWN bounds of the BN input (the conv output), taken from auto_LiRPA's conv node; for a
  ReLU without BN (after a Linear layer), its pre-activation bounds;
- ``unstable_ratio`` (Fig. 6): the fraction of ReLU neurons with ``l < 0 < u``, averaged over
  samples, and ``unstable_ratio_per_layer`` (one entry per ReLU layer, in graph order);
- ``per_sample``: per sample, in the order given, the number of ReLU neurons with ``l < 0 < u``
  under that sample's box: ``unstable_relus`` from the CROWN bounds above, ``unstable_relus_ibp``
  from the IBP bounds of the IBP verification (a by-product: no bound is computed for it). A
  sample's box is its property's, so these say how many ReLUs a verifier has to split or encode
  with a binary variable on that instance (the export writes them into each instance's entry).

``count_relus`` counts a network's ReLU neurons (the manifest's ``relus`` per model).

Everything runs on a copy of the model in eval mode (BN uses the running statistics, which
stay untouched) with its parameters frozen.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import Hyperparameters, param
from bench.lirpa_compat import auto_LiRPA, dense_small_conv_transpose
from bench.models.normalize import Normalizer
from auto_LiRPA.bound_ops import BoundBatchNormalization, BoundRelu  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402


@dataclass(frozen=True)
class MetricsParams(Hyperparameters):
    pgd_step_factor: float = param(2.5, "PGD step size as a multiple of eps / steps (the rule "
                                   "of the MadryLab robustness library).")


METRICS = MetricsParams()


def _margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C of shape (B, K-1, K): rows e_y - e_j for every j != y."""
    eye = torch.eye(num_classes, device=y.device)
    rows = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K), row j = e_y - e_j
    keep = ~torch.eye(num_classes, dtype=torch.bool, device=y.device)[y]  # drop j == y
    return rows[keep].view(y.shape[0], num_classes - 1, num_classes)


def _pgd_robust(model: nn.Module, normalizer: Normalizer, x: torch.Tensor, y: torch.Tensor,
                eps: float, steps: int, step_size: float, restarts: int,
                generator: torch.Generator) -> torch.Tensor:
    """Per sample: True if no PGD iterate of any restart is misclassified."""
    with torch.no_grad():
        robust = model(normalizer(x)).argmax(1) == y
    for _ in range(restarts):
        start = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
        x_adv = (x + start).clamp(0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(normalizer(x_adv))
                loss = F.cross_entropy(logits, y, reduction="sum")
                grad, = torch.autograd.grad(loss, x_adv)
            robust &= logits.detach().argmax(1) == y
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        with torch.no_grad():
            robust &= model(normalizer(x_adv)).argmax(1) == y
    return robust


def _unstable(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The neurons whose pre-activation bounds straddle 0 (``l < 0 < u``)."""
    return (lower < 0) & (upper > 0)


def _ibp_then_crown(bounded, relus: list, center: torch.Tensor, lower: torch.Tensor,
                    upper: torch.Tensor, spec: torch.Tensor | None = None
                    ) -> tuple[tuple[torch.Tensor, list[int]], tuple[torch.Tensor, list[int]]]:
    """IBP bounds, then CROWN bounds whose intermediate bounds are intersected with IBP's
    (``reference_bounds``), over the boxes ``[lower, upper]``: per method, the lower bounds of
    ``spec @ y`` (of ``y`` without a spec) and the unstable ReLUs per sample. Afterwards the
    ReLUs' inputs hold the intersected CROWN bounds."""
    found = []
    reference = None
    for method in ("IBP", "backward"):
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
        with dense_small_conv_transpose():
            bound, _ = bounded.compute_bounds(x=(auto_LiRPA.BoundedTensor(center, ptb),),
                                              C=spec, method=method, bound_upper=False,
                                              reference_bounds=reference)
        found.append((bound, _unstable_per_sample(relus, len(center))))
        reference = {relu.inputs[0].name: (relu.inputs[0].lower.detach(),
                                           relu.inputs[0].upper.detach()) for relu in relus}
    return found[0], found[1]


def _unstable_per_sample(relus: list, batch: int) -> list[int]:
    """Per sample of the batch: ReLU neurons with ``l < 0 < u`` under the bounds that the last
    ``compute_bounds`` left on the ReLUs' inputs."""
    counts = torch.zeros(batch, dtype=torch.long)
    for relu in relus:
        source = relu.inputs[0]
        counts += _unstable(source.lower, source.upper).reshape(batch, -1).sum(1).cpu()
    return [int(c) for c in counts]


def count_relus(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """ReLU neurons of ``model`` (``nn.ReLU`` modules, as every model of ``bench.models`` uses)
    on one input of ``input_shape``, e.g. those of the exported network."""
    sizes: list[int] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
             for module in model.modules() if isinstance(module, nn.ReLU)]
    training = model.training
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return sum(sizes)


class _LayerStats:
    """Sums over samples of one bound set's instability and unstable counts, per ReLU layer."""

    def __init__(self) -> None:
        self.instability: list[float] = []  # sum over samples and neurons of -l*u (unstable)
        self.unstable: list[int] = []  # number of (sample, neuron) pairs with l < 0 < u
        self.neurons: list[int] = []  # neurons per sample in the layer

    def add(self, index: int, lower: torch.Tensor, upper: torch.Tensor) -> None:
        unstable = _unstable(lower, upper)
        instability = float((-lower * upper)[unstable].sum())
        if index == len(self.instability):
            self.instability.append(0.0)
            self.unstable.append(0)
            self.neurons.append(lower[0].numel())
        self.instability[index] += instability
        self.unstable[index] += int(unstable.sum())


def level_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalizer: Normalizer,
                  eps: float, pgd_steps: int = 20, pgd_step_size: float | None = None,
                  pgd_restarts: int = 1, batch_size: int = 100, seed: int = 0) -> dict:
    """Accuracies, verified accuracies and neuron instability of ``model`` on raw samples
    ``x`` (float, [0, 1]) with labels ``y`` at L-inf radius ``eps`` (pixel units). See the
    module docstring for each entry. Deterministic given ``seed`` (PGD's random starts)."""
    if pgd_steps < 1 or pgd_restarts < 1:
        raise ValueError("pgd_steps and pgd_restarts must be >= 1")
    if pgd_step_size is None:
        pgd_step_size = METRICS.pgd_step_factor * eps / pgd_steps
    n = x.shape[0]
    if n == 0:
        raise ValueError("level_metrics needs at least one sample")

    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    device = next(frozen.parameters()).device
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        num_classes = frozen(normalizer(x[:1])).shape[1]
    bounded = auto_LiRPA.BoundedModule(frozen, torch.zeros(1, *x.shape[1:], device=device),
                                       device=str(device))
    bounded.eval()
    relus = [node for node in bounded.modules() if isinstance(node, BoundRelu)]
    generator = torch.Generator().manual_seed(seed)

    correct = pgd = ibp_ok = crown_ok = 0
    pre_act, pre_bn = _LayerStats(), _LayerStats()
    per_sample: dict[str, list[int]] = {"unstable_relus": [], "unstable_relus_ibp": []}
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with torch.no_grad():
            clean = frozen(normalizer(xb)).argmax(1) == yb
        correct += int(clean.sum())
        pgd += int(_pgd_robust(frozen, normalizer, xb, yb, eps, pgd_steps, pgd_step_size,
                               pgd_restarts, generator).sum())

        lower, upper = normalizer.box(xb, eps)
        with torch.no_grad():
            (ibp, ibp_unstable), (crown, crown_unstable) = _ibp_then_crown(
                bounded, relus, normalizer(xb), lower, upper, _margin_spec(yb, num_classes))
            ibp_ok += int(((ibp > 0).all(1) & clean).sum())
            crown_ok += int(((crown > 0).all(1) & clean).sum())
            per_sample["unstable_relus_ibp"] += ibp_unstable
            per_sample["unstable_relus"] += crown_unstable
            for index, relu in enumerate(relus):
                source = relu.inputs[0]
                pre_act.add(index, source.lower, source.upper)
                if isinstance(source, BoundBatchNormalization):
                    conv = source.inputs[0]
                    # CROWN's intermediate bounds skip the conv (BN is linear): compute them
                    # the same way, reusing the bounds already on the graph.
                    with dense_small_conv_transpose():
                        bounded.compute_intermediate_bounds(conv)
                    pre_bn.add(index, conv.lower, conv.upper)
                else:
                    pre_bn.add(index, source.lower, source.upper)

    total_neurons = sum(pre_act.neurons)
    return {
        "samples": n,
        "eps": eps,
        "standard_accuracy": correct / n,
        "pgd_accuracy": pgd / n,
        "pgd": {"steps": pgd_steps, "step_size": pgd_step_size, "restarts": pgd_restarts},
        "ibp_verified_accuracy": ibp_ok / n,
        "crown_verified_accuracy": crown_ok / n,
        "instability": sum(pre_act.instability) / n,
        "instability_pre_bn": sum(pre_bn.instability) / n,
        "instability_bounds": "crown",
        "unstable_ratio": sum(pre_act.unstable) / (n * total_neurons),
        "unstable_ratio_per_layer": [u / (n * k) for u, k in zip(pre_act.unstable,
                                                                  pre_act.neurons)],
        "per_sample": per_sample,
    }


def unstable_relus_per_sample(network: nn.Module, lower: torch.Tensor, upper: torch.Tensor,
                              batch_size: int = 100, bound_opts: dict | None = None
                              ) -> dict[str, list[int]]:
    """Per box ``[lower[i], upper[i]]`` (in ``network``'s input coordinates): its ReLU neurons
    with ``l < 0 < u`` from IBP (``unstable_relus_ibp``) and CROWN (``unstable_relus``) bounds,
    computed as ``level_metrics`` computes them (the intermediate bounds do not depend on the
    output specification, nor, with the IBP intersection, on the other boxes of a batch). For
    networks ``level_metrics`` does not see, e.g. a benchmark's ONNX models converted to
    torch."""
    frozen = copy.deepcopy(network).eval()
    frozen.requires_grad_(False)
    bounded = auto_LiRPA.BoundedModule(frozen, torch.zeros(1, *lower.shape[1:]),
                                       bound_opts=bound_opts or {}, device="cpu")
    bounded.eval()
    relus = [node for node in bounded.modules() if isinstance(node, BoundRelu)]
    counts: dict[str, list[int]] = {"unstable_relus": [], "unstable_relus_ibp": []}
    with torch.no_grad():
        for start in range(0, lower.shape[0], batch_size):
            lo, hi = lower[start:start + batch_size], upper[start:start + batch_size]
            (_, ibp), (_, crown) = _ibp_then_crown(bounded, relus, (lo + hi) / 2, lo, hi)
            counts["unstable_relus_ibp"] += ibp
            counts["unstable_relus"] += crown
    return counts
