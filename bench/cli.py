"""The ``bench`` command line: a thin layer over the library."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from bench.cli_runs import execution_options, merge, results
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
    from bench.sweep import run_builds

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


def _verifier_options(ctx: click.Context, param: click.Parameter, values) -> dict:
    """``key=value`` pairs; values are read as YAML scalars (true, 3, 0.5, text)."""
    import yaml

    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options


@main.command("run")
@click.option("--instances", "instances_dir", default="instances", show_default=True,
              type=click.Path(file_okay=False),
              help="A benchmark folder, or a folder of benchmark folders.")
@click.option("--verifier", default="marabou", show_default=True,
              help="Verifier name (see `bench verifiers`).")
@click.option("--verifier-option", "verifier_options", multiple=True, metavar="KEY=VALUE",
              callback=_verifier_options,
              help="A verifier parameter, e.g. home=/opt/abcrown or batch=true; repeatable.")
@click.option("--timeout", type=float, help="Override every instance's timeout (seconds).")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--rerun", is_flag=True, help="Run again instances that already have a result.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@execution_options
def run(instances_dir, verifier, verifier_options, timeout, results_file, rerun, quiet,
        workers, executor, ray_address, shard) -> None:
    """Run a verifier on benchmark instances under a hard timeout.

    Instances that already have a result (other than an error) are skipped, so a killed run
    resumes where it stopped.
    """
    from bench.runner import find_benchmarks, run_benchmarks

    folders = find_benchmarks(Path(instances_dir))
    Path(results_file).parent.mkdir(parents=True, exist_ok=True)
    summary = run_benchmarks(folders, verifier, Path(results_file), timeout=timeout,
                             rerun=rerun, progress=not quiet, verifier_params=verifier_options,
                             workers=workers, executor=executor, ray_address=ray_address,
                             shard=shard)
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


@main.group("verifiers", invoke_without_command=True)
@click.pass_context
def verifiers(ctx: click.Context) -> None:
    """List the verifiers, whether each is installed, its version, and how to install it."""
    if ctx.invoked_subcommand is not None:
        return
    from bench.verifiers import VERIFIERS

    for name in VERIFIERS.names():
        tool = VERIFIERS.get(name)()
        installed = tool.is_installed()
        version = tool.version() if installed else None
        kind = "complete" if tool.complete else "incomplete"
        state = f"installed {version or ''}".strip() if installed else f"missing: {tool.install_hint}"
        click.echo(f"{name:10s} {kind:10s} {state}")


@verifiers.command("install")
@click.argument("name")
@click.option("--force", is_flag=True, help="Reinstall even if it is there.")
def verifiers_install(name, force) -> None:
    """Install a verifier that lives in its own environment (neuralsat)."""
    from bench.verifiers import VERIFIERS

    VERIFIERS.get(name)  # a clear error for unknown names
    installers = {"neuralsat": "bench.verifiers.neuralsat"}
    if name not in installers:
        tool = VERIFIERS.get(name)()
        raise BenchError(f"{name} is not installed by bench; {tool.install_hint}")
    import importlib

    path = importlib.import_module(installers[name]).install(force=force)
    click.echo(f"{name} installed in {path}")


@main.command("check-results")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
def check_results(results_file) -> None:
    """Cross-check verifiers run on the same instances: soundness alarms (unsat where another
    verifier holds a valid counterexample), sat answers without a valid counterexample, and
    VNN-COMP style scores. Exits 1 when something is wrong."""
    from bench.check_results import check_results as check, format_report

    report = check(Path(results_file))
    click.echo(format_report(report))
    if not report.ok:
        sys.exit(1)


@main.command("check")
@click.argument("folder", type=click.Path(file_okay=False))
def check(folder) -> None:
    """Validate any benchmark folder, ours or anyone's.

    Paths stay inside the folder, hashes match the manifest (where there is one), every ONNX
    passes onnx.checker and runs in onnxruntime, every VNN-LIB file parses and fits its model.
    Exits 1 when there is an error.
    """
    from bench.check import check_benchmark, format_problems

    problems = check_benchmark(Path(folder))
    click.echo(format_problems(problems, folder))
    if any(p.severity == "error" for p in problems):
        sys.exit(1)


@main.command("pack")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "dest", required=True, type=click.Path(file_okay=False),
              help="New folder for the packed benchmark (must not exist).")
@click.option("--seed", type=int, default=None,
              help="Re-select the properties with generate_properties.py SEED (default: ship "
                   "the build's own properties).")
@click.option("--results", "results_file", type=click.Path(dir_okay=False, exists=True),
              help="Results database: put verified accuracy per model into the README.")
@click.option("--verifier", default="marabou", show_default=True,
              help="Whose results give the verified accuracy (with --results).")
def pack(src, dest, seed, results_file, verifier) -> None:
    """Turn a benchmark into a folder ready for VNN-COMP (gzipped onnx/ and vnnlib/,
    instances.csv, generate_properties.py, README), with the 6-hour cap enforced."""
    from bench.pack import pack_benchmark, verified_accuracy_from_db

    verified = None
    if results_file:
        verified = verified_accuracy_from_db(results_file, Path(src).resolve().name, verifier)
    out = pack_benchmark(Path(src), Path(dest), seed=seed, verified=verified)
    click.echo(f"packed benchmark written to {out}")


main.add_command(results)
main.add_command(merge)

if __name__ == "__main__":
    main()
