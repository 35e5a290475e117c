"""The persistent worker: one long-lived process that answers many instances.

Run by ``bench.verifiers.engine`` (never by hand) as ``python -m bench.verifiers._engine_main
--socket PATH``, under the harness's supervisor like any tool. It limits itself to one CPU thread,
imports torch, onnx2torch, onnxruntime and auto_LiRPA once, connects to the Unix socket at PATH,
says it is ready, then answers one request at a time, each a JSON line:

    {"onnx": file, "vnnlib": file, "workdir": folder, "timeout": seconds,
     "cascade": CascadeSettings.as_params() or null, "eps": number or null,
     "tool": {"name": "milp", "module": "bench.verifiers._milp_main", "argv": [...]} or null}

For each it runs the cascade's cheap stages (``bench.verifiers.stages``) if asked, then, unless
they decided, the tool: the worker module's ``run(args, deadline, model)`` (any module with
``parse_args`` and ``run``: ``OwnWorker.worker_module``) on the very arguments
its one-process-per-instance command gets, answered with ``worker_process.answer``, so that the
instance's folder receives the same files (result, statistics, ``stdout.log``/``stderr.log``:
this process's output is redirected there during the instance). The reply is one JSON line:
``cascade`` (``CascadeOutcome.as_dict()``), ``tool`` (``{"returncode": n}``), ``load_s`` (the
model's loading time, 0 when it was kept), ``time_s`` (the whole request), ``peak_mb`` and
``rss_mb``, or ``error`` (a bug: the traceback is in the folder's ``stderr.log``). The folder also
gets ``engine.json``: this process's pid, how many models it has loaded so far, and the times.

Models are kept (``MODEL_CACHE``, least recently used first out) by file, size and modification
time; parsed properties too (``onnx_torch.PROPERTIES``). The time limit is the harness's: it kills
this process when an instance overruns; the tool's own deadline (``timeout`` less a margin) lets
``milp`` answer ``timeout`` itself first, which keeps the process.

Memory of one instance (``peak_mb``): the resident size of its model, measured when it was loaded,
plus the process's peak resident size during the instance above its size just before it (the
kernel's high-water mark, reset by writing 5 to ``/proc/self/clear_refs``; freed memory is handed
back to the system with ``malloc_trim`` after every instance, so that one instance's garbage does
not hide the next one's needs). So it counts what the instance needs (its model and its working
memory), not the interpreter and its imports, which every instance shares.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

MODEL_CACHE = 4  # models kept (a benchmark's instances come model by model)
PROPERTY_CACHE = 256  # parsed properties kept (one per sample, shared by every level)
DEADLINE_MARGIN_S = 1.0  # the tool's deadline is this much (at most a tenth) before the hard one
ENGINE_FILE = "engine.json"  # in each instance's folder: which process answered, and its counts
_KB = 1024


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class Memory:
    """The process's resident size and its high-water mark, where Linux shows them."""

    def __init__(self) -> None:
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            self._libc = None
        self.resettable = self._reset_peak()

    def rss_mb(self) -> float:
        try:
            return _status_kb("VmRSS:") / _KB
        except OSError:
            return 0.0

    def peak_mb(self) -> float:
        try:
            return _status_kb("VmHWM:") / _KB
        except OSError:
            return 0.0

    def trim(self) -> None:
        """Hand freed heap memory back to the system."""
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def _reset_peak(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            return True
        except OSError:
            return False

    def start(self) -> float:
        """Reset the high-water mark to now; returns the resident size now."""
        self._reset_peak()
        return self.rss_mb()


# --------------------------------------------------------------------------- models


class Models:
    """Loaded models by file, the ``size`` most recently used, each with its size."""

    def __init__(self, size: int, memory: Memory):
        self.size, self.memory = size, memory
        self._entries: OrderedDict[tuple, tuple[Any, float]] = OrderedDict()
        self.loads = 0  # how many times a model was loaded (tests count them)

    def get(self, path: str) -> tuple[Any, float, float]:
        """``(model, its size in MB (``model_mb``), seconds spent loading it now)``; raises
        WorkerError."""
        from bench.verifiers.onnx_torch import LoadedModel

        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key in self._entries:
            self._entries.move_to_end(key)
            model, resident = self._entries[key]
            return model, resident, 0.0
        while len(self._entries) >= self.size:
            self._entries.popitem(last=False)
        clock = time.perf_counter()
        model = LoadedModel(path)
        self.loads += 1
        resident = model_mb(model)
        self._entries[key] = (model, resident)
        return model, resident, time.perf_counter() - clock


def model_mb(model) -> float:
    """The model as this process holds it, in MB: its torch weights, and the ONNX model three
    times (as read, as rewritten, and in onnxruntime). Computed, not measured: a loaded model
    often fits in heap memory that an earlier instance freed, so the resident size need not grow
    by its size, and the first model would seem to weigh more than the others."""
    network = model.network
    weights = sum(t.numel() * t.element_size() for t in (*network.parameters(),
                                                         *network.buffers()))
    return (weights + 3 * os.path.getsize(model.path)) / (1 << 20)


# --------------------------------------------------------------------------- requests


@contextlib.contextmanager
def output_to(workdir: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so C libraries' output too)
    go to ``workdir/stdout.log`` and ``workdir/stderr.log`` while inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
            target = os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, fd)
            os.close(target)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def _worker_module(name: str):
    """The worker module ``name`` (``bench.verifiers._milp_main``, ...): it must provide
    ``parse_args(argv)`` and ``run(args, deadline, model) -> (status, counterexample, stats)``."""
    import importlib

    module = importlib.import_module(name)
    if not callable(getattr(module, "parse_args", None)) or not callable(getattr(module, "run",
                                                                                   None)):
        raise TypeError(f"{name} is not a worker module (no parse_args and run)")
    return module


# Imported before the worker says it is ready, so that no instance pays for them. A module that
# is missing fails the instances that need it, as in a one-process-per-instance worker.
PRELOAD = ("onnx", "onnx2torch", "onnxruntime", "bench.lirpa_compat", "scipy.sparse", "highspy",
           "bench.verifiers._lirpa_main", "bench.verifiers._milp_main")


class Engine:
    def __init__(self) -> None:
        import importlib

        from bench.verifiers.onnx_torch import PROPERTIES

        for module in PRELOAD:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        self.memory = Memory()
        with contextlib.suppress(Exception):  # a warm-up that fails only costs the first instance
            warm_up(Path.cwd())
        self.memory.trim()
        PROPERTIES.size = PROPERTY_CACHE
        self.models = Models(MODEL_CACHE, self.memory)

    def handle(self, request: dict) -> dict:
        started = time.perf_counter()
        timeout = float(request["timeout"])
        deadline = time.monotonic() + timeout - min(DEADLINE_MARGIN_S, 0.1 * timeout)
        workdir = Path(request["workdir"])
        reply: dict[str, Any] = {"load_s": 0.0, "model_loads": self.models.loads}
        baseline = self.memory.start()
        resident = 0.0
        with output_to(workdir):
            try:
                model, resident, reply["load_s"], problem = self._model(request["onnx"])
                # The model's loading is its own: the instance's peak starts from here.
                baseline = self.memory.start()
                outcome = None
                if request.get("cascade") is not None:
                    outcome = self._cascade(request, model, problem, deadline)
                    reply["cascade"] = outcome.as_dict()
                    (workdir / "cascade.json").write_text(json.dumps(reply["cascade"]) + "\n")
                if request.get("tool") and (outcome is None or outcome.status is None):
                    reply["tool"] = {"returncode": self._tool(request["tool"], model, problem,
                                                              deadline)}
            except Exception as err:  # a bug here: the instance is an error, the traceback kept
                traceback.print_exc()
                reply["error"] = f"{type(err).__name__}: {str(err).strip()[:300]}"
        reply["peak_mb"] = resident + max(self.memory.peak_mb() - baseline, 0.0)
        reply["model_loads"] = self.models.loads
        reply["pid"] = os.getpid()
        reply["time_s"] = time.perf_counter() - started
        self.memory.trim()
        reply["rss_mb"] = self.memory.rss_mb()
        # What this process did for the instance, beside its other files (for the curious, and
        # for tests: which process, how many models it has loaded so far).
        facts = {key: reply[key] for key in ("pid", "model_loads", "load_s", "peak_mb", "time_s",
                                             "rss_mb")}
        (workdir / ENGINE_FILE).write_text(json.dumps(facts) + "\n")
        return reply

    def _model(self, path: str):
        """``(model, resident MB, load seconds, None)``, or ``(None, 0, 0, why)`` when it cannot
        be loaded (the tool then says so as its one-process worker would)."""
        from bench.verifiers.onnx_torch import WorkerError

        try:
            return (*self.models.get(path), None)
        except WorkerError as err:
            return None, 0.0, 0.0, err
        except OSError as err:
            return None, 0.0, 0.0, WorkerError(f"cannot read ONNX model {path}: "
                                               f"{err.strerror or err}")

    def _cascade(self, request: dict, model, problem, deadline: float):
        from bench.verifiers.onnx_torch import WorkerError
        from bench.verifiers.stages import CascadeOutcome, CascadeSettings, run_stages

        if problem is not None:
            return CascadeOutcome(notes=[f"cascade skipped: {problem}"])
        settings = CascadeSettings.from_params(request["cascade"])
        try:
            return run_stages(model, request["vnnlib"], settings, request.get("eps"), deadline)
        except WorkerError as err:
            return CascadeOutcome(notes=[f"cascade skipped: {err}"])

    def _tool(self, tool: dict, model, problem, deadline: float) -> int:
        from bench.verifiers.worker_process import answer

        module = _worker_module(tool["module"])
        args = module.parse_args(tool["argv"])
        name = tool["name"]

        def verify():
            if problem is not None:
                raise problem
            return module.run(args, deadline, model)

        return answer(name, verify, args.result, time.perf_counter())


def warm_up(folder: Path) -> None:
    """Run the cheap stages once on a tiny network of our own (a convolution, a ReLU, a dense
    layer), so that what the libraries set up on first use (onnxruntime's and onnx2torch's
    state, auto_LiRPA's tracing, torch's kernels) is done before the first instance: it would
    count as that instance's time and memory otherwise."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bench.formats.vnnlib import robustness_property
    from bench.verifiers.onnx_torch import LoadedModel
    from bench.verifiers.stages import CascadeSettings, run_stages

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w", (2, 1, 3, 3)), ("b", (2,)), ("W", (3, 8)),
                                   ("c", (3,)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "c"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "warm_up",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              weights)
    model_path, property_path = folder / "warm_up.onnx", folder / "warm_up.vnnlib"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(model_path))
    # Every stage runs on one of the two properties, whatever the tiny network answers.
    for eps, stages in ((0.5, ("clean", "attack")), (0.1, ("bounds",))):
        property_path.write_text(robustness_property(np.full((1, 4, 4), 0.5), 0, eps, 3))
        settings = CascadeSettings(stages=stages, attack_restarts=2, attack_steps=2,
                                   alpha_iterations=2)
        run_stages(LoadedModel(model_path), property_path, settings, None,
                   time.monotonic() + 60)


def serve(path: str) -> int:
    from bench.verifiers.worker_process import one_thread

    one_thread()
    engine = Engine()  # imports everything a request may need, before saying ready
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(path)
    stream = connection.makefile("rwb")

    def send(message: dict) -> None:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()

    send({"ready": True, "pid": os.getpid(), "rss_mb": engine.memory.rss_mb(),
          "peak_resettable": engine.memory.resettable})
    for line in stream:  # until the harness closes its end
        send(engine.handle(json.loads(line)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verifiers._engine_main",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    return serve(args.socket)


if __name__ == "__main__":
    sys.exit(main())
