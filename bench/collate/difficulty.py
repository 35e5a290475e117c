"""How hard each instance is, measured: reference outcome, time per verifier, difficulty class.

From the rows of one or more results databases (``read_results_rows``) and the benchmark's
manifest, every instance the manifest lists gets (``assess_benchmark``):

- per verifier, its answer: status, solve time, ``decided_by``, and whether a ``sat`` carries a
  valid counterexample (``bench.collate.check_results``' rule, VNN-COMP 2025's);
- a **reference outcome**, never resolved silently when verifiers disagree:

  ``sat``        some verifier holds a valid counterexample, or the model misclassifies the
                 clean sample (the manifest's ``correct`` is false: the clean input is itself a
                 counterexample), and no verifier answered ``unsat``;
  ``unsat``      some verifier answered ``unsat`` and none answered ``sat``;
  ``disputed``   ``unsat`` against a ``sat`` (with or without a valid counterexample) or against
                 a misclassified sample. The note says who said what; such an instance is never
                 graded, packed as graded, or counted as solved by anyone;
  ``undecided``  answers, but none decisive (``timeout``, ``unknown``, ``error``, or a ``sat``
                 without a valid counterexample, which decides nothing);
  ``none``       no result at all;

- the **reference time**: the fastest solve time among the answers that agree with the
  reference outcome (the virtual best solver's);
- a **difficulty class** (``CLASSES``):

  ``trivial``    decided by a cascade's cheap stage (``decided_by`` set and not starting with
                 ``verifier``: ``clean``, ``attack``, ``bounds:...``) in some agreeing answer, or
                 a misclassified sample (decided by looking at the clean input);
  ``easy``       decided, reference time <= ``Thresholds.easy`` x the instance's timeout;
  ``medium``     decided, reference time <= ``Thresholds.medium`` x the timeout;
  ``hard``       decided, slower than that;
  ``open``       outcome ``undecided``: no verifier decided it within its timeout;
  ``disputed``   outcome ``disputed``;
  ``unmeasured`` no result.

  The default thresholds are 5 % and 25 % of the timeout (3 s and 15 s at 60 s; 15 s and 75 s
  at VNN-COMP's common 300 s). They are fractions of the timeout, so a class means the same share
  of the time a verifier is given whatever the benchmark's timeout.

A **solve time** is a row's ``wall_time`` less its ``startup_time`` where the row records one
(interpreter start and imports say nothing about the instance; VNN-COMP likewise subtracts each
tool's overhead), else its ``wall_time``.

The **predicted hardness** of an instance (``hardness_score``) needs no verifier: the number of
unstable ReLUs under the property's box from the build's CROWN bounds (the manifest's
``unstable_relus``), and 0 for a misclassified sample (a counterexample without search). Every
unstable ReLU is a binary variable of a MILP and a possible split of a branch and bound, so more
of them predicts a longer search; how well it does is measured (``bench.collate.hardness``).

Rows from several databases are combined per (benchmark, onnx, vnnlib, verifier) with
``bench merge``'s rule: a decided row beats an ``error``; between two decided rows (or two
errors) the one started later wins.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from bench.collate.check_results import VALID_CEX
from bench.collate.tables import benchmark_manifests, instance_key
from bench.errors import BenchError
from bench.run.results import KEY, read_rows
from bench.verifiers.base import Status

CLASSES = ("trivial", "easy", "medium", "hard", "open", "disputed", "unmeasured")
# The classes a graded benchmark is made of; trivial ones only on request.
GRADED_CLASSES = ("easy", "medium", "hard", "open")
OUTCOMES = ("sat", "unsat", "disputed", "undecided", "none")
CHEAP_PREFIX = "verifier"  # decided_by of the verifier stage; anything else is a cheap stage
REFERENCE = "virtual best"  # the reference "verifier": the fastest agreeing answer


@dataclass(frozen=True)
class Thresholds:
    """Time limits of the easy and medium classes, as fractions of the instance's timeout."""

    easy: float = 0.05
    medium: float = 0.25

    def __post_init__(self) -> None:
        if not (0 < self.easy < self.medium < 1):
            raise BenchError(f"difficulty thresholds must satisfy 0 < easy < medium < 1 (as "
                             f"fractions of the timeout), got easy={self.easy}, "
                             f"medium={self.medium}")

    def classify(self, time: float, timeout: float) -> str:
        if time <= self.easy * timeout:
            return "easy"
        return "medium" if time <= self.medium * timeout else "hard"

    def describe(self) -> str:
        return (f"easy: decided within {self.easy:.0%} of the timeout; medium: within "
                f"{self.medium:.0%}; hard: decided, but slower; open: no verifier decided it; "
                "trivial: decided by a cheap stage of a cascade (clean check, attack, bounds) "
                "or a misclassified sample")


DEFAULT_THRESHOLDS = Thresholds()


# --- reading ----------------------------------------------------------------------------------

def _rank(row: dict) -> tuple[bool, str]:
    return row["status"] != Status.ERROR.value, row["started_at"] or ""


def read_results_rows(paths: Iterable[str | Path]) -> list[dict]:
    """The rows of every database in ``paths`` (``read_rows``), one per key, combined as
    ``bench merge`` would (see the module docstring). ``BenchError`` without any path or row."""
    combined: dict[tuple, dict] = {}
    paths = list(paths)
    if not paths:
        raise BenchError("no results database given; pass --results (repeatable)")
    for path in paths:
        for row in read_rows(Path(path)):
            key = tuple(row[k] for k in KEY)
            if key not in combined or _rank(row) > _rank(combined[key]):
                combined[key] = row
    if not combined:
        raise BenchError(f"no results in {', '.join(map(str, paths))}; run `bench run` first")
    return list(combined.values())


def solve_time(row: dict) -> float | None:
    """The row's wall time less its start-up time (where recorded); None when unmeasured."""
    wall = row.get("wall_time")
    if wall is None:
        return None
    startup = row.get("startup_time") or 0.0
    return max(float(wall) - float(startup), 0.0)


def hardness_score(instance: dict) -> float | None:
    """Predicted hardness of a manifest instance (see the module docstring); None where the
    manifest does not say (older manifests)."""
    if instance.get("correct") is False:
        return 0.0
    value = instance.get("unstable_relus")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# --- one instance -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    verifier: str
    status: str
    time: float | None
    decided_by: str | None
    valid_cex: bool  # sat with a counterexample the check accepted

    @property
    def decisive(self) -> bool:
        return self.status == Status.UNSAT.value or self.valid_cex

    @property
    def cheap(self) -> bool:
        """Decided by a cascade's cheap stage."""
        return bool(self.decided_by) and not self.decided_by.startswith(CHEAP_PREFIX)


@dataclass
class InstanceDifficulty:
    onnx: str
    vnnlib: str
    level: int | None
    sample_index: int | None
    label: int | None
    correct: bool | None  # the model classifies the clean sample correctly
    timeout: float | None
    unstable_relus: int | None
    unstable_relus_ibp: int | None
    hardness: float | None  # predicted (``hardness_score``)
    answers: dict[str, Answer] = field(default_factory=dict)
    outcome: str = "none"
    time: float | None = None  # reference time
    fastest: str | None = None  # who gave it
    difficulty: str = "unmeasured"
    note: str = ""

    @property
    def solved(self) -> dict[str, float]:
        """Verifier -> solve time, for the answers that agree with a decided outcome (what a
        cactus plot counts as solved)."""
        if self.outcome not in ("sat", "unsat"):
            return {}
        return {a.verifier: a.time for a in self.answers.values()
                if a.decisive and _agrees(a, self.outcome) and a.time is not None}


def _agrees(answer: Answer, outcome: str) -> bool:
    return (outcome == "sat" and answer.valid_cex) or \
        (outcome == "unsat" and answer.status == Status.UNSAT.value)


def _outcome(item: InstanceDifficulty) -> tuple[str, str]:
    answers = sorted(item.answers.values(), key=lambda a: a.verifier)
    unsat = [a.verifier for a in answers if a.status == Status.UNSAT.value]
    valid = [a.verifier for a in answers if a.valid_cex]
    unbacked = [a.verifier for a in answers if a.status == Status.SAT.value and not a.valid_cex]
    misclassified = item.correct is False
    if unsat and (valid or unbacked or misclassified):
        sides = [f"unsat by {', '.join(unsat)}"]
        if valid:
            sides.append(f"a valid counterexample by {', '.join(valid)}")
        if unbacked:
            sides.append(f"sat without a valid counterexample by {', '.join(unbacked)}")
        if misclassified:
            sides.append("the model misclassifies the clean sample")
        return "disputed", " vs ".join(sides)
    note = f"sat without a valid counterexample by {', '.join(unbacked)}" if unbacked else ""
    if valid or misclassified:
        return "sat", note
    if unsat:
        return "unsat", note
    return ("undecided" if answers else "none"), note


def _grade(item: InstanceDifficulty, thresholds: Thresholds) -> None:
    item.outcome, item.note = _outcome(item)
    if item.outcome in ("sat", "unsat"):
        solved = item.solved
        if solved:
            item.fastest = min(solved, key=lambda v: (solved[v], v))
            item.time = solved[item.fastest]
    if item.outcome == "disputed":
        item.difficulty = "disputed"
    elif item.outcome == "none":
        item.difficulty = "unmeasured"
    elif item.outcome == "undecided":
        item.difficulty = "open"
    elif item.correct is False or any(a.cheap and _agrees(a, item.outcome)
                                      for a in item.answers.values()):
        item.difficulty = "trivial"
    elif item.time is None or item.timeout is None:
        item.difficulty = "unmeasured"  # decided, but nothing says how fast
        item.note = (item.note + "; " if item.note else "") + "no time or timeout recorded"
    else:
        item.difficulty = thresholds.classify(item.time, item.timeout)


# --- one benchmark ----------------------------------------------------------------------------

@dataclass
class BenchmarkDifficulty:
    benchmark: str
    root: Path | None
    manifest: dict
    instances: list[InstanceDifficulty]
    verifiers: list[str]
    thresholds: Thresholds
    unmatched: int = 0  # results for files the manifest does not list
    foreign: int = 0  # results for another version of the benchmark (other content hash)

    @property
    def levels(self) -> list[int]:
        return sorted({i.level for i in self.instances if i.level is not None})

    def counts(self, level: int | None = None) -> Counter:
        """Instances per difficulty class (of one level, or all)."""
        return Counter(i.difficulty for i in self.instances
                       if level is None or i.level == level)


def _int_or_none(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def assess_benchmark(benchmark: str, manifest: dict, rows: Sequence[dict],
                     root: Path | None = None,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> BenchmarkDifficulty:
    """Grade every instance the manifest lists from ``rows`` (this benchmark's results; rows of
    other benchmarks are ignored). Rows whose ``benchmark_hash`` is recorded and differs from
    the manifest's were obtained on other files under the same name: they are left out and
    counted in ``foreign``."""
    own_hash = manifest.get("benchmark_hash")
    by_instance: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    foreign = 0
    for row in rows:
        if row["benchmark"] != benchmark:
            continue
        if own_hash and row.get("benchmark_hash") and row["benchmark_hash"] != own_hash:
            foreign += 1
            continue
        by_instance[instance_key(row["onnx"], row["vnnlib"])][row["verifier"]] = row
    listed = set()
    items = []
    for inst in manifest.get("instances", []):
        key = instance_key(inst["onnx"], inst["vnnlib"])
        listed.add(key)
        correct = inst.get("correct")
        item = InstanceDifficulty(
            onnx=inst["onnx"], vnnlib=inst["vnnlib"], level=_int_or_none(inst.get("level")),
            sample_index=_int_or_none(inst.get("sample_index")),
            label=_int_or_none(inst.get("label")),
            correct=correct if isinstance(correct, bool) else None,
            timeout=float(inst["timeout"]) if inst.get("timeout") is not None else None,
            unstable_relus=_int_or_none(inst.get("unstable_relus")),
            unstable_relus_ibp=_int_or_none(inst.get("unstable_relus_ibp")),
            hardness=hardness_score(inst))
        for verifier, row in sorted(by_instance.get(key, {}).items()):
            item.answers[verifier] = Answer(
                verifier, row["status"], solve_time(row), row.get("decided_by"),
                row["status"] == Status.SAT.value and row.get("cex_check") in VALID_CEX)
            if item.timeout is None and row.get("timeout") is not None:
                item.timeout = float(row["timeout"])
        _grade(item, thresholds)
        items.append(item)
    verifiers = sorted({v for key in listed for v in by_instance.get(key, {})})
    return BenchmarkDifficulty(benchmark, root, manifest, items, verifiers, thresholds,
                               unmatched=len(set(by_instance) - listed), foreign=foreign)


def assess_results(rows: Sequence[dict], thresholds: Thresholds = DEFAULT_THRESHOLDS
                   ) -> tuple[list[BenchmarkDifficulty], list[tuple[str, str]]]:
    """``assess_benchmark`` for every benchmark in ``rows`` whose folder still holds its
    manifest, sorted by name; and the benchmarks that could not be assessed, with why."""
    found, skipped = benchmark_manifests(list(rows))
    return [assess_benchmark(benchmark, manifest, members, root, thresholds)
            for benchmark, members, root, manifest in found], skipped


# --- tables -----------------------------------------------------------------------------------

def instance_header(verifiers: Sequence[str]) -> list[str]:
    return ["onnx", "vnnlib", "level", "sample_index", "label", "correct", "timeout",
            "unstable_relus", "unstable_relus_ibp", "predicted_hardness", "difficulty",
            "reference_outcome", "reference_time_s", "fastest",
            *(f"{v}_{what}" for v in verifiers for what in ("status", "time_s", "decided_by")),
            "note"]


def _round(value: float | None, digits: int = 3):
    return "" if value is None else round(value, digits)


def instance_cells(item: InstanceDifficulty, verifiers: Sequence[str]) -> list:
    """One CSV row in ``instance_header`` order."""
    cells = [item.onnx, item.vnnlib, item.level, item.sample_index, item.label, item.correct,
             item.timeout, item.unstable_relus, item.unstable_relus_ibp, item.hardness,
             item.difficulty, item.outcome, _round(item.time), item.fastest or ""]
    for verifier in verifiers:
        answer = item.answers.get(verifier)
        cells += ["", "", ""] if answer is None else \
            [answer.status, _round(answer.time), answer.decided_by or ""]
    return [*cells, item.note]


def difficulty_csv(assessed: BenchmarkDifficulty, items: Sequence[InstanceDifficulty] | None
                   = None) -> tuple[list[str], list[list]]:
    """Header and one row per instance (``items``, or every instance of the benchmark)."""
    items = assessed.instances if items is None else items
    return instance_header(assessed.verifiers), \
        [instance_cells(i, assessed.verifiers) for i in items]


def class_table(assessed: BenchmarkDifficulty) -> tuple[list[str], list[list[str]]]:
    """Instances per level and difficulty class, with the reference outcomes of the decided
    ones: Markdown headers and cells, one row per level and a total."""
    headers = ["level", *CLASSES, "sat", "unsat", "total"]
    rows = []
    for level in [*assessed.levels, None]:
        members = [i for i in assessed.instances if level is None or i.level == level]
        counts = Counter(i.difficulty for i in members)
        outcomes = Counter(i.outcome for i in members)
        rows.append(["all" if level is None else str(level),
                     *(str(counts.get(c, 0)) for c in CLASSES),
                     str(outcomes.get("sat", 0)), str(outcomes.get("unsat", 0)),
                     str(len(members))])
    return headers, rows


def disputed_lines(assessed: BenchmarkDifficulty) -> list[str]:
    """One line per disputed instance, saying who said what."""
    return [f"{i.onnx} + {i.vnnlib}: {i.note}" for i in assessed.instances
            if i.outcome == "disputed"]
