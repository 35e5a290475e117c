"""Trainers: one module per training method, registered in ``TRAINERS`` under its CLI name."""
from bench.registry import Registry

TRAINERS = Registry("training method", "bench.training")
