"""CPU time of one training step per training method, relative to natural training.

Usage: .venv/bin/python scripts/bench_training_step.py [--model cnn4] [--batch 128] [--steps 10]
A step is the method's loss, backward and the optimizer step, on random MNIST-shaped data,
after two warm-up steps. ``--fraction`` is how far the eps ramp has come (eps = fraction * 0.1):
below 1, CROWN-IBP mixes CROWN into its bound (its expensive phase); at 1 it is pure IBP.
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.config import make_config
from bench.models import build_model
from bench.training import TRAINERS
from bench.models.normalize import Normalizer
from bench.training.base import Batch


def step_time(training: str, model_name: str, batch_size: int, steps: int,
              fraction: float) -> float:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    config = make_config(training=training, model=model_name, eps=0.1)
    model = build_model(model_name, shape, 10)
    trainer = TRAINERS.get(training)(config, model, shape, 10)
    normalizer = Normalizer((0.1307,), (0.3081,))
    x = torch.rand(batch_size, *shape)
    y = torch.randint(0, 10, (batch_size,))
    eps = fraction * config.properties.eps
    lower, upper = normalizer.box(x, eps)
    batch = Batch(normalizer(x), y, lower, upper, eps, fraction)
    optimizer = torch.optim.Adam(trainer.parameters(), lr=1e-3)

    def one_step() -> None:
        loss = trainer.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        one_step()
    start = time.process_time()
    for _ in range(steps):
        one_step()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cnn4")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default=",".join(TRAINERS.names()))
    parser.add_argument("--fraction", type=float, default=0.5)
    args = parser.parse_args()
    times = {m: step_time(m, args.model, args.batch, args.steps, args.fraction)
             for m in args.methods.split(",")}
    base = times.get("natural")
    print(f"model {args.model}, batch {args.batch}, eps ramp at {args.fraction:.0%}, "
          f"{torch.get_num_threads()} threads, CPU time per step")
    print(f"{'method':12s} {'seconds':>9s} {'x natural':>10s}")
    for method, seconds in times.items():
        ratio = f"{seconds / base:10.1f}" if base else ""
        print(f"{method:12s} {seconds:9.4f} {ratio}")


if __name__ == "__main__":
    main()
