"""CLI pieces for parallel, sharded and distributed work, and for the results database.

``bench/cli.py`` registers them: ``execution_options`` decorates ``run`` and ``build-instances``,
and ``results`` (``bench results show``) and ``merge`` (``bench merge``) are commands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from bench.errors import BenchError


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from bench.runner import Shard

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


@click.group("results")
def results() -> None:
    """Inspect a results database."""


@results.command("show")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--benchmark", help="Only this benchmark.")
@click.option("--verifier", help="Only this verifier.")
@click.option("--status", type=click.Choice(["sat", "unsat", "timeout", "unknown", "error"]),
              help="Only results with this status.")
@click.option("--instances", is_flag=True, help="One line per result instead of a summary.")
def show(results_file: str, benchmark: str | None, verifier: str | None, status: str | None,
         instances: bool) -> None:
    """Results with their provenance: verifier version, parameter hash, prune-bench version,
    host, device and start times, per group (or per instance)."""
    from bench.results import show as show_results

    if not Path(results_file).exists():
        raise BenchError(f"no results database at {results_file}; run `bench run` first")
    click.echo(show_results(results_file, benchmark=benchmark, verifier=verifier, status=status,
                            instances=instances))


@click.command("merge")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--into", "target", required=True, type=click.Path(dir_okay=False),
              help="The database that receives the rows (created if missing).")
def merge(sources: tuple[str, ...], target: str) -> None:
    """Merge results databases (e.g. one per shard) into one, one row per instance and
    verifier: a decided result beats an error, else the newer one wins. Idempotent."""
    from bench.results import merge as merge_databases

    click.echo(str(merge_databases([Path(s) for s in sources], Path(target))))
