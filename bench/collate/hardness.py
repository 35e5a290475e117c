"""Hardness vs instability: does "pruning -> fewer unstable neurons -> easier verification" hold
instance by instance?

Per benchmark, per verifier and level (and over all levels): Spearman's rho between an
instance's unstable ReLUs under its property's box (the manifest's ``unstable_relus``, from the
build's CROWN bounds; and ``unstable_relus_ibp``, from IBP) and the verifier's solve time on it
(``bench.collate.difficulty.solve_time``), with its p-value and N. Which answers count:

- ``unsat`` and ``sat`` with a valid counterexample: their solve time (a ``sat`` without one
  decides nothing, and is left out);
- ``timeout``: the timeout (the time is censored: at least that much). Ranks only need the
  order, and a timeout took longer than every decided instance, so it ties at the top;
- ``unknown`` and ``error``: left out, since giving up or failing says nothing about how long
  a decision would take.

The row ``virtual best`` does the same for the reference time of the difficulty assessment (the
fastest agreeing answer; an ``open`` instance at its timeout; ``disputed`` ones left out):
that is how well the predicted hardness score (``difficulty.hardness_score``, the unstable ReLUs,
0 for a misclassified sample) ranks the measured difficulty, i.e. what ``generate_properties.py``
stratifies by.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from bench.collate import stats
from bench.collate.difficulty import REFERENCE, BenchmarkDifficulty, InstanceDifficulty
from bench.verifiers.base import Status

MEASURES = (("unstable_relus", "CROWN"), ("unstable_relus_ibp", "IBP"))
ALL_LEVELS = "all"


@dataclass(frozen=True)
class HardnessRow:
    source: str  # a verifier, or REFERENCE
    level: int | str  # a level, or ALL_LEVELS
    bounds: str  # "CROWN" or "IBP": whose unstable ReLUs
    correlation: stats.Correlation
    censored: int  # timeouts (and open instances) among the N, counted at the timeout


def verifier_point(item: InstanceDifficulty, verifier: str) -> tuple[float, bool] | None:
    """(time, censored) of one verifier's answer on ``item``, or None when it does not count."""
    answer = item.answers.get(verifier)
    if answer is None:
        return None
    if answer.decisive and answer.time is not None:
        return answer.time, False
    if answer.status == Status.TIMEOUT.value and item.timeout is not None:
        return item.timeout, True
    return None


def reference_point(item: InstanceDifficulty) -> tuple[float, bool] | None:
    """(time, censored) of the reference (virtual best) on ``item``, or None."""
    if item.difficulty == "open" and item.timeout is not None:
        return item.timeout, True
    if item.outcome in ("sat", "unsat") and item.time is not None:
        return item.time, False
    return None


def points(assessed: BenchmarkDifficulty, source: str, measure: str = "unstable_relus",
           level: int | str = ALL_LEVELS) -> list[tuple[float, float, bool]]:
    """(unstable ReLUs, time, censored) of every instance that counts for ``source``."""
    found = []
    for item in assessed.instances:
        if level != ALL_LEVELS and item.level != level:
            continue
        x = getattr(item, measure)
        point = reference_point(item) if source == REFERENCE else verifier_point(item, source)
        if x is not None and point is not None:
            found.append((float(x), *point))
    return found


def hardness_rows(assessed: BenchmarkDifficulty) -> list[HardnessRow]:
    """One row per source (each verifier, then the virtual best), level (each, then all) and
    bounds, for the sources and levels with at least one point."""
    rows = []
    for source in [*assessed.verifiers, REFERENCE]:
        for level in [*assessed.levels, ALL_LEVELS]:
            for measure, bounds in MEASURES:
                found = points(assessed, source, measure, level)
                if not found:
                    continue
                correlation = stats.spearman([p[0] for p in found], [p[1] for p in found])
                rows.append(HardnessRow(source, level, bounds, correlation,
                                        sum(p[2] for p in found)))
    return rows


def rho_text(correlation: stats.Correlation) -> str:
    return "—" if correlation.rho is None else f"{correlation.rho:+.2f}"


def p_text(correlation: stats.Correlation) -> str:
    if correlation.p_value is None:
        return "—"
    return "<0.001" if correlation.p_value < 0.001 else f"{correlation.p_value:.3f}"


HEADERS = ("verifier", "level", "bounds", "N", "timeouts (at the timeout)", "Spearman ρ", "p")
CSV_HEADER = ["verifier", "level", "bounds", "n", "censored", "rho", "p_value"]


def table_cells(rows: Sequence[HardnessRow]) -> list[list[str]]:
    return [[r.source, str(r.level), r.bounds, str(r.correlation.n), str(r.censored),
             rho_text(r.correlation), p_text(r.correlation)] for r in rows]


def csv_rows(rows: Sequence[HardnessRow]) -> list[list]:
    return [[r.source, r.level, r.bounds, r.correlation.n, r.censored,
             "" if r.correlation.rho is None else round(r.correlation.rho, 6),
             "" if r.correlation.p_value is None else r.correlation.p_value] for r in rows]


def summary_sentence(assessed: BenchmarkDifficulty, rows: Sequence[HardnessRow]) -> str:
    """What the correlations say, in one sentence: the predicted hardness score against the
    reference time over all levels, and per level."""
    reference = {r.level: r.correlation for r in rows
                 if r.source == REFERENCE and r.bounds == "CROWN"}
    overall = reference.get(ALL_LEVELS)
    if overall is None:
        return (f"{assessed.benchmark}: no instance has both its unstable ReLUs (the manifest "
                "lacks them: rebuild) and a measured time.")
    if overall.rho is None:
        text = (f"{assessed.benchmark}: the predicted hardness (CROWN unstable ReLUs) cannot be "
                f"ranked against the reference time over {overall.n} instances (one side is "
                "constant)")
    else:
        text = (f"{assessed.benchmark}: predicted hardness (CROWN unstable ReLUs) vs reference "
                f"time over all levels: Spearman ρ = {overall.rho:+.2f} (p = "
                f"{p_text(overall)}, N = {overall.n})")
    levels = [f"level {level}: {rho_text(c)} (p {p_text(c)}, N {c.n})"
              for level, c in reference.items() if level != ALL_LEVELS]
    return text + ("; " + "; ".join(levels) if levels else "") + "."
