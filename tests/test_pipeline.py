"""Level-by-level training: rewinding modes, resuming, and what each level starts from."""
import pytest
import torch

import bench.build.pipeline as pipeline
from bench.config import make_config
from bench.data import load_dataset
from bench.errors import BenchError
from bench.build.pipeline import load_tensors, run_dir, train_levels

BASE = dict(dataset="digits", model="cnn4", training="natural", epochs=3, levels=2,
            samples=2, train_samples=256, batch_size=64, pgd_steps=2)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


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
    initial = load_tensors(run_dir(pipeline.resolve(config)) / "init.pt")
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
    rewind_point = load_tensors(run_dir(pipeline.resolve(config)) / "rewind.pt")
    initial = load_tensors(run_dir(pipeline.resolve(config)) / "init.pt")
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
    (run_dir(pipeline.resolve(config)) / "level_02" / "done.json").unlink()
    fit_calls.clear()
    second = train_levels(config, digits, progress=False)
    assert len(fit_calls) == 1  # only level 2
    for a, b in zip(first[2].model.state_dict().values(), second[2].model.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_rewind_mode_is_refused():
    with pytest.raises(BenchError, match="rewind must be init, epoch or finetune"):
        make_config(rewind="sometimes")
