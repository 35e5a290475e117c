"""Pruners: one module per method, each registered in ``PRUNERS`` under its CLI name.

A pruning step is a pure function ``prune(config, trained_model, current_mask, context) -> Mask``
(as in open_lth) returning the mask of the next level. Register it with ``@pruner("name", ...)``,
declaring what else the method needs from training:

- ``regularizer``: a training regularizer the method trains with (``"nrs"``, ``"rs"``,
  ``"slim"``; see ``bench.training.regularizers``), e.g. IMP+NRS is IMP pruning of networks
  trained with the NRS loss;
- ``structured``: whether it removes whole channels (exported models are then physically
  smaller), which also sets its default per-level rate (paper 4.1.2: 0.2 unstructured, 0.11
  structured);
- ``params``: its own hyperparameters (a ``bench.config.Hyperparameters``, e.g. HYDRA's score
  training), which the experiment's hash covers: changing one names a new experiment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench.config import Hyperparameters
from bench.registry import Registry


@dataclass(frozen=True)
class Pruner:
    name: str
    prune: Callable  # (config, trained_model, current_mask, context) -> Mask
    regularizer: str | None = None
    structured: bool = False
    params: Hyperparameters = Hyperparameters()

    @property
    def default_rate(self) -> float:
        return 0.11 if self.structured else 0.2


PRUNERS: Registry[Pruner] = Registry("pruner", "bench.pruning")


def pruner(name: str, regularizer: str | None = None, structured: bool = False,
           params: Hyperparameters = Hyperparameters()):
    """Register the decorated prune function as pruner ``name``."""

    def decorator(fn: Callable) -> Callable:
        PRUNERS.register(name)(Pruner(name, fn, regularizer, structured, params))
        return fn

    return decorator
