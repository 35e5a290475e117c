"""The paper presets and their CPU twins parse, name registered things, and stay twins; every
training method and pruner runs end to end on a tiny configuration."""
import json
from pathlib import Path

import pytest
import torch

from bench.config import expand_runs, load_yaml, make_config
from bench.build.pipeline import build_instances, resolve
from bench.pruning import PRUNERS
from bench.training import TRAINERS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER = sorted((CONFIGS / "paper").glob("*.yaml"))


def runs(path):
    return [resolve(c) for c in expand_runs(load_yaml(path))]


@pytest.mark.parametrize("path", PAPER + [CONFIGS / "demo.yaml"], ids=lambda p: p.name)
def test_preset_expands_to_valid_runs(path):
    configs = runs(path)
    assert configs
    for config in configs:
        assert config.prune_rate is not None


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_every_paper_preset_has_a_cpu_twin_with_the_same_methods(path):
    paper, twin = runs(path), runs(CONFIGS / "cpu" / path.name)
    assert {(c.training, c.pruner) for c in paper} == {(c.training, c.pruner) for c in twin}
    assert all(c.model == paper[0].model or c.model in ("cnn7", "resnet18nr") for c in paper)
    assert {c.seed for c in paper} == {100, 200, 300, 400, 500}
    assert all(c.dataset == "mnist" and len({t.seed for t in twin}) >= 3 for c in twin)


def test_paper_settings_match_appendix_a():
    (config, *_) = runs(CONFIGS / "paper" / "cifar10-crown-ibp-eps2_255-unstructured.yaml")
    assert (config.model, config.epochs, config.lr_milestones, config.lr_gamma) == ("cnn7", 200, [140, 170], 0.1)
    assert (config.eps_start_epoch, config.eps_start_epoch + config.eps_length - 1) == (11, 80)
    assert (config.batch_size, config.grad_clip, config.levels, config.prune_rate) == (128, 8.0, 16, 0.2)
    assert config.eps == pytest.approx(2 / 255) and (config.samples, config.timeout) == (200, 300)
    structured = runs(CONFIGS / "paper" / "cifar10-crown-ibp-eps8_255-structured.yaml")[0]
    assert (structured.levels, structured.prune_rate, structured.epochs) == (12, 0.11, 300)
    nrs = [c for c in runs(CONFIGS / "paper" / "svhn-crown-ibp-eps2_255-unstructured.yaml")
           if c.pruner == "imp+nrs"][0]
    assert nrs.weight_decay == 0.0  # paper 4.1.3
    fgsm = runs(CONFIGS / "paper" / "fashionmnist-fgsm-eps0.1-unstructured.yaml")[0]
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
