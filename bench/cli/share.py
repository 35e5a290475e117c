"""`bench check` and `bench pack`: validating and sharing benchmark folders."""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("check")
@click.argument("folder", type=click.Path(file_okay=False))
def check(folder) -> None:
    """Validate any benchmark folder, ours or anyone's.

    Paths stay inside the folder, hashes match the manifest (where there is one), every ONNX
    passes onnx.checker and runs in onnxruntime, every VNN-LIB file parses and fits its model.
    Exits 1 when there is an error.
    """
    from bench.share.check import check_benchmark, format_problems

    problems = check_benchmark(Path(folder))
    click.echo(format_problems(problems, folder))
    if any(p.severity == "error" for p in problems):
        sys.exit(1)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from bench.errors import BenchError
    from bench.share.graded import check_budget, parse_duration

    try:
        return check_budget(parse_duration(value))
    except BenchError as err:
        raise click.BadParameter(str(err)) from None


@click.command("pack")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "dest", required=True, type=click.Path(file_okay=False),
              help="New folder for the packed benchmark (must not exist).")
@click.option("--select", type=click.Choice(["all", "graded"]), default="all", show_default=True,
              help="all: every model with the build's properties (the first ones that fit the "
                   "budget); graded: models and instances chosen by measured difficulty "
                   "(needs --results) to fill the budget, with a stated mix of difficulty "
                   "classes and expected outcomes.")
@click.option("--budget", default="6h", show_default=True, callback=_duration,
              help="Cap on the sum of timeouts (VNN-COMP's: 6h, the most allowed), e.g. 6h, "
                   "90m, 3600 (seconds). --select graded fills it.")
@click.option("--seed", type=int, default=None,
              help="Re-select the properties with generate_properties.py SEED (default: ship "
                   "the build's own properties). Not with --select graded.")
@click.option("--results", "results_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True),
              help="Results database (repeatable): verified accuracy per model in the README, "
                   "each shipped instance's reference results (status and time per verifier, "
                   "difficulty), cactus plot and scores; the measurements --select graded "
                   "grades by.")
@click.option("--verifier", default="milp", show_default=True,
              help="Whose results give the verified accuracy (with --results).")
@click.option("--include-trivial", is_flag=True,
              help="With --select graded: also choose instances a cascade's cheap stages "
                   "decide (left out by default).")
def pack(src, dest, select, budget, seed, results_files, verifier, include_trivial) -> None:
    """Turn a benchmark into a folder ready for VNN-COMP (gzipped onnx/ and vnnlib/,
    instances.csv, generate_properties.py, README), with the 6-hour cap enforced."""
    from bench.formats.folder import benchmark_name
    from bench.share.pack import pack_benchmark, verified_accuracy_from_db

    verified = None
    if results_files:
        # Results are recorded under the benchmark's name, whatever its folder is called now.
        verified = verified_accuracy_from_db(results_files, benchmark_name(src), verifier)
    out = pack_benchmark(Path(src), Path(dest), seed=seed, verified=verified,
                         max_total_timeout=budget, select=select, results=results_files,
                         include_trivial=include_trivial)
    click.echo(f"packed benchmark written to {out}")
