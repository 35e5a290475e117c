"""Run one verifier on one instance, and measure it the same way for every tool.

``run_process`` owns the process: under a supervisor that holds every process the tool starts and
kills them all when the harness dies (``bench.supervisor``), output to files (a chatty tool cannot
fill a pipe and deadlock), peak memory of the whole tree, a hard timeout (SIGTERM to the tree,
SIGKILL after a grace period) and no leftovers afterwards. Every attempt works in a folder of its
own (``attempt_dir``), so two runs on one instance never read each other's files.
``run_instance`` wraps a ``Verifier`` around it: command, parse, counterexample check, and one
``RunRecord`` whatever happens. Verifiers' own timeouts are soft (alpha-beta-CROWN overshoots by
up to 30 s), so the harness never relies on them. ``run_batch`` does the same for tools that
verify all instances of one model in one process, still enforcing each instance's own timeout.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import psutil

from bench.formats.folder import Instance
from bench.supervisor import Supervised
from bench.verifiers.base import Command, Status, Verdict, Verifier
from bench.verifiers.cex import check_counterexample

SAMPLE_INTERVAL = 0.1  # seconds between memory samples
FIRST_SECOND_INTERVAL = 0.02  # ... during the first second
DEFAULT_GRACE = 5.0  # seconds from SIGTERM to SIGKILL, unless the verifier sets its own
PROGRESS_INTERVAL = 0.25  # seconds between two looks at a batch process's progress
_MB = 1024 * 1024


@dataclass
class ProcessOutcome:
    returncode: int  # negative: killed by that signal
    wall_time: float  # seconds from start to the exit of the main process
    peak_memory_mb: float  # peak RSS of the whole process tree
    timed_out: bool  # stopped at its timeout, or because ``watch`` asked
    killed: bool  # SIGKILL was needed (the tool ignored SIGTERM, or left processes behind)
    peak_gpu_memory_mb: float | None = None  # None without a usable NVML


@dataclass
class RunRecord:
    """One row of the results database: what one verifier did on one instance."""

    benchmark: str
    root: str
    onnx: str
    vnnlib: str
    verifier: str
    verifier_version: str | None
    timeout: float
    status: str  # a Status value
    reason: str
    wall_time: float | None  # None when nothing was run
    verifier_time: float | None  # the tool's own reported time
    peak_memory_mb: float | None
    peak_gpu_memory_mb: float | None
    # correct | correct_up_to_tolerance | invalid, or error (the check itself failed); None
    # unless the status is sat
    cex_check: str | None
    cex_detail: str
    log_path: str | None
    started_at: str  # ISO 8601, UTC
    host: str
    # Which stage of the tool decided (e.g. alpha-beta-CROWN's attack, incomplete, bab), where
    # the tool says so.
    decided_by: str | None = None
    # The part of ``wall_time`` that the tool spent outside its own clock: interpreter start,
    # imports, model loading (its start-up). In batch mode the first instance of each process
    # pays it, as every instance does in one-process-per-instance mode. None where unknown.
    startup_time: float | None = None
    benchmark_hash: str = ""  # the benchmark's content hash (Instance.benchmark_hash); "": unknown
    # Seconds spent in each stage of the cascade that ran, as JSON: {"clean": 0.001, "attack":
    # 0.05, "bounds:IBP": 0.01, ..., "verifier": 2.5}; None without the cascade.
    stage_times: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- processes


class _GpuSampler:
    """GPU memory of a set of processes through NVML; inert (None) where NVML is missing."""

    def __init__(self) -> None:
        self._nvml = None
        self._handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception:  # no package, no driver (NVMLError_LibraryNotFound), no device
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def used_mb(self, pids: set[int]) -> float:
        total = 0
        for handle in self._handles:
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                continue
            # usedGpuMemory is None where the driver does not expose it (e.g. under MIG).
            total += sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)
        return total / _MB

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


class _Tree:
    """Every process below the supervisor seen so far (the supervisor itself excluded: it is
    ours, not the tool's). Being a subreaper, the supervisor keeps even a double-forked orphan
    below it; the ones seen are remembered all the same, for the case where the supervisor is
    killed. psutil's Process compares creation times, so a reused pid is never mistaken for
    ours."""

    def __init__(self, supervisor_pid: int):
        self.root = psutil.Process(supervisor_pid)
        self.seen: dict[int, psutil.Process] = {}

    def refresh(self) -> list[psutil.Process]:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return list(self.seen.values())

    def memory_mb(self) -> tuple[float, set[int]]:
        """Current RSS of the tree, or the largest high-water mark of one of its processes if
        that is more (it covers a spike between two samples); and the pids sampled."""
        total, high, pids = 0, 0, set()
        for proc in self.refresh():
            try:
                total += proc.memory_info().rss
                pids.add(proc.pid)
            except psutil.Error:  # exited between listing and sampling
                continue
            high = max(high, high_water_rss(proc.pid))
        return max(total, high) / _MB, pids

    def alive(self) -> list[psutil.Process]:
        alive = []
        for proc in self.refresh():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive


def _kill(processes: list[psutil.Process]) -> None:
    """SIGKILL ``processes`` and wait (briefly) until they are gone: SIGKILL is asynchronous."""
    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=2.0)


def high_water_rss(pid: int) -> int:
    """VmHWM of a process in bytes (0 where unreadable). Unlike wait4's ru_maxrss it starts
    afresh at exec: ru_maxrss inherits the parent's peak at fork/exec, i.e. this harness's own
    memory (tens of MB, hundreds with torch loaded)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_process(argv: list[str], timeout: float, grace: float = DEFAULT_GRACE,
                env: dict[str, str] | None = None, cwd: str | Path | None = None, *,
                stdout_path: str | Path, stderr_path: str | Path,
                watch: Callable[[], bool] | None = None) -> ProcessOutcome:
    """Run ``argv`` with a hard wall-clock ``timeout`` (seconds); ``env`` is added to the current
    environment. The tool runs under a supervisor (``bench.supervisor``): a subreaper that holds
    every process the tool starts, even one that double-forks into a new session, and kills them
    all when this process dies, however it dies. SIGTERM goes to every process of the tool at
    the timeout, SIGKILL ``grace`` seconds later, and anything still alive after the main
    process exits is killed, so nothing keeps running (or holding memory) after this returns.
    Raises ``OSError`` when the tool cannot be started.

    ``watch``, if given, is called at every sample until the process is signalled; when it
    returns True the process is stopped as if its timeout had come (``run_batch`` uses it to
    stop a batch whose current instance ran past its own timeout).

    ``wall_time`` runs from the tool's start to the exit of its main process, as the supervisor
    clocks them (its own start-up is not counted). The peak memory is sampled (every 0.02 s in
    the first second, then every 0.1 s): the sum of the tree's RSS, or a single process's own
    high-water mark if larger. For a process that lives shorter than one interval it is a lower
    bound."""
    full_env = {**os.environ, **(env or {})}
    tool = Supervised(argv, env=full_env, cwd=cwd, stdout=stdout_path, stderr=stderr_path)
    gpu = _GpuSampler()
    timed_out = killed = False
    peak_rss = 0.0
    peak_gpu = 0.0 if gpu.available else None
    tree: _Tree | None = None
    try:
        tree = _Tree(tool.supervisor_pid)
        deadline = tool.started + timeout
        term_sent_at: float | None = None
        while True:
            rss, pids = tree.memory_mb()
            peak_rss = max(peak_rss, rss)
            if peak_gpu is not None:
                peak_gpu = max(peak_gpu, gpu.used_mb(pids))
            now = time.monotonic()
            if term_sent_at is None and (now >= deadline or (watch is not None and watch())):
                timed_out, term_sent_at = True, time.monotonic()
                tool.terminate()
            elif term_sent_at is not None and not killed and now >= term_sent_at + grace:
                killed = True
                tool.kill()
            # Sleep until the next sample, or the next signal if that comes sooner. Sampling is
            # denser at first, so that short runs (most instances) get a meaningful peak.
            wait_for = SAMPLE_INTERVAL if now - tool.started > 1.0 else FIRST_SECOND_INTERVAL
            if not killed:
                next_signal = deadline if term_sent_at is None else term_sent_at + grace
                wait_for = min(wait_for, max(next_signal - now, 0.0))
            if tool.wait_exit(wait_for):
                break
        killed |= tool.finish() > 0
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM), a bug, or a lost supervisor: never leave the tool
        # running behind us.
        tool.abort()
        if tree is not None:
            _kill(tree.alive())  # all gone already, unless the supervisor itself was killed
        raise
    finally:
        gpu.close()
    return ProcessOutcome(returncode=tool.returncode, wall_time=tool.ended - tool.started,
                          peak_memory_mb=peak_rss, timed_out=timed_out, killed=killed,
                          peak_gpu_memory_mb=peak_gpu)


# --------------------------------------------------------------------------- instances


def run_instance(verifier: Verifier, instance: Instance, log_dir: Path,
                 grace: float | None = None) -> RunRecord:
    """Run ``verifier`` on ``instance`` and return what happened; never raises for a tool's
    failure (that is ``Status.ERROR`` with a reason). ``grace`` (SIGTERM to SIGKILL) defaults to
    the verifier's own ``grace``, else ``DEFAULT_GRACE``."""
    grace = _grace(verifier) if grace is None else grace
    record = blank_record(verifier, instance)
    if not tool_installed(verifier):
        hint = verifier.install_hint.strip().splitlines() or [f"{verifier.name} is not installed"]
        return finish_record(record, Status.ERROR, hint[0])

    # Absolute: tools run with their own cwd, and a relative path would point elsewhere there.
    workdir = fresh_workdir(Path(log_dir).resolve(), verifier.result_name, instance)
    record.log_path = str(workdir)
    try:
        command = verifier.command(instance, workdir)
    except Exception as err:
        return finish_record(record, Status.ERROR, f"cannot build the command: {describe(err)}")

    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    (workdir / "command.txt").write_text(shlex.join(map(str, command.argv)) + "\n")
    try:
        outcome = run_process(command.argv, instance.timeout, grace=grace, env=command.env,
                              cwd=command.cwd, stdout_path=stdout_path, stderr_path=stderr_path)
    except OSError as err:  # the executable is missing or not executable
        return finish_record(record, Status.ERROR, f"cannot start {command.argv[0]}: {err}")
    record.wall_time = outcome.wall_time
    record.peak_memory_mb = outcome.peak_memory_mb
    record.peak_gpu_memory_mb = outcome.peak_gpu_memory_mb

    if outcome.timed_out:
        how = "killed with SIGKILL" if outcome.killed else "stopped with SIGTERM"
        return finish_record(record, Status.TIMEOUT,
                             f"hard timeout after {instance.timeout:g} s ({how})")

    return parsed_record(verifier, instance, record, workdir, outcome.returncode)


def parsed_record(verifier: Verifier, instance: Instance, record: RunRecord, workdir: Path,
                  returncode: int) -> RunRecord:
    """``record`` completed from what a tool that exited by itself left in ``workdir`` (its
    ``stdout.log``, ``stderr.log`` and files): the verifier's verdict, its own time, the part of
    ``record.wall_time`` outside it (``startup_time``), and the counterexample's check."""
    try:
        verdict = verifier.parse(instance, workdir, read_text(workdir / "stdout.log"),
                                 read_text(workdir / "stderr.log"), returncode)
        status = Status(verdict.status)
    except Exception as err:
        return finish_record(record, Status.ERROR, f"cannot parse the output: {describe(err)}")
    record.verifier_time = verdict.verifier_time
    record.decided_by = verdict.decided_by
    if verdict.verifier_time is not None and record.wall_time is not None:
        record.startup_time = max(record.wall_time - verdict.verifier_time, 0.0)
    if status is Status.SAT:
        record.cex_check, record.cex_detail = check_cex(instance, verdict)
    return finish_record(record, status, verdict.reason)


def blank_record(verifier: Verifier, instance: Instance) -> RunRecord:
    return RunRecord(
        benchmark=instance.benchmark, root=str(instance.root), onnx=instance.onnx,
        vnnlib=instance.vnnlib, verifier=verifier.result_name,
        verifier_version=_version(verifier), benchmark_hash=instance.benchmark_hash,
        timeout=float(instance.timeout), status=Status.ERROR.value, reason="", wall_time=None,
        verifier_time=None, peak_memory_mb=None, peak_gpu_memory_mb=None, cex_check=None,
        cex_detail="", log_path=None,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
    )


def finish_record(record: RunRecord, status: Status, reason: str) -> RunRecord:
    record.status = Status(status).value
    record.reason = reason
    return record


def tool_installed(verifier: Verifier) -> bool:
    try:
        return bool(verifier.is_installed())
    except Exception:
        return False


def _grace(verifier: Verifier) -> float:
    grace = getattr(verifier, "grace", None)
    return DEFAULT_GRACE if grace is None else float(grace)


def _version(verifier: Verifier) -> str | None:
    try:
        return verifier.version()
    except Exception:
        return None


def check_cex(instance: Instance, verdict: Verdict) -> tuple[str, str]:
    cex = verdict.counterexample or {}
    try:
        check = check_counterexample(instance.onnx_path, instance.vnnlib_path, cex.get("x"),
                                     cex.get("y"))
    except Exception as err:
        # The checker could not run (unreadable model or property): that says nothing about the
        # tool's answer, so it is not called invalid.
        return "error", f"counterexample check failed: {describe(err)}"
    return check.outcome, check.detail


def fresh_workdir(log_dir: Path, verifier: str, instance: Instance) -> Path:
    """``log_dir/<verifier>/<benchmark>/<onnx>__<vnnlib>/<attempt>/``: a new folder for this
    attempt alone (see ``attempt_dir``)."""
    name = f"{_safe(instance.onnx)}__{_safe(instance.vnnlib)}"
    return attempt_dir(log_dir / _safe(verifier) / _safe(instance.benchmark) / name)


def attempt_dir(parent: Path) -> Path:
    """A folder in ``parent`` that no other attempt ever had: ``<UTC time>-<host>-<pid>-<random>``,
    created here (``mkdir`` fails rather than share one). A tool writes its result file into it
    and the harness reads it from there only, so neither a rerun nor a concurrent run on the
    same instance (a second ``bench run`` on the same database) can read another's answer, and
    no run empties a folder that another is using. Earlier attempts stay, for their logs."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    prefix = f"{stamp}-{_safe(socket.gethostname())[:40]}-{os.getpid()}"
    while True:
        folder = parent / f"{prefix}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --------------------------------------------------------------------------- batches


def run_batch(verifier: Verifier, instances: list[Instance], log_dir: Path,
              grace: float | None = None,
              on_record: Callable[[RunRecord], None] | None = None) -> list[RunRecord]:
    """Run ``verifier`` on ``instances`` with one process per model (instances that share a
    benchmark folder and ONNX file), where the verifier has a batch mode; otherwise one
    ``run_instance`` each. Returns one record per instance, in the order given, and passes
    each to ``on_record`` as soon as it is final (at the end of its process).

    Each instance keeps its own timeout: its clock starts when the process starts (so the
    first instance pays the tool's start-up, as every instance does in ``run_instance``) or
    when the previous answer was seen. An answer seen only after the timeout is a timeout; an
    instance still running ``grace`` seconds after its timeout stops the process (SIGTERM,
    SIGKILL after ``grace``), is recorded as a timeout, and the instances after it go on in a
    new process. An instance that the process leaves unanswered when it exits (a crash) is an
    error, and the rest go on in a new process, so every process settles at least one instance.

    In a record, ``wall_time`` is the tool's own time for the instance where it reports one
    (the harness only sees answers every ``PROGRESS_INTERVAL`` seconds), else the harness's
    clock; the first instance of each process adds the process's start-up (the time from the
    process start to the answer, less the tool's own time for it), recorded in ``startup_time``,
    so that wall times add up to the processes' time as in one-process-per-instance mode.
    ``peak_memory_mb`` is the peak of the whole process that verified it."""
    grace = _grace(verifier) if grace is None else grace
    log_dir = Path(log_dir)
    emit = on_record or (lambda record: None)
    if not _batch_supported(verifier):
        records = []
        for instance in instances:
            records.append(run_instance(verifier, instance, log_dir, grace=grace))
            emit(records[-1])
        return records

    records_by_id: dict[int, RunRecord] = {}
    for group in _group_by_model(instances):
        for position, record in _run_model(verifier, group, log_dir, grace, emit):
            records_by_id[position] = record
    return [records_by_id[position] for position in range(len(instances))]


def _batch_supported(verifier: Verifier) -> bool:
    # Not guarded: a batch parameter that makes no sense is the user's error (BenchError).
    return bool(verifier.supports_batch())


def _group_by_model(instances: list[Instance]) -> list[list[tuple[int, Instance]]]:
    """Instances with their positions, grouped by (folder, ONNX file), in first-seen order."""
    groups: dict[tuple[str, str], list[tuple[int, Instance]]] = {}
    for position, instance in enumerate(instances):
        groups.setdefault((str(instance.root), instance.onnx), []).append((position, instance))
    return list(groups.values())


def _run_model(verifier: Verifier, group: list[tuple[int, Instance]], log_dir: Path,
               grace: float, emit: Callable[[RunRecord], None]):
    """Yield ``(position, record)`` for every instance of one model, process by process."""
    first = group[0][1]
    if not tool_installed(verifier):
        hint = verifier.install_hint.strip().splitlines() or [f"{verifier.name} is not installed"]
        for position, instance in group:
            record = finish_record(blank_record(verifier, instance), Status.ERROR, hint[0])
            emit(record)
            yield position, record
        return

    model_dir = attempt_dir(log_dir / _safe(verifier.result_name) / _safe(first.benchmark) /
                            f"{_safe(first.onnx)}__batch")
    pending = group
    round_no = 0
    while pending:
        round_no += 1
        workdir = model_dir / f"process_{round_no}"
        workdir.mkdir(parents=True)
        settled = _run_one_process(verifier, [inst for _, inst in pending], workdir, grace)
        for local, record in sorted(settled.items()):
            emit(record)
            yield pending[local][0], record
        pending = [item for local, item in enumerate(pending) if local not in settled]


@dataclass
class _Answer:
    verdict: Verdict
    elapsed: float  # harness clock: from the instance's start until its answer was seen
    late: bool  # certainly seen only after the instance's timeout
    started_at: str
    first: bool  # the process's first answer: its clock started with the process


class _BatchWatch:
    """Follows one batch process: reads its progress through the verifier and tells
    ``run_process`` when the instance being verified has overrun its timeout by ``grace``."""

    def __init__(self, verifier: Verifier, instances: list[Instance], workdir: Path,
                 grace: float):
        self.verifier, self.instances, self.workdir, self.grace = \
            verifier, instances, workdir, grace
        self.answers: dict[int, _Answer] = {}
        self.expired: int | None = None  # the instance that overran, once the watch stopped it
        self.parse_problem = ""
        self._stdout_path = workdir / "stdout.log"
        self._stdout = ""
        self._stdout_size = -1
        self._last_look = -float("inf")
        self.restart_clock()

    def restart_clock(self) -> None:
        self.current_start = time.monotonic()
        self.current_started_at = _utc_now()

    def current(self) -> int | None:
        """The first instance without an answer: the one the process is working on."""
        return next((i for i in range(len(self.instances)) if i not in self.answers), None)

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last_look >= PROGRESS_INTERVAL:
            self.look()
        current = self.current()
        if current is None:
            # Everything is answered; the process only has to exit, and gets grace to do so.
            return now - self.current_start > self.grace
        if now - self.current_start > self.instances[current].timeout + self.grace:
            self.expired = current
            return True
        return False

    def look(self) -> None:
        previous_look, now = self._last_look, time.monotonic()
        self._last_look = now
        try:
            size = self._stdout_path.stat().st_size
        except OSError:
            size = 0
        if size != self._stdout_size:  # the output only grows: read it again only then
            self._stdout_size, self._stdout = size, read_text(self._stdout_path)
        try:
            verdicts = self.verifier.parse_batch_progress(self.instances, self.workdir,
                                                          self._stdout)
        except Exception as err:
            self.parse_problem = f"cannot parse the output: {describe(err)}"
            return
        self.parse_problem = ""
        for index in sorted(verdicts):
            if index in self.answers or not 0 <= index < len(self.instances):
                continue
            timeout = self.instances[index].timeout
            # The answer came after the previous look: it is late only if even that was late.
            late = previous_look - self.current_start > timeout
            self.answers[index] = _Answer(verdicts[index], now - self.current_start, late,
                                          self.current_started_at, first=not self.answers)
            self.restart_clock()


def _run_one_process(verifier: Verifier, instances: list[Instance], workdir: Path,
                     grace: float) -> dict[int, RunRecord]:
    """Run one batch process over ``instances`` and settle what it can: every answered
    instance, and the one it was verifying when it overran or stopped. The others (never
    reached) are left out of the result, to go on in a new process."""
    records = {i: blank_record(verifier, inst) for i, inst in enumerate(instances)}
    for record in records.values():
        record.log_path = str(workdir)

    def settle_all(reason: str) -> dict[int, RunRecord]:
        return {i: finish_record(record, Status.ERROR, reason) for i, record in records.items()}

    try:
        command: Command = verifier.batch_command(instances, workdir)
    except Exception as err:
        return settle_all(f"cannot build the batch command: {describe(err)}")
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    (workdir / "command.txt").write_text(shlex.join(map(str, command.argv)) + "\n")
    watch = _BatchWatch(verifier, instances, workdir, grace)
    # A backstop only: the watch stops the process long before, instance by instance.
    total = sum(inst.timeout + grace for inst in instances) + grace
    try:
        outcome = run_process(command.argv, total, grace=grace, env=command.env,
                              cwd=command.cwd, stdout_path=stdout_path,
                              stderr_path=stderr_path, watch=watch)
    except OSError as err:
        return settle_all(f"cannot start {command.argv[0]}: {err}")
    end = time.monotonic()
    if watch.expired is None:
        watch.look()  # the answers printed just before the process exited

    settled: dict[int, RunRecord] = {}
    for index, answer in watch.answers.items():
        settled[index] = _answer_record(records[index], instances[index], answer)
    current = watch.current()
    if current is not None:
        record = records[current]
        record.started_at = watch.current_started_at
        record.wall_time = end - watch.current_start
        timeout = instances[current].timeout
        if watch.expired is not None or outcome.timed_out:
            how = "killed with SIGKILL" if outcome.killed else "stopped with SIGTERM"
            reason = (f"hard timeout after {timeout:g} s in batch mode (the process was {how}; "
                      f"the instances after this one went on in a new process)")
            settled[current] = finish_record(record, Status.TIMEOUT, reason)
        elif record.wall_time > timeout:
            # It died (or gave up) only after its time was up: a timeout, as run_instance
            # would have stopped it at the timeout.
            settled[current] = finish_record(record, Status.TIMEOUT,
                                       f"no answer within {timeout:g} s in batch mode")
        else:
            settled[current] = finish_record(record, Status.ERROR,
                                       _unanswered_reason(verifier, outcome, watch, stdout_path,
                                                          stderr_path))
    for record in settled.values():
        record.peak_memory_mb = outcome.peak_memory_mb
        record.peak_gpu_memory_mb = outcome.peak_gpu_memory_mb
    return settled


def _answer_record(record: RunRecord, instance: Instance, answer: _Answer) -> RunRecord:
    verdict = answer.verdict
    record.started_at = answer.started_at
    record.verifier_time = verdict.verifier_time
    record.decided_by = verdict.decided_by
    record.wall_time = verdict.verifier_time if verdict.verifier_time is not None \
        else answer.elapsed
    if answer.first and verdict.verifier_time is not None:
        # Seen up to PROGRESS_INTERVAL after it was printed: the start-up is that much high at
        # most.
        record.startup_time = max(answer.elapsed - verdict.verifier_time, 0.0)
        record.wall_time = verdict.verifier_time + record.startup_time
    elif not answer.first and verdict.verifier_time is not None:
        record.startup_time = 0.0
    try:
        status = Status(verdict.status)
    except ValueError:
        return finish_record(record, Status.ERROR, f"the verifier reported status {verdict.status!r}")
    if answer.late:
        record.wall_time = answer.elapsed
        if status is not Status.TIMEOUT:
            return finish_record(record, Status.TIMEOUT,
                           f"answered {status.value} only after its timeout of "
                           f"{instance.timeout:g} s (batch mode)")
    if status is Status.SAT:
        record.cex_check, record.cex_detail = check_cex(instance, verdict)
    return finish_record(record, status, verdict.reason)


def _unanswered_reason(verifier: Verifier, outcome: ProcessOutcome, watch: _BatchWatch,
                       stdout_path: Path, stderr_path: Path) -> str:
    """Why the instance being verified got no answer: the process exited under it."""
    if outcome.returncode < 0:
        try:
            exit_text = f"killed by {signal.Signals(-outcome.returncode).name}"
        except ValueError:
            exit_text = f"killed by signal {-outcome.returncode}"
    else:
        exit_text = f"exited with code {outcome.returncode}"
    text = f"the {verifier.name} batch process {exit_text} before answering this instance"
    if watch.parse_problem:
        return f"{text}; {watch.parse_problem}"
    last = last_line(read_text(stderr_path)) or last_line(read_text(stdout_path))
    return f"{text}; last output: {last}" if last else text


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
