"""Milliseconds per ``conv_transpose2d`` call on torch's two CPU kernels, oneDNN's and the native
one (``slow_conv_transpose2d``), for shapes that auto_LiRPA's CROWN passes produce: the data for
the kernel choice in ``bench.lirpa_compat._ConvTransposeKernels``.

Usage: .venv/bin/python scripts/bench_conv_transpose.py [--threads 1]
Each line: input and weight shape, both times, and native / oneDNN (below 1: native is faster).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (input, weight, stride, padding): MNIST's first layer (one output channel), then layers with
# more output channels, as CROWN's margins, its patches and CROWN-IBP's training batches give.
CASES = [
    ((9, 8, 14, 14), (8, 1, 4, 4), 2, 1),
    ((53, 8, 4, 4), (8, 1, 4, 4), 2, 0),
    ((784, 8, 4, 4), (8, 1, 4, 4), 2, 0),
    ((128, 8, 14, 14), (8, 1, 4, 4), 2, 1),
    ((9, 16, 7, 7), (16, 8, 4, 4), 2, 1),
    ((128, 16, 7, 7), (16, 8, 4, 4), 2, 1),
    ((9, 32, 32, 32), (32, 3, 3, 3), 1, 1),
    ((200, 32, 3, 3), (32, 3, 3, 3), 1, 0),
    ((9, 64, 32, 32), (64, 64, 3, 3), 1, 1),
    ((500, 64, 3, 3), (64, 64, 3, 3), 1, 0),
]


def milliseconds(call) -> float:
    call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    repeats = max(3, min(200, int(0.3 / max(once, 1e-6))))
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for shape, weight_shape, stride, padding in CASES:
        x, weight = torch.randn(shape), torch.randn(weight_shape)
        onednn = milliseconds(lambda: F.conv_transpose2d(x, weight, stride=stride,
                                                         padding=padding))
        native = milliseconds(lambda: torch.ops.aten.slow_conv_transpose2d(
            x, weight, list(weight_shape[2:]), None, [stride] * 2, [padding] * 2, [0, 0],
            [1, 1]))
        print(f"{str(shape):18} {str(weight_shape):16} oneDNN {onednn:8.3f} ms  "
              f"native {native:8.3f} ms  ratio {native / onednn:5.2f}")


if __name__ == "__main__":
    main()
