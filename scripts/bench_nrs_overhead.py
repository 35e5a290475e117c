"""Cost of the NRS regularizer in one CROWN-IBP (loss fusion) training step, on the CPU.

cnn4 on MNIST-sized input (1x28x28), batch 128, random data, an eps box of 0.1 in normalized
coordinates. One step is ``trainer.loss(batch)`` (+ the regularizer) and ``backward()``. The
variants run interleaved, round after round, so that load from other processes spreads evenly
over them; the table gives the minimum (the least disturbed run, the steadiest figure on a
busy machine), the median and the mean over the timed rounds, and the overhead of each
variant's minimum over the unregularized step's.

    .venv/bin/python scripts/bench_nrs_overhead.py [--steps 10] [--warmup 3] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.config import make_config  # noqa: E402
from bench.models import build_model  # noqa: E402
from bench.training.base import Batch  # noqa: E402
from bench.training.crown_ibp import CrownIBP  # noqa: E402
from bench.training.regularizers import (_stability_loss, ibp_preactivation_bounds,  # noqa: E402
                                         nrs_loss)

SHAPE = (1, 28, 28)
BATCH = 128
RADIUS = 0.1  # half-width of the box, normalized coordinates
WEIGHT = 0.01  # paper 4.1.2


def variants(trainer: CrownIBP):
    """name -> regularizer(batch) added to the CROWN-IBP loss (None: no regularizer)."""
    return {
        "CROWN-IBP alone": None,
        "+ NRS (auto_LiRPA bounds, as trained)": lambda b: WEIGHT * nrs_loss(trainer, b),
        # Cost breakdown: NRS without cancelling its gradient to the BN weights (the extra
        # autograd pass), and NRS on a separate IBP pass (the adversarial-training path).
        "+ NRS, no gamma-gradient stop": lambda b: WEIGHT * _stability_loss(
            trainer.preactivation_bounds(b), normalize_by_gamma=True),
        "+ NRS on a separate IBP pass": lambda b: WEIGHT * _stability_loss(
            ibp_preactivation_bounds(trainer, b), normalize_by_gamma=True),
    }


def step(trainer: CrownIBP, batch: Batch, regularizer) -> float:
    start = time.perf_counter()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.loss(batch)
    if regularizer is not None:
        loss = loss + regularizer(batch)
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = make_config(model="cnn4", training="crown-ibp", batch_size=BATCH, eps=RADIUS)
    model = build_model("cnn4", SHAPE, 10)
    trainer = CrownIBP(config, model, SHAPE, 10)
    model.train()
    x = torch.randn(BATCH, *SHAPE)
    y = torch.randint(0, 10, (BATCH,))

    print(f"cnn4 {SHAPE}, batch {BATCH}, CPU, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for fraction, phase in ((0.5, "eps ramping: CROWN-IBP + IBP bounds"),
                            (1.0, "eps at its maximum: IBP bound only")):
        batch = Batch(x, y, x - RADIUS, x + RADIUS, eps=RADIUS, eps_fraction=fraction)
        runs = variants(trainer)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.warmup + args.steps):
            for name, regularizer in runs.items():
                seconds = step(trainer, batch, regularizer)
                if round_ >= args.warmup:
                    times[name].append(seconds)
        base = min(times["CROWN-IBP alone"])
        print(f"\n{phase} (eps_fraction {fraction}), {args.steps} steps after "
              f"{args.warmup} warm-up")
        print(f"{'variant':40s} {'min ms':>8s} {'median ms':>10s} {'mean ms':>9s} "
              f"{'overhead':>9s}")
        for name, values in times.items():
            print(f"{name:40s} {1e3 * min(values):8.1f} {1e3 * statistics.median(values):10.1f} "
                  f"{1e3 * statistics.mean(values):9.1f} {100 * (min(values) / base - 1):+8.1f}%")


if __name__ == "__main__":
    main()
