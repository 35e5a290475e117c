"""How long the harness takes around a tool that does nothing: the cost per instance of running a
tool under its supervisor (start, memory sampling, exit, cleanup of leftovers).

    python scripts/bench_harness_overhead.py [--count 200]

Prints, for a supervisor per tool (what a lone ``run_process`` call gets) and for one reused
supervisor (what a runner or a pool worker gets), the median and 90th percentile of the time
``run_process`` took minus the tool's own ``wall_time``. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from bench.supervisor import reusing_supervisors
from bench.verifiers.harness import run_process


def measure(count: int, reuse: bool, folder: Path) -> list[float]:
    overheads = []
    with reusing_supervisors() if reuse else nullcontext():
        for _ in range(count):
            started = time.monotonic()
            outcome = run_process(["true"], timeout=30, stdout_path=folder / "out",
                                  stderr_path=folder / "err")
            overheads.append(time.monotonic() - started - outcome.wall_time)
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for reuse in (False, True):
            overheads = sorted(measure(args.count, reuse, Path(folder)))
            p90 = overheads[int(0.9 * (len(overheads) - 1))]
            print(f"{'one reused supervisor' if reuse else 'a supervisor per tool':24s} "
                  f"overhead median {statistics.median(overheads) * 1000:6.1f} ms, "
                  f"p90 {p90 * 1000:6.1f} ms ({args.count} runs of `true`)")


if __name__ == "__main__":
    main()
