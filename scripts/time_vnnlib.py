"""Time and peak memory of reading large VNN-LIB properties (run on a quiet machine).

    .venv/bin/python scripts/time_vnnlib.py 2 20 64

Each argument is a size in MB: an L-inf robustness property (``robustness_property``, the shape
of VNN-COMP's image properties: one declaration and two bound lines per input) of about that
size is parsed with ``bench.formats.vnnlib.parse_vnnlib``, in a fresh process per size so that
the peak memory is that size's. The reader is linear: expect the same ns/byte at every size.
The default property limit (``bench.formats.folder.Limits.vnnlib_bytes``) is 64 MiB.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np

BYTES_PER_INPUT = 113  # of robustness_property with random pixels, measured


def measure(megabytes: float) -> str:
    from bench.formats.vnnlib import parse_vnnlib, robustness_property

    inputs = int(megabytes * 1e6 / BYTES_PER_INPUT)
    text = robustness_property(np.random.default_rng(0).random(inputs), 0, 0.01, 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    n_in, _, _ = parse_vnnlib(text)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"{len(text) / 1e6:7.1f} MB, {n_in:>9} inputs: {seconds:6.2f} s, "
            f"{seconds / len(text) * 1e9:4.0f} ns/byte, peak RSS {peak:6.0f} MiB "
            f"({before:.0f} MiB before parsing)")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--one":
        print(measure(float(argv[2])))
        return 0
    for size in argv[1:] or ["2", "20", "64"]:
        subprocess.run([sys.executable, __file__, "--one", size], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
