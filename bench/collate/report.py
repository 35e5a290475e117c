"""``bench tables``: every table, figure and the report page, from a results database.

``make_tables`` reads the database once (``tables.load_tables``), writes one table (Markdown,
CSV) and plot per (benchmark, verifier), groups the benchmarks into settings and experiments
(``aggregate``), writes per setting the paper-style summary (Markdown, LaTeX, CSV), the
per-level table and the figures, and assembles ``report.md`` / ``report.html``: one sentence
per experiment on what the data support first, then provenance, tables, figures and the rules.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bench.collate import figures, render, stages, stats
from bench.collate.authors import Views, render_safe, write_views
from bench.collate.difficulty import assess_benchmark
from bench.collate.aggregate import Group, Run, Setting, make_groups, make_run, setting_of, \
    summary_rows, SummaryRow
from bench.collate.render import MISSING, Block, Link, signed, p_text
from bench.collate.tables import STATUSES, Table, load_tables
from bench.run.results import describe_provenance


def make_tables(results_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``<benchmark>__<verifier>.{md,csv,png}`` per pair found in the results, the
    summaries, per-level tables and figures per setting (``summary/``, ``levels/``,
    ``figures/``), ``report.md``, ``report.html`` and ``index.md``, which links to the report
    first; returns every written path."""
    tables, results = load_tables(Path(results_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    per_benchmark: list[tuple[Table, str]] = []
    for table in tables:
        stem = f"{render_safe(table.benchmark)}__{render_safe(table.verifier)}"
        written += [
            render.write_csv(out_dir / f"{stem}.csv", *render.benchmark_csv(table)),
            render.write_text(out_dir / f"{stem}.md", render.benchmark_markdown(table)
                              + stages.stages_markdown(table.results)),
            figures.plot_benchmark(table, out_dir / f"{stem}.png"),
        ]
        per_benchmark.append((table, stem))
    written += write_report(results, out_dir, per_benchmark)
    written.append(render.write_text(out_dir / "index.md", index_markdown(per_benchmark)))
    return written


@dataclass
class SettingOutput:
    setting: Setting
    groups: list[Group]
    rows: list[SummaryRow]
    files: dict[str, Path]  # kind -> path


def write_report(results: Sequence[dict], out_dir: Path,
                 per_benchmark: Sequence[tuple[Table, str]]) -> list[Path]:
    """Write the summaries, per-level tables, figures and ``report.md`` / ``report.html`` into
    ``out_dir``; ``per_benchmark`` are the (table, file stem) pairs already written. Returns
    every written path."""
    written: list[Path] = []
    by_setting: dict[Setting, list[Run]] = defaultdict(list)
    manifests: dict[str, dict] = {}
    for table, _ in per_benchmark:
        run = make_run(table, table.manifest, table.benchmark)
        by_setting[setting_of(run, table.verifier)].append(run)
        manifests[table.benchmark] = table.manifest
    grouped = {setting: make_groups(runs) for setting, runs in
               sorted(by_setting.items(), key=lambda kv: kv[0].sort_key())}
    # One colour per experiment label across every figure, so it is recognisable anywhere.
    labels = sorted({g.label for groups in grouped.values() for g in groups})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}

    outputs: list[SettingOutput] = []
    for setting, groups in grouped.items():
        rows = summary_rows(groups)
        provenance = describe_provenance(r for run in by_setting[setting]
                                         for r in run.table.results)
        slug = setting.slug()
        levels_text, levels_csv = render.levels_markdown(setting, groups)
        files = {
            "md": render.write_text(out_dir / "summary" / f"{slug}.md",
                                    render.summary_markdown(setting, rows, provenance)),
            "tex": render.write_text(out_dir / "summary" / f"{slug}.tex",
                                     render.summary_latex(setting, rows, provenance)),
            "csv": render.write_csv(out_dir / "summary" / f"{slug}.csv",
                                    *render.summary_csv(setting, rows)),
            "levels_md": render.write_text(out_dir / "levels" / f"{slug}.md", levels_text),
            "levels_csv": render.write_csv(out_dir / "levels" / f"{slug}.csv", levels_csv[0],
                                           levels_csv[1:]),
            "verified": figures.plot_verified(setting, groups, colors,
                                              out_dir / "figures" / f"verified__{slug}.png"),
            "cost": figures.plot_cost(setting, groups, colors,
                                      out_dir / "figures" / f"cost__{slug}.png"),
        }
        written += files.values()
        outputs.append(SettingOutput(setting, groups, rows, files))

    model_figures = write_model_figures(by_setting, colors, out_dir)
    written += [path for _, paths in model_figures for path in paths]
    views = write_author_views(results, per_benchmark, out_dir)
    written += [path for v in views for path in v.files.values()]
    blocks = report_blocks(outputs, model_figures, results, manifests, per_benchmark, out_dir,
                           views)
    written.append(render.write_text(out_dir / "report.md", render.render_markdown(blocks)))
    written.append(render.write_text(out_dir / "report.html", render.render_html(
        blocks, "prune-bench verification report")))
    return written


def write_author_views(results: Sequence[dict], per_benchmark: Sequence[tuple[Table, str]],
                       out_dir: Path) -> list[Views]:
    """Per benchmark (each once, whatever the verifiers): difficulty, cactus plot, scores and
    time vs instability (``bench.collate.authors``), under ``verifiers/``."""
    tables = {table.benchmark: table for table, _ in per_benchmark}
    return [write_views(assess_benchmark(name, table.manifest, results, table.root), results,
                        out_dir / "verifiers", render_safe(name), link_base=out_dir)
            for name, table in sorted(tables.items())]


def write_model_figures(by_setting: dict[Setting, list[Run]], colors: dict[str, str],
                        out_dir: Path) -> list[tuple[Setting, list[Path]]]:
    """Fig. 5 and 6 need the manifests only: one per setting without the verifier, each
    benchmark once however many verifiers ran on it."""
    model_runs: dict[Setting, dict[str, Run]] = defaultdict(dict)
    for setting, runs in by_setting.items():
        plain = Setting(setting.dataset, setting.model, setting.training, setting.eps)
        for run in runs:
            model_runs[plain].setdefault(run.benchmark, make_run(None, run.manifest,
                                                                 run.benchmark))
    model_figures: list[tuple[Setting, list[Path]]] = []
    for setting, runs in sorted(model_runs.items(), key=lambda kv: kv[0].sort_key()):
        groups = make_groups(runs.values())
        drawn = [figures.plot_model_metrics(setting, groups, colors, figures.INSTABILITY,
                                            "Network instability vs pruning level",
                                            out_dir / "figures" /
                                            f"instability__{setting.slug()}.png"),
                 figures.plot_model_metrics(setting, groups, colors, figures.UNSTABLE,
                                            "Ratio of unstable neurons vs pruning level",
                                            out_dir / "figures" /
                                            f"unstable_ratio__{setting.slug()}.png")]
        model_figures.append((setting, [f for f in drawn if f is not None]))
    return model_figures


# --- what the data support, one sentence per experiment ---------------------------------------

def headline(group: Group, setting: Setting) -> str:
    """The effect of pruning on verified accuracy at the experiment's best level, with its
    interval and p-value, or that no significant difference was found and how many samples
    would be needed to find the observed one."""
    name = f"**{group.label}** ({setting.title()})"
    dense = group.levels.get(0)
    if dense is None or dense.mean("verified_accuracy") is None:
        return f"{name}: the dense level (0) has no verification results; nothing to compare."
    if group.best is None:
        return f"{name}: no pruned level has verification results; nothing to compare."
    best = group.levels[group.best]
    c = best.comparison
    if c is None:
        return (f"{name}: level {group.best} and the dense level share no sample with a result "
                "at both; nothing to compare.")
    remain = best.mean("remain_ratio")
    where = f"level {group.best}" + ("" if remain is None else
                                     f" ({100 * remain:.0f} % of the weights left)")
    seeds = f"{c.seeds} seed{'s' if c.seeds != 1 else ''}"
    low, high = c.interval
    tests = f"McNemar p = {p_text(c.p_value)}, Holm-adjusted p = {p_text(c.p_holm)}"
    text = (f"{name}: at its best level, {where}, verified accuracy "
            f"{best.mean('verified_accuracy'):.1f} % vs {dense.mean('verified_accuracy'):.1f} % "
            f"dense. On the same {c.pairs} samples ({seeds}), Δ = {signed(c.difference)} pp "
            f"({render.CONFIDENCE_TEXT} CI {signed(low)} to {signed(high)}): ")
    if c.significant:
        text += (f"significantly {'higher' if c.difference > 0 else 'lower'} than the dense "
                 f"model ({tests}).")
    else:
        text += f"no significant difference at {c.pairs} samples ({tests})."
        if c.needed is None:
            text += " Both levels verify equally many of them: there is no observed " \
                    "difference to detect."
        else:
            text += (f" Detecting a difference of {signed(c.difference)} pp with "
                     f"{stats.POWER:.0%} power at alpha {stats.ALPHA} would need about "
                     f"{c.needed} paired samples (McNemar, Connor 1987; power at {c.pairs}: "
                     f"{c.power:.0%}).")
    missing = best.missing + dense.missing
    if missing:
        text += (f" {missing} instance(s) of these two levels have no result yet; the "
                 "comparison uses only samples answered at both.")
    return text


# --- the page ---------------------------------------------------------------------------------

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


def report_blocks(outputs: Sequence[SettingOutput],
                  model_figures: Sequence[tuple[Setting, list[Path]]], results: Sequence[dict],
                  manifests: dict[str, dict], per_benchmark: Sequence[tuple[Table, str]],
                  out_dir: Path, views: Sequence[Views] = ()) -> list[Block]:
    def rel(path: Path) -> str:
        return path.relative_to(out_dir).as_posix()

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blocks = [
        Block("h1", ["Verification report"]),
        Block("p", [f"Generated {stamp} by `bench tables`. Per-benchmark, per-seed tables: ",
                    Link("index", "index.md"), ". How the numbers are computed: see Rules "
                    "at the end."]),
        Block("h2", ["What the data support"]),
        Block("list", [[headline(group, out.setting)] for out in outputs
                       for group in out.groups]),
    ]
    if views:
        blocks += [Block("p", ["Does pruning make verification easier through fewer unstable "
                               "neurons, instance by instance? Spearman's ρ of verification "
                               "time against the unstable ReLUs under each property's box "
                               "(details under \"For verifier authors\"):"]),
                   Block("list", [[v.sentence] for v in views])]
    blocks += provenance_blocks(results, manifests)
    blocks += stages.stage_blocks(results)
    for out in outputs:
        f = out.files
        blocks += [
            Block("h2", [out.setting.title()]),
            Block("p", ["Summary (Tables 2-5): ", Link("Markdown", rel(f["md"])), ", ",
                        Link("LaTeX", rel(f["tex"])), ", ", Link("CSV", rel(f["csv"])),
                        ". Every level, with the paired tests: ",
                        Link("Markdown", rel(f["levels_md"])), ", ",
                        Link("CSV", rel(f["levels_csv"])), "."]),
            Block("table", [render.summary_cells(r) for r in out.rows],
                  render.summary_headers()),
            Block("p", ["Verified accuracy vs level (Fig. 3/8): ",
                        Link(f["verified"].name, rel(f["verified"]))]),
            Block("img", [f"verified accuracy, {out.setting.title()}", rel(f["verified"])]),
            Block("p", ["Verification time and peak memory vs level (Fig. 4): ",
                        Link(f["cost"].name, rel(f["cost"]))]),
            Block("img", [f"verification cost, {out.setting.title()}", rel(f["cost"])]),
        ]
    for setting, paths in model_figures:
        blocks.append(Block("h2", [f"Neuron stability: {setting.title()}"]))
        if not paths:
            blocks.append(Block("p", ["No manifest of these benchmarks holds instability "
                                      "metrics (instability, unstable_ratio)."]))
        for path in paths:
            caption = ("Instability vs level, pre-activation and pre-BN (Fig. 5): "
                       if path.name.startswith("instability") else
                       "Ratio of unstable neurons vs level (Fig. 6): ")
            blocks += [Block("p", [caption, Link(path.name, rel(path))]),
                       Block("img", [caption.rstrip(": "), rel(path)])]
    if views:
        blocks.append(Block("h2", ["For verifier authors: difficulty, cactus plots, scores, "
                                   "time vs instability"]))
        for v in views:
            blocks += v.blocks
    blocks.append(Block("h2", ["Per benchmark"]))
    blocks.append(Block("list", [[f"{t.benchmark}, {t.verifier}: ", Link("table", f"{s}.md"),
                                  ", ", Link("CSV", f"{s}.csv"), ", ", Link("plot", f"{s}.png")]
                                 for t, s in per_benchmark]))
    warnings = [[w] for t, _ in per_benchmark if (w := check_text(t))]
    if warnings:
        blocks += [Block("h3", ["Checks"]), Block("list", warnings)]
    blocks += [Block("h2", ["Rules"]),
               Block("list", [[rule] for rule in render.RULES] + [[
                   "Groups: benchmarks of one dataset, model, training, eps and verifier are "
                   "seeds of one experiment when their manifests record the same experiment "
                   "hash; manifests without one are grouped by pruner, and benchmarks that "
                   "differ in another build option form separate groups, labelled with the "
                   "options that differ. Pruners of unknown kind are drawn with the "
                   "unstructured ones."]])]
    return blocks


def check_text(table: Table) -> str:
    """What is off in one per-benchmark table (empty when nothing is)."""
    problems = [(sum(r.missing for r in table.rows), "instance(s) without a result"),
                (sum(r.unsat_misclassified for r in table.rows),
                 "`unsat` on misclassified sample(s)"),
                (table.unmatched, "result(s) for files the manifest does not list")]
    found = [f"{n} {text}" for n, text in problems if n]
    return f"{table.benchmark}, {table.verifier}: {', '.join(found)}" if found else ""


def index_markdown(per_benchmark: Sequence[tuple[Table, str]]) -> str:
    lines = ["# Verification results", "",
             "**Start with the [report](report.md)** ([HTML](report.html)): what the data "
             "support, paper-style summaries over seeds (Tables 2-5) with confidence intervals "
             "and paired tests, figures (Fig. 3-6) and provenance. Below, one table per "
             "benchmark (one seed) and verifier.", ""]
    current = None
    for table, stem in per_benchmark:
        if table.benchmark != current:
            current = table.benchmark
            lines += [f"## {table.benchmark}", ""]
        lines.append(f"- {table.verifier}: [table]({stem}.md), [csv]({stem}.csv), "
                     f"[plot]({stem}.png)")
        lines += ["", f"  ![{table.benchmark} {table.verifier}]({stem}.png)", ""]
    return "\n".join(lines).rstrip() + "\n"
