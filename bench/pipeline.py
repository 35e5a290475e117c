"""Train, prune level by level with rewinding, and export the benchmark.

Every level's outputs live in ``runs/<run name>/level_<kk>/``; a level is finished when its
``done.json`` exists (written last, atomically), and finished levels are loaded instead of
retrained, so an interrupted build resumes where it stopped. Each level draws its randomness
from ``(seed, level)``, so a resumed build gives the same networks as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from bench.config import BuildConfig
from bench.data import load_dataset
from bench.data.base import Dataset
from bench.errors import BenchError
from bench.models import MODELS, build_model
from bench.pruning import PRUNERS
from bench.pruning.base import PruneContext
from bench.pruning.mask import (Mask, apply_mask, dense_mask, layer_sparsity, load_mask,
                                remain_ratio, save_mask)
from bench.training import TRAINERS
from bench.training.base import Normalizer, accuracy, fit


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


def load_tensors(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    return torch.load(path, map_location="cpu", weights_only=True)


def check_names(config: BuildConfig) -> None:
    """Fail before any work when a name is unknown."""
    for registry, name in ((MODELS, config.model), (TRAINERS, config.training),
                           (PRUNERS, config.pruner)):
        registry.get(name)
    if config.rewind != "init":
        raise BenchError(f"unknown rewind mode {config.rewind!r}; choose one of: init")


def run_dir(config: BuildConfig) -> Path:
    name = f"{config.dataset}-{config.model}-{config.training}-{config.pruner}-{config.run_hash()}"
    return Path(config.runs_dir) / name


def _prepare_run_dir(config: BuildConfig) -> Path:
    directory = run_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=True))
    return directory


def train_levels(config: BuildConfig, dataset: Dataset, progress: bool = True) -> list[Level]:
    """Levels 0..config.levels: level 0 is dense; level k prunes level k-1's trained weights,
    rewinds the survivors to their initial values and retrains."""
    check_names(config)
    directory = _prepare_run_dir(config)
    trainer_cls = TRAINERS.get(config.training)
    prune_fn = PRUNERS.get(config.pruner)
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape, classes = dataset.input_shape, dataset.num_classes
    n_train = config.train_samples or dataset.train_x.shape[0]
    train_x, train_y = dataset.train_x[:n_train], dataset.train_y[:n_train]

    torch.manual_seed(config.seed)
    model = build_model(config.model, shape, classes)
    init_path = directory / "init.pt"
    if init_path.exists():
        model.load_state_dict(load_tensors(init_path))
    else:
        save_tensors_atomic(model.state_dict(), init_path)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}

    levels: list[Level] = []
    mask = dense_mask(model)
    for level in range(config.levels + 1):
        level_dir = directory / f"level_{level:02d}"
        level_dir.mkdir(exist_ok=True)
        if (level_dir / "done.json").exists():
            model = build_model(config.model, shape, classes)
            model.load_state_dict(load_tensors(level_dir / "model.pt"))
            mask = load_mask(level_dir / "mask.pt")
            metrics = json.loads((level_dir / "metrics.json").read_text())
            levels.append(Level(level, model.eval(), mask, metrics))
            continue
        generator = torch.Generator().manual_seed(config.seed * 1000 + level)
        if level > 0:
            previous = levels[-1]
            context = PruneContext(initial_state, normalizer(train_x), train_y, generator)
            mask = prune_fn(config, previous.model, previous.mask, context)
        torch.manual_seed(config.seed * 1000 + level)
        model = build_model(config.model, shape, classes)
        model.load_state_dict(initial_state)  # rewind to initialization
        trainer = trainer_cls(config, model, shape, classes)
        log = fit(trainer, mask, train_x, train_y, normalizer, generator,
                  desc=f"level {level}/{config.levels}", progress=progress)
        apply_mask(model, mask)
        metrics = {
            "level": level,
            "remain_ratio": remain_ratio(mask),
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
    from bench.export.benchmark import ExportedModel, write_benchmark

    check_names(config)
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    if config.samples > dataset.test_x.shape[0]:
        raise BenchError(f"samples={config.samples} but {config.dataset} has only "
                         f"{dataset.test_x.shape[0]} test samples")
    levels = train_levels(config, dataset, progress)
    exported = [
        ExportedModel(
            level=lv.level, model=lv.model, remain_ratio=lv.metrics["remain_ratio"],
            clean_accuracy=lv.metrics["clean_accuracy"],
            layer_sparsity=lv.metrics["layer_sparsity"],
            extra={"train_seconds": lv.metrics["train_seconds"], "seed": config.seed,
                   "run": str(run_dir(config))},
        )
        for lv in levels
    ]
    root = Path(config.out) / config.benchmark_name()
    n = config.samples
    write_benchmark(
        root, config.to_dict(),
        {"name": dataset.name, "test_order": dataset.test_order, "mean": list(dataset.mean),
         "std": list(dataset.std), "input_shape": list(dataset.input_shape),
         "num_classes": dataset.num_classes},
        exported, dataset.test_x[:n], dataset.test_y[:n], list(range(n)),
        eps=config.eps, timeout=config.timeout,
    )
    return root
