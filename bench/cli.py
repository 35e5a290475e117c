"""The ``bench`` command line: a thin layer over the library."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from bench.errors import BenchError


class BenchGroup(click.Group):
    """Print a ``BenchError`` as one line and exit 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BenchError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prune-bench")
def main() -> None:
    """prune-bench: does pruning improve the certified robustness of ReLU networks?

    Typical use: `bench build-instances`, then `bench run`, then `bench tables`.
    """
    # auto_LiRPA traces models through torch's ONNX exporter, which warns about every BatchNorm
    # in training mode and every in-place op; they say nothing about the user's run.
    warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python.*")


@main.command("build-instances")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file setting any of the options below (options given here win).")
@click.option("--dataset", help="Dataset name (default: mnist, embedded and offline).")
@click.option("--data-dir", help="Where torchvision datasets live (cifar10, svhn, fashionmnist).")
@click.option("--download/--no-download", default=None,
              help="Download a torchvision dataset into --data-dir if it is missing.")
@click.option("--model", help="Architecture (default: cnn4; the paper's is cnn7).")
@click.option("--training", help="Training method (default: crown-ibp).")
@click.option("--pruner", help="Pruning method (default: imp).")
@click.option("--eps", type=float, help="L-inf radius in pixel units [0,1], trained and verified.")
@click.option("--epochs", type=int, help="Training epochs per level.")
@click.option("--levels", type=int, help="Pruned levels after the dense level 0.")
@click.option("--prune-rate", type=float, help="Fraction of remaining weights pruned per level.")
@click.option("--samples", type=int, help="The first N test samples become properties.")
@click.option("--timeout", type=float, help="Per-instance timeout written to instances.csv.")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Random seed; repeat for several seeds (one build each).")
@click.option("--out", help="Folder that receives the benchmark (default: instances).")
@click.option("--runs-dir", help="Folder that keeps trained levels (default: runs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_instances(config_file, quiet, **options) -> None:
    """Train, prune level by level, and export every level as a VNN-COMP benchmark.

    Finished levels are reused, so running the same command again resumes.
    """
    from bench.config import expand_runs, load_yaml
    from bench.pipeline import build_instances as build

    seeds = options.pop("seeds")
    if len(seeds) == 1:
        options["seed"] = seeds[0]
    elif seeds:
        options["seeds"] = list(seeds)
    configs = expand_runs(load_yaml(config_file) if config_file else None, **options)
    for i, config in enumerate(configs, 1):
        if len(configs) > 1:
            click.echo(f"[{i}/{len(configs)}] {config.benchmark_name()} (seed {config.seed})")
        root = build(config, progress=not quiet)
        click.echo(f"benchmark written to {root}")


@main.command("run")
@click.option("--instances", "instances_dir", default="instances", show_default=True,
              type=click.Path(file_okay=False),
              help="A benchmark folder, or a folder of benchmark folders.")
@click.option("--verifier", default="marabou", show_default=True, help="Verifier name.")
@click.option("--timeout", type=float, help="Override every instance's timeout (seconds).")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--rerun", is_flag=True, help="Run again instances that already have a result.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(instances_dir, verifier, timeout, results_file, rerun, quiet) -> None:
    """Run a verifier on benchmark instances under a hard timeout.

    Instances that already have a result (other than an error) are skipped.
    """
    from bench.runner import find_benchmarks, run_benchmarks

    folders = find_benchmarks(Path(instances_dir))
    Path(results_file).parent.mkdir(parents=True, exist_ok=True)
    summary = run_benchmarks(folders, verifier, Path(results_file), timeout=timeout,
                             rerun=rerun, progress=not quiet)
    click.echo(str(summary))


@main.command("tables")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--out", "out_dir", default="tables", show_default=True,
              type=click.Path(file_okay=False), help="Where tables and plots go.")
def tables(results_file, out_dir) -> None:
    """Collate verified accuracy, time and memory per level into tables and plots."""
    from bench.tables import make_tables

    if not Path(results_file).exists():
        raise BenchError(f"no results database at {results_file}; run `bench run` first")
    paths = make_tables(Path(results_file), Path(out_dir))
    index = next((p for p in paths if p.name == "index.md"), None)
    click.echo(f"wrote {len(paths)} files to {out_dir}" + (f"; start at {index}" if index else ""))


@main.command("verifiers")
def verifiers() -> None:
    """List the verifiers, whether each is installed, and how to install it."""
    from bench.verifiers import VERIFIERS

    for name in VERIFIERS.names():
        tool = VERIFIERS.get(name)()
        installed = tool.is_installed()
        version = tool.version() if installed else None
        state = f"installed {version or ''}".strip() if installed else f"missing: {tool.install_hint}"
        click.echo(f"{name:10s} {state}")


if __name__ == "__main__":
    main()
