"""Pruners: one module per method, each registered in ``PRUNERS`` under its CLI name.

A pruner is a pure function ``prune(config, trained_model, current_mask, context) -> Mask``
(as in open_lth) returning the mask of the next level.
"""
from bench.registry import Registry

PRUNERS = Registry("pruner", "bench.pruning")
