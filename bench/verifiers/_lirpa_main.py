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
outwards to float32, a proof needs ``PROOF_MARGIN``, and lower bounds that exceed the network's
own value at sampled points of the box are an error, never a proof.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench.verifiers.attack import attack
from bench.verifiers.onnx_torch import (LoadedModel, WorkerError, first_line, load_property,
                                        write_outputs)

# A disjunct counts as proved only if a spec row's lower bound beats its right-hand side by this
# much. Bounds are computed in float32; 1e-4 is also VNN-COMP's tolerance for counterexamples, so
# a point that VNN-COMP would accept as a counterexample (up to tolerance) is never "proved" away.
PROOF_MARGIN = 1e-4
METHODS = {"CROWN": "backward", "alpha-CROWN": "CROWN-Optimized", "CROWN-IBP": "CROWN-IBP",
           "IBP": "IBP"}
EXIT_ERROR = 2


# --------------------------------------------------------------------------- ONNX preparation


# --------------------------------------------------------------------------- torch network


# --------------------------------------------------------------------------- bounds


class Bounder:
    """auto_LiRPA's BoundedModule over the network, built once for all disjuncts."""

    def __init__(self, network, batch_shape: list[int], method: str, mode: str):
        import torch

        from bench.lirpa_compat import auto_LiRPA

        self.auto_LiRPA = auto_LiRPA
        self.network, self.batch_shape, self.method = network, batch_shape, method
        try:
            self.module = auto_LiRPA.BoundedModule(network, torch.zeros(batch_shape),
                                                   device="cpu", verbose=False,
                                                   bound_opts={"conv_mode": mode})
        except Exception as err:
            raise WorkerError(f"auto_LiRPA {auto_LiRPA.__version__} cannot trace the converted "
                              f"model: {type(err).__name__}: {first_line(err)}") from None

    def lower_bounds(self, outer: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Lower bounds of ``rows @ y`` over the (outer) box."""
        import torch

        lirpa = self.auto_LiRPA
        lo = torch.from_numpy(outer[0]).reshape(self.batch_shape)
        hi = torch.from_numpy(outer[1]).reshape(self.batch_shape)
        centre = (lo + hi) / 2
        C = torch.from_numpy(rows.astype(np.float32))[None]
        ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
        try:
            lower, _ = self.module.compute_bounds(
                x=(lirpa.BoundedTensor(centre, ptb),), C=C, method=METHODS[self.method],
                bound_upper=self.method == "IBP")  # auto_LiRPA's IBP computes both anyway
        except Exception as err:
            raise WorkerError(f"auto_LiRPA {lirpa.__version__} cannot bound the converted "
                              f"model with {self.method}: {type(err).__name__}: "
                              f"{first_line(err)}") from None
        lower = lower.detach().double().numpy().reshape(-1)
        self._check_sound(lower, lo, hi, C)
        return lower

    def _check_sound(self, lower: np.ndarray, lo, hi, C) -> None:
        """A lower bound above the network's value at a point of the box means the bounds are
        about some other function: an error, never a proof."""
        import torch

        generator = torch.Generator().manual_seed(0)
        points = torch.cat([(lo + hi) / 2, lo, hi,
                            lo + (hi - lo) * torch.rand((8, *self.batch_shape[1:]),
                                                        generator=generator)])
        with torch.no_grad():  # one point at a time: some models have a fixed batch of 1
            outputs = torch.cat([self.network(point[None]) for point in points])
        values = torch.einsum("ro,bo->br", C[0], outputs).double().numpy()
        slack = 1e-4 + 1e-4 * np.abs(values)
        if np.any(lower[None, :] > values + slack) or np.any(np.isnan(lower)):
            raise WorkerError(f"auto_LiRPA's bounds exclude the network's own value at a point "
                              f"of the box (method {self.method}); refusing to decide")


def proved(lower: np.ndarray, specs) -> bool:
    """Every spec has a row whose lower bound exceeds its right-hand side: no spec's
    conjunction can hold anywhere in the box."""
    start = 0
    for mat, rhs in specs:
        stop = start + mat.shape[0]
        if not np.any(lower[start:stop] > rhs + PROOF_MARGIN):
            return False
        start = stop
    return True


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
                       args.pgd_steps, args.pgd_restarts, batched, generator)
        if found is not None:
            times["attack_s"] = time.perf_counter() - clock
            return "sat", found, {**details, **times}
    times["attack_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    bounder = Bounder(network, prepared_shape, args.method, model.conv_mode)
    details["auto_LiRPA"] = bounder.auto_LiRPA.__version__
    proved_count = 0
    for (box, specs), (_, outer) in zip(disjuncts, boxes):
        rows = np.concatenate([mat for mat, _ in specs]).reshape(-1, n_out)
        if rows.shape[0] == 0 or any(mat.shape[0] == 0 for mat, _ in specs):
            break  # a spec without output constraints cannot be excluded by bounds
        if not proved(bounder.lower_bounds(outer, rows), specs):
            break  # one open disjunct decides "unknown"; the rest need not be bounded
        proved_count += 1
    times["bound_s"] = time.perf_counter() - clock
    details["proved_disjuncts"] = proved_count
    status = "unsat" if proved_count == len(disjuncts) else "unknown"
    return status, None, {**details, **times}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.verifiers._lirpa_main",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--vnnlib", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--method", choices=sorted(METHODS), default="CROWN")
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--pgd-restarts", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.device != "cpu":
        print(f"lirpa: device {args.device!r} is not supported; only cpu", file=sys.stderr)
        return EXIT_ERROR
    try:
        status, cex, stats = verify(args)
    except WorkerError as err:
        print(f"lirpa: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # a bug or an unforeseen failure: keep the traceback, then say why
        traceback.print_exc()
        print(f"lirpa: unexpected {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    stats["time_s"] = time.perf_counter() - start
    stats["method"] = args.method
    write_outputs(args.result, status, cex, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
