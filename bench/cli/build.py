"""`bench build-instances`: train, prune and export benchmarks."""
from __future__ import annotations


import click


from bench.cli.options import execution_options


@click.command("build-instances")
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
@click.option("--vnnlib-version", type=click.Choice(["1", "2"]), default=None,
              help="Write properties in VNN-LIB 1.0 (default, what verifiers read) or 2.0.")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Random seed; repeat for several seeds (one build each).")
@click.option("--out", help="Folder that receives the benchmark (default: instances).")
@click.option("--runs-dir", help="Folder that keeps trained levels (default: runs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@execution_options
def build_instances(config_file, quiet, workers, executor, ray_address, shard, **options) -> None:
    """Train, prune level by level, and export every level as a VNN-COMP benchmark.

    A config file may list several builds (`sweep:` and `seeds:`). Finished levels and
    finished benchmarks are reused, so running the same command again resumes.
    """
    from bench.config import expand_runs, load_yaml
    from bench.build.sweep import run_builds

    if options["vnnlib_version"] is not None:
        options["vnnlib_version"] = int(options["vnnlib_version"])
    seeds = options.pop("seeds")
    if len(seeds) == 1:
        options["seed"] = seeds[0]
    elif seeds:
        options["seeds"] = list(seeds)
    configs = expand_runs(load_yaml(config_file) if config_file else None, **options)
    run_builds(configs, workers=workers, executor=executor, ray_address=ray_address,
               shard=shard, progress=not quiet, echo=click.echo)
