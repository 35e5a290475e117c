"""Run one verifier over benchmark folders into the results database.

A benchmark folder follows VNN-COMP: ``instances.csv`` (no header, ``onnx,vnnlib,timeout`` with
paths relative to the folder). Instances already decided in the database are skipped, so an
interrupted run resumes where it stopped; errors are retried. Every instance gets a row, even when
the verifier is not installed (an error with the install hint), so nothing is silently missing.

Where the instances run (``bench.run.executors``): in this process (``workers=1``, the default on a
CPU), in N local worker processes (``workers=N``; with a GPU verifier and CUDA devices, one
worker per device by default, each pinned to its device), or on a Ray cluster
(``executor="ray"``). Whichever: every instance's row is written as soon as it finishes, in its
own transaction, so a run killed at any moment (even SIGKILL) loses only the instances in flight,
and running the same command again runs exactly those that have no decided row.

Sharding (``shard="K/N"``, K counted from 1) splits the instances for batch schedulers (e.g. a
SLURM job array with ``--shard $SLURM_ARRAY_TASK_ID/N`` and ``--array=1-N``): an instance belongs
to shard ``1 + h mod N``, where ``h`` is the first 8 bytes of the SHA-256 of
``benchmark \\x1f onnx \\x1f vnnlib`` (as written in instances.csv), read as an unsigned integer.
The hash, not a position, decides, so the shards do not depend on the order of folders or rows,
nor on which other instances exist, nor on the machine or the Python version (unlike ``hash()``),
and every verifier's shard K holds the same instances. The N shards are disjoint and together
hold every instance; their sizes are equal only on average. Run each shard into its own database
and combine them with ``bench.run.results.merge``.

Several runs on one database (a second terminal, a job array without ``--shard``, two
verifiers) are safe: each claims an instance before starting it and leaves alone what another
live run holds (``bench.run.claims``), every attempt works in its own folder, and no run's
answer is replaced by another's error. Rows are keyed by ``Verifier.result_name``.

Before a tool starts, its instance's files are made plain (``bench.formats.folder.materialize``:
a ``.gz`` inflated within the size limits into ``<results>_cache`` beside the logs); an instance
whose files cannot be used gets an error row and no tool.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO


import bench
from bench.run import executors
from bench.errors import BenchError
from bench.formats.folder import Instance, read_benchmarks
from bench.formats.rules import parse_timeout
from bench.run.claims import RunIdentity, holding_claims
from bench.run.results import ResultsDB, params_hash, params_json
from bench.shards import Shard
from bench.progress import Progress
from bench.parallel import exit_on_signal, make_slots
from bench.verifiers import VERIFIERS, Verifier
from bench.verifiers.stages import CascadeSettings
from bench.verifiers.harness import tool_installed

EXECUTORS = ("local", "ray")


@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)  # status value -> instances run now
    skipped: int = 0  # already decided in the database
    elsewhere: int = 0  # left to another run on the same database (claimed or decided by it)
    verifier: str = ""
    verifier_installed: bool = True
    install_hint: str = ""
    results_path: str = ""
    log_dir: str = ""
    total: int = 0  # instances of this run (of this shard), decided before or now
    shard: str = ""  # "K/N", or empty for all instances
    workers: int = 1  # processes (local) or tasks in flight (ray; 0: as many as the cluster)
    executor: str = "local"
    seconds: float = 0.0
    cascade: str = ""  # the cheap stages that ran before the verifier ("": none)
    decided_by: dict[str, int] = field(default_factory=dict)  # decided_by -> instances run now
    tool_seconds: float = 0.0  # the wall times of the instances run now, added up ...
    startup_seconds: float = 0.0  # ... and the tools' start-up in them (their startup_time)

    @property
    def run(self) -> int:
        return sum(self.counts.values())

    def add_row(self, facts: dict) -> None:
        """Count one row run now (``executors.row_facts``)."""
        if facts.get("decided_by"):
            self.decided_by[facts["decided_by"]] = self.decided_by.get(facts["decided_by"], 0) + 1
        self.tool_seconds += facts.get("wall_time") or 0.0
        self.startup_seconds += facts.get("startup_time") or 0.0

    def __str__(self) -> str:
        statuses = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))
        text = (f"{self.verifier}: {self.run} run" + (f" ({statuses})" if statuses else "")
                + f", {self.skipped} skipped (already decided)"
                + (f", {self.elsewhere} left to another run on the same database"
                   if self.elsewhere else "")
                + (f" in shard {self.shard}" if self.shard else "")
                + f"; results in {self.results_path}, logs in {self.log_dir}")
        if self.decided_by:
            cascade = f" (cascade {self.cascade}, then the verifier)" if self.cascade else ""
            text += f"\ndecided by{cascade}: " + ", ".join(
                f"{stage} {n}" for stage, n in sorted(self.decided_by.items()))
        if self.tool_seconds > 0:
            share = 100.0 * self.startup_seconds / self.tool_seconds
            text += (f"\ntool start-up (interpreter, imports, model loading): "
                     f"{self.startup_seconds:.1f} s of the instances' {self.tool_seconds:.1f} s "
                     f"wall time ({share:.0f} %); the run took {self.seconds:.1f} s on "
                     f"{self.workers} worker(s)")
        if not self.verifier_installed:
            text += f"\n{self.verifier} is not installed: {self.install_hint}"
        return text


# --------------------------------------------------------------------------- instances









def shard_instances(instances: Iterable[Instance], shard: Shard | str | None) -> list[Instance]:
    instances = list(instances)
    if shard is None:
        return instances
    shard = Shard.parse(shard)
    return [i for i in instances if shard.owns(i.benchmark, i.onnx, i.vnnlib)]



# --------------------------------------------------------------------------- running


def uses_gpu(verifier: Verifier) -> bool:
    """Whether the verifier runs on a GPU (so workers are pinned to one and Ray tasks ask for
    one), as it declares (``Verifier.uses_gpu``)."""
    return bool(verifier.uses_gpu())


def provenance(verifier: Verifier, cascade: CascadeSettings | None = None) -> dict[str, Any]:
    """The columns that say which code and configuration produced a row (the device is added
    by whoever runs it). The cascade's settings are among the parameters (under ``cascade``),
    so that rows with and without it, or with other stages, have different hashes."""
    params = dict(verifier.params)
    if cascade is not None:
        params["cascade"] = cascade.as_params()
    return {"suite_version": bench.__version__, "verifier_params": params_json(params),
            "params_hash": params_hash(params)}


def make_units(instances: Sequence[Instance], batch: bool) -> list[list[Instance]]:
    """One instance per unit; in batch mode the instances of one model (benchmark folder and
    ONNX file) together, in order, so that the tool starts once per model."""
    if not batch:
        return [[instance] for instance in instances]
    groups: dict[tuple[str, str], list[Instance]] = {}
    for instance in instances:
        groups.setdefault((str(instance.root), instance.onnx), []).append(instance)
    return list(groups.values())


def run_benchmarks(folders: Iterable[str | Path], verifier_name: str, results_path: str | Path,
                   timeout: float | None = None, log_dir: str | Path | None = None,
                   rerun: bool = False, progress: bool = True,
                   verifier_params: dict[str, Any] | None = None, *,
                   workers: int | None = None, executor: str = "local",
                   ray_address: str | None = None, shard: Shard | str | None = None,
                   progress_stream: TextIO | None = None,
                   cascade: CascadeSettings | None = None) -> RunSummary:
    """Run ``verifier_name`` on every instance of ``folders`` (of ``shard`` only, if given);
    ``timeout`` overrides the per-instance timeouts. ``workers``: local processes (default 1,
    or one per GPU for a GPU verifier) or, with ``executor="ray"``, the most tasks in flight
    (default twice the cluster's CPUs, or GPUs). ``cascade``: the cheap stages that decide what
    they can before the verifier (``bench.run.cascade``; None: none, as here by default; the CLI
    turns them on). Returns how many instances ended in each status."""
    started = time.monotonic()
    verifier = VERIFIERS.get(verifier_name)(**(verifier_params or {}))
    if timeout is not None:
        timeout = parse_timeout(timeout, "--timeout")
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise BenchError(f"workers must be at least 1, got {workers}")
    shard = Shard.parse(shard) if shard is not None else None
    instances = read_benchmarks(folders)  # a name used by two different folders is refused
    if timeout is not None:
        instances = [dataclasses.replace(inst, timeout=float(timeout)) for inst in instances]
    instances = shard_instances(_unique(instances), shard)
    results_path = Path(results_path).resolve()
    log_dir = (Path(log_dir) if log_dir is not None else
               results_path.parent / f"{results_path.stem}_logs").resolve()
    name = verifier.result_name

    summary = RunSummary(verifier=name, results_path=str(results_path),
                         log_dir=str(log_dir), install_hint=verifier.install_hint,
                         total=len(instances), shard=str(shard or ""), executor=executor,
                         cascade=",".join(cascade.stages) if cascade else "")
    summary.verifier_installed = tool_installed(verifier)
    spec = executors.RunSpec(verifier=verifier_name, params=dict(verifier.params),
                             log_dir=log_dir, results_path=results_path,
                             provenance=provenance(verifier, cascade),
                             batch=_supports_batch(verifier), result_name=name,
                             run=RunIdentity.here(), rerun=rerun,
                             cache_dir=log_dir.parent / f"{results_path.stem}_cache",
                             cascade=cascade.as_params() if cascade else None)
    counts: Counter[str] = Counter()
    try:
        with ResultsDB(results_path, check=True) as db:
            # A first look; what counts is the look at claim time, just before each start.
            pending = [i for i in instances if not spec.settles(db.get(*executors.key_of(i),
                                                                        name), i)]
        summary.skipped = len(instances) - len(pending)
        units = make_units(pending, spec.batch)
        bar = Progress(len(instances), summary.skipped, name, enabled=progress,
                       stream=progress_stream)

        def on_result(key: executors.Key, status: str | None) -> None:
            if status is None:
                summary.elsewhere += 1
                bar.skip()
            else:
                counts[status] += 1
                bar.advance(status)

        try:
            with _stop_on_termination(), holding_claims(results_path, spec.run):
                _execute(spec, units, on_result, summary, verifier, workers, executor,
                         ray_address)
        finally:
            bar.close()
    except (sqlite3.Error, executors.DeliveryFailed) as err:
        problem = executors.database_failure(results_path, err)
        if problem is None:
            raise
        raise problem from None
    finally:
        summary.counts = dict(counts)
        summary.seconds = time.monotonic() - started
    return summary


def _execute(spec: executors.RunSpec, units: list[list[Instance]], on_result: executors.OnResult,
             summary: RunSummary, verifier: Verifier, workers: int | None, executor: str,
             ray_address: str | None) -> None:
    if not units:
        return
    gpu = uses_gpu(verifier)
    if executor == "ray":
        summary.workers = workers or 0
        executors.run_ray(spec, units, on_result, address=ray_address, max_in_flight=workers,
                          num_gpus=1.0 if gpu else 0.0, on_row=summary.add_row)
        return
    slots = make_slots(workers, gpu)
    summary.workers = len(slots)
    # In this process when nothing needs pinning; a pinned GPU worker needs its own environment,
    # hence its own process, even alone.
    if len(slots) == 1 and slots[0].cuda_visible_devices is None:
        executors.run_serial(spec, units, slots[0], on_result, summary.add_row)
    else:
        executors.run_pool(spec, units, slots, on_result, summary.add_row)


@contextlib.contextmanager
def _stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does, by an exception: Python's default would
    end this process at once and leave the tool it started running on (in its own session, it
    gets no signal of ours). Signals that are ignored (``nohup``) or handled stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, exit_on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _unique(instances: Iterable[Instance]) -> list[Instance]:
    """The first of each key: a row listed twice would have two workers race for one row."""
    seen: set[executors.Key] = set()
    unique = []
    for instance in instances:
        if executors.key_of(instance) not in seen:
            seen.add(executors.key_of(instance))
            unique.append(instance)
    return unique


def _supports_batch(verifier: Verifier) -> bool:
    try:
        return bool(verifier.supports_batch())
    except Exception:
        return False
