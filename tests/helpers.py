"""Small computations several test modules check against."""
from __future__ import annotations

import itertools

import numpy as np


def ibp_verified_accuracy(model, x, y, normalizer, eps: float, correct_only: bool = False) -> float:
    """Share of ``x`` whose eps-ball (in pixel space) IBP certifies for label ``y`` (with
    ``correct_only``: and that the model classifies correctly)."""
    import auto_LiRPA
    import torch
    from auto_LiRPA.perturbations import PerturbationLpNorm

    bounded = auto_LiRPA.BoundedModule(model, torch.zeros(1, *x.shape[1:]))
    bounded.eval()
    lower, upper = normalizer.box(x, eps)
    ptb = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    eye = torch.eye(10)
    spec = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    lb, _ = bounded.compute_bounds(x=(auto_LiRPA.BoundedTensor(normalizer(x), ptb),), C=spec,
                                   method="IBP", bound_upper=False)
    lb[torch.arange(len(y)), y] = 1.0  # the true label's own row is 0 - 0
    certified = lb.min(1).values > 0
    if correct_only:
        with torch.no_grad():
            certified &= model(normalizer(x)).argmax(1) == y
    return float(certified.float().mean())


def corner_counterexample(onnx_path, vnnlib_path) -> tuple[np.ndarray, np.ndarray]:
    """A corner of the property's (first) input box where the model reaches the unsafe region,
    with the outputs onnxruntime gives there."""
    import onnxruntime as ort

    from bench.formats.vnnlib import read_vnnlib

    _, _, disjuncts = read_vnnlib(vnnlib_path)
    box, specs = disjuncts[0]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    for corner in itertools.product((0, 1), repeat=len(box)):
        x = np.array([box[i, side] for i, side in enumerate(corner)])
        y = session.run(None, {meta.name: x.astype(np.float32).reshape(meta.shape)})[0]
        y = y.reshape(-1).astype(np.float64)
        if any(np.all(mat @ y <= rhs) for mat, rhs in specs):
            return x, y
    raise AssertionError("no corner of the box violates the property")
