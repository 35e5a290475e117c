"""Typed configuration of a build: one flat dataclass whose field names are the CLI options.

A YAML file given with ``--config`` may set any field; options given on the command line win.
Output folders are named by a hash of the fields that change the result (see ``run_hash``), so
two builds with the same settings share their work and a half-finished build resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError


@dataclass
class BuildConfig:
    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    train_samples: int | None = 6000  # a CPU-sized subset of the training split; None = all
    # model
    model: str = "cnn4"
    # training
    training: str = "crown-ibp"
    epochs: int = 6
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    grad_clip: float = 8.0
    eps: float = 0.1  # L-inf radius in raw pixel units ([0,1]); trained and verified
    eps_start_epoch: int = 1  # first epoch (1-based) whose eps is above zero
    eps_length: int = 3  # epochs to ramp eps from 0 to its final value
    eps_mid: float = 0.4  # SmoothedScheduler: where the exponential ramp turns linear
    # pruning
    pruner: str = "imp"
    levels: int = 3  # pruned levels after the dense level 0
    prune_rate: float | None = None  # fraction of what remains, per level; None: the pruner's
    # default (0.2 of the weights, or 0.11 of the channels for structured pruners)
    rewind: str = "init"  # init | epoch (to the weights after rewind_epoch epochs) | finetune
    rewind_epoch: int = 0
    regularizer: str | None = None  # None: the pruner's own (e.g. nrs for imp+nrs); "none": off
    regularizer_weight: float | None = None  # None: the regularizer's default
    # per-level metrics (standard, PGD, IBP/CROWN-verified accuracy, instability)
    pgd_steps: int = 20
    pgd_restarts: int = 1
    # export
    samples: int = 20  # the first N test samples become properties
    timeout: float = 300.0  # per-instance timeout written to instances.csv
    vnnlib_version: int = 1  # 1: VNN-LIB 1.0 as VNN-COMP uses it; 2: VNN-LIB 2.0
    # bookkeeping
    seed: int = 0
    seeds: list[int] | None = None  # several seeds: one build per seed (tables average them)
    out: str = "instances"  # where benchmarks are written
    runs_dir: str = "runs"  # where trained levels are kept

    # Fields that only say where things go: they do not change what is built.
    _WHERE = ("data_dir", "download", "out", "runs_dir", "seeds")
    _EXPORT = ("samples", "timeout", "vnnlib_version")

    def validate(self) -> "BuildConfig":
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise BenchError(f"bad configuration: {message}")

        need(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        need(self.levels >= 0, f"levels must be >= 0 (got {self.levels})")
        need(self.prune_rate is None or 0.0 < self.prune_rate < 1.0,
             f"prune_rate must be in (0, 1) (got {self.prune_rate})")
        need(self.rewind in ("init", "epoch", "finetune"),
             f"rewind must be init, epoch or finetune (got {self.rewind!r})")
        need(self.rewind != "epoch" or 0 < self.rewind_epoch <= self.epochs,
             "rewind: epoch needs 0 < rewind_epoch <= epochs")
        need(self.eps >= 0.0, f"eps must be >= 0 (got {self.eps})")
        need(self.samples >= 1, f"samples must be >= 1 (got {self.samples})")
        need(self.timeout > 0, f"timeout must be > 0 (got {self.timeout})")
        need(self.vnnlib_version in (1, 2), f"vnnlib_version must be 1 or 2 (got {self.vnnlib_version})")
        need(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        need(self.eps_start_epoch >= 1, "eps_start_epoch counts from 1")
        need(self.eps_length >= 1, f"eps_length must be >= 1 (got {self.eps_length})")
        need(self.optimizer in ("adam", "sgd"), f"optimizer must be adam or sgd (got {self.optimizer!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _hash(self, exclude: tuple[str, ...]) -> str:
        # Hash only the fields that differ from the defaults, so adding a new field with a
        # default keeps every existing folder name (as open_lth does).
        default = BuildConfig()
        changed = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in exclude and getattr(self, f.name) != getattr(default, f.name)
        }
        blob = json.dumps(changed, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_hash(self) -> str:
        """Names the training run: everything but export and location settings."""
        return self._hash(self._WHERE + self._EXPORT)

    def benchmark_hash(self) -> str:
        return self._hash(self._WHERE)

    def benchmark_name(self) -> str:
        return f"{self.dataset}-{self.model}-{self.training}-{self.pruner}-{self.benchmark_hash()}"


_FIELD_TYPES = {f.name: f for f in fields(BuildConfig)}


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list[int]": list}


def per_seed(config: BuildConfig) -> list[BuildConfig]:
    """One configuration per seed of ``config.seeds`` (or just ``config``)."""
    if not config.seeds:
        return [config]
    return [dataclasses.replace(config, seed=int(s), seeds=None) for s in config.seeds]


def expand_runs(file_values: dict[str, Any] | None = None, **overrides: Any) -> list[BuildConfig]:
    """All the builds a configuration asks for. A YAML file may hold a ``sweep``: a mapping of
    option -> list of values (every combination is one build) or a list of option mappings
    (one build each). Options given on the command line fix that option instead of sweeping
    it, and each build runs once per seed of ``seeds``."""
    values = dict(file_values or {})
    sweep = values.pop("sweep", None) or {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "seed" in given:
        values.pop("seeds", None)  # a seed on the command line replaces the file's list
    configs = []
    for point in _sweep_points(sweep, given):
        configs.extend(per_seed(make_config({**values, **point}, **overrides)))
    return configs


def _sweep_points(sweep: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """A mapping of option -> values is a grid (every combination); a list of mappings is an
    explicit list of runs. An option given on the command line is not swept: a grid drops
    that axis, and a list keeps only the runs that agree with it (all of them set it aside)."""
    def normalize(point: dict) -> dict:
        return {k.replace("-", "_"): v for k, v in point.items()}

    if isinstance(sweep, list) and all(isinstance(p, dict) for p in sweep):
        points = [normalize(p) for p in sweep]
        agreeing = [p for p in points
                    if all(p.get(k, v) == v for k, v in overrides.items())]
        return agreeing or [{}]
    if isinstance(sweep, dict) and all(isinstance(v, list) and v for v in sweep.values()):
        axes = {k: v for k, v in normalize(sweep).items() if k not in overrides}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    raise BenchError("'sweep' must map options to non-empty lists of values, or be a list of "
                     "option mappings (one per run)")


def _coerce(key: str, value: Any) -> Any:
    """Check a value against the field's annotation (``int``, ``float | None``, ...)."""
    if value is None:
        return None
    annotation = str(_FIELD_TYPES[key].type).replace(" ", "")
    expected = _TYPES[annotation.split("|")[0]]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise BenchError(f"option {key!r} must be {expected.__name__}, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise BenchError(f"config file {path} is not valid YAML{at}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def make_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> BuildConfig:
    """Defaults, then the YAML values, then explicit overrides (None means "not given")."""
    values: dict[str, Any] = {}
    for source in (file_values or {}, {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            if key not in _FIELD_TYPES or key.startswith("_"):
                raise BenchError(
                    f"unknown option {key!r} in configuration; known options: "
                    + ", ".join(n for n in _FIELD_TYPES if not n.startswith("_"))
                )
            values[key] = value
    for key, value in values.items():
        values[key] = _coerce(key, value)
    return BuildConfig(**values).validate()
