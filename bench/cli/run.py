"""`bench run`, `bench results` and `bench merge`: verifying instances, and the results database."""
from __future__ import annotations

from pathlib import Path

import click


from bench.cli.options import execution_options, verifier_options


@click.command("run")
@click.option("--instances", "instances_dir", default="instances", show_default=True,
              type=click.Path(file_okay=False),
              help="A benchmark folder, or a folder of benchmark folders.")
@click.option("--verifier", default="milp", show_default=True,
              help="Verifier name (see `bench verifiers`).")
@click.option("--verifier-option", "verifier_options", multiple=True, metavar="KEY=VALUE",
              callback=verifier_options,
              help="A verifier parameter, e.g. home=/opt/abcrown or batch=true; repeatable.")
@click.option("--timeout", metavar="SECONDS",
              help="Override every instance's timeout: seconds, finite, at most one week.")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              help="SQLite results database.")
@click.option("--rerun", is_flag=True, help="Run again instances that already have a result.")
@click.option("--no-cascade", is_flag=True,
              help="Send every instance to the verifier (for benchmarking verifiers and VNN-COMP "
                   "scoring); by default cheap stages decide what they can first.")
@click.option("--stages", default="clean,attack,bounds", show_default=True, metavar="LIST",
              help="The cascade's cheap stages, in order: clean (a misclassified sample), attack "
                   "(PGD), bounds (IBP, CROWN, alpha-CROWN).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@execution_options
def run(instances_dir, verifier, verifier_options, timeout, results_file, rerun, no_cascade,
        stages, quiet, workers, executor, ray_address, shard) -> None:
    """Run a verifier on benchmark instances under a hard timeout.

    By default a cascade of cheap stages (the clean sample, a PGD attack, IBP/CROWN/alpha-CROWN
    bounds) decides what it can first, and the verifier gets the rest; each result says which
    stage decided it. Instances that already have a result (other than an error) are skipped,
    so a killed run resumes where it stopped. Several runs may share one results database:
    each instance is claimed by one of them.
    """
    from bench.formats.folder import find_benchmarks
    from bench.formats.rules import parse_timeout
    from bench.run.runner import run_benchmarks
    from bench.verifiers.stages import CascadeSettings

    if timeout is not None:
        timeout = parse_timeout(timeout, "--timeout")
    cascade = None if no_cascade else CascadeSettings(stages=CascadeSettings.parse_stages(stages))
    folders = find_benchmarks(Path(instances_dir))
    summary = run_benchmarks(folders, verifier, Path(results_file), timeout=timeout,
                             rerun=rerun, progress=not quiet, verifier_params=verifier_options,
                             workers=workers, executor=executor, ray_address=ray_address,
                             shard=shard, cascade=cascade)
    click.echo(str(summary))


@click.group("results")
def results() -> None:
    """Inspect a results database."""


@results.command("show")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              help="SQLite results database.")
@click.option("--benchmark", help="Only this benchmark.")
@click.option("--verifier", help="Only this verifier.")
@click.option("--status", type=click.Choice(["sat", "unsat", "timeout", "unknown", "error"]),
              help="Only results with this status.")
@click.option("--instances", is_flag=True, help="One line per result instead of a summary.")
def show(results_file: str, benchmark: str | None, verifier: str | None, status: str | None,
         instances: bool) -> None:
    """Results with their provenance: verifier version, parameter hash, prune-bench version,
    host, device and start times, per group (or per instance)."""
    from bench.run.results import show as show_results

    click.echo(show_results(results_file, benchmark=benchmark, verifier=verifier, status=status,
                            instances=instances))


@click.command("merge")
@click.argument("sources", nargs=-1, required=True)
@click.option("--into", "target", required=True,
              help="The database that receives the rows (created if missing).")
def merge(sources: tuple[str, ...], target: str) -> None:
    """Merge results databases (e.g. one per shard) into one, one row per instance and
    verifier: a decided result beats an error, else the newer one wins. Idempotent."""
    from bench.run.results import merge as merge_databases

    click.echo(str(merge_databases([Path(s) for s in sources], Path(target))))
