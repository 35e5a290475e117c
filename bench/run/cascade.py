"""One instance in ``bench run``: the cascade's cheap stages, then the chosen verifier on what is
left, and the ``decided_by`` vocabulary of the results.

The cascade (on by default in ``bench run``, off with ``--no-cascade``; which stages with
``--stages``) runs in the persistent worker (``bench.verifiers.engine``), cheapest first:
``clean``, ``attack``, ``bounds:IBP``/``bounds:CROWN``/``bounds:alpha-CROWN`` (see
``bench.verifiers.stages`` for each, and why a ``bounds`` unsat is sound). What they leave goes to
the chosen verifier, in the time left of the instance's timeout:

- ``lirpa`` and ``milp`` run in the same request of the same worker, on the model it loaded;
- any other tool (``abcrown``, ``marabou``, ``neuralsat``, ``vnncomp``) runs as always, as its own
  process with its hard timeout (``bench.verifiers.harness``), after the cheap stages.

``decided_by`` of a row: the cheap stage that decided it, or ``verifier`` (``verifier:<path>``
where the tool says how it decided, e.g. alpha-beta-CROWN's ``verifier:attack``) for the
verifier's sat or unsat, with or without the cascade; None for anything else. The row's
``verifier`` column stays the chosen verifier's ``result_name``; its ``timeout`` is the
instance's; its ``wall_time`` covers the cheap stages and the verifier; ``stage_times`` (JSON)
gives each stage's seconds. The cascade's settings are part of the row's parameters (and so of
its ``params_hash``): rows with and without the cascade are never taken for one another.

Verifier benchmarking and VNN-COMP scoring need every instance to reach the verifier: run them
with ``--no-cascade``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.formats.folder import Instance, read_manifest
from bench.verifiers.base import Status, Verifier
from bench.verifiers.engine import EngineRun, run_in_engine
from bench.verifiers.harness import (RunRecord, blank_record, finish_record, run_batch,
                                     run_instance)
from bench.verifiers.stages import VERIFIER_STAGE, verifier_decided_by
from bench.verifiers.worker import OwnWorker

Cascade = dict[str, Any]  # CascadeSettings.as_params(), or None for no cascade


def verify_instance(verifier: Verifier, instance: Instance, log_dir: Path,
                    cascade: Cascade | None) -> RunRecord:
    """The row of one instance: the cheap stages (with ``cascade``), then ``verifier`` on
    what they leave. Verifiers of this package run in the persistent worker either way."""
    if isinstance(verifier, OwnWorker):
        run = run_in_engine(verifier, instance, log_dir, cascade=cascade,
                            eps=property_eps(instance) if cascade else None)
        return _labelled(run.record, run.by_tool)
    if cascade is None:
        return _labelled(run_instance(verifier, instance, log_dir), by_tool=True)
    screened = prescreen(verifier, instance, log_dir, cascade)
    if screened.record is not None:
        return screened.record
    return combine(run_instance(verifier, screened.instance, log_dir), screened, instance)


def verify_batch(verifier: Verifier, instances: list[Instance], log_dir: Path,
                 cascade: Cascade | None, emit: Callable[[RunRecord], None]) -> None:
    """``verify_instance`` for a verifier in batch mode (one process for the instances of a
    model): the cheap stages on each instance first, then one batch on what they leave. Every
    record goes to ``emit`` as soon as it is final."""
    left: dict[tuple[str, str, str], Screened] = {}
    for instance in instances:
        if cascade is None:
            left[_key(instance)] = Screened(None, instance, None)
            continue
        screened = prescreen(verifier, instance, log_dir, cascade)
        if screened.record is not None:
            emit(screened.record)
        else:
            left[_key(instance)] = screened

    def finish(record: RunRecord) -> None:
        screened = left[(record.benchmark, record.onnx, record.vnnlib)]
        if screened.run is None:
            emit(_labelled(record, by_tool=True))
        else:
            emit(combine(record, screened, screened.original))

    run_batch(verifier, [s.instance for s in left.values()], log_dir, on_record=finish)


# --------------------------------------------------------------------------- cheap stages first


@dataclass
class Screened:
    """An instance after the cheap stages: decided (``record``), or left to the verifier with
    the time that is left (``instance`` has it as its timeout)."""

    record: RunRecord | None
    instance: Instance
    run: EngineRun | None
    original: Instance | None = None


def prescreen(verifier: Verifier, instance: Instance, log_dir: Path,
              cascade: Cascade) -> Screened:
    """The cheap stages on ``instance`` before ``verifier`` (a tool of its own process)."""
    run = run_in_engine(verifier, instance, log_dir, cascade=cascade,
                        eps=property_eps(instance), tool=False)
    if run.record is not None:  # decided, out of time, or the worker failed
        return Screened(run.record, instance, run, instance)
    left = instance.timeout - run.elapsed
    if left <= 0:
        record = _out_of_time(verifier, instance, run)
        return Screened(record, instance, run, instance)
    return Screened(None, dataclasses.replace(instance, timeout=left), run, instance)


def _out_of_time(verifier: Verifier, instance: Instance, run: EngineRun) -> RunRecord:
    """The row of an instance whose time the cheap stages used up without deciding."""
    record = blank_record(verifier, instance)
    record.wall_time, record.startup_time = run.wall_time, run.startup_time
    record.stage_times = json.dumps(run.stage_times, sort_keys=True)
    return finish_record(record, Status.TIMEOUT, f"no answer within {instance.timeout:g} s "
                                                 f"(the cheap stages took it all)")


def combine(record: RunRecord, screened: Screened, instance: Instance) -> RunRecord:
    """The verifier's ``record`` on what the cheap stages left, as the row of ``instance``:
    its own timeout, times that include the cheap stages, the larger peak memory."""
    run = screened.run
    tool_wall = record.wall_time
    record = _labelled(record, by_tool=True)
    if record.status == Status.TIMEOUT.value:
        record.reason += (f" (the {screened.instance.timeout:.3g} s left of the instance's "
                          f"{instance.timeout:g} s after the cheap stages)")
    record.timeout = instance.timeout
    record.wall_time = run.wall_time + (tool_wall or 0.0)
    if record.startup_time is not None:
        record.startup_time += run.startup_time
    peaks = [p for p in (record.peak_memory_mb, run.peak_memory_mb) if p is not None]
    record.peak_memory_mb = max(peaks) if peaks else None
    times = dict(run.stage_times)
    tool_time = record.verifier_time if record.verifier_time is not None else tool_wall
    if tool_time is not None:
        times[VERIFIER_STAGE] = tool_time
    record.stage_times = json.dumps(times, sort_keys=True)
    if run.notes and not record.reason:
        record.reason = "; ".join(run.notes)
    return record


def _labelled(record: RunRecord, by_tool: bool) -> RunRecord:
    """A verifier's record with ``decided_by`` in the results' vocabulary."""
    if by_tool:
        record.decided_by = verifier_decided_by(record.status, record.decided_by)
    return record


def _key(instance: Instance) -> tuple[str, str, str]:
    return instance.benchmark, instance.onnx, instance.vnnlib


# --------------------------------------------------------------------------- the clean sample


def property_eps(instance: Instance) -> float | None:
    """The radius of the instance's property, where its benchmark's manifest gives it (our
    benchmarks); None elsewhere. The clean stage recovers the sample with it."""
    manifest = Path(instance.root) / "manifest.json"
    try:
        stamp = manifest.stat().st_mtime_ns
    except OSError:
        return None
    return _radii(str(instance.root), stamp).get(posixpath.normpath(instance.vnnlib))


@functools.lru_cache(maxsize=16)
def _radii(root: str, stamp: int) -> dict[str, float]:
    """vnnlib path -> eps, from the manifest of ``root`` (as it was at ``stamp``)."""
    try:
        manifest = read_manifest(Path(root))
    except Exception:  # an unreadable manifest: the box centre stands for the sample
        return {}
    if not isinstance(manifest, dict):
        return {}
    default = manifest.get("eps")
    radii = {}
    for prop in manifest.get("properties") or ():
        if not isinstance(prop, dict) or not isinstance(prop.get("vnnlib"), str):
            continue
        eps = prop.get("eps", default)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 <= eps <= 1:
            radii[posixpath.normpath(prop["vnnlib"])] = float(eps)
    return radii
