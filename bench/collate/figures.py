"""The figures (matplotlib, PNG): per benchmark, and the paper's Figures 3-6 per setting.

Verified accuracy is drawn with its 95 % Wilson interval as error bars and the undecided band
shaded (from every undecided instance counted as not robust up to counted as robust); other
metrics with a ± one standard deviation band over seeds. Stars mark certified lottery tickets.
Bare ``Figure`` objects with the Agg canvas: no pyplot, so no global backend or figure state.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.collate.aggregate import Group, Setting, tried
from bench.collate import hardness
from bench.collate.difficulty import CLASSES, REFERENCE, BenchmarkDifficulty
from bench.collate.tables import Table

PANELS = (("neuron (structured) pruning", True), ("unstructured pruning", False))
BAND_LABEL = "undecided band"
CI_LABEL = "95 % CI (Wilson)"


def _new_figure(rows: int, cols: int, title: str, width: float = 5.2,
                height: float = 3.9) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * cols, height * rows + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    figure.suptitle(title, fontsize=11)
    return figure, axes


def _save(figure: Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def _band(axes: Any, levels: Sequence[int], bands: Sequence[tuple[float, float]], color: str,
          legend: bool) -> None:
    """The undecided band: every undecided instance not robust (bottom) .. robust (top)."""
    axes.fill_between(levels, [b[0] for b in bands], [b[1] for b in bands], color=color,
                      alpha=0.15, linewidth=0, label=BAND_LABEL if legend else None)


def _verified(axes: Any, levels: Sequence[int], means: Sequence[float],
              intervals: Sequence[tuple[float, float]], color: str, label: str) -> None:
    """The verified line with its CI as error bars."""
    means = np.asarray(means, dtype=float)
    low = np.array([i[0] for i in intervals])
    high = np.array([i[1] for i in intervals])
    axes.errorbar(levels, means, yerr=[np.maximum(means - low, 0), np.maximum(high - means, 0)],
                  marker="o", markersize=4, capsize=3, color=color, label=label)


def _ci_legend_entry(axes: Any) -> None:
    """One neutral legend entry saying what the error bars are."""
    axes.plot([], [], color="gray", marker="_", markersize=10, linestyle="none",
              label=f"bars: {CI_LABEL}")


def plot_benchmark(table: Table, path: Path) -> Path:
    """Standard and verified accuracy against level for one benchmark and verifier. Levels
    without a single result have no verified point, only their (full) undecided band."""
    figure, axes = _new_figure(1, 1, f"{table.benchmark}\n{table.verifier}, "
                                     f"eps = {table.manifest.get('eps')}", 6.4, 4.2)
    ax = axes[0][0]
    levels = [r.level for r in table.rows]
    # Standard accuracy first, so the verified line (the point of the plot) is drawn on top.
    ax.plot(levels, [r.standard_accuracy for r in table.rows], marker="s", linestyle="--",
            color="tab:orange", label="standard accuracy (N samples)")
    _band(ax, levels, [r.band for r in table.rows], "tab:blue", legend=True)
    answered = [r for r in table.rows if tried(r)]
    _verified(ax, [r.level for r in answered], [r.verified_accuracy for r in answered],
              [r.verified_interval for r in answered], "tab:blue", "verified accuracy")
    _ci_legend_entry(ax)
    ax.set_xticks(levels)
    ax.set_xlabel("pruning level")
    ax.set_ylabel("accuracy (% of samples)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    top = ax.secondary_xaxis("top")
    top.set_xticks(levels, labels=["–" if r.remain_ratio is None else
                                   f"{100 * r.remain_ratio:.1f}%" for r in table.rows])
    top.set_xlabel("remaining weights")
    return _save(figure, path, dpi=120)


def _in_panel(group: Group, structured: bool) -> bool:
    # A pruner whose kind the manifests do not say is drawn with the unstructured ones.
    return (group.structured is True) == structured


def _plot_metric(axes: Any, groups: Sequence[Group], metric: str, colors: dict[str, str],
                 top: float = math.inf) -> bool:
    """One line per group with a ±std band (clipped to [0, top]: no metric here is negative).
    Returns whether anything was drawn."""
    drawn = False
    for group in groups:
        levels = [level for level, s in group.levels.items() if s.stats.get(metric) is not None]
        if not levels:
            continue
        means = np.array([group.levels[lv].stats[metric].mean for lv in levels])
        stds = np.array([group.levels[lv].stats[metric].std or 0.0 for lv in levels])
        color = colors[group.label]
        axes.plot(levels, means, marker="o", markersize=4, color=color, label=group.label)
        if any(group.levels[lv].stats[metric].std is not None for lv in levels):
            axes.fill_between(levels, np.clip(means - stds, 0, top),
                              np.clip(means + stds, 0, top), color=color, alpha=0.18,
                              linewidth=0)
        drawn = True
    return drawn


def _plot_verified_groups(axes: Any, groups: Sequence[Group], colors: dict[str, str]) -> bool:
    """Mean verified accuracy per group with CI bars and the undecided band; stars on
    certified lottery tickets."""
    drawn = starred = False
    for index, group in enumerate(groups):
        levels = [lv for lv, s in group.levels.items()
                  if s.mean("verified_accuracy") is not None and s.verified_interval]
        if not levels:
            continue
        stats = [group.levels[lv] for lv in levels]
        color = colors[group.label]
        _band(axes, levels, [s.band for s in stats], color, legend=index == 0)
        _verified(axes, levels, [s.mean("verified_accuracy") for s in stats],
                  [s.verified_interval for s in stats], color, group.label)
        tickets = [lv for lv in levels if lv in group.lottery]
        if tickets:
            axes.scatter(tickets, [group.levels[lv].mean("verified_accuracy") for lv in tickets],
                         marker="*", s=180, color=color, edgecolors="black", linewidths=0.6,
                         zorder=3)
            starred = True
        drawn = True
    if drawn:
        _ci_legend_entry(axes)
    if starred:
        # One neutral legend entry, after the pruners, for the stars of every colour.
        axes.scatter([], [], marker="*", s=180, facecolor="white", edgecolors="black",
                     linewidths=0.6, label="certified lottery ticket (significant)")
    return drawn


def _finish(axes: Any, title: str, ylabel: str, drawn: bool) -> None:
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("pruning level (iterations)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    if drawn:
        entries = len(axes.get_legend_handles_labels()[1])
        if entries > 4:  # many entries: beside the panel, where it hides no line
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        else:
            axes.legend(loc="best", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes,
                  color="gray")


def plot_verified(setting: Setting, groups: Sequence[Group], colors: dict[str, str],
                  path: Path) -> Path:
    """Fig. 3 / 8: verified accuracy against level, one panel per pruning kind present."""
    panels = [(t, s) for t, s in reversed(PANELS) if any(_in_panel(g, s) for g in groups)]
    figure, axes = _new_figure(1, len(panels), f"Verified accuracy vs pruning level\n"
                                               f"{setting.title()}",
                               width=6.4 if len(panels) == 1 else 5.2)
    for ax, (title, structured) in zip(axes[0], panels):
        members = [g for g in groups if _in_panel(g, structured)]
        drawn = _plot_verified_groups(ax, members, colors)
        ax.set_ylim(-2, 102)
        _finish(ax, title, "verified accuracy (%)", drawn)
    return _save(figure, path)


def plot_cost(setting: Setting, groups: Sequence[Group], colors: dict[str, str],
              path: Path) -> Path:
    """Fig. 4: time per sample and peak memory against level; neuron pruning first."""
    metrics = [("mean_time_s", "mean time per sample (s)"), ("peak_memory_mb", "peak memory (MB)")]
    if any(s.stats.get("peak_gpu_memory_mb") for g in groups for s in g.levels.values()):
        metrics.append(("peak_gpu_memory_mb", "peak GPU memory (MB)"))
    panels = [(t, s) for t, s in PANELS if any(_in_panel(g, s) for g in groups)]
    figure, axes = _new_figure(len(panels), len(metrics),
                               f"Verification cost vs pruning level\n{setting.title()}")
    for row, (title, structured) in zip(axes, panels):
        members = [g for g in groups if _in_panel(g, structured)]
        for ax, (metric, label) in zip(row, metrics):
            _finish(ax, title, label, _plot_metric(ax, members, metric, colors))
    return _save(figure, path)


def plot_model_metrics(setting: Setting, groups: Sequence[Group], colors: dict[str, str],
                       metrics: Sequence[tuple[str, str, str]], title: str,
                       path: Path) -> Path | None:
    """Fig. 5 / 6: manifest metrics against level; None when no manifest has them."""
    if not any(s.stats.get(m) for g in groups for s in g.levels.values() for m, _, _ in metrics):
        return None
    figure, axes = _new_figure(1, len(metrics), f"{title}\n{setting.title()}")
    for ax, (metric, panel, ylabel) in zip(axes[0], metrics):
        _finish(ax, panel, ylabel, _plot_metric(ax, groups, metric, colors))
    return _save(figure, path)


INSTABILITY = (("instability", "pre-activation", "instability (sum of -l·u, mean per sample)"),
               ("instability_pre_bn", "pre-BN", "instability (sum of -l·u, mean per sample)"))
UNSTABLE = (("unstable_ratio", "ReLU neurons with l < 0 < u", "ratio of unstable neurons"),)


# --- for verifier authors: difficulty, cactus, hardness vs instability ------------------------

CLASS_COLORS = {"trivial": "#bdbdbd", "easy": "#74c476", "medium": "#fdae6b", "hard": "#e6550d",
                "open": "#3182bd", "disputed": "#d62728", "unmeasured": "#f0f0f0"}


def plot_cactus(assessed: BenchmarkDifficulty, path: Path) -> Path:
    """Instances solved (correct answers: agreeing with a decided, undisputed reference
    outcome) against time, one line per verifier and the virtual best (fastest agreeing answer
    per instance)."""
    solved: dict[str, list[float]] = {v: [] for v in assessed.verifiers}
    best: list[float] = []
    for item in assessed.instances:
        for verifier, time in item.solved.items():
            solved[verifier].append(time)
        if item.time is not None and item.outcome in ("sat", "unsat"):
            best.append(item.time)
    figure, axes = _new_figure(1, 1, f"Cactus plot: {assessed.benchmark}\n"
                                     f"{len(assessed.instances)} instances", 6.4, 4.4)
    ax = axes[0][0]
    timeout = max((i.timeout for i in assessed.instances if i.timeout), default=None)
    lines = [(v, solved[v], {}) for v in assessed.verifiers] + \
        [(REFERENCE, best, {"color": "black", "linestyle": "--", "linewidth": 1.6})]
    for name, times, style in lines:
        times = sorted(max(t, 1e-3) for t in times)
        # Steps: the k-th instance is solved at the k-th smallest time.
        ax.step([*times, timeout or (times[-1] if times else 1)], [*range(1, len(times) + 1),
                                                                 len(times)],
                where="post", label=f"{name} ({len(times)} solved)", **style)
    ax.set_xscale("log")
    ax.set_xlabel("time (s, log scale; wall time less start-up where recorded)")
    ax.set_ylabel("instances solved")
    if timeout:
        ax.axvline(timeout, color="gray", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, max(len(assessed.instances), 1) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def plot_difficulty(assessed: BenchmarkDifficulty, path: Path) -> Path:
    """Instances per difficulty class, stacked, one bar per level."""
    levels = assessed.levels
    thresholds = assessed.thresholds
    figure, axes = _new_figure(1, 1, f"Difficulty per level: {assessed.benchmark}\neasy <= "
                                     f"{thresholds.easy:.0%}, medium <= {thresholds.medium:.0%} "
                                     "of the timeout", 6.4, 4.4)
    ax = axes[0][0]
    bottom = np.zeros(len(levels))
    for name in CLASSES:
        counts = np.array([assessed.counts(level).get(name, 0) for level in levels], float)
        if counts.any():
            ax.bar([str(level) for level in levels], counts, bottom=bottom, label=name,
                   color=CLASS_COLORS[name], edgecolor="black", linewidth=0.4)
            bottom += counts
    ax.set_xlabel("pruning level")
    ax.set_ylabel("instances")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(figure, path)


def plot_hardness(assessed: BenchmarkDifficulty, path: Path) -> Path | None:
    """Solve time against unstable ReLUs (CROWN), one panel per verifier and the virtual best,
    one colour per level; timeouts (open instances) as crosses at the timeout. None when no
    instance has both."""
    sources = [*assessed.verifiers, REFERENCE]
    panels = [(s, {lv: hardness.points(assessed, s, level=lv) for lv in assessed.levels})
              for s in sources]
    panels = [(s, by_level) for s, by_level in panels if any(by_level.values())]
    if not panels:
        return None
    rows = {(r.source, r.level): r.correlation for r in hardness.hardness_rows(assessed)
            if r.bounds == "CROWN"}
    figure, axes = _new_figure(1, len(panels), f"Verification time vs unstable ReLUs "
                                               f"(CROWN bounds): {assessed.benchmark}", 4.8, 4.0)
    for ax, (source, by_level) in zip(axes[0], panels):
        for index, (level, found) in enumerate(by_level.items()):
            if not found:
                continue
            color = f"C{index % 10}"
            c = rows.get((source, level))
            label = f"level {level}: ρ {hardness.rho_text(c)}, N {c.n}" if c else f"level {level}"
            decided = [(x, t) for x, t, censored in found if not censored]
            censored = [(x, t) for x, t, censored in found if censored]
            if decided:
                ax.scatter(*zip(*decided), s=18, color=color, alpha=0.8, label=label)
            if censored:
                ax.scatter(*zip(*censored), s=30, color=color, marker="x",
                           label=None if decided else label)
        overall = rows.get((source, hardness.ALL_LEVELS))
        title = source if overall is None else \
            f"{source}\nall levels: ρ {hardness.rho_text(overall)} (p " \
            f"{hardness.p_text(overall)}, N {overall.n})"
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("unstable ReLUs under the property's box")
        ax.set_ylabel("time (s, log; × = timeout)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    return _save(figure, path)
