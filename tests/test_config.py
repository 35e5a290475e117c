"""Settings: reading them (YAML, overrides, hostile values) and the identity of an experiment
(what is hashed, defaults and plug-in constants included; seeds as replicates)."""
import dataclasses
from pathlib import Path

import pytest

import bench.build.pipeline as pipeline
from bench.build.metrics import MetricsParams
from bench.config import (BENCHMARK, LEVELS, BuildConfig, expand_runs, load_yaml, make_config,
                          option_specs, per_seed)
from bench.errors import BenchError
from bench.pruning import PRUNERS
from bench.pruning.hydra import HydraParams
from bench.training import TRAINERS
from bench.training.fgsm_gradalign import FGSMParams
from bench.training.regularizers import REGULARIZERS, NRSParams


def resolved(**options) -> BuildConfig:
    return pipeline.resolve(make_config(**options))


def test_overrides_win_over_file_values():
    config = make_config({"epochs": 3, "levels": 2}, levels=5, eps=None)
    assert (config.training.epochs, config.pruning.levels, config.properties.eps) == (
        3, 5, BuildConfig().properties.eps)


def test_hash_ignores_location_and_depends_on_training_settings():
    base = resolved()
    assert resolved(out="elsewhere", runs_dir="x").levels_hash() == base.levels_hash()
    assert resolved(samples=3).levels_hash() == base.levels_hash()  # export only
    assert resolved(samples=3).experiment_hash() != base.experiment_hash()
    # A seed is a replicate: its own folders, the experiment's hashes.
    other_seed = resolved(seed=1)
    assert other_seed.run_dir() != base.run_dir()
    assert other_seed.benchmark_dir() != base.benchmark_dir()
    assert (other_seed.levels_hash(), other_seed.experiment_hash()) == (
        base.levels_hash(), base.experiment_hash())


def test_yaml_with_dashes_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune-rate: 0.3\nepochs: 2\neps: 1\nlr: 1e-3\n")
    config = make_config(load_yaml(path))
    assert config.pruning.prune_rate == 0.3 and config.training.epochs == 2
    assert config.properties.eps == 1.0 and config.training.lr == 0.001  # YAML reads 1e-3 as text


def test_yaml_groups_mean_the_same_as_flat_options(tmp_path):
    flat, grouped = tmp_path / "flat.yaml", tmp_path / "grouped.yaml"
    flat.write_text("model: cnn7\ntraining: ibp\nepochs: 2\npruner: slim\nsamples: 4\n")
    grouped.write_text("model: {name: cnn7}\ntraining: {method: ibp, epochs: 2}\n"
                       "pruning: {pruner: slim}\nproperties: {samples: 4}\n")
    assert make_config(load_yaml(flat)) == make_config(load_yaml(grouped))
    both = tmp_path / "both.yaml"
    both.write_text("epochs: 2\ntraining: {epochs: 3}\n")
    with pytest.raises(BenchError, match="'epochs' is given twice"):
        load_yaml(both)


@pytest.mark.parametrize("text, message", [
    ("epochs: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_malformed_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_yaml(path)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not UTF-8 text"),
    (b"epochs: 3\nlevels: \x80\x81\n", "is not UTF-8 text"),
    (b"epochs: 3\x00\n", "not valid YAML"),
    (b"epochs: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests too deeply|'epochs' must be int"),
    (b"# " + b"x" * (1 << 20) + b"\n", "larger than"),
])
def test_binary_or_huge_config_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(BenchError, match=message) as info:
        make_config(load_yaml(path))
    assert "\n" not in str(info.value)


def test_config_that_is_a_folder(tmp_path):
    with pytest.raises(BenchError, match="cannot read config file"):
        load_yaml(tmp_path)


@pytest.mark.parametrize("values, message", [
    ({"epoch": 3}, "unknown option 'epoch'"),
    ({"epochs": "many"}, "'epochs' must be int"),
    ({"epochs": None}, "'epochs' must be int, got nothing"),
    ({"prune_rate": 1.5}, "prune_rate must be in"),
    ({"levels": -1}, "levels must be >= 0"),
    ({"seeds": [1, "x"]}, "each item of option 'seeds' must be int, got 'x'"),
    ({"seeds": 5}, "'seeds' must be a list of int"),
    ({"seeds": [1, 1]}, "seeds must not repeat"),
    ({"seeds": []}, "at least one seed"),
    ({"seed": -1}, "a seed must be in"),
    ({"seed": 2**40}, "a seed must be in"),
    ({"lr_milestones": ["a", "b"]}, "each item of option 'lr_milestones' must be int, got 'a'"),
    ({"lr_milestones": [0]}, "lr_milestones are epochs"),
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"weight_decay": -1}, "weight_decay must be"),
    ({"download": "yes"}, "'download' must be true or false"),
    ({"dataset": 5}, "'dataset' must be str"),
    ({"pgd_steps": 0}, "pgd_steps must be >= 1"),
    ({"vnnlib_version": 3}, "vnnlib_version must be 1 or 2"),
    ({"optimizer": "lbfgs"}, "optimizer must be adam or sgd"),
    ({"plugins": {}}, "unknown option 'plugins'"),
    ({"training": {"epoks": 1}}, "unknown option 'epoks' in group 'training'"),
])
def test_bad_values(values, message):
    with pytest.raises(BenchError, match=message) as info:
        make_config(values)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    "timeout: .inf\n", "timeout: 1e400\n", "timeout: 1.0e+400\n", "timeout: 1e9\n",
    "timeout: -5\n", "eps: .inf\n", "eps: 1e400\n", "eps: -0.1\n", "eps: 2\n", "eps: .nan\n",
])
def test_timeout_and_eps_are_refused_at_build_time_by_the_shared_rules(tmp_path, text):
    """What build-instances writes, `bench check` and `bench run` must accept: one rule."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    (config,) = expand_runs(load_yaml(path))
    with pytest.raises(BenchError, match=r"(timeout|eps) must be a finite") as info:
        pipeline.resolve(config)
    assert str(info.value).startswith("configuration: ")


def test_missing_config_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


# --- identity ---------------------------------------------------------------------------------

# A value other than the default for every setting that changes a result. The test below fails
# when a setting is added without one: say here what changing it means.
OTHER_VALUE = {
    "dataset": "digits", "train_samples": 100, "model": "mlp", "training": "natural",
    "epochs": 7, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.5,
    "weight_decay": 0.0, "lr_milestones": [4], "lr_gamma": 0.5, "grad_clip": 0.0,
    "eps_start_epoch": 2, "eps_length": 2, "eps_mid": 0.5, "pruner": "random", "levels": 4,
    "prune_rate": 0.3, "rewind": "finetune", "rewind_epoch": 1, "regularizer": "rs",
    "regularizer_weight": 0.5, "eps": 0.05, "samples": 21, "timeout": 60.0, "vnnlib_version": 2,
    "pgd_steps": 10, "pgd_restarts": 2,
}


def test_every_result_changing_setting_is_hashed_defaults_included():
    base = resolved()
    hashed = {s.option: s.affects for s in option_specs() if s.affects in (LEVELS, BENCHMARK)}
    assert set(OTHER_VALUE) == set(hashed)
    identity = base.identity(BENCHMARK)
    for option, affects in hashed.items():
        spec = next(s for s in option_specs() if s.option == option)
        # Present at its default value: a changed default changes the hash.
        assert identity[spec.path[0]][spec.path[-1]] == base.get(option), option
        changed = resolved(**{option: OTHER_VALUE[option]})
        assert changed.experiment_hash() != base.experiment_hash(), option
        assert (changed.levels_hash() != base.levels_hash()) == (affects == LEVELS), option
    # Giving the default explicitly is the same experiment.
    assert resolved(epochs=6, prune_rate=0.2, regularizer="none").experiment_hash() == (
        base.experiment_hash())


def test_locations_and_seeds_are_never_hashed():
    base = resolved()
    for options in ({"out": "o"}, {"runs_dir": "r"}, {"data_dir": "d"}, {"download": True},
                    {"seed": 9}):
        assert resolved(**options).experiment_hash() == base.experiment_hash(), options


def test_plugin_hyperparameters_are_hashed(monkeypatch):
    fgsm = resolved(training="fgsm")
    monkeypatch.setattr(TRAINERS.get("fgsm"), "params", FGSMParams(grad_align_lambda=0.3))
    assert resolved(training="fgsm").levels_hash() != fgsm.levels_hash()

    hydra = resolved(pruner="hydra")
    assert hydra.identity()["plugins"]["pruner"]["score_lr"] == 1e-3
    entry = PRUNERS.get("hydra")
    monkeypatch.setitem(PRUNERS._entries, "hydra",
                        dataclasses.replace(entry, params=HydraParams(score_lr=1e-2)))
    assert resolved(pruner="hydra").levels_hash() != hydra.levels_hash()

    nrs = resolved(pruner="imp+nrs")
    monkeypatch.setitem(REGULARIZERS, "nrs", dataclasses.replace(
        REGULARIZERS["nrs"], params=NRSParams(gamma_squared_min=1e-9)))
    assert resolved(pruner="imp+nrs").levels_hash() != nrs.levels_hash()

    base = resolved()
    monkeypatch.setattr(pipeline, "METRICS", MetricsParams(pgd_step_factor=2.0))
    assert resolved().experiment_hash() != base.experiment_hash()
    assert resolved().levels_hash() == base.levels_hash()  # metrics are taken at export


def test_resolve_fills_the_pruners_defaults_and_is_idempotent():
    config = resolved(pruner="imp+nrs")
    assert (config.pruning.prune_rate, config.pruning.regularizer,
            config.pruning.regularizer_weight) == (0.2, "nrs", 0.01)
    assert resolved(pruner="slim").pruning.prune_rate == 0.11
    assert pipeline.resolve(config) == config
    with pytest.raises(ValueError, match="unresolved"):
        make_config().experiment_hash()


def test_seeds_are_replicates_of_one_experiment():
    configs = [pipeline.resolve(c) for c in per_seed(make_config(seeds=[1, 2]))]
    one, two = configs
    name, digest = one.experiment_name(), one.experiment_hash()
    assert name == "mnist-cnn4-crown-ibp-imp"
    assert two.experiment_hash() == digest and two.levels_hash() == one.levels_hash()
    assert one.run_dir() == Path("runs") / f"{name}-{one.levels_hash()}" / "seed_1"
    assert two.run_dir() == one.run_root() / "seed_2"
    assert [c.benchmark_dir() for c in configs] == [
        Path("instances") / f"{name}-{digest}-seed{s}" for s in (1, 2)]
    assert one.experiment() == {"name": name, "hash": digest, "seed": 1,
                                "levels_hash": one.levels_hash(),
                                "settings": one.identity(BENCHMARK)}
