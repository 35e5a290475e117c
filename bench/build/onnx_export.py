"""Export a model to ONNX the way verifiers want it, and check the file against torch.

Verifiers want a plain graph: batch size 1, BatchNorm folded into the convolution before it (a
real BatchNormalization node made alpha-beta-CROWN much slower in our trials), one
self-contained file. The legacy TorchScript exporter gives exactly that; the dynamo exporter
writes weights to a side file and a fixed-batch Reshape that crashed alpha-beta-CROWN.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run with every module in eval mode, then restore each module's own flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> None:
    """Write ``model`` (the full model of raw pixels, Normalize included) to ``path`` as ONNX
    with input ``"input"`` of shape ``(1, *input_shape)`` and output ``"output"``.

    Masks must already be permanent: with ``torch.nn.utils.prune`` hooks attached, the exporter
    neither folds BatchNorm nor writes the masked weights as plain initializers."""
    if prune.is_pruned(model):
        raise RuntimeError("export_onnx needs permanent masks: call prune.remove() on every "
                           "pruned module first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    dummy = torch.zeros((1, *input_shape), dtype=torch.float32, device=_device_of(model))
    try:
        with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter is deprecated but is the one that gives verifiers a plain graph.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                model, (dummy,), str(tmp),
                dynamo=False,
                export_params=True,
                opset_version=OPSET,
                do_constant_folding=True,  # with eval mode, this folds BatchNorm into the Conv
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
            )
        _require_no_batchnorm(tmp, shown_as=path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _require_no_batchnorm(path: Path, shown_as: Path) -> None:
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if "BatchNormalization" in ops:
        raise RuntimeError(
            f"{shown_as}: BatchNormalization was not folded into the preceding layer; verifiers "
            "would see a real BatchNorm (is a BatchNorm placed after something other than a Conv?)"
        )


def check_onnx(path: str | Path, model: nn.Module, samples: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime and torch (in eval mode) over the outputs
    of ``samples`` (N, C, H, W), run one at a time since the ONNX batch size is 1. Also runs
    ``onnx.checker``."""
    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    device = _device_of(model)
    worst = 0.0
    with _eval_mode(model), torch.no_grad():
        for sample in samples.to(torch.float32):
            batch = sample.unsqueeze(0)
            expected = model(batch.to(device)).cpu().numpy()
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.cpu().numpy()})
            if got.shape != expected.shape:
                raise RuntimeError(f"{path}: ONNX output shape {got.shape} differs from torch's "
                                   f"{expected.shape}")
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
    return worst


def _float_tensors(graph: onnx.GraphProto) -> Iterator[np.ndarray]:
    """Every floating-point constant of the graph: initializers and Constant nodes. Integer
    constants (shapes, axes) are not parameters."""
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating):
            yield array
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                array = numpy_helper.to_array(attr.t)
                if np.issubdtype(array.dtype, np.floating):
                    yield array


def onnx_stats(path: str | Path) -> dict:
    """``parameters`` and ``nonzero_parameters`` (floating-point constants, so after BatchNorm
    folding and including the Normalize conv) and ``ops``: node count per op type."""
    graph = onnx.load(str(path)).graph
    parameters = nonzero = 0
    for array in _float_tensors(graph):
        parameters += int(array.size)
        nonzero += int(np.count_nonzero(array))
    ops = Counter(node.op_type for node in graph.node)
    return {"parameters": parameters, "nonzero_parameters": nonzero,
            "ops": dict(sorted(ops.items()))}
