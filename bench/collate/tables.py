"""The numbers of one benchmark (one seed) and one verifier, per pruning level.

For each level: the remaining weight ratio, the standard and verified accuracy over the
benchmark's N test samples with a 95 % Wilson interval, the *undecided band*, time, memory, how
many instances ended in each status, how many have no result yet, and the paired comparison with
the dense level (level 0) on the same samples (exact McNemar test, Holm-adjusted over the
table's pruned levels). The statistics are in ``bench.collate.stats``.

A sample counts as verified only when the verifier said ``unsat`` AND the model classifies the
clean sample correctly (the manifest's ``correct``): an ``unsat`` on a misclassified sample is
wrong (the clean input is itself a counterexample) and is counted apart. ``sat``, ``timeout``,
``unknown``, ``error`` and missing results never count, and are reported as such, never merged.

The undecided band runs from the verified accuracy (every undecided instance counted as not
robust) up to the share of correctly classified samples whose answer is ``unsat``, ``timeout``,
``unknown``, ``error`` or missing (every undecided one counted as robust): how far answers still
to come, or longer timeouts, could move the figure. Misclassified samples and ``sat`` answers
are outside the band: they can never count as verified.

The results database is read with ``bench.run.results.read_rows`` (read-only).
"""
from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.collate import stats
from bench.errors import BenchError
from bench.formats.folder import MANIFEST, load_manifest
from bench.run.results import read_rows
from bench.verifiers.base import Status

STATUSES = tuple(status.value for status in Status)
# Answers that decide nothing: the instance could still turn out robust.
UNDECIDED = (Status.TIMEOUT.value, Status.UNKNOWN.value, Status.ERROR.value)


@dataclass(frozen=True)
class Comparison:
    """A pruned level against the dense level (level 0) of the same benchmark, on the samples
    that have a result at both levels."""

    pairs: int
    gained: int  # verified at this level, not at the dense one
    lost: int  # verified at the dense level, not at this one
    p_value: float  # exact McNemar, two-sided
    p_holm: float | None = None  # Holm-adjusted over the pruned levels of the table

    @property
    def difference(self) -> float:
        """Verified accuracy here minus at the dense level, in percentage points."""
        return 100.0 * (self.gained - self.lost) / self.pairs if self.pairs else 0.0


@dataclass
class LevelRow:
    level: int
    remain_ratio: float | None
    samples: int  # N: the level's instances in the manifest
    correct: int  # correctly classified samples
    verified: int  # unsat on a correctly classified sample
    undecided: int  # correctly classified samples whose answer is undecided or missing
    mean_time_s: float | None  # over the instances that have a result
    peak_memory_mb: float | None
    counts: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    # unsat where the clean sample itself is a counterexample: the verifier is wrong there.
    unsat_misclassified: int = 0
    peak_gpu_memory_mb: float | None = None
    # Per sample (manifest's sample_index): verified or not; None when it has no result.
    outcomes: dict = field(default_factory=dict)
    comparison: Comparison | None = None  # None at level 0, or without a dense level

    @property
    def standard_accuracy(self) -> float:
        """Percent of the N samples classified correctly."""
        return 100.0 * self.correct / self.samples

    @property
    def verified_accuracy(self) -> float:
        """Percent of the N samples verified."""
        return 100.0 * self.verified / self.samples

    @property
    def verified_interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the verified accuracy, in percent."""
        low, high = stats.wilson_interval(self.verified, self.samples)
        return 100.0 * low, 100.0 * high

    @property
    def band(self) -> tuple[float, float]:
        """The undecided band, in percent: every undecided instance not robust .. robust."""
        return self.verified_accuracy, 100.0 * (self.verified + self.undecided) / self.samples


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


# --- reading ----------------------------------------------------------------------------------

def read_results(path: Path) -> list[dict]:
    """Every row of the results database at ``path``; a ``BenchError`` when there is none."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"no results database at {path}; run `bench run` first")
    rows = read_rows(path)
    if not rows:
        raise BenchError(f"no results in {path}; run `bench run` first")
    return rows


def find_manifest(rows: list[dict]) -> tuple[Path, dict] | None:
    """The manifest of the folder the results came from: when the rows name several folders
    (the benchmark was moved or re-exported elsewhere), the most recently run one that holds a
    manifest. None when no folder the rows name has one."""
    latest: dict[str, str] = {}
    for row in rows:
        if row["root"]:  # the column may be NULL in rows from an older runner
            latest[row["root"]] = max(latest.get(row["root"], ""), row["started_at"] or "")
    for root in sorted(latest, key=lambda r: latest[r], reverse=True):
        if (Path(root) / MANIFEST).is_file():
            return Path(root), load_manifest(Path(root))
    return None


def benchmark_manifests(rows: list[dict]
                        ) -> tuple[list[tuple[str, list[dict], Path, dict]], list[tuple[str, str]]]:
    """The rows grouped by benchmark, sorted by name, each with the folder and manifest it came
    from (``find_manifest``); and the benchmarks without a readable manifest, with why."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_benchmark[row["benchmark"]].append(row)
    found, missing = [], []
    for benchmark, members in sorted(by_benchmark.items()):
        try:
            located = find_manifest(members)
        except BenchError as err:
            missing.append((benchmark, str(err)))
            continue
        if located is None:
            missing.append((benchmark, "no manifest.json in the folder the results name"))
            continue
        found.append((benchmark, members, *located))
    return found, missing


def manifest_for(benchmark: str, rows: list[dict]) -> tuple[Path, dict]:
    """``find_manifest``, with a ``BenchError`` that says what to do when there is none."""
    found = find_manifest(rows)
    if found is not None:
        return found
    roots = sorted({row["root"] for row in rows if row["root"]})
    if not roots:
        raise BenchError(f"results for benchmark {benchmark} do not say where its folder is; "
                         "run `bench run` on it again")
    raise BenchError(f"benchmark {benchmark}: no {MANIFEST} in {', '.join(roots)}; "
                     "was the benchmark folder moved or deleted?")


def instance_key(onnx: str, vnnlib: str) -> tuple[str, str]:
    """How a manifest instance and a result row are matched: both are relative paths as
    instances.csv lists them; normpath forgives "./x"."""
    return posixpath.normpath(onnx), posixpath.normpath(vnnlib)


def sample_key(instance: dict):
    """What pairs one sample across levels: its index in the dataset (the property file when
    a manifest lacks it)."""
    return instance.get("sample_index", posixpath.normpath(instance["vnnlib"]))


# --- computing --------------------------------------------------------------------------------

def load_tables(results_path: Path) -> tuple[list[Table], list[dict]]:
    """One ``Table`` per (benchmark, verifier) in the results database, sorted, and the rows."""
    results = read_results(results_path)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in results:
        groups[(row["benchmark"], row["verifier"])].append(row)
    return [build_table(b, v, rows) for (b, v), rows in sorted(groups.items())], results


def build_table(benchmark: str, verifier: str, rows: list[dict]) -> Table:
    root, manifest = manifest_for(benchmark, rows)
    by_instance = {instance_key(r["onnx"], r["vnnlib"]): r for r in rows}
    for row in rows:
        if row["status"] not in STATUSES:
            raise BenchError(f"results for {benchmark}/{verifier} hold unknown status "
                             f"{row['status']!r}; was the database written by another version?")
    remain = {m["level"]: m.get("remain_ratio") for m in manifest["models"]}
    per_level: dict[int, list[dict]] = defaultdict(list)
    for inst in manifest["instances"]:
        per_level[int(inst["level"])].append(inst)
    listed = {instance_key(i["onnx"], i["vnnlib"]) for i in manifest["instances"]}
    level_rows = [level_row(level, remain.get(level), instances, by_instance)
                  for level, instances in sorted(per_level.items())]
    compare_with_dense(level_rows)
    versions = sorted({r["verifier_version"] for r in rows if r["verifier_version"]})
    return Table(benchmark, verifier, root, manifest, level_rows, versions,
                 unmatched=len(set(by_instance) - listed), results=rows)


def level_row(level: int, remain_ratio: float | None, instances: list[dict],
              results: dict[tuple[str, str], dict]) -> LevelRow:
    row = LevelRow(level=level, remain_ratio=remain_ratio, samples=len(instances), correct=0,
                   verified=0, undecided=0, mean_time_s=None, peak_memory_mb=None,
                   counts=dict.fromkeys(STATUSES, 0))
    times: list[float] = []
    memory: list[float] = []
    gpu_memory: list[float] = []
    for inst in instances:
        correct = bool(inst["correct"])
        row.correct += correct
        result = results.get(instance_key(inst["onnx"], inst["vnnlib"]))
        if result is None:
            row.missing += 1
            row.undecided += correct
            row.outcomes[sample_key(inst)] = None
            continue
        status = result["status"]
        row.counts[status] += 1
        verified = status == Status.UNSAT.value and correct
        row.verified += verified
        row.unsat_misclassified += status == Status.UNSAT.value and not correct
        row.undecided += status in UNDECIDED and correct
        row.outcomes[sample_key(inst)] = verified
        for values, column in ((times, "wall_time"), (memory, "peak_memory_mb"),
                               (gpu_memory, "peak_gpu_memory_mb")):
            if result.get(column) is not None:
                values.append(float(result[column]))
    row.mean_time_s = sum(times) / len(times) if times else None
    row.peak_memory_mb = max(memory) if memory else None
    row.peak_gpu_memory_mb = max(gpu_memory) if gpu_memory else None
    return row


def paired_outcomes(level: LevelRow, dense: LevelRow) -> list[tuple[bool, bool]]:
    """(verified here, verified at the dense level) per sample with a result at both."""
    return [(mine, dense.outcomes[key]) for key, mine in sorted(level.outcomes.items(),
                                                                 key=lambda kv: str(kv[0]))
            if mine is not None and dense.outcomes.get(key) is not None]


def compare(level: LevelRow, dense: LevelRow) -> Comparison:
    pairs = paired_outcomes(level, dense)
    gained = sum(mine and not base for mine, base in pairs)
    lost = sum(base and not mine for mine, base in pairs)
    return Comparison(len(pairs), gained, lost, stats.mcnemar_exact(gained, lost))


def compare_with_dense(rows: list[LevelRow]) -> None:
    """Set each pruned row's comparison with level 0, Holm-adjusted over the compared rows."""
    dense = next((r for r in rows if r.level == 0), None)
    if dense is None:
        return
    compared = [r for r in rows if r.level > 0]
    for row in compared:
        row.comparison = compare(row, dense)
    compared = [r for r in compared if r.comparison.pairs]
    adjusted = stats.holm([r.comparison.p_value for r in compared])
    for row, p_holm in zip(compared, adjusted):
        row.comparison = Comparison(row.comparison.pairs, row.comparison.gained,
                                    row.comparison.lost, row.comparison.p_value, p_holm)


def verified_accuracy(results_path: str | Path, benchmark: str, verifier: str
                      ) -> dict[int, float]:
    """Verified accuracy in percent per level of ``benchmark`` by ``verifier``, as ``bench
    tables`` computes it (unsat on a correctly classified sample), for the levels whose every
    instance has a result; levels with missing results are left out (unknown, not zero)."""
    return verified_accuracy_of(read_rows(Path(results_path)), benchmark, verifier,
                                str(results_path))


def verified_accuracy_of(rows: list[dict], benchmark: str, verifier: str, source: str
                         ) -> dict[int, float]:
    """``verified_accuracy`` of rows already read; ``source`` names where they came from."""
    rows = [r for r in rows if r["benchmark"] == benchmark and r["verifier"] == verifier]
    if not rows:
        raise BenchError(f"{source} has no results of {verifier} on {benchmark}; "
                         "run `bench run` first")
    table = build_table(benchmark, verifier, rows)
    return {row.level: row.verified_accuracy for row in table.rows if row.missing == 0}
