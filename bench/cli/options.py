"""Options shared by several commands: parallel, sharded and distributed execution, and
verifier parameters."""
from __future__ import annotations

from typing import Any, Callable

import click

from bench.errors import BenchError


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from bench.shards import Shard

    if value is None:
        return None
    try:
        return Shard.parse(value)
    except BenchError as err:
        raise click.BadParameter(str(err)) from None


def execution_options(command: Callable) -> Callable:
    """``--workers``, ``--executor``, ``--ray-address`` and ``--shard``; the command receives
    them as ``workers``, ``executor``, ``ray_address`` and ``shard`` (a ``Shard`` or None)."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Parallel processes on this machine (default: 1; for a verifier on "
                          "GPUs, one per GPU). With --executor ray: most tasks in flight."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help="local: this machine; ray: a Ray cluster (needs prune-bench[ray]; "
                          "benchmark, run and log folders on a filesystem all nodes see)."),
        click.option("--ray-address", envvar="RAY_ADDRESS", default=None, metavar="ADDRESS",
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local cluster "
                          "just for this run)."),
        click.option("--shard", default=None, metavar="K/N", callback=_shard,
                     help="Only shard K of N (K from 1), e.g. for SLURM job arrays; shards are "
                          "disjoint, cover everything, and do not depend on order. Give each "
                          "shard its own results database and `bench merge` them."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def verifier_options(ctx: click.Context, param: click.Parameter, values) -> dict:
    """``key=value`` pairs; values are read as YAML scalars (true, 3, 0.5, text)."""
    import yaml

    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options
