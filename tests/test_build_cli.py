"""`bench build-instances`: options generated from the settings, with their help and every
registry's choices; hostile values get one line (exit 2) before anything is written."""
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench
from bench.cli import main
from bench.config import option_specs
from bench.data import DATASETS
from bench.models import MODELS
from bench.pruning import PRUNERS
from bench.training import TRAINERS
from bench.training.regularizers import REGULARIZERS

ROOT = Path(__file__).resolve().parent.parent


def build(*args: str):
    return CliRunner().invoke(main, ["build-instances", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def help_text() -> str:
    result = build("--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # one line: help wraps anywhere


def test_help_lists_every_choice_of_every_registry(help_text):
    for registry in (DATASETS, MODELS, TRAINERS, PRUNERS):
        assert "choices: " + ", ".join(registry.names()) in help_text, registry.kind
    assert "choices: none, " + ", ".join(sorted(REGULARIZERS)) in help_text


def test_every_setting_is_an_option_with_its_help(help_text):
    for spec in option_specs():
        if spec.option == "seeds":  # --seed, given several times
            continue
        flag = "--" + spec.option.replace("_", "-")
        assert f"{flag} " in help_text, flag
        assert " ".join(spec.help.split()) in help_text, flag
    for title in ("Data:", "Model:", "Training (every level):", "Pruning:", "Replicates:"):
        assert title in help_text
    assert "of the channels for structured ones" in help_text  # --prune-rate


@pytest.mark.parametrize("args, fragment", [
    (["--timeout", "inf"], "timeout must be a finite number of seconds"),
    (["--timeout", "1e400"], "timeout must be a finite number of seconds"),
    (["--timeout", "1e9"], "at most 604800"),
    (["--eps", "inf"], "eps must be a finite radius"),
    (["--eps", "nan"], "eps must be a finite radius"),
    (["--seed", "x"], "option 'seed' must be int, got 'x'"),
    (["--lr-milestones", "a,b"], "each item of option 'lr_milestones' must be int"),
    (["--epochs", "2.5"], "option 'epochs' must be int"),
    (["--regularizer", "magic"], "unknown regularizer 'magic'"),
    (["--lr", "inf"], "lr must be a finite number"),
])
def test_hostile_values_are_one_line_errors_before_any_work(tmp_path, args, fragment):
    result = build(*args, "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe\x00", b'seeds: [1, "x"]\n',
                                     b"lr_milestones: [a, b]\n", b"timeout: .inf\n"])
def test_hostile_config_files_are_one_line_errors(tmp_path, content):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    result = build("--config", str(config), "--out", str(tmp_path / "out"),
                   "--runs-dir", str(tmp_path / "runs"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        result.output
    assert "Traceback" not in result.output


def test_the_version_is_declared_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bench.__version__"}
    assert bench.__version__
