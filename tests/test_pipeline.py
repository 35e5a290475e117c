"""Level-by-level training: rewinding modes, resuming (only with the same settings), and what
each level starts from."""
import pytest
import torch
import yaml

import bench.build.pipeline as pipeline
from bench.build.pipeline import SETTINGS_FILE, load_tensors, train_levels
from bench.build.sweep import note_legacy_runs
from bench.config import make_config
from bench.data import load_dataset
from bench.errors import BenchError

BASE = dict(dataset="digits", model="cnn4", training="natural", epochs=3, levels=2,
            samples=2, train_samples=256, batch_size=64, pgd_steps=2)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run_dir(config):
    return pipeline.resolve(config).run_dir()


@pytest.fixture
def fit_calls(monkeypatch):
    """Record, for every call of fit, the weights the model starts from and the epoch range."""
    calls = []
    real_fit = pipeline.fit

    def recording_fit(trainer, mask, *args, **kwargs):
        calls.append({"state": {k: v.clone() for k, v in trainer.model.state_dict().items()},
                      "mask": mask, "start": kwargs.get("start_epoch", 0),
                      "end": kwargs.get("end_epoch")})
        return real_fit(trainer, mask, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", recording_fit)
    return calls


def test_rewind_to_init_restores_the_initial_values_of_surviving_weights(tmp_path, digits, fit_calls):
    config = make_config(runs_dir=str(tmp_path), **BASE)
    levels = train_levels(config, digits, progress=False)
    initial = load_tensors(run_dir(config) / "init.pt")
    assert len(fit_calls) == 3
    for call in fit_calls:
        assert all(torch.equal(call["state"][k], initial[k]) for k in initial)
        assert (call["start"], call["end"]) == (0, 3)
    # after training, surviving weights moved and pruned ones are exactly zero
    final = levels[2].model.state_dict()
    for name, keep in levels[2].mask.items():
        assert torch.all(final[name][keep == 0] == 0)
        assert not torch.equal(final[name][keep == 1], initial[name][keep == 1])


def test_rewind_to_epoch_k(tmp_path, digits, fit_calls):
    config = make_config(runs_dir=str(tmp_path), rewind="epoch", rewind_epoch=1, **BASE)
    train_levels(config, digits, progress=False)
    rewind_point = load_tensors(run_dir(config) / "rewind.pt")
    initial = load_tensors(run_dir(config) / "init.pt")
    assert not torch.equal(rewind_point["0.weight"], initial["0.weight"])
    assert fit_calls[0]["start"] == 0
    for call in fit_calls[1:]:
        assert call["start"] == 1  # the lr decay and eps ramp continue from epoch k
        assert all(torch.equal(call["state"][k], rewind_point[k]) for k in rewind_point)


def test_finetune_keeps_weights_and_does_not_reset_the_schedule(tmp_path, digits, fit_calls):
    config = make_config(runs_dir=str(tmp_path), rewind="finetune", **BASE)
    levels = train_levels(config, digits, progress=False)
    for level, call in enumerate(fit_calls[1:], start=1):
        assert (call["start"], call["end"]) == (3, 6)
        previous = levels[level - 1].model.state_dict()
        assert all(torch.equal(call["state"][k], previous[k]) for k in previous)


def test_resume_retrains_only_unfinished_levels_and_reproduces_them(tmp_path, digits, fit_calls):
    config = make_config(runs_dir=str(tmp_path), **BASE)
    first = train_levels(config, digits, progress=False)
    (run_dir(config) / "level_02" / "done.json").unlink()
    fit_calls.clear()
    second = train_levels(config, digits, progress=False)
    assert len(fit_calls) == 1  # only level 2
    for a, b in zip(first[2].model.state_dict().values(), second[2].model.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_rewind_mode_is_refused():
    with pytest.raises(BenchError, match="rewind must be init, epoch or finetune"):
        make_config(rewind="sometimes")


def test_layout_one_run_folder_per_experiment_one_subfolder_per_seed(tmp_path, digits):
    configs = [make_config(runs_dir=str(tmp_path), seed=seed, **{**BASE, "levels": 0})
               for seed in (3, 4)]
    for config in configs:
        train_levels(config, digits, progress=False)
    (root,) = tmp_path.iterdir()
    resolved = pipeline.resolve(configs[0])
    assert root.name == f"digits-cnn4-natural-imp-{resolved.levels_hash()}"
    assert sorted(p.name for p in root.iterdir()) == [SETTINGS_FILE, "seed_3", "seed_4"]
    assert (root / "seed_4" / "level_00" / "done.json").is_file()
    assert yaml.safe_load((root / SETTINGS_FILE).read_text()) == resolved.identity("levels")


def test_resume_refuses_levels_built_with_other_settings(tmp_path, digits, fit_calls):
    config = make_config(runs_dir=str(tmp_path), **{**BASE, "levels": 0})
    train_levels(config, digits, progress=False)
    record = pipeline.resolve(config).run_root() / SETTINGS_FILE
    # As if the levels had been built by a version whose epochs or HYDRA constants differed, or
    # the folder had been renamed: the name matches, the recorded settings do not.
    stored = yaml.safe_load(record.read_text())
    stored["training"]["epochs"] = 9
    stored["plugins"]["training"]["made_up"] = 1
    record.write_text(yaml.safe_dump(stored))
    fit_calls.clear()
    with pytest.raises(BenchError) as info:
        train_levels(config, digits, progress=False)
    message = str(info.value)
    assert "\n" not in message and not fit_calls
    assert "training.epochs: 9 before, 3 now" in message
    assert "plugins.training.made_up: 1 before" in message
    assert f"delete that folder to rebuild them" in message


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"- a list\n", b"[unclosed\n"])
def test_unreadable_settings_record_is_a_one_line_error(tmp_path, digits, content):
    config = make_config(runs_dir=str(tmp_path), **{**BASE, "levels": 0})
    train_levels(config, digits, progress=False)
    root = pipeline.resolve(config).run_root()
    (root / SETTINGS_FILE).write_bytes(content)
    with pytest.raises(BenchError, match=f"delete {root} to rebuild its levels"):
        train_levels(config, digits, progress=False)
    (root / SETTINGS_FILE).unlink()
    with pytest.raises(BenchError, match="holds levels but no config.yaml"):
        train_levels(config, digits, progress=False)


def test_runs_of_the_old_layout_are_named_not_reused(tmp_path):
    (tmp_path / "digits-cnn4-natural-imp-0123456789" / "level_00").mkdir(parents=True)
    lines = []
    note_legacy_runs([make_config(runs_dir=str(tmp_path))], lines.append)
    (line,) = lines
    assert "digits-cnn4-natural-imp-0123456789" in line and "older layout" in line
    assert "train anew" in line and "delete the old folders" in line
    lines.clear()
    note_legacy_runs([make_config(runs_dir=str(tmp_path / "fresh"))], lines.append)
    assert lines == []
