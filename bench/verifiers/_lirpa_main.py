"""Worker process of the ``lirpa`` verifier: PGD attack, then auto_LiRPA bounds, on one instance.

Run as ``python -m bench.verifiers._lirpa_main --onnx M --vnnlib P --result R [options]``.
For each ``(box, specs)`` disjunct of the property it first attacks (PGD with restarts inside the
box, minimizing how far the outputs are from some spec's unsafe region); a point that reaches a
spec in torch is re-run with onnxruntime on the *original* ONNX file and checked exactly, and only
then reported as ``sat``. Otherwise auto_LiRPA bounds ``mat @ y`` over the box; a disjunct is
proved when every spec has a row whose lower bound exceeds its right-hand side (by
``PROOF_MARGIN``). All disjuncts proved: ``unsat``; else ``unknown``.

Outputs: ``R`` in VNN-COMP's result-file format (``sat`` / ``unsat`` / ``unknown``, after ``sat``
the counterexample as ``((X_0 v) ... (Y_0 v) ...)``), and ``R`` with suffix ``.json`` beside it
(elapsed time and details). Any failure (unreadable model, an op the converter or auto_LiRPA
cannot handle, a converted model that disagrees with onnxruntime) is one line on stderr starting
with ``lirpa:`` and exit code 2; then no result file is written, so nothing can be mistaken for
an answer.

The ONNX model is read, rewritten and converted to torch as ``bench.verifiers.onnx_torch``
describes (shared with the ``milp`` worker), and checked against onnxruntime before it is used.
``conv_mode`` is "matrix" unless the graph has convolutions and no MatMul+Add layers (auto_LiRPA
0.3's patches mode mistakes every Add for a convolution).

Soundness guards, because a wrong ``unsat`` is the worst answer: the bounds cover the box rounded
outwards to float32, a proof needs ``PROOF_MARGIN`` plus ``PROOF_MARGIN_REL`` of the bound's size,
and lower bounds that exceed the network's own value at sampled points of the box (centre,
corners, random points) are an error, never a proof.

``run`` is the worker's answer to one instance; the persistent worker
(``bench.verifiers._engine_main``) calls it with the model already loaded, and keeps the model's
``Bounder`` (``bounder_for``) with it.
"""
from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from bench.verifiers.attack import attack
from bench.verifiers.onnx_torch import (LoadedModel, WorkerError, first_line, load_property,
                                        spec_matrix)
from bench.verifiers.worker_process import Outcome, answer

# A disjunct counts as proved only if a spec row's lower bound beats its right-hand side by this
# much. Bounds are computed in float32; 1e-4 is also VNN-COMP's tolerance for counterexamples, so
# a point that VNN-COMP would accept as a counterexample (up to tolerance) is never "proved" away.
PROOF_MARGIN = 1e-4
# ... plus this much of the bound's own size: float32 rounding of large outputs is larger.
PROOF_MARGIN_REL = 1e-6
METHODS = {"CROWN": "backward", "alpha-CROWN": "CROWN-Optimized", "CROWN-IBP": "CROWN-IBP",
           "IBP": "IBP"}
ALPHA_ITERATIONS = 20  # alpha-CROWN's optimization steps unless told otherwise (auto_LiRPA's)


# --------------------------------------------------------------------------- bounds


class Bounder:
    """auto_LiRPA's BoundedModule over the network, built once per model (``bounder_for``) and
    used for every box and method."""

    def __init__(self, network, batch_shape: list[int], mode: str, batched: bool = False):
        import torch

        from bench.lirpa_compat import auto_LiRPA

        self.auto_LiRPA = auto_LiRPA
        self.network, self.batch_shape = network, batch_shape
        self.batched = batched  # whether the network computes a batch correctly
        self.mode = mode
        self.module = self._trace()

    def _trace(self):
        import torch

        lirpa = self.auto_LiRPA
        # Dense slopes: 0.3's sparse alpha (per unstable neuron) failed with "shape mismatch" on
        # boxes whose unstable set differed from the one its slopes were built for.
        options = {"conv_mode": self.mode, "sparse_spec_alpha": False,
                   "sparse_features_alpha": False}
        try:
            return lirpa.BoundedModule(self.network, torch.zeros(self.batch_shape),
                                       device="cpu", verbose=False, bound_opts=options)
        except Exception as err:
            raise WorkerError(f"auto_LiRPA {lirpa.__version__} cannot trace the converted "
                              f"model: {type(err).__name__}: {first_line(err)}") from None

    def samples(self, outer: tuple[np.ndarray, np.ndarray]) -> "Samples":
        """The network's outputs at points of the box (centre, both corners, random points),
        against which every bound over that box is checked (``lower_bounds``)."""
        import torch

        lo = torch.from_numpy(outer[0]).reshape(self.batch_shape)
        hi = torch.from_numpy(outer[1]).reshape(self.batch_shape)
        generator = torch.Generator().manual_seed(0)
        points = torch.cat([(lo + hi) / 2, lo, hi,
                            lo + (hi - lo) * torch.rand((SOUNDNESS_SAMPLES,
                                                         *self.batch_shape[1:]),
                                                        generator=generator)])
        with torch.no_grad():  # one point at a time where the model has a fixed batch of 1
            outputs = (self.network(points) if self.batched else
                       torch.cat([self.network(point[None]) for point in points]))
        return Samples(lo, hi, outputs)

    def lower_bounds(self, samples: "Samples", rows: np.ndarray, method: str,
                     stop_above: np.ndarray | None = None, iterations: int | None = None,
                     give_up_with: list[int] | None = None,
                     intermediate: dict | None = None) -> np.ndarray:
        """Lower bounds of ``rows @ y`` over the (outer) box of ``samples`` with ``method``.
        alpha-CROWN optimizes for ``iterations`` steps (auto_LiRPA's default without), and
        stops early once every bound exceeds ``stop_above``; given ``give_up_with`` (the
        number of rows of each spec, in order), also once it stalls (``AlphaStop``). Given
        ``intermediate`` (``relu_input_bounds`` of an earlier call over the same box), it keeps
        those bounds of the ReLUs' inputs and optimizes only the output's relaxation; without,
        it optimizes every layer's, recomputing the inner layers' bounds at every step."""
        import torch

        lirpa = self.auto_LiRPA
        lo, hi = samples.lo, samples.hi
        C = torch.from_numpy(rows.astype(np.float32))[None]
        ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
        if method == "alpha-CROWN":
            steps = ALPHA_ITERATIONS if iterations is None else int(iterations)
            # Set on every call: the module keeps its options from one call to the next.
            self.module.set_bound_opts({"optimize_bound_args": {
                "iteration": steps,
                "stop_criterion_func": (lambda lower: False) if stop_above is None else
                AlphaStop(stop_above, steps, give_up_with)}})
        try:
            lower, _ = self.module.compute_bounds(
                x=(lirpa.BoundedTensor((lo + hi) / 2, ptb),), C=C, method=METHODS[method],
                bound_upper=method == "IBP",  # auto_LiRPA's IBP computes both anyway
                intermediate_layer_bounds=intermediate if method == "alpha-CROWN" else None)
        except Exception as err:
            # A failed computation can leave state behind in the module (slopes, bounds of the
            # last box) that makes the next box fail too: the next call gets a fresh module.
            self.module = self._trace()
            raise WorkerError(f"auto_LiRPA {lirpa.__version__} cannot bound the converted "
                              f"model with {method}: {type(err).__name__}: "
                              f"{first_line(err)}") from None
        lower = lower.detach().double().numpy().reshape(-1)
        samples.check(lower, C, method)
        return lower

    def relu_input_bounds(self) -> dict:
        """The bounds of every ReLU's input that the last ``lower_bounds`` call computed, by
        node name: what ``intermediate`` takes for a later call over the same box."""
        from auto_LiRPA.bound_ops import BoundRelu

        found = {}
        for node in self.module.modules():
            source = node.inputs[0] if isinstance(node, BoundRelu) else None
            lower, upper = getattr(source, "lower", None), getattr(source, "upper", None)
            if lower is not None and upper is not None:
                found[source.name] = (lower.detach().clone(), upper.detach().clone())
        return found


class AlphaStop:
    """alpha-CROWN's stop criterion, called by auto_LiRPA with the lower bounds of every step
    (the first with CROWN's slopes). A row is done once it clears its threshold
    (``stop_above``); auto_LiRPA 0.3 ends the optimization only when the criterion is a tensor
    that is all True (a bool merely zeroes the loss and every step still runs).

    Given ``spec_rows`` (rows per spec), it also ends the optimization once it has stalled: from
    the third bound on, when some spec has no row that could reach its threshold in the steps
    left at ``PACE`` times the larger of its last two gains. The cascade asks for this: a
    property that alpha-CROWN cannot prove goes to the verifier anyway, and the steps after a
    stall only delay it (on the demo, the properties alpha-CROWN proves are proved by the third
    bound; the ones it cannot prove had gained < 0.01 a step by the fifth). The projection can
    be wrong: a bound that stalls for two steps and then climbs again is given up on, and its
    property goes to the verifier. Giving up decides nothing: the bounds returned are the best
    found, and a disjunct counts as proved only if they prove it."""

    PACE = 2.0
    GIVE_UP_AFTER = 3  # bounds seen: two gains to judge the pace by

    def __init__(self, stop_above: np.ndarray, steps: int, spec_rows: list[int] | None = None):
        import torch

        self.threshold = torch.from_numpy(stop_above.astype(np.float32))[None]
        self.steps, self.spec_rows = steps, spec_rows
        self.best: list = []  # the best bounds so far, after each of the last three steps
        self.calls = 0
        self.gave_up = False

    def __call__(self, lower):
        import torch

        done = lower - self.threshold > PROOF_MARGIN_REL * lower.abs()
        if self.spec_rows is None:
            return done
        current = lower.detach()
        self.best = [*self.best[-2:], current if not self.best else
                     torch.maximum(self.best[-1], current)]
        self.calls += 1
        if self.calls < self.GIVE_UP_AFTER:
            return done
        oldest, previous, best = self.best
        gain = torch.maximum(best - previous, previous - oldest).clamp(min=0)
        projected = best + self.PACE * (self.steps - self.calls) * gain
        reachable = (done | (projected > self.threshold)).reshape(-1).numpy()
        if not every_spec_has_a_row(reachable, self.spec_rows):
            self.gave_up = True
            return torch.ones_like(done)  # all True: auto_LiRPA stops here
        return done


SOUNDNESS_SAMPLES = 8  # random points of a box (besides its centre and corners) for the check


class Samples:
    """Outputs of the network at points of one box: a lower bound above any of them means the
    bounds are about some other function."""

    def __init__(self, lo, hi, outputs):
        self.lo, self.hi, self.outputs = lo, hi, outputs

    def check(self, lower: np.ndarray, C, method: str) -> None:
        """An error, never a proof, when ``lower`` (of ``C @ y``) exceeds a sampled value."""
        import torch

        values = torch.einsum("ro,bo->br", C[0], self.outputs).double().numpy()
        slack = 1e-4 + 1e-4 * np.abs(values)
        if np.any(lower[None, :] > values + slack) or np.any(np.isnan(lower)):
            raise WorkerError(f"auto_LiRPA's bounds exclude the network's own value at a point "
                              f"of the box (method {method}); refusing to decide")


_BOUNDERS: "weakref.WeakKeyDictionary[LoadedModel, Bounder]" = weakref.WeakKeyDictionary()


def bounder_for(model: LoadedModel, batched: bool) -> Bounder:
    """The model's Bounder, built on first use and kept as long as the model is (a persistent
    worker keeps its models: tracing the network takes longer than bounding it)."""
    bounder = _BOUNDERS.get(model)
    if bounder is None:
        bounder = _BOUNDERS[model] = Bounder(model.network, model.prepared_shape,
                                             model.conv_mode, batched)
    return bounder


def proved(lower: np.ndarray, specs) -> bool:
    """Every spec has a row whose lower bound exceeds its right-hand side by the margin
    (``beats``): no spec's conjunction can hold anywhere in the box."""
    if not specs:
        return True  # no unsafe region to exclude
    rhs = np.concatenate([rhs for _, rhs in specs])
    return every_spec_has_a_row(beats(lower, rhs), [len(rhs) for _, rhs in specs])


def every_spec_has_a_row(rows: np.ndarray, spec_rows: list[int]) -> bool:
    """Whether each spec has some row flagged in ``rows`` (the specs' rows stacked in order,
    ``spec_rows`` of them per spec): a spec, a conjunction of its rows, is excluded by any one
    row that cannot hold."""
    start = 0
    for count in spec_rows:
        if not np.any(rows[start:start + count]):
            return False
        start += count
    return True


def excludable(specs) -> bool:
    """Whether bounds can exclude the specs at all: a spec without output constraints is met by
    every output, so no bound can prove it unreachable."""
    return bool(specs) and all(mat.shape[0] > 0 for mat, _ in specs)


def stop_target(specs) -> np.ndarray:
    """Per row of ``specs``: the bound past which alpha-CROWN may stop optimizing it, its
    right-hand side plus twice ``PROOF_MARGIN`` (``lower_bounds`` adds ``PROOF_MARGIN_REL``),
    so that a stopped bound is one ``beats`` accepts."""
    return np.concatenate([rhs for _, rhs in specs]) + 2 * PROOF_MARGIN


def beats(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Which lower bounds exceed their right-hand side by ``PROOF_MARGIN`` plus
    ``PROOF_MARGIN_REL`` of their own size (float32 rounding grows with the outputs)."""
    return lower - rhs > PROOF_MARGIN + PROOF_MARGIN_REL * np.abs(lower)


# --------------------------------------------------------------------------- main


def verify(args: argparse.Namespace, model: LoadedModel | None = None
           ) -> tuple[str, tuple[np.ndarray, np.ndarray] | None, dict]:
    """``(status, counterexample or None, stats)`` for one instance; raises WorkerError.
    ``model``: the instance's model already loaded (a long-lived worker keeps it)."""
    times: dict[str, float] = {}
    clock = time.perf_counter()
    model = model or LoadedModel(args.onnx)
    import torch

    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    disjuncts, boxes, batched = load_property(model, args.vnnlib, rng)
    network, reference, n_out = model.network, model.reference, model.n_out
    prepared_shape, rewrites = model.prepared_shape, model.rewrites
    times["load_s"] = time.perf_counter() - clock  # imports, conversion and its check

    details: dict[str, Any] = {"rewrites": rewrites, "disjuncts": len(disjuncts)}
    clock = time.perf_counter()
    for (box, specs), (inner, _) in zip(disjuncts, boxes):
        if inner is None:
            continue  # no float32 input lies in this box: nothing to attack
        found = attack(network, reference, inner, specs, n_out, prepared_shape,
                       args.pgd_steps, args.pgd_restarts, batched, generator,
                       targeted=args.pgd_targeted)
        if found is not None:
            times["attack_s"] = time.perf_counter() - clock
            return "sat", found, {**details, **times}
    times["attack_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    bounder = bounder_for(model, batched)
    details["auto_LiRPA"] = bounder.auto_LiRPA.__version__
    proved_count = 0
    for (box, specs), (_, outer) in zip(disjuncts, boxes):
        if not excludable(specs):
            break
        lower = bounder.lower_bounds(bounder.samples(outer), spec_matrix(specs, n_out),
                                     args.method, stop_above=stop_target(specs))
        if not proved(lower, specs):
            break  # one open disjunct decides "unknown"; the rest need not be bounded
        proved_count += 1
    times["bound_s"] = time.perf_counter() - clock
    details["proved_disjuncts"] = proved_count
    status = "unsat" if proved_count == len(disjuncts) else "unknown"
    return status, None, {**details, **times, "method": args.method}


def run(args: argparse.Namespace, deadline: float | None = None,
        model: LoadedModel | None = None) -> Outcome:
    """One instance, as the worker answers it (``worker_process.answer``). ``deadline`` is
    not used: the attack and the bounds take bounded time, and the harness's hard timeout
    stops the rest."""
    if args.device != "cpu":
        raise WorkerError(f"device {args.device!r} is not supported; only cpu")
    return verify(args, model)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.verifiers._lirpa_main",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--vnnlib", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--method", choices=sorted(METHODS), default="CROWN")
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--pgd-restarts", type=int, default=5)
    parser.add_argument("--pgd-targeted", action=argparse.BooleanOptionalAction, default=True,
                        help="besides the restarts, one start per spec aimed at that spec")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    return answer("lirpa", lambda: run(args), args.result, start)


if __name__ == "__main__":
    sys.exit(main())
