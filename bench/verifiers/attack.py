"""PGD inside a property's box, confirmed by onnxruntime: the attack of this package's workers.

``attack`` searches one ``(box, specs)`` disjunct of a VNN-LIB property for inputs whose outputs
reach some spec's unsafe region ``mat @ y <= rhs``. A point that reaches one in torch is re-run
with onnxruntime on the original ONNX file and checked exactly (inside the box, spec reached)
before it is returned: nothing unconfirmed ever comes back as a counterexample.

With ``nearest``, the attack also keeps, for each spec, the point whose torch outputs came
closest to that spec's region: where an exact solver can start its search (the ``milp`` worker
gives it to HiGHS as a starting solution) even when the attack itself finds nothing.

Imports numpy only at module level; torch is imported by the functions that use it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from bench.verifiers.onnx_torch import Reference, spec_holds

_PAD_RHS = 1e30  # right-hand side of padding rows: never the row that decides a spec


@dataclass
class NearestPoints:
    """Per spec, the attack's point (flat float32, inside the box) whose outputs came closest to
    the spec's unsafe region, and by how much torch's outputs missed it there
    (``max_i (mat y - rhs)_i``; inf where no point was tried)."""

    points: dict[int, np.ndarray] = field(default_factory=dict)
    excess: dict[int, float] = field(default_factory=dict)

    def update(self, x, excess) -> None:
        """``x[B, ...]`` the batch, ``excess[B, K]`` each point's excess per spec (torch)."""
        values, index = excess.min(dim=0)
        for k, (value, i) in enumerate(zip(values.tolist(), index.tolist())):
            if math.isfinite(value) and value < self.excess.get(k, math.inf):
                self.excess[k] = value
                self.points[k] = x[i].detach().numpy().reshape(-1).astype(np.float32)


def padded_specs(specs, n_out: int):
    """Specs as tensors ``mats[K, R, n_out]``, ``rhs[K, R]``. Shorter specs are padded with rows
    ``0 @ y <= 1e30``, which never decide a spec's maximum excess; a spec without rows (every
    output reaches it) keeps only padding, so its excess is -1e30: reached, as it should be."""
    import torch

    rows = max(max(mat.shape[0] for mat, _ in specs), 1)
    mats = np.zeros((len(specs), rows, n_out), dtype=np.float32)
    rhs = np.full((len(specs), rows), _PAD_RHS, dtype=np.float32)
    for k, (mat, r) in enumerate(specs):
        mats[k, : mat.shape[0]] = mat
        rhs[k, : mat.shape[0]] = r
    return torch.from_numpy(mats), torch.from_numpy(rhs)


def attack(network, reference: Reference, inner: tuple[np.ndarray, np.ndarray], specs,
           n_out: int, batch_shape: list[int], steps: int, restarts: int, batched: bool,
           generator, nearest: NearestPoints | None = None, stop_at: float | None = None,
           targeted: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """PGD from ``restarts`` starting points (the first is the box centre) minimizing
    ``min_k max_i (mat_k y - rhs_k)_i``, which is <= 0 exactly when ``y`` reaches spec k; with
    ``targeted``, also from one random point per spec (for at most ``restarts`` specs: those
    nearest at the centre), each minimizing its own spec's ``max_i (mat_k y - rhs_k)_i``.
    The untargeted objective follows whichever spec is nearest where it stands, and misses a
    counterexample that only a farther spec has: on the 225 properties of two demo builds that
    reach the cascade's attack, 10 untargeted restarts found 177 counterexamples, with 9 targeted
    starts more 182, the 177 among them (seeds 0-2: 535 and 547, none lost), for ~9 ms more an
    attack.
    The restarts run as one batch when the network allows it, else one after another.
    Returns ``(x, y)`` confirmed by onnxruntime, or None; ``nearest`` (if given) is updated
    with every point tried. With ``stop_at`` (``time.monotonic()``) it gives up (None) once
    that time has passed: the caller's time limit covers the attack too."""
    import torch

    lo = torch.from_numpy(inner[0]).reshape(batch_shape)
    hi = torch.from_numpy(inner[1]).reshape(batch_shape)
    mats, rhs = padded_specs(specs, n_out)

    def excess(y: torch.Tensor) -> torch.Tensor:  # [B, K]
        return (torch.einsum("kro,bo->bkr", mats, y) - rhs).max(dim=2).values

    centre = (lo + hi) / 2
    count = max(restarts, 1)
    targets = [UNTARGETED] * count
    if targeted and specs:
        with torch.no_grad():
            nearest_first = excess(network(centre)).reshape(-1).argsort()
        targets += nearest_first[:count].tolist()
    starts = lo + (hi - lo) * torch.rand((len(targets), *batch_shape[1:]), generator=generator)
    starts[0] = centre[0]
    starts = _clamp(starts, lo, hi)
    targets = torch.tensor(targets)
    tried: set[bytes] = set()
    chunk = len(targets) if batched else 1
    for first in range(0, len(targets), chunk):
        found = _pgd(network, excess, reference, starts[first:first + chunk],
                     targets[first:first + chunk], lo, hi, inner, specs, steps, tried, nearest,
                     stop_at)
        if found is not None:
            return found
    return None


UNTARGETED = -1  # a start's target: the nearest spec, wherever the start is


def _pgd(network, excess, reference: Reference, x, targets, lo, hi, inner, specs, steps: int,
         tried: set[bytes], nearest: NearestPoints | None,
         stop_at: float | None) -> tuple[np.ndarray, np.ndarray] | None:
    import torch

    width = hi - lo
    untargeted = targets == UNTARGETED
    own = targets.clamp(min=0)[:, None]
    for step in range(steps + 1):
        if stop_at is not None and time.monotonic() >= stop_at:
            return None
        x = x.detach().requires_grad_(True)
        per_spec = excess(network(x))
        value = per_spec.min(dim=1).values  # <= 0: some spec reached, whatever the target
        if nearest is not None:
            nearest.update(x.detach(), per_spec.detach())
        found = _confirm(reference, x.detach(), value.detach(), inner, specs, tried)
        if found is not None:
            return found
        if step == steps:
            break
        objective = torch.where(untargeted, value, per_spec.gather(1, own)[:, 0])
        (grad,) = torch.autograd.grad(objective.sum(), x)
        # Signed gradient steps, cosine-decayed from a quarter of the box width: large steps
        # cross ReLU regions early, small ones settle into a corner or a tie late.
        size = 0.25 * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = _clamp(x.detach() - size * width * grad.sign(), lo, hi)
    return None


def _clamp(x, lo, hi):
    import torch

    return torch.minimum(torch.maximum(x, lo), hi)


def _confirm(reference: Reference, x, value, inner, specs,
             tried: set[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """Re-run the points that look like counterexamples in torch with onnxruntime and check
    them exactly (box and spec); torch and onnxruntime can round a tie differently."""
    for index in np.flatnonzero(value.numpy() <= 0):
        point = x[index].numpy().reshape(-1).astype(np.float32)
        key = point.tobytes()
        if key in tried:
            continue
        tried.add(key)
        if np.any(point < inner[0]) or np.any(point > inner[1]):
            continue
        y = reference(point)
        if spec_holds(y, specs):
            return point, y
    return None
