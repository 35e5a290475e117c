"""A test-only worker module for the persistent worker (``bench.verifiers._engine_main``): it
answers ``unsat`` at once, except on the properties it is told to hang on (it sleeps far past any
timeout) or to crash on (the process kills itself with SIGKILL, as the OOM killer would).

Its statistics carry the process's pid, so a test can tell which process answered. Imported by
the persistent worker by name (``fake_engine_worker``): this folder must be on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fake_engine_worker")
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--vnnlib", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--hang-on", default="")
    parser.add_argument("--crash-on", default="")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, deadline: float, model=None):
    name = args.vnnlib.name
    if args.hang_on and args.hang_on in name:
        time.sleep(3600)
    if args.crash_on and args.crash_on in name:
        os.kill(os.getpid(), signal.SIGKILL)
    return "unsat", None, {"pid": os.getpid(), "model_given": model is not None}
