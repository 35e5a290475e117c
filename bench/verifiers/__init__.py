"""Verifiers: one module per tool, each registered in ``VERIFIERS`` under its CLI name."""
from bench.registry import Registry
from bench.verifiers.base import Command, Parameter, Status, Verdict, Verifier

VERIFIERS: Registry[type[Verifier]] = Registry("verifier", "bench.verifiers")

__all__ = ["VERIFIERS", "Command", "Parameter", "Status", "Verdict", "Verifier"]
