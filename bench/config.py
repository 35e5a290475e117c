"""The settings of a build in typed groups, and the identity of an experiment.

Settings (as open_lth's hparams): each group (data, model, training, pruning, properties,
metrics, location) is a frozen dataclass whose fields carry their help text and what they affect
(``setting``). The options of ``bench build-instances`` and their help are generated from these
fields (``option_specs``). A YAML file sets any option by its flat name (``epochs: 6``, as the
command line does) or inside its group (``training: {epochs: 6}``). Plug-ins (trainers, pruners,
regularizers, the per-level metrics) declare their own hyperparameters the same way, as a
``Hyperparameters`` subclass with ``param`` fields.

What names an experiment is decided here and only here, by each field's ``affects``:

- ``LEVELS``: the trained levels depend on it (dataset, model, training, pruning, eps). It is in
  the levels hash, which names the run folder, and in the experiment hash;
- ``BENCHMARK``: only the exported benchmark depends on it (samples, timeout, VNN-LIB version,
  the per-level metrics): in the experiment hash only, so changing it re-exports without
  retraining;
- ``SEED``: a replicate of the experiment; it names a subfolder and is never hashed;
- ``LOCATION``: where things are read and written; never hashed.

Every hashed field is hashed with its value, defaults included, and so are the declared
hyperparameters of the chosen plug-ins (``BuildConfig.plugins``, filled from their declarations
by ``bench.build.pipeline.resolve``; ``PLUGIN_ROLES`` says which affect the levels). Changing a
default or a plug-in constant therefore names a new experiment instead of reusing old levels.

The folders (named by the methods of ``BuildConfig``, nowhere else)::

    <runs_dir>/<name>-<levels hash>/config.yaml   the settings the levels were built with
    <runs_dir>/<name>-<levels hash>/seed_<s>/     init.pt, rewind.pt, level_<kk>/ of seed s
    <out>/<name>-<experiment hash>-seed<s>/       the benchmark of seed s

with ``name = <dataset>-<model>-<training>-<pruner>``: the seeds of one experiment are
``<out>/<name>-<hash>-seed*``, and ``manifest.json`` records ``experiment = {name, hash, seed,
levels_hash, settings}``. Builds that differ only in BENCHMARK settings share their run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from bench.errors import BenchError

LEVELS = "levels"
BENCHMARK = "benchmark"
SEED = "seed"
LOCATION = "location"

# The plug-ins whose declared hyperparameters belong to the identity, and what they affect.
PLUGIN_ROLES = {"training": LEVELS, "pruner": LEVELS, "regularizer": LEVELS,
                "metrics": BENCHMARK}

HASH_LENGTH = 10
MAX_SEED = 2**32 - 1  # numpy's limit; level k of seed s draws from seed * 1000 + k
MAX_CONFIG_BYTES = 1 << 20  # a configuration is a page of text, not a data file


def setting(default: Any = None, help: str = "", *, affects: str = LEVELS,
            option: str | None = None, choices: tuple | str | None = None,
            factory: Any = None) -> Any:
    """A field of a settings group: its default, the help text ``--help`` shows, what it affects
    (``LEVELS``, ``BENCHMARK``, ``SEED`` or ``LOCATION``), its option name where that is not the
    field's name (``--<option>`` on the command line, ``<option>:`` in YAML) and its choices: a
    tuple of values, or the kind of registry whose names are the choices."""
    metadata = {"help": help, "affects": affects, "option": option, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def param(default: Any, help: str) -> Any:
    """A hyperparameter a plug-in declares, with its help text."""
    return field(default=default, metadata={"help": help})


def _plain(value: Any) -> Any:
    """``value`` as plain JSON/YAML data: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Hyperparameters:
    """Typed values with the help text beside each field: the base of the settings groups and
    of every plug-in's declared hyperparameters (which the experiment's hash covers)."""

    def values(self) -> dict[str, Any]:
        """Field name -> value, as plain JSON/YAML data."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass(frozen=True)
class DataSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Data"
    dataset: str = setting("mnist", "Dataset the networks are trained on and the properties "
                           "drawn from.", choices="dataset")
    train_samples: int | None = setting(
        6000, "Training images used, from the start of the training split (a CPU-sized "
        "subset; none: all of them).")


@dataclass(frozen=True)
class ModelSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Model"
    name: str = setting("cnn4", "Architecture (the paper's is cnn7).", option="model",
                        choices="model")


@dataclass(frozen=True)
class TrainingSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Training (every level)"
    method: str = setting("crown-ibp", "Training method.", option="training",
                          choices="training method")
    epochs: int = setting(6, "Training epochs per level.")
    batch_size: int = setting(128, "Minibatch size.")
    optimizer: str = setting("adam", "Optimizer.", choices=("adam", "sgd"))
    lr: float = setting(1e-3, "Learning rate.")
    momentum: float = setting(0.9, "SGD momentum (adam does not use it).")
    weight_decay: float = setting(1e-5, "L2 weight decay.")
    lr_milestones: list[int] = setting(
        help="Epochs after which the learning rate is multiplied by --lr-gamma (comma-separated "
        "on the command line).", factory=list)
    lr_gamma: float = setting(0.1, "Factor of each learning-rate drop.")
    grad_clip: float = setting(8.0, "Gradient-norm clipping (0: off).")
    eps_start_epoch: int = setting(1, "First epoch (counted from 1) whose eps is above zero.")
    eps_length: int = setting(3, "Epochs over which eps ramps from 0 to its final value.")
    eps_mid: float = setting(0.4, "Where the smoothed eps ramp turns from exponential to "
                             "linear, as a fraction of the ramp.")


@dataclass(frozen=True)
class PruningSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Pruning"
    pruner: str = setting("imp", "Pruning method.", choices="pruner")
    levels: int = setting(3, "Pruned levels after the dense level 0.")
    prune_rate: float | None = setting(
        None, "Fraction of what remains that each level prunes: of the weights for unstructured "
        "pruners, of the channels for structured ones (default: the pruner's, 0.2 of the "
        "weights or 0.11 of the channels).")
    rewind: str = setting("init", "What the surviving weights restart from: init (the "
                          "initialization), epoch (the weights after --rewind-epoch epochs) or "
                          "finetune (the trained weights).", choices=("init", "epoch", "finetune"))
    rewind_epoch: int = setting(0, "The epoch that --rewind epoch rewinds to.")
    regularizer: str | None = setting(
        None, "Training regularizer (default: the pruner's own, e.g. nrs for imp+nrs; none: "
        "off).", choices="regularizer")
    regularizer_weight: float | None = setting(
        None, "Weight of the regularizer (default: the regularizer's).")


@dataclass(frozen=True)
class PropertySettings(Hyperparameters):
    TITLE: ClassVar[str] = "Properties (the benchmark's instances)"
    eps: float = setting(0.1, "L-inf radius in raw pixel units ([0, 1]): trained with and "
                         "verified.")
    samples: int = setting(20, "The first N test samples become properties.",
                           affects=BENCHMARK)
    timeout: float = setting(300.0, "Per-instance timeout in seconds, written to "
                             "instances.csv.", affects=BENCHMARK)
    vnnlib_version: int = setting(1, "VNN-LIB version of the properties: 1 (what verifiers "
                                  "read) or 2.", affects=BENCHMARK, choices=(1, 2))


@dataclass(frozen=True)
class MetricsSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Per-level metrics (in the manifest)"
    pgd_steps: int = setting(20, "Steps of the PGD attack behind pgd_accuracy.",
                             affects=BENCHMARK)
    pgd_restarts: int = setting(1, "Random restarts of that attack.", affects=BENCHMARK)


@dataclass(frozen=True)
class LocationSettings(Hyperparameters):
    TITLE: ClassVar[str] = "Locations (never part of the experiment's identity)"
    data_dir: str | None = setting(None, "Where torchvision datasets live (cifar10, svhn, "
                                   "fashionmnist; default: ~/.cache/prune-bench/data).",
                                   affects=LOCATION)
    download: bool = setting(False, "Download a torchvision dataset into --data-dir if it is "
                             "missing.", affects=LOCATION)
    out: str = setting("instances", "Folder that receives the benchmarks.", affects=LOCATION)
    runs_dir: str = setting("runs", "Folder that keeps the trained levels.", affects=LOCATION)


@dataclass(frozen=True)
class BuildConfig:
    """One build: the settings groups, the seed (a replicate) and, once resolved, the
    hyperparameters of the plug-ins it uses. Immutable: ``replace`` makes a changed copy."""

    REPLICATES: ClassVar[str] = "Replicates"
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    pruning: PruningSettings = field(default_factory=PruningSettings)
    properties: PropertySettings = field(default_factory=PropertySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    location: LocationSettings = field(default_factory=LocationSettings)
    seed: int = setting(0, "Random seed (repeat the option for several seeds: one build each, "
                        "replicates of one experiment).", affects=SEED)
    seeds: list[int] | None = setting(None, "Several seeds: one build each.", affects=SEED)
    # role -> the declared hyperparameters of that plug-in; filled by resolve, never by users.
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- options ------------------------------------------------------------------------------

    def get(self, option: str) -> Any:
        return _SPECS[option].read(self)

    def options(self) -> dict[str, Any]:
        """Option name -> value, for every option (what a YAML file or the command line sets)."""
        return {name: _plain(spec.read(self)) for name, spec in _SPECS.items()}

    def to_dict(self) -> dict[str, Any]:
        """The options and the plug-ins' hyperparameters, flat: the manifest's ``config``."""
        return {**self.options(), "plugins": _plain(self.plugins)}

    def replace(self, **options: Any) -> "BuildConfig":
        """A copy with the given options (by option name) changed, checked like any input."""
        config = self
        for name, value in _checked(options).items():
            config = _SPECS[name].write(config, value)
        return config.validate()

    def validate(self) -> "BuildConfig":
        """Check what this module knows the rules of. Registry names, eps and timeout are checked
        by ``bench.build.pipeline.resolve`` (eps and timeout by ``bench.formats.rules``, the one
        rule every command applies)."""
        t, p = self.training, self.pruning
        checks = [
            (t.epochs >= 1, f"epochs must be >= 1 (got {t.epochs})"),
            (p.levels >= 0, f"levels must be >= 0 (got {p.levels})"),
            (p.prune_rate is None or 0.0 < p.prune_rate < 1.0,
             f"prune_rate must be in (0, 1) (got {p.prune_rate})"),
            (p.rewind != "epoch" or 0 < p.rewind_epoch <= t.epochs,
             "rewind: epoch needs 0 < rewind_epoch <= epochs"),
            (self.properties.samples >= 1, f"samples must be >= 1 (got {self.properties.samples})"),
            (t.batch_size >= 1, f"batch_size must be >= 1 (got {t.batch_size})"),
            (t.eps_start_epoch >= 1, "eps_start_epoch counts from 1"),
            (t.eps_length >= 1, f"eps_length must be >= 1 (got {t.eps_length})"),
            (0.0 < t.eps_mid < 1.0, f"eps_mid must be in (0, 1) (got {t.eps_mid})"),
            (math.isfinite(t.lr) and t.lr > 0, f"lr must be a finite number above 0 (got {t.lr})"),
            (math.isfinite(t.momentum) and t.momentum >= 0,
             f"momentum must be a finite number >= 0 (got {t.momentum})"),
            (math.isfinite(t.weight_decay) and t.weight_decay >= 0,
             f"weight_decay must be a finite number >= 0 (got {t.weight_decay})"),
            (math.isfinite(t.lr_gamma) and t.lr_gamma > 0,
             f"lr_gamma must be a finite number above 0 (got {t.lr_gamma})"),
            (math.isfinite(t.grad_clip) and t.grad_clip >= 0,
             f"grad_clip must be a finite number >= 0 (0: off; got {t.grad_clip})"),
            (all(m >= 1 for m in t.lr_milestones),
             f"lr_milestones are epochs, each >= 1 (got {t.lr_milestones})"),
            (self.data.train_samples is None or self.data.train_samples >= 1,
             f"train_samples must be >= 1, or none for all (got {self.data.train_samples})"),
            (p.regularizer_weight is None or (math.isfinite(p.regularizer_weight)
                                              and p.regularizer_weight >= 0),
             f"regularizer_weight must be a finite number >= 0 (got {p.regularizer_weight})"),
            (self.metrics.pgd_steps >= 1, f"pgd_steps must be >= 1 (got {self.metrics.pgd_steps})"),
            (self.metrics.pgd_restarts >= 1,
             f"pgd_restarts must be >= 1 (got {self.metrics.pgd_restarts})"),
            (self.seeds is None or len(self.seeds) > 0, "seeds must list at least one seed"),
            (self.seeds is None or len(set(self.seeds)) == len(self.seeds),
             f"seeds must not repeat a seed (got {self.seeds})"),
        ]
        for seed in [self.seed, *(self.seeds or [])]:
            checks.append((0 <= seed <= MAX_SEED, f"a seed must be in 0..{MAX_SEED} (got {seed})"))
        for spec in _SPECS.values():
            value = spec.read(self)
            if isinstance(spec.choices, tuple) and value not in spec.choices:
                *others, last = map(str, spec.choices)
                checks.append((False, f"{spec.option} must be {', '.join(others)} or {last} "
                               f"(got {value!r})"))
        for ok, message in checks:
            if not ok:
                raise BenchError(f"bad configuration: {message}")
        return self

    # --- identity -----------------------------------------------------------------------------

    def identity(self, scope: str = BENCHMARK) -> dict[str, Any]:
        """The settings that name this experiment, grouped, defaults included, with the declared
        hyperparameters of its plug-ins: for ``scope`` LEVELS those the trained levels depend
        on, for BENCHMARK everything that changes a result. Never the seed or a location."""
        included = {LEVELS} if scope == LEVELS else {LEVELS, BENCHMARK}
        unresolved = [role for role in PLUGIN_ROLES if role not in self.plugins]
        if unresolved or self.pruning.prune_rate is None or self.pruning.regularizer is None:
            raise ValueError("the identity of an unresolved configuration is undefined; pass it "
                             "through bench.build.pipeline.resolve first")
        settings: dict[str, Any] = {}
        for spec in _SPECS.values():
            if spec.affects in included:
                settings.setdefault(spec.path[0], {})[spec.path[-1]] = _plain(spec.read(self))
        settings["plugins"] = {role: _plain(self.plugins[role])
                               for role, affects in PLUGIN_ROLES.items() if affects in included}
        return settings

    def levels_hash(self) -> str:
        return settings_hash(self.identity(LEVELS))

    def experiment_hash(self) -> str:
        return settings_hash(self.identity(BENCHMARK))

    def experiment_name(self) -> str:
        return (f"{self.data.dataset}-{self.model.name}-{self.training.method}-"
                f"{self.pruning.pruner}")

    def run_root(self) -> Path:
        """The run folder every seed of this experiment shares (with ``config.yaml``)."""
        return Path(self.location.runs_dir) / f"{self.experiment_name()}-{self.levels_hash()}"

    def run_dir(self) -> Path:
        """Where this seed's levels live."""
        return self.run_root() / f"seed_{self.seed}"

    def benchmark_name(self) -> str:
        return f"{self.experiment_name()}-{self.experiment_hash()}-seed{self.seed}"

    def benchmark_dir(self) -> Path:
        return Path(self.location.out) / self.benchmark_name()

    def experiment(self) -> dict[str, Any]:
        """The manifest's ``experiment``: what collation groups the seeds of one experiment by."""
        return {"name": self.experiment_name(), "hash": self.experiment_hash(),
                "seed": self.seed, "levels_hash": self.levels_hash(),
                "settings": self.identity(BENCHMARK)}


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LENGTH]


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (an ``identity``, or a manifest's ``experiment.settings``) as dotted keys:
    ``{"training.epochs": 6, "plugins.pruner.score_lr": 0.001, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``group.field: <stored> before, <current> now`` for every setting that differs."""
    before, now = flat_settings(stored), flat_settings(current)
    return [f"{key}: {_short(before.get(key, '<unset>'))} before, "
            f"{_short(now.get(key, '<unset>'))} now"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)
            or (key in before) != (key in now)]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# --- options: one per setting, by flat name --------------------------------------------------

@dataclass(frozen=True)
class OptionSpec:
    """One setting as an option: what the CLI generates and what YAML keys are checked
    against."""

    option: str  # --option / option:
    path: tuple[str, ...]  # ("training", "epochs"), or ("seed",) for a top-level setting
    section: str  # the group's title in --help
    kind: type  # bool, int, float, str or list (of int)
    optional: bool  # None is a value ("none" on the command line)
    default: Any
    help: str
    affects: str
    choices: tuple | str | None

    def read(self, config: BuildConfig) -> Any:
        value: Any = config
        for part in self.path:
            value = getattr(value, part)
        return value

    def write(self, config: BuildConfig, value: Any) -> BuildConfig:
        if len(self.path) == 1:
            return dataclasses.replace(config, **{self.path[0]: value})
        group = getattr(config, self.path[0])
        return dataclasses.replace(config, **{self.path[0]: dataclasses.replace(
            group, **{self.path[1]: value})})

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "float", str: "str",
                list: "list of int"}[self.kind]


def _kind(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of an annotation such as ``int``, ``float | None``, ``list[int]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (base,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _kind(base)[0], True
    if typing.get_origin(hint) is list:
        return list, False
    return hint, False


def _spec(f: dataclasses.Field, hint: Any, path: tuple[str, ...], section: str) -> OptionSpec:
    kind, optional = _kind(hint)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return OptionSpec(f.metadata.get("option") or f.name, path, section, kind, optional, default,
                      f.metadata["help"], f.metadata["affects"], f.metadata["choices"])


def _build_specs() -> tuple[dict[str, OptionSpec], dict[str, dict[str, str]]]:
    specs: dict[str, OptionSpec] = {}
    groups: dict[str, dict[str, str]] = {}  # group -> {field name or option name -> option}
    for top in fields(BuildConfig):
        hint = typing.get_type_hints(BuildConfig)[top.name]
        if isinstance(hint, type) and issubclass(hint, Hyperparameters):
            hints = typing.get_type_hints(hint)
            groups[top.name] = {}
            for f in fields(hint):
                spec = _spec(f, hints[f.name], (top.name, f.name), hint.TITLE)
                specs[spec.option] = spec
                groups[top.name].update({f.name: spec.option, spec.option: spec.option})
        elif "affects" in top.metadata:
            specs[top.name] = _spec(top, hint, (top.name,), BuildConfig.REPLICATES)
    return specs, groups


_SPECS, _GROUPS = _build_specs()


def option_specs() -> list[OptionSpec]:
    """Every option in declaration order (the command line is generated from these)."""
    return list(_SPECS.values())


# --- reading values: from YAML, the command line and sweeps ----------------------------------

def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,30}\s*", value):
        return int(value)
    raise BenchError(f"{where} must be int, got {_shown(value)}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and len(value) <= 100:
        try:
            return float(value.strip())  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    raise BenchError(f"{where} must be float, got {_shown(value)}")


def _coerce(spec: OptionSpec, value: Any) -> Any:
    """``value`` as the setting's type; strings are read as the command line gives them."""
    where = f"option {spec.option!r}"
    if value is None or (spec.optional and spec.kind in (int, float) and isinstance(value, str)
                         and value.strip().lower() in ("none", "null")):
        if spec.optional:
            return None
        raise BenchError(f"{where} must be {spec.type_name}, got nothing (null)")
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        raise BenchError(f"{where} must be true or false, got {_shown(value)}")
    if spec.kind is int:
        return _int(value, where)
    if spec.kind is float:
        return _float(value, where)
    if spec.kind is str:
        if isinstance(value, str):
            return value
        raise BenchError(f"{where} must be str, got {_shown(value)}")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BenchError(f"{where} must be a list of int, got {_shown(value)}")
    return [_int(item, f"each item of {where}") for item in items]


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Option -> value from a mapping of options and of groups of them (``training: {epochs:
    6}``); dashes in names read as underscores."""
    flat: dict[str, Any] = {}

    def put(option: str, value: Any) -> None:
        if option in flat:
            raise BenchError(f"option {option!r} is given twice in the configuration")
        flat[option] = value

    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key in _GROUPS and isinstance(value, dict):
            for inner, inner_value in value.items():
                inner = str(inner).replace("-", "_")
                if inner not in _GROUPS[key]:
                    raise BenchError(f"unknown option {inner!r} in group {key!r}; known: "
                                     + ", ".join(sorted(set(_GROUPS[key].values()))))
                put(_GROUPS[key][inner], inner_value)
        else:
            put(key, value)
    return flat


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """Known options only, each coerced to its type."""
    for key in values:
        if key not in _SPECS:
            raise BenchError(f"unknown option {key!r} in configuration; known options: "
                             + ", ".join(_SPECS))
    return {key: _coerce(_SPECS[key], value) for key, value in values.items()}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The options a YAML file sets (flat or in groups), plus its ``sweep`` if any. Raises
    ``BenchError`` for a file that is missing, too large, not UTF-8 text, not YAML or not a
    mapping."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise BenchError(f"config file {path} does not exist") from None
    except OSError as err:
        raise BenchError(f"cannot read config file {path}: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise BenchError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; is it "
                         "the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BenchError(f"config file {path} is not UTF-8 text (byte {err.start}); is it the "
                         "right file?") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise BenchError(f"config file {path} is not valid YAML{at}; fix the syntax") from None
    except RecursionError:
        raise BenchError(f"config file {path} nests too deeply to be a configuration") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must be a mapping of option: value")
    sweep = data.pop("sweep", None)
    values = _flatten(data)
    if sweep is not None:
        values["sweep"] = sweep
    return values


def make_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> BuildConfig:
    """Defaults, then the file's values, then explicit overrides (None means "not given"). Keys
    are option names; file values may also be grouped (``training: {epochs: 6}``)."""
    values = _flatten(dict(file_values or {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BuildConfig().replace(**values)


def per_seed(config: BuildConfig) -> list[BuildConfig]:
    """One configuration per seed of ``config.seeds`` (or just ``config``)."""
    if not config.seeds:
        return [config]
    return [dataclasses.replace(config, seed=s, seeds=None) for s in config.seeds]


def expand_runs(file_values: dict[str, Any] | None = None, **overrides: Any) -> list[BuildConfig]:
    """All the builds a configuration asks for. A YAML file may hold a ``sweep``: a mapping of
    option -> list of values (every combination is one build) or a list of option mappings
    (one build each). Options given on the command line fix that option instead of sweeping
    it, and each build runs once per seed of ``seeds``."""
    values = dict(file_values or {})
    sweep = values.pop("sweep", None) or {}
    given = _checked({k: v for k, v in overrides.items() if v is not None})
    if "seed" in given:
        values.pop("seeds", None)  # a seed on the command line replaces the file's list
    configs = []
    for point in _sweep_points(sweep, given):
        configs.extend(per_seed(make_config({**values, **point}, **given)))
    return configs


def _sweep_points(sweep: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """A mapping of option -> values is a grid (every combination); a list of mappings is an
    explicit list of runs. An option given on the command line (``overrides``, already of its
    type) is not swept: a grid drops that axis, and a list keeps only the runs that agree with
    it (all of them set it aside)."""
    if isinstance(sweep, list) and all(isinstance(p, dict) for p in sweep):
        points = [_flatten(p) for p in sweep]
        agreeing = [p for p in points
                    if all(_checked(p).get(k, v) == v for k, v in overrides.items())]
        return agreeing or [{}]
    if isinstance(sweep, dict) and all(isinstance(v, list) and v for v in sweep.values()):
        axes = {k: v for k, v in _flatten(sweep).items() if k not in overrides}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    raise BenchError("'sweep' must map options to non-empty lists of values, or be a list of "
                     "option mappings (one per run)")
