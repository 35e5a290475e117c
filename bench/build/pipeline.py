"""Train, prune level by level with rewinding, and export the benchmark.

Every level's outputs live in ``<runs_dir>/<name>-<levels hash>/seed_<s>/level_<kk>/`` (the
layout is ``bench.config``'s); a level is finished when its ``done.json`` exists (written last,
atomically), and finished levels are loaded instead of retrained, so an interrupted build resumes
where it stopped. A run folder records the settings its levels were built with
(``config.yaml``); a build whose settings differ is refused instead of reusing them. Each level
draws its randomness from ``(seed, level)``, so a resumed build gives the same networks as an
uninterrupted one.

The metrics measured on the properties' samples (PGD, IBP- and CROWN-verified accuracy,
instability; ``bench.build.metrics``) are taken at export, not stored with the level: they
depend on benchmark settings (samples, PGD steps) in which builds sharing a run may differ.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from bench.build.metrics import METRICS, count_relus, level_metrics
from bench.checkpoints import load_tensors
from bench.config import LEVELS, BuildConfig, settings_differences
from bench.data import DATASETS, load_dataset
from bench.data.base import Dataset
from bench.errors import BenchError
from bench.formats.folder import atomic_write_text
from bench.formats.rules import parse_eps, parse_timeout
from bench.models import MODELS, build_model
from bench.models.compact import channel_remain_ratio, exportable_model, model_stats
from bench.models.mask import (Mask, apply_mask, dense_mask, layer_sparsity, load_mask,
                               remain_ratio, save_mask)
from bench.models.normalize import Normalizer
from bench.pruning import PRUNERS
from bench.pruning.base import PruneContext
from bench.training import TRAINERS
from bench.training.base import accuracy, fit
from bench.training.regularizers import REGULARIZERS, build_regularizers, regularizer_name

SETTINGS_FILE = "config.yaml"  # in the run folder: the settings its levels were built with
_SETTINGS_HEADER = ("# The settings the levels below were built with (see bench.config).\n"
                    "# A build with other settings refuses to reuse them; do not edit.\n")


@dataclass
class Level:
    level: int
    model: nn.Module  # trained, mask applied, eval mode, without normalization
    mask: Mask
    metrics: dict


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def save_tensors_atomic(tensors: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def resolve(config: BuildConfig) -> BuildConfig:
    """``config`` complete and checked, before any work: every name is registered, eps and the
    timeout pass the rules every command applies (``bench.formats.rules``), the pruner's default
    rate and the regularizer it trains with (and that one's default weight) are filled in, and
    ``plugins`` holds the declared hyperparameters of the trainer, pruner, regularizer and
    metrics, which the experiment's hashes cover. Resolving twice changes nothing."""
    DATASETS.get(config.data.dataset)
    MODELS.get(config.model.name)
    trainer = TRAINERS.get(config.training.method)
    pruner = PRUNERS.get(config.pruning.pruner)
    parse_eps(config.properties.eps, "configuration")
    parse_timeout(config.properties.timeout, "configuration")
    name = regularizer_name(config, pruner)
    regularizer = REGULARIZERS.get(name)
    weight = config.pruning.regularizer_weight
    if weight is None:
        weight = regularizer.default_weight if regularizer else 0.0
    rate = config.pruning.prune_rate
    config = config.replace(prune_rate=pruner.default_rate if rate is None else rate,
                            regularizer=name, regularizer_weight=weight)
    return replace(config, plugins={
        "training": trainer.params.values(),
        "pruner": pruner.params.values(),
        "regularizer": regularizer.params.values() if regularizer else {},
        "metrics": METRICS.values(),
    })


def prepare_run_dir(config: BuildConfig) -> Path:
    """This seed's run folder (created), after checking that the run folder's recorded settings
    are ``config``'s: levels built with other settings are never reused."""
    root, record = config.run_root(), config.run_root() / SETTINGS_FILE
    current = config.identity(LEVELS)
    if not record.exists():
        # Checked twice: another seed of this experiment, starting at the same moment, writes
        # the record before its first level.
        if any(root.glob("seed_*/level_*")) and not record.exists():
            raise BenchError(f"{root} holds levels but no {SETTINGS_FILE} saying how they were "
                             "built; delete that folder to rebuild them")
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, _SETTINGS_HEADER + yaml.safe_dump(current, sort_keys=True))
    differences = settings_differences(_read_settings(record), current)
    if differences:
        shown = "; ".join(differences[:3])
        if len(differences) > 3:
            shown += f"; and {len(differences) - 3} more"
        raise BenchError(f"{root} holds levels built with other settings ({shown}); delete "
                         "that folder to rebuild them, or build into another --runs-dir")
    config.run_dir().mkdir(exist_ok=True)
    return config.run_dir()


def _read_settings(record: Path) -> dict:
    fix = f"delete {record.parent} to rebuild its levels"
    try:
        stored = yaml.safe_load(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BenchError(f"cannot read {record} ({type(err).__name__}); {fix}") from None
    if not isinstance(stored, dict):
        raise BenchError(f"{record} is not a record of settings; {fix}")
    return stored


def legacy_run_folders(runs_dir: str | Path) -> list[Path]:
    """Run folders of the layout before experiments had seeds (``<run>/level_<kk>/``). Their
    settings are unknown (defaults were not recorded), so they are never reused."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and (p / "level_00").is_dir())


def _initial_state(config: BuildConfig, directory: Path, shape, classes) -> dict:
    """The initialization every level rewinds to, made once and kept in ``init.pt``."""
    path = directory / "init.pt"
    if path.exists():
        return load_tensors(path)
    torch.manual_seed(config.seed)
    model = build_model(config.model.name, shape, classes)
    TRAINERS.get(config.training.method).initialize(model)
    save_tensors_atomic(model.state_dict(), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def remain_ratios(model: nn.Module, mask: Mask, structured: bool) -> dict[str, float]:
    """Weight and channel remain ratios; ``remain_ratio`` is the one the pruner acts on, as the
    paper's tables report it (channels for neuron pruning, weights otherwise)."""
    ratios = {"weight_remain_ratio": remain_ratio(mask)}
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        ratios["channel_remain_ratio"] = channel_remain_ratio(model, mask)
    ratios["remain_ratio"] = ratios["channel_remain_ratio" if structured else "weight_remain_ratio"]
    return ratios


def _load_level(config: BuildConfig, level_dir: Path, level: int, shape, classes) -> Level:
    model = build_model(config.model.name, shape, classes)
    model.load_state_dict(load_tensors(level_dir / "model.pt"))
    try:
        metrics = json.loads((level_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchError(f"{level_dir / 'metrics.json'} is unreadable ({type(err).__name__}); "
                         f"delete {level_dir} to retrain that level") from None
    return Level(level, model.eval(), load_mask(level_dir / "mask.pt"), metrics)


def train_levels(config: BuildConfig, dataset: Dataset, progress: bool = True) -> list[Level]:
    """Levels 0..levels: level 0 is dense; level k prunes level k-1's trained weights, then
    rewinds the survivors (to initialization, to epoch ``rewind_epoch``, or not at all when
    finetuning) and retrains."""
    config = resolve(config)
    directory = prepare_run_dir(config)
    training, pruning = config.training, config.pruning
    trainer_cls = TRAINERS.get(training.method)
    pruner = PRUNERS.get(pruning.pruner)
    regularizers = build_regularizers(config, pruner)
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape, classes = dataset.input_shape, dataset.num_classes
    n_train = config.data.train_samples or dataset.train_x.shape[0]
    train_x, train_y = dataset.train_x[:n_train], dataset.train_y[:n_train]
    initial_state = _initial_state(config, directory, shape, classes)
    rewind_path = directory / "rewind.pt"

    def make_trainer(model: nn.Module):
        return trainer_cls(config, model, shape, classes, regularizers)

    def snapshot_rewind_point(epoch: int, model: nn.Module) -> None:
        if epoch == pruning.rewind_epoch:
            save_tensors_atomic(model.state_dict(), rewind_path)

    levels: list[Level] = []
    mask = dense_mask(build_model(config.model.name, shape, classes))
    for level in range(pruning.levels + 1):
        level_dir = directory / f"level_{level:02d}"
        level_dir.mkdir(exist_ok=True)
        if (level_dir / "done.json").exists():
            levels.append(_load_level(config, level_dir, level, shape, classes))
            continue
        generator = torch.Generator().manual_seed(config.seed * 1000 + level)
        torch.manual_seed(config.seed * 1000 + level)
        start_epoch, end_epoch, start_state = 0, training.epochs, initial_state
        if level > 0:
            previous = levels[-1]
            context = PruneContext(initial_state, normalizer(train_x), train_y, generator,
                                   make_trainer=make_trainer, normalizer=normalizer)
            mask = pruner.prune(config, previous.model, previous.mask, context)
            if pruning.rewind == "epoch":
                start_epoch, start_state = pruning.rewind_epoch, load_tensors(rewind_path)
            elif pruning.rewind == "finetune":
                # Keep the trained weights and the decayed lr: train past the schedule's end.
                start_epoch, end_epoch = training.epochs, 2 * training.epochs
                start_state = previous.model.state_dict()
        model = build_model(config.model.name, shape, classes)
        model.load_state_dict(start_state)
        on_epoch_end = None
        if level == 0 and pruning.rewind == "epoch":
            on_epoch_end = lambda epoch: snapshot_rewind_point(epoch, model)  # noqa: E731
        log = fit(make_trainer(model), mask, train_x, train_y, normalizer, generator,
                  desc=f"level {level}/{pruning.levels}", progress=progress,
                  start_epoch=start_epoch, end_epoch=end_epoch, on_epoch_end=on_epoch_end)
        apply_mask(model, mask)
        metrics = {
            "level": level,
            **remain_ratios(model, mask, pruner.structured),
            "layer_sparsity": layer_sparsity(mask),
            "clean_accuracy": accuracy(model, dataset.test_x, dataset.test_y, normalizer),
            "train_seconds": log.seconds,
            "train_losses": log.losses,
        }
        save_tensors_atomic(model.state_dict(), level_dir / "model.pt")
        save_mask(mask, level_dir / "mask.pt")
        write_json_atomic(level_dir / "metrics.json", metrics)
        write_json_atomic(level_dir / "done.json", {"level": level})
        levels.append(Level(level, model.eval(), mask, metrics))
    return levels


def build_instances(config: BuildConfig, progress: bool = True) -> Path:
    """The whole build: data, training and pruning, export. Returns the benchmark folder."""
    from bench.build.export import ExportedModel, write_benchmark

    config = resolve(config)
    location, properties = config.location, config.properties
    dataset = load_dataset(config.data.dataset, location.data_dir, location.download)
    n = properties.samples
    if n > dataset.test_x.shape[0]:
        raise BenchError(f"samples={n} but {config.data.dataset} has only "
                         f"{dataset.test_x.shape[0]} test samples")
    levels = train_levels(config, dataset, progress)
    structured = PRUNERS.get(config.pruning.pruner).structured
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape = dataset.input_shape
    exported = []
    for lv in levels:
        # Structured levels are exported with their pruned channels physically removed.
        model = exportable_model(lv.model, lv.mask, structured, shape)
        stats = {f"exported_{k}": v for k, v in model_stats(model, shape).items()}
        extra = {k: v for k, v in lv.metrics.items()
                 if k not in ("level", "remain_ratio", "clean_accuracy", "layer_sparsity")}
        # On the samples that become properties, so they sit beside verified accuracy.
        measured = level_metrics(lv.model, dataset.test_x[:n], dataset.test_y[:n], normalizer,
                                 properties.eps, pgd_steps=config.metrics.pgd_steps,
                                 pgd_restarts=config.metrics.pgd_restarts, seed=config.seed)
        # Per sample (unstable ReLUs under each property's box): into the instance entries.
        per_sample = measured.pop("per_sample")
        exported.append(ExportedModel(
            level=lv.level, model=model, remain_ratio=lv.metrics["remain_ratio"],
            clean_accuracy=lv.metrics["clean_accuracy"],
            layer_sparsity=lv.metrics["layer_sparsity"],
            extra={**extra, **measured, **stats, "relus": count_relus(model, shape),
                   "seed": config.seed, "pruner": config.pruning.pruner,
                   "structured": structured, "run": str(config.run_dir())},
            per_sample=per_sample,
        ))
    root = config.benchmark_dir()
    write_benchmark(
        root, config.to_dict(),
        {"name": dataset.name, "test_order": dataset.test_order, "mean": list(dataset.mean),
         "std": list(dataset.std), "input_shape": list(dataset.input_shape),
         "num_classes": dataset.num_classes},
        exported, dataset.test_x[:n], dataset.test_y[:n], list(range(n)),
        eps=properties.eps, timeout=properties.timeout,
        vnnlib_version=properties.vnnlib_version, experiment=config.experiment(),
    )
    return root
