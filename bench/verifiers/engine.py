"""Persistent workers: one long-lived process per runner or pool worker that verifies instance after
instance, so that torch and the rest are imported once and each model is loaded once.

Used by ``bench run`` for the verifiers whose worker is a module of this package (``lirpa``,
``milp``: ``bench.verifiers.worker.OwnWorker``) and for the cascade's cheap stages before any
verifier (``bench.verifiers.stages``). The process is ``bench.verifiers._engine_main`` (see its
docstring for what it answers and how it measures memory). It runs under the harness's
supervisor like any tool (``bench.supervisor``: its own session and cgroup, a subreaper, killed
with everything under it when the harness dies), and talks over a Unix socket in a private
folder.

Every instance keeps its hard timeout: the harness waits for the answer at most the instance's
timeout; then it kills the worker (the whole supervised tree) and the instance is a ``timeout``;
the next instance gets a new worker. A worker that dies under an instance (a crash, the OOM
killer) costs that instance an ``error`` row, with the worker's last output as the reason, and
is replaced. No instance waits for another's.

Times (``run_in_engine``): ``wall_time`` runs from sending the request to reading the answer,
plus, for the first instance of a worker, the worker's own start-up (interpreter, imports) as in
batch mode; ``verifier_time`` is the tool's own time (or the cheap stages' when they decided);
``startup_time`` is the rest of ``wall_time``: the worker's start-up, model loading and the
exchange itself. ``stage_times`` (JSON) gives each stage's seconds.

Workers are kept while ``keeping_engines()`` is open (a runner's or a pool worker's lifetime) and
closed when it ends; outside it each instance gets a worker of its own, closed after it.
"""
from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.formats.folder import Instance
from bench.supervisor import ReusePool, Supervised, SupervisorLost
from bench.verifiers.base import Status, Verdict, Verifier
from bench.verifiers.harness import (RunRecord, blank_record, check_cex, describe, finish_record,
                                     fresh_workdir, high_water_rss, last_line, parsed_record,
                                     read_text, tool_installed)
from bench.verifiers.worker import OwnWorker, worker_environment

ENGINE_MODULE = "bench.verifiers._engine_main"
START_TIMEOUT = 600.0  # seconds for a worker to import everything and say it is ready
CLOSE_PATIENCE = 10.0  # seconds for a worker to exit once told to


class EngineUnavailable(Exception):
    """The worker could not be started; the message says why (its last output)."""


class EngineLost(Exception):
    """The worker died, or broke the protocol, while verifying an instance."""


class EngineOverran(Exception):
    """The instance's time ran out before the worker answered."""


class Engine:
    """One persistent worker, from this side: start it, ask it, kill or close it."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.folder = Path(tempfile.mkdtemp(prefix="prune-bench-engine-"))
        self.buffer = b""
        self.conn: socket.socket | None = None
        self.tool: Supervised | None = None
        path = str(self.folder / "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        clock = time.monotonic()
        try:
            listener.bind(path)
            listener.listen(1)
            self.tool = Supervised([sys.executable, "-m", ENGINE_MODULE, "--socket", path],
                                   env={**os.environ, **worker_environment()},
                                   stdout=self.folder / "stdout.log",
                                   stderr=self.folder / "stderr.log", cwd=self.folder)
            self.conn = self._accept(listener, clock + START_TIMEOUT)
            hello = json.loads(self._line(clock + START_TIMEOUT))
        except (OSError, ValueError, EngineLost, EngineOverran, SupervisorLost) as err:
            last = last_line(read_text(self.folder / "stderr.log"))
            self.kill()
            raise EngineUnavailable(f"the persistent worker did not start ({describe(err)})"
                                    + (f"; its last output: {last}" if last else "")) from None
        finally:
            listener.close()
        self.pid = int(hello["pid"])
        self.idle_rss_mb = float(hello["rss_mb"])  # its resident size between instances
        self.startup_s = time.monotonic() - clock
        self.unpaid_startup = self.startup_s  # the first instance's record carries it

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        while True:
            ready = self._wait([listener], deadline)
            if listener in ready:
                conn, _ = listener.accept()
                return conn

    def _wait(self, channels: list, deadline: float) -> list:
        """The channels ready before ``deadline``; raises EngineOverran at the deadline and
        EngineLost when the worker exits."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineOverran()
            ready = select.select([*channels, self.tool.fileno()], [], [], left)[0]
            found = [channel for channel in channels if channel in ready]
            if found:
                return found
            if self.tool.fileno() in ready and self.tool.wait_exit(0):
                code = self.tool.returncode
                raise EngineLost(f"killed by signal {-code}" if code < 0 else
                                 f"exited with code {code}")

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self.buffer:
            self._wait([self.conn], deadline)
            data = self.conn.recv(1 << 16)
            if not data:  # closed: it is exiting; say how, once it has
                self._wait([], time.monotonic() + CLOSE_PATIENCE)
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's answer to ``request`` within ``timeout`` seconds; raises EngineOverran
        or EngineLost (the worker is then unusable: ``kill`` it)."""
        try:
            self.conn.sendall(json.dumps(request).encode() + b"\n")
        except OSError as err:
            raise EngineLost(f"cannot send it the instance ({describe(err)})") from None
        try:
            reply = json.loads(self._line(time.monotonic() + timeout))
        except ValueError as err:
            raise EngineLost(f"it answered something else than JSON ({describe(err)})") from None
        self.idle_rss_mb = float(reply.get("rss_mb", self.idle_rss_mb))
        return reply

    def take_startup(self) -> float:
        """The worker's start-up, once: the first instance it answers pays it."""
        paid, self.unpaid_startup = self.unpaid_startup, 0.0
        return paid

    def peak_mb(self) -> float:
        """How far the worker's resident size rose above its size between instances, during
        the instance it is verifying (its high-water mark is reset at each instance's start)."""
        return max(high_water_rss(self.pid) / (1 << 20) - self.idle_rss_mb, 0.0)

    def kill(self) -> None:
        """Kill the worker and everything under it, now."""
        if self.tool is not None:
            self.tool.abort()
            self.tool = None
        self._drop()

    def close(self) -> None:
        """Let the worker exit (it reads end-of-file), killing it if it does not in time."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        try:
            if self.tool is not None and self.tool.wait_exit(CLOSE_PATIENCE):
                self.tool.finish()
                self.tool = None
        except SupervisorLost:
            pass
        self.kill()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def lost(self) -> None:
        """After EngineLost: collect what the supervisor cleaned up, and drop the worker."""
        try:
            if self.tool is not None and self.tool.returncode is not None:
                self.tool.finish()
                self.tool = None
        except SupervisorLost:
            pass
        self.kill()


# --------------------------------------------------------------------------- the pool

def _forget(engine: Engine) -> None:
    if engine.conn is not None:
        engine.conn.close()


_POOL: ReusePool[Engine] = ReusePool(Engine, close=Engine.close, forget=_forget)


def keeping_engines():
    """Inside, a worker is kept after its instance for the next one (a runner's, a pool
    worker's lifetime); on the way out the idle ones are closed."""
    return _POOL.keeping()


def keep_engines() -> None:
    """From now on this process keeps its workers until it exits (a Ray worker process, which
    runs task after task); they die with it."""
    _POOL.keep_for_life()


if hasattr(os, "register_at_fork"):
    # In a forked child the workers are the parent's: forget them without a word.
    os.register_at_fork(after_in_child=_POOL.after_fork)


# --------------------------------------------------------------------------- one instance


@dataclass
class EngineRun:
    """What the persistent worker did for one instance. ``record`` is None when only the
    cascade was asked for and it left the instance undecided (the chosen verifier is next)."""

    record: RunRecord | None
    stage_times: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time: float = 0.0  # with the worker's start-up, where this instance paid it
    elapsed: float = 0.0  # from the request to the answer: what counts against the timeout
    startup_time: float = 0.0
    peak_memory_mb: float | None = None
    by_tool: bool = False  # the record is the verifier's answer (not a cheap stage's)


def run_in_engine(verifier: Verifier, instance: Instance, log_dir: Path, *,
                  cascade: dict[str, Any] | None = None, eps: float | None = None,
                  tool: bool = True) -> EngineRun:
    """Verify ``instance`` in a persistent worker: the cascade's cheap stages first when
    ``cascade`` (``CascadeSettings.as_params()``) is given, then, with ``tool``, ``verifier``
    itself (an ``OwnWorker``). ``eps``: the property's radius where the benchmark's manifest
    gives it (the clean stage recovers the sample with it). The record is named after
    ``verifier``; nothing here raises for a tool's failure."""
    record = blank_record(verifier, instance)
    if tool and not tool_installed(verifier):
        hint = verifier.install_hint.strip().splitlines() or [f"{verifier.name} is not installed"]
        return EngineRun(finish_record(record, Status.ERROR, hint[0]))
    workdir = fresh_workdir(Path(log_dir).resolve(), verifier.result_name, instance)
    record.log_path = str(workdir)
    request: dict[str, Any] = {"onnx": str(instance.onnx_path.resolve()),
                               "vnnlib": str(instance.vnnlib_path.resolve()),
                               "workdir": str(workdir), "timeout": float(instance.timeout),
                               "cascade": cascade, "eps": eps, "tool": None}
    if tool:
        assert isinstance(verifier, OwnWorker), f"{verifier.name} has no persistent worker"
        argv = verifier.worker_argv(instance, workdir)
        request["tool"] = {"name": verifier.name, "module": verifier.worker_module, "argv": argv}
    (workdir / "command.txt").write_text(
        f"# in the persistent worker ({ENGINE_MODULE})\n" +
        (shlex.join(["python", "-m", verifier.worker_module, *argv]) if tool else
         "# the cascade's cheap stages only") + "\n")

    try:
        engine = _POOL.checkout()
    except EngineUnavailable as err:
        return EngineRun(finish_record(record, Status.ERROR, str(err)))
    started = time.monotonic()
    try:
        reply = engine.ask(request, instance.timeout)
    except EngineOverran:
        elapsed = time.monotonic() - started
        record.wall_time = elapsed + engine.take_startup()
        record.peak_memory_mb = engine.peak_mb() or None
        engine.kill()
        return EngineRun(finish_record(
            record, Status.TIMEOUT, f"hard timeout after {instance.timeout:g} s (the persistent "
                                    f"worker was killed, and is replaced for the next instance)"),
            wall_time=record.wall_time, elapsed=elapsed, by_tool=tool)
    except EngineLost as err:
        elapsed = time.monotonic() - started
        record.wall_time = elapsed + engine.take_startup()
        engine.lost()
        last = last_line(read_text(workdir / "stderr.log"))
        return EngineRun(finish_record(
            record, Status.ERROR, f"the persistent worker died under this instance ({err}); "
                                  f"it is replaced for the next one" +
                                  (f"; its last output: {last}" if last else "")),
            wall_time=record.wall_time, elapsed=elapsed, by_tool=tool)
    elapsed = time.monotonic() - started
    wall = elapsed + engine.take_startup()
    _POOL.give_back(engine)
    run = _interpret(verifier, instance, record, workdir, reply, wall, tool)
    run.elapsed = elapsed
    return run


def _interpret(verifier: Verifier, instance: Instance, record: RunRecord, workdir: Path,
               reply: dict[str, Any], wall: float, tool: bool) -> EngineRun:
    cascade = reply.get("cascade") or {}
    times = {name: float(seconds) for name, seconds in (cascade.get("times") or {}).items()}
    notes = [str(note) for note in cascade.get("notes") or ()]
    run = EngineRun(None, times, notes, wall_time=wall, peak_memory_mb=reply.get("peak_mb"))
    record.wall_time, record.peak_memory_mb = wall, run.peak_memory_mb
    if reply.get("error"):
        # A bug in the worker's own code (the traceback is in the instance's stderr.log).
        run.record = finish_record(record, Status.ERROR,
                                   f"internal error in the persistent worker: {reply['error']}")
    elif cascade.get("status") in (Status.SAT.value, Status.UNSAT.value):
        record.decided_by = cascade["decided_by"]
        record.verifier_time = sum(times.values())
        status = Status(cascade["status"])
        if status is Status.SAT:
            verdict = Verdict(status, counterexample={"x": cascade["x"], "y": cascade["y"]})
            record.cex_check, record.cex_detail = check_cex(instance, verdict)
        run.record = finish_record(record, status, "")
    elif cascade.get("status") == Status.TIMEOUT.value:
        run.record = finish_record(record, Status.TIMEOUT, "; ".join(notes) or
                                   f"no answer within {instance.timeout:g} s")
    elif reply.get("tool") is not None:
        run.by_tool = True
        run.record = parsed_record(verifier, instance, record, workdir,
                                   int(reply["tool"]["returncode"]))
        if run.record.verifier_time is not None:
            times["verifier"] = run.record.verifier_time
    elif tool:
        run.record = finish_record(record, Status.ERROR, "the persistent worker did not run "
                                                         "the verifier")
    run.startup_time = max(wall - sum(times.values()), 0.0)
    if run.record is not None:
        run.record.startup_time = run.startup_time
        if reply.get("cascade") is not None:
            run.record.stage_times = json.dumps(times, sort_keys=True)
        if notes and run.record.status in (Status.SAT.value, Status.UNSAT.value) and \
                not run.record.reason:
            run.record.reason = "; ".join(notes)
    return run


