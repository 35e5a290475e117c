"""One registry per kind of thing (dataset, model, trainer, pruner, verifier).

Adding a pruner means adding one module to ``bench/pruning/`` that decorates its entry point with
``@PRUNERS.register("name")``; packages import all their modules on first use, so nothing else has
to change.

Modules outside the package register the same way once imported: ``PRUNE_BENCH_PLUGINS`` (a
comma-separated list of importable module names, e.g. ``PRUNE_BENCH_PLUGINS=my_lab.verifiers``)
is imported by every registry on first use. It is an environment variable rather than an option
so that it reaches every process that looks a name up: parallel workers, Ray tasks and
subprocesses alike. The tests use it to register test-only verifiers.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import BenchError

T = TypeVar("T")

PLUGINS_ENV = "PRUNE_BENCH_PLUGINS"


def load_plugins() -> None:
    """Import the modules named in ``PRUNE_BENCH_PLUGINS`` (already imported ones are cached)."""
    for name in (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only a missing plugin is the user's mistake; a plugin that fails to import one of
            # its own dependencies keeps its traceback.
            if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
                raise
            raise BenchError(f"{PLUGINS_ENV} names module {name!r}, which cannot be imported; "
                             f"fix the name or add its folder to PYTHONPATH") from None


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        # Import every module of the package once, so that their @register decorators run.
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._package}.{module.name}")
        load_plugins()

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise BenchError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
