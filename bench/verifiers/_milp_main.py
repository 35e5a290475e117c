"""Worker process of the ``milp`` verifier: an exact big-M MILP (Tjeng et al. 2019) solved by HiGHS.

Run as ``python -m bench.verifiers._milp_main --onnx M --vnnlib P --result R --timeout T
[--bounds CROWN|IBP|interval]``.

The ONNX model is loaded and converted to torch exactly as the ``lirpa`` worker does it
(``bench.verifiers.onnx_torch``: the same rewrites, and the converted network is checked
against onnxruntime). Its torch.fx graph is then encoded node by node as affine expressions over
MILP variables (the inputs, and one output variable per unstable ReLU): every supported op other
than ReLU is affine in its variable operand, and its matrix is read off by evaluating the op (in
float64) on the zero tensor and on the identity basis, then checked at random points, so Conv,
Linear, Gemm, MatMul, BatchNorm, Flatten, Reshape, Add/Sub/Mul/Div by constants, Pad, Concat and
the rest need no hand-written rule each. A ReLU with pre-activation bounds ``l < 0 < u`` gets the
big-M encoding ``y >= 0, y >= z, y <= z - l (1 - a), y <= u a, a in {0, 1}``; stable ones are
fixed (``y = z`` or ``y = 0``). The bounds are interval bounds computed here in float64,
intersected with auto_LiRPA's CROWN (or IBP) bounds on every pre-activation, padded against
float32 rounding; bounds that exclude the network's value at a sampled point are never used.

For each ``(box, specs)`` disjunct and each spec ``mat @ y <= rhs`` one MILP minimizes
``t >= max_i (mat_i y - rhs_i)`` subject to ``t <= slack``: infeasible means no input of the box
reaches the spec (the slack, a small multiple of the outputs' magnitude, absorbs the difference
between exact arithmetic and float32 inference, so that "unsat" is never claimed on a tie).
A solution is rounded to float32 and re-run with onnxruntime on the original file; only a point
that reaches the spec there exactly is reported as ``sat``. If it does not (numerical trouble),
the activation pattern is fixed and an LP polishes the point; a point that still fails makes the
answer ``unknown`` (with the reason in the stats file), never ``sat``. All specs infeasible:
``unsat``. HiGHS runs single-threaded with the time left before ``--timeout`` (counted from
this process's start); running out of time is ``timeout``.

Outputs as the lirpa worker writes them: ``R`` in VNN-COMP's result format (``sat`` plus
``((X_0 v) ... (Y_0 v))``, ``unsat``, ``timeout``, ``unknown``) and ``R`` with suffix ``.json``
(status, reason, times, per-spec details). A failure (unreadable files, an op that is not
supported, a converted model or an encoding that disagrees with onnxruntime, a solver error) is
one ``milp:`` line on stderr and exit code 2, with no result file.
"""
from __future__ import annotations

import argparse
import copy
import math
import operator
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.verifiers.onnx_torch import (LoadedModel, Reference, WorkerError, first_line,
                                        load_property, spec_holds)
from bench.verifiers.worker_process import EXIT_ERROR, Outcome, answer  # noqa: F401
BOUND_METHODS = {"CROWN": "backward", "IBP": "IBP", "interval": None}

# A spec counts as unreachable only if max_i (mat_i y - rhs_i) > slack everywhere in the box;
# slack = SLACK_ABS + SLACK_REL * (largest output magnitude). float32 inference differs from exact
# arithmetic by about 1e-7 relative per layer, so a property that holds only by less than this is
# left "unknown" rather than called "unsat".
SLACK_ABS = 1e-5
SLACK_REL = 1e-5
# The solver may stop at the first point this much deeper than the slack inside the unsafe region
# (HiGHS's objective_target): such a point survives float32 rounding.
TARGET_FACTOR = 10.0
# auto_LiRPA computes in float32: its bounds are widened by this before they are used as big-M
# constants (a too-tight big-M would cut off real points and could turn "sat" into "unsat").
LIRPA_PAD_ABS = 1e-5
LIRPA_PAD_REL = 1e-4
# Interval bounds are computed in float64; widened by this relative amount of their magnitude.
INTERVAL_PAD_REL = 1e-9
# An op's matrix read off its basis images must reproduce the op at random points this well.
LINEARITY_RTOL = 1e-7
# A pre-activation bound may not exclude a sampled value by more than this (relative + absolute).
SAMPLE_SLACK = 1e-6
SAMPLES = 16  # random points of the box (besides the centre) for the sanity checks
BASIS_CHUNK_VALUES = 1 << 22  # float64 values per batched basis evaluation (32 MB)
# Leave this much of the time limit for writing the result before the harness's hard timeout.
DEADLINE_MARGIN_S = 1.0


class OutOfTime(Exception):
    """The time limit passed before an answer."""


# --------------------------------------------------------------------------- affine expressions


@dataclass
class Expr:
    """A tensor of shape ``shape`` whose flattened values are ``A @ v + c`` for the MILP variables
    ``v``; ``A`` may have fewer columns than there are variables now (later ones are absent)."""

    shape: tuple[int, ...]
    A: Any  # scipy.sparse.csr_matrix, numel x (number of variables when it was made)
    c: np.ndarray  # numel, float64

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class ReluLayer:
    """One ReLU node: its pre-activation ``z``, bounds, and the variables of its unstable part."""

    name: str
    z: Expr
    lower: np.ndarray
    upper: np.ndarray
    unstable: np.ndarray  # indices into z's elements
    y_vars: np.ndarray  # MILP column of each unstable element's output
    a_vars: np.ndarray  # MILP column of each unstable element's binary
    bounds_source: str  # where the bounds came from


@dataclass
class Encoding:
    """The network over one input box as MILP variables and rows."""

    n_in: int
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # sparse blocks, columns padded when assembled
    row_lo: list[np.ndarray] = field(default_factory=list)
    row_hi: list[np.ndarray] = field(default_factory=list)
    relus: list[ReluLayer] = field(default_factory=list)
    output: Expr | None = None

    @property
    def n_vars(self) -> int:
        return len(self.lb)

    def add_vars(self, lower: np.ndarray, upper: np.ndarray, integer: bool) -> np.ndarray:
        first = self.n_vars
        self.lb.extend(float(v) for v in lower)
        self.ub.extend(float(v) for v in upper)
        self.integer.extend([integer] * len(lower))
        return np.arange(first, self.n_vars)

    def add_rows(self, block, lo: np.ndarray, hi: np.ndarray) -> None:
        self.rows.append(block.tocsr())
        self.row_lo.append(np.asarray(lo, dtype=np.float64))
        self.row_hi.append(np.asarray(hi, dtype=np.float64))

    def assignment(self, x: np.ndarray) -> np.ndarray:
        """The value of every variable when the network runs on input ``x`` (float64, exact
        arithmetic on the float32 weights): ReLU outputs and their binaries (a = 1 iff z > 0)."""
        v = np.zeros(self.n_vars)
        v[: self.n_in] = x
        for layer in self.relus:
            z = evaluate(layer.z, v)
            v[layer.y_vars] = np.maximum(z[layer.unstable], 0.0)
            v[layer.a_vars] = (z[layer.unstable] > 0).astype(np.float64)
        return v


def _sparse():
    import scipy.sparse

    return scipy.sparse


def widen(A, columns: int):
    """``A`` with zero columns appended up to ``columns``."""
    if A.shape[1] == columns:
        return A
    A = A.tocsr(copy=True)
    A.resize((A.shape[0], columns))
    return A


def evaluate(expr: Expr, v: np.ndarray) -> np.ndarray:
    """The values of ``expr`` for the variable values ``v`` (a vector, or one row per point)."""
    if v.ndim == 1:
        return expr.A @ v[: expr.A.shape[1]] + expr.c
    return (expr.A @ v[:, : expr.A.shape[1]].T).T + expr.c


def interval_bounds(expr: Expr, lb: np.ndarray, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``A v + c`` over the variables' box, widened against float64 rounding."""
    A = expr.A
    lb, ub = lb[: A.shape[1]], ub[: A.shape[1]]
    positive, negative = A.maximum(0), A.minimum(0)
    lower = expr.c + positive @ lb + negative @ ub
    upper = expr.c + positive @ ub + negative @ lb
    magnitude = np.abs(expr.c) + abs(A) @ np.maximum(np.abs(lb), np.abs(ub))
    pad = INTERVAL_PAD_REL * magnitude
    return lower - pad, upper + pad


# --------------------------------------------------------------------------- fx graph -> MILP


# Modules that are affine in their one variable operand (the others must be constants).
_AFFINE_TORCH = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                 "ConvTranspose3d", "Linear", "Flatten", "Unflatten", "Identity", "Dropout",
                 "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
                 "AdaptiveAvgPool3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "ZeroPad2d",
                 "ConstantPad1d", "ConstantPad2d", "ConstantPad3d")
_AFFINE_ONNX2TORCH = ("OnnxFlatten", "OnnxReshape", "OnnxTranspose", "OnnxSqueezeStaticAxes",
                      "OnnxSqueezeDynamicAxes", "OnnxUnsqueezeStaticAxes",
                      "OnnxUnsqueezeDynamicAxes", "OnnxNeg", "OnnxCopyIdentity", "OnnxPadStatic",
                      "OnnxPadDynamic", "OnnxGemm", "OnnxMatMul", "OnnxGlobalAveragePool",
                      "OnnxGlobalAveragePoolWithKnownInputShape", "OnnxSlice", "OnnxSliceV9",
                      "OnnxGather", "OnnxExpand", "OnnxDropoutDynamic", "OnnxBatchNorm")
# Jointly linear in all their variable operands.
_SUM_ONNX2TORCH = ("OnnxConcat", "OnnxSum")


def _op_kind(node, target) -> str:
    """'relu', 'shape' (the result depends only on shapes), 'affine' (in one variable operand),
    'sum' (jointly linear in every variable operand) or 'div' (affine in the dividend only);
    raises WorkerError for anything else."""
    import torch
    import torch.nn.functional as F

    if node.op == "call_module":
        kind = type(target).__name__
        if kind == "ReLU":
            return "relu"
        if kind.startswith("BatchNorm") and target.training:
            raise WorkerError(f"BatchNorm node {node.name!r} is in training mode")
        if kind in _AFFINE_TORCH or kind in _AFFINE_ONNX2TORCH:
            return "affine"
        if kind in _SUM_ONNX2TORCH:
            return "sum"
        if kind == "OnnxShape":
            return "shape"
        if kind == "OnnxBinaryMathOperation":
            function = target.math_op_function
            if function in (torch.add, torch.sub):
                return "sum"
            if function is torch.mul:
                return "affine"
            return "div"
        raise WorkerError(f"unsupported operation {kind} (node {node.name!r}); the milp "
                          f"verifier encodes piecewise-linear networks of ReLU and affine ops")
    if node.op == "call_function":
        if target in (torch.relu, F.relu):
            return "relu"
        if target in (operator.add, operator.sub, torch.add, torch.sub, torch.cat):
            return "sum"
        if target in (torch.flatten, torch.reshape, torch.transpose, torch.permute,
                      operator.neg, torch.neg, operator.mul, torch.mul):
            return "affine"
        if target in (operator.truediv, torch.div):
            return "div"
        name = getattr(target, "__name__", str(target))
        raise WorkerError(f"unsupported function {name} (node {node.name!r})")
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target in ("reshape", "view", "flatten", "transpose", "permute", "squeeze",
                           "unsqueeze", "contiguous"):
            return "affine"
        if node.target in ("size", "dim"):
            return "shape"
        raise WorkerError(f"unsupported method {node.target} (node {node.name!r})")
    raise WorkerError(f"unsupported fx node {node.op} {node.target}")


class Encoder:
    """Walks the converted network's fx graph in order, turning each node into a constant tensor
    or an ``Expr`` and each ReLU into big-M rows. ``bounds`` gives a ReLU's pre-activation bounds
    from its expression (see ``BoundsOracle``)."""

    def __init__(self, graph_module, input_shape: list[int], box: np.ndarray,
                 bounds: "BoundsOracle", deadline: float):
        import torch

        # float64 throughout: an op's matrix is read off differences of its outputs, which must
        # not lose the float32 weights' digits.
        self.gm = copy.deepcopy(graph_module).double().eval()
        self.input_shape = tuple(input_shape)
        self.box = box
        self.bounds = bounds
        self.deadline = deadline
        self.torch = torch
        self.rng = np.random.default_rng(0)
        self.enc = Encoding(n_in=box.shape[0])

    def encode(self) -> Encoding:
        torch = self.torch
        enc = self.enc
        inputs = enc.add_vars(self.box[:, 0], self.box[:, 1], integer=False)
        sparse = _sparse()
        values: dict[str, Any] = {}
        with torch.no_grad():
            for node in self.gm.graph.nodes:
                _check_time(self.deadline)
                if node.op == "placeholder":
                    if values:
                        raise WorkerError("the converted model has more than one input")
                    values[node.name] = Expr(self.input_shape,
                                             sparse.identity(len(inputs), format="csr"),
                                             np.zeros(len(inputs)))
                elif node.op == "get_attr":
                    values[node.name] = _fetch_attr(self.gm, node.target)
                elif node.op == "output":
                    result = _lookup(node.args[0], values)
                    if not isinstance(result, Expr):
                        raise WorkerError("the model's output does not depend on its input")
                    enc.output = result
                else:
                    values[node.name] = self._node(node, values)
        if enc.output is None:
            raise WorkerError("the converted model has no output")
        return enc

    def _node(self, node, values: dict[str, Any]):
        target = self.gm.get_submodule(node.target) if node.op == "call_module" else node.target
        args = _lookup(node.args, values)
        kwargs = _lookup(dict(node.kwargs), values)
        variable = [path for path, value in _leaves(args, kwargs) if isinstance(value, Expr)]
        if not variable:
            return self._call(node, target, *_concrete(args, kwargs, {}))
        kind = _op_kind(node, target)
        if kind == "shape":
            zeros = {path: self.torch.zeros(_leaf(args, kwargs, path).shape,
                                            dtype=self.torch.float64) for path in variable}
            return self._call(node, target, *_concrete(args, kwargs, zeros))
        if kind == "relu":
            if len(variable) != 1:
                raise WorkerError(f"ReLU node {node.name!r} has several variable operands")
            return self._relu(node.name, _leaf(args, kwargs, variable[0]))
        if kind in ("affine", "div") and len(variable) > 1:
            raise WorkerError(f"node {node.name!r} ({_describe_target(target)}) multiplies two "
                              f"input-dependent tensors: not piecewise linear")
        if kind == "div" and variable[0] != ("args", 0):
            raise WorkerError(f"node {node.name!r} divides by an input-dependent tensor")
        return self._affine(node, target, args, kwargs, variable)

    def _call(self, node, target, args, kwargs):
        if node.op == "call_method":
            self_arg, *rest = args
            return getattr(self_arg, target)(*rest, **kwargs)
        return target(*args, **kwargs)

    # ----------------------------------------------------------------- affine ops

    def _affine(self, node, target, args, kwargs, variable: list[tuple]) -> Expr:
        """The op as ``sum_k G_k z_k + g0`` over its variable operands ``z_k``."""
        torch = self.torch
        exprs = [_leaf(args, kwargs, path) for path in variable]
        zero = {path: torch.zeros(expr.shape, dtype=torch.float64)
                for path, expr in zip(variable, exprs)}
        out0 = self._call(node, target, *_concrete(args, kwargs, zero))
        if not isinstance(out0, torch.Tensor) or not out0.is_floating_point():
            raise WorkerError(f"node {node.name!r} ({_describe_target(target)}) does not give a "
                              f"float tensor")
        out_shape = tuple(out0.shape)
        g0 = out0.reshape(-1).double().numpy().copy()
        matrices = []
        for path, expr in zip(variable, exprs):
            matrices.append(self._matrix(node, target, args, kwargs, zero, path, expr, out_shape,
                                         g0))
        self._check_linear(node, target, args, kwargs, variable, exprs, matrices, g0)
        columns = self.enc.n_vars
        A = sum((G @ widen(expr.A, columns) for G, expr in zip(matrices, exprs)),
                start=_sparse().csr_matrix((len(g0), columns)))
        c = g0 + sum((G @ expr.c for G, expr in zip(matrices, exprs)), start=np.zeros(len(g0)))
        A = _sparse().csr_matrix(A)
        A.eliminate_zeros()
        return Expr(out_shape, A, c)

    def _matrix(self, node, target, args, kwargs, zero, path, expr: Expr, out_shape, g0):
        """``G`` with ``op(e_i) - op(0)`` as column i, the other variable operands at zero.
        Basis vectors go through the op as one batch when its input and output carry a batch
        dimension of 1, else one by one (a Reshape to a fixed shape would mix a batch)."""
        sparse = _sparse()
        n = expr.numel
        rows, cols, vals = [], [], []
        batched = (len(expr.shape) >= 1 and expr.shape[0] == 1 and len(out_shape) >= 1
                   and out_shape[0] == 1)
        chunk = max(1, BASIS_CHUNK_VALUES // max(len(g0), 1))
        start = 0
        while start < n:
            _check_time(self.deadline)
            stop = min(n, start + chunk)
            images = None
            if batched:
                images = self._basis_images_batched(node, target, args, kwargs, zero, path,
                                                    expr.shape, start, stop, out_shape)
                if images is None:
                    batched = False
            if images is None:
                images = np.stack([self._basis_image(node, target, args, kwargs, zero, path,
                                                     expr.shape, i) for i in range(start, stop)])
            diff = images - g0[None, :]
            k, j = np.nonzero(diff)
            rows.append(j)
            cols.append(k + start)
            vals.append(diff[k, j])
            start = stop
        return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                         np.concatenate(cols))),
                                 shape=(len(g0), n))

    def _basis_images_batched(self, node, target, args, kwargs, zero, path, shape, start, stop,
                              out_shape) -> np.ndarray | None:
        torch = self.torch
        count = stop - start
        n = int(np.prod(shape))
        basis = torch.zeros((count, n), dtype=torch.float64)
        basis[torch.arange(count), torch.arange(start, stop)] = 1.0
        operands = dict(zero)
        operands[path] = basis.reshape(count, *shape[1:])
        try:
            out = self._call(node, target, *_concrete(args, kwargs, operands))
        except Exception:  # an op that cannot take a batch: fall back to one at a time
            return None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (count, *out_shape[1:]):
            return None
        return out.reshape(count, -1).double().numpy()

    def _basis_image(self, node, target, args, kwargs, zero, path, shape, index) -> np.ndarray:
        torch = self.torch
        basis = torch.zeros(int(np.prod(shape)), dtype=torch.float64)
        basis[index] = 1.0
        operands = dict(zero)
        operands[path] = basis.reshape(shape)
        out = self._call(node, target, *_concrete(args, kwargs, operands))
        return out.reshape(-1).double().numpy()

    def _check_linear(self, node, target, args, kwargs, variable, exprs, matrices, g0) -> None:
        """The op must equal ``sum_k G_k z_k + g0`` at random operands: this catches an op that
        is not affine after all, or a batch evaluation that mixed up its basis vectors."""
        torch = self.torch
        for _ in range(2):
            operands, predicted = {}, g0.copy()
            for path, expr, G in zip(variable, exprs, matrices):
                z = self.rng.normal(size=expr.numel)
                operands[path] = torch.from_numpy(z).reshape(expr.shape)
                predicted += G @ z
            actual = self._call(node, target, *_concrete(args, kwargs, operands))
            actual = actual.reshape(-1).double().numpy()
            scale = 1.0 + np.max(np.abs(actual), initial=0.0)
            if actual.shape != predicted.shape or \
                    np.max(np.abs(actual - predicted), initial=0.0) > LINEARITY_RTOL * scale:
                raise WorkerError(f"node {node.name!r} ({_describe_target(target)}) is not affine "
                                  f"in its input; it cannot be encoded exactly")

    # ----------------------------------------------------------------- ReLU

    def _relu(self, name: str, z: Expr) -> Expr:
        enc = self.enc
        sparse = _sparse()
        columns = enc.n_vars
        z = Expr(z.shape, widen(z.A, columns), z.c)
        lower, upper, source = self.bounds(name, z, enc)
        active = lower >= 0
        unstable = np.flatnonzero((lower < 0) & (upper > 0))
        count = len(unstable)
        y_vars = enc.add_vars(np.zeros(count), upper[unstable], integer=False)
        a_vars = enc.add_vars(np.zeros(count), np.ones(count), integer=True)
        total = enc.n_vars
        if count:
            Az = widen(z.A[unstable], total)
            cz, lz, uz = z.c[unstable], lower[unstable], upper[unstable]
            pick = sparse.csr_matrix((np.ones(count), (np.arange(count), y_vars)),
                                     shape=(count, total))
            binary = sparse.csr_matrix((np.ones(count), (np.arange(count), a_vars)),
                                       shape=(count, total))
            inf = np.full(count, np.inf)
            # y >= z
            enc.add_rows(pick - Az, cz, inf)
            # y <= z - l (1 - a)
            enc.add_rows(pick - Az - binary.multiply(lz[:, None]), -inf, cz - lz)
            # y <= u a
            enc.add_rows(pick - binary.multiply(uz[:, None]), -inf, np.zeros(count))
        enc.relus.append(ReluLayer(name, z, lower, upper, unstable, y_vars, a_vars, source))
        # The output: z where active, the new variable where unstable, 0 where inactive.
        keep = sparse.diags(active.astype(np.float64))
        new_outputs = sparse.csr_matrix((np.ones(count), (unstable, y_vars)),
                                        shape=(z.numel, total))
        out_A = sparse.csr_matrix(widen(keep @ z.A, total) + new_outputs)
        out_A.eliminate_zeros()
        return Expr(z.shape, out_A, np.where(active, z.c, 0.0))


def _lookup(arg, values: dict[str, Any]):
    """fx arguments with nodes replaced by their values."""
    import torch.fx

    if isinstance(arg, torch.fx.Node):
        return values[arg.name]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_lookup(a, values) for a in arg)
    if isinstance(arg, dict):
        return {k: _lookup(v, values) for k, v in arg.items()}
    return arg


def _leaves(args, kwargs):
    """(path, value) of every argument, nested lists/tuples included; a path is a tuple."""
    def walk(value, path):
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield from walk(item, (*path, i))
        else:
            yield path, value

    yield from walk(tuple(args), ("args",))
    for key, value in kwargs.items():
        yield from walk(value, ("kwargs", key))


def _leaf(args, kwargs, path):
    value = args if path[0] == "args" else kwargs
    for step in path[1:]:
        value = value[step]
    return value


def _concrete(args, kwargs, operands: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with ``Expr`` leaves replaced by ``operands[path]`` and constant
    tensors copied (a module that works in place must not alter a shared constant), floating
    ones as float64 like everything else here (a float32 value is exact in float64)."""
    import torch

    def build(value, path):
        if path in operands:
            return operands[path]
        if isinstance(value, (list, tuple)):
            return type(value)(build(item, (*path, i)) for i, item in enumerate(value))
        if isinstance(value, Expr):
            raise WorkerError("internal error: an input-dependent operand has no value")
        if isinstance(value, torch.Tensor):
            return value.double() if value.is_floating_point() else value.clone()
        return value

    new_args = build(tuple(args), ("args",))
    new_kwargs = {key: build(value, ("kwargs", key)) for key, value in kwargs.items()}
    return new_args, new_kwargs


def _fetch_attr(module, target: str):
    value = module
    for part in target.split("."):
        value = getattr(value, part)
    return value.detach().clone() if hasattr(value, "detach") else value


def _describe_target(target) -> str:
    return type(target).__name__ if hasattr(target, "forward") else getattr(target, "__name__",
                                                                             str(target))


# --------------------------------------------------------------------------- bounds


class BoundsOracle:
    """Pre-activation bounds for each ReLU, as the encoder reaches it: interval bounds over the
    variables' bounds (float64), intersected with auto_LiRPA's bounds on the ReLU node whose
    value at the box's centre matches. Every bound is checked against the pre-activation values
    at the centre and at random points of the box: auto_LiRPA bounds that exclude one are
    dropped (the interval bounds stay), interval bounds that do are a bug (an error)."""

    def __init__(self, lirpa_layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None,
                 points: np.ndarray, lirpa_note: str):
        self.lirpa_layers = lirpa_layers or []  # (value at centre, lower, upper), flat
        self.points = points  # [P, n_in]; row 0 is the centre
        self.used: set[int] = set()
        self.notes: list[str] = [lirpa_note] if lirpa_note else []

    def __call__(self, name: str, z: Expr, enc: Encoding) -> tuple[np.ndarray, np.ndarray, str]:
        lb, ub = np.asarray(enc.lb), np.asarray(enc.ub)
        lower, upper = interval_bounds(z, lb, ub)
        values = evaluate(z, np.stack([enc.assignment(p) for p in self.points]))
        tolerance = SAMPLE_SLACK * (1 + np.abs(values))
        if np.any(values < lower - tolerance) or np.any(values > upper + tolerance):
            raise WorkerError(f"internal error: interval bounds of ReLU {name!r} exclude a "
                              f"sampled value")
        source = "interval"
        match = self._match(values[0])
        if match is not None:
            _, l_lirpa, u_lirpa = self.lirpa_layers[match]
            pad_l = LIRPA_PAD_ABS + LIRPA_PAD_REL * np.abs(l_lirpa)
            pad_u = LIRPA_PAD_ABS + LIRPA_PAD_REL * np.abs(u_lirpa)
            new_lower = np.maximum(lower, l_lirpa - pad_l)
            new_upper = np.minimum(upper, u_lirpa + pad_u)
            if np.all(new_lower <= new_upper) and not (
                    np.any(values < new_lower - tolerance) or
                    np.any(values > new_upper + tolerance)):
                lower, upper, source = new_lower, new_upper, "interval+auto_LiRPA"
                self.used.add(match)
            else:
                self.notes.append(f"auto_LiRPA's bounds of ReLU {name!r} exclude a sampled "
                                  f"value; interval bounds used instead")
        return lower, upper, source

    def _match(self, centre_values: np.ndarray) -> int | None:
        """The auto_LiRPA ReLU whose input at the centre equals ``centre_values``, if exactly
        one does."""
        found = [k for k, (value, _, _) in enumerate(self.lirpa_layers)
                 if k not in self.used and value.shape == centre_values.shape
                 and np.allclose(value, centre_values, rtol=1e-4, atol=1e-5)]
        return found[0] if len(found) == 1 else None


def lirpa_bounds(network, batch_shape: list[int], outer: tuple[np.ndarray, np.ndarray],
                 method: str, mode: str) -> tuple[list | None, str]:
    """auto_LiRPA's bounds on every ReLU input over the (float32, outward-rounded) box, with
    each one's value at the box centre; ``(None, why)`` when auto_LiRPA cannot do it (the
    encoding then uses interval bounds alone, which is slower but just as exact)."""
    import torch

    try:
        from bench.lirpa_compat import auto_LiRPA as lirpa

        module = lirpa.BoundedModule(network, torch.zeros(batch_shape), device="cpu",
                                     verbose=False, bound_opts={"conv_mode": mode})
        lo = torch.from_numpy(outer[0]).reshape(batch_shape)
        hi = torch.from_numpy(outer[1]).reshape(batch_shape)
        centre = (lo + hi) / 2
        ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
        with torch.no_grad():
            module.compute_bounds(x=(lirpa.BoundedTensor(centre, ptb),),
                                  method=BOUND_METHODS[method])
            layers = []
            for relu in module.relus:
                node = relu.inputs[0]
                value = module.get_forward_value(node)
                layers.append((value.detach().double().numpy().reshape(-1),
                               node.lower.detach().double().numpy().reshape(-1),
                               node.upper.detach().double().numpy().reshape(-1)))
    except Exception as err:
        return None, f"auto_LiRPA bounds unavailable ({type(err).__name__}: {first_line(err)})"
    return layers, ""


# --------------------------------------------------------------------------- MILP


@dataclass
class SpecOutcome:
    status: str  # unsat | candidate | timeout
    x: np.ndarray | None = None
    objective: float | None = None
    detail: dict = field(default_factory=dict)


def solve_spec(enc: Encoding, mat: np.ndarray, rhs: np.ndarray, slack: float,
               deadline: float, fixed_pattern: np.ndarray | None = None) -> SpecOutcome:
    """Minimize ``t`` with ``mat_i y - rhs_i <= t <= slack`` over the encoding. With
    ``fixed_pattern`` (one 0/1 value per binary) the binaries are fixed: an LP."""
    import highspy

    sparse = _sparse()
    out = enc.output
    n = enc.n_vars
    t_col = n  # the objective variable
    total = n + 1
    spec_A = sparse.csr_matrix(mat) @ widen(out.A, n)
    spec_block = sparse.hstack([spec_A, sparse.csr_matrix(-np.ones((len(rhs), 1)))],
                               format="csr")
    blocks = [widen(block, total) for block in enc.rows] + [spec_block]
    A = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, total))
    row_lo = np.concatenate([*enc.row_lo, np.full(len(rhs), -np.inf)])
    row_hi = np.concatenate([*enc.row_hi, rhs - mat @ out.c])
    col_lo = np.array([*enc.lb, -np.inf])
    col_hi = np.array([*enc.ub, slack])
    integer = np.array([*enc.integer, False])
    if fixed_pattern is not None:
        binaries = np.flatnonzero(integer)
        col_lo[binaries] = col_hi[binaries] = fixed_pattern
        integer[:] = False

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return SpecOutcome("timeout")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("time_limit", float(remaining))
    # Stop at the first point deep enough inside the unsafe region (see TARGET_FACTOR).
    h.setOptionValue("objective_target", -TARGET_FACTOR * slack)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = total, A.shape[0]
    lp.col_cost_ = np.eye(1, total, t_col).reshape(-1)
    lp.col_lower_, lp.col_upper_ = col_lo, col_hi
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(np.float64)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = total, A.shape[0]
    if integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if flag else
                           highspy.HighsVarType.kContinuous for flag in integer]
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kError:
        raise WorkerError("HiGHS rejected the model")
    start = time.monotonic()
    h.run()
    model_status = h.getModelStatus()
    info = h.getInfo()
    detail = {"highs_status": h.modelStatusToString(model_status),
              "solve_s": round(time.monotonic() - start, 4),
              "columns": total, "rows": int(A.shape[0]),
              "binaries": int(np.count_nonzero(integer))}
    if integer.any():
        detail["nodes"] = int(info.mip_node_count)
    has_point = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = objective = None
    if has_point:
        solution = np.asarray(h.getSolution().col_value, dtype=np.float64)
        x, objective = solution[: enc.n_in], float(solution[t_col])
        detail["objective"] = objective
        detail["pattern"] = solution[np.flatnonzero(np.array(enc.integer))]
    kinds = highspy.HighsModelStatus
    if model_status == kinds.kInfeasible:
        return SpecOutcome("unsat", detail=detail)
    if has_point and model_status in (kinds.kOptimal, kinds.kObjectiveTarget,
                                      kinds.kObjectiveBound, kinds.kTimeLimit,
                                      kinds.kSolutionLimit, kinds.kInterrupt):
        return SpecOutcome("candidate", x, objective, detail)
    if model_status == kinds.kTimeLimit:
        return SpecOutcome("timeout", detail=detail)
    raise WorkerError(f"HiGHS ended with {detail['highs_status']} on a spec; no decision")


# --------------------------------------------------------------------------- main


def output_slack(enc: Encoding, points: np.ndarray) -> float:
    """SLACK_ABS + SLACK_REL * the largest output magnitude at the sampled points (interval
    bounds of the outputs can be far looser than the values the network really takes)."""
    values = evaluate(enc.output, np.stack([enc.assignment(p) for p in points]))
    return SLACK_ABS + SLACK_REL * float(np.max(np.abs(values), initial=0.0))


def confirm(reference: Reference, x: np.ndarray, inner,
            specs) -> tuple[tuple[np.ndarray, np.ndarray] | None, float]:
    """``((x, y), excess)``: ``x`` as float32 inside the box and onnxruntime's outputs ``y``
    there if they reach a spec exactly, else None; ``excess`` is by how much the closest spec
    is missed (<= 0 when reached; inf without a float32 point in the box)."""
    if inner is None:
        return None, np.inf
    point = np.clip(x.astype(np.float32), inner[0], inner[1])
    y = reference(point)
    excess = min(float(np.max(mat @ y - rhs, initial=-np.inf)) for mat, rhs in specs)
    return ((point, y) if spec_holds(y, specs) else None), excess


def verify(args: argparse.Namespace, deadline: float, stats: dict[str, Any],
           model: LoadedModel | None = None) -> tuple[str, Any]:
    """The answer and, for ``sat``, the confirmed ``(x, y)``; details go into ``stats`` as they
    happen, so that they survive an ``OutOfTime``. ``model``: the instance's model already
    loaded (a long-lived worker keeps it)."""
    clock = time.monotonic()
    model = model or LoadedModel(args.onnx)
    rng = np.random.default_rng(0)
    disjuncts, boxes, _ = load_property(model, args.vnnlib, rng)
    network, reference, n_in = model.network, model.reference, model.n_in
    prepared_shape, mode = model.prepared_shape, model.conv_mode
    stats.update({"rewrites": model.rewrites, "disjuncts": len(disjuncts), "bounds": args.bounds,
                  "load_s": round(time.monotonic() - clock, 4), "encodings": [], "specs": []})

    unknown_reasons: list[str] = []
    for index, ((box, specs), (inner, outer)) in enumerate(zip(disjuncts, boxes)):
        clock = time.monotonic()
        if args.bounds == "interval":
            layers, note = None, ""
        else:
            layers, note = lirpa_bounds(network, prepared_shape, outer, args.bounds, mode)
        _check_time(deadline)
        points = np.concatenate([((box[:, 0] + box[:, 1]) / 2)[None],
                                 box[:, 0] + (box[:, 1] - box[:, 0]) * rng.random((SAMPLES, n_in))])
        oracle = BoundsOracle(layers, points, note)
        enc = Encoder(network.graph, prepared_shape, box, oracle, deadline).encode()
        _check_encoding(enc, reference, points, inner)
        slack = output_slack(enc, points)
        stats["encodings"].append({
            "disjunct": index, "encode_s": round(time.monotonic() - clock, 4),
            "relu_layers": len(enc.relus),
            "unstable": [int(len(layer.unstable)) for layer in enc.relus],
            "neurons": [int(layer.z.numel) for layer in enc.relus],
            "bounds_source": [layer.bounds_source for layer in enc.relus],
            "notes": oracle.notes, "slack": slack})

        # The spec that interval bounds make easiest to reach first: "sat" ends the search.
        order = sorted(range(len(specs)), key=lambda k: _spec_lower_bound(enc, *specs[k]))
        for k in order:
            mat, rhs = specs[k]
            record: dict[str, Any] = {"disjunct": index, "spec": k}
            stats["specs"].append(record)
            if mat.shape[0] == 0:
                # No output constraint: every point of the box is a counterexample.
                found, _ = confirm(reference, (box[:, 0] + box[:, 1]) / 2, inner, specs)
                if found is not None:
                    record["result"] = "sat"
                    return "sat", found
                unknown_reasons.append("a spec without output constraints, but no float32 point "
                                       "in its box")
                continue
            outcome = solve_spec(enc, mat, rhs, slack, deadline)
            record.update({key: value for key, value in outcome.detail.items()
                           if key != "pattern"})
            if outcome.status == "timeout":
                raise OutOfTime()
            if outcome.status == "unsat":
                record["result"] = "unsat"
                continue
            found, excess = confirm(reference, outcome.x, inner, specs)
            record["onnxruntime_excess"] = _finite_or_none(excess)
            if found is None:
                # Numerical trouble (a binary within tolerance of 0 or 1 lets y leave the ReLU):
                # fix the activation pattern and re-solve the LP on that linear region.
                polished = solve_spec(enc, mat, rhs, slack, deadline,
                                      fixed_pattern=np.round(outcome.detail["pattern"]))
                record["polished"] = {key: value for key, value in polished.detail.items()
                                      if key != "pattern"}
                if polished.status == "candidate":
                    found, excess = confirm(reference, polished.x, inner, specs)
                    record["polished"]["onnxruntime_excess"] = _finite_or_none(excess)
            if found is not None:
                record["result"] = "sat"
                return "sat", found
            record["result"] = "unknown"
            unknown_reasons.append(
                f"disjunct {index}, spec {k}: the MILP's point (objective {outcome.objective:.3g}, "
                f"slack {slack:.3g}) misses the unsafe region by {excess:.3g} under onnxruntime, "
                f"also after polishing; the property is decided only within floating-point "
                f"tolerance")
    if unknown_reasons:
        stats["reason"] = unknown_reasons[0]
        return "unknown", None
    return "unsat", None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


def _spec_lower_bound(enc: Encoding, mat: np.ndarray, rhs: np.ndarray) -> float:
    if mat.shape[0] == 0:
        return -np.inf
    rows = Expr((mat.shape[0],), _sparse().csr_matrix(mat) @ enc.output.A, mat @ enc.output.c - rhs)
    lower, _ = interval_bounds(rows, np.asarray(enc.lb), np.asarray(enc.ub))
    return float(np.max(lower))


def _check_encoding(enc: Encoding, reference: Reference, points: np.ndarray, inner) -> None:
    """The encoded network must compute what onnxruntime computes, at float32 points of the box."""
    from bench.verifiers.onnx_torch import CONVERSION_ATOL, CONVERSION_RTOL

    if inner is None:
        return  # no float32 point in the box to compare at
    for point in points:
        x = np.clip(point.astype(np.float32), inner[0], inner[1])
        expected = reference(x)
        got = evaluate(enc.output, enc.assignment(x.astype(np.float64)))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=CONVERSION_RTOL,
                                                          atol=CONVERSION_ATOL):
            raise WorkerError(f"internal error: the MILP encoding disagrees with onnxruntime "
                              f"(max difference {np.max(np.abs(got - expected)):.3g}); refusing "
                              f"to decide")


def _check_time(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise OutOfTime()


def deadline_for(timeout: float, started_at: float | None = None) -> float:
    """``time.monotonic()`` at which to stop: ``timeout`` seconds after ``started_at`` (epoch
    seconds; default this process's start, because the harness's clock runs from there and the
    imports take seconds of it), less a margin to write the result."""
    if started_at is None:
        import psutil

        started_at = psutil.Process().create_time()
    elapsed = max(time.time() - started_at, 0.0)
    margin = min(DEADLINE_MARGIN_S, 0.1 * timeout)
    return time.monotonic() + timeout - elapsed - margin


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.verifiers._milp_main",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--vnnlib", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True,
                        help="seconds, counted from this process's start")
    parser.add_argument("--bounds", choices=list(BOUND_METHODS), default="CROWN",
                        help="auto_LiRPA's bounds to tighten the big-M constants, or interval only")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, deadline: float, model: LoadedModel | None = None) -> Outcome:
    """One instance, as the worker answers it (``worker_process.answer``): ``verify`` with its
    time limit at ``deadline`` (``time.monotonic()``); running out of time is ``timeout``."""
    if not args.timeout > 0:
        raise WorkerError(f"--timeout must be positive, got {args.timeout}")
    stats: dict[str, Any] = {"bounds": args.bounds}
    try:
        status, cex = verify(args, deadline, stats, model)
    except OutOfTime:
        status, cex = "timeout", None
        stats["reason"] = f"time limit of {args.timeout:g} s"
    return status, cex, stats


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """The worker; ``started_at`` (epoch seconds) is when its time limit starts to run, by
    default when this process started (callers in the same process pass ``time.time()``)."""
    start = time.perf_counter()
    args = parse_args(argv)
    deadline = deadline_for(args.timeout, started_at) if args.timeout > 0 else 0.0
    return answer("milp", lambda: run(args, deadline), args.result, start)


if __name__ == "__main__":
    sys.exit(main())
