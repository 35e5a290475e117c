"""Write and read VNN-LIB 1.0 properties, as VNN-COMP uses them.

Reading follows VNN-COMP's own reader: a property is a list of ``(box, specs)`` pairs, where
``box`` is an ``(n_inputs, 2)`` array of lower/upper input bounds and ``specs`` is a list of
``(mat, rhs)`` pairs, each meaning ``mat @ y <= rhs`` (all rows). The property's unsafe region is
the union over pairs of ``x in box`` and over specs of ``mat @ y <= rhs``. A property holds
("unsat") when no input in a box reaches any of its specs.
"""
from __future__ import annotations

import math
import re
from itertools import chain, product
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.formats.folder import FileProblem, Limits, read_limited

Spec = tuple[np.ndarray, np.ndarray]
Disjunct = tuple[np.ndarray, list[Spec]]


def robustness_property(x: np.ndarray, label: int, eps: float, num_outputs: int,
                        lower: float = 0.0, upper: float = 1.0) -> str:
    """L-inf ball of radius ``eps`` around ``x`` (clipped to ``[lower, upper]``); unsafe when
    some other logit is >= the true one. Inputs are numbered in row-major (C) order."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    lo = np.clip(flat - eps, lower, upper)
    hi = np.clip(flat + eps, lower, upper)
    lines = [f"; L-inf robustness: label {label}, eps {eps!r}, {flat.size} inputs, {num_outputs} outputs"]
    lines += [f"(declare-const X_{i} Real)" for i in range(flat.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_outputs)]
    for i in range(flat.size):
        # repr() round-trips a float64 exactly, so the file says exactly what the manifest says.
        lines.append(f"(assert (<= X_{i} {float(hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo[i])!r}))")
    others = [j for j in range(num_outputs) if j != label]
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in others]
    lines.append("))")
    return "\n".join(lines) + "\n"


# --- reading --------------------------------------------------------------------------------
#
# Reading is linear in the file's size and its memory bounded, whatever the file says:
# - one pass of one regular expression; the common lines ``(declare-const X_1 Real)`` and
#   ``(assert (<= X_1 0.5))`` are matched whole, anything else token by token;
# - no allocation depends on a number written in the file: the inputs and outputs are counted
#   from their declarations (``X_0`` .. ``X_{n-1}``, declared before use), and an index is
#   checked against that count, never used as a size (``X_99999999999999``, ``X_-1`` are refused);
# - the top-level conjunction (the input box of VNN-COMP's properties) is kept once, not copied
#   into each disjunct; expanding nested ``and``/``or`` is refused beyond ``MAX_DISJUNCTS``
#   disjuncts or ``MAX_ATOMS`` atoms, and the arrays built beyond ``MAX_VALUES`` numbers;
# - nesting deeper than ``MAX_DEPTH`` is refused (real properties nest three or four deep).
# With the size limit on properties (``bench.formats.folder.Limits.vnnlib_bytes``), that bounds
# the time and memory of every read, in ``bench check`` and in the counterexample check alike.

# A crafted file of nested (and (or ..) (or ..) ..) expands exponentially; real properties have
# at most a few thousand disjuncts.
MAX_DISJUNCTS = 100_000
MAX_ATOMS = 1 << 23  # atoms over all disjuncts, after expansion (a 64 MiB file holds ~5 million)
MAX_VALUES = 1 << 24  # numbers in the boxes and output matrices built (128 MiB of float64)
MAX_DEPTH = 64

_NAME = r"[^\s();]+"
# Each part of a numeral matches one way only: an ambiguous pattern (``[0-9]+\.?[0-9]*``)
# backtracks quadratically over a long run of digits that fails to end well.
_NUMERAL = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_SCAN = re.compile(
    # (assert (<= X_12 0.5)): most of a property, read without building any list
    rf"(?P<bound>\(\s*assert\s*\(\s*(?P<op>[<>]=)\s+X_(?P<input>[0-9]{{1,9}})\s+"
    rf"(?P<value>{_NUMERAL})\s*\)\s*\))"
    rf"|(?P<declaration>\(\s*declare-const\s+(?P<name>{_NAME})\s+(?P<sort>{_NAME})\s*\))"
    rf"|(?P<comment>;[^\n]*)|(?P<open>\()|(?P<close>\))|(?P<token>{_NAME})")
_VARIABLE = re.compile(r"([XY])_([0-9]+)")
_NUMBER = re.compile(_NUMERAL)
_MAX_INDEX_DIGITS = 9  # no file within the size limit declares a billion variables

# An atom, after reading: ("X", input index, 0 for a lower / 1 for an upper bound, value) or
# ("Y", ((output index, coefficient), ...), rhs) meaning sum(coefficient * Y) <= rhs.
Atom = tuple


def parse_vnnlib(text: str) -> tuple[int, int, list[Disjunct]]:
    """Parse VNN-LIB 1.0 text; returns ``(n_inputs, n_outputs, disjuncts)``. Raises
    ``BenchError`` for anything it does not read (see the comment above for the limits)."""
    return _Reader().read(text)


class _Reader:
    def __init__(self) -> None:
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        # The top-level conjunction: input bounds by index, output rows.
        self.bounds: tuple[dict[int, float], dict[int, float]] = ({}, {})
        self.rows: list[Atom] = []
        self.choices: list[list[list[Atom]]] = []  # asserts with several disjuncts
        self.values = 0

    def read(self, text: str) -> tuple[int, int, list[Disjunct]]:
        stack: list[list] = []
        for match in _SCAN.finditer(text):
            kind = match.lastgroup
            if kind == "comment":
                continue
            if kind == "open":
                if len(stack) >= MAX_DEPTH:
                    raise BenchError(f"VNN-LIB expression nested more than {MAX_DEPTH} deep")
                stack.append([])
                continue
            if kind == "token":
                if not stack:
                    raise BenchError(f"unexpected top-level VNN-LIB expression "
                                     f"{match.group()[:40]!r}")
                stack[-1].append(match.group())
                continue
            if kind == "close":
                if not stack:
                    raise BenchError("unbalanced ')' in VNN-LIB file")
                expr = stack.pop()
            elif kind == "bound":
                if not stack:
                    self.bound(match)
                    continue
                expr = ["assert", [match["op"], f"X_{match['input']}", match["value"]]]
            else:
                expr = ["declare-const", match["name"], match["sort"]]
            if stack:
                stack[-1].append(expr)
            else:
                self.command(expr)
        if stack:
            raise BenchError("unbalanced '(' in VNN-LIB file")
        return self.build()

    def bound(self, match: re.Match) -> None:
        """A top-level ``(assert (<= X_i c))`` or ``(>= X_i c)``: the common case, fast."""
        index, value = int(match["input"]), float(match["value"])
        if index not in self.declared["X"] or not math.isfinite(value):
            self.term(f"X_{match['input']}")
            self.term(match["value"])  # raises: the variable is not declared or c is not finite
        if match["op"] == "<=":
            upper = self.bounds[1]
            upper[index] = min(upper.get(index, math.inf), value)
        else:
            lower = self.bounds[0]
            lower[index] = max(lower.get(index, -math.inf), value)

    def command(self, expr: list) -> None:
        head = expr[0] if expr else None
        if head == "declare-const" and len(expr) == 3:
            self.declare(expr[1], expr[2])
        elif head == "assert" and len(expr) == 2:
            disjuncts = self.dnf(expr[1])
            if len(disjuncts) == 1:
                self.conjoin(disjuncts[0])
            else:
                self.choices.append(disjuncts)
        else:
            raise BenchError(f"unsupported VNN-LIB command {_show(expr)}")

    def declare(self, name, sort) -> None:
        match = _VARIABLE.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise BenchError(f"unexpected VNN-LIB variable {_show(name)}")
        if sort != "Real":
            raise BenchError(f"unsupported VNN-LIB sort {_show(sort)} of {name} (only Real)")
        kind, index = match[1], self.index(match)
        if index in self.declared[kind]:
            raise BenchError(f"VNN-LIB file declares {name} twice")
        self.declared[kind].add(index)

    def index(self, match: re.Match) -> int:
        digits = match[2]
        if len(digits) > _MAX_INDEX_DIGITS:
            raise BenchError(f"VNN-LIB variable {match[0][:40]} has an index beyond any input or "
                             "output count")
        return int(digits)

    # -- atoms and expressions

    def term(self, token) -> tuple[str, float | int]:
        if isinstance(token, list):
            raise BenchError(f"unsupported VNN-LIB term {_show(token)}")
        match = _VARIABLE.fullmatch(token)
        if match:
            kind, index = match[1], self.index(match)
            declared = self.declared[kind]
            if index not in declared:
                what = "inputs" if kind == "X" else "outputs"
                raise BenchError(f"VNN-LIB file uses {token} but declares only {len(declared)} "
                                 f"{what} before it")
            return kind, index
        if _NUMBER.fullmatch(token):
            value = float(token)
            if math.isfinite(value):
                return "const", value
        raise BenchError(f"unexpected VNN-LIB token {_show(token)} (a variable X_i or Y_j, "
                         "i, j >= 0, or a finite number)")

    def atom(self, op, a, b) -> Atom:
        if op not in ("<=", ">="):
            raise BenchError(f"unsupported VNN-LIB comparison {_show(op)} (only <= and >=)")
        if op == ">=":
            a, b = b, a
        # now: a <= b
        (kind_a, a_value), (kind_b, b_value) = self.term(a), self.term(b)
        if kind_a == "X" and kind_b == "const":
            return ("X", a_value, 1, b_value)
        if kind_a == "const" and kind_b == "X":
            return ("X", b_value, 0, a_value)
        if {kind_a, kind_b} <= {"Y", "const"} and "Y" in (kind_a, kind_b):
            coefficients, rhs = [], 0.0
            for (kind, value), sign in (((kind_a, a_value), 1.0), ((kind_b, b_value), -1.0)):
                if kind == "Y":
                    coefficients.append((value, sign))
                else:
                    rhs -= sign * value
            return ("Y", tuple(coefficients), rhs)
        raise BenchError(f"unsupported VNN-LIB constraint ({op} {_show(a)} {_show(b)})")

    def dnf(self, expr) -> list[list[Atom]]:
        """``expr`` as a disjunction of conjunctions of atoms, within the budgets."""
        if not isinstance(expr, list) or not expr:
            raise BenchError(f"unsupported VNN-LIB expression {_show(expr)}")
        head = expr[0]
        if head == "and":
            return _product([self.dnf(e) for e in expr[1:]])
        if head == "or":
            disjuncts, atoms = [], 0
            for e in expr[1:]:
                part = self.dnf(e)
                disjuncts += part
                atoms += sum(map(len, part))
                _within_budget(len(disjuncts), atoms)
            return disjuncts
        if len(expr) != 3:
            raise BenchError(f"unsupported VNN-LIB expression {_show(expr)}")
        return [[self.atom(*expr)]]

    def conjoin(self, atoms: list[Atom]) -> None:
        """Add atoms to the top-level conjunction."""
        lower, upper = self.bounds
        for atom in atoms:
            if atom[0] == "X":
                _, index, is_upper, value = atom
                if is_upper:
                    upper[index] = min(upper.get(index, math.inf), value)
                else:
                    lower[index] = max(lower.get(index, -math.inf), value)
            else:
                self.rows.append(atom)

    # -- the result

    def spend(self, values: int) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            raise BenchError(f"VNN-LIB property needs more than {MAX_VALUES} numbers in its "
                             "boxes and output constraints; refusing it")

    def count(self, kind: str) -> int:
        declared = self.declared[kind]
        if declared and max(declared) != len(declared) - 1:
            raise BenchError(f"VNN-LIB file declares {len(declared)} {kind} variables but not "
                             f"{kind}_0 .. {kind}_{len(declared) - 1}")
        return len(declared)

    def build(self) -> tuple[int, int, list[Disjunct]]:
        n_in, n_out = self.count("X"), self.count("Y")
        self.spend(2 * n_in)
        base = np.empty((n_in, 2))
        base[:, 0], base[:, 1] = -np.inf, np.inf
        for column, bounds in enumerate(self.bounds):
            if bounds:
                base[list(bounds), column] = list(bounds.values())
        # Group specs by input box, as VNN-COMP's reader does (by value, in a dict: linear).
        boxes: dict[bytes, Disjunct] = {}
        for conjunction in _product(self.choices):
            box = base
            own = [atom for atom in conjunction if atom[0] == "X"]
            if own:
                self.spend(2 * n_in)
                box = base.copy()
                for _, index, is_upper, value in own:
                    box[index, is_upper] = (min if is_upper else max)(box[index, is_upper], value)
            rows = self.rows + [atom for atom in conjunction if atom[0] == "Y"]
            self.spend(len(rows) * n_out)
            mat = np.zeros((len(rows), n_out))
            for row, (_, coefficients, _) in enumerate(rows):
                for index, coefficient in coefficients:
                    mat[row, index] += coefficient
            spec = (mat, np.array([atom[2] for atom in rows], dtype=np.float64))
            boxes.setdefault(box.tobytes(), (box, []))[1].append(spec)
        return n_in, n_out, list(boxes.values())


def _product(parts: list[list[list[Atom]]]) -> list[list[Atom]]:
    """The conjunction of disjunctions as one disjunction, refused beyond the budgets before
    anything is built."""
    count = math.prod(len(part) for part in parts)
    if count == 0:
        return []
    atoms = sum(sum(map(len, part)) * (count // len(part)) for part in parts)
    _within_budget(count, atoms)
    return [list(chain.from_iterable(combo)) for combo in product(*parts)]


def _within_budget(disjuncts: int, atoms: int) -> None:
    if disjuncts > MAX_DISJUNCTS or atoms > MAX_ATOMS:
        raise BenchError(f"VNN-LIB property expands to more than {MAX_DISJUNCTS} disjuncts or "
                         f"{MAX_ATOMS} atoms; refusing it")


def _show(expr) -> str:
    text = repr(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def read_vnnlib(path: str | Path, limits: Limits | None = None) -> tuple[int, int, list[Disjunct]]:
    """Read a VNN-LIB 1.0 file (or its ``.gz``) within the size limit of properties."""
    path = Path(path)
    limit = (limits or Limits()).vnnlib_bytes
    try:
        text = read_limited(path, limit).decode("utf-8")
    except FileProblem as err:
        raise BenchError(f"cannot read VNN-LIB file {path}: {err}") from None
    except OSError as err:
        raise BenchError(f"cannot read VNN-LIB file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise BenchError(f"cannot read VNN-LIB file {path}: not UTF-8 text ({err.reason} at "
                         f"byte {err.start})") from None
    try:
        return parse_vnnlib(text)
    except BenchError as err:
        raise BenchError(f"{path}: {err}") from None
