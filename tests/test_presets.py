"""The paper presets and their CPU twins parse, name registered things, and stay twins; every
file under configs/ means what its keys say; every training method and pruner runs end to end
on a tiny configuration."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from bench.config import expand_runs, load_yaml, make_config
from bench.build.pipeline import build_instances, resolve
from bench.pruning import PRUNERS
from bench.training import TRAINERS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))
EVERY_CONFIG = sorted(CONFIGS.rglob("*.yaml"))


def runs(path):
    return [resolve(c) for c in expand_runs(load_yaml(path))]


@pytest.mark.parametrize("path", PAPER + [CONFIGS / "demo.yaml"], ids=lambda p: p.name)
def test_preset_expands_to_valid_runs(path):
    configs = runs(path)
    assert configs
    for config in configs:
        assert config.pruning.prune_rate is not None


@pytest.mark.parametrize("path", EVERY_CONFIG, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_file_loads_and_each_key_sets_that_option(path):
    """Today's flat keys keep their meaning: each key of the file (or of its sweep point) is
    the value of the option of that name in every build it expands to."""
    raw = yaml.safe_load(path.read_text())
    sweep = raw.pop("sweep", None) or [{}]
    seeds = raw.pop("seeds", None)
    configs = runs(path)
    assert len(configs) == len(sweep) * len(seeds or [raw.get("seed", 0)])
    for config in configs:
        point = next(p for p in sweep if all(config.get(k) == v for k, v in p.items()))
        for key, value in {**raw, **point}.items():
            assert config.get(key.replace("-", "_")) == value, (key, config.get(key))
        assert config.seed in (seeds or [raw.get("seed", 0)])
    # Every build of a file is a benchmark of its own (the same pruner may appear under two
    # training methods).
    assert len({(c.benchmark_name(), c.seed) for c in configs}) == len(configs)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_every_paper_preset_has_a_cpu_twin_with_the_same_methods(path):
    paper, twin = runs(path), runs(CONFIGS / "cpu" / path.name)
    def methods(configs):
        return {(c.training.method, c.pruning.pruner) for c in configs}

    assert methods(paper) == methods(twin)
    assert all(c.model.name == paper[0].model.name or c.model.name in ("cnn7", "resnet18nr")
               for c in paper)
    assert {c.seed for c in paper} == {100, 200, 300, 400, 500}
    assert all(c.data.dataset == "mnist" and len({t.seed for t in twin}) >= 3 for c in twin)


def test_paper_settings_match_appendix_a():
    (config, *_) = runs(CONFIGS / "paper" / "cifar10-crown-ibp-eps2_255-unstructured.yaml")
    training, pruning, properties = config.training, config.pruning, config.properties
    assert (config.model.name, training.epochs, training.lr_milestones, training.lr_gamma) == (
        "cnn7", 200, [140, 170], 0.1)
    ramp = (training.eps_start_epoch, training.eps_start_epoch + training.eps_length - 1)
    assert ramp == (11, 80)
    assert (training.batch_size, training.grad_clip, pruning.levels, pruning.prune_rate) == (
        128, 8.0, 16, 0.2)
    assert properties.eps == pytest.approx(2 / 255)
    assert (properties.samples, properties.timeout) == (200, 300)
    structured = runs(CONFIGS / "paper" / "cifar10-crown-ibp-eps8_255-structured.yaml")[0]
    assert (structured.pruning.levels, structured.pruning.prune_rate,
            structured.training.epochs) == (12, 0.11, 300)
    nrs = [c for c in runs(CONFIGS / "paper" / "svhn-crown-ibp-eps2_255-unstructured.yaml")
           if c.pruning.pruner == "imp+nrs"][0]
    assert nrs.training.weight_decay == 0.0  # paper 4.1.3
    fgsm = runs(CONFIGS / "paper" / "fashionmnist-fgsm-eps0.1-unstructured.yaml")[0].training
    assert (fgsm.optimizer, fgsm.lr, fgsm.momentum, fgsm.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)


TINY = dict(dataset="digits", model="cnn4", epochs=1, levels=1, samples=2, train_samples=256,
            batch_size=64, eps=0.05, eps_start_epoch=1, eps_length=1, pgd_steps=2)

COMBINATIONS = ([("crown-ibp", p) for p in PRUNERS.names()]
                + [(t, "imp") for t in TRAINERS.names() if t != "crown-ibp"]
                + [("fgsm", "hydra+nrs"), ("ibp", "slim")])


@pytest.mark.parametrize("training, pruner", COMBINATIONS)
def test_every_training_method_and_pruner_builds_a_benchmark(tmp_path, training, pruner):
    torch.set_num_threads(1)
    config = make_config(training=training, pruner=pruner, out=str(tmp_path / "out"),
                         runs_dir=str(tmp_path / "runs"), **TINY)
    root = build_instances(config, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    dense, pruned = manifest["models"]
    assert pruned["remain_ratio"] < 1.0 == dense["remain_ratio"]
    if PRUNERS.get(pruner).structured:
        assert pruned["exported_parameters"] < dense["exported_parameters"]
    for model in manifest["models"]:
        assert model["onnx_max_abs_diff"] < 1e-4
        assert 0.0 <= model["crown_verified_accuracy"] <= model["pgd_accuracy"] <= model["standard_accuracy"] <= 1.0
