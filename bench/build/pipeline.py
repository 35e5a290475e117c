"""Train, prune level by level with rewinding, and export the benchmark.

Every level's outputs live in ``runs/<run name>/level_<kk>/``; a level is finished when its
``done.json`` exists (written last, atomically), and finished levels are loaded instead of
retrained, so an interrupted build resumes where it stopped. Each level draws its randomness
from ``(seed, level)``, so a resumed build gives the same networks as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from bench.config import BuildConfig
from bench.checkpoints import load_tensors
from bench.data import load_dataset
from bench.data.base import Dataset
from bench.errors import BenchError
from bench.build.metrics import level_metrics
from bench.models import MODELS, build_model
from bench.pruning import PRUNERS
from bench.pruning.base import PruneContext
from bench.models.compact import channel_remain_ratio, exportable_model, model_stats
from bench.models.mask import (Mask, apply_mask, dense_mask, layer_sparsity, load_mask,
                                remain_ratio, save_mask)
from bench.training import TRAINERS
from bench.models.normalize import Normalizer
from bench.training.base import accuracy, fit
from bench.training.regularizers import build_regularizers


@dataclass
class Level:
    level: int
    model: nn.Module  # trained, mask applied, eval mode, without normalization
    mask: Mask
    metrics: dict


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def save_tensors_atomic(tensors: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(tensors, tmp)
    os.replace(tmp, path)





def resolve(config: BuildConfig) -> BuildConfig:
    """Fail before any work when a name is unknown; fill in the pruner's default rate."""
    for registry, name in ((MODELS, config.model), (TRAINERS, config.training),
                           (PRUNERS, config.pruner)):
        registry.get(name)
    if config.prune_rate is None:
        config = dataclasses.replace(config, prune_rate=PRUNERS.get(config.pruner).default_rate)
    return config


def run_dir(config: BuildConfig) -> Path:
    name = f"{config.dataset}-{config.model}-{config.training}-{config.pruner}-{config.run_hash()}"
    return Path(config.runs_dir) / name


def _prepare_run_dir(config: BuildConfig) -> Path:
    directory = run_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=True))
    return directory


def _initial_state(config: BuildConfig, directory: Path, shape, classes) -> dict:
    """The initialization every level rewinds to, made once and kept in ``init.pt``."""
    path = directory / "init.pt"
    if path.exists():
        return load_tensors(path)
    torch.manual_seed(config.seed)
    model = build_model(config.model, shape, classes)
    TRAINERS.get(config.training).initialize(model)
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
    model = build_model(config.model, shape, classes)
    model.load_state_dict(load_tensors(level_dir / "model.pt"))
    metrics = json.loads((level_dir / "metrics.json").read_text())
    return Level(level, model.eval(), load_mask(level_dir / "mask.pt"), metrics)


def train_levels(config: BuildConfig, dataset: Dataset, progress: bool = True) -> list[Level]:
    """Levels 0..config.levels: level 0 is dense; level k prunes level k-1's trained weights,
    then rewinds the survivors (to initialization, to epoch ``rewind_epoch``, or not at all
    when finetuning) and retrains."""
    config = resolve(config)
    directory = _prepare_run_dir(config)
    trainer_cls = TRAINERS.get(config.training)
    pruner = PRUNERS.get(config.pruner)
    regularizers = build_regularizers(config, pruner)
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape, classes = dataset.input_shape, dataset.num_classes
    n_train = config.train_samples or dataset.train_x.shape[0]
    train_x, train_y = dataset.train_x[:n_train], dataset.train_y[:n_train]
    initial_state = _initial_state(config, directory, shape, classes)
    rewind_path = directory / "rewind.pt"

    def make_trainer(model: nn.Module):
        return trainer_cls(config, model, shape, classes, regularizers)

    def snapshot_rewind_point(epoch: int, model: nn.Module) -> None:
        if epoch == config.rewind_epoch:
            save_tensors_atomic(model.state_dict(), rewind_path)

    levels: list[Level] = []
    mask = dense_mask(build_model(config.model, shape, classes))
    for level in range(config.levels + 1):
        level_dir = directory / f"level_{level:02d}"
        level_dir.mkdir(exist_ok=True)
        if (level_dir / "done.json").exists():
            levels.append(_load_level(config, level_dir, level, shape, classes))
            continue
        generator = torch.Generator().manual_seed(config.seed * 1000 + level)
        torch.manual_seed(config.seed * 1000 + level)
        start_epoch, end_epoch, start_state = 0, config.epochs, initial_state
        if level > 0:
            previous = levels[-1]
            context = PruneContext(initial_state, normalizer(train_x), train_y, generator,
                                   make_trainer=make_trainer, normalizer=normalizer)
            mask = pruner.prune(config, previous.model, previous.mask, context)
            if config.rewind == "epoch":
                start_epoch, start_state = config.rewind_epoch, load_tensors(rewind_path)
            elif config.rewind == "finetune":
                # Keep the trained weights and the decayed lr: train past the schedule's end.
                start_epoch, end_epoch = config.epochs, 2 * config.epochs
                start_state = previous.model.state_dict()
        model = build_model(config.model, shape, classes)
        model.load_state_dict(start_state)
        on_epoch_end = None
        if level == 0 and config.rewind == "epoch":
            on_epoch_end = lambda epoch: snapshot_rewind_point(epoch, model)  # noqa: E731
        log = fit(make_trainer(model), mask, train_x, train_y, normalizer, generator,
                  desc=f"level {level}/{config.levels}", progress=progress,
                  start_epoch=start_epoch, end_epoch=end_epoch, on_epoch_end=on_epoch_end)
        apply_mask(model, mask)
        metrics = {
            "level": level,
            **remain_ratios(model, mask, pruner.structured),
            "layer_sparsity": layer_sparsity(mask),
            "clean_accuracy": accuracy(model, dataset.test_x, dataset.test_y, normalizer),
            "train_seconds": log.seconds,
            "train_losses": log.losses,
            # on the samples that become properties, so they sit beside verified accuracy
            **level_metrics(model, dataset.test_x[:config.samples],
                            dataset.test_y[:config.samples], normalizer, config.eps,
                            pgd_steps=config.pgd_steps, pgd_restarts=config.pgd_restarts,
                            seed=config.seed),
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
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    if config.samples > dataset.test_x.shape[0]:
        raise BenchError(f"samples={config.samples} but {config.dataset} has only "
                         f"{dataset.test_x.shape[0]} test samples")
    levels = train_levels(config, dataset, progress)
    structured = PRUNERS.get(config.pruner).structured
    shape = dataset.input_shape
    exported = []
    for lv in levels:
        # Structured levels are exported with their pruned channels physically removed.
        model = exportable_model(lv.model, lv.mask, structured, shape)
        stats = {f"exported_{k}": v for k, v in model_stats(model, shape).items()}
        extra = {k: v for k, v in lv.metrics.items()
                 if k not in ("level", "remain_ratio", "clean_accuracy", "layer_sparsity")}
        exported.append(ExportedModel(
            level=lv.level, model=model, remain_ratio=lv.metrics["remain_ratio"],
            clean_accuracy=lv.metrics["clean_accuracy"],
            layer_sparsity=lv.metrics["layer_sparsity"],
            extra={**extra, **stats, "seed": config.seed, "pruner": config.pruner,
                   "structured": structured, "run": str(run_dir(config))},
        ))
    root = Path(config.out) / config.benchmark_name()
    n = config.samples
    write_benchmark(
        root, config.to_dict(),
        {"name": dataset.name, "test_order": dataset.test_order, "mean": list(dataset.mean),
         "std": list(dataset.std), "input_shape": list(dataset.input_shape),
         "num_classes": dataset.num_classes},
        exported, dataset.test_x[:n], dataset.test_y[:n], list(range(n)),
        eps=config.eps, timeout=config.timeout, vnnlib_version=config.vnnlib_version,
    )
    return root
