"""VNN-COMP result files, as every tool in the competition writes them for one instance.

The first line is the answer: ``sat``, ``unsat``, ``timeout``, ``unknown`` or ``error`` (VNN-COMP
2021 said ``violated`` and ``holds``; its scripts still accept them). After ``sat`` comes the
counterexample as one s-expression of input and output assignments::

    ((X_0 0.25)
     (X_1 -1.5e-3)
     (Y_0 0.7)
     (Y_1 0.2))

Numbers may be separated by any whitespace (alpha-beta-CROWN writes two spaces). Anything else is
an error, never an answer: a tool whose result file cannot be read has not verified anything.
"""
from __future__ import annotations

import math
import re

from bench.verifiers.base import Status, Verdict

_ANSWERS = {
    "sat": Status.SAT,
    "unsat": Status.UNSAT,
    "timeout": Status.TIMEOUT,
    "unknown": Status.UNKNOWN,
    "error": Status.ERROR,
    "violated": Status.SAT,  # VNN-COMP 2021
    "holds": Status.UNSAT,  # VNN-COMP 2021
}
_ENTRY = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def parse_vnncomp_result(text: str, tool: str = "the tool") -> Verdict:
    """The verdict in a VNN-COMP result file's ``text``. ``tool`` names the tool in reasons.

    A ``sat`` whose counterexample is missing or malformed stays ``sat`` without a
    counterexample (the reason says why): VNN-COMP scores such an answer as wrong, and so does
    the harness's counterexample check, while the tool's claim is still recorded as it made it."""
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    status = _ANSWERS.get(first.lower())
    if status is None:
        what = f"first line {first[:80]!r}" if first else "an empty result file"
        return Verdict(Status.ERROR, reason=f"{tool} wrote {what}, not a VNN-COMP answer")
    if status is Status.SAT:
        cex, problem = parse_counterexample("\n".join(lines[1:]))
        if problem:
            return Verdict(Status.SAT, reason=f"{tool} answered sat but its counterexample is "
                                              f"unusable: {problem}")
        return Verdict(Status.SAT, counterexample=cex)
    reasons = {
        Status.TIMEOUT: f"{tool} reported timeout",
        Status.UNKNOWN: f"{tool} reported unknown",
        Status.ERROR: f"{tool} reported error",
    }
    detail = " ".join(line.strip() for line in lines[1:3] if line.strip())
    reason = reasons.get(status, "")
    if reason and detail:
        reason += f": {detail[:200]}"
    return Verdict(status, reason=reason)


def parse_counterexample(text: str) -> tuple[dict[str, list[float]] | None, str]:
    """``({"x": [...], "y": [...]}, "")`` from ``((X_0 v) ... (Y_0 v) ...)``, or
    ``(None, reason)``. ``y`` is absent when the tool reported no outputs."""
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, number in _ENTRY.findall(text):
        try:
            value = float(number)
        except ValueError:
            return None, f"{kind}_{index} is {number!r}, not a number"
        if not math.isfinite(value):
            return None, f"{kind}_{index} is {number}"
        if int(index) in values[kind]:
            return None, f"{kind}_{index} appears twice"
        values[kind][int(index)] = value
    cex: dict[str, list[float]] = {}
    for kind, found in values.items():
        # Indices must be exactly 0..n-1, or the vector would be silently shifted.
        if sorted(found) != list(range(len(found))):
            return None, f"the {kind} indices are not 0..{len(found) - 1}"
        if found:
            cex[kind.lower()] = [found[i] for i in range(len(found))]
    if "x" not in cex:
        return None, "no X values" if text.strip() else "no counterexample after sat"
    return cex, ""
