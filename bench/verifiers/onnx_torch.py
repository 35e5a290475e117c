"""ONNX to torch, and the instance files, for this package's worker processes (``lirpa``, ``milp``).

Both workers read an instance the same way: ``LoadedModel`` reads the ONNX model, applies
three equivalence-preserving rewrites (``prepare_onnx``) that make foreign VNN-COMP models
convertible and boundable, turns it into a torch module with onnx2torch (``convert``, not a
hand-written interpreter) and opens the original file in onnxruntime (``Reference``), once per
model; ``load_property`` reads a VNN-LIB property, checks that it fits the model and is made of
boxes, and refuses (``check_conversion``) a converted network that disagrees with onnxruntime on
points of those boxes. ``write_outputs``
writes the VNN-COMP result file and its statistics beside it. Any failure is a ``WorkerError``.

The rewrites:

* opsets below 13 are upgraded with ``onnx.version_converter`` (onnx2torch lacks e.g. Flatten-1);
* a model whose input has no batch dimension (shape ``[n]``, VNN-COMP's test_nano/tiny/small)
  gets one: only MatMul/Add/Sub/Mul/Div/Relu may touch such tensors, and ``MatMul(W, x)`` becomes
  ``MatMul(x, W^T)``, which is the same for a vector ``x``;
* a constant operand of Add/Sub/Mul/Div with the same rank as the activation and a leading 1
  (ACAS Xu's ``input - mean[1,1,1,5]``) loses that leading 1: auto_LiRPA 0.3 fails an assertion
  in ``broadcast_backward`` on constants with a batch-like dimension.

Initializers become frozen parameters (auto_LiRPA 0.3 reads its dtype from the first parameter),
and ``conv_mode`` says which of auto_LiRPA's modes works for a graph.

Imports numpy only at module level: torch, onnx and onnxruntime are imported inside the functions
that need them, so that a worker fails fast on bad input before paying their import time.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


# Converted network against onnxruntime on the original file (VNN-COMP's output tolerance).
CONVERSION_RTOL = 1e-3
CONVERSION_ATOL = 1e-4
TARGET_OPSET = 13
_ELEMENTWISE_BINARY = ("Add", "Sub", "Mul", "Div")


class WorkerError(Exception):
    """Why this instance cannot be decided; each worker prints it as one ``<tool>:`` line on
    stderr."""


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
                          f"{first_line(err)}") from None
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
                              f"(onnx2torch needs newer ops): {first_line(err)}") from None
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
                          f"{first_line(err)}") from None
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
            raise WorkerError(f"onnxruntime cannot load the model: {first_line(err)}") from None
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


def spec_matrix(specs, n_out: int) -> np.ndarray:
    """Every spec's rows stacked, ``[rows, n_out]``: the outputs' combinations to bound."""
    return np.concatenate([mat for mat, _ in specs]).reshape(-1, n_out)


def spec_holds(y: np.ndarray, specs: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether the outputs ``y`` reach some spec's unsafe region ``mat @ y <= rhs`` exactly."""
    return any(bool(np.all(mat @ y <= rhs)) for mat, rhs in specs)


class LoadedModel:
    """An ONNX model ready to attack and bound: read, rewritten (``prepare_onnx``), converted to
    torch and opened in onnxruntime once. A long-lived worker keeps it across the properties of
    the same model; ``load_property`` pairs it with one property."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.original = load_onnx(self.path)
        self.input_name, self.input_shape, _, self.output_shape = io_signature(self.original)
        self.prepared, self.rewrites = prepare_onnx(self.original)
        _, self.prepared_shape, _, _ = io_signature(self.prepared)
        if self.prepared_shape[0] != 1:
            raise WorkerError(f"the model's input {self.input_shape} does not start with a "
                              "batch of 1")
        self.network = convert(self.prepared)
        self.reference = Reference(self.path, self.input_name, self.input_shape)
        self.conv_mode = conv_mode(self.prepared)

    @property
    def n_in(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.output_shape)


class PropertyCache:
    """Parsed VNN-LIB files by (path, size, modification time), the ``size`` most recently
    used: a persistent worker reads each property once per model (every level of a benchmark
    shares its properties). Off (size 0) unless the worker turns it on. Cached arrays are
    read-only, since every reader shares them."""

    def __init__(self, size: int = 0):
        self.size = size
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()

    def read(self, path: str | Path) -> tuple[int, int, list]:
        """``bench.formats.vnnlib.read_vnnlib(path)``; raises WorkerError."""
        from bench.errors import BenchError
        from bench.formats.vnnlib import read_vnnlib

        key = None
        if self.size > 0:
            try:
                stat = os.stat(path)
                key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
            except OSError:
                key = None  # read_vnnlib says what is wrong
        if key is not None and key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        try:
            parsed = read_vnnlib(path)
        except BenchError as err:
            raise WorkerError(str(err)) from None
        if key is not None:
            for box, specs in parsed[2]:
                for array in (box, *(part for spec in specs for part in spec)):
                    array.setflags(write=False)
            self._entries[key] = parsed
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return parsed


PROPERTIES = PropertyCache()


def load_property(model: LoadedModel, vnnlib_path: str | Path, rng: np.random.Generator):
    """The property's disjuncts, checked to fit ``model`` and to be boxes, and the converted
    network checked against onnxruntime on points of those boxes: ``(disjuncts, boxes,
    batched)`` with ``boxes`` the ``float32_boxes`` of each disjunct and ``batched`` whether the
    network computes a batch correctly. Raises WorkerError."""
    n_in, n_out, disjuncts = PROPERTIES.read(vnnlib_path)
    if model.n_in != n_in or model.n_out != n_out:
        raise WorkerError(f"the property has {n_in} inputs and {n_out} outputs, the model "
                          f"{model.input_shape} and {model.output_shape}")
    _require_boxes(disjuncts)
    boxes = [float32_boxes(box) for box, _ in disjuncts]
    batched = check_conversion(model.network, model.reference, [outer for _, outer in boxes],
                               model.prepared_shape, rng)
    return disjuncts, boxes, batched


def _require_boxes(disjuncts) -> None:
    if not disjuncts:
        raise WorkerError("the property has no input box")
    for box, _ in disjuncts:
        if not np.all(np.isfinite(box)):
            raise WorkerError("an input is unbounded in the property; only boxes are supported")
        if np.any(box[:, 0] > box[:, 1]):
            raise WorkerError("an input box of the property is empty (lower > upper)")


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


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""
