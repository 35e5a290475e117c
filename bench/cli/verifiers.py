"""`bench verifiers`: what is installed, and installing."""
from __future__ import annotations

import click

from bench.cli.options import verifier_options

_OPTION = click.option("--verifier-option", "-o", "verifier_options", multiple=True,
                       metavar="KEY=VALUE", callback=verifier_options,
                       help="A verifier parameter (e.g. tool_dir=DIR for vnncomp); repeatable.")


@click.group("verifiers", invoke_without_command=True)
@click.pass_context
def verifiers(ctx: click.Context) -> None:
    """List the verifiers, whether each is installed, its version (and commit), and how to
    install it."""
    if ctx.invoked_subcommand is not None:
        return
    from bench.verifiers import VERIFIERS

    for name in VERIFIERS.names():
        tool = VERIFIERS.get(name)()
        installed = tool.is_installed()
        kind = "complete" if tool.complete else "incomplete"
        if installed:
            info = tool.install_info()
            state = " ".join(filter(None, ["installed", tool.version() or "",
                                           f"({info})" if info else ""]))
        else:
            state = f"missing: {tool.install_hint}"
        click.echo(f"{name:10s} {kind:10s} {state}")


def _dependencies(ctx: click.Context, param: click.Parameter, values) -> dict[str, str]:
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"expected NAME=URL-or-PATH, got {item!r}")
        found[key.strip()] = value.strip()
    return found


@verifiers.command("install")
@click.argument("name")
@click.option("--force", is_flag=True, help="Reinstall even if it is there.")
@click.option("--source", metavar="URL-or-PATH",
              help="Where to clone the tool from (a local clone works), for tools installed "
                   "from a repository (abcrown, vnncomp).")
@click.option("--ref", metavar="COMMIT", help="The commit (or tag) to install.")
@click.option("--dependency", "dependencies", multiple=True, metavar="NAME=URL-or-PATH",
              callback=_dependencies,
              help="Where a git dependency comes from, e.g. onnx2pytorch=/path/to/clone "
                   "(abcrown: auto_LiRPA, onnx2pytorch); repeatable.")
@_OPTION
def verifiers_install(name, force, source, ref, dependencies, verifier_options) -> None:
    """Install a verifier into its own folder (neuralsat, abcrown, a VNN-COMP tool)."""
    from bench.verifiers import VERIFIERS

    tool = VERIFIERS.get(name)(**verifier_options)
    done = tool.install(force=force, source=source, ref=ref, dependencies=dependencies or None,
                        echo=click.echo)
    click.echo(f"{name}: {done}")


@verifiers.command("uninstall")
@click.argument("name")
@_OPTION
def verifiers_uninstall(name, verifier_options) -> None:
    """Remove a verifier that `bench verifiers install` installed."""
    from bench.verifiers import VERIFIERS

    tool = VERIFIERS.get(name)(**verifier_options)
    click.echo(tool.uninstall(echo=click.echo))

