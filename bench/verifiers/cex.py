"""Check a reported counterexample the way VNN-COMP 2025 scores it.

A verifier that answers ``sat`` must back it with an input ``x`` (and usually the outputs ``y`` it
computed). VNN-COMP runs the ONNX model on ``x`` with onnxruntime and accepts the answer when the
outputs match the reported ``y`` (relative L-inf error at most 1e-3), ``x`` lies in an input box of
the property and the outputs reach that box's unsafe region. Box and unsafe region are checked
first exactly and then with an absolute tolerance of 1e-4; an answer that only holds within the
tolerance is ``correct_up_to_tolerance`` (no penalty for the tool, but it is not a proof).

One deliberate difference from the official script: the unsafe region is evaluated on the
onnxruntime outputs, not on the reported ``y``, so a tool cannot pass by reporting outputs that
are slightly nudged across a tie. Problems with the counterexample give ``invalid``; problems
with the benchmark files themselves raise ``BenchError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.errors import BenchError
from bench.formats.folder import FileProblem, Limits, read_limited
from bench.formats.vnnlib import Disjunct, read_vnnlib

CORRECT = "correct"
CORRECT_UP_TO_TOLERANCE = "correct_up_to_tolerance"
INVALID = "invalid"

ATOL = 1e-4  # input box and unsafe region
RTOL = 1e-3  # reported outputs against onnxruntime
_TINY_NORM = 1e-6  # below this the official script does not divide by ||y|| (relative error 0)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16}


@dataclass(frozen=True)
class CexCheck:
    outcome: str  # correct | correct_up_to_tolerance | invalid
    detail: str

    @property
    def valid(self) -> bool:
        """Whether VNN-COMP would accept the counterexample (no penalty)."""
        return self.outcome in (CORRECT, CORRECT_UP_TO_TOLERANCE)


def check_counterexample(onnx_path: str | Path, vnnlib_path: str | Path,
                         x: Sequence[float] | np.ndarray | None,
                         y: Sequence[float] | np.ndarray | None = None) -> CexCheck:
    """Check ``x`` (flattened in row-major order, as VNN-LIB numbers inputs) and, if given, the
    reported outputs ``y`` against the model and the property."""
    if x is None or len(x) == 0:
        return CexCheck(INVALID, "no counterexample input (x) was reported")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        return CexCheck(INVALID, "the counterexample input contains NaN or infinity")

    session, input_name, input_shape, input_dtype = _load_model(Path(onnx_path))
    size = int(np.prod(input_shape))
    if x.size != size:
        return CexCheck(INVALID, f"x has {x.size} values but the model's input "
                                 f"{list(input_shape)} has {size}")
    outputs = session.run(None, {input_name: x.astype(input_dtype).reshape(input_shape)})
    out = np.asarray(outputs[0], dtype=np.float64).reshape(-1)

    # Bounded: the property's size limit and a linear-time parser (bench.formats.vnnlib).
    n_in, n_out, disjuncts = read_vnnlib(vnnlib_path)
    if n_in != size or n_out != out.size:
        raise BenchError(f"{vnnlib_path} declares {n_in} inputs and {n_out} outputs but "
                         f"{onnx_path} has {size} inputs and {out.size} outputs")

    if y is not None:
        mismatch = _output_mismatch(out, y)
        if mismatch:
            return CexCheck(INVALID, mismatch)

    return _check_unsafe(x, out, disjuncts)


def _load_model(path: Path):
    import onnxruntime as ort

    if not path.is_file():
        raise BenchError(f"cannot check a counterexample: ONNX file {path} does not exist")
    try:
        # Within the size limit of models; a .gz (as VNN-COMP publishes) is read in memory.
        model = read_limited(path, Limits().onnx_bytes)
    except FileProblem as err:
        raise BenchError(f"cannot check a counterexample: ONNX file {path}: {err}") from None
    except OSError as err:
        raise BenchError(f"cannot check a counterexample: cannot read {path}: "
                         f"{err.strerror or err}") from None
    options = ort.SessionOptions()
    # One thread: the check is tiny, and it must not compete with a verifier running alongside.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise BenchError(f"onnxruntime cannot load {path}: {err}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BenchError(f"{path} has {len(inputs)} inputs; VNN-COMP models have exactly one")
    meta = inputs[0]
    # Symbolic dimensions (a dynamic batch) count as 1, as in the official checker.
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in meta.shape)
    dtype = _ORT_TYPES.get(meta.type)
    if dtype is None:
        raise BenchError(f"{path}: unsupported input type {meta.type}")
    return session, meta.name, shape, dtype


def _output_mismatch(out: np.ndarray, y: Sequence[float] | np.ndarray) -> str:
    """A reason when the reported outputs disagree with onnxruntime, else ''."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size != out.size:
        return f"reported outputs do not match: {y.size} values reported, the model has {out.size}"
    if not np.all(np.isfinite(y)):
        return "reported outputs do not match: they contain NaN or infinity"
    diff = float(np.max(np.abs(out - y))) if y.size else 0.0
    norm = float(np.max(np.abs(y))) if y.size else 0.0
    rel = diff / norm if norm >= _TINY_NORM else 0.0
    if rel > RTOL:
        return (f"reported outputs do not match onnxruntime: L-inf difference {diff:.3g}, "
                f"relative {rel:.3g} > {RTOL:g}")
    return ""


def _check_unsafe(x: np.ndarray, out: np.ndarray, disjuncts: list[Disjunct]) -> CexCheck:
    """Exactly inside some box and its unsafe region -> correct; only within ATOL -> up to
    tolerance, naming the disjunct that comes closest to holding exactly; otherwise invalid,
    with the smallest miss as the reason."""
    best_box_miss = np.inf  # how far x is from the nearest box
    best_spec_miss = np.inf  # how far the outputs are from the nearest unsafe region (x in box)
    closest: tuple[float, int, float, float] | None = None  # (worst miss, disjunct, box, spec)
    for index, (box, specs) in enumerate(disjuncts):
        box_miss = _box_excess(x, box)
        best_box_miss = min(best_box_miss, box_miss)
        if box_miss > ATOL:
            continue
        for mat, rhs in specs:
            spec_miss = _spec_excess(out, mat, rhs)
            best_spec_miss = min(best_spec_miss, spec_miss)
            if spec_miss > ATOL:
                continue
            if box_miss <= 0.0 and spec_miss <= 0.0:
                return CexCheck(CORRECT, f"x is in input box #{index} and the onnxruntime "
                                         f"outputs reach its unsafe region")
            worst = max(box_miss, spec_miss)
            if closest is None or worst < closest[0]:
                closest = (worst, index, box_miss, spec_miss)
    if closest is not None:
        _, index, box_miss, spec_miss = closest
        where = (f"x is outside input box #{index} by {box_miss:.3g}" if box_miss > 0.0
                 else f"x is in input box #{index}")
        reach = (f"the onnxruntime outputs miss its unsafe region by {spec_miss:.3g}"
                 if spec_miss > 0.0 else "the onnxruntime outputs reach its unsafe region")
        return CexCheck(CORRECT_UP_TO_TOLERANCE, f"only within tolerance {ATOL:g}: {where} and "
                                                 f"{reach}")
    if best_spec_miss == np.inf:
        return CexCheck(INVALID, f"x is outside every input box of the property (by at least "
                                 f"{best_box_miss:.3g})")
    return CexCheck(INVALID, f"the onnxruntime outputs do not reach the unsafe region (they miss "
                             f"it by at least {best_spec_miss:.3g})")


def _box_excess(x: np.ndarray, box: np.ndarray) -> float:
    """Largest amount by which x leaves the box (<= 0 when inside)."""
    return float(np.max(np.maximum(box[:, 0] - x, x - box[:, 1]), initial=-np.inf))


def _spec_excess(out: np.ndarray, mat: np.ndarray, rhs: np.ndarray) -> float:
    """Largest amount by which ``mat @ out <= rhs`` fails (<= 0 when it holds)."""
    if mat.shape[0] == 0:
        return 0.0  # no output constraint: every output is unsafe
    return float(np.max(mat @ out - rhs))
