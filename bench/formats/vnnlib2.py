"""Write VNN-LIB 2.0 properties (https://www.vnnlib.org), in the dialect the PyPI ``vnnlib``
package (1.0.x) parses and type-checks.

Our L-inf robustness property, for an 8x8 grey image and 10 classes, reads::

    (vnnlib-version <2.0>)
    (declare-network N
        (declare-input X float32 [1,1,8,8])
        (declare-output Y float32 [1,10]))
    (assert (>= X[0,0,0,0] 0.0))
    (assert (<= X[0,0,0,0] 0.1))
    ...
    (assert (or
        (>= Y[0,1] Y[0,0])
        ...))

Differences from 1.0 that shape the writer:

- Variables are whole tensors with the ONNX input's shape (batch dimension included), indexed
  ``X[0,c,h,w]``; ``vnnlib.compat.transform`` flattens them in row-major order, the order of
  1.0's ``X_i``.
- Numbers have no exponent (the grammar's ``Number`` is ``-?digit+(.digit+)?``) and, since the
  tensors are float32, every constant must be written with a decimal point: ``1`` is an integer
  constant and a type error against a float32 tensor. We write the shortest positional decimal
  that round-trips the float64 bound, so the file says exactly what the 1.0 file says.
- The grammar allows an ONNX tensor name after a declaration's shape, but vnnlib 1.0.2 rejects
  it on ``declare-input``/``declare-output`` (only ``declare-hidden`` takes one), so none is
  written: our networks have one input and one output, matched by position.
- Each bound is its own ``assert``: ``vnnlib.compat.transform`` 1.0.2 splits an assertion of
  the form ``(and ...)`` over input bounds into separate cases instead of one box.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

VERSION_HEADER = "(vnnlib-version <2.0>)"


def format_number(value: float) -> str:
    """A float as VNN-LIB 2.0 wants it: positional (no exponent), always with a decimal point,
    and exactly the float64 ``value`` when read back."""
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"VNN-LIB has no literal for {value}")
    # unique=True: the shortest digits that round-trip; trim="0" keeps one digit after the
    # point ("1.0", never "1." nor "1"), which the float32 type check requires.
    text = np.format_float_positional(value, unique=True, trim="0")
    return "0.0" if text == "-0.0" else text


def _index(flat: int, shape: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in np.unravel_index(flat, tuple(shape)))


def robustness_property_v2(x: np.ndarray, label: int, eps: float, num_outputs: int,
                           input_shape: Sequence[int] | None = None, network: str = "N",
                           lower: float = 0.0, upper: float = 1.0) -> str:
    """The property of ``bench.formats.vnnlib.robustness_property`` in VNN-LIB 2.0: the L-inf ball of
    radius ``eps`` around ``x`` clipped to ``[lower, upper]``, unsafe when some other logit is
    >= the true one.

    ``input_shape`` is the ONNX input's shape; by default ``(1, *x.shape)``: ``x`` is one sample
    and the exported models take a batch of one. The output is declared ``[1, num_outputs]``."""
    if num_outputs < 2 or not 0 <= label < num_outputs:
        raise ValueError(f"need 0 <= label < num_outputs and num_outputs >= 2 "
                         f"(got label {label}, num_outputs {num_outputs})")
    array = np.asarray(x, dtype=np.float64)
    shape = tuple(int(d) for d in (input_shape if input_shape is not None
                                   else (1, *array.shape)))
    flat = array.reshape(-1)
    if int(np.prod(shape)) != flat.size:
        raise ValueError(f"input_shape {shape} does not hold the sample's {flat.size} values")
    # The same arithmetic as the 1.0 writer, so both files bound the same box.
    lo = np.clip(flat - eps, lower, upper)
    hi = np.clip(flat + eps, lower, upper)
    out_shape = (1, num_outputs)
    lines = [
        VERSION_HEADER,
        f"; L-inf robustness: label {label}, eps {eps!r}, {flat.size} inputs, "
        f"{num_outputs} outputs",
        f"(declare-network {network}",
        f"    (declare-input X float32 [{','.join(map(str, shape))}])",
        f"    (declare-output Y float32 [{','.join(map(str, out_shape))}]))",
    ]
    for i in range(flat.size):
        at = _index(i, shape)
        lines.append(f"(assert (>= X[{at}] {format_number(lo[i])}))")
        lines.append(f"(assert (<= X[{at}] {format_number(hi[i])}))")
    true_logit = f"Y[{_index(label, out_shape)}]"
    lines.append("(assert (or")
    lines += [f"    (>= Y[{_index(j, out_shape)}] {true_logit})"
              for j in range(num_outputs) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


def is_vnnlib2(text: str) -> bool:
    """Whether ``text`` is a VNN-LIB 2.0 file: 2.0 starts with its version command, which 1.0
    does not have."""
    for line in io.StringIO(text):  # lazily: the first statement decides
        stripped = line.split(";", 1)[0].strip()
        if stripped:
            return stripped.replace(" ", "").startswith("(vnnlib-version")
    return False
