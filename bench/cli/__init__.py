"""The ``bench`` command line: a thin layer over the library."""
from __future__ import annotations

import sys
import warnings

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



def _register() -> None:
    from bench.cli import build, collate, run, share, verifiers

    for command in (build.build_instances, run.run, run.results, run.merge, collate.tables,
                    collate.check_results, collate.difficulty, verifiers.verifiers, share.check, share.pack):
        main.add_command(command)
    run.results.add_command(collate.export)


_register()
