"""Worker process of the ``milp`` verifier: an exact big-M MILP (Tjeng et al. 2019) solved by HiGHS.

Run as ``python -m bench.verifiers._milp_main --onnx M --vnnlib P --result R --timeout T
[--bounds CROWN|alpha-CROWN|IBP|interval] [--tighten lp|none] [--attack-restarts N] ...``
(``parse_args``; the persistent worker calls ``run`` with the same arguments).

First a PGD attack (``bench.verifiers.attack``, the cascade's own): a point that onnxruntime
confirms is ``sat`` at once. Otherwise the attack's nearest miss of each spec is kept as a hint
for HiGHS (a MIP start: it may speed up finding a counterexample, it never decides anything).

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
intersected with auto_LiRPA's CROWN (or alpha-CROWN, IBP) bounds on every pre-activation, padded
against float32 rounding, then (``--tighten lp``) tightened layer by layer by LPs over the
relaxation of the layers before, as MIPVerify does; an LP's bound is taken from weak duality, so
it is valid even when the LP stops early. Bounds that exclude the network's value at a sampled
point are never used (the looser ones before them are).

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

from bench.verifiers.attack import NearestPoints, attack
from bench.verifiers.onnx_torch import (LoadedModel, Reference, WorkerError, first_line,
                                        load_property, spec_holds, spec_matrix)
from bench.verifiers.worker_process import EXIT_ERROR, Outcome, answer  # noqa: F401

BOUND_METHODS = {"CROWN": "backward", "alpha-CROWN": "CROWN-Optimized", "IBP": "IBP",
                 "interval": None}

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
# The worker's settings (the milp verifier declares them as its parameters).
TIGHTENING = ("lp", "none")
# The attack's defaults are the cascade's attack stage's (``stages.CascadeSettings``, seed 0 too):
# the same PGD, so that an instance that stage falsifies is falsified here before any MILP runs.
DEFAULTS = {"bounds": "CROWN", "alpha_iterations": 20, "tighten": "lp", "tighten_share": 0.5,
            "attack_restarts": 10, "attack_steps": 20, "attack_targeted": True, "mip_start": True}
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
    z_vars: np.ndarray  # MILP column of each unstable element's pre-activation
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
            v[layer.z_vars] = z[layer.unstable]
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
        lz, uz = lower[unstable], upper[unstable]
        # An unstable pre-activation gets a variable of its own (one dense row defines it), so
        # that the three big-M rows stay sparse: 3x fewer nonzeros for HiGHS to work through.
        z_vars = enc.add_vars(lz, uz, integer=False)
        y_vars = enc.add_vars(np.zeros(count), uz, integer=False)
        a_vars = enc.add_vars(np.zeros(count), np.ones(count), integer=True)
        total = enc.n_vars
        if count:
            def columns(index: np.ndarray, values: np.ndarray | float = 1.0):
                return sparse.csr_matrix((np.broadcast_to(values, (count,)),
                                          (np.arange(count), index)), shape=(count, total))

            zero, inf = np.zeros(count), np.full(count, np.inf)
            # z = A v + c
            cz = z.c[unstable]
            enc.add_rows(columns(z_vars) - widen(z.A[unstable], total), cz, cz)
            # y >= z
            enc.add_rows(columns(y_vars) - columns(z_vars), zero, inf)
            # y <= z - l (1 - a)
            enc.add_rows(columns(y_vars) - columns(z_vars) - columns(a_vars, lz), -inf, -lz)
            # y <= u a
            enc.add_rows(columns(y_vars) - columns(a_vars, uz), -inf, zero)
        enc.relus.append(ReluLayer(name, z, lower, upper, unstable, z_vars, y_vars, a_vars,
                                   source))
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
    value at the box's centre matches, then (with a ``tightener``) LP-tightened. Every bound is
    checked against the pre-activation values at the centre and at sampled points of the box
    (random ones and the attack's): auto_LiRPA or LP bounds that exclude one are dropped (the
    bounds before them stay), interval bounds that do are a bug (an error)."""

    def __init__(self, lirpa_layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None,
                 points: np.ndarray, lirpa_note: str, tightener: "LpTightener | None" = None):
        self.lirpa_layers = lirpa_layers or []  # (value at centre, lower, upper), flat
        self.points = points  # [P, n_in]; row 0 is the centre
        self.tightener = tightener
        self.used: set[int] = set()
        self.notes: list[str] = [lirpa_note] if lirpa_note else []

    def __call__(self, name: str, z: Expr, enc: Encoding) -> tuple[np.ndarray, np.ndarray, str]:
        lb, ub = np.asarray(enc.lb), np.asarray(enc.ub)
        lower, upper = interval_bounds(z, lb, ub)
        values = evaluate(z, np.stack([enc.assignment(p) for p in self.points]))
        if _excludes(values, lower, upper):
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
            if not _excludes(values, new_lower, new_upper):
                lower, upper, source = new_lower, new_upper, "interval+auto_LiRPA"
                self.used.add(match)
            else:
                self.notes.append(f"auto_LiRPA's bounds of ReLU {name!r} exclude a sampled "
                                  f"value; interval bounds used instead")
        if self.tightener is not None:
            new_lower, new_upper = self.tightener(name, z, enc, lower, upper)
            if not _excludes(values, new_lower, new_upper):
                lower, upper = new_lower, new_upper
            else:
                self.notes.append(f"LP-tightened bounds of ReLU {name!r} exclude a sampled "
                                  f"value; the bounds before tightening used instead")
        return lower, upper, source

    def _match(self, centre_values: np.ndarray) -> int | None:
        """The auto_LiRPA ReLU whose input at the centre equals ``centre_values``, if exactly
        one does."""
        found = [k for k, (value, _, _) in enumerate(self.lirpa_layers)
                 if k not in self.used and value.shape == centre_values.shape
                 and np.allclose(value, centre_values, rtol=1e-4, atol=1e-5)]
        return found[0] if len(found) == 1 else None


def _excludes(values: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> bool:
    """Whether bounds are empty somewhere or exclude a sampled value (beyond rounding)."""
    tolerance = SAMPLE_SLACK * (1 + np.abs(values))
    return bool(np.any(lower > upper) or np.any(values < lower - tolerance)
                or np.any(values > upper + tolerance))


class LpTightener:
    """MIPVerify's progressive LP tightening (Tjeng et al. 2019): before a ReLU layer is encoded,
    each of its unstable pre-activations is minimized and maximized over the LP relaxation of
    the layers encoded so far (binaries relaxed to [0, 1], i.e. the triangle relaxation with the
    bounds found so far), so that later layers start from tighter bounds. A neuron whose bounds
    no longer straddle 0 needs no binary; smaller bounds are smaller big-M constants.

    The bound kept is not the LP's optimum but a weak-duality bound from its dual solution
    (``dual_bound``: valid for any multipliers), so neither the simplex's tolerances nor a time
    limit can cut off a real point. The work is limited to ``budget_s`` seconds, shared out
    progressively: each layer gets the time left divided by the layers left, neurons with the
    largest relaxation (triangle area) first; those not reached keep their bounds."""

    def __init__(self, budget_s: float, layers: int, deadline: float):
        self.stop_at = min(time.monotonic() + max(budget_s, 0.0), deadline)
        self.layers_left = max(layers, 1)
        self.records: list[dict[str, Any]] = []

    @property
    def seconds(self) -> float:
        return sum(record["s"] for record in self.records)

    def __call__(self, name: str, z: Expr, enc: Encoding, lower: np.ndarray,
                 upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        started = time.monotonic()
        layer_stop = started + max(self.stop_at - started, 0.0) / self.layers_left
        self.layers_left = max(self.layers_left - 1, 1)
        unstable = np.flatnonzero((lower < 0) & (upper > 0))
        record: dict[str, Any] = {"relu": name, "unstable_before": int(len(unstable)), "lps": 0,
                                  "stabilized": 0, "complete": True}
        lower, upper = lower.copy(), upper.copy()
        # Over the input box alone an affine function's interval bounds are already exact.
        if len(unstable) and z.A[:, enc.n_in:].count_nonzero() and layer_stop > started:
            record["complete"] = self._tighten(z, enc, unstable, lower, upper, layer_stop,
                                               record)
        record["s"] = round(time.monotonic() - started, 4)
        self.records.append(record)
        return lower, upper

    def _tighten(self, z: Expr, enc: Encoding, unstable: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, stop: float, record: dict) -> bool:
        relaxation = RelaxedLp(enc)
        area = -lower[unstable] * upper[unstable] / (upper[unstable] - lower[unstable])
        for i in unstable[np.argsort(-area, kind="stable")]:
            row = z.A[i].toarray().reshape(-1)
            # The side nearer to 0 first: it is the one likely to make the neuron stable.
            for sign in ((-1.0, 1.0) if upper[i] < -lower[i] else (1.0, -1.0)):
                if time.monotonic() >= stop:
                    return False
                bound = relaxation.minimum(sign * row, stop)
                record["lps"] += 1
                if sign > 0:
                    lower[i] = max(lower[i], bound + z.c[i])
                else:
                    upper[i] = min(upper[i], -bound + z.c[i])
                if lower[i] >= 0 or upper[i] <= 0:
                    record["stabilized"] += 1
                    break
        return True


class RelaxedLp:
    """The LP relaxation of an encoding (binaries relaxed to [0, 1]) in one HiGHS instance, to
    minimize one linear function after another: only the objective changes, so each solve
    starts from the last basis."""

    def __init__(self, enc: Encoding):
        sparse = _sparse()
        n = enc.n_vars
        A = sparse.vstack([widen(block, n) for block in enc.rows], format="csr") if enc.rows \
            else sparse.csr_matrix((0, n))
        row_lo, row_hi = np.concatenate([[], *enc.row_lo]), np.concatenate([[], *enc.row_hi])
        col_lo, col_hi = np.asarray(enc.lb), np.asarray(enc.ub)
        self.h = _highs(0.0)
        self.h.setOptionValue("presolve", "off")  # keeps the basis from one objective to the next
        _pass_model(self.h, A, row_lo, row_hi, col_lo, col_hi, np.zeros(n))
        self.system = DualSystem(A, row_lo, row_hi, col_lo, col_hi)
        self.columns = np.arange(n, dtype=np.int32)

    def minimum(self, cost: np.ndarray, stop: float) -> float:
        """A lower bound of ``cost @ v`` over the relaxation (``DualSystem.lower_bound`` of the
        solver's dual; -inf if it has none), solving until ``stop`` at the latest."""
        h = self.h
        cost = np.pad(cost, (0, len(self.columns) - len(cost)))
        # HiGHS's time limit counts all runs of this instance together.
        h.setOptionValue("time_limit", h.getRunTime() + max(stop - time.monotonic(), 0.0))
        h.changeColsCost(len(self.columns), self.columns, cost)
        h.run()
        solution = h.getSolution()
        if not solution.dual_valid:
            return -np.inf
        return self.system.lower_bound(cost, solution.row_dual)


class DualSystem:
    """``{v : row_lo <= A v <= row_hi, col_lo <= v <= col_hi}``, to bound linear functions over
    it from any row multipliers ``y`` (weak duality): for every such ``v``,
    ``cost @ v = y @ (A v) + (cost - A^T y) @ v``, and each term is bounded below by its row's
    or its column's bounds. The bound is valid whatever ``y`` is (an inexact or early-stopped
    dual only makes it weaker), and is padded against float64 rounding."""

    def __init__(self, A, row_lo, row_hi, col_lo, col_hi):
        self.A, self.AT, self.abs_AT = A, A.T.tocsr(), abs(A).T.tocsr()
        self.row_lo, self.row_hi, self.col_lo, self.col_hi = row_lo, row_hi, col_lo, col_hi
        self.col_magnitude = np.maximum(np.abs(col_lo), np.abs(col_hi))

    def lower_bound(self, cost: np.ndarray, row_dual) -> float:
        y = np.asarray(row_dual, dtype=np.float64).copy()
        # A multiplier on an infinite side would make the bound -inf: leave that row out.
        y[~np.isfinite(y) | ((y > 0) & ~np.isfinite(self.row_lo))
          | ((y < 0) & ~np.isfinite(self.row_hi))] = 0.0
        reduced = cost - self.AT @ y
        if np.any((reduced > 0) & ~np.isfinite(self.col_lo)) or \
                np.any((reduced < 0) & ~np.isfinite(self.col_hi)):
            return -np.inf
        row_terms = np.where(y > 0, y * _finite(self.row_lo), y * _finite(self.row_hi))
        col_terms = np.where(reduced > 0, reduced * _finite(self.col_lo),
                             reduced * _finite(self.col_hi))
        magnitude = (np.abs(row_terms).sum()
                     + (np.abs(cost) + self.abs_AT @ np.abs(y)) @ self.col_magnitude)
        return float(row_terms.sum() + col_terms.sum() - INTERVAL_PAD_REL * magnitude)


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, 0.0)


def lirpa_bounds(network, batch_shape: list[int], outer: tuple[np.ndarray, np.ndarray],
                 method: str, mode: str, spec_rows: np.ndarray | None = None,
                 alpha_iterations: int = 20, deadline: float = math.inf
                 ) -> tuple[list | None, str]:
    """auto_LiRPA's bounds on every ReLU input over the (float32, outward-rounded) box, with
    each one's value at the box centre; ``(None, why)`` when auto_LiRPA cannot do it (the
    encoding then uses interval bounds alone, which is slower but just as exact).

    alpha-CROWN optimizes the ReLU slopes (``alpha_iterations`` steps) for the lower bounds of
    ``spec_rows @ y``, the property's outputs, re-computing the intermediate bounds with them and
    keeping the best seen for each neuron: those intermediate bounds are what is used here.
    It stops early at ``deadline`` (``time.monotonic()``): the bounds of any slopes in [0, 1]
    are sound, so stopping only makes them looser."""
    import torch

    try:
        from bench.lirpa_compat import auto_LiRPA as lirpa

        options: dict[str, Any] = {"conv_mode": mode}
        optimized = method == "alpha-CROWN"
        if optimized:
            # Optimizing the intermediate bounds needs dense (not sparse) slopes in 0.3.
            # A criterion that is a tensor of all True ends the optimization (a bool does not).
            options.update({"sparse_spec_alpha": False, "sparse_features_alpha": False,
                            "optimize_bound_args": {
                                "iteration": alpha_iterations,
                                "fix_intermediate_layer_bounds": False,
                                "stop_criterion_func": lambda lower: torch.full(
                                    lower.shape, time.monotonic() >= deadline)}})
        module = lirpa.BoundedModule(network, torch.zeros(batch_shape), device="cpu",
                                     verbose=False, bound_opts=options)
        lo = torch.from_numpy(outer[0]).reshape(batch_shape)
        hi = torch.from_numpy(outer[1]).reshape(batch_shape)
        centre = (lo + hi) / 2
        ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
        C = None
        if optimized and spec_rows is not None and spec_rows.shape[0]:
            C = torch.from_numpy(spec_rows.astype(np.float32))[None]
        # alpha-CROWN needs gradients; the others do not.
        with torch.enable_grad() if optimized else torch.no_grad():
            module.compute_bounds(x=(lirpa.BoundedTensor(centre, ptb),), C=C,
                                  method=BOUND_METHODS[method], bound_upper=not optimized)
        layers = []
        with torch.no_grad():
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


def _highs(time_limit: float):
    """A quiet, single-threaded, deterministic HiGHS with a time limit."""
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("time_limit", float(max(time_limit, 0.0)))
    return h


def _pass_model(h, A, row_lo, row_hi, col_lo, col_hi, cost, integer=None) -> None:
    """Minimize ``cost @ v`` subject to ``row_lo <= A v <= row_hi``, ``col_lo <= v <= col_hi``
    (``integer``: which columns are integer)."""
    import highspy

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
    lp.col_cost_ = np.asarray(cost, dtype=np.float64)
    lp.col_lower_, lp.col_upper_ = col_lo, col_hi
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(np.float64)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = A.shape[1], A.shape[0]
    if integer is not None and np.any(integer):
        lp.integrality_ = [highspy.HighsVarType.kInteger if flag else
                           highspy.HighsVarType.kContinuous for flag in integer]
    if h.passModel(lp) == highspy.HighsStatus.kError:
        raise WorkerError("HiGHS rejected the model")


def solve_spec(enc: Encoding, mat: np.ndarray, rhs: np.ndarray, slack: float,
               deadline: float, fixed_pattern: np.ndarray | None = None,
               start: np.ndarray | None = None) -> SpecOutcome:
    """Minimize ``t`` with ``mat_i y - rhs_i <= t <= slack`` over the encoding: infeasible means
    that no point of the box reaches the spec. With ``fixed_pattern`` (one 0/1 value per binary)
    the binaries are fixed: an LP.

    ``start`` (an input point of the box: the attack's nearest miss of this spec) is given to
    HiGHS as a partial starting solution, its activation pattern: HiGHS completes it with the
    best point of that linear region (one LP). If that point reaches the spec, the search starts
    from a counterexample and stops at once; if not, HiGHS drops the start and the proof runs
    as without it. (A start that is feasible whatever it misses the spec by would need the bound
    ``t <= slack`` dropped, which costs HiGHS its pruning: measured 10 s to infeasible with the
    bound against no answer in 60 s without it, on a 4-layer MNIST network.)"""
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
    binaries = np.flatnonzero(integer)
    if fixed_pattern is not None:
        col_lo[binaries] = col_hi[binaries] = fixed_pattern
        integer[:] = False

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return SpecOutcome("timeout")
    h = _highs(remaining)
    # HiGHS's presolve finds nothing to remove in these encodings and spent seconds on the dense
    # rows of the first layers (4 of 6 s on a 4-layer MNIST network).
    h.setOptionValue("presolve", "off")
    # Stop at the first point deep enough inside the unsafe region (see TARGET_FACTOR).
    h.setOptionValue("objective_target", -TARGET_FACTOR * slack)
    _pass_model(h, A, row_lo, row_hi, col_lo, col_hi, np.eye(1, total, t_col).reshape(-1),
                integer)
    detail: dict[str, Any] = {}
    if start is not None and integer.any():
        pattern = enc.assignment(start.astype(np.float64))[binaries]
        status = h.setSolution(len(binaries), binaries.astype(np.int32), pattern)
        detail["start_accepted"] = status != highspy.HighsStatus.kError
    started = time.monotonic()
    h.run()
    model_status = h.getModelStatus()
    info = h.getInfo()
    detail.update({"highs_status": h.modelStatusToString(model_status),
                   "solve_s": round(time.monotonic() - started, 4),
                   "columns": total, "rows": int(A.shape[0]),
                   "binaries": int(np.count_nonzero(integer))})
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
    if start is not None:
        # A start is a hint and must not cost the answer: HiGHS 1.16 ended a MIP that it was
        # given a start for with "objective target reached" and no feasible point (a 256x6
        # MNIST net, as the time ran out). Solve again without it, in the time left.
        retry = solve_spec(enc, mat, rhs, slack, deadline, fixed_pattern)
        retry.detail["without_start_after"] = detail["highs_status"]
        return retry
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
    happen, so that they survive an ``OutOfTime``: ``phases`` (what the attack, the bounds, the
    LP tightening and the MILP did and how long each took) and ``decided_by`` (``attack``,
    ``bounds`` when the tightened bounds alone exclude every spec, or ``milp``). ``model``: the
    instance's model already loaded (a long-lived worker keeps it)."""
    clock = time.monotonic()
    model = model or LoadedModel(args.onnx)
    rng = np.random.default_rng(0)
    disjuncts, boxes, batched = load_property(model, args.vnnlib, rng)
    stats.update({"rewrites": model.rewrites, "disjuncts": len(disjuncts), "bounds": args.bounds,
                  "load_s": round(time.monotonic() - clock, 4), "encodings": [], "specs": [],
                  "phases": {}})
    phases = stats["phases"]

    found, nearest = attack_phase(args, model, disjuncts, boxes, batched, deadline, phases)
    if found is not None:
        stats["decided_by"] = "attack"
        return "sat", found

    unknown_reasons: list[str] = []
    milp_used = False
    for index, ((box, specs), (inner, outer)) in enumerate(zip(disjuncts, boxes)):
        enc, slack = encode_disjunct(args, model, index, box, specs, (inner, outer),
                                     nearest[index], rng, deadline, stats)
        milp = _add_phase(phases, "milp", {"specs": 0, "nodes": 0})
        # The spec the attack came closest to first, then the one that the bounds make easiest
        # to reach: "sat" ends the search.
        lower_bounds = {k: _spec_lower_bound(enc, *specs[k]) for k in range(len(specs))}
        if args.tighten == "lp":
            # These LPs only save MILPs: at most the tightening's share of the time left (one LP
            # over a deep network's relaxation took a quarter of a minute).
            stop = time.monotonic() + args.tighten_share * max(deadline - time.monotonic(), 0.0)
            lp_spec_bounds(enc, specs, lower_bounds, slack, stop, phases)
        order = sorted(range(len(specs)),
                       key=lambda k: (nearest[index].excess.get(k, np.inf), lower_bounds[k]))
        for k in order:
            mat, rhs = specs[k]
            record: dict[str, Any] = {"disjunct": index, "spec": k}
            stats["specs"].append(record)
            if mat.shape[0] == 0:
                # No output constraint: every point of the box is a counterexample.
                found, _ = confirm(model.reference, (box[:, 0] + box[:, 1]) / 2, inner, specs)
                if found is not None:
                    record["result"] = "sat"
                    stats["decided_by"] = "milp"
                    return "sat", found
                unknown_reasons.append("a spec without output constraints, but no float32 point "
                                       "in its box")
                continue
            if lower_bounds[k] > slack:
                record["result"] = "unsat"
                record["by"] = "bounds"
                continue
            milp_used = True
            clock = time.monotonic()
            start = nearest[index].points.get(k) if args.mip_start else None
            try:
                outcome = solve_spec(enc, mat, rhs, slack, deadline, start=start)
            finally:
                milp["s"] = round(milp["s"] + time.monotonic() - clock, 4)
                milp["specs"] += 1
            record.update({key: value for key, value in outcome.detail.items()
                           if key != "pattern"})
            milp["nodes"] += int(outcome.detail.get("nodes", 0))
            if outcome.status == "timeout":
                raise OutOfTime()
            if outcome.status == "unsat":
                record["result"] = "unsat"
                continue
            found, excess = _confirm_or_polish(enc, model.reference, outcome, mat, rhs, slack,
                                               inner, specs, deadline, record)
            if found is not None:
                record["result"] = "sat"
                stats["decided_by"] = "milp"
                return "sat", found
            record["result"] = "unknown"
            unknown_reasons.append(
                f"disjunct {index}, spec {k}: the MILP's point (objective "
                f"{outcome.objective:.3g}, slack {slack:.3g}) misses the unsafe region by "
                f"{excess:.3g} under onnxruntime, also after polishing; the property is decided "
                f"only within floating-point tolerance")
    if unknown_reasons:
        stats["reason"] = unknown_reasons[0]
        return "unknown", None
    stats["decided_by"] = "milp" if milp_used else "bounds"
    return "unsat", None


def attack_phase(args: argparse.Namespace, model: LoadedModel, disjuncts, boxes, batched: bool,
                 deadline: float, phases: dict) -> tuple[Any, list[NearestPoints]]:
    """PGD on every disjunct (``bench.verifiers.attack``): a confirmed counterexample, or None;
    and per disjunct the points nearest to each spec, to start the MILP from."""
    import torch

    record = _add_phase(phases, "attack", {"restarts": args.attack_restarts,
                                           "steps": args.attack_steps,
                                           "targeted": args.attack_targeted, "found": False})
    nearest = [NearestPoints() for _ in disjuncts]
    if args.attack_restarts <= 0:
        return None, nearest
    clock = time.monotonic()
    generator = torch.Generator().manual_seed(0)
    try:
        for (_, specs), (inner, _), near in zip(disjuncts, boxes, nearest):
            _check_time(deadline)
            if inner is None:
                continue  # no float32 input lies in this box: nothing to attack
            found = attack(model.network, model.reference, inner, specs, model.n_out,
                           model.prepared_shape, args.attack_steps, args.attack_restarts,
                           batched, generator, near, stop_at=deadline,
                           targeted=args.attack_targeted)
            if found is not None:
                record["found"] = True
                return found, nearest
    finally:
        record["s"] = round(time.monotonic() - clock, 4)
    _check_time(deadline)  # the attack gives up at the deadline without saying so
    return None, nearest


def encode_disjunct(args: argparse.Namespace, model: LoadedModel, index: int, box: np.ndarray,
                    specs, boxes, near: NearestPoints, rng: np.random.Generator, deadline: float,
                    stats: dict) -> tuple[Encoding, float]:
    """The MILP encoding of one disjunct over bounds from auto_LiRPA (``args.bounds``) and LP
    tightening (``args.tighten``), and the slack of its specs; recorded in ``stats``."""
    (inner, outer), phases = boxes, stats["phases"]
    clock = time.monotonic()
    bounds = _add_phase(phases, "bounds", {"method": args.bounds})
    layers, note = None, ""
    if args.bounds != "interval":
        layers, note = lirpa_bounds(model.network, model.prepared_shape, outer, args.bounds,
                                    model.conv_mode, spec_matrix(specs, model.n_out),
                                    args.alpha_iterations,
                                    deadline)
    bounds["s"] = round(bounds["s"] + time.monotonic() - clock, 4)
    _check_time(deadline)
    n_in = model.n_in
    # Sanity-check points: the centre, random points and the attack's nearest misses (close to
    # the decision boundary, where a wrong bound would show first).
    near_points = [np.clip(p.astype(np.float64), box[:, 0], box[:, 1])
                   for p in near.points.values()]
    points = np.concatenate([((box[:, 0] + box[:, 1]) / 2)[None],
                             box[:, 0] + (box[:, 1] - box[:, 0]) * rng.random((SAMPLES, n_in)),
                             np.reshape(near_points, (-1, n_in))])
    tightener = None
    if args.tighten == "lp":
        relu_layers = len(layers) if layers else _relu_modules(model.network)
        tightener = LpTightener(args.tighten_share * (deadline - time.monotonic()), relu_layers,
                                deadline)
    oracle = BoundsOracle(layers, points, note, tightener)
    try:
        enc = Encoder(model.network.graph, model.prepared_shape, box, oracle, deadline).encode()
    finally:
        if tightener is not None:
            tightening = _add_phase(phases, "tightening", {"lps": 0, "stabilized": 0})
            tightening["s"] = round(tightening["s"] + tightener.seconds, 4)
            tightening["lps"] += sum(record["lps"] for record in tightener.records)
            tightening["stabilized"] += sum(record["stabilized"] for record in tightener.records)
    _check_encoding(enc, model.reference, points, inner)
    slack = output_slack(enc, points)
    stats["encodings"].append({
        "disjunct": index, "encode_s": round(time.monotonic() - clock, 4),
        "relu_layers": len(enc.relus),
        "unstable": [int(len(layer.unstable)) for layer in enc.relus],
        "neurons": [int(layer.z.numel) for layer in enc.relus],
        "bounds_source": [layer.bounds_source for layer in enc.relus],
        "lp_tightening": tightener.records if tightener is not None else [],
        "notes": oracle.notes, "slack": slack})
    return enc, slack


def lp_spec_bounds(enc: Encoding, specs, lower_bounds: dict[int, float], slack: float,
                   stop: float, phases: dict) -> None:
    """Raise ``lower_bounds[k]`` (of spec k's excess ``max_i (mat_i y - rhs_i)``) to the LP
    relaxation's bound of each row, for the specs that interval bounds leave open: a spec whose
    bound passes the slack needs no MILP. The LPs stop at ``stop`` (``time.monotonic()``); the
    rows not reached keep their bounds."""
    open_specs = [k for k, bound in lower_bounds.items()
                  if bound <= slack and specs[k][0].shape[0]]
    if not open_specs:
        return
    clock = time.monotonic()
    record = _add_phase(phases, "tightening", {"lps": 0, "stabilized": 0})
    try:
        relaxation = RelaxedLp(enc)
        out = enc.output
        for k in open_specs:
            mat, rhs = specs[k]
            rows = _sparse().csr_matrix(mat) @ out.A
            for i in range(mat.shape[0]):
                if time.monotonic() >= stop:
                    return
                bound = relaxation.minimum(rows[i].toarray().reshape(-1), stop)
                record["lps"] += 1
                excess = bound + float(mat[i] @ out.c) - float(rhs[i])
                lower_bounds[k] = max(lower_bounds[k], excess)
                if lower_bounds[k] > slack:
                    break
    finally:
        record["s"] = round(record["s"] + time.monotonic() - clock, 4)


def _confirm_or_polish(enc: Encoding, reference: Reference, outcome: SpecOutcome, mat, rhs,
                       slack: float, inner, specs, deadline: float, record: dict):
    """The MILP's point confirmed by onnxruntime, else the point of an LP over its activation
    pattern; ``(found or None, excess)`` as ``confirm`` gives them."""
    found, excess = confirm(reference, outcome.x, inner, specs)
    record["onnxruntime_excess"] = _finite_or_none(excess)
    if found is None:
        # Numerical trouble (a binary within tolerance of 0 or 1 lets y leave the ReLU): fix
        # the activation pattern and re-solve the LP on that linear region.
        polished = solve_spec(enc, mat, rhs, slack, deadline,
                              fixed_pattern=np.round(outcome.detail["pattern"]))
        record["polished"] = {key: value for key, value in polished.detail.items()
                              if key != "pattern"}
        if polished.status == "candidate":
            found, excess = confirm(reference, polished.x, inner, specs)
            record["polished"]["onnxruntime_excess"] = _finite_or_none(excess)
    return found, excess


def _add_phase(phases: dict, name: str, fields: dict) -> dict:
    """``phases[name]``, created with ``s = 0`` and ``fields`` the first time."""
    return phases.setdefault(name, {"s": 0.0, **fields})


def _relu_modules(network) -> int:
    import torch

    return sum(isinstance(module, torch.nn.ReLU) for module in network.modules())


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
    parser.add_argument("--bounds", choices=list(BOUND_METHODS), default=DEFAULTS["bounds"],
                        help="auto_LiRPA's bounds to tighten the big-M constants, or interval only")
    parser.add_argument("--alpha-iterations", type=int, default=DEFAULTS["alpha_iterations"],
                        help="optimization steps of alpha-CROWN")
    parser.add_argument("--tighten", choices=TIGHTENING, default=DEFAULTS["tighten"],
                        help="lp: tighten unstable neurons' bounds by LP, layer by layer")
    parser.add_argument("--tighten-share", type=float, default=DEFAULTS["tighten_share"],
                        help="at most this share of the time left goes to LP tightening")
    parser.add_argument("--attack-restarts", type=int, default=DEFAULTS["attack_restarts"],
                        help="PGD restarts before the MILP (0: no attack)")
    parser.add_argument("--attack-steps", type=int, default=DEFAULTS["attack_steps"])
    parser.add_argument("--attack-targeted", action=argparse.BooleanOptionalAction,
                        default=DEFAULTS["attack_targeted"],
                        help="besides the restarts, one start per spec aimed at that spec")
    parser.add_argument("--mip-start", action=argparse.BooleanOptionalAction,
                        default=DEFAULTS["mip_start"],
                        help="start HiGHS from the attack's nearest miss of each spec")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, deadline: float, model: LoadedModel | None = None) -> Outcome:
    """One instance, as the worker answers it (``worker_process.answer``): ``verify`` with its
    time limit at ``deadline`` (``time.monotonic()``); running out of time is ``timeout``."""
    # Checked here, not by the parser: the persistent worker parses too, and must not exit.
    if not args.timeout > 0:
        raise WorkerError(f"--timeout must be positive, got {args.timeout}")
    if args.alpha_iterations < 1 or args.attack_restarts < 0 or args.attack_steps < 0 or \
            not 0 <= args.tighten_share <= 1:
        raise WorkerError("--alpha-iterations must be >= 1, --attack-restarts and "
                          "--attack-steps >= 0, --tighten-share in [0, 1]")
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
