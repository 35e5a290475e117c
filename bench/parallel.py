"""Processes and clusters, for any kind of work: worker slots (pinned to a GPU where there are
GPUs), processes that die with their parent, one fresh process per task, and connecting to Ray.

``bench.build.sweep`` (training builds) and ``bench.run.executors`` (verifier runs) use them.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import platform
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from bench.registry import PLUGINS_ENV


@dataclass(frozen=True)
class Slot:
    """One worker's place: the GPU it is pinned to, if any, and its device as recorded."""

    device: str  # "cpu (<model>)" or "cuda:<id> (<name>)"
    cuda_visible_devices: str | None = None  # the worker's CUDA_VISIBLE_DEVICES; None: inherit


# One thread for every numerical library a process may use (OpenMP, MKL, OpenBLAS, ...): N
# workers on N cores, and every tool they start, must not oversubscribe them. Read once, when a
# library is loaded: set before.
ONE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                        "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def one_thread_environment() -> dict[str, str]:
    """The environment variables that keep numerical libraries on one thread."""
    return {name: "1" for name in ONE_THREAD_VARIABLES}


# --------------------------------------------------------------------------- devices


def detect_gpus() -> list[str]:
    """The CUDA devices this process may use, as values for ``CUDA_VISIBLE_DEVICES``: the
    entries of our own ``CUDA_VISIBLE_DEVICES`` if it is set (so a job that was given GPUs 2,3
    by its scheduler pins workers to 2 and 3), else 0..n-1. Empty without torch or CUDA."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part.strip() for part in visible.split(",") if part.strip()][:count]
    return [str(index) for index in range(count)]


def describe_cpu() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"cpu ({model})" if model else "cpu"


def describe_gpu(visible_id: str) -> str:
    """``cuda:<id> (<name>)``, the name from NVML: unlike torch it does not create a CUDA
    context (hundreds of MB on the GPU) in a process that only wants the name."""
    name = None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if visible_id.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible_id))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(visible_id)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        name = None
    return f"cuda:{visible_id}" + (f" ({name})" if name else "")


def make_slots(workers: int | None, use_gpus: bool) -> list[Slot]:
    """One slot per worker. With ``use_gpus`` and CUDA devices present: by default one worker
    per device, and with ``workers`` given, worker i on device i mod n (several per device).
    Otherwise ``workers`` CPU workers (default 1), their environment left alone."""
    devices = detect_gpus() if use_gpus else []
    if devices:
        count = workers or len(devices)
        described = {device: describe_gpu(device) for device in devices}
        return [Slot(described[devices[i % len(devices)]], devices[i % len(devices)])
                for i in range(count)]
    cpu = describe_cpu()
    return [Slot(cpu) for _ in range(workers or 1)]

def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; a no-op
    elsewhere), and act at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def exit_on_signal(signum: int, frame: object) -> None:
    """A signal handler that ends the process by an exception, not at once: on the way out the
    harness kills the tool's process tree, and the runner stops its workers."""
    raise SystemExit(128 + signum)


def enter_worker(parent_pid: int, slot: Slot, death_signal: int) -> None:
    die_with_parent(parent_pid, death_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, exit_on_signal)
    if slot.cuda_visible_devices is not None:
        # Before anything touches CUDA; the tool inherits it through the harness's environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.cuda_visible_devices

# --------------------------------------------------------------------------- processes per task


def run_tasks(function: Callable[[Any], Any], tasks: Sequence[Any], slots: Sequence[Slot],
              on_done: Callable[[int, Any, str | None], None]) -> None:
    """Run ``function(task)`` for every task in a fresh process (at most one per slot at a
    time) and call ``on_done(index, result, None)``, or ``on_done(index, None, traceback)`` when
    it raised or its process died. For long tasks (a training run), where a fresh interpreter
    per task costs nothing. Each process dies with this one (SIGKILL: it has no tool to clean
    up), so a killed build leaves nothing running that its rerun would redo."""
    context = multiprocessing.get_context("spawn")
    queue = deque(enumerate(tasks))
    free = list(slots)
    running: dict[int, tuple[int, Any, Connection, Slot]] = {}  # sentinel -> task

    def start(slot: Slot) -> None:
        index, task = queue.popleft()
        conn, child = context.Pipe(duplex=False)
        process = context.Process(target=_task_main,
                                  args=(child, function, task, slot, os.getpid()),
                                  name=f"bench-task-{index}", daemon=True)
        process.start()
        child.close()
        running[process.sentinel] = (index, process, conn, slot)

    try:
        while queue and free:
            start(free.pop(0))
        while running:
            for sentinel in wait(list(running)):
                index, process, conn, slot = running.pop(sentinel)
                process.join()
                try:
                    kind, payload = conn.recv() if conn.poll() else ("error", None)
                except (EOFError, OSError):
                    kind, payload = "error", None
                conn.close()
                if kind == "ok":
                    on_done(index, payload, None)
                else:
                    on_done(index, None, payload or f"the process died (exit code "
                                                    f"{process.exitcode})")
                if queue:
                    start(slot)
    finally:
        for index, process, conn, slot in running.values():
            process.kill()
            process.join(5)
            conn.close()


def _task_main(conn: Connection, function: Callable[[Any], Any], task: Any, slot: Slot,
               parent_pid: int) -> None:
    enter_worker(parent_pid, slot, signal.SIGKILL)
    try:
        result = function(task)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", result))
    conn.close()


# --------------------------------------------------------------------------- ray


def import_ray() -> Any:
    from bench.errors import BenchError

    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'prune-bench[ray]'") from None
    return ray


def ray_connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (else ``RAY_ADDRESS``; with neither, Ray starts a
    local one). Returns whether this call connected (and so should disconnect); a caller that
    connected already (``ray.init`` in a test or a notebook) keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"address": address, "log_to_driver": False,
                               "logging_level": logging.WARNING}
    if address is None:
        options["include_dashboard"] = False  # a throwaway local cluster for this run only
    # Plugins must be importable in the tasks too (the package itself must be installed there).
    if os.environ.get(PLUGINS_ENV):
        options["runtime_env"] = {"env_vars": {PLUGINS_ENV: os.environ[PLUGINS_ENV]}}
    ray.init(**options)
    return True


def default_window(resource: str, per_task: float) -> int:
    """Tasks kept submitted at once: twice what the cluster can run now, so that a node that
    frees up never waits for the driver, yet a killed driver has little submitted to lose."""
    ray = import_ray()
    available = ray.cluster_resources().get(resource, 0) / max(per_task, 1e-9)
    return max(2, int(2 * available))
