"""What runs inside this package's own worker processes, whichever way they run: one process per
instance (``python -m bench.verifiers._<tool>_main ...``) or the persistent worker
(``bench.verifiers._engine_main``), which answers many instances in one process.

``answer`` turns one verification into the worker's outputs, the same way in both: the VNN-COMP
result file and its statistics (``onnx_torch.write_outputs``) on success, or one ``<tool>:``
line on stderr and exit code ``EXIT_ERROR`` (no result file) on failure. ``one_thread`` is how
every worker limits itself to one CPU thread.

Imports no numerical library at module level: torch is imported by ``one_thread``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench.parallel import one_thread_environment

EXIT_ERROR = 2

# The outcome of one verification: status, counterexample (x, y) or None, statistics.
Outcome = tuple[str, Any, dict]


def one_thread() -> None:
    """This process computes on one CPU thread: CPU runs are measured single-threaded, and N
    workers on N cores must not oversubscribe them (with two threads on two busy cores torch
    ran many times slower)."""
    for name, value in one_thread_environment().items():
        os.environ.setdefault(name, value)
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or work already ran: it is set once per process
        pass


def answer(tool: str, run: Callable[[], Outcome], result: Path, started: float) -> int:
    """Run one verification and write what it found; returns the worker's exit code.

    ``run`` returns ``(status, counterexample, stats)`` or raises ``WorkerError`` (the reason
    this instance cannot be decided); ``started`` (``time.perf_counter()``) is when the tool's
    own clock started, recorded as ``time_s`` in the statistics. Any other exception is a bug
    or an unforeseen failure: its traceback goes to stderr, then the ``<tool>:`` line."""
    from bench.verifiers.onnx_torch import WorkerError, first_line, write_outputs

    try:
        status, cex, stats = run()
    except WorkerError as err:
        print(f"{tool}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # keep the traceback, then say why in one line
        traceback.print_exc()
        print(f"{tool}: unexpected {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    stats["time_s"] = time.perf_counter() - started
    write_outputs(result, status, cex, stats)
    return 0
