import pytest

from bench.config import BuildConfig, load_yaml, make_config
from bench.errors import BenchError


def test_overrides_win_over_file_values():
    config = make_config({"epochs": 3, "levels": 2}, levels=5, eps=None)
    assert (config.epochs, config.levels, config.eps) == (3, 5, BuildConfig().eps)


def test_hash_ignores_location_and_depends_on_training_settings():
    base = make_config()
    assert make_config(out="elsewhere", runs_dir="x").run_hash() == base.run_hash()
    assert make_config(samples=3).run_hash() == base.run_hash()  # export only
    assert make_config(samples=3).benchmark_hash() != base.benchmark_hash()
    assert make_config(seed=1).run_hash() != base.run_hash()


def test_yaml_with_dashes_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune-rate: 0.3\nepochs: 2\neps: 1\n")
    config = make_config(load_yaml(path))
    assert config.prune_rate == 0.3 and config.epochs == 2 and config.eps == 1.0


@pytest.mark.parametrize("text, message", [
    ("epochs: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_malformed_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_yaml(path)


@pytest.mark.parametrize("values, message", [
    ({"epoch": 3}, "unknown option 'epoch'"),
    ({"epochs": "many"}, "'epochs' must be int"),
    ({"prune_rate": 1.5}, "prune_rate must be in"),
    ({"levels": -1}, "levels must be >= 0"),
])
def test_bad_values(values, message):
    with pytest.raises(BenchError, match=message):
        make_config(values)


def test_missing_config_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
