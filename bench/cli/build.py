"""`bench build-instances`: train, prune and export benchmarks.

Its setting options and their help are generated from the settings of ``bench.config``: one
option per setting, grouped as the settings are, with the default and (for names) the choices
of each registry, listed when help is shown so that plain runs do not import every plug-in.
Values reach ``bench.config`` as typed on the command line and are read there, by the same
rules as a YAML file's.
"""
from __future__ import annotations

from typing import Any, Callable

import click

from bench.cli.options import execution_options
from bench.config import option_specs


def _registry_names(kind: str) -> list[str]:
    """The choices of a setting whose values name a registered thing."""
    if kind == "regularizer":
        from bench.training.regularizers import regularizer_choices

        return regularizer_choices()
    from bench.data import DATASETS
    from bench.models import MODELS
    from bench.pruning import PRUNERS
    from bench.training import TRAINERS

    registry = {r.kind: r for r in (DATASETS, MODELS, TRAINERS, PRUNERS)}[kind]
    return registry.names()


class SettingOption(click.Option):
    """An option generated from a setting; ``section`` is its group's title in ``--help``."""

    def __init__(self, *args: Any, section: str, default_text: str | None,
                 choices: tuple | str | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.section, self.default_text, self.setting_choices = section, default_text, choices

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        extra = [] if self.default_text is None else [f"default: {self.default_text}"]
        if self.setting_choices is not None:
            choices = (_registry_names(self.setting_choices)
                       if isinstance(self.setting_choices, str) else self.setting_choices)
            extra.append("choices: " + ", ".join(map(str, choices)))
        return names, f"{text} [{'; '.join(extra)}]" if extra else text


class SettingsCommand(click.Command):
    """Lists the options under one heading per settings group."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Options"), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", list: "INT,INT,..."}


def _default_text(value: Any) -> str | None:
    """None where the help text says what happens by default."""
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def setting_options(command: Callable) -> Callable:
    """One option per setting of ``bench.config`` (``seeds`` is ``--seed`` given several
    times); unset options arrive as None (or an empty tuple for ``--seed``)."""
    for spec in reversed([s for s in option_specs() if s.option != "seeds"]):
        flag = "--" + spec.option.replace("_", "-")
        common = dict(section=spec.section, default_text=_default_text(spec.default),
                      choices=spec.choices, help=spec.help, cls=SettingOption)
        if spec.kind is bool:
            decorator = click.option(f"{flag}/--no-{flag[2:]}", spec.option, default=None,
                                     **common)
        else:
            decorator = click.option(flag, spec.option, default=None, metavar=_METAVARS[spec.kind],
                                     multiple=spec.option == "seed", **common)
        command = decorator(command)
    return command


@click.command("build-instances", cls=SettingsCommand,
               epilog="Every setting except the locations and the seed names the experiment, "
                      "defaults included, and so do the hyperparameters each trainer and pruner "
                      "declares: levels go to RUNS_DIR/<name>-<hash>/seed_<s>/, benchmarks to "
                      "OUT/<name>-<hash>-seed<s>/ (name: dataset-model-training-pruner).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file setting any of the options below, by name or in groups "
                   "(training: {epochs: 6}); options given here win.")
@setting_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@execution_options
def build_instances(config_file, quiet, workers, executor, ray_address, shard, **options) -> None:
    """Train, prune level by level, and export every level as a VNN-COMP benchmark.

    A config file may list several builds (`sweep:` and `seeds:`). Finished levels and
    finished benchmarks are reused, so running the same command again resumes.
    """
    from bench.config import expand_runs, load_yaml
    from bench.build.sweep import run_builds

    seeds = options.pop("seed")
    if len(seeds) == 1:
        options["seed"] = seeds[0]
    elif seeds:
        options["seeds"] = list(seeds)
    configs = expand_runs(load_yaml(config_file) if config_file else None, **options)
    run_builds(configs, workers=workers, executor=executor, ray_address=ray_address,
               shard=shard, progress=not quiet, echo=click.echo)
