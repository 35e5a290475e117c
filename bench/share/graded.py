"""``bench pack --select graded``: instances chosen by measured difficulty to fill a budget.

The candidates are the source benchmark's instances graded by ``bench.collate.difficulty`` from
the given results databases: ``easy``, ``medium``, ``hard`` and ``open`` ones, and ``trivial``
ones only on request (a cascade's clean check, attack or bounds decide them, which tells a
verifier author nothing). ``disputed`` instances (verifiers disagree: no trustworthy reference
answer) and ``unmeasured`` ones (no result) are never chosen; the README counts them.

The rule (``select_graded``), deterministic: the candidates of each difficulty class are split
by their expected outcome (``unsat``, ``sat``; ``open`` ones have none) and put in a fixed
pseudo-random order (``numpy.random.default_rng(0)``) that cycles through the levels. Then, round
after round, every class that still has candidates gives one instance, in the order hard, open,
medium, easy (trivial), alternating expected ``unsat`` and ``sat`` within a class where it has
both; an instance whose timeout no longer fits the budget (the sum of timeouts) is passed over.
So the classes are as equally represented as the benchmark allows, expected outcomes are
balanced within each class, and the levels are spread within both; a class that runs out
leaves its share to the others.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bench.collate.difficulty import CLASSES, BenchmarkDifficulty, InstanceDifficulty
from bench.collate.render import markdown_table
from bench.errors import BenchError
from bench.formats.folder import VNNCOMP_MAX_TOTAL_TIMEOUT

ORDER = ("hard", "open", "medium", "easy", "trivial")  # who gives first in a round
EXPECTED = ("unsat", "sat", "undecided")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``6h``, ``90m``, ``30min``, ``3600s``, ``1.5h`` or a bare number of seconds;
    a ``BenchError`` naming the problem otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(s|m|min|h)?\s*",
                         str(text))
    value = float(match.group(1)) * _UNITS[match.group(2) or ""] if match else math.nan
    if not (math.isfinite(value) and value > 0):
        raise BenchError(f"cannot read the duration {text!r}; write e.g. 6h, 90m or 3600 "
                         "(seconds)")
    return value


def check_budget(budget: float) -> float:
    if not (math.isfinite(budget) and 0 < budget <= VNNCOMP_MAX_TOTAL_TIMEOUT):
        raise BenchError(f"the budget (sum of timeouts) must be more than 0 and at most "
                         f"VNN-COMP's cap of {VNNCOMP_MAX_TOTAL_TIMEOUT:g} s (6h), got "
                         f"{budget:g} s")
    return budget


@dataclass
class GradedSelection:
    chosen: list[InstanceDifficulty]  # ordered by level, then sample
    budget: float
    include_trivial: bool
    excluded: Counter = field(default_factory=Counter)  # class -> left out by the rule
    over_budget: Counter = field(default_factory=Counter)  # class -> passed over: no room

    @property
    def total_timeout(self) -> float:
        return sum(float(i.timeout) for i in self.chosen)

    @property
    def levels(self) -> list[int]:
        return sorted({i.level for i in self.chosen})


def _expected(item: InstanceDifficulty) -> str:
    return item.outcome if item.outcome in ("sat", "unsat") else "undecided"


def select_graded(assessed: BenchmarkDifficulty, budget: float,
                  include_trivial: bool = False) -> GradedSelection:
    """The graded selection of ``assessed``'s instances within ``budget`` seconds of timeouts
    (see the module docstring). ``BenchError`` when no instance qualifies."""
    check_budget(budget)
    allowed = set(ORDER) - (set() if include_trivial else {"trivial"})
    selection = GradedSelection([], budget, include_trivial)
    candidates = []
    for item in assessed.instances:
        if item.difficulty in allowed and item.timeout is not None and item.level is not None:
            candidates.append(item)
        else:
            selection.excluded[item.difficulty] += 1
    if not candidates:
        found = ", ".join(f"{n} {c}" for c, n in sorted(selection.excluded.items())) or "none"
        raise BenchError(
            f"no instance of {assessed.benchmark} qualifies for a graded selection (found: "
            f"{found}); run more verifiers, longer timeouts, or pass --include-trivial")
    order = np.random.default_rng(0).permutation(len(candidates))
    rank = {id(candidates[k]): position for position, k in enumerate(order)}
    # class -> expected outcome -> level -> its candidates, next one last (for pop()).
    queues: dict[str, dict[str, dict[int, list[InstanceDifficulty]]]] = {}
    for item in sorted(candidates, key=lambda i: -rank[id(i)]):
        queues.setdefault(item.difficulty, {}).setdefault(_expected(item), {}) \
            .setdefault(item.level, []).append(item)
    last: dict[str, str] = {}
    taken: Counter = Counter()  # chosen instances per level
    used = 0.0
    while queues:
        for name in ORDER:
            buckets = queues.get(name)
            if not buckets:
                continue
            # Alternate expected outcomes within the class: the one not taken last, if any.
            expected = next((e for e in EXPECTED if e in buckets and e != last.get(name)),
                            next(iter(buckets)))
            levels = buckets[expected]
            level = min(levels, key=lambda lv: (taken[lv], rank[id(levels[lv][-1])]))
            item = levels[level].pop()
            for emptied, holder in ((level, levels), (expected, buckets), (name, queues)):
                if not holder[emptied]:
                    del holder[emptied]
            last[name] = expected
            if used + float(item.timeout) <= budget + 1e-9:
                selection.chosen.append(item)
                taken[item.level] += 1
                used += float(item.timeout)
            else:
                selection.over_budget[name] += 1
    selection.chosen.sort(key=lambda i: (i.level, i.sample_index if i.sample_index is not None
                                         else -1, i.vnnlib))
    if not selection.chosen:
        raise BenchError(f"not one instance of {assessed.benchmark} fits the budget of "
                         f"{budget:g} s (its timeouts are longer); raise --budget")
    return selection


# --- README -----------------------------------------------------------------------------------

def rule_text(selection: GradedSelection) -> str:
    trivial = "trivial ones included (--include-trivial)" if selection.include_trivial else \
        "trivial ones left out (--include-trivial keeps them)"
    return ("Graded selection: the instances were graded by measured difficulty (below); "
            "easy, medium, hard and open ones are candidates, " + trivial + "; disputed and "
            "unmeasured ones never. Round after round, each difficulty class that still has "
            "candidates gives one instance (hard, open, medium, easy, trivial), alternating "
            "expected unsat and sat within a class, from the level with the fewest instances "
            "chosen so far (ties broken by a fixed pseudo-random order, numpy default_rng(0)); "
            "an instance whose timeout no longer fits the budget is passed over. So the classes are as equally represented as the "
            "measurements allow and expected outcomes are balanced within each class.")


def mix_table(selection: GradedSelection) -> tuple[list[str], list[list[str]]]:
    """Chosen instances per difficulty class and expected outcome (Markdown cells)."""
    headers = ["difficulty", "expected unsat", "expected sat", "open (no reference)", "total",
               "timeouts (s)"]
    rows = []
    for name in [c for c in CLASSES if c in ORDER]:
        members = [i for i in selection.chosen if i.difficulty == name]
        if not members and name == "trivial" and not selection.include_trivial:
            continue
        counts = Counter(_expected(i) for i in members)
        rows.append([name, *(str(counts.get(e, 0)) for e in EXPECTED), str(len(members)),
                     f"{sum(float(i.timeout) for i in members):g}"])
    counts = Counter(_expected(i) for i in selection.chosen)
    rows.append(["all", *(str(counts.get(e, 0)) for e in EXPECTED), str(len(selection.chosen)),
                 f"{selection.total_timeout:g}"])
    return headers, rows


def readme_lines(selection: GradedSelection, assessed: BenchmarkDifficulty,
                 sources: Sequence[str]) -> list[str]:
    """The README's account of the graded selection."""
    headers, cells = mix_table(selection)
    left_out = [f"{n} {name}" for name, n in sorted(selection.excluded.items())]
    passed = [f"{n} {name}" for name, n in sorted(selection.over_budget.items())]
    levels = Counter(i.level for i in selection.chosen)
    return [
        "## Selection: graded by measured difficulty",
        "",
        f"- {rule_text(selection)}",
        f"- Budget: {selection.budget:g} s of timeouts (VNN-COMP's cap: "
        f"{VNNCOMP_MAX_TOTAL_TIMEOUT:g} s); used: {selection.total_timeout:g} s by "
        f"{len(selection.chosen)} instances on {len(selection.levels)} models (levels "
        + ", ".join(f"{level}: {levels[level]}" for level in selection.levels) + ").",
        f"- Difficulty classes: {assessed.thresholds.describe()}. Times are wall times less "
        "start-up where recorded; the reference time of an instance is the fastest answer that "
        "agrees with its reference outcome.",
        f"- Measured by: {', '.join(assessed.verifiers)}; results databases: "
        f"{', '.join(sources)}.",
        "- Left out by the rule: " + (", ".join(left_out) or "none") + "; passed over for "
        "lack of budget: " + (", ".join(passed) or "none") + ".",
        "",
        *markdown_table(headers, cells),
        "",
    ]
