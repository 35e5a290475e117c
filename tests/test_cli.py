"""Bad input gets one line naming the problem and the fix, exit status 2, no traceback."""
import pytest
from click.testing import CliRunner

from bench.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def assert_clean_error(code, output, *fragments):
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output


@pytest.mark.parametrize("option, value, fragments", [
    ("--pruner", "magic", ["unknown pruner 'magic'", "imp"]),
    ("--dataset", "imagenet", ["unknown dataset 'imagenet'", "mnist"]),
    ("--training", "wishful", ["unknown training method 'wishful'", "crown-ibp"]),
    ("--model", "resnet999", ["unknown model 'resnet999'", "cnn7"]),
])
def test_unknown_names(tmp_path, option, value, fragments):
    code, output = invoke("build-instances", option, value, "--runs-dir", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "out"))
    assert_clean_error(code, output, *fragments)
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_missing_dataset_files_offline(tmp_path):
    code, output = invoke("build-instances", "--dataset", "cifar10", "--data-dir",
                          str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "out"))
    assert_clean_error(code, output, str(tmp_path / "data"), "--download")


def test_malformed_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: [1, 2\nlevels: 3\n")
    code, output = invoke("build-instances", "--config", str(config))
    assert_clean_error(code, output, str(config), "YAML")


def test_config_with_unknown_option(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("epoks: 3\n")
    code, output = invoke("build-instances", "--config", str(config))
    assert_clean_error(code, output, "unknown option 'epoks'")


def test_run_without_benchmarks(tmp_path):
    code, output = invoke("run", "--instances", str(tmp_path), "--results",
                          str(tmp_path / "r.db"))
    assert_clean_error(code, output, "bench build-instances")


def test_tables_without_results(tmp_path):
    code, output = invoke("tables", "--results", str(tmp_path / "none.db"))
    assert_clean_error(code, output, "bench run")


def test_help_lists_commands():
    code, output = invoke("--help")
    assert code == 0
    for command in ("build-instances", "run", "tables", "verifiers"):
        assert command in output


def test_verifiers_lists_every_registered_verifier():
    from bench.verifiers import VERIFIERS

    code, output = invoke("verifiers")
    assert code == 0
    for name in VERIFIERS.names():
        assert any(line.startswith(name) for line in output.splitlines()), name


def test_installing_an_unknown_or_external_verifier(tmp_path):
    code, output = invoke("verifiers", "install", "nope")
    assert_clean_error(code, output, "unknown verifier 'nope'")
    # abcrown is installable now (tests/test_installer.py); Marabou comes from pip.
    code, output = invoke("verifiers", "install", "marabou")
    assert_clean_error(code, output, "marabou is not installed by bench", "pip install maraboupy")


def test_check_results_flags_a_soundness_alarm(tmp_path):
    from bench.run.results import ResultsDB
    from bench.verifiers.harness import RunRecord

    db = ResultsDB(tmp_path / "r.db")
    common = dict(benchmark="b", root=str(tmp_path), onnx="m.onnx", vnnlib="p.vnnlib",
                  timeout=10.0, reason="", wall_time=1.0, verifier_version="1",
                  verifier_time=None, peak_memory_mb=1.0, peak_gpu_memory_mb=None,
                  cex_detail="", log_path="", started_at="2026-01-01T00:00:00+00:00", host="h")
    db.record(RunRecord(verifier="one", status="unsat", cex_check=None, **common))
    db.record(RunRecord(verifier="two", status="sat", cex_check="correct", **common))
    db.close()
    code, output = invoke("check-results", "--results", str(tmp_path / "r.db"))
    assert code == 1
    assert "Soundness alarms (1)" in output


def test_bad_verifier_option():
    code, output = invoke("run", "--verifier-option", "novalue")
    assert code == 2 and "expected key=value" in output
