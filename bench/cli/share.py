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


@click.command("pack")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "dest", required=True, type=click.Path(file_okay=False),
              help="New folder for the packed benchmark (must not exist).")
@click.option("--seed", type=int, default=None,
              help="Re-select the properties with generate_properties.py SEED (default: ship "
                   "the build's own properties).")
@click.option("--results", "results_file", type=click.Path(dir_okay=False, exists=True),
              help="Results database: put verified accuracy per model into the README.")
@click.option("--verifier", default="milp", show_default=True,
              help="Whose results give the verified accuracy (with --results).")
def pack(src, dest, seed, results_file, verifier) -> None:
    """Turn a benchmark into a folder ready for VNN-COMP (gzipped onnx/ and vnnlib/,
    instances.csv, generate_properties.py, README), with the 6-hour cap enforced."""
    from bench.formats.folder import benchmark_name
    from bench.share.pack import pack_benchmark, verified_accuracy_from_db

    verified = None
    if results_file:
        # Results are recorded under the benchmark's name, whatever its folder is called now.
        verified = verified_accuracy_from_db(results_file, benchmark_name(src), verifier)
    out = pack_benchmark(Path(src), Path(dest), seed=seed, verified=verified)
    click.echo(f"packed benchmark written to {out}")
