"""Who decided: how many instances each stage of the cascade decided, and the time each stage took.

Rows written by ``bench run`` say which stage decided them (``decided_by``: ``clean``,
``attack``, ``bounds:IBP``, ``bounds:CROWN``, ``bounds:alpha-CROWN``, ``verifier`` or
``verifier:<path>``; NULL for a timeout, unknown or error) and how long each stage that ran took
(``stage_times``, JSON). Per stage: the instances it decided, their share of the rows, and the
seconds the stage took over every instance that reached it (a stage costs time on the instances
it does not decide too). ``load`` (reading the property) is counted with the stages.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from bench.collate.render import Block, markdown_table

# The order stages run in (the verifier last); others (a tool's own paths) after them.
ORDER = ("load", "clean", "bounds:IBP", "bounds:CROWN", "attack", "bounds:alpha-CROWN",
         "verifier")
UNDECIDED = "(undecided)"
HEADERS = ["stage", "decided", "share", "stage time (s)", "instances reached"]


def stage_rows(results: Iterable[Mapping]) -> list[list[str]]:
    """One row per stage: stage, instances decided, share of all rows, total seconds in the
    stage, instances that reached it; then the rows no stage decided. Empty when no row says
    who decided it (results from before the cascade)."""
    results = list(results)
    if not any(row.get("decided_by") or row.get("stage_times") for row in results):
        return []
    decided: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    reached: dict[str, int] = defaultdict(int)
    for row in results:
        decided[row.get("decided_by") or UNDECIDED] += 1
        for stage, spent in _times(row.get("stage_times")).items():
            seconds[stage] += spent
            reached[stage] += 1
    stages = sorted({*decided, *seconds} - {UNDECIDED}, key=_position)
    total = len(results)
    table = []
    for stage in [*stages, UNDECIDED]:
        count = decided.get(stage, 0)
        if stage == UNDECIDED and not count:
            continue
        table.append([stage, str(count), f"{100.0 * count / total:.1f} %",
                      f"{seconds[stage]:.1f}" if stage in seconds else "-",
                      str(reached[stage]) if stage in reached else "-"])
    return table


def stages_markdown(results: Sequence[Mapping]) -> str:
    """A small Markdown section for a per-benchmark table ('' without cascade data)."""
    rows = stage_rows(results)
    if not rows:
        return ""
    lines = ["", "## Who decided", "", *markdown_table(HEADERS, rows), "",
             "- Stages run cheapest first; an instance goes on to the next stage only while "
             "undecided. Stage time: seconds spent in the stage over every instance that "
             "reached it (load: reading the property)."]
    wall = sum(row.get("wall_time") or 0.0 for row in results)
    startup = sum(row.get("startup_time") or 0.0 for row in results)
    if wall > 0:
        lines.append(f"- Start-up (worker start, imports, model loading, the harness's "
                     f"exchange): {startup:.1f} s of the instances' {wall:.1f} s wall time "
                     f"({100.0 * startup / wall:.0f} %).")
    return "\n".join(lines) + "\n"


def stage_blocks(results: Sequence[Mapping]) -> list[Block]:
    """The report's section: per verifier, who decided its instances ([] without cascade
    data)."""
    by_verifier: dict[str, list[Mapping]] = defaultdict(list)
    for row in results:
        by_verifier[str(row.get("verifier"))].append(row)
    blocks = []
    for verifier, rows in sorted(by_verifier.items()):
        table = stage_rows(rows)
        if table:
            blocks.append(Block("table", table, [f"{verifier}: {HEADERS[0]}", *HEADERS[1:]]))
    if not blocks:
        return []
    return [Block("h2", ["Who decided (the cascade's stages)"]),
            Block("p", ["How many instances each stage decided, over all benchmarks, and the "
                        "seconds each stage took over every instance that reached it."]),
            *blocks]


def _times(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        times = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(times, dict):
        return {}
    return {str(stage): float(spent) for stage, spent in times.items()
            if isinstance(spent, (int, float)) and not isinstance(spent, bool)}


def _position(stage: str) -> tuple[int, str]:
    if stage in ORDER:
        return ORDER.index(stage), stage
    return (len(ORDER), stage)
