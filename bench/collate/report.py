"""Paper-style summaries across seeds (Tables 2-5, Figures 3-6) and the report page.

``bench/collate/tables.py`` builds one ``Table`` per (benchmark, verifier). Here the benchmarks are
grouped into *settings* and *groups*:

- a setting is (dataset, model, training, eps, verifier): one paper-style summary table, one
  per-level table, one verified-accuracy figure (Fig. 3/8) and one cost figure (Fig. 4). The
  instability (Fig. 5) and unstable-ratio (Fig. 6) figures come from the manifests alone, so
  they are drawn per setting without the verifier;
- a group is one pruner within a setting; its benchmarks are the seeds (``config.seed``).
  When two benchmarks of one pruner differ in another build option (say ``regularizer`` or
  ``prune_rate``) they are not seeds of one experiment: each variant is its own group, labelled
  with the options that differ, e.g. ``imp (regularizer=none)``.

Numbers, per group and level (every rule is repeated in the notes under each table):

- per seed first: when one seed has several benchmarks (it should not happen), their values
  are averaged; then mean and sample standard deviation (ddof = 1) over the seeds that have
  the value; one seed gives no standard deviation;
- ``ver``: verified accuracy (% of the N verification samples) from the results database,
  as in ``bench/collate/tables.py``: only ``unsat`` on a correctly classified sample counts;
- ``std``: the manifest's ``standard_accuracy`` (per-level metrics) or, in manifests without
  it, ``clean_accuracy`` (the build's test-set accuracy); ``adv``: ``pgd_accuracy``;
- ``t``: mean wall time per instance; peak memory: the largest peak over the level's
  instances (so the means over seeds are means of peaks);
- remain ratio: the manifest's ``remain_ratio``, i.e. remaining weights for unstructured and
  remaining channels for neuron pruning, as in the paper's tables.

Best-verified level of a group: among the pruned levels (> 0), the one with the highest mean
verified accuracy; on a tie the sparser one (smaller mean remain ratio, then the higher
level), because at equal verified accuracy the smaller network is the cheaper one to verify.

Certified lottery ticket (paper 4.2.3): a pruned level (> 0) whose mean standard accuracy and
mean verified accuracy are both at least the group's dense level's (level 0), exactly, with
no tolerance: "matches the dense model" read strictly, so a star never rests on noise alone.

Dense rows: each pruner trains its own level 0, but pruners without a regularizer train the
same network from the same seed. Groups whose level-0 ONNX files have the same sha256 per
seed (from the manifests) share one ``Dense`` row, averaged over all of them; groups whose
level 0 differs (a regularizer, another build option) get their own ``Dense (pruner)`` row.
"""
from __future__ import annotations

import csv
import html
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.run.results import describe_provenance

MISSING = "—"
STAR = "★"
# Config keys that only say where things go or which seed ran: they never split a group.
_NOT_A_VARIANT = ("seed", "seeds", "out", "runs_dir", "data_dir", "download",
                  "dataset", "model", "training", "eps", "pruner")
STATUSES = ("sat", "unsat", "timeout", "unknown", "error")


# --- metrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    header: str  # column header in Markdown and HTML
    latex: str  # LaTeX header, already escaped
    spec: str  # format spec of one number


METRICS: dict[str, Metric] = {
    "remain_ratio": Metric("Remain ratio", "Remain Ratio", ".2f"),
    "standard_accuracy": Metric("std (%)", r"std (\%)", ".1f"),
    "adversarial_accuracy": Metric("adv (%)", r"adv (\%)", ".1f"),
    "verified_accuracy": Metric("ver (%)", r"ver (\%)", ".1f"),
    "mean_time_s": Metric("t (s/sample)", "t (s/sample)", ".2f"),
    "ibp_verified_accuracy": Metric("IBP ver (%)", r"IBP ver (\%)", ".1f"),
    "crown_verified_accuracy": Metric("CROWN ver (%)", r"CROWN ver (\%)", ".1f"),
    "peak_memory_mb": Metric("peak memory (MB)", "peak memory (MB)", ".0f"),
    "peak_gpu_memory_mb": Metric("peak GPU memory (MB)", "peak GPU memory (MB)", ".0f"),
    "instability": Metric("instability", "instability", ".4g"),
    "instability_pre_bn": Metric("pre-BN instability", "pre-BN instability", ".4g"),
    "unstable_ratio": Metric("unstable ratio", "unstable ratio", ".3f"),
    "sample_accuracy": Metric("acc. on the N samples (%)", r"acc.\ on the N samples (\%)", ".1f"),
}
SUMMARY_METRICS = ("remain_ratio", "standard_accuracy", "adversarial_accuracy",
                   "verified_accuracy", "mean_time_s")
LEVEL_METRICS = ("remain_ratio", "standard_accuracy", "adversarial_accuracy", "verified_accuracy",
                 "ibp_verified_accuracy", "crown_verified_accuracy", "mean_time_s",
                 "peak_memory_mb", "peak_gpu_memory_mb", "instability", "instability_pre_bn",
                 "unstable_ratio", "sample_accuracy")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None with one seed
    n: int  # seeds that have the value

    def text(self, spec: str, pm: str = " ± ") -> str:
        if self.std is None:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)}{pm}{format(self.std, spec)}"


def stat(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    mean = statistics.fmean(values)
    return Stat(mean, statistics.stdev(values) if len(values) > 1 else None, len(values))


def _number(value: Any) -> float | None:
    """A finite number, or None (absent, null, text, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def level_values(entry: dict, row: Any | None) -> dict[str, float | None]:
    """One benchmark's numbers for one level: ``entry`` is the manifest's ``models`` entry,
    ``row`` the ``tables.LevelRow`` (None where only the manifest matters)."""
    def percent(key: str) -> float | None:
        value = _number(entry.get(key))
        return None if value is None else 100.0 * value

    standard = _number(entry.get("standard_accuracy"))
    if standard is None:
        standard = _number(entry.get("clean_accuracy"))
    values = {
        "remain_ratio": _number(entry.get("remain_ratio")),
        "standard_accuracy": None if standard is None else 100.0 * standard,
        "adversarial_accuracy": percent("pgd_accuracy"),
        "ibp_verified_accuracy": percent("ibp_verified_accuracy"),
        "crown_verified_accuracy": percent("crown_verified_accuracy"),
        "instability": _number(entry.get("instability")),
        "instability_pre_bn": _number(entry.get("instability_pre_bn")),
        "unstable_ratio": _number(entry.get("unstable_ratio")),
    }
    if row is not None:
        # A level without a single result was not verified at all: "—", not 0 % (which would
        # also make it a lottery ticket of a dense model that has no results either).
        tried = row.missing < row.samples
        values.update({
            "verified_accuracy": row.verified_accuracy if tried else None,
            "sample_accuracy": row.standard_accuracy,  # on the N verification samples
            "mean_time_s": row.mean_time_s,
            "peak_memory_mb": row.peak_memory_mb,
            "peak_gpu_memory_mb": row.peak_gpu_memory_mb,
        })
        if values["remain_ratio"] is None:
            values["remain_ratio"] = row.remain_ratio
    return values


# --- grouping ---------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Setting:
    dataset: str
    model: str
    training: str
    eps: float
    verifier: str = ""  # "" for the manifest-only figures (Fig. 5, 6)

    def title(self) -> str:
        text = f"{self.dataset}, {self.model}, {self.training}, ε = {eps_text(self.eps)}"
        return f"{text}, {self.verifier}" if self.verifier else text

    def slug(self) -> str:
        parts = [self.dataset, self.model, self.training,
                 "eps" + eps_text(self.eps).replace("/", "-")]
        if self.verifier:
            parts.append(self.verifier)
        return "__".join(re.sub(r"[^A-Za-z0-9._-]", "-", p) for p in parts)


@dataclass
class Run:
    """One benchmark (one seed) and, with a verifier, its results (a ``tables.Table``)."""
    benchmark: str
    manifest: dict
    table: Any | None  # tables.Table; None for the manifest-only figures
    seed: str
    pruner: str
    variant: tuple  # the build options that are neither the setting nor the seed
    structured: bool | None
    dense_id: str  # identity of this seed's level-0 network
    _provenance: dict[str, set[str]] | None = field(default=None, repr=False)

    def provenance(self) -> dict[str, set[str]]:
        """Distinct values of each provenance column in this run's results (computed once:
        a run has one row per instance, and several summary rows ask)."""
        if self._provenance is None:
            rows = self.table.results if self.table is not None else []
            self._provenance = {c: {str(r[c]) for r in rows if r.get(c) is not None}
                                for c in PROVENANCE}
        return self._provenance

    def levels(self) -> dict[int, dict[str, float | None]]:
        rows = {r.level: r for r in self.table.rows} if self.table is not None else {}
        entries = {int(m["level"]): m for m in self.manifest.get("models", [])}
        return {level: level_values(entries.get(level, {}), rows.get(level))
                for level in sorted(set(entries) | set(rows))}


@dataclass
class LevelStats:
    level: int
    seeds: int
    stats: dict[str, Stat | None]
    missing: int = 0  # instances without a result, summed over the seeds

    def mean(self, metric: str) -> float | None:
        value = self.stats.get(metric)
        return None if value is None else value.mean


@dataclass
class Group:
    label: str
    pruner: str
    structured: bool | None
    runs: list[Run]
    levels: dict[int, LevelStats] = field(default_factory=dict)
    best: int | None = None
    lottery: set[int] = field(default_factory=set)

    @property
    def dense_key(self) -> frozenset:
        return frozenset(run.dense_id for run in self.runs)

    def kind(self) -> str:
        return {True: "structured", False: "unstructured"}.get(self.structured, MISSING)


def eps_text(eps: float) -> str:
    """``2/255`` where that is how eps was written (its decimal is long), else ``0.1``."""
    short = f"{eps:g}"
    k = eps * 255
    if len(short) > 6 and k > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return short


def make_run(table: Any | None, manifest: dict, benchmark: str) -> Run:
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    models = manifest.get("models", [])
    seed = config.get("seed", next((m["seed"] for m in models if "seed" in m), None))
    # Without a pruner name (an older manifest) the benchmark is its own group: guessing would
    # risk averaging two unrelated builds as seeds.
    pruner = str(config.get("pruner") or next((m["pruner"] for m in models if m.get("pruner")),
                                              benchmark))
    flags = {m["structured"] for m in models if isinstance(m.get("structured"), bool)}
    level0 = next((m for m in models if int(m.get("level", -1)) == 0), None)
    sha = manifest.get("files", {}).get(level0.get("onnx")) if level0 else None
    return Run(
        benchmark=benchmark, manifest=manifest, table=table,
        seed=benchmark if seed is None else str(seed),
        pruner=pruner,
        variant=tuple(sorted((k, repr(v)) for k, v in config.items() if k not in _NOT_A_VARIANT)),
        structured=flags.pop() if len(flags) == 1 else None,
        dense_id=f"{seed}:{sha}" if sha else f"benchmark:{benchmark}",
    )


def setting_of(run: Run, verifier: str = "") -> Setting:
    config = run.manifest.get("config") or {}
    dataset = config.get("dataset") or run.manifest.get("dataset", {}).get("name") or "unknown"
    eps = _number(run.manifest.get("eps"))
    return Setting(str(dataset), str(config.get("model") or "unknown"),
                   str(config.get("training") or "unknown"),
                   eps if eps is not None else float("nan"), verifier)


def make_groups(runs: Iterable[Run]) -> list[Group]:
    """One group per pruner and build variant, labelled by what differs between variants."""
    by_variant: dict[tuple[str, tuple], list[Run]] = defaultdict(list)
    for run in runs:
        by_variant[(run.pruner, run.variant)].append(run)
    variants_of: dict[str, list[tuple]] = defaultdict(list)
    for pruner, variant in by_variant:
        variants_of[pruner].append(variant)
    groups = []
    for (pruner, variant), members in sorted(by_variant.items()):
        label = pruner
        if len(variants_of[pruner]) > 1:
            options = [dict(v) for v in variants_of[pruner]]
            keys = sorted({k for o in options for k in o
                           if len({o.get(k) for o in options}) > 1})
            mine = dict(variant)
            label += " (" + ", ".join(f"{k}={mine.get(k, MISSING)}" for k in keys) + ")"
        flags = {r.structured for r in members if r.structured is not None}
        groups.append(aggregate(Group(label, pruner, flags.pop() if len(flags) == 1 else None,
                                      members)))
    # Table 3's order: unstructured pruners, then structured ones.
    return sorted(groups, key=lambda g: (g.structured is True, g.label))


def aggregate_levels(runs: Sequence[Run], only: Iterable[int] | None = None
                     ) -> dict[int, LevelStats]:
    """Mean and standard deviation over seeds, per level (per seed first)."""
    per_level: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    missing: Counter = Counter()
    for run in runs:
        rows = {r.level: r for r in run.table.rows} if run.table is not None else {}
        for level, values in run.levels().items():
            if only is not None and level not in only:
                continue
            per_level[level][run.seed].append(values)
            missing[level] += rows[level].missing if level in rows else 0
    result = {}
    for level, seeds in sorted(per_level.items()):
        stats = {}
        for metric in METRICS:
            per_seed = []
            for values in seeds.values():
                known = [v[metric] for v in values if v.get(metric) is not None]
                if known:
                    per_seed.append(statistics.fmean(known))
            stats[metric] = stat(per_seed)
        result[level] = LevelStats(level, len(seeds), stats, missing[level])
    return result


def aggregate(group: Group) -> Group:
    group.levels = aggregate_levels(group.runs)
    group.best = best_level(group.levels)
    group.lottery = lottery_tickets(group.levels)
    return group


def best_level(levels: dict[int, LevelStats]) -> int | None:
    """The pruned level with the highest mean verified accuracy; ties go to the sparser one."""
    candidates = [s for level, s in levels.items()
                  if level > 0 and s.mean("verified_accuracy") is not None]
    if not candidates:
        return None

    def key(s: LevelStats) -> tuple:
        remain = s.mean("remain_ratio")
        # Rounded so that float noise in a mean does not break a real tie.
        return (round(s.mean("verified_accuracy"), 9),
                -(remain if remain is not None else math.inf), s.level)

    return max(candidates, key=key).level


def lottery_tickets(levels: dict[int, LevelStats]) -> set[int]:
    """Pruned levels whose mean standard and verified accuracy both reach the dense level's."""
    dense = levels.get(0)
    if dense is None:
        return set()
    base_std, base_ver = dense.mean("standard_accuracy"), dense.mean("verified_accuracy")
    if base_std is None or base_ver is None:
        return set()
    tickets = set()
    for level, s in levels.items():
        std, ver = s.mean("standard_accuracy"), s.mean("verified_accuracy")
        if level > 0 and std is not None and ver is not None and \
                std >= base_std - 1e-9 and ver >= base_ver - 1e-9:
            tickets.add(level)
    return tickets


# --- the paper-style summary (Tables 2-5) -----------------------------------------------------

@dataclass
class SummaryRow:
    method: str
    kind: str
    level: int | None
    seeds: int
    stats: dict[str, Stat | None]
    lottery: bool
    dense: bool
    provenance: dict[str, str]


PROVENANCE = ("verifier_version", "params_hash", "suite_version", "host", "device")


def _provenance(runs: Iterable[Run]) -> dict[str, str]:
    """Per provenance column, its distinct values over the runs' results, "; "-joined."""
    values: dict[str, set[str]] = {c: set() for c in PROVENANCE}
    for run in runs:
        for column, seen in run.provenance().items():
            values[column] |= seen
    return {c: "; ".join(sorted(v)) for c, v in values.items()}


def summary_rows(groups: Sequence[Group]) -> list[SummaryRow]:
    """Dense row(s), then each group's best-verified level."""
    rows = []
    by_dense: dict[frozenset, list[Group]] = defaultdict(list)
    for group in groups:
        if 0 in group.levels:
            by_dense[group.dense_key].append(group)
    for members in sorted(by_dense.values(), key=lambda gs: [g.label for g in gs]):
        runs = [run for g in members for run in g.runs]
        dense = aggregate_levels(runs, only=[0])[0]
        method = "Dense" if len(by_dense) == 1 else \
            f"Dense ({', '.join(g.label for g in members)})"
        rows.append(SummaryRow(method, "", 0, dense.seeds, dense.stats, False, True,
                               _provenance(runs)))
    for group in groups:
        best = group.levels.get(group.best) if group.best is not None else None
        rows.append(SummaryRow(
            group.label, group.kind(), group.best,
            best.seeds if best else len({run.seed for run in group.runs}),
            best.stats if best else {}, group.best in group.lottery, False,
            _provenance(group.runs)))
    return rows


def _cell(s: Stat | None, metric: str, pm: str = " ± ", missing: str = MISSING) -> str:
    return missing if s is None else s.text(METRICS[metric].spec, pm)


def summary_markdown(setting: Setting, rows: list[SummaryRow], provenance: str) -> str:
    headers = ["Method", "Type", "Level", *(METRICS[m].header for m in SUMMARY_METRICS),
               "Seeds", STAR]
    body = [[r.method, r.kind, MISSING if r.level is None else str(r.level),
             *(_cell(r.stats.get(m), m) for m in SUMMARY_METRICS), str(r.seeds),
             STAR if r.lottery else ""] for r in rows]
    lines = [f"# {setting.title()}", "", f"- provenance: {provenance}", "",
             *markdown_table(headers, body), "", *(f"- {rule}" for rule in RULES)]
    return "\n".join(lines) + "\n"


RULES = [
    "Pruned rows show each pruner's best-verified level: the highest mean verified accuracy "
    "over the pruned levels (> 0); on a tie the sparser level (smaller remain ratio).",
    "Values are mean ± sample standard deviation over seeds (none with one seed). "
    "std, adv: standard and PGD accuracy (%) from the manifest; ver: verified accuracy (% of "
    "the N verification samples; only `unsat` on a correctly classified sample counts); "
    "t: mean wall time per instance (s). Remain ratio: remaining weights for unstructured, "
    "remaining channels for neuron (structured) pruning.",
    f"{STAR}: certified lottery ticket, a pruned level whose mean standard accuracy and mean "
    "verified accuracy are both >= those of its own dense model (level 0), exactly.",
    f"{MISSING}: not measured (the manifest lacks the metric, or the level has no verification "
    "result at all). Instances without a result count as not verified.",
]


def latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}", "ε": r"$\epsilon$", "±": r"$\pm$",
               STAR: r"$\star$", MISSING: "--"}
    return "".join(special.get(ch, ch) for ch in text)


def summary_latex(setting: Setting, rows: list[SummaryRow], provenance: str) -> str:
    headers = ["Method", "Type", "Level", *(METRICS[m].latex for m in SUMMARY_METRICS),
               "Seeds", r"$\star$"]
    lines = [
        "% Generated by `bench tables`; needs \\usepackage{booktabs}.",
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + latex_escape(
            f"{setting.title()}. Best-verified level per pruner, mean ± std over seeds. "
            f"{STAR}: certified lottery ticket. Provenance: {provenance}.") + "}",
        r"\label{tab:" + setting.slug().replace("__", ":") + "}",
        r"\begin{tabular}{ll" + "r" * (len(headers) - 2) + "}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
    ]
    dense_done = False
    for row in rows:
        if not row.dense and not dense_done:
            lines.append(r"\midrule")  # between the Dense row(s) and the pruners, as Table 2
            dense_done = True
        cells = [latex_escape(row.method), latex_escape(row.kind),
                 "--" if row.level is None else str(row.level),
                 *(_cell(row.stats.get(m), m, r" $\pm$ ", "--") for m in SUMMARY_METRICS),
                 str(row.seeds), r"$\star$" if row.lottery else ""]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_number(s: Stat | None, std: bool = False) -> str:
    if s is None or (std and s.std is None):
        return ""
    return str(round(s.std if std else s.mean, 4))


def summary_csv_rows(setting: Setting, rows: list[SummaryRow]) -> tuple[list[str], list[list]]:
    header = ["dataset", "model", "training", "eps", "verifier", "method", "type", "dense",
              "level", "seeds"]
    for metric in SUMMARY_METRICS:
        header += [metric, f"{metric}_std"]
    header += ["lottery_ticket", *PROVENANCE]
    body = []
    for r in rows:
        line = [setting.dataset, setting.model, setting.training, setting.eps, setting.verifier,
                r.method, "" if r.kind == MISSING else r.kind, r.dense,
                "" if r.level is None else r.level, r.seeds]
        for metric in SUMMARY_METRICS:
            line += [_csv_number(r.stats.get(metric)), _csv_number(r.stats.get(metric), True)]
        line += [r.lottery, *(r.provenance[c] for c in PROVENANCE)]
        body.append(line)
    return header, body


# --- the per-level table ----------------------------------------------------------------------

def levels_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]], list[list]]:
    """Markdown headers and cells, and CSV rows (header first), one row per group and level."""
    headers = ["Method", "Level", *(METRICS[m].header for m in LEVEL_METRICS), "Seeds",
               "Missing results", "Best", STAR]
    csv_rows: list[list] = [["method", "type", "level", "seeds",
                             *(x for m in LEVEL_METRICS for x in (m, f"{m}_std")),
                             "missing", "best", "lottery_ticket"]]
    cells = []
    for group in groups:
        for level, s in group.levels.items():
            best, ticket = level == group.best, level in group.lottery
            cells.append([group.label, str(level),
                          *(_cell(s.stats.get(m), m) for m in LEVEL_METRICS), str(s.seeds),
                          str(s.missing), "best" if best else "", STAR if ticket else ""])
            csv_rows.append([group.label, "" if group.kind() == MISSING else group.kind(), level,
                             s.seeds,
                             *(x for m in LEVEL_METRICS for x in
                               (_csv_number(s.stats.get(m)), _csv_number(s.stats.get(m), True))),
                             s.missing, best, ticket])
    return headers, cells, csv_rows


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"
    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


# --- figures (Fig. 3-6) -----------------------------------------------------------------------

PANELS = (("neuron (structured) pruning", True), ("unstructured pruning", False))


def _new_figure(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    # A bare Figure with the Agg canvas: no pyplot, so no global backend or figure state.
    figure = Figure(figsize=(5.2 * cols, 3.9 * rows + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    figure.suptitle(title, fontsize=11)
    return figure, axes


def _in_panel(group: Group, structured: bool) -> bool:
    # A pruner whose kind the manifests do not say is drawn with the unstructured ones.
    return (group.structured is True) == structured


def _plot_metric(axes: Any, groups: Sequence[Group], metric: str, colors: dict[str, str],
                 stars: bool = False, top: float = math.inf) -> bool:
    """One line per group with a ±std band (clipped to [0, top]: no metric here is negative,
    no accuracy above 100 %); stars on certified lottery tickets. Returns whether anything was
    drawn."""
    drawn = starred = False
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
        tickets = [lv for lv in levels if lv in group.lottery]
        if stars and tickets:
            axes.scatter(tickets, [group.levels[lv].stats[metric].mean for lv in tickets],
                         marker="*", s=180, color=color, edgecolors="black", linewidths=0.6,
                         zorder=3)
            starred = True
        drawn = True
    if starred:
        # One neutral legend entry, after the pruners, for the stars of every colour.
        axes.scatter([], [], marker="*", s=180, facecolor="white", edgecolors="black",
                     linewidths=0.6, label="certified lottery ticket")
    return drawn


def _finish(axes: Any, title: str, ylabel: str, drawn: bool) -> None:
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("pruning level (iterations)")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    if drawn:
        entries = len(axes.get_legend_handles_labels()[1])
        if entries > 4:  # many pruners: beside the panel, where it hides no line
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        else:
            axes.legend(loc="best", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes,
                  color="gray")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    return path


def plot_verified(setting: Setting, groups: Sequence[Group], colors: dict[str, str],
                  path: Path) -> Path:
    """Fig. 3 / 8: verified accuracy against level, one panel per pruning kind present."""
    panels = [(t, s) for t, s in reversed(PANELS) if any(_in_panel(g, s) for g in groups)]
    figure, axes = _new_figure(1, len(panels), f"Verified accuracy vs pruning level\n"
                                               f"{setting.title()}")
    for ax, (title, structured) in zip(axes[0], panels):
        members = [g for g in groups if _in_panel(g, structured)]
        drawn = _plot_metric(ax, members, "verified_accuracy", colors, stars=True, top=100.0)
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


# --- the report page --------------------------------------------------------------------------

@dataclass
class Link:
    text: str
    href: str


Inline = str | Link


@dataclass
class Block:
    kind: str  # "h1".."h3", "p", "list", "table", "img"
    items: list = field(default_factory=list)  # inline segments, list items, or table rows
    headers: list[str] = field(default_factory=list)


def render_markdown(blocks: Sequence[Block]) -> str:
    def inline(items: Sequence[Inline]) -> str:
        return "".join(f"[{i.text}]({i.href})" if isinstance(i, Link) else i for i in items)

    out = []
    for block in blocks:
        if block.kind.startswith("h"):
            out.append("#" * int(block.kind[1]) + " " + inline(block.items))
        elif block.kind == "p":
            out.append(inline(block.items))
        elif block.kind == "list":
            out.append("\n".join(f"- {inline(item)}" for item in block.items))
        elif block.kind == "table":
            out.append("\n".join(markdown_table(block.headers,
                                                [[inline(c) for c in r] for r in block.items])))
        elif block.kind == "img":
            alt, src = block.items
            out.append(f"![{alt}]({src})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block], title: str) -> str:
    def inline(items: Sequence[Inline]) -> str:
        return "".join(f'<a href="{html.escape(i.href)}">{html.escape(i.text)}</a>'
                       if isinstance(i, Link) else
                       re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(i)) for i in items)

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
           "padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
           "img{max-width:100%}</style>", "</head><body>"]
    for block in blocks:
        if block.kind.startswith("h"):
            out.append(f"<{block.kind}>{inline(block.items)}</{block.kind}>")
        elif block.kind == "p":
            out.append(f"<p>{inline(block.items)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>"
                           for row in block.items)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif block.kind == "img":
            alt, src = block.items
            out.append(f'<p><img src="{html.escape(src)}" alt="{html.escape(alt)}"></p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def provenance_blocks(results: Sequence[dict], manifests: dict[str, dict]) -> list[Block]:
    """Who produced the results: one line per verifier version, parameters, suite version,
    host and device, with the status counts and the span of start times."""
    keys = ("verifier", "verifier_version", "params_hash", "suite_version", "host", "device")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in results:
        groups[tuple(row.get(k) for k in keys)].append(row)
    rows = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        counts = Counter(r["status"] for r in members)
        started = sorted(r["started_at"] for r in members if r.get("started_at"))
        rows.append([*(MISSING if v is None else str(v) for v in key), str(len(members)),
                     *(str(counts.get(s, 0)) for s in STATUSES),
                     started[0] if started else MISSING, started[-1] if started else MISSING])
    builds = sorted({str(m.get("suite_version", MISSING)) for m in manifests.values()})
    created = sorted(str(m["created"]) for m in manifests.values() if m.get("created"))
    span = f", created {created[0]} to {created[-1]}" if created else ""
    return [
        Block("h2", ["Provenance"]),
        Block("table", rows, ["verifier", "version", "parameters", "suite version", "host",
                              "device", "results", *STATUSES, "first start", "last start"]),
        Block("p", [f"Benchmarks: {len(manifests)}, built by prune-bench "
                    f"{', '.join(builds)}{span}."]),
    ]


@dataclass
class SettingOutput:
    setting: Setting
    rows: list[SummaryRow]
    files: dict[str, Path]  # kind -> path


def write_report(tables: Sequence[Any], results: Sequence[dict], out_dir: Path,
                 per_benchmark: Sequence[tuple[Any, str]]) -> list[Path]:
    """Write the summaries, per-level tables, figures and ``report.md`` / ``report.html`` into
    ``out_dir``; ``per_benchmark`` are the (table, file stem) pairs ``tables.py`` wrote.
    Returns every written path."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    by_setting: dict[Setting, list[Run]] = defaultdict(list)
    manifests: dict[str, dict] = {}
    for table in tables:
        run = make_run(table, table.manifest, table.benchmark)
        by_setting[setting_of(run, table.verifier)].append(run)
        manifests[table.benchmark] = table.manifest
    grouped = {setting: make_groups(runs) for setting, runs in
               sorted(by_setting.items(), key=lambda kv: _setting_key(kv[0]))}
    # One colour per pruner label across every figure, so a pruner is recognisable anywhere.
    labels = sorted({g.label for groups in grouped.values() for g in groups})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}

    outputs: list[SettingOutput] = []
    for setting, groups in grouped.items():
        runs = by_setting[setting]
        rows = summary_rows(groups)
        provenance = describe_provenance(r for run in runs for r in run.table.results)
        slug = setting.slug()
        files = {
            "md": _write(out_dir / "summary" / f"{slug}.md",
                         summary_markdown(setting, rows, provenance)),
            "tex": _write(out_dir / "summary" / f"{slug}.tex",
                          summary_latex(setting, rows, provenance)),
            "csv": _write_csv(out_dir / "summary" / f"{slug}.csv",
                              *summary_csv_rows(setting, rows)),
        }
        headers, cells, csv_rows = levels_table(groups)
        files["levels_md"] = _write(out_dir / "levels" / f"{slug}.md", "\n".join(
            [f"# Per level: {setting.title()}", "", *markdown_table(headers, cells), "",
             *(f"- {rule}" for rule in RULES)]) + "\n")
        files["levels_csv"] = _write_csv(out_dir / "levels" / f"{slug}.csv", csv_rows[0],
                                         csv_rows[1:])
        files["verified"] = plot_verified(setting, groups, colors,
                                          out_dir / "figures" / f"verified__{slug}.png")
        files["cost"] = plot_cost(setting, groups, colors,
                                  out_dir / "figures" / f"cost__{slug}.png")
        written += files.values()
        outputs.append(SettingOutput(setting, rows, files))

    # Fig. 5 and 6 need the manifests only: one per setting without the verifier, each
    # benchmark once however many verifiers ran on it.
    model_runs: dict[Setting, dict[str, Run]] = defaultdict(dict)
    for setting, runs in by_setting.items():
        plain = Setting(setting.dataset, setting.model, setting.training, setting.eps)
        for run in runs:
            model_runs[plain].setdefault(run.benchmark, make_run(None, run.manifest,
                                                                 run.benchmark))
    model_figures: list[tuple[Setting, list[Path]]] = []
    for setting, runs in sorted(model_runs.items(), key=lambda kv: _setting_key(kv[0])):
        groups = make_groups(runs.values())
        figures = [plot_model_metrics(setting, groups, colors, INSTABILITY,
                                      "Network instability vs pruning level",
                                      out_dir / "figures" / f"instability__{setting.slug()}.png"),
                   plot_model_metrics(setting, groups, colors, UNSTABLE,
                                      "Ratio of unstable neurons vs pruning level",
                                      out_dir / "figures" /
                                      f"unstable_ratio__{setting.slug()}.png")]
        present = [f for f in figures if f is not None]
        written += present
        model_figures.append((setting, present))

    blocks = report_blocks(outputs, model_figures, results, manifests, per_benchmark, out_dir)
    written.append(_write(out_dir / "report.md", render_markdown(blocks)))
    written.append(_write(out_dir / "report.html",
                          render_html(blocks, "prune-bench verification report")))
    return written


def _setting_key(setting: Setting) -> tuple:
    return (setting.dataset, setting.model, setting.training,
            setting.eps if math.isfinite(setting.eps) else math.inf, setting.verifier)


def report_blocks(outputs: Sequence[SettingOutput],
                  model_figures: Sequence[tuple[Setting, list[Path]]], results: Sequence[dict],
                  manifests: dict[str, dict], per_benchmark: Sequence[tuple[Any, str]],
                  out_dir: Path) -> list[Block]:
    def rel(path: Path) -> str:
        return path.relative_to(out_dir).as_posix()

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blocks = [
        Block("h1", ["Verification report"]),
        Block("p", [f"Generated {stamp} by `bench tables`. Per-benchmark, per-seed tables: ",
                    Link("index", "index.md"), ". How the numbers are computed: see Rules "
                    "at the end."]),
        *provenance_blocks(results, manifests),
    ]
    for out in outputs:
        f = out.files
        blocks += [
            Block("h2", [out.setting.title()]),
            Block("p", ["Summary (Tables 2-5): ", Link("Markdown", rel(f["md"])), ", ",
                        Link("LaTeX", rel(f["tex"])), ", ", Link("CSV", rel(f["csv"])),
                        ". Every level: ", Link("Markdown", rel(f["levels_md"])), ", ",
                        Link("CSV", rel(f["levels_csv"])), "."]),
            Block("table", [[r.method, r.kind, MISSING if r.level is None else str(r.level),
                             *(_cell(r.stats.get(m), m) for m in SUMMARY_METRICS), str(r.seeds),
                             STAR if r.lottery else ""] for r in out.rows],
                  ["Method", "Type", "Level", *(METRICS[m].header for m in SUMMARY_METRICS),
                   "Seeds", STAR]),
            Block("p", ["Verified accuracy vs level (Fig. 3/8): ",
                        Link(f["verified"].name, rel(f["verified"]))]),
            Block("img", [f"verified accuracy, {out.setting.title()}", rel(f["verified"])]),
            Block("p", ["Verification time and peak memory vs level (Fig. 4): ",
                        Link(f["cost"].name, rel(f["cost"]))]),
            Block("img", [f"verification cost, {out.setting.title()}", rel(f["cost"])]),
        ]
    for setting, figures in model_figures:
        blocks.append(Block("h2", [f"Neuron stability: {setting.title()}"]))
        if not figures:
            blocks.append(Block("p", ["No manifest of these benchmarks holds instability "
                                      "metrics (instability, unstable_ratio)."]))
        for path in figures:
            caption = ("Instability vs level, pre-activation and pre-BN (Fig. 5): "
                       if path.name.startswith("instability") else
                       "Ratio of unstable neurons vs level (Fig. 6): ")
            blocks += [Block("p", [caption, Link(path.name, rel(path))]),
                       Block("img", [caption.rstrip(": "), rel(path)])]
    blocks.append(Block("h2", ["Per benchmark"]))
    blocks.append(Block("list", [[f"{t.benchmark}, {t.verifier}: ", Link("table", f"{s}.md"),
                                  ", ", Link("CSV", f"{s}.csv"), ", ", Link("plot", f"{s}.png")]
                                 for t, s in per_benchmark]))
    warnings = [[w] for t, _ in per_benchmark if (w := _check_text(t))]
    if warnings:
        blocks += [Block("h3", ["Checks"]), Block("list", warnings)]
    blocks += [Block("h2", ["Rules"]),
               Block("list", [[rule] for rule in RULES] + [[
                   "Groups: benchmarks of one dataset, model, training, eps, verifier and pruner "
                   "are seeds of one experiment; benchmarks that differ in another build option "
                   "form separate groups, labelled with the options that differ. Pruners of "
                   "unknown kind are drawn with the unstructured ones."]])]
    return blocks


def _check_text(table: Any) -> str:
    """What is off in one per-benchmark table (empty when nothing is)."""
    problems = [(sum(r.missing for r in table.rows), "instance(s) without a result"),
                (sum(r.unsat_misclassified for r in table.rows),
                 "`unsat` on misclassified sample(s)"),
                (table.unmatched, "result(s) for files the manifest does not list")]
    found = [f"{n} {text}" for n, text in problems if n]
    return f"{table.benchmark}, {table.verifier}: {', '.join(found)}" if found else ""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path
