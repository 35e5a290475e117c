"""The alpha-beta-CROWN adapter against a fake checkout, and against a real one where
ABCROWN_HOME names it.

The fake ``complete_verifier/abcrown.py`` parses the real command line (unknown flags are an
error, ``--config`` is required), caches ``<vnnlib>.compiled`` next to the property as the real
tool does, and writes its output formats: the single-instance results file, and in CSV mode the
per-row ``idx`` headers, ``Result: <status> in <t> seconds`` lines and counterexamples through
the ``--adv_saver 'Customized(file, name)'`` hook. What it does for an instance is picked by the
property's file name (``unsat.vnnlib``, ``hang_2.vnnlib``, ...).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.formats.folder import Instance, read_instances
from bench.verifiers import VERIFIERS
from bench.verifiers import abcrown as abcrown_module
from bench.verifiers.abcrown import AbCrown, readable_vnnlib
from bench.verifiers.harness import RunRecord, run_batch, run_instance
from bench.verifiers.installer import TOOLS_ENV, InstallRecord

from helpers import corner_counterexample  # noqa: E402
from paths import FIXTURES  # noqa: E402
REPO = Path(__file__).resolve().parents[1]

FAKE_ABCROWN = r'''
import argparse, csv, importlib.util, json, os, pickle, re, signal, sys, time, types

parser = argparse.ArgumentParser()
for flag in ("--config", "--device", "--onnx_path", "--vnnlib_path", "--results_file",
             "--cex_path", "--root_path", "--csv_name", "--adv_saver", "--pgd_order"):
    parser.add_argument(flag)
parser.add_argument("--timeout", type=float)
parser.add_argument("--save_adv_example", action="store_true")
args = parser.parse_args()
if args.config is None:
    sys.exit("the fake wants --config, as the real tool does")
if args.device not in (None, "cpu", "cuda"):
    sys.exit(f"invalid choice: {args.device!r}")
with open("fake_argv.json", "w") as handle:
    json.dump({"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS")}, handle)
print("Configurations:\n\ngeneral:\n  device: cpu\n")
CEX = json.loads(os.environ.get("FAKE_ABCROWN_CEX", "null"))
START = time.time()


def behaviour(vnnlib):
    """``unsat_0.2.vnnlib``: answer unsat after 0.2 s."""
    name = os.path.basename(vnnlib)
    return name[:-len(".vnnlib")].split("_") if name.endswith(".vnnlib") else [name]


def compile_vnnlib(vnnlib):
    # The real tool caches the parsed property beside it, and fails where it cannot.
    with open(vnnlib + ".compiled", "wb") as handle:
        handle.write(b"cached")


def hang():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)


def counterexample(kind):
    x, y = CEX["x"], CEX["y"]
    if kind == "badcex":
        x = [0.0] * len(x)  # far outside the input box
    return x, y


class FakeTensor:
    def __init__(self, values):
        self.values = list(values)

    def detach(self):
        return self

    def cpu(self):
        return self

    def reshape(self, *shape):
        return self

    def tolist(self):
        return list(self.values)


def default_saver(x, y, path):
    with open(path, "w") as handle:
        handle.write("(" + "".join(f"(X_{i}  {v})\n" for i, v in enumerate(x))
                     + "\n".join(f"(Y_{j}  {v})" for j, v in enumerate(y)) + ")")


def save_counterexample(x, y, idx):
    print("Saving counterexample to", os.path.abspath(args.cex_path))
    match = re.fullmatch(r"Customized\((.+), (.+)\)", args.adv_saver or "")
    if match is None:
        default_saver(x, y, args.cex_path)
        return
    # As load_model.Customized: load the file, call the function; the saver imports
    # `arguments`, whose Globals says which CSV row is being verified.
    sys.modules["arguments"] = types.SimpleNamespace(Globals={"example_idx": idx})
    path, name = eval(match[1]), eval(match[2])
    spec = importlib.util.spec_from_file_location("customized", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getattr(module, name)(FakeTensor(x), FakeTensor(y), args.cex_path)


if args.csv_name:
    with open(os.path.join(args.root_path, args.csv_name), newline="") as handle:
        rows = [row for row in csv.reader(handle)]
    results = []
    time.sleep(float(os.environ.get("FAKE_ABCROWN_STARTUP", "0")))  # before its own clocks start
    for idx, (onnx, vnnlib, timeout) in enumerate(rows):
        start = time.time()
        print(f"\n {'%' * 35} idx: {idx}, vnnlib ID: {idx} {'%' * 35}")
        print(f"Using onnx {onnx}\nUsing vnnlib {vnnlib}")
        compile_vnnlib(os.path.join(args.root_path, vnnlib))
        kind, *rest = behaviour(vnnlib)
        time.sleep(float(rest[0]) if rest else 0.3)
        if kind == "hang":
            hang()
        if kind == "crash":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x100 and 1x1)")
        if kind in ("sat", "badcex"):
            save_counterexample(*counterexample(kind), idx)
        status = {"unsat": "safe", "sat": "unsafe-pgd", "badcex": "unsafe-pgd",
                  "unknown": "unknown", "incomplete": "safe-incomplete"}[kind]
        if time.time() - start > float(timeout) and status != "unknown":
            status += " (timed out)"
        results.append([status, time.time() - start])
        with open(args.results_file, "wb") as handle:
            pickle.dump({"results": results}, handle)
        print(f"Result: {status} in {results[-1][1]:.4f} seconds")
    print("############# Summary #############")
    sys.exit(0)

compile_vnnlib(args.vnnlib_path)
kind, *rest = behaviour(args.vnnlib_path)
time.sleep(float(rest[0]) if rest else 0.05)
if kind == "hang":
    hang()
if kind == "crash":
    print("Traceback (most recent call last):\n  File \"abcrown.py\", line 1\n"
          "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x100 and 1x1)",
          file=sys.stderr)
    sys.exit(1)
if kind == "nofile":
    sys.exit(0)
if kind == "garbage":
    with open(args.results_file, "w") as handle:
        handle.write("%$#@! maybe?\n")
    sys.exit(0)
answer = {"unsat": "unsat", "sat": "sat", "badcex": "sat", "timeout": "timeout"}[kind]
# What the real tool prints when its attack, or its incomplete verification, decided.
print({"sat": "verified_status unsafe-pgd", "unsat": "verified with init bound!"}.get(kind, ""))
print("Result:", answer)
print("Time:", time.time() - START)
with open(args.results_file, "w") as handle:
    handle.write(answer)
    if answer == "sat" and args.save_adv_example:
        save_counterexample(*counterexample(kind), 0)
        handle.write("\n" + open(args.cex_path).read())
'''


# The real tool, where one is installed (bench verifiers install abcrown) or ABCROWN_HOME names
# one: looked up before the tests point the tools folder elsewhere.
REAL = AbCrown()
REAL_HOME, REAL_PYTHON = REAL.home(), REAL.python()


@pytest.fixture(autouse=True)
def no_killall(tmp_path, monkeypatch, no_leftover_children):
    """``killall``/``pkill`` on PATH that only log their call: neither may ever run. And an
    empty tools folder: a real install must not change what these tests see."""
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path / "tools"))
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "kill_by_name.log"
    for name in ("killall", "pkill"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho \"{name} $*\" >> {log}\n")
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    yield
    assert not log.exists(), log.read_text()


@pytest.fixture(scope="module")
def valid_cex() -> dict[str, list[float]]:
    """A corner of test_prop's input box where test_sat.onnx violates the property."""
    x, y = corner_counterexample(FIXTURES / "test_sat.onnx", FIXTURES / "test_prop.vnnlib")
    return {"x": x.tolist(), "y": y.tolist()}


@pytest.fixture
def home(tmp_path, monkeypatch, valid_cex) -> Path:
    """A fake alpha-beta-CROWN checkout, named by ABCROWN_HOME."""
    checkout = tmp_path / "alpha-beta-CROWN"
    (checkout / "complete_verifier").mkdir(parents=True)
    (checkout / "complete_verifier" / "abcrown.py").write_text(FAKE_ABCROWN)
    monkeypatch.setenv("ABCROWN_HOME", str(checkout))
    monkeypatch.setenv("ABCROWN_PYTHON", sys.executable)  # the fake needs nothing more
    monkeypatch.setenv("FAKE_ABCROWN_CEX", json.dumps(valid_cex))
    return checkout


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    """A benchmark folder with test_sat.onnx and copies of test_prop.vnnlib under the names
    that pick the fake's behaviour."""
    folder = tmp_path / "bench"
    folder.mkdir()
    shutil.copy(FIXTURES / "test_sat.onnx", folder / "net.onnx")
    shutil.copy(FIXTURES / "test_sat.onnx", folder / "other.onnx")
    return folder


def make(folder: Path, name: str, timeout: float = 10.0, onnx: str = "net.onnx") -> Instance:
    shutil.copy(FIXTURES / "test_prop.vnnlib", folder / name)
    return Instance(benchmark=folder.name, root=folder, onnx=onnx, vnnlib=name, timeout=timeout)


def fake_argv(record: RunRecord) -> dict:
    return json.loads((Path(record.log_path) / "fake_argv.json").read_text())


# --------------------------------------------------------------------------- setup


def test_registered_and_not_installed(tmp_path, monkeypatch, bench_dir):
    monkeypatch.delenv("ABCROWN_HOME", raising=False)
    assert VERIFIERS.get("abcrown") is AbCrown and AbCrown.complete
    verifier = AbCrown()
    assert not verifier.is_installed() and verifier.version() is None
    record = run_instance(verifier, make(bench_dir, "unsat.vnnlib"), tmp_path / "logs")
    assert record.status == "error" and record.reason == AbCrown.install_hint
    assert "ABCROWN_HOME" in AbCrown.install_hint
    assert not AbCrown(home=str(tmp_path / "nowhere")).is_installed()


def test_installed_from_option_or_environment(home, monkeypatch):
    assert AbCrown().is_installed()
    monkeypatch.delenv("ABCROWN_HOME")
    assert not AbCrown().is_installed()
    assert AbCrown(home=str(home)).is_installed()


def test_a_checkout_without_its_own_python_is_not_installed(home, monkeypatch):
    # This project's python cannot run it (numpy.lib.arraysetops): never used by default.
    monkeypatch.delenv("ABCROWN_PYTHON")
    verifier = AbCrown()
    assert verifier.python() is None and not verifier.is_installed()
    assert "ABCROWN_PYTHON" in AbCrown.install_hint and "bench verifiers install abcrown" \
        in AbCrown.install_hint
    assert AbCrown(python=sys.executable).is_installed()


def test_the_installed_tool_is_used_without_any_variable(home, monkeypatch, tmp_path):
    monkeypatch.delenv("ABCROWN_HOME")
    monkeypatch.delenv("ABCROWN_PYTHON")
    folder = tmp_path / "tools" / "abcrown"
    shutil.copytree(home, folder / "alpha-beta-CROWN")
    InstallRecord(tool="abcrown", location=str(folder), commit="0123456789abcdef",
                  python=sys.executable).write(folder)
    verifier = AbCrown()
    assert verifier.is_installed() and verifier.python() == sys.executable
    assert verifier.home() == folder / "alpha-beta-CROWN"
    assert "commit 0123456789ab" in verifier.install_info()
    # ABCROWN_HOME still overrides the install.
    monkeypatch.setenv("ABCROWN_HOME", str(home))
    assert AbCrown().home() == home and "from" in AbCrown().install_info()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_version_from_git_or_the_bundled_auto_lirpa(home):
    assert AbCrown().version() is None  # neither git metadata nor a version file
    lirpa = home / "auto_LiRPA" / "auto_LiRPA"
    lirpa.mkdir(parents=True)
    (lirpa / "__init__.py").write_text("from .bound_general import BoundedModule\n"
                                       "__version__ = '0.7.1'\n")
    assert AbCrown().version() == "auto_LiRPA-0.7.1"
    git = ["git", "-C", str(home), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "release"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert AbCrown().version() == head


def test_command_line_and_configs(home, bench_dir, tmp_path):
    inst = make(bench_dir, "unsat.vnnlib", timeout=12.5)
    cpu = AbCrown().command(inst, tmp_path)
    argv = cpu.argv
    assert argv[:2] == [sys.executable, str((home / "complete_verifier" / "abcrown.py").resolve())]
    assert argv[argv.index("--config") + 1] == str(REPO / "verifiers" / "abcrown" / "cpu.yaml")
    assert argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--timeout") + 1] == "12.5"
    assert argv[argv.index("--onnx_path") + 1] == str((bench_dir / "net.onnx").resolve())
    assert "--save_adv_example" in argv and "--cex_path" in argv
    assert Path(argv[argv.index("--results_file") + 1]).parent == tmp_path.resolve()
    assert cpu.env["OMP_NUM_THREADS"] == "1" and cpu.cwd == tmp_path

    gpu = AbCrown(config="gpu", python="/opt/abcrown/bin/python").command(inst, tmp_path)
    assert gpu.argv[0] == "/opt/abcrown/bin/python"
    assert gpu.argv[gpu.argv.index("--config") + 1].endswith("verifiers/abcrown/gpu.yaml")
    assert gpu.argv[gpu.argv.index("--device") + 1] == "cuda"
    assert "OMP_NUM_THREADS" not in gpu.env

    # A custom YAML keeps its own device (none passed); OMP follows what it says.
    custom = tmp_path / "mine.yaml"
    custom.write_text("general:\n  device: cpu\nbab:\n  timeout: 30\n")
    own = AbCrown(config=str(custom)).command(inst, tmp_path)
    assert "--device" not in own.argv and own.env["OMP_NUM_THREADS"] == "1"
    forced = AbCrown(config=str(custom), device="cuda").command(inst, tmp_path)
    assert forced.argv[forced.argv.index("--device") + 1] == "cuda"


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_shipped_configs_are_the_papers_settings(name):
    import yaml

    config = yaml.safe_load((REPO / "verifiers" / "abcrown" / f"{name}.yaml").read_text())
    assert config["general"]["complete_verifier"] == "bab"
    assert config["general"]["device"] == {"cpu": "cpu", "gpu": "cuda"}[name]
    # The paper's 100 restarts on a GPU; on a CPU they cost ~15 s per robust instance, so a
    # short attack there (branch and bound decides the rest).
    assert config["attack"]["pgd_restarts"] == {"cpu": 5, "gpu": 100}[name]
    assert config["bab"]["timeout"] == 300


def test_bad_parameters_are_errors_before_anything_runs(home, tmp_path):
    # One BenchError when the verifier is made, not an error row per instance.
    with pytest.raises(BenchError, match="config=.*missing.yaml.* neither cpu nor gpu"):
        AbCrown(config=str(tmp_path / "missing.yaml"))
    with pytest.raises(BenchError, match="device='tpu' is not one of cpu, cuda"):
        AbCrown(device="tpu")
    with pytest.raises(BenchError, match="batch='maybe' is not a boolean"):
        AbCrown(batch="maybe")
    with pytest.raises(BenchError, match="no parameter.*colour"):
        AbCrown(colour="red")
    assert AbCrown(batch="true").supports_batch() and not AbCrown(batch="0").supports_batch()
    assert AbCrown().supports_batch()  # batch mode by default: the start-up is paid once


def test_attack_can_be_left_to_a_cascade(home, bench_dir, tmp_path):
    inst = make(bench_dir, "unsat.vnnlib")
    assert "--pgd_order" not in AbCrown().command(inst, tmp_path).argv
    argv = AbCrown(attack="false").command(inst, tmp_path).argv
    assert argv[argv.index("--pgd_order") + 1] == "skip"


def test_gpu_use_follows_the_config(home, tmp_path):
    assert not AbCrown().uses_gpu() and AbCrown(config="gpu").uses_gpu()
    assert AbCrown(config="gpu", device="cpu").uses_gpu() is False
    custom = tmp_path / "mine.yaml"
    custom.write_text("general:\n  device: cuda\n")
    assert AbCrown(config=str(custom)).uses_gpu()


# --------------------------------------------------------------------------- one instance


def test_unsat(home, bench_dir, tmp_path):
    before = set(os.listdir(bench_dir))
    record = run_instance(AbCrown(), make(bench_dir, "unsat.vnnlib"), tmp_path / "logs")
    assert record.status == "unsat" and record.reason == "" and record.cex_check is None
    assert 0 < record.verifier_time < record.wall_time < 10
    assert record.startup_time == pytest.approx(record.wall_time - record.verifier_time)
    assert record.decided_by == "incomplete"
    assert record.peak_memory_mb > 0
    # Its .compiled cache is the only thing written into the benchmark folder.
    assert set(os.listdir(bench_dir)) - before == {"unsat.vnnlib", "unsat.vnnlib.compiled"}
    call = fake_argv(record)
    assert call["omp"] == "1" and call["argv"][call["argv"].index("--device") + 1] == "cpu"


def test_sat_with_a_valid_counterexample(home, bench_dir, tmp_path):
    record = run_instance(AbCrown(), make(bench_dir, "sat.vnnlib"), tmp_path / "logs")
    assert record.status == "sat" and record.reason == "" and record.decided_by == "attack"
    assert record.cex_check in ("correct", "correct_up_to_tolerance"), record.cex_detail


def test_sat_with_an_invalid_counterexample_stays_sat(home, bench_dir, tmp_path):
    record = run_instance(AbCrown(), make(bench_dir, "badcex.vnnlib"), tmp_path / "logs")
    assert record.status == "sat"
    assert record.cex_check == "invalid", record.cex_detail


def test_its_own_timeout_is_a_timeout(home, bench_dir, tmp_path):
    record = run_instance(AbCrown(), make(bench_dir, "timeout.vnnlib"), tmp_path / "logs")
    assert record.status == "timeout" and "unknown" in record.reason


def test_hang_is_killed_at_the_hard_timeout(home, bench_dir, tmp_path):
    inst = make(bench_dir, "hang.vnnlib", timeout=1.0)
    record = run_instance(AbCrown(), inst, tmp_path / "logs", grace=0.5)
    assert record.status == "timeout" and "SIGKILL" in record.reason
    assert 1.0 <= record.wall_time < 3.0


def test_crash_is_an_error_with_the_exception(home, bench_dir, tmp_path):
    record = run_instance(AbCrown(), make(bench_dir, "crash.vnnlib"), tmp_path / "logs")
    assert record.status == "error"
    assert record.reason.startswith("alpha-beta-CROWN exited with code 1: RuntimeError: mat1")


@pytest.mark.parametrize("name, expected", [
    ("garbage.vnnlib", "not a VNN-COMP answer"),
    ("nofile.vnnlib", "wrote no results file"),
])
def test_garbage_or_missing_results_are_errors(home, bench_dir, tmp_path, name, expected):
    record = run_instance(AbCrown(), make(bench_dir, name), tmp_path / "logs")
    assert record.status == "error" and expected in record.reason


def test_missing_config_flag_is_an_error(home, bench_dir, tmp_path, monkeypatch):
    # The fake refuses to run without --config, as the real tool effectively does.
    original = AbCrown._common_args

    def without_config(self, workdir):
        argv, env = original(self, workdir)
        i = argv.index("--config")
        return argv[:i] + argv[i + 2:], env

    monkeypatch.setattr(AbCrown, "_common_args", without_config)
    record = run_instance(AbCrown(), make(bench_dir, "unsat.vnnlib"), tmp_path / "logs")
    assert record.status == "error" and "--config" in record.reason


def test_unwritable_benchmark_folder_gets_a_copy(home, bench_dir, tmp_path, monkeypatch):
    # Running as root, permissions cannot make a folder unwritable: pretend instead.
    monkeypatch.setattr(abcrown_module, "_writable", lambda folder: False)
    before = set(os.listdir(make(bench_dir, "unsat.vnnlib").root))
    record = run_instance(AbCrown(), make(bench_dir, "unsat.vnnlib"), tmp_path / "logs")
    assert record.status == "unsat"
    argv = fake_argv(record)["argv"]
    used = Path(argv[argv.index("--vnnlib_path") + 1])
    assert used.parent == Path(record.log_path).resolve() and used.name == "unsat.vnnlib"
    assert set(os.listdir(bench_dir)) == before  # nothing written into the benchmark


def test_gzipped_property_is_unpacked_into_the_workdir(tmp_path):
    import gzip

    source = tmp_path / "prop.vnnlib.gz"
    source.write_bytes(gzip.compress(b"(declare-const X_0 Real)\n"))
    copy = readable_vnnlib(source, tmp_path / "work")
    assert copy == (tmp_path / "work" / "prop.vnnlib").resolve()
    assert copy.read_text() == "(declare-const X_0 Real)\n"
    plain = tmp_path / "plain.vnnlib"
    plain.write_text("x")
    assert readable_vnnlib(plain, tmp_path / "work") == plain


# --------------------------------------------------------------------------- batch mode


def test_batch_enforces_each_timeout_and_restarts_after_a_hang(home, bench_dir, tmp_path):
    instances = [make(bench_dir, "unsat_0.2.vnnlib", timeout=5),
                 make(bench_dir, "sat_0.3.vnnlib", timeout=5),
                 make(bench_dir, "hang.vnnlib", timeout=1.0),
                 make(bench_dir, "badcex_0.1.vnnlib", timeout=5),
                 make(bench_dir, "unsat_0.4.vnnlib", timeout=5)]
    seen: list[RunRecord] = []
    records = run_batch(AbCrown(batch=True), instances, tmp_path / "logs", grace=0.5,
                        on_record=seen.append)
    assert [r.vnnlib for r in records] == [i.vnnlib for i in instances]
    assert sorted(r.vnnlib for r in seen) == sorted(i.vnnlib for i in instances)
    unsat, sat, hang, badcex, unsat2 = records
    assert [r.status for r in records] == ["unsat", "sat", "timeout", "sat", "unsat"]
    assert sat.cex_check in ("correct", "correct_up_to_tolerance"), sat.cex_detail
    assert badcex.cex_check == "invalid"
    # Each instance's own time, as the tool reported it (it sleeps 0.2, 0.3, 0.1, 0.4 s); the
    # first of each process also pays the process's start-up, as in one process per instance.
    for record, seconds in ((unsat, 0.2), (sat, 0.3), (badcex, 0.1), (unsat2, 0.4)):
        assert record.verifier_time == pytest.approx(seconds, abs=0.15)
        assert record.wall_time == pytest.approx(record.verifier_time + record.startup_time)
    assert unsat.startup_time > 0 and badcex.startup_time > 0  # first of processes 1 and 2
    assert sat.startup_time == 0 and unsat2.startup_time == 0
    assert (unsat.decided_by, sat.decided_by) == ("bab", "attack")
    assert "hard timeout after 1 s in batch mode" in hang.reason and "SIGKILL" in hang.reason
    assert 1.5 <= hang.wall_time < 3.5 and hang.verifier_time is None
    # The hang stopped the first process; the rest went on in a second one.
    first, second = Path(unsat.log_path), Path(badcex.log_path)
    assert first.name == "process_1" and second.name == "process_2"
    assert Path(sat.log_path) == first == Path(hang.log_path)
    assert Path(unsat2.log_path) == second
    assert all(r.peak_memory_mb > 0 for r in records)
    rows = (first / "instances.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[2].endswith(",1.0")
    assert len((second / "instances.csv").read_text().splitlines()) == 2


def test_batch_late_answer_is_a_timeout_without_a_restart(home, bench_dir, tmp_path,
                                                          monkeypatch):
    # Its own clock starts after its start-up, the harness's at the process start (as in
    # run_instance): by its clock row 0 took 0.6 s of 1, by the harness's 1.4 s.
    monkeypatch.setenv("FAKE_ABCROWN_STARTUP", "0.8")
    instances = [make(bench_dir, "unsat_0.6.vnnlib", timeout=1.0),
                 make(bench_dir, "unsat_1.2.vnnlib", timeout=1.0),
                 make(bench_dir, "unsat_0.1.vnnlib", timeout=5)]
    late, own, ok = run_batch(AbCrown(batch=True), instances, tmp_path / "logs", grace=1.5)
    assert late.status == "timeout" and "answered unsat only after its timeout of 1 s" \
        in late.reason
    assert late.wall_time >= 1.4 and late.verifier_time == pytest.approx(0.6, abs=0.15)
    assert late.startup_time >= 0.8  # its start-up, counted on the first instance
    # Past its own timeout it says "safe (timed out)": a timeout too, in its words.
    assert own.status == "timeout" and "'safe (timed out)'" in own.reason
    assert ok.status == "unsat"
    assert Path(late.log_path) == Path(ok.log_path)  # one process: no restart was needed


def test_batch_crash_settles_one_instance_and_goes_on(home, bench_dir, tmp_path):
    instances = [make(bench_dir, "unsat_0.1.vnnlib"), make(bench_dir, "crash.vnnlib"),
                 make(bench_dir, "unknown_0.1.vnnlib"), make(bench_dir, "sat_0.1.vnnlib")]
    unsat, crash, unknown, sat = run_batch(AbCrown(batch=True), instances, tmp_path / "logs",
                                           grace=0.5)
    assert unsat.status == "unsat" and sat.status == "sat"
    assert crash.status == "error"
    assert "exited with code 1" in crash.reason and "mat1 and mat2" in crash.reason
    # Its unknown is recorded as timeout, like its results files write it.
    assert unknown.status == "timeout" and "'unknown'" in unknown.reason
    assert sat.cex_check in ("correct", "correct_up_to_tolerance"), sat.cex_detail
    assert Path(unknown.log_path).name == "process_2"


def test_batch_counterexamples_are_kept_per_instance(home, bench_dir, tmp_path):
    # Back-to-back sat answers: each row's counterexample has its own file.
    instances = [make(bench_dir, name)
                 for name in ("sat_0.vnnlib", "badcex_0.vnnlib", "sat_0.0.vnnlib")]
    records = run_batch(AbCrown(batch=True), instances, tmp_path / "logs", grace=0.5)
    assert [r.status for r in records] == ["sat", "sat", "sat"]
    assert [r.cex_check == "invalid" for r in records] == [False, True, False]
    workdir = Path(records[0].log_path)
    assert {p.name for p in workdir.glob("cex.txt.*")} == {"cex.txt.0", "cex.txt.1", "cex.txt.2"}


def test_batch_runs_one_process_per_model(home, bench_dir, tmp_path):
    instances = [make(bench_dir, "unsat_0.05.vnnlib"),
                 make(bench_dir, "unsat_0.06.vnnlib", onnx="other.onnx"),
                 make(bench_dir, "unsat_0.07.vnnlib")]
    records = run_batch(AbCrown(batch=True), instances, tmp_path / "logs", grace=0.5)
    assert [r.status for r in records] == ["unsat"] * 3
    assert records[0].log_path == records[2].log_path != records[1].log_path
    assert "net.onnx__batch" in records[0].log_path
    assert "other.onnx__batch" in records[1].log_path


def test_without_batch_each_instance_runs_alone(home, bench_dir, tmp_path):
    instances = [make(bench_dir, "unsat.vnnlib"), make(bench_dir, "sat.vnnlib")]
    records = run_batch(AbCrown(batch=False), instances, tmp_path / "logs", grace=0.5)
    assert [r.status for r in records] == ["unsat", "sat"]
    assert records[0].log_path != records[1].log_path
    assert "--csv_name" not in fake_argv(records[0])["argv"]


def test_batch_not_installed_is_an_error_for_every_instance(bench_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ABCROWN_HOME", raising=False)
    instances = [make(bench_dir, "unsat.vnnlib"), make(bench_dir, "sat.vnnlib")]
    records = run_batch(AbCrown(batch=True), instances, tmp_path / "logs")
    assert [(r.status, r.reason) for r in records] == [("error", AbCrown.install_hint)] * 2


# --------------------------------------------------------------------------- the real tool


@pytest.mark.skipif(not REAL.is_installed(),
                    reason="alpha-beta-CROWN is not installed (bench verifiers install abcrown, or "
                           "set ABCROWN_HOME and ABCROWN_PYTHON)")
@pytest.mark.parametrize("batch", [False, True])
def test_real_abcrown(tmp_path, batch):
    """The real tool on the two ACAS Xu fixtures (known answers: sat and unsat). The 1-input
    fixtures (test_nano, ...) need alpha-beta-CROWN's own test.yaml, so they are left out."""
    folder = tmp_path / "test"
    shutil.copytree(FIXTURES, folder)
    (folder / "instances.csv").write_text("test_sat.onnx,test_prop.vnnlib,120\n"
                                          "test_unsat.onnx,test_prop.vnnlib,120\n")
    verifier = AbCrown(home=str(REAL_HOME), python=REAL_PYTHON, batch=batch)
    assert verifier.is_installed()
    sat, unsat = run_batch(verifier, read_instances(folder), tmp_path / "logs")
    assert sat.status == "sat", sat.reason
    assert sat.cex_check in ("correct", "correct_up_to_tolerance"), sat.cex_detail
    assert unsat.status == "unsat", unsat.reason
    assert sat.verifier_time is not None and unsat.verifier_time is not None
    assert sat.decided_by == "attack" and unsat.decided_by in ("incomplete", "bab")
    assert sat.startup_time > 0
