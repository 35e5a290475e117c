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

The ONNX model is converted to torch with onnx2torch (not a hand-written interpreter). Three
small rewrites make foreign VNN-COMP models convertible and boundable; each is equivalence
preserving, and the converted network is checked against onnxruntime before it is used:

* opsets below 13 are upgraded with ``onnx.version_converter`` (onnx2torch lacks e.g. Flatten-1);
* a model whose input has no batch dimension (shape ``[n]``, VNN-COMP's test_nano/tiny/small)
  gets one: only MatMul/Add/Sub/Mul/Div/Relu may touch such tensors, and ``MatMul(W, x)`` becomes
  ``MatMul(x, W^T)``, which is the same for a vector ``x``;
* a constant operand of Add/Sub/Mul/Div with the same rank as the activation and a leading 1
  (ACAS Xu's ``input - mean[1,1,1,5]``) loses that leading 1: auto_LiRPA 0.3 fails an assertion
  in ``broadcast_backward`` on constants with a batch-like dimension.

Two more workarounds for auto_LiRPA 0.3 on onnx2torch graphs: initializers become frozen
parameters (it reads its dtype from the first parameter), and ``conv_mode`` is "matrix" unless
the graph has convolutions and no MatMul+Add layers (patches mode mistakes every Add for a conv).

Soundness guards, because a wrong ``unsat`` is the worst answer: the bounds cover the box rounded
outwards to float32, a proof needs ``PROOF_MARGIN``, and lower bounds that exceed the network's
own value at sampled points of the box are an error, never a proof.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported late at run time (seconds), after the cheap checks
    import torch

# A disjunct counts as proved only if a spec row's lower bound beats its right-hand side by this
# much. Bounds are computed in float32; 1e-4 is also VNN-COMP's tolerance for counterexamples, so
# a point that VNN-COMP would accept as a counterexample (up to tolerance) is never "proved" away.
PROOF_MARGIN = 1e-4
# Converted network against onnxruntime on the original file (VNN-COMP's output tolerance).
CONVERSION_RTOL = 1e-3
CONVERSION_ATOL = 1e-4
TARGET_OPSET = 13
METHODS = {"CROWN": "backward", "alpha-CROWN": "CROWN-Optimized", "CROWN-IBP": "CROWN-IBP",
           "IBP": "IBP"}
EXIT_ERROR = 2
_ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div")
_PAD_RHS = 1e30  # right-hand side of padding rows: never the row that decides a spec


class WorkerError(Exception):
    """Why this instance cannot be decided; printed as one ``lirpa:`` line on stderr."""


# --------------------------------------------------------------------------- ONNX preparation


def _tensor_shape(value_info) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def load_onnx(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError, ...
        raise WorkerError(f"cannot read ONNX model {path}: {type(err).__name__}: "
                          f"{_first_line(err)}") from None
    return model


def io_signature(model) -> tuple[str, list[int], str, list[int]]:
    """Name and shape of the single real input (graph inputs that are not initializers: old
    models list their weights as inputs too) and of the single output. A symbolic first
    dimension counts as a batch of 1, as in VNN-COMP's checker."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise WorkerError(f"the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                          f"exactly one of each is supported")
    shapes = []
    for value in (inputs[0], outputs[0]):
        shape = _tensor_shape(value)
        if shape and shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise WorkerError(f"{value.name} has a symbolic shape {shape} beyond the batch "
                              f"dimension; only fixed shapes are supported")
        shapes.append([int(d) for d in shape])
    return inputs[0].name, shapes[0], outputs[0].name, shapes[1]


def prepare_onnx(model) -> tuple[Any, list[str]]:
    """The rewrites described in the module docstring; returns the new model and what was done."""
    import onnx
    from onnx import version_converter

    done: list[str] = []
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never alter the caller's
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as err:
            raise WorkerError(f"cannot upgrade the model from opset {opset} to {TARGET_OPSET} "
                              f"(onnx2torch needs newer ops): {_first_line(err)}") from None
        done.append(f"opset {opset} -> {TARGET_OPSET}")
    # After the upgrade (whose IR-3 checks want them), drop initializers from the graph inputs:
    # they are weights, not inputs, and onnx2torch and shape inference should see them as such.
    initializers = {init.name for init in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(real_inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(real_inputs)
        model.ir_version = max(model.ir_version, 7)
    input_name, input_shape, _, _ = io_signature(model)
    if len(input_shape) == 1:
        _add_batch_dimension(model, input_name)
        done.append("added a batch dimension to the unbatched input")
    squeezed = _squeeze_batchlike_constants(model)
    if squeezed:
        done.append(f"dropped the leading 1 of {squeezed} constant operand(s)")
    return model, done


def _add_batch_dimension(model, input_name: str) -> None:
    """Turn a model over a vector ``x[n]`` into the same model over ``x[1, n]``.

    Every tensor computed from the input stays a vector in the original model when only these
    ops touch it: MatMul with a constant matrix, elementwise Add/Sub/Mul/Div with constants of
    rank <= 1 (or with each other), and Relu/Identity. With a leading 1 added they compute the
    same values, except ``MatMul(W, x)``, which becomes ``MatMul(x, W^T)``."""
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    lifted = {input_name}
    for node in model.graph.node:
        touched = [name for name in node.input if name in lifted]
        if not touched:
            continue
        op = node.op_type
        if op in ("Relu", "Identity"):
            pass
        elif op in _ELEMENTWISE_BINARY:
            for name in node.input:
                if name in lifted:
                    continue
                if name not in constants or len(constants[name].dims) > 1:
                    raise WorkerError(f"unbatched input: {op} node {node.name!r} mixes it with "
                                      f"{name!r}, which is not a constant of rank <= 1")
        elif op == "MatMul":
            a, b = node.input
            if a in lifted and b in constants and len(constants[b].dims) == 2:
                pass  # x[n] @ W[n, m] -> x[1, n] @ W[n, m]: unchanged
            elif b in lifted and a in constants and len(constants[a].dims) == 2:
                weight_t = numpy_helper.to_array(constants[a]).T.copy()
                name = _fresh_name(model, f"{a}_transposed")
                model.graph.initializer.append(numpy_helper.from_array(weight_t, name))
                node.input[0], node.input[1] = b, name
            else:
                raise WorkerError(f"unbatched input: MatMul node {node.name!r} is not a product "
                                  f"of it with a constant matrix")
        else:
            raise WorkerError(f"unbatched input (shape [n]) reaches a {op} node; only MatMul, "
                              f"Add, Sub, Mul, Div, Relu and Identity are supported there")
        lifted.update(node.output)
    output = model.graph.output[0]
    if output.name not in lifted:
        raise WorkerError("the model's output does not depend on its unbatched input")
    for value in (model.graph.input[0], output):
        dims = value.type.tensor_type.shape.dim
        # An unknown size stays 0, which io_signature then rejects.
        shape = [1, *(d.dim_value for d in dims)]
        del dims[:]
        for size in shape:
            dims.add().dim_value = size
    del model.graph.value_info[:]  # stale shapes; shape inference recomputes them


def _squeeze_batchlike_constants(model) -> int:
    """Drop the leading 1 of constants like ``mean[1, 1, 1, 5]`` in ``x[1, 1, 1, 5] - mean``.

    Broadcasting gives the same values and shape whenever the other operand has at least the
    constant's rank; the rewrite is applied only when the ranks are equal, which is exactly the
    case that auto_LiRPA 0.3's ``broadcast_backward`` rejects."""
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*inferred.graph.value_info, *inferred.graph.input]
             if v.type.tensor_type.HasField("shape")}
    constants = {init.name: init for init in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type not in _ELEMENTWISE_BINARY or len(node.input) != 2:
            continue
        for k in (0, 1):
            const, other = node.input[k], node.input[1 - k]
            if const not in constants or other in constants or other not in ranks:
                continue
            dims = list(constants[const].dims)
            if len(dims) >= 2 and len(dims) == ranks[other] and dims[0] == 1:
                value = numpy_helper.to_array(constants[const]).reshape(dims[1:])
                name = _fresh_name(model, f"{const}_squeezed")
                model.graph.initializer.append(numpy_helper.from_array(value, name))
                node.input[k] = name
                count += 1
    return count


def conv_mode(model) -> str:
    """auto_LiRPA's ``conv_mode``: "patches" (its default, cheaper for convolutions) only where
    it works. auto_LiRPA 0.3 treats every Add/Sub as a convolution-shaped node in patches mode
    (``get_sparse_C`` reads ``output_shape[-3]``), which fails on MatMul+Add layers; "matrix"
    handles everything, at a cost in memory for large convolutions."""
    import onnx

    if not any(node.op_type == "Conv" for node in model.graph.node):
        return "matrix"
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*inferred.graph.value_info, *inferred.graph.output]
             if v.type.tensor_type.HasField("shape")}
    for node in model.graph.node:
        if node.op_type in ("Add", "Sub") and ranks.get(node.output[0]) != 4:
            return "matrix"
    return "patches"


def _fresh_name(model, base: str) -> str:
    taken = {init.name for init in model.graph.initializer}
    taken.update(name for node in model.graph.node for name in (*node.input, *node.output))
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


# --------------------------------------------------------------------------- torch network


def _network_class():
    import torch

    class Network(torch.nn.Module):
        """The converted graph with a flat output: ``x[B, *input_shape[1:]] -> y[B, n_out]``.
        auto_LiRPA bounds it at B = 1; the attack runs its restarts as a batch."""

        def __init__(self, graph: torch.nn.Module):
            super().__init__()
            self.graph = graph

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.graph(x).reshape(x.shape[0], -1)

    return Network


def convert(model) -> torch.nn.Module:
    import onnx2torch
    import torch

    try:
        graph = onnx2torch.convert(model)
    except Exception as err:
        raise WorkerError(f"onnx2torch cannot convert the model: {type(err).__name__}: "
                          f"{_first_line(err)}") from None
    # onnx2torch keeps initializers as buffers; auto_LiRPA 0.3 takes its dtype from the bounded
    # module's first parameter (IndexError without any), so make them frozen parameters.
    container = getattr(graph, "initializers", None)
    if container is not None:
        for name, buffer in list(container.named_buffers(recurse=False)):
            if buffer.is_floating_point():
                delattr(container, name)
                container.register_parameter(name, torch.nn.Parameter(buffer,
                                                                      requires_grad=False))
    network = _network_class()(graph).eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class Reference:
    """onnxruntime on the original ONNX file: the model's ground truth."""

    def __init__(self, path: Path, input_name: str, input_shape: list[int]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:
            raise WorkerError(f"onnxruntime cannot load the model: {_first_line(err)}") from None
        self.input_name, self.input_shape = input_name, input_shape
        meta = next((i for i in self.session.get_inputs() if i.name == input_name), None)
        if meta is None or meta.type != "tensor(float)":
            kind = meta.type if meta is not None else "missing"
            raise WorkerError(f"input {input_name!r} is {kind}; only float32 inputs are supported")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Outputs (float64, flat) for one float32 input given flat."""
        feed = {self.input_name: np.asarray(x, dtype=np.float32).reshape(self.input_shape)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float64).reshape(-1)


def check_conversion(network, reference: Reference, boxes: list[tuple[np.ndarray, np.ndarray]],
                     batch_shape: list[int], rng: np.random.Generator) -> bool:
    """The converted network must agree with onnxruntime on points of the boxes (centres and
    random points), so that neither the attack nor the bounds reason about a different model.
    Returns whether it also computes a batch of those points correctly (models with a fixed
    batch in a Reshape do not), which lets the attack run its restarts together."""
    import torch

    points = []
    for lo, hi in boxes:
        points.append((lo + hi) / 2)
        points.extend(lo + (hi - lo) * rng.random((2, lo.size), dtype=np.float32))
    for x in points:
        expected = reference(x)
        with torch.no_grad():
            got = network(torch.from_numpy(x.reshape(batch_shape))).double().numpy().reshape(-1)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=CONVERSION_RTOL,
                                                          atol=CONVERSION_ATOL):
            raise WorkerError("the converted torch model disagrees with onnxruntime "
                              f"(max difference {np.max(np.abs(got - expected)):.3g}); refusing "
                              "to reason about a different model")
    singles = np.stack([reference(x) for x in points])
    batch = torch.from_numpy(np.stack(points).reshape(len(points), *batch_shape[1:]))
    try:
        with torch.no_grad():
            together = network(batch).double().numpy()
    except Exception:  # e.g. a Reshape to a fixed batch of 1 fails on a bigger batch
        return False
    return together.shape == singles.shape and bool(
        np.allclose(together, singles, rtol=CONVERSION_RTOL, atol=CONVERSION_ATOL))


# --------------------------------------------------------------------------- boxes and specs


def float32_boxes(box: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray] | None,
                                             tuple[np.ndarray, np.ndarray]]:
    """``(inner, outer)`` float32 versions of a float64 box.

    The attack searches the inner box (float32 values that really lie in the box; None when
    some interval holds none), so whatever it reports is in the box exactly. The bounds cover
    the outer box (rounded outwards), which contains every point of the box: rounding the box
    inwards there would leave points unbounded."""
    lo, hi = box[:, 0], box[:, 1]
    lo_in = lo.astype(np.float32)
    lo_in = np.where(lo_in < lo, np.nextafter(lo_in, np.float32(np.inf)), lo_in)
    hi_in = hi.astype(np.float32)
    hi_in = np.where(hi_in > hi, np.nextafter(hi_in, np.float32(-np.inf)), hi_in)
    lo_out = lo.astype(np.float32)
    lo_out = np.where(lo_out > lo, np.nextafter(lo_out, np.float32(-np.inf)), lo_out)
    hi_out = hi.astype(np.float32)
    hi_out = np.where(hi_out < hi, np.nextafter(hi_out, np.float32(np.inf)), hi_out)
    inner = (lo_in, hi_in) if np.all(lo_in <= hi_in) else None
    return inner, (lo_out, hi_out)


def spec_holds(y: np.ndarray, specs: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether the outputs ``y`` reach some spec's unsafe region ``mat @ y <= rhs`` exactly."""
    return any(bool(np.all(mat @ y <= rhs)) for mat, rhs in specs)


def _padded_specs(specs, n_out: int):
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


# --------------------------------------------------------------------------- attack


def attack(network, reference: Reference, inner: tuple[np.ndarray, np.ndarray], specs,
           n_out: int, batch_shape: list[int], steps: int, restarts: int, batched: bool,
           generator) -> tuple[np.ndarray, np.ndarray] | None:
    """PGD with ``restarts`` starting points (the first is the box centre), minimizing
    ``min_k max_i (mat_k y - rhs_k)_i``, which is <= 0 exactly when ``y`` reaches spec k.
    The restarts run as one batch when the network allows it, else one after another.
    Returns ``(x, y)`` confirmed by onnxruntime, or None."""
    import torch

    lo = torch.from_numpy(inner[0]).reshape(batch_shape)
    hi = torch.from_numpy(inner[1]).reshape(batch_shape)
    mats, rhs = _padded_specs(specs, n_out)

    def objective(y: torch.Tensor) -> torch.Tensor:  # [B]
        excess = torch.einsum("kro,bo->bkr", mats, y) - rhs
        return excess.max(dim=2).values.min(dim=1).values

    count = max(restarts, 1)
    starts = lo + (hi - lo) * torch.rand((count, *batch_shape[1:]), generator=generator)
    starts[0] = (lo[0] + hi[0]) / 2
    starts = _clamp(starts, lo, hi)
    tried: set[bytes] = set()
    chunk = count if batched else 1
    for first in range(0, count, chunk):
        found = _pgd(network, objective, reference, starts[first:first + chunk], lo, hi, inner,
                     specs, steps, tried)
        if found is not None:
            return found
    return None


def _pgd(network, objective, reference: Reference, x, lo, hi, inner, specs, steps: int,
         tried: set[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    import torch

    width = hi - lo
    for step in range(steps + 1):
        x = x.detach().requires_grad_(True)
        value = objective(network(x))
        found = _confirm(reference, x.detach(), value.detach(), inner, specs, tried)
        if found is not None:
            return found
        if step == steps:
            break
        (grad,) = torch.autograd.grad(value.sum(), x)
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
                              f"model: {type(err).__name__}: {_first_line(err)}") from None

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
                              f"{_first_line(err)}") from None
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


def load_instance(onnx_path: str, vnnlib_path: str):
    """The ONNX model and the property's disjuncts, checked to fit each other and to be boxes:
    ``(model, disjuncts, input_name, input_shape, output_shape)``; raises WorkerError."""
    from bench.errors import BenchError
    from bench.formats.vnnlib import read_vnnlib

    try:
        n_in, n_out, disjuncts = read_vnnlib(vnnlib_path)
    except BenchError as err:
        raise WorkerError(str(err)) from None
    original = load_onnx(onnx_path)
    input_name, input_shape, _, output_shape = io_signature(original)
    if math.prod(input_shape) != n_in or math.prod(output_shape) != n_out:
        raise WorkerError(f"the property has {n_in} inputs and {n_out} outputs, the model "
                          f"{input_shape} and {output_shape}")
    if not disjuncts:
        raise WorkerError("the property has no input box")
    for box, _ in disjuncts:
        if not np.all(np.isfinite(box)):
            raise WorkerError("an input is unbounded in the property; only boxes are supported")
        if np.any(box[:, 0] > box[:, 1]):
            raise WorkerError("an input box of the property is empty (lower > upper)")
    return original, disjuncts, input_name, input_shape, output_shape


def verify(args: argparse.Namespace) -> tuple[str, tuple[np.ndarray, np.ndarray] | None, dict]:
    """``(status, counterexample or None, stats)`` for one instance; raises WorkerError."""
    times: dict[str, float] = {}
    clock = time.perf_counter()

    original, disjuncts, input_name, input_shape, output_shape = load_instance(args.onnx,
                                                                                 args.vnnlib)
    n_out = math.prod(output_shape)

    prepared, rewrites = prepare_onnx(original)
    import torch  # only now: the checks above fail fast, without torch's seconds of import

    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    _, prepared_shape, _, _ = io_signature(prepared)
    if prepared_shape[0] != 1:
        raise WorkerError(f"the model's input {input_shape} does not start with a batch of 1")
    network = convert(prepared)
    reference = Reference(args.onnx, input_name, input_shape)
    boxes = [float32_boxes(box) for box, _ in disjuncts]
    batched = check_conversion(network, reference, [outer for _, outer in boxes],
                               prepared_shape, rng)
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
    bounder = Bounder(network, prepared_shape, args.method, conv_mode(prepared))
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


def write_outputs(result: Path, status: str, cex: tuple[np.ndarray, np.ndarray] | None,
                  stats: dict) -> None:
    """The stats file first, then the result file by rename, so a result file that exists is
    complete and its stats are beside it."""
    lines = [status]
    if cex is not None:
        x, y = cex
        # repr() of the float64 of a float32 value round-trips exactly.
        entries = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
        entries += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
        lines.append("(" + "\n ".join(entries) + ")")
    stats_path = result.with_suffix(".json")
    stats_path.write_text(json.dumps({"status": status, **stats}, indent=1) + "\n")
    partial = result.with_name(result.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, result)


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
        print(f"lirpa: unexpected {type(err).__name__}: {_first_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    stats["time_s"] = time.perf_counter() - start
    stats["method"] = args.method
    write_outputs(args.result, status, cex, stats)
    return 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


if __name__ == "__main__":
    sys.exit(main())
