"""What verifier authors look at, per benchmark: difficulty per instance and level, a cactus
plot, the VNN-COMP score table, and verification time against instability.

``write_views(assessed, rows, out_dir, stem)`` writes, for one benchmark assessed by
``bench.collate.difficulty``:

- ``<stem>.difficulty.csv``: one row per instance: predicted hardness, difficulty class,
  reference outcome and time, and each verifier's status, time and deciding stage;
- ``<stem>.difficulty.md``: instances per level and class, the thresholds, disputed instances,
  and the VNN-COMP score table of ``bench.collate.check_results`` on this benchmark's rows (the
  scoring is that module's, not repeated here);
- ``<stem>.difficulty.png`` (histogram per level) and ``<stem>.cactus.png``;
- ``<stem>.hardness.md`` / ``.csv`` / ``.png``: Spearman's rho of time against unstable ReLUs per
  verifier and level (``bench.collate.hardness``).

``views_blocks`` gives the same as report blocks (``bench.collate.render.Block``), so the report
page and the packed benchmark's README show one thing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.collate import figures, hardness, render
from bench.collate.check_results import SCORE_HEADERS, SCORING_RULE, check_rows, score_cells
from bench.collate.difficulty import DEFAULT_THRESHOLDS, BenchmarkDifficulty, Thresholds, \
    assess_results, class_table, difficulty_csv, disputed_lines, read_results_rows
from bench.collate.render import Block, Link

HARDNESS_RULE = (
    "Spearman's ρ between the instance's unstable ReLUs under its property's box (from the "
    "build's CROWN or IBP bounds) and the solve time; unsat and sat with a valid "
    "counterexample at their time, timeout at the timeout (censored: it ties at the top of the ranking), unknown and error left out. "
    "The virtual best row ranks the reference time of each instance (the fastest agreeing "
    "answer; open instances at the timeout; disputed ones left out): that is the predicted "
    "hardness score's rank correlation with measured difficulty. ρ > 0: more unstable ReLUs, "
    "longer verification. p: two-sided, from scipy.stats.spearmanr; — where undefined (N < 3 or "
    "a constant side).")
TIME_RULE = ("Times are wall times less the start-up time where the row records one (where it "
             "does not, a verifier's loading counts as solving), measured under whatever else "
             "the machine ran at the time: a runner goes level by level, so on a shared machine "
             "compare instances within a level rather than across levels. Solved: an answer "
             "that agrees with the instance's undisputed reference outcome (sat with a valid "
             "counterexample, or unsat). Virtual best: per instance, the fastest of them.")


@dataclass
class Views:
    benchmark: str
    files: dict[str, Path] = field(default_factory=dict)  # kind -> path
    sentence: str = ""  # hardness summary
    blocks: list[Block] = field(default_factory=list)


def benchmark_scores(rows: Sequence[dict], benchmark: str) -> list[list[str]]:
    """The VNN-COMP score table of this benchmark's rows: cells in ``SCORE_HEADERS`` order."""
    return score_cells(check_rows([r for r in rows if r["benchmark"] == benchmark], benchmark))


def write_views(assessed: BenchmarkDifficulty, rows: Sequence[dict], out_dir: Path,
                stem: str, link_base: Path | None = None) -> Views:
    """Write every view of one benchmark into ``out_dir``; returns the paths, the hardness
    sentence and the report blocks, whose links are relative to ``link_base`` (default
    ``out_dir``)."""
    out_dir = Path(out_dir)
    base = Path(link_base) if link_base is not None else out_dir
    views = Views(assessed.benchmark)
    correlations = hardness.hardness_rows(assessed)
    views.sentence = hardness.summary_sentence(assessed, correlations)
    class_headers, class_cells = class_table(assessed)
    disputed = disputed_lines(assessed)
    scores = benchmark_scores(rows, assessed.benchmark)

    difficulty_md = [f"# Difficulty: {assessed.benchmark}", "",
                     f"- {assessed.thresholds.describe()}.", f"- {TIME_RULE}",
                     f"- Reference verifiers: {', '.join(assessed.verifiers) or 'none'}.", "",
                     *render.markdown_table(class_headers, class_cells), ""]
    difficulty_md += ["## Disputed instances (never resolved, never graded)", "",
                      *([f"- {line}" for line in disputed] or ["None."]), ""]
    difficulty_md += ["## VNN-COMP scores", "", SCORING_RULE, "",
                      *render.markdown_table(SCORE_HEADERS, scores), ""]
    views.files["difficulty_csv"] = render.write_csv(out_dir / f"{stem}.difficulty.csv",
                                                     *difficulty_csv(assessed))
    views.files["difficulty_md"] = render.write_text(out_dir / f"{stem}.difficulty.md",
                                                     "\n".join(difficulty_md))
    views.files["difficulty_png"] = figures.plot_difficulty(assessed,
                                                            out_dir / f"{stem}.difficulty.png")
    views.files["cactus_png"] = figures.plot_cactus(assessed, out_dir / f"{stem}.cactus.png")
    hardness_md = [f"# Verification time vs unstable ReLUs: {assessed.benchmark}", "",
                   views.sentence, "",
                   *render.markdown_table(hardness.HEADERS, hardness.table_cells(correlations)),
                   "", f"- {HARDNESS_RULE}", f"- {TIME_RULE}"]
    views.files["hardness_md"] = render.write_text(out_dir / f"{stem}.hardness.md",
                                                   "\n".join(hardness_md) + "\n")
    views.files["hardness_csv"] = render.write_csv(out_dir / f"{stem}.hardness.csv",
                                                   hardness.CSV_HEADER,
                                                   hardness.csv_rows(correlations))
    scatter = figures.plot_hardness(assessed, out_dir / f"{stem}.hardness.png")
    if scatter is not None:
        views.files["hardness_png"] = scatter

    def rel(kind: str) -> str:
        return views.files[kind].relative_to(base).as_posix()

    views.blocks = [
        Block("h3", [f"{assessed.benchmark}: difficulty"]),
        Block("p", [f"{assessed.thresholds.describe()}. {TIME_RULE} Per instance: ",
                    Link("CSV", rel("difficulty_csv")), "; ",
                    Link("Markdown", rel("difficulty_md")), "."]),
        Block("table", class_cells, class_headers),
        Block("img", [f"difficulty per level, {assessed.benchmark}", rel("difficulty_png")]),
    ]
    if disputed:
        views.blocks.append(Block("p", [f"**{len(disputed)} disputed instance(s)** (verifiers "
                                        "disagree; never graded): see the Markdown."]))
    views.blocks += [
        Block("h3", [f"{assessed.benchmark}: cactus plot and VNN-COMP scores"]),
        Block("img", [f"cactus plot, {assessed.benchmark}", rel("cactus_png")]),
        Block("table", scores, list(SCORE_HEADERS)),
        Block("p", [SCORING_RULE]),
        Block("h3", [f"{assessed.benchmark}: verification time vs unstable ReLUs"]),
        Block("p", [views.sentence, " ", Link("Markdown", rel("hardness_md")), ", ",
                    Link("CSV", rel("hardness_csv")), "."]),
        Block("table", hardness.table_cells(correlations), list(hardness.HEADERS)),
    ]
    if scatter is not None:
        views.blocks.append(Block("img", [f"time vs unstable ReLUs, {assessed.benchmark}",
                                          rel("hardness_png")]))
    views.blocks.append(Block("p", [HARDNESS_RULE]))
    return views


def write_index(results: Sequence[str | Path], out_dir: Path,
                thresholds: Thresholds = DEFAULT_THRESHOLDS
                ) -> tuple[Path, list[tuple[str, str]]]:
    """``bench difficulty``: the views of every benchmark in the results databases (combined),
    and ``index.md`` / ``index.html`` over them; returns the index and the benchmarks that
    could not be assessed (no manifest), with why."""
    rows = read_results_rows(results)
    assessed, skipped = assess_results(rows, thresholds)
    out_dir = Path(out_dir)
    blocks = [Block("h1", ["Difficulty, cactus plots, scores, time vs instability"]),
              Block("p", [f"From {', '.join(map(str, results))}."])]
    for item in assessed:
        blocks += write_views(item, rows, out_dir, render_safe(item.benchmark)).blocks
    if skipped:
        blocks += [Block("h2", ["Not assessed"]),
                   Block("list", [[f"{name}: {why}"] for name, why in skipped])]
    render.write_text(out_dir / "index.html", render.render_html(blocks, "difficulty"))
    return render.write_text(out_dir / "index.md", render.render_markdown(blocks)), skipped


def render_safe(name: str) -> str:
    """``name`` as a file name: anything but ASCII letters, digits, ``.``, ``_``, ``-`` is ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
