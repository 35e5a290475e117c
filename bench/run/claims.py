"""Claims: several runs on one results database share the work instead of repeating it.

A second ``bench run`` in another terminal, a job array started without ``--shard``, two
machines on one database: before a run starts an instance, it claims it in the database's
``claims`` table, in one short write transaction that also reads the instance's row. An
instance that is decided meanwhile (another run finished it) or claimed by a live run is left
to that run; a claim whose owner is gone is taken over. A claim is released in the transaction
that writes its instance's row (``ResultsDB.record(row, by=run)``), and all of a run's claims
when it ends, normally or by an exception (Ctrl-C, SIGTERM). A run killed with SIGKILL leaves
its claims behind, and they are taken over:

- on the same machine (same host name and boot id) as soon as the owner's process is gone: its
  pid and start time no longer name a live process (so a reused pid is not mistaken for it);
- from another machine, once the owner has shown no sign of life for ``LEASE_S`` seconds: a run
  renews the heartbeat of its claims every ``HEARTBEAT_S`` seconds from a background thread.
  (SQLite on a shared filesystem is unreliable anyway; see ``bench.run.results``.)

Claims are about not doing work twice; they are not what keeps results right. Every attempt
has a work folder of its own (``bench.verifiers.harness.attempt_dir``), so even two runs on one
instance (a claim taken over from a run that was only slow) never read each other's files, and
a concurrent run's decided row is never replaced by an error (``ResultsDB.record``).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from bench.formats.folder import Instance
from bench.run.results import KEY, ResultsDB
from bench.supervisor import start_ticks

LEASE_S = 300.0  # a claim from another machine without a heartbeat for this long is abandoned
HEARTBEAT_S = 30.0  # how often a run renews its claims

# Whether an instance's row (None: it has none) settles it, so that it needs no run.
Settles = Callable[[Mapping[str, Any] | None, Instance], bool]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class RunIdentity:
    """One run of ``bench run``: who holds a claim, and since when its rows count as its own
    generation (``started_at``)."""

    run_id: str
    host: str
    boot_id: str
    pid: int
    pid_start: int | None
    started_at: str  # ISO 8601, UTC, whole seconds: the harness's ``started_at`` format

    @classmethod
    def here(cls) -> RunIdentity:
        """This process, starting a run now."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(run_id=f"{host}-{pid}-{secrets.token_hex(4)}", host=host, boot_id=_boot_id(),
                   pid=pid, pid_start=start_ticks(pid),
                   started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def holds(self, claim: Mapping[str, Any], now: float) -> bool:
        """Whether ``claim`` still stands against this run: its owner is alive (checked
        exactly on this machine, by its heartbeat elsewhere)."""
        if claim["run_id"] == self.run_id:
            return False  # our own
        if claim["host"] == self.host and claim["boot_id"] == self.boot_id and \
                claim["pid"] is not None:
            return start_ticks(claim["pid"]) == claim["pid_start"]
        return now - (claim["heartbeat"] or 0.0) < LEASE_S


def claim(db: ResultsDB, run: RunIdentity, verifier: str, instances: Sequence[Instance],
          settles: Settles) -> list[Instance]:
    """Claim ``instances`` for ``run`` (rows keyed by ``verifier``, the result name), in one
    transaction; returns those it now holds, in order. The others are left alone: settled
    already (``settles``), or claimed by another live run."""
    now = time.time()
    claimed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    key_match = " AND ".join(f"{name} = ?" for name in KEY)
    held = []
    with db.transaction() as conn:
        for instance in instances:
            key = (instance.benchmark, instance.onnx, instance.vnnlib, verifier)
            if settles(db.get(*key), instance):
                continue
            holder = conn.execute(f"SELECT * FROM claims WHERE {key_match}", key).fetchone()
            if holder is not None and run.holds(dict(holder), now):
                continue
            conn.execute(
                "INSERT OR REPLACE INTO claims (benchmark, onnx, vnnlib, verifier, run_id, host, "
                "boot_id, pid, pid_start, claimed_at, heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, run.run_id, run.host, run.boot_id, run.pid, run.pid_start, claimed_at,
                 now))
            held.append(instance)
    return held


def release_all(db: ResultsDB, run: RunIdentity) -> None:
    db.conn.execute("DELETE FROM claims WHERE run_id = ?", (run.run_id,))


class _Heartbeat(threading.Thread):
    """Renews the run's claims every ``interval`` seconds until stopped."""

    def __init__(self, path: Path, run: RunIdentity, interval: float):
        super().__init__(name="bench-claims-heartbeat", daemon=True)
        self.path, self.identity, self.interval = path, run, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        db: ResultsDB | None = None
        while not self.stopped.wait(self.interval):
            try:
                db = db or ResultsDB(self.path)
                db.conn.execute("UPDATE claims SET heartbeat = ? WHERE run_id = ?",
                                (time.time(), self.identity.run_id))
            except Exception:  # a busy or vanished database: the next beat tries again
                continue
        if db is not None:
            db.close()


@contextlib.contextmanager
def holding_claims(path: Path, run: RunIdentity,
                   interval: float = HEARTBEAT_S) -> Iterator[None]:
    """While inside: the run's claims are renewed; on the way out (an exception too) they are
    all released."""
    heartbeat = _Heartbeat(path, run, interval)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        # Best effort: claims left behind (a locked or broken database) are taken over anyway,
        # as soon as this process is gone; and an error here must not hide the run's own.
        with contextlib.suppress(Exception), ResultsDB(path) as db:
            release_all(db, run)
