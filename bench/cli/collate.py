"""`bench tables` and `bench check-results`: collating results."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.errors import BenchError


@click.command("tables")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--out", "out_dir", default="tables", show_default=True,
              type=click.Path(file_okay=False), help="Where tables and plots go.")
def tables(results_file, out_dir) -> None:
    """Collate verified accuracy, time and memory per level into tables and plots."""
    from bench.collate.report import make_tables

    if not Path(results_file).exists():
        raise BenchError(f"no results database at {results_file}; run `bench run` first")
    paths = make_tables(Path(results_file), Path(out_dir))
    index = next((p for p in paths if p.name == "index.md"), None)
    click.echo(f"wrote {len(paths)} files to {out_dir}" + (f"; start at {index}" if index else ""))


@click.command("check-results")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
def check_results(results_file) -> None:
    """Cross-check verifiers run on the same instances: soundness alarms (unsat where another
    verifier holds a valid counterexample), unsat on samples the model misclassifies, sat
    answers without a valid counterexample, and VNN-COMP style scores. Only reads the
    database. Exits 1 when something is wrong."""
    from bench.collate.check_results import check_results as check, format_report

    report = check(Path(results_file))
    click.echo(format_report(report))
    if not report.ok:
        sys.exit(1)


@click.command("export")
@click.option("--results", "results_file", default="results/results.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite results database.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True, help="File format.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="The file to write (replaced if it exists).")
def export(results_file, fmt, out_file) -> None:
    """One row per instance and verifier: benchmark, experiment, seed, level, sample, label,
    correct, status, verified, decided_by, times, memory, provenance, and every per-instance,
    per-sample and per-level field the manifests hold, for analysis in a notebook. Needs the
    export extra (pandas, pyarrow): `pip install 'prune-bench[export]'`, or `make install`."""
    from bench.collate.export import export_results

    rows = export_results(Path(results_file), Path(out_file), fmt)
    click.echo(f"wrote {rows} rows to {out_file}")


@click.command("difficulty")
@click.option("--results", "results_files", multiple=True, required=True,
              type=click.Path(dir_okay=False),
              help="Results database (repeatable; rows combined as `bench merge` would).")
@click.option("--out", "out_dir", default="tables/difficulty", show_default=True,
              type=click.Path(file_okay=False), help="Where the tables and plots go.")
@click.option("--easy", type=float, default=None,
              help="Easy: decided within this fraction of the timeout [default: 0.05].")
@click.option("--medium", type=float, default=None,
              help="Medium: decided within this fraction of the timeout [default: 0.25].")
def difficulty(results_files, out_dir, easy, medium) -> None:
    """Per benchmark: each instance's reference outcome and time per verifier, its difficulty
    class (trivial, easy, medium, hard, open; disputed where verifiers disagree), a cactus
    plot, the VNN-COMP scores, and Spearman's rho of verification time against unstable
    ReLUs per level. Only reads the databases."""
    from bench.collate.authors import write_index
    from bench.collate.difficulty import DEFAULT_THRESHOLDS, Thresholds

    thresholds = Thresholds(DEFAULT_THRESHOLDS.easy if easy is None else easy,
                            DEFAULT_THRESHOLDS.medium if medium is None else medium)
    index, skipped = write_index(results_files, Path(out_dir), thresholds)
    for benchmark, why in skipped:
        click.echo(f"skipped {benchmark}: {why}", err=True)
    click.echo(f"wrote {index}")
