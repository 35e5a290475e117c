"""Run the builds of one ``bench build-instances`` (a sweep: several pruners, seeds, datasets
from one configuration file, see ``bench.config.expand_runs``) one after the other, in local
processes, or as Ray tasks.

A task is one training run: the configurations that share a seed's run folder (they differ
only in benchmark settings) go together, so that two processes never train the same run at
once. Each build is already resumable (finished levels are kept, see
``bench.build.pipeline``), and a build whose benchmark folder is complete (its manifest is there,
names this experiment and seed, and every file matches it) is skipped, so running the same sweep
again after a kill redoes only the unfinished builds, from their last finished level.

Locally with ``workers=N``, each process gets ``cpus // N`` torch threads (so N trainings do not
fight over the cores) and, where CUDA devices are present, its own device. With Ray, each task
asks for ``cpus_per_task`` CPUs, and for one GPU when the cluster has any; the run and output
folders must be on a filesystem every node sees at the same path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import bench
from bench import parallel
from bench.config import BuildConfig
from bench.errors import BenchError
from bench.progress import format_duration
from bench.shards import Shard

Echo = Callable[[str], None]


@dataclass
class BuildOutcome:
    benchmark: str  # the benchmark folder's name (``BuildConfig.benchmark_name``)
    seed: int
    root: str | None = None  # the benchmark folder, once built
    skipped: bool = False  # it was complete already: nothing was done
    seconds: float = 0.0
    error: str | None = None  # the traceback, where the build failed

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.benchmark} FAILED"
        if self.skipped:
            return f"{self.benchmark} already built: {self.root}"
        return f"{self.benchmark} built in {self.seconds:.0f} s: {self.root}"


@dataclass(frozen=True)
class BuildTask:
    """What one process (or Ray task) builds: configurations that share one training run."""

    configs: list[BuildConfig]
    progress: bool = False
    threads: int | None = None  # torch threads; None: torch's default


def is_built(config: BuildConfig) -> bool:
    """The benchmark folder is complete: the manifest (written last by the export) exists, was
    written by this version for this experiment and seed, and every file matches it."""
    from bench.formats.folder import MANIFEST, load_manifest, verify_manifest

    root = config.benchmark_dir()
    if not (root / MANIFEST).is_file():
        return False
    try:
        manifest = load_manifest(root)
    except BenchError:
        return False
    experiment = manifest.get("experiment")
    if (manifest.get("suite_version") != bench.__version__ or not isinstance(experiment, dict)
            or (experiment.get("hash"), experiment.get("seed"))
            != (config.experiment_hash(), config.seed)):
        return False
    return not verify_manifest(root)


def resolve_all(configs: Sequence[BuildConfig]) -> list[BuildConfig]:
    """Check every name and number before any work (an unknown pruner in the 12th build must
    not wait for 11 trainings) and fill in defaults, as ``build_instances`` would."""
    from bench.build.pipeline import resolve

    return [resolve(config) for config in configs]


def make_tasks(configs: Sequence[BuildConfig], progress: bool = False,
               threads: int | None = None) -> list[BuildTask]:
    """One task per training run, in the order of the runs' first configurations."""
    groups: dict[str, list[BuildConfig]] = {}
    for config in configs:
        groups.setdefault(str(config.run_dir()), []).append(config)
    return [BuildTask(group, progress, threads) for group in groups.values()]


def build_task(task: BuildTask) -> list[BuildOutcome]:
    """Build every configuration of ``task`` (skipping complete ones); runs in a worker process
    or a Ray task, or in this process for a serial sweep."""
    from bench.build.pipeline import build_instances

    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    outcomes = []
    for config in task.configs:
        outcome = BuildOutcome(config.benchmark_name(), config.seed)
        if is_built(config):
            outcome.root, outcome.skipped = str(config.benchmark_dir()), True
        else:
            start = time.monotonic()
            outcome.root = str(build_instances(config, progress=task.progress))
            outcome.seconds = time.monotonic() - start
        outcomes.append(outcome)
    return outcomes


class _Report:
    """Prints each finished build with done/total and the time left."""

    def __init__(self, total: int, echo: Echo):
        self.total, self.echo = total, echo
        self.done, self.built = 0, 0
        self.started = time.monotonic()

    def __call__(self, outcome: BuildOutcome) -> None:
        self.done += 1
        self.built += not outcome.skipped
        text = f"[{self.done}/{self.total}] {outcome.describe()}"
        if outcome.error is not None:
            text += "\n" + outcome.error.rstrip()
        elif self.built and self.done < self.total:
            # The average time per build so far, not counting the skipped ones.
            left = (time.monotonic() - self.started) / self.built * (self.total - self.done)
            text += f" ({self.total - self.done} left, about {format_duration(left)})"
        self.echo(text)


def run_builds(configs: Sequence[BuildConfig], *, workers: int | None = None,
               executor: str = "local", ray_address: str | None = None,
               shard: Shard | str | None = None, progress: bool = True,
               echo: Echo | None = None, cpus_per_task: int = 1) -> list[BuildOutcome]:
    """Build every configuration (of ``shard`` only, if given: by the benchmark's name).
    Serially (``workers`` 1 or None, local) a failure ends the sweep at once, as a single build
    would; in parallel the other builds go on and a ``BenchError`` at the end lists the failed
    ones (their tracebacks are echoed as they happen)."""
    echo = echo or print
    if executor not in ("local", "ray"):
        raise BenchError(f"unknown executor {executor!r}; choose one of: local, ray")
    if workers is not None and workers < 1:
        raise BenchError(f"workers must be at least 1, got {workers}")
    configs = resolve_all(configs)
    note_legacy_runs(configs, echo)
    if shard is not None:
        shard = Shard.parse(shard)
        configs = [c for c in configs if shard.owns(c.benchmark_name())]
    report = _Report(len(configs), echo)
    outcomes: list[BuildOutcome] = []

    def collect(results: list[BuildOutcome]) -> None:
        for outcome in results:
            outcomes.append(outcome)
            report(outcome)

    # Complete builds are settled here, without starting a process (or a Ray task) for them.
    pending = []
    for config in configs:
        if is_built(config):
            collect([BuildOutcome(config.benchmark_name(), config.seed,
                                  str(config.benchmark_dir()), skipped=True)])
        else:
            pending.append(config)
    configs = pending

    if executor == "local" and (workers or 1) == 1:
        for task in make_tasks(configs, progress):
            collect(build_task(task))  # exceptions propagate, with their traceback
        return outcomes

    tasks = make_tasks(configs, progress=False)  # several bars at once would be noise
    if tasks and executor == "ray":
        _run_on_ray(tasks, collect, ray_address, workers, cpus_per_task)
    elif tasks:
        slots = parallel.make_slots(workers, use_gpus=True)[:len(tasks)]
        threads = max(1, (os.cpu_count() or 1) // len(slots))
        tasks = [BuildTask(t.configs, False, threads) for t in tasks]

        def on_done(index: int, result: Any, error: str | None) -> None:
            collect(result if error is None else _failed(tasks[index], error))

        parallel.run_tasks(build_task, tasks, slots, on_done)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise BenchError(f"{len(failed)} of {len(outcomes)} builds failed: "
                         + ", ".join(o.benchmark for o in failed)
                         + "; tracebacks above. Run the same command again to retry them.")
    return outcomes


def note_legacy_runs(configs: Sequence[BuildConfig], echo: Echo) -> None:
    """One line per runs folder that holds runs of the layout before seeds were replicates: they
    are not reused (their settings were not fully recorded), so their builds train anew."""
    from bench.build.pipeline import legacy_run_folders

    for runs_dir in dict.fromkeys(c.location.runs_dir for c in configs):
        legacy = legacy_run_folders(runs_dir)
        if legacy:
            echo(f"note: {len(legacy)} folder(s) in {runs_dir} (e.g. {legacy[0].name}) hold "
                 "levels of an older layout, which are not reused: these builds train anew "
                 "under <name>-<hash>/seed_<s>/; delete the old folders when you no longer "
                 "need them")


def _failed(task: BuildTask, error: str) -> list[BuildOutcome]:
    """Outcomes for a task that failed as a whole: its builds that were complete before count
    as skipped, the others as failed (a rerun resumes them)."""
    return [BuildOutcome(c.benchmark_name(), c.seed, str(c.benchmark_dir()), skipped=True)
            if is_built(c) else BuildOutcome(c.benchmark_name(), c.seed, error=error)
            for c in task.configs]


def _run_on_ray(tasks: list[BuildTask], collect: Callable[[list[BuildOutcome]], None],
                address: str | None, max_in_flight: int | None, cpus_per_task: int) -> None:
    ray = parallel.import_ray()
    connected_here = parallel.ray_connect(address)
    try:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        remote = ray.remote(build_task).options(num_cpus=cpus_per_task, num_gpus=gpus,
                                                 max_retries=1)
        window = max_in_flight or len(tasks)
        queue = list(tasks)
        in_flight: dict[Any, BuildTask] = {}
        while queue or in_flight:
            while queue and len(in_flight) < window:
                task = queue.pop(0)
                in_flight[remote.remote(BuildTask(task.configs, False, cpus_per_task))] = task
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                task = in_flight.pop(ref)
                try:
                    collect(ray.get(ref))
                except Exception as err:  # the task raised, or its node died
                    collect(_failed(task, f"{type(err).__name__}: {err}"))
    finally:
        if connected_here:
            ray.shutdown()
