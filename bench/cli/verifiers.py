"""`bench verifiers`: what is installed, and installing."""
from __future__ import annotations


import click

from bench.errors import BenchError


@click.group("verifiers", invoke_without_command=True)
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
