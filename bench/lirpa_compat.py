"""Import auto_LiRPA, patching release 0.3 (the only one on PyPI) for torch 2.x and numpy 2.

Always ``from bench.lirpa_compat import auto_LiRPA`` (or call :func:`load`) instead of importing
``auto_LiRPA`` directly. Each patch is applied only when its symptom is present, so a newer
auto_LiRPA from GitHub is imported untouched. The five incompatibilities (see ../shared/NOTES.md):

1. ``numpy.lib.arraysetops`` is gone in numpy 2 (0.3 only uses ``isin`` from it);
2. ``torch.onnx.symbolic_helper._set_opset_version`` moved to the TorchScript exporter's GLOBALS;
3. ``torch._C.Node.__getitem__`` was removed (it dispatched on ``kindOf(key)``);
4. ``Module._named_members`` gained a ``remove_duplicate`` keyword that 0.3's override rejects;
5. opset>=11 symbolics (``onnx::OneHot`` for loss fusion) are registered lazily by torch;
6. torch 2.x's ``clamp`` passes no gradient at its bounds, and alpha-CROWN starts every ReLU slope
   at exactly 0 or 1 and clamps it to [0, 1]: alpha never moves (alpha-CROWN == CROWN).

One more change is about speed only: auto_LiRPA's transposed convolutions (CROWN's backward pass
through a convolution) run on the faster of torch's CPU kernels (``_ConvTransposeKernels``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import types
import warnings

_loaded = None


def _patch_numpy() -> None:
    import numpy

    try:
        import numpy.lib.arraysetops  # noqa: F401
    except ImportError:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = numpy.isin
        sys.modules["numpy.lib.arraysetops"] = shim


def _patch_torch_onnx() -> None:
    import torch
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(opset_version: int) -> None:
            GLOBALS.export_onnx_opset_version = opset_version

        symbolic_helper._set_opset_version = _set_opset_version

    if not hasattr(torch._C.Node, "__getitem__"):

        def _node_getitem(node, key):
            kind = node.kindOf(key)
            return getattr(node, kind)(key)  # "is" is a getter here; "is_" would set

        torch._C.Node.__getitem__ = _node_getitem

    # Registering the opset 11+ symbolics (OneHot among them) happens on the first ONNX export;
    # auto_LiRPA traces through the exporter's internals and skips that step.
    try:
        from torch.onnx._internal.torchscript_exporter import symbolic_opset11  # noqa: F401
    except ImportError:
        import torch.onnx.symbolic_opset11  # noqa: F401


def _patch_named_members(auto_lirpa) -> None:
    import inspect

    from auto_LiRPA.bound_general import BoundedModule

    original = BoundedModule._named_members
    if "remove_duplicate" in inspect.signature(original).parameters:
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return original(self, get_members_fn, prefix, recurse)

    BoundedModule._named_members = _named_members


def _patch_alpha_clamp(auto_lirpa) -> None:
    """Give the ReLU slopes' clamp to [0, 1] in ``BoundRelu._relu_mask_alpha`` (0.3's code, with
    only the clamp changed) a straight-through gradient. auto_LiRPA clips the slopes into [0, 1]
    after every step anyway, so the clamp's value never changes; only the gradient at the bounds,
    where CROWN's slopes start, comes back."""
    import torch

    probe = torch.zeros(1, requires_grad=True)
    torch.clamp(probe, min=0.0, max=1.0).sum().backward()
    if probe.grad is not None and float(probe.grad) == 1.0:
        return  # this torch passes the gradient at the bounds
    from auto_LiRPA.operators.activation import BoundRelu

    if "_relu_mask_alpha" not in vars(BoundRelu):
        return  # not release 0.3's layout: leave it alone

    def _unit_interval(slope):
        if slope is None:
            return None
        return slope + (torch.clamp(slope, min=0.0, max=1.0) - slope).detach()

    def _relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d):
        lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
        upper_mask = (upper <= 0).requires_grad_(False)
        zero_coeffs = upper_mask.all()
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = _unit_interval(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = _unit_interval(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, zero_coeffs

    BoundRelu._relu_mask_alpha = staticmethod(_relu_mask_alpha)


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


class _ConvTransposeKernels:
    """``torch.nn.functional`` for auto_LiRPA's convolution operator, with ``conv_transpose2d``
    (CROWN's backward pass through a convolution) on the faster of torch's CPU kernels:

    - a single output channel (the first layer of a grayscale network, e.g. every MNIST CNN):
      torch's native kernel (``slow_conv_transpose2d``) rather than oneDNN's, which is 3-5x
      slower there (e.g. 0.64 vs 0.14 ms for CROWN's 9 margins through the demo's first layer,
      1 thread; ``scripts/bench_conv_transpose.py``). oneDNN stays wherever it was faster: two
      or more output channels, groups, a bias;
    - inside :func:`dense_small_conv_transpose` only, many small planes as one product with the
      operator's matrix.

    Each computes the same linear map; the values differ by float32 summation order."""

    MAX_INPUT = 4096  # entries of one input plane stack (C*H*W): the identity basis built below
    MAX_OPERATOR = 65536  # entries of the materialized operator (input entries * output entries)

    def __init__(self, functional):
        self._functional = functional
        self.dense = False

    def __getattr__(self, name):
        return getattr(self._functional, name)

    def conv_transpose2d(self, input, weight, bias=None, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1):
        args = (stride, padding, output_padding, groups, dilation)
        if self.dense and bias is None:
            product = self._dense(input, weight, args)
            if product is not None:
                return product
        return self._kernel(input, weight, bias, args)

    def _kernel(self, input, weight, bias, args):
        import torch

        stride, padding, output_padding, groups, dilation = args
        if (groups == 1 and weight.dim() == 4 and weight.shape[1] == 1 and input.dim() == 4
                and bias is None and input.device.type == "cpu"
                and input.dtype == weight.dtype):
            return torch.ops.aten.slow_conv_transpose2d(
                input, weight, list(weight.shape[2:]), None, _pair(stride), _pair(padding),
                _pair(output_padding), _pair(dilation))
        return self._functional.conv_transpose2d(input, weight, bias, stride, padding,
                                                 output_padding, groups, dilation)

    def _dense(self, input, weight, args):
        """The product with the operator's matrix, or None where it would not pay."""
        import torch

        per_item = input[0].numel() if input.dim() == 4 and input.shape[0] else 0
        # Building the matrix costs a call on per_item planes: worth it only for more planes.
        if not per_item or per_item > self.MAX_INPUT or input.shape[0] <= per_item:
            return None
        per_output = self._kernel(input[:1], weight, None, args)[0].numel()
        if per_output * per_item > self.MAX_OPERATOR:
            return None
        # The operator is linear: its matrix is its image of the identity basis, exactly as the
        # kernel computes it, whatever the stride, padding, dilation or groups.
        basis = torch.eye(per_item, dtype=input.dtype, device=input.device)
        operator = self._kernel(basis.view(per_item, *input.shape[1:]), weight, None, args)
        out = input.reshape(input.shape[0], per_item) @ operator.reshape(per_item, -1)
        return out.view(input.shape[0], *operator.shape[1:])


def _patch_conv_transpose(auto_lirpa) -> None:
    from auto_LiRPA.operators import convolution

    functional = getattr(convolution, "F", None)
    if functional is not None and not isinstance(functional, _ConvTransposeKernels):
        convolution.F = _ConvTransposeKernels(convolution.F)


@contextlib.contextmanager
def dense_small_conv_transpose():
    """Within the block, auto_LiRPA's backward bounds through convolutions compute
    ``conv_transpose2d`` on many small planes (CROWN's patches of a conv layer's unstable neurons,
    tens of thousands of 8x4x4 planes per batch) as a product with the operator's matrix:
    torch's CPU kernel takes ~0.4 s per call on such batches, the product ~0.03 s. Same values up
    to float32 summation order (relative ~1e-6). Used by the build's metrics, whose batches of
    200 boxes make such calls; a verifier's single box rarely does."""
    from auto_LiRPA.operators import convolution

    kernels = convolution.F
    previous, kernels.dense = kernels.dense, True
    try:
        yield
    finally:
        kernels.dense = previous


def load():
    """Return the ``auto_LiRPA`` module, patched where needed."""
    global _loaded
    if _loaded is None:
        # auto_LiRPA imports torch.utils.cpp_extension, which logs "No CUDA runtime is found"
        # on every CPU-only start: noise for our users, not news.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _patch_numpy()
        _patch_torch_onnx()
        # auto_LiRPA 0.3 calls warnings.simplefilter("once") at import, which would override
        # every filter of the process (and show torch's import-time deprecations): keep its
        # import quiet and the process's filters as they were.
        simplefilter = warnings.simplefilter
        with warnings.catch_warnings():
            simplefilter("ignore")
            warnings.simplefilter = lambda *args, **kwargs: None
            try:
                import auto_LiRPA
            finally:
                warnings.simplefilter = simplefilter
        _patch_named_members(auto_LiRPA)
        _patch_alpha_clamp(auto_LiRPA)
        _patch_conv_transpose(auto_LiRPA)
        _loaded = auto_LiRPA
    return _loaded


auto_LiRPA = load()
