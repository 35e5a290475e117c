"""Every table in text: Markdown, LaTeX (booktabs), CSV, and the Markdown/HTML page renderer.

Numbers come computed (``bench.collate.tables``, ``bench.collate.aggregate``); this module only
formats them. "—" means not measured; an empty cell means not applicable (e.g. the comparison
with the dense level, on the dense level itself).
"""
from __future__ import annotations

import csv
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.collate import stats
from bench.collate.aggregate import Group, LevelComparison, LevelStats, Setting, Stat, \
    SummaryRow, PROVENANCE, tried
from bench.collate.tables import STATUSES, LevelRow, Table
from bench.run.results import describe_provenance

MISSING = "—"
STAR = "★"
CONFIDENCE_TEXT = f"{stats.CONFIDENCE:.0%}"


# --- numbers ----------------------------------------------------------------------------------

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
                   "verified_accuracy")
LEVEL_METRICS = ("remain_ratio", "standard_accuracy", "adversarial_accuracy", "verified_accuracy",
                 "ibp_verified_accuracy", "crown_verified_accuracy", "mean_time_s",
                 "peak_memory_mb", "peak_gpu_memory_mb", "instability", "instability_pre_bn",
                 "unstable_ratio", "sample_accuracy")


def stat_text(s: Stat | None, metric: str, pm: str = " ± ", missing: str = MISSING) -> str:
    if s is None:
        return missing
    spec = METRICS[metric].spec
    if s.std is None:
        return format(s.mean, spec)
    return f"{format(s.mean, spec)}{pm}{format(s.std, spec)}"


def range_text(bounds: tuple[float, float] | None, spec: str = ".1f") -> str:
    return MISSING if bounds is None else f"{bounds[0]:{spec}}–{bounds[1]:{spec}}"


def signed(value: float) -> str:
    """``+12.5`` / ``-3.0`` / ``0.0`` (percentage points)."""
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def difference_text(comparison: LevelComparison | None) -> str:
    if comparison is None:
        return ""
    low, high = comparison.interval
    return f"{signed(comparison.difference)} [{signed(low)}, {signed(high)}]"


def p_text(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def needed_text(needed: int | None) -> str:
    return "∞" if needed is None else str(needed)


def _round(value: float | None, digits: int = 4) -> Any:
    return "" if value is None else round(value, digits)


def _csv_stat(s: Stat | None, std: bool = False) -> Any:
    if s is None or (std and s.std is None):
        return ""
    return round(s.std if std else s.mean, 4)


def _bounds(bounds: tuple[float, float] | None) -> list:
    return ["", ""] if bounds is None else [round(bounds[0], 4), round(bounds[1], 4)]


def comparison_csv(comparison: LevelComparison | None) -> list:
    """CSV cells in ``COMPARISON_CSV`` order."""
    if comparison is None:
        return [""] * len(COMPARISON_CSV)
    return [comparison.seeds, comparison.pairs, comparison.gained, comparison.lost,
            round(comparison.difference, 4), *_bounds(comparison.interval),
            _round(comparison.p_value, 6), _round(comparison.p_holm, 6),
            round(comparison.power, 4), "" if comparison.needed is None else comparison.needed]


COMPARISON_CSV = ("compared_seeds", "pairs", "gained", "lost", "delta_pp", "delta_ci_low",
                  "delta_ci_high", "p_value", "p_holm", "power", "pairs_for_80_power")


# --- generic writers --------------------------------------------------------------------------

def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"
    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}", "ε": r"$\epsilon$", "±": r"$\pm$",
               "Δ": r"$\Delta$", "∞": r"$\infty$", "<": r"$<$", "–": "--",
               STAR: r"$\star$", MISSING: "--"}
    return "".join(special.get(ch, ch) for ch in text)


# --- the per-benchmark table (one seed, one verifier) -----------------------------------------

# (CSV name, Markdown header) per column, in table order.
BENCHMARK_COLUMNS = (
    ("level", "level"),
    ("remain_ratio", "remaining weights"),
    ("samples", "N"),
    ("standard_accuracy", "standard acc. (%)"),
    ("verified_accuracy", "verified acc. (%)"),
    ("verified_ci", f"ver. {CONFIDENCE_TEXT} CI (Wilson)"),
    ("band", "undecided band (%)"),
    ("mean_time_s", "mean time / sample (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
    *((s, s) for s in STATUSES),
    ("missing", "missing"),
    ("unsat_misclassified", "unsat on misclassified"),
    ("delta", "Δ ver. vs level 0 (pp)"),
    ("discordant", "gained / lost"),
    ("p_value", "p (McNemar)"),
    ("p_holm", "p (Holm)"),
)
_BENCHMARK_CSV_PAIRS = {"verified_ci": ("verified_ci_low", "verified_ci_high"),
                        "band": ("band_low", "band_high"),
                        "discordant": ("gained", "lost"),
                        "delta": ("pairs", "delta_pp")}


def _level_numbers(row: LevelRow) -> dict[str, Any]:
    comparison = row.comparison if row.comparison is not None and row.comparison.pairs \
        else None
    return {
        "level": row.level,
        "remain_ratio": row.remain_ratio,
        "samples": row.samples,
        "standard_accuracy": round(row.standard_accuracy, 2),
        "verified_accuracy": round(row.verified_accuracy, 2),
        # No interval for a level without a single result: there is nothing to estimate yet.
        "verified_ci": tuple(round(v, 2) for v in row.verified_interval) if tried(row) else None,
        "band": tuple(round(v, 2) for v in row.band),
        "mean_time_s": None if row.mean_time_s is None else round(row.mean_time_s, 3),
        "peak_memory_mb": None if row.peak_memory_mb is None else round(row.peak_memory_mb, 1),
        **{s: row.counts.get(s, 0) for s in STATUSES},
        "missing": row.missing,
        "unsat_misclassified": row.unsat_misclassified,
        "delta": None if comparison is None else (comparison.pairs,
                                                  round(comparison.difference, 2)),
        "discordant": None if comparison is None else (comparison.gained, comparison.lost),
        "p_value": None if comparison is None else round(comparison.p_value, 6),
        "p_holm": None if comparison is None or comparison.p_holm is None
        else round(comparison.p_holm, 6),
    }


def benchmark_csv(table: Table) -> tuple[list[str], list[list]]:
    header = [n for name, _ in BENCHMARK_COLUMNS for n in _BENCHMARK_CSV_PAIRS.get(name, (name,))]
    body = []
    for row in table.rows:
        values = _level_numbers(row)
        line: list = []
        for name, _ in BENCHMARK_COLUMNS:
            value = values[name]
            if name in _BENCHMARK_CSV_PAIRS:
                line += list(value) if value is not None else ["", ""]
            else:
                line.append("" if value is None else value)
        body.append(line)
    return header, body


def _benchmark_cell(name: str, value: Any) -> str:
    if value is None:
        return "" if name in ("delta", "discordant", "p_value", "p_holm") else MISSING
    if name == "remain_ratio":
        return f"{100 * value:.1f}%"
    if name in ("standard_accuracy", "verified_accuracy"):
        return f"{value:.1f}"
    if name in ("verified_ci", "band"):
        return range_text(value)
    if name == "delta":
        return signed(value[1])
    if name == "discordant":
        return f"{value[0]} / {value[1]}"
    if name in ("p_value", "p_holm"):
        return p_text(value)
    if name == "mean_time_s":
        return f"{value:.2f}"
    if name == "peak_memory_mb":
        return f"{value:.0f}"
    return str(value)


def benchmark_markdown(table: Table) -> str:
    manifest = table.manifest
    versions = ", ".join(table.versions) or "unknown"
    lines = [f"# {table.benchmark}: {table.verifier}", "",
             f"- benchmark folder: `{table.root}`",
             f"- verifier: {table.verifier} (version {versions})",
             f"- provenance: {describe_provenance(table.results)}",
             f"- dataset: {manifest.get('dataset', {}).get('name', '?')}, "
             f"eps = {manifest.get('eps')}, timeout = {manifest.get('timeout')} s", ""]
    lines += markdown_table([header for _, header in BENCHMARK_COLUMNS],
                            [[_benchmark_cell(name, values[name]) for name, _ in
                              BENCHMARK_COLUMNS]
                             for values in map(_level_numbers, table.rows)])
    lines += ["", *(f"- {rule}" for rule in BENCHMARK_RULES)]
    suspicious = sum(r.unsat_misclassified for r in table.rows)
    if suspicious:
        lines.append(f"\n**Warning:** {suspicious} `unsat` answer(s) on misclassified samples, "
                     "whose clean input is itself a counterexample: the verifier is wrong there.")
    if table.unmatched:
        lines.append(f"\n**Note:** {table.unmatched} result(s) name files this benchmark's "
                     "manifest does not list (an older export?); they are left out.")
    return "\n".join(lines) + "\n"


# --- the rules, said under every table --------------------------------------------------------

VERIFIED_RULE = ("Verified accuracy counts only `unsat` on a correctly classified sample; `sat`, "
                 "`timeout`, `unknown`, `error` and missing results never count. Percentages "
                 "are of the N samples.")
WILSON_RULE = f"{CONFIDENCE_TEXT} CI: Wilson score interval of the verified share."
INTERVAL_RULE = (f"{CONFIDENCE_TEXT} CI: Wilson score interval of the verified share (on the "
                 "instances pooled over seeds in the summaries, so it shows the sampling "
                 "uncertainty; the ± is the spread between seeds).")
BAND_RULE = ("Undecided band: from the verified accuracy (every `timeout`, `unknown`, `error` "
             "or missing result counted as not robust) up to the share of correctly classified "
             "samples answered `unsat`, `timeout`, `unknown`, `error` or not yet answered "
             "(every undecided one counted as robust).")
PAIRED_RULE = (
    "Δ ver: verified accuracy at the level minus at its own dense level (level 0, same seed), "
    "in percentage points, on the samples with a result at both. Per seed: exact McNemar "
    "test on the discordant pairs (gained / lost).")
COMPARISON_RULE = PAIRED_RULE + (
    f" Over seeds: the mean of the per-seed differences with a {CONFIDENCE_TEXT} two-stage "
    f"paired bootstrap interval (seeds, then samples, resampled; {stats.BOOTSTRAP_RESAMPLES} "
    f"resamples, seed {stats.BOOTSTRAP_SEED}), and the exact McNemar test on the discordant "
    "pairs pooled over seeds (it treats the seeds' pairs as independent; when seeds disagree, "
    "trust the interval, which resamples seeds). p (Holm): Holm-adjusted over the pruned "
    "levels tested.")
POWER_RULE = (
    f"Pairs for 80 % power: samples (over all seeds) a two-sided McNemar test at alpha "
    f"{stats.ALPHA} needs to detect the observed discordance with {stats.POWER:.0%} power "
    "(Connor 1987, normal approximation); ∞ when no difference was observed.")
BENCHMARK_RULES = [VERIFIED_RULE, WILSON_RULE, BAND_RULE,
                   PAIRED_RULE + " p (Holm): Holm-adjusted over this table's pruned levels.",
                   "Mean time is the wall time per instance over the instances that have a "
                   "result."]
RULES = [
    "Pruned rows show each experiment's best-verified level: the highest mean verified accuracy "
    "over the pruned levels (> 0); on a tie the sparser level (smaller remain ratio). It is "
    "chosen after seeing the data; the Holm adjustment over all pruned levels accounts for "
    "that choice.",
    "Values are mean ± sample standard deviation over seeds (none with one seed). "
    "std, adv: standard and PGD accuracy (%) from the manifest; ver: verified accuracy (% of "
    "the N verification samples); t: mean wall time per instance (s). Remain ratio: remaining "
    "weights for unstructured, remaining channels for neuron (structured) pruning.",
    VERIFIED_RULE, INTERVAL_RULE, BAND_RULE, COMPARISON_RULE, POWER_RULE,
    f"{STAR}: certified lottery ticket, a pruned level whose mean standard accuracy is >= its "
    "own dense model's and whose verified accuracy is significantly higher than the dense "
    f"model's on the same samples (Δ > 0 and Holm-adjusted McNemar p <= {stats.ALPHA}). A "
    "level that only matches or beats the dense mean by chance gets no star; its Δ and p are "
    "in the per-level table.",
    f"{MISSING}: not measured (the manifest lacks the metric, or the level has no verification "
    "result at all). An empty cell: not applicable (the dense level is not compared with "
    "itself).",
]


# --- the paper-style summary (Tables 2-5) -----------------------------------------------------

SUMMARY_EXTRA = (f"ver {CONFIDENCE_TEXT} CI", "undecided band", "Δ ver (pp) [CI]", "p (Holm)")


def summary_cells(row: SummaryRow, pm: str = " ± ", missing: str = MISSING) -> list[str]:
    """Method, Type, Level, the summary metrics, CI, band, Δ, p, t, Seeds, star."""
    level_stats: LevelStats | None = row.level_stats
    comparison = level_stats.comparison if level_stats is not None else None
    return [row.method, row.kind or (missing if not row.dense else ""),
            missing if row.level is None else str(row.level),
            *(stat_text(row.stats.get(m), m, pm, missing) for m in SUMMARY_METRICS),
            range_text(level_stats.verified_interval) if level_stats else missing,
            range_text(level_stats.band) if level_stats else missing,
            difference_text(comparison), p_text(comparison.p_holm) if comparison else "",
            stat_text(row.stats.get("mean_time_s"), "mean_time_s", pm, missing),
            str(row.seeds), STAR if row.lottery else ""]


def summary_headers(latex: bool = False) -> list[str]:
    metric = (lambda m: METRICS[m].latex) if latex else (lambda m: METRICS[m].header)
    extra = [latex_escape(h) for h in SUMMARY_EXTRA] if latex else list(SUMMARY_EXTRA)
    return ["Method", "Type", "Level", *map(metric, SUMMARY_METRICS), *extra,
            metric("mean_time_s"), "Seeds", r"$\star$" if latex else STAR]


def summary_markdown(setting: Setting, rows: list[SummaryRow], provenance: str) -> str:
    lines = [f"# {setting.title()}", "", f"- provenance: {provenance}", "",
             *markdown_table(summary_headers(), [summary_cells(r) for r in rows]), "",
             *(f"- {rule}" for rule in RULES)]
    return "\n".join(lines) + "\n"


def summary_latex(setting: Setting, rows: list[SummaryRow], provenance: str) -> str:
    headers = summary_headers(latex=True)
    lines = [
        "% Generated by `bench tables`; needs \\usepackage{booktabs}.",
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + latex_escape(
            f"{setting.title()}. Best-verified level per experiment, mean ± std over seeds; "
            f"ver CI: {CONFIDENCE_TEXT} Wilson interval; undecided band: verified accuracy if "
            "every undecided instance were not robust .. robust; Δ: paired difference to the "
            "dense model with a bootstrap CI; p: exact McNemar, Holm-adjusted. "
            f"{STAR}: certified lottery ticket (significant). Provenance: {provenance}.") + "}",
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
        cells = summary_cells(row, pm=" ± ", missing=MISSING)
        lines.append(" & ".join(latex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def level_csv(level_stats: LevelStats | None) -> list:
    """Verified interval, band and comparison cells of one level, in ``LEVEL_CSV`` order."""
    if level_stats is None:
        return [""] * (4 + len(COMPARISON_CSV))
    return [*_bounds(level_stats.verified_interval), *_bounds(level_stats.band),
            *comparison_csv(level_stats.comparison)]


LEVEL_CSV = ("verified_ci_low", "verified_ci_high", "band_low", "band_high", *COMPARISON_CSV)


def summary_csv(setting: Setting, rows: list[SummaryRow]) -> tuple[list[str], list[list]]:
    header = ["dataset", "model", "training", "eps", "verifier", "method", "type", "dense",
              "level", "seeds"]
    metrics = (*SUMMARY_METRICS, "mean_time_s")
    for metric in metrics:
        header += [metric, f"{metric}_std"]
    header += [*LEVEL_CSV, "lottery_ticket", *PROVENANCE]
    body = []
    for r in rows:
        line = [setting.dataset, setting.model, setting.training, setting.eps, setting.verifier,
                r.method, r.kind, r.dense, "" if r.level is None else r.level, r.seeds]
        for metric in metrics:
            line += [_csv_stat(r.stats.get(metric)), _csv_stat(r.stats.get(metric), True)]
        line += [*level_csv(r.level_stats), r.lottery, *(r.provenance[c] for c in PROVENANCE)]
        body.append(line)
    return header, body


# --- the per-level table ----------------------------------------------------------------------

LEVEL_EXTRA = (f"ver {CONFIDENCE_TEXT} CI", "undecided band", "Δ ver (pp) [CI]",
               "gained / lost", "p", "p (Holm)", "pairs for 80 % power")


def levels_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]], list[list]]:
    """Markdown headers and cells, and CSV rows (header first), one row per group and level."""
    headers = ["Method", "Level", *(METRICS[m].header for m in LEVEL_METRICS), *LEVEL_EXTRA,
               "Seeds", "Missing results", "Best", STAR]
    csv_rows: list[list] = [["method", "type", "level", "seeds",
                             *(x for m in LEVEL_METRICS for x in (m, f"{m}_std")),
                             *LEVEL_CSV, "missing", "best", "lottery_ticket"]]
    cells = []
    for group in groups:
        for level, s in group.levels.items():
            best, ticket, c = level == group.best, level in group.lottery, s.comparison
            cells.append([group.label, str(level),
                          *(stat_text(s.stats.get(m), m) for m in LEVEL_METRICS),
                          range_text(s.verified_interval), range_text(s.band),
                          difference_text(c), f"{c.gained} / {c.lost}" if c else "",
                          p_text(c.p_value) if c else "", p_text(c.p_holm) if c else "",
                          needed_text(c.needed) if c else "",
                          str(s.seeds), str(s.missing), "best" if best else "",
                          STAR if ticket else ""])
            csv_rows.append([group.label, group.kind(), level, s.seeds,
                             *(x for m in LEVEL_METRICS for x in
                               (_csv_stat(s.stats.get(m)), _csv_stat(s.stats.get(m), True))),
                             *level_csv(s), s.missing, best, ticket])
    return headers, cells, csv_rows


def levels_markdown(setting: Setting, groups: Sequence[Group]) -> tuple[str, list[list]]:
    """The per-level page and its CSV rows (header first)."""
    headers, cells, csv_rows = levels_table(groups)
    text = "\n".join([f"# Per level: {setting.title()}", "", *markdown_table(headers, cells), "",
                      *(f"- {rule}" for rule in RULES)]) + "\n"
    return text, csv_rows


# --- a page: blocks rendered as Markdown or HTML ----------------------------------------------

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
        text = "".join(f'<a href="{html.escape(i.href)}">{html.escape(i.text)}</a>'
                       if isinstance(i, Link) else
                       re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(i)) for i in items)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)

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
