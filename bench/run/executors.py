"""Where the work runs: in this process, in local worker processes, or on a Ray cluster.

``bench.run.runner`` decides *what* to verify; this module runs it (the generic process and Ray
plumbing is ``bench.parallel``). Three ways, with the same results:

- ``run_serial``: in this process, one unit after the other (the default, and the simplest to
  debug).
- ``run_pool``: N long-lived worker processes on this machine (``spawn``ed: fresh interpreters,
  no state shared with this one). Each worker writes the row of every instance it finishes to
  the results database itself, at once, in its own short transaction, and only then reports it,
  so killing the runner loses at most the instances in flight. Workers are pinned to a GPU
  through ``CUDA_VISIBLE_DEVICES`` where the verifier uses one (see ``Slot``).
- ``run_ray``: one Ray task per unit, with ``num_gpus=1`` where the verifier uses a GPU. Tasks
  return their rows and *the driver* writes them: SQLite must not be shared over a network
  filesystem, and the driver's machine is the one place that surely has the database. The
  benchmark folders and the log folder must be reachable at the same paths on every node
  (a shared filesystem), and prune-bench must be installed there.

Several runs on one database. Whichever way it runs, a unit's instances are claimed
(``bench.run.claims``) just before they start, by the runner (the Ray driver), and each row is
written with ``by=spec.run``, which releases its claim in the same transaction. An instance that
another live run holds, or has decided meanwhile, is reported as left to it (``on_result(key,
None)``) and not run.

Killing the runner. Workers ask the kernel for SIGTERM when their parent dies
(``PR_SET_PDEATHSIG``, Linux), so a SIGKILLed runner does not leave them verifying instances
that its rerun will verify again; on SIGTERM a worker raises, and the harness kills the tool's
whole process tree on the way out. Every tool runs under a supervisor (``bench.supervisor``) that
kills all of the tool's processes when the process that started it dies, however it dies: so a
SIGKILL of a serial runner, of one pool worker or of a Ray worker leaves no tool running. Ctrl-C
is handled by the runner alone, which stops the workers the same way.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sqlite3
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bench.errors import BenchError
from bench.formats.folder import FileProblem, Instance, materialize
from bench.parallel import (Slot, default_window, describe_cpu, describe_gpu, enter_worker,
                            import_ray, one_thread_environment, ray_connect)
from bench.run import claims
from bench.run.cascade import verify_batch, verify_instance
from bench.run.claims import RunIdentity
from bench.run.results import ResultsDB, database_error, is_decided_row
from bench.supervisor import reusing_supervisors
from bench.verifiers import VERIFIERS, Status, Verifier
from bench.verifiers.engine import keep_engines, keeping_engines
from bench.verifiers.harness import RunRecord

Key = tuple[str, str, str]  # (benchmark, onnx, vnnlib): one instance, for one verifier
Row = dict[str, Any]  # a RunRecord's fields plus the provenance columns
Unit = Sequence[Instance]  # what one worker runs in one go: an instance, or one model's in batch
# Called in the runner once a row is in the database, with its status; with None for an
# instance left to another run (claimed by it, or decided by it meanwhile).
OnResult = Callable[[Key, "str | None"], None]
# Called in the runner with the measurements of every row run now (``row_facts``).
OnRow = Callable[[dict], None]
# What the runner's summary needs of a row (sent by pool workers with each row).
ROW_FACTS = ("status", "wall_time", "startup_time", "decided_by")


def row_facts(row: Row) -> dict:
    return {name: row.get(name) for name in ROW_FACTS}


def key_of(item: Instance | Row) -> Key:
    if isinstance(item, Instance):
        return item.benchmark, item.onnx, item.vnnlib
    return item["benchmark"], item["onnx"], item["vnnlib"]


def now_iso() -> str:
    """The harness's ``started_at`` format: UTC, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to run instances and write their rows; sent to every worker
    (and Ray task), so it holds names and plain values only."""

    verifier: str  # the registry's name
    params: dict[str, Any]
    log_dir: Path  # absolute
    results_path: Path
    provenance: dict[str, Any]  # suite_version, verifier_params, params_hash
    batch: bool = False  # the verifier's batch mode: a unit is the instances of one model
    result_name: str = ""  # the results' ``verifier`` column (Verifier.result_name); "": verifier
    run: RunIdentity | None = None  # claims instances, and writes rows as this run; None: neither
    rerun: bool = False  # redo decided instances (those decided before ``run`` started)
    cache_dir: Path | None = None  # plain copies of compressed instance files (``materialize``)
    # The cascade's settings (``CascadeSettings.as_params()``); None: every instance goes
    # straight to the verifier.
    cascade: dict[str, Any] | None = None

    @property
    def key_name(self) -> str:
        return self.result_name or self.verifier

    def make_verifier(self) -> Verifier:
        return VERIFIERS.get(self.verifier)(**self.params)

    def settles(self, row: Mapping[str, Any] | None, instance: Instance) -> bool:
        """Whether ``row`` means ``instance`` needs no run now (``is_decided_row``)."""
        since = self.run.started_at if self.rerun and self.run is not None else None
        return is_decided_row(row, timeout=instance.timeout,
                              params_hash=self.provenance.get("params_hash"), since=since)


def claim_unit(db: ResultsDB, spec: RunSpec, unit: Unit, on_result: OnResult) -> list[Instance]:
    """The instances of ``unit`` this run may start now (all of them without ``spec.run``); the
    others are reported to ``on_result`` as left to another run."""
    if spec.run is None:
        return list(unit)
    held = claims.claim(db, spec.run, spec.key_name, unit, spec.settles)
    for instance in unit:
        if instance not in held:
            on_result(key_of(instance), None)
    return held


# --------------------------------------------------------------------------- one unit


class DeliveryFailed(Exception):
    """Writing or reporting a finished row failed: not the verifier's fault, never an error
    row, always fatal."""


def database_failure(results_path: Path, err: BaseException) -> BenchError | None:
    """The one-line error for a results database that failed under a run (a full disk, a file
    damaged by another program), if that is what ``err`` (or what it wraps) is; the rows
    written before stay."""
    cause = err.__cause__ if isinstance(err, DeliveryFailed) else err
    if isinstance(cause, sqlite3.Error):
        return database_error(results_path, cause)
    return None


def run_unit(verifier: Verifier, spec: RunSpec, unit: Unit, device: str,
             deliver: Callable[[Row], None]) -> None:
    """Run one unit and pass each instance's row to ``deliver`` as soon as it is final. A bug in
    the harness or the verifier module becomes an error row (retried next run) instead of
    ending the whole run."""
    def finish(record: RunRecord) -> None:
        try:
            deliver(make_row(spec, record, device))
        except Exception as err:
            raise DeliveryFailed(f"{type(err).__name__}: {err}") from err

    unit = _ready_files(spec, unit, finish)
    if spec.batch and len(unit) > 1:
        settled: set[Key] = set()

        def on_record(record: RunRecord) -> None:
            settled.add(key_of(record.to_dict()))
            finish(record)

        try:
            verify_batch(verifier, list(unit), spec.log_dir, spec.cascade, on_record)
        except DeliveryFailed:
            raise
        except Exception as err:
            for instance in unit:
                if key_of(instance) not in settled:
                    finish(harness_failure(spec.key_name, instance, spec.log_dir, err))
        return
    for instance in unit:
        try:
            record = verify_instance(verifier, instance, spec.log_dir, spec.cascade)
        except Exception as err:
            record = harness_failure(spec.key_name, instance, spec.log_dir, err)
        finish(record)


def _ready_files(spec: RunSpec, unit: Unit, finish: Callable[[RunRecord], None]) -> list[Instance]:
    """The instances of ``unit`` with plain files a tool can read (``materialize``: a ``.gz``
    inflated within the size limits into ``spec.cache_dir``). An instance whose files cannot
    be used (missing, unreadable, a gzip bomb, a broken archive) gets its error row here, and
    its tool never starts."""
    if spec.cache_dir is None:
        return list(unit)
    ready = []
    for instance in unit:
        try:
            ready.append(materialize(instance, spec.cache_dir))
        except (FileProblem, OSError) as err:
            finish(harness_failure(spec.key_name, instance, spec.log_dir,
                                   reason=f"cannot use the instance's files: {err}"))
    return ready


def make_row(spec: RunSpec, record: RunRecord, device: str) -> Row:
    return {**record.to_dict(), **spec.provenance, "device": device}


def harness_failure(verifier: str, instance: Instance, log_dir: Path,
                    err: BaseException | None = None, reason: str = "") -> RunRecord:
    """An error record (for the result name ``verifier``) for an instance whose run failed
    outside the tool: a bug (``err``, traceback kept in ``harness_errors.log``), a lost worker
    or unusable files (``reason``)."""
    log_path = None
    if err is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / "harness_errors.log"
        with open(log_path, "a") as log:
            log.write(f"{instance.benchmark} {instance.onnx} {instance.vnnlib}:\n"
                      f"{''.join(traceback.format_exception(err))}\n")
        reason = f"harness failure: {type(err).__name__}: {err}".splitlines()[0]
    return RunRecord(
        benchmark=instance.benchmark, root=str(instance.root), onnx=instance.onnx,
        vnnlib=instance.vnnlib, verifier=verifier, verifier_version=None,
        timeout=instance.timeout, status=Status.ERROR.value, reason=reason, wall_time=None,
        verifier_time=None, peak_memory_mb=None, peak_gpu_memory_mb=None, cex_check=None,
        cex_detail="", log_path=str(log_path) if log_path else None, started_at=now_iso(),
        host=socket.gethostname(), benchmark_hash=instance.benchmark_hash)


# --------------------------------------------------------------------------- serial


def run_serial(spec: RunSpec, units: Sequence[Unit], slot: Slot, on_result: OnResult,
               on_row: OnRow | None = None) -> None:
    verifier = spec.make_verifier()
    with ResultsDB(spec.results_path) as db, reusing_supervisors(), keeping_engines():
        def deliver(row: Row) -> None:
            db.record(row, by=spec.run)
            on_result(key_of(row), row["status"])
            if on_row is not None:
                on_row(row_facts(row))

        for unit in units:
            held = claim_unit(db, spec, unit, on_result)
            if held:
                run_unit(verifier, spec, held, slot.device, deliver)


# --------------------------------------------------------------------------- local pool


class WorkerFailed(RuntimeError):
    """A worker could not start or could not write a result: the run cannot go on."""



def _pool_worker(conn: Connection, spec: RunSpec, slot: Slot, parent_pid: int) -> None:
    """A pool worker: receives units until it receives None; writes each row, then reports it.
    Messages are ``(kind, payload, status, facts)``: ("row", key, status, ``row_facts``),
    ("unit_done", None, None, None), ("fatal", traceback, None, None), ("user_error", one-line
    message, None, None)."""
    enter_worker(parent_pid, slot, signal.SIGTERM)
    # One thread per worker, for the tools it starts too (unless the user set a number): N
    # workers on N cores.
    for name, value in one_thread_environment().items():
        os.environ.setdefault(name, value)
    try:
        verifier = spec.make_verifier()
        db = ResultsDB(spec.results_path)
    except Exception:
        conn.send(("fatal", traceback.format_exc(), None, None))
        return

    def deliver(row: Row) -> None:
        db.record(row, by=spec.run)  # durable first: a kill between the two loses nothing
        conn.send(("row", key_of(row), row["status"], row_facts(row)))

    with reusing_supervisors(), keeping_engines():
        while True:
            try:
                unit = conn.recv()
            except EOFError:  # the parent is gone
                return
            if unit is None:
                db.close()
                return
            try:
                run_unit(verifier, spec, unit, slot.device, deliver)
            except Exception as err:
                problem = database_failure(spec.results_path, err)
                conn.send(("user_error", str(problem), None, None) if problem else
                          ("fatal", traceback.format_exc(), None, None))
                return
            conn.send(("unit_done", None, None, None))


class _PoolWorker:
    def __init__(self, context: Any, spec: RunSpec, slot: Slot, number: int):
        self.slot, self.number = slot, number
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_pool_worker, args=(child, spec, slot, os.getpid()),
                                       name=f"bench-worker-{number}", daemon=True)
        self.process.start()
        child.close()
        self.unit: Unit | None = None  # in flight
        self.pending: set[Key] = set()  # instances of the unit not reported yet
        self.dispatched_at = ""
        self.stopping = False

    def send(self, unit: Unit | None) -> bool:
        try:
            self.conn.send(unit)
        except (BrokenPipeError, OSError):
            return False
        if unit is None:
            self.stopping = True
        else:
            self.unit, self.pending = unit, {key_of(i) for i in unit}
            self.dispatched_at = now_iso()
        return True

    def stop(self, grace: float = 10.0) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the harness kills the tool on the way out
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def run_pool(spec: RunSpec, units: Sequence[Unit], slots: Sequence[Slot],
             on_result: OnResult, on_row: OnRow | None = None) -> None:
    """Run ``units`` on ``len(slots)`` worker processes, each unit as soon as a worker is free.
    A worker that dies (killed by the OOM killer, a crash) costs the instances it had in flight
    an error row each (retried next run), and is replaced."""
    context = multiprocessing.get_context("spawn")
    queue: deque[Unit] = deque(units)
    workers: list[_PoolWorker] = []
    deaths_without_progress = 0
    db = ResultsDB(spec.results_path)

    def feed(worker: _PoolWorker) -> None:
        while queue:
            unit = claim_unit(db, spec, queue.popleft(), on_result)
            if not unit:
                continue  # all of it left to other runs
            if not worker.send(unit):
                queue.appendleft(unit)  # the worker is gone; its death is handled below
            return
        worker.send(None)

    def bury(worker: _PoolWorker) -> None:
        """A worker exited: settle what it had in flight, and replace it if work remains."""
        nonlocal deaths_without_progress
        workers.remove(worker)
        code = worker.process.exitcode
        worker.stop()
        if worker.unit is None and worker.stopping:
            return  # finished normally
        deaths_without_progress += 1
        if deaths_without_progress > 2 * len(slots) + 2:
            raise WorkerFailed(f"worker processes keep dying (last exit code {code})")
        for instance in worker.unit or ():
            if key_of(instance) not in worker.pending:
                continue
            row = db.get(*key_of(instance), spec.key_name)
            if row is None or (row["started_at"] or "") < worker.dispatched_at:
                # It did not get to write this one. (A row started since dispatch is its own.)
                record = harness_failure(spec.key_name, instance, spec.log_dir,
                                         reason=f"worker process died (exit code {code})")
                row = make_row(spec, record, worker.slot.device)
                db.record(row, by=spec.run)
            on_result(key_of(instance), row["status"])
        if queue:
            replacement = _PoolWorker(context, spec, worker.slot, worker.number)
            workers.append(replacement)
            feed(replacement)

    try:
        for number, slot in enumerate(slots[:len(queue)]):
            workers.append(_PoolWorker(context, spec, slot, number))
            feed(workers[-1])
        while workers:
            by_conn = {worker.conn: worker for worker in workers}
            by_sentinel = {worker.process.sentinel: worker for worker in workers}
            ready = wait([*by_conn, *by_sentinel])
            exited = {by_sentinel[s] for s in ready if s in by_sentinel}
            for worker in {by_conn[c] for c in ready if c in by_conn} | exited:
                # Read everything it sent before looking at its exit: a worker may report its
                # last row and be gone by the time we look.
                try:
                    while worker.conn.poll():
                        kind, payload, status, facts = worker.conn.recv()
                        if kind == "user_error":
                            raise BenchError(payload)
                        if kind == "fatal":
                            raise WorkerFailed(f"worker {worker.number} failed:\n{payload}")
                        if kind == "row":
                            deaths_without_progress = 0
                            worker.pending.discard(payload)
                            on_result(payload, status)
                            if on_row is not None:
                                on_row(facts)
                        elif kind == "unit_done":
                            worker.unit, worker.pending = None, set()
                            feed(worker)
                except (EOFError, OSError):
                    exited.add(worker)
            for worker in exited:
                worker.process.join(5)
                bury(worker)
    finally:
        for worker in workers:
            worker.stop()
        db.close()



_VERIFIERS_IN_TASK: dict[str, Verifier] = {}  # a Ray worker process runs many tasks


def _ray_unit(spec: RunSpec, unit: Unit) -> list[Row]:
    import ray

    key = f"{spec.verifier}:{spec.provenance.get('params_hash')}"
    if key not in _VERIFIERS_IN_TASK:
        _VERIFIERS_IN_TASK[key] = spec.make_verifier()
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]  # Ray set CUDA_VISIBLE_DEVICES to these
    device = ", ".join(describe_gpu(i) for i in gpu_ids) if gpu_ids else describe_cpu()
    rows: list[Row] = []
    keep_engines()  # a Ray worker process runs many tasks: its persistent worker stays
    with reusing_supervisors():
        run_unit(_VERIFIERS_IN_TASK[key], spec, unit, device, rows.append)
    return rows


def run_ray(spec: RunSpec, units: Sequence[Unit], on_result: OnResult, *,
            address: str | None = None, max_in_flight: int | None = None,
            num_gpus: float = 0.0, num_cpus: float = 1.0, on_row: OnRow | None = None) -> None:
    """One Ray task per unit (``num_gpus`` GPUs each); the driver writes the rows as tasks
    finish. A task that fails as a whole (its node died after Ray's retries) costs its
    instances an error row each, retried next run."""
    ray = import_ray()
    connected_here = ray_connect(address)
    in_flight: dict[Any, Unit] = {}
    try:
        task = ray.remote(_ray_unit).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2)
        window = max_in_flight or default_window("GPU" if num_gpus else "CPU",
                                                 num_gpus or num_cpus)
        queue: deque[Unit] = deque(units)
        with ResultsDB(spec.results_path) as db:
            while queue or in_flight:
                while queue and len(in_flight) < window:
                    unit = claim_unit(db, spec, queue.popleft(), on_result)
                    if unit:
                        in_flight[task.remote(spec, unit)] = unit
                if not in_flight:
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    unit = in_flight.pop(ref)
                    try:
                        rows = ray.get(ref)
                    except Exception as err:  # RayTaskError, WorkerCrashedError, ...
                        reason = f"ray task failed: {type(err).__name__}: {err}".splitlines()[0]
                        rows = [make_row(spec, harness_failure(spec.key_name, instance,
                                                               spec.log_dir, reason=reason),
                                         "unknown") for instance in unit]
                    for row in rows:
                        db.record(row, by=spec.run)
                        on_result(key_of(row), row["status"])
                        if on_row is not None:
                            on_row(row_facts(row))
    finally:
        for ref in in_flight:  # interrupted: do not leave the cluster busy with them
            ray.cancel(ref, force=True)
        if connected_here:
            ray.shutdown()
