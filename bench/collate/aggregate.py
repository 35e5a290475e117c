"""Numbers across seeds: experiments, their levels, and each level against its dense model.

The per-benchmark ``tables.Table`` objects (one seed, one verifier) are grouped into *settings*
and *groups*:

- a setting is (dataset, model, training, eps, verifier): one paper-style summary table, one
  per-level table, one verified-accuracy figure and one cost figure. The instability figures
  come from the manifests alone, so they are drawn per setting without the verifier;
- a group is one experiment within a setting; its benchmarks are the seeds. A manifest that
  records its experiment (``manifest["experiment"]["hash"]``, every result-changing setting but
  the seed) is grouped by that hash and labelled with the experiment's name. Older manifests
  fall back to grouping by pruner and build options: two benchmarks of one pruner that differ
  in another build option (say ``regularizer``) are each their own group, labelled with the
  options that differ, e.g. ``imp (regularizer=none)``.

Per group and level: mean and sample standard deviation (ddof = 1) over seeds of every metric
(per seed first, when a seed has several benchmarks); the verified accuracy's 95 % Wilson
interval and undecided band on the counts pooled over seeds; and, for pruned levels, the paired
comparison with the group's own dense level (see ``LevelComparison``), Holm-adjusted over the
group's pruned levels. The best-verified level and the certified lottery tickets follow from
these (``best_level``, ``lottery_tickets``).
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from bench.collate import stats
from bench.collate.tables import Table, paired_outcomes

# Config keys that only say where things go or which seed ran: they never split a group.
_NOT_A_VARIANT = ("seed", "seeds", "out", "runs_dir", "data_dir", "download",
                  "dataset", "model", "training", "eps", "pruner")
# Every number aggregated per level (the keys of ``level_values``).
NUMERIC_METRICS = ("remain_ratio", "standard_accuracy", "adversarial_accuracy",
                   "verified_accuracy", "mean_time_s", "ibp_verified_accuracy",
                   "crown_verified_accuracy", "peak_memory_mb", "peak_gpu_memory_mb",
                   "instability", "instability_pre_bn", "unstable_ratio", "sample_accuracy")
PROVENANCE = ("verifier_version", "params_hash", "suite_version", "host", "device")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None with one seed
    n: int  # seeds that have the value


def stat(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    mean = statistics.fmean(values)
    return Stat(mean, statistics.stdev(values) if len(values) > 1 else None, len(values))


def number(value) -> float | None:
    """A finite number, or None (absent, null, text, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def config_value(config: dict, key: str):
    """``config[key]``, or the value under ``key`` in one of its groups (a configuration may
    be flat or grouped, e.g. ``{"data": {"dataset": ...}}``); None when absent."""
    if key in config and not isinstance(config[key], dict):
        return config[key]
    for group in config.values():
        if isinstance(group, dict) and key in group and not isinstance(group[key], dict):
            return group[key]
    return None


def level_values(entry: dict, row) -> dict[str, float | None]:
    """One benchmark's numbers for one level: ``entry`` is the manifest's ``models`` entry,
    ``row`` the ``tables.LevelRow`` (None where only the manifest matters)."""
    def percent(key: str) -> float | None:
        value = number(entry.get(key))
        return None if value is None else 100.0 * value

    standard = number(entry.get("standard_accuracy"))
    if standard is None:
        standard = number(entry.get("clean_accuracy"))
    values = {
        "remain_ratio": number(entry.get("remain_ratio")),
        "standard_accuracy": None if standard is None else 100.0 * standard,
        "adversarial_accuracy": percent("pgd_accuracy"),
        "ibp_verified_accuracy": percent("ibp_verified_accuracy"),
        "crown_verified_accuracy": percent("crown_verified_accuracy"),
        "instability": number(entry.get("instability")),
        "instability_pre_bn": number(entry.get("instability_pre_bn")),
        "unstable_ratio": number(entry.get("unstable_ratio")),
    }
    if row is not None:
        # A level without a single result was not verified at all: "—", not 0 % (which would
        # also make it look worse than a dense model that has no results either).
        values.update({
            "verified_accuracy": row.verified_accuracy if tried(row) else None,
            "sample_accuracy": row.standard_accuracy,  # on the N verification samples
            "mean_time_s": row.mean_time_s,
            "peak_memory_mb": row.peak_memory_mb,
            "peak_gpu_memory_mb": row.peak_gpu_memory_mb,
        })
        if values["remain_ratio"] is None:
            values["remain_ratio"] = row.remain_ratio
    return values


def tried(row) -> bool:
    """The level has at least one verification result."""
    return row.missing < row.samples


# --- grouping ---------------------------------------------------------------------------------

def eps_text(eps: float) -> str:
    """``2/255`` where that is how eps was written (its decimal is long), else ``0.1``."""
    short = f"{eps:g}"
    k = eps * 255
    if len(short) > 6 and k > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return short


@dataclass(frozen=True, order=True)
class Setting:
    dataset: str
    model: str
    training: str
    eps: float
    verifier: str = ""  # "" for the manifest-only figures

    def title(self) -> str:
        text = f"{self.dataset}, {self.model}, {self.training}, ε = {eps_text(self.eps)}"
        return f"{text}, {self.verifier}" if self.verifier else text

    def slug(self) -> str:
        parts = [self.dataset, self.model, self.training,
                 "eps" + eps_text(self.eps).replace("/", "-")]
        if self.verifier:
            parts.append(self.verifier)
        return "__".join(re.sub(r"[^A-Za-z0-9._-]", "-", p) for p in parts)

    def sort_key(self) -> tuple:
        return (self.dataset, self.model, self.training,
                self.eps if math.isfinite(self.eps) else math.inf, self.verifier)


@dataclass
class Run:
    """One benchmark (one seed) and, with a verifier, its results."""
    benchmark: str
    manifest: dict
    table: Table | None  # None for the manifest-only figures
    seed: str
    pruner: str
    # What makes benchmarks seeds of one experiment: ("experiment", hash) when the manifest
    # records it, else ("variant", the build options that are neither the setting nor the seed).
    experiment: tuple
    experiment_name: str
    structured: bool | None
    dense_id: str  # identity of this seed's level-0 network
    _provenance: dict[str, set[str]] | None = field(default=None, repr=False)

    def provenance(self) -> dict[str, set[str]]:
        """Distinct values of each provenance column in this run's results (computed once)."""
        if self._provenance is None:
            rows = self.table.results if self.table is not None else []
            self._provenance = {c: {str(r[c]) for r in rows if r.get(c) is not None}
                                for c in PROVENANCE}
        return self._provenance

    def rows(self) -> dict:
        return {r.level: r for r in self.table.rows} if self.table is not None else {}

    def levels(self) -> dict[int, dict[str, float | None]]:
        rows = self.rows()
        entries = {int(m["level"]): m for m in self.manifest.get("models", [])}
        return {level: level_values(entries.get(level, {}), rows.get(level))
                for level in sorted(set(entries) | set(rows))}


@dataclass(frozen=True)
class LevelComparison:
    """A pruned level against its group's dense level, on the same samples, over seeds.

    ``difference`` is the mean over seeds of (verified here - verified dense) in percentage
    points, on the samples with a result at both levels; ``interval`` its 95 % two-stage paired
    bootstrap interval. ``p_value`` is the exact McNemar test on the discordant pairs pooled
    over seeds (with one seed, that seed's test), ``p_holm`` Holm-adjusted over the group's
    pruned levels. ``power``: exact power of that test, at these pairs, to detect the observed
    discordance; ``needed``: pairs for 80 % power at alpha 0.05 (Connor 1987), None without a
    difference."""

    seeds: int
    pairs: int
    gained: int
    lost: int
    difference: float
    interval: tuple[float, float]
    p_value: float
    p_holm: float
    power: float
    needed: int | None

    @property
    def significant(self) -> bool:
        return self.p_holm <= stats.ALPHA


@dataclass
class LevelStats:
    level: int
    seeds: int
    stats: dict[str, Stat | None]
    missing: int = 0  # instances without a result, summed over the seeds
    # Counts pooled over the seeds that have results (a seed's benchmarks averaged first).
    samples: float = 0
    verified: float = 0
    undecided: float = 0
    comparison: LevelComparison | None = None

    def mean(self, metric: str) -> float | None:
        value = self.stats.get(metric)
        return None if value is None else value.mean

    @property
    def verified_interval(self) -> tuple[float, float] | None:
        """95 % Wilson interval (percent) of the verified share of the pooled instances."""
        if not self.samples:
            return None
        low, high = stats.wilson_interval(self.verified, self.samples)
        return 100.0 * low, 100.0 * high

    @property
    def band(self) -> tuple[float, float] | None:
        """The undecided band (percent) on the pooled instances."""
        if not self.samples:
            return None
        return (100.0 * self.verified / self.samples,
                100.0 * (self.verified + self.undecided) / self.samples)


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
        """"structured", "unstructured", or "" when the manifests do not say."""
        return {True: "structured", False: "unstructured"}.get(self.structured, "")


def make_run(table: Table | None, manifest: dict, benchmark: str) -> Run:
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    experiment = manifest.get("experiment") if isinstance(manifest.get("experiment"),
                                                          dict) else {}
    models = manifest.get("models", [])
    seed = experiment.get("seed", config_value(config, "seed"))
    if seed is None:
        seed = next((m["seed"] for m in models if "seed" in m), None)
    # Without a pruner name (an older manifest) the benchmark is its own group: guessing would
    # risk averaging two unrelated builds as seeds.
    pruner = str(config_value(config, "pruner")
                 or next((m["pruner"] for m in models if m.get("pruner")), benchmark))
    if experiment.get("hash"):
        identity = ("experiment", str(experiment["hash"]))
        name = str(experiment.get("name") or pruner)
    else:
        identity = ("variant", tuple(sorted((k, repr(v)) for k, v in config.items()
                                            if k not in _NOT_A_VARIANT)))
        name = pruner
    flags = {m["structured"] for m in models if isinstance(m.get("structured"), bool)}
    level0 = next((m for m in models if int(m.get("level", -1)) == 0), None)
    sha = manifest.get("files", {}).get(level0.get("onnx")) if level0 else None
    return Run(
        benchmark=benchmark, manifest=manifest, table=table,
        seed=benchmark if seed is None else str(seed),
        pruner=pruner, experiment=identity, experiment_name=name,
        structured=flags.pop() if len(flags) == 1 else None,
        dense_id=f"{seed}:{sha}" if sha else f"benchmark:{benchmark}",
    )


def setting_of(run: Run, verifier: str = "") -> Setting:
    config = run.manifest.get("config") or {}
    dataset = config_value(config, "dataset") or run.manifest.get("dataset", {}).get("name") \
        or "unknown"
    eps = number(run.manifest.get("eps"))
    return Setting(str(dataset), str(config_value(config, "model") or "unknown"),
                   str(config_value(config, "training") or "unknown"),
                   eps if eps is not None else float("nan"), verifier)


def _labels(keys: Sequence[tuple[str, tuple]], names: dict[tuple[str, tuple], str]
            ) -> dict[tuple[str, tuple], str]:
    """A label per (pruner, experiment) that tells the groups of a setting apart."""
    by_name: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
    for key in keys:
        by_name[names[key]].append(key)
    labels = {}
    for name, members in by_name.items():
        for key in members:
            kind, identity = key[1]
            if len(members) == 1:
                labels[key] = name
            elif kind == "experiment":
                labels[key] = f"{name} ({identity[:8]})"
            else:
                options = [dict(m[1][1]) for m in members if m[1][0] == "variant"]
                differ = sorted({k for o in options for k in o
                                 if len({o.get(k) for o in options}) > 1})
                mine = dict(identity)
                labels[key] = name + " (" + (", ".join(f"{k}={mine.get(k, '—')}"
                                                       for k in differ)
                                             or "no experiment hash") + ")"
    return labels


def make_groups(runs: Iterable[Run]) -> list[Group]:
    """One group per experiment (or, for older manifests, per pruner and build variant)."""
    members: dict[tuple[str, tuple], list[Run]] = defaultdict(list)
    names: dict[tuple[str, tuple], str] = {}
    for run in runs:
        key = (run.pruner, run.experiment)
        members[key].append(run)
        names[key] = run.experiment_name
    labels = _labels(sorted(members), names)
    groups = []
    for key, group_runs in sorted(members.items()):
        flags = {r.structured for r in group_runs if r.structured is not None}
        groups.append(aggregate(Group(labels[key], key[0],
                                      flags.pop() if len(flags) == 1 else None, group_runs)))
    # Table 3's order: unstructured pruners, then structured ones.
    return sorted(groups, key=lambda g: (g.structured is True, g.label))


def aggregate_levels(runs: Sequence[Run], only: Iterable[int] | None = None
                     ) -> dict[int, LevelStats]:
    """Mean and standard deviation over seeds (per seed first), and pooled counts, per level."""
    per_level: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list))
    missing: Counter = Counter()
    for run in runs:
        rows = run.rows()
        for level, values in run.levels().items():
            if only is not None and level not in only:
                continue
            per_level[level][run.seed].append(values)
            row = rows.get(level)
            if row is not None:
                missing[level] += row.missing
                if tried(row):
                    counts[level][run.seed].append((row.samples, row.verified, row.undecided))
    result = {}
    for level, seeds in sorted(per_level.items()):
        # Pooled over seeds; benchmarks of one seed (the same dense network under two pruners)
        # are averaged first, so they do not count as independent samples.
        pooled = [sum(statistics.fmean(c[i] for c in per_seed)
                      for per_seed in counts[level].values()) for i in range(3)]
        level_stats = LevelStats(level, len(seeds), {}, missing[level], *pooled)
        for metric in NUMERIC_METRICS:
            per_seed = []
            for values in seeds.values():
                known = [v[metric] for v in values if v.get(metric) is not None]
                if known:
                    per_seed.append(statistics.fmean(known))
            level_stats.stats[metric] = stat(per_seed)
        result[level] = level_stats
    return result


def compare_levels(runs: Sequence[Run], levels: dict[int, LevelStats]) -> None:
    """Set each pruned level's ``comparison`` with level 0 of the same runs (seeds)."""
    tested: list[int] = []
    raw: dict[int, tuple] = {}
    for level in levels:
        if level == 0:
            continue
        differences, gained, lost = [], 0, 0
        for run in runs:
            rows = run.rows()
            if level not in rows or 0 not in rows:
                continue
            pairs = paired_outcomes(rows[level], rows[0])
            if not pairs:
                continue
            differences.append([int(mine) - int(base) for mine, base in pairs])
            gained += sum(mine and not base for mine, base in pairs)
            lost += sum(base and not mine for mine, base in pairs)
        if differences:
            tested.append(level)
            raw[level] = (differences, gained, lost)
    p_values = [stats.mcnemar_exact(raw[lv][1], raw[lv][2]) for lv in tested]
    for level, p_value, p_holm in zip(tested, p_values, stats.holm(p_values)):
        differences, gained, lost = raw[level]
        pairs = sum(len(d) for d in differences)
        low, high = stats.paired_bootstrap_interval(differences)
        levels[level].comparison = LevelComparison(
            seeds=len(differences), pairs=pairs, gained=gained, lost=lost,
            difference=100.0 * statistics.fmean(sum(d) / len(d) for d in differences),
            interval=(100.0 * low, 100.0 * high), p_value=p_value, p_holm=p_holm,
            power=stats.mcnemar_power(pairs, gained / pairs, lost / pairs),
            needed=stats.mcnemar_sample_size(gained / pairs, lost / pairs))


def aggregate(group: Group) -> Group:
    group.levels = aggregate_levels(group.runs)
    compare_levels(group.runs, group.levels)
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
    """Certified lottery tickets: pruned levels whose mean standard accuracy reaches the dense
    level's and whose verified accuracy is significantly higher than the dense level's on the
    same samples (Holm-adjusted McNemar p <= alpha)."""
    dense = levels.get(0)
    base_std = dense.mean("standard_accuracy") if dense is not None else None
    if base_std is None:
        return set()
    tickets = set()
    for level, s in levels.items():
        std, comparison = s.mean("standard_accuracy"), s.comparison
        if level > 0 and std is not None and std >= base_std - 1e-9 and comparison is not None \
                and comparison.difference > 0 and comparison.significant:
            tickets.add(level)
    return tickets


# --- the paper-style summary (Tables 2-5) -----------------------------------------------------

@dataclass
class SummaryRow:
    method: str
    kind: str
    level: int | None
    seeds: int
    level_stats: LevelStats | None
    lottery: bool
    dense: bool
    provenance: dict[str, str]

    @property
    def stats(self) -> dict[str, Stat | None]:
        return self.level_stats.stats if self.level_stats is not None else {}


def provenance_values(runs: Iterable[Run]) -> dict[str, str]:
    """Per provenance column, its distinct values over the runs' results, "; "-joined."""
    values: dict[str, set[str]] = {c: set() for c in PROVENANCE}
    for run in runs:
        for column, seen in run.provenance().items():
            values[column] |= seen
    return {c: "; ".join(sorted(v)) for c, v in values.items()}


def summary_rows(groups: Sequence[Group]) -> list[SummaryRow]:
    """Dense row(s), then each group's best-verified level.

    Each pruner trains its own level 0, but pruners without a regularizer train the same
    network from the same seed: groups whose level-0 ONNX files have the same sha256 per seed
    share one ``Dense`` row, averaged over all of them; the others get ``Dense (label)``."""
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
        rows.append(SummaryRow(method, "", 0, dense.seeds, dense, False, True,
                               provenance_values(runs)))
    for group in groups:
        best = group.levels.get(group.best) if group.best is not None else None
        rows.append(SummaryRow(
            group.label, group.kind(), group.best,
            best.seeds if best else len({run.seed for run in group.runs}),
            best, group.best in group.lottery, False, provenance_values(group.runs)))
    return rows
