"""Collate verification results into per-level tables and plots, shaped like the paper's Table 2.

One table per (benchmark, verifier): for each pruning level, the remaining weight ratio, the
standard accuracy and the verified accuracy over the benchmark's N test samples, the mean time
per sample, the peak memory, how many instances ended in each status, and how many have no
result yet.

A sample counts as verified only when the verifier said ``unsat`` AND the model classifies the
clean sample correctly (the manifest's ``correct``). ``sat``, ``timeout``, ``unknown``, ``error``
and missing results never count, and are reported as such, never merged.

The results database is read with ``sqlite3`` directly, read-only, against the schema that
``bench/run/results.py`` writes (table ``results``, one row per benchmark/onnx/vnnlib/verifier).
Columns that older databases lack (GPU memory, provenance) are read when present, else None.

Besides these per-benchmark tables, ``make_tables`` writes the paper-style summaries across
seeds, the figures and the report page (``bench/collate/report.py``); ``index.md`` links to it.
"""
from __future__ import annotations

import csv
import posixpath
import re
import sqlite3
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import BenchError
from bench.formats.folder import MANIFEST, load_manifest
from bench.collate.report import write_report
from bench.run.results import describe_provenance

STATUSES = ("sat", "unsat", "timeout", "unknown", "error")
_COLUMNS = ("benchmark", "root", "onnx", "vnnlib", "verifier", "verifier_version", "status",
            "wall_time", "peak_memory_mb", "started_at")
# Read when the database has them (added by later versions of bench/run/results.py).
_OPTIONAL_COLUMNS = ("peak_gpu_memory_mb", "host", "suite_version", "device", "params_hash",
                     "verifier_params")

# (CSV name, Markdown header) per column, in table order.
TABLE_COLUMNS = (
    ("level", "level"),
    ("remain_ratio", "remaining weights"),
    ("samples", "N"),
    ("standard_accuracy", "standard acc. (%)"),
    ("verified_accuracy", "verified acc. (%)"),
    ("mean_time_s", "mean time / sample (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
    *((s, s) for s in STATUSES),
    ("missing", "missing"),
    ("unsat_misclassified", "unsat on misclassified"),
)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class LevelRow:
    level: int
    remain_ratio: float | None
    samples: int
    standard_accuracy: float  # percent of the level's samples
    verified_accuracy: float  # percent of the level's samples
    mean_time_s: float | None  # over the instances that have a result
    peak_memory_mb: float | None
    counts: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    # unsat where the clean sample itself is a counterexample: the verifier is wrong there.
    unsat_misclassified: int = 0
    peak_gpu_memory_mb: float | None = None  # not in the per-benchmark table; for Fig. 4

    def values(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "remain_ratio": self.remain_ratio,
            "samples": self.samples,
            "standard_accuracy": round(self.standard_accuracy, 2),
            "verified_accuracy": round(self.verified_accuracy, 2),
            "mean_time_s": _round(self.mean_time_s, 3),
            "peak_memory_mb": _round(self.peak_memory_mb, 1),
            **{s: self.counts.get(s, 0) for s in STATUSES},
            "missing": self.missing,
            "unsat_misclassified": self.unsat_misclassified,
        }


@dataclass
class Table:
    benchmark: str
    verifier: str
    root: Path
    manifest: dict
    rows: list[LevelRow]
    versions: list[str]
    unmatched: int  # results for files the manifest does not list (an older export)
    results: list[dict] = field(default_factory=list)  # the database rows (for provenance)


def make_tables(results_path: Path, out_dir: Path) -> list[Path]:
    """Write ``<benchmark>__<verifier>.{md,csv,png}`` per pair found in the results, the
    summaries, figures and report of ``bench.collate.report.write_report`` (``report.md``,
    ``report.html``, ``summary/``, ``levels/``, ``figures/``), and ``index.md``, which links to
    the report first; returns every written path."""
    results = _read_results(Path(results_path))
    if not results:
        raise BenchError(f"no results in {results_path}; run `bench run` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in results:
        groups[(row["benchmark"], row["verifier"])].append(row)

    written: list[Path] = []
    tables: list[tuple[Table, str]] = []
    for (benchmark, verifier), rows in sorted(groups.items()):
        table = _build_table(benchmark, verifier, rows)
        stem = f"{_safe_name(benchmark)}__{_safe_name(verifier)}"
        written += [
            _write_csv(table, out_dir / f"{stem}.csv"),
            _write_markdown(table, out_dir / f"{stem}.md"),
            _write_plot(table, out_dir / f"{stem}.png"),
        ]
        tables.append((table, stem))
    written += write_report([t for t, _ in tables], results, out_dir, tables)
    written.append(_write_index(tables, out_dir / "index.md"))
    return written


# --- reading ----------------------------------------------------------------------------------

def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchError(f"no results database at {path}; run `bench run` first")
    # Read-only, so collating can never alter or lock out a database a runner is writing.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            present = {row["name"] for row in conn.execute("PRAGMA table_info(results)")}
            select = [*_COLUMNS, *(c if c in present else f"NULL AS {c}"
                                   for c in _OPTIONAL_COLUMNS)]
            cursor = conn.execute(f"SELECT {', '.join(select)} FROM results")
            return [dict(row) for row in cursor]
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            raise BenchError(f"no results in {path}; run `bench run` first") from None
        raise BenchError(f"cannot read results database {path}: {err}") from None
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{path} is not a results database ({err})") from None


def _manifest_for(benchmark: str, rows: list[dict]) -> tuple[Path, dict]:
    """The manifest of the folder the results came from; when the rows name several folders
    (the benchmark was moved or re-exported elsewhere), the most recently run one that exists."""
    latest: dict[str, str] = {}
    for row in rows:
        if row["root"]:  # the column may be NULL in rows from an older runner
            latest[row["root"]] = max(latest.get(row["root"], ""), row["started_at"] or "")
    for root in sorted(latest, key=lambda r: latest[r], reverse=True):
        if (Path(root) / MANIFEST).is_file():
            return Path(root), load_manifest(Path(root))
    if not latest:
        raise BenchError(f"results for benchmark {benchmark} do not say where its folder is; "
                         "run `bench run` on it again")
    raise BenchError(f"benchmark {benchmark}: no {MANIFEST} in {', '.join(sorted(latest))}; "
                     "was the benchmark folder moved or deleted?")


def _key(onnx: str, vnnlib: str) -> tuple[str, str]:
    # Both sides are relative paths as instances.csv writes them; normpath forgives "./x".
    return posixpath.normpath(onnx), posixpath.normpath(vnnlib)


# --- computing --------------------------------------------------------------------------------

def _build_table(benchmark: str, verifier: str, rows: list[dict]) -> Table:
    root, manifest = _manifest_for(benchmark, rows)
    by_instance = {_key(r["onnx"], r["vnnlib"]): r for r in rows}
    for row in rows:
        if row["status"] not in STATUSES:
            raise BenchError(f"results for {benchmark}/{verifier} hold unknown status "
                             f"{row['status']!r}; was the database written by another version?")
    remain = {m["level"]: m.get("remain_ratio") for m in manifest["models"]}
    per_level: dict[int, list[dict]] = defaultdict(list)
    for inst in manifest["instances"]:
        per_level[int(inst["level"])].append(inst)
    listed = {_key(i["onnx"], i["vnnlib"]) for i in manifest["instances"]}
    level_rows = [
        _level_row(level, remain.get(level), instances, by_instance)
        for level, instances in sorted(per_level.items())
    ]
    versions = sorted({r["verifier_version"] for r in rows if r["verifier_version"]})
    return Table(benchmark, verifier, root, manifest, level_rows, versions,
                 unmatched=len(set(by_instance) - listed), results=rows)


def _level_row(level: int, remain_ratio: float | None, instances: list[dict],
               results: dict[tuple[str, str], dict]) -> LevelRow:
    n = len(instances)
    counts = {s: 0 for s in STATUSES}
    correct = verified = missing = unsat_misclassified = 0
    times: list[float] = []
    memory: list[float] = []
    gpu_memory: list[float] = []
    for inst in instances:
        correct += bool(inst["correct"])
        result = results.get(_key(inst["onnx"], inst["vnnlib"]))
        if result is None:
            missing += 1
            continue
        status = result["status"]
        counts[status] += 1
        if status == "unsat":
            if inst["correct"]:
                verified += 1
            else:
                unsat_misclassified += 1
        if result["wall_time"] is not None:
            times.append(float(result["wall_time"]))
        if result["peak_memory_mb"] is not None:
            memory.append(float(result["peak_memory_mb"]))
        if result.get("peak_gpu_memory_mb") is not None:
            gpu_memory.append(float(result["peak_gpu_memory_mb"]))
    return LevelRow(
        level=level,
        remain_ratio=remain_ratio,
        samples=n,
        standard_accuracy=100.0 * correct / n,
        verified_accuracy=100.0 * verified / n,
        mean_time_s=sum(times) / len(times) if times else None,
        peak_memory_mb=max(memory) if memory else None,
        counts=counts,
        missing=missing,
        unsat_misclassified=unsat_misclassified,
        peak_gpu_memory_mb=max(gpu_memory) if gpu_memory else None,
    )


# --- writing ----------------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _write_csv(table: Table, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([name for name, _ in TABLE_COLUMNS])
        for row in table.rows:
            values = row.values()
            writer.writerow(["" if values[name] is None else values[name]
                             for name, _ in TABLE_COLUMNS])
    return path


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "–"
    if name == "remain_ratio":
        return f"{100 * value:.1f}%"
    if name in ("standard_accuracy", "verified_accuracy"):
        return f"{value:.1f}"
    if name == "mean_time_s":
        return f"{value:.2f}"
    if name == "peak_memory_mb":
        return f"{value:.0f}"
    return str(value)


def _describe(table: Table) -> list[str]:
    manifest = table.manifest
    versions = ", ".join(table.versions) or "unknown"
    return [
        f"- benchmark folder: `{table.root}`",
        f"- verifier: {table.verifier} (version {versions})",
        f"- provenance: {describe_provenance(table.results)}",
        f"- dataset: {manifest.get('dataset', {}).get('name', '?')}, "
        f"eps = {manifest.get('eps')}, timeout = {manifest.get('timeout')} s",
    ]


def _write_markdown(table: Table, path: Path) -> Path:
    lines = [f"# {table.benchmark}: {table.verifier}", "", *_describe(table), ""]
    lines.append("| " + " | ".join(header for _, header in TABLE_COLUMNS) + " |")
    lines.append("|" + "---:|" * len(TABLE_COLUMNS))
    for row in table.rows:
        values = row.values()
        cells = [_cell(name, values[name]) for name, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Verified accuracy counts only `unsat` on a correctly classified sample; `sat`, `timeout`,",
        "`unknown`, `error` and missing results never count. Percentages are of the N samples.",
        "Mean time is the wall time per instance over the instances that have a result.",
    ]
    suspicious = sum(r.unsat_misclassified for r in table.rows)
    if suspicious:
        lines.append(f"\n**Warning:** {suspicious} `unsat` answer(s) on misclassified samples, "
                     "whose clean input is itself a counterexample: the verifier is wrong there.")
    if table.unmatched:
        lines.append(f"\n**Note:** {table.unmatched} result(s) name files this benchmark's "
                     "manifest does not list (an older export?); they are left out.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_plot(table: Table, path: Path) -> Path:
    # A bare Figure with the Agg canvas: no pyplot, so no global backend or figure state.
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    levels = [r.level for r in table.rows]
    # Standard accuracy first, so the verified line (the point of the plot) is drawn on top.
    axes.plot(levels, [r.standard_accuracy for r in table.rows], marker="s", linestyle="--",
              color="tab:orange", label="standard accuracy")
    axes.plot(levels, [r.verified_accuracy for r in table.rows], marker="o",
              color="tab:blue", label="verified accuracy")
    axes.set_xticks(levels)
    axes.set_xlabel("pruning level")
    axes.set_ylabel("accuracy (% of samples)")
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    top = axes.secondary_xaxis("top")
    top.set_xticks(levels, labels=[_cell("remain_ratio", r.remain_ratio) for r in table.rows])
    top.set_xlabel("remaining weights")
    axes.set_title(f"{table.benchmark}\n{table.verifier}, eps = {table.manifest.get('eps')}",
                   fontsize=10)
    figure.savefig(path, format="png", dpi=120)
    return path


def _write_index(tables: Iterable[tuple[Table, str]], path: Path) -> Path:
    lines = ["# Verification results", "",
             "**Start with the [report](report.md)** ([HTML](report.html)): paper-style "
             "summaries over seeds (Tables 2-5), figures (Fig. 3-6) and provenance. Below, one "
             "table per benchmark (one seed) and verifier.", ""]
    current = None
    for table, stem in tables:
        if table.benchmark != current:
            current = table.benchmark
            lines += [f"## {table.benchmark}", ""]
        lines.append(f"- {table.verifier}: [table]({stem}.md), [csv]({stem}.csv), "
                     f"[plot]({stem}.png)")
        lines += ["", f"  ![{table.benchmark} {table.verifier}]({stem}.png)", ""]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
