"""Write and read VNN-LIB 1.0 properties, as VNN-COMP uses them.

Reading follows VNN-COMP's own reader: a property is a list of ``(box, specs)`` pairs, where
``box`` is an ``(n_inputs, 2)`` array of lower/upper input bounds and ``specs`` is a list of
``(mat, rhs)`` pairs, each meaning ``mat @ y <= rhs`` (all rows). The property's unsafe region is
the union over pairs of ``x in box`` and over specs of ``mat @ y <= rhs``. A property holds
("unsat") when no input in a box reaches any of its specs.
"""
from __future__ import annotations

import re
from itertools import product
from pathlib import Path

import numpy as np

from bench.errors import BenchError

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


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _parse_sexprs(text: str) -> list:
    text = re.sub(r";[^\n]*", "", text)
    stack: list[list] = [[]]
    for token in _TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise BenchError("unbalanced ')' in VNN-LIB file")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise BenchError("unbalanced '(' in VNN-LIB file")
    return stack[0]


class _Atoms:
    """Linear atoms over X_i and Y_j collected while reading one conjunction."""

    def __init__(self, n_in: int, n_out: int):
        self.box = np.tile(np.array([-np.inf, np.inf]), (n_in, 1))
        self.rows: list[np.ndarray] = []
        self.rhs: list[float] = []
        self.n_in, self.n_out = n_in, n_out

    def copy(self) -> "_Atoms":
        other = _Atoms(self.n_in, self.n_out)
        other.box = self.box.copy()
        other.rows, other.rhs = list(self.rows), list(self.rhs)
        return other

    def add(self, op: str, a, b) -> None:
        if op not in ("<=", ">="):
            raise BenchError(f"unsupported VNN-LIB comparison {op!r} (only <= and >=)")
        if op == ">=":
            a, b = b, a
        # now: a <= b
        ta, tb = _term(a), _term(b)
        if ta[0] == "X" and tb[0] == "const":
            self._bound_x(ta[1], upper=tb[1])
        elif ta[0] == "const" and tb[0] == "X":
            self._bound_x(tb[1], lower=ta[1])
        elif ta[0] in ("Y", "const") and tb[0] in ("Y", "const") and "Y" in (ta[0], tb[0]):
            row = np.zeros(self.n_out)
            rhs = 0.0
            for (kind, value), sign in ((ta, 1.0), (tb, -1.0)):
                if kind == "Y":
                    row[value] += sign
                else:
                    rhs -= sign * value
            self.rows.append(row)
            self.rhs.append(rhs)
        else:
            raise BenchError(f"unsupported VNN-LIB constraint ({op} {a} {b})")

    def _bound_x(self, i: int, lower: float | None = None, upper: float | None = None) -> None:
        if i >= self.n_in:
            raise BenchError(f"VNN-LIB file uses X_{i} but declares only {self.n_in} inputs")
        if lower is not None:
            self.box[i, 0] = max(self.box[i, 0], lower)
        if upper is not None:
            self.box[i, 1] = min(self.box[i, 1], upper)


def _term(token) -> tuple[str, float | int]:
    if isinstance(token, list):
        raise BenchError(f"unsupported VNN-LIB term {token}")
    if token.startswith("X_"):
        return "X", int(token[2:])
    if token.startswith("Y_"):
        return "Y", int(token[2:])
    try:
        return "const", float(token)
    except ValueError:
        raise BenchError(f"unexpected VNN-LIB token {token!r}") from None


# A crafted file of nested (and (or ..) (or ..) ..) expands exponentially; real properties have
# at most a few thousand disjuncts.
MAX_DISJUNCTS = 100_000


def _conjunctions(expr) -> list[list]:
    """Expand an (or ...)/(and ...)/atom expression into a list of atom lists (DNF)."""
    head = expr[0]
    if head == "and":
        parts = [_conjunctions(e) for e in expr[1:]]
        count = 1
        for part in parts:
            count *= len(part)
            if count > MAX_DISJUNCTS:
                raise BenchError(f"VNN-LIB property expands to more than {MAX_DISJUNCTS} "
                                 "disjuncts; refusing it")
        return [sum(combo, []) for combo in product(*parts)]
    if head == "or":
        return [conj for e in expr[1:] for conj in _conjunctions(e)]
    return [[expr]]


def parse_vnnlib(text: str) -> tuple[int, int, list[Disjunct]]:
    """Parse VNN-LIB 1.0 text; returns ``(n_inputs, n_outputs, disjuncts)``."""
    exprs = _parse_sexprs(text)
    n_in = n_out = 0
    asserts = []
    for expr in exprs:
        if not isinstance(expr, list) or not expr:
            raise BenchError(f"unexpected top-level VNN-LIB expression {expr!r}")
        if expr[0] == "declare-const":
            name = expr[1]
            if name.startswith("X_"):
                n_in = max(n_in, int(name[2:]) + 1)
            elif name.startswith("Y_"):
                n_out = max(n_out, int(name[2:]) + 1)
            else:
                raise BenchError(f"unexpected VNN-LIB variable {name!r}")
        elif expr[0] == "assert":
            asserts.append(expr[1])
        else:
            raise BenchError(f"unsupported VNN-LIB command {expr[0]!r}")
    conjunctions: list[_Atoms] = [_Atoms(n_in, n_out)]
    for expr in asserts:
        expanded = _conjunctions(expr)
        if len(expanded) * len(conjunctions) > MAX_DISJUNCTS:
            raise BenchError(f"VNN-LIB property expands to more than {MAX_DISJUNCTS} disjuncts; "
                             "refusing it")
        new = []
        for base in conjunctions:
            for conj in expanded:
                atoms = base.copy()
                for atom in conj:
                    atoms.add(atom[0], atom[1], atom[2])
                new.append(atoms)
        conjunctions = new
    # Group specs by input box, as VNN-COMP's reader does.
    disjuncts: list[Disjunct] = []
    for atoms in conjunctions:
        mat = np.array(atoms.rows).reshape(-1, n_out)
        spec = (mat, np.array(atoms.rhs, dtype=np.float64))
        for box, specs in disjuncts:
            if np.array_equal(box, atoms.box):
                specs.append(spec)
                break
        else:
            disjuncts.append((atoms.box, [spec]))
    return n_in, n_out, disjuncts


def read_vnnlib(path: str | Path) -> tuple[int, int, list[Disjunct]]:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"cannot read VNN-LIB file {path}: {err}") from None
    try:
        return parse_vnnlib(text)
    except BenchError as err:
        raise BenchError(f"{path}: {err}") from None
