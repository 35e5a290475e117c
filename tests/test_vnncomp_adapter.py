"""The VNN-COMP scripts adapter against fake tool folders, and the shared result-file parser."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.formats.folder import Instance
from bench.verifiers import VERIFIERS, Status
from bench.verifiers.harness import DEFAULT_GRACE, run_instance
from bench.verifiers.vnncomp import VnnComp
from bench.verifiers.vnncomp_format import parse_counterexample, parse_vnncomp_result

from helpers import corner_counterexample  # noqa: E402
from paths import FIXTURES  # noqa: E402

# What the fake tool does is picked by the property's file name.
RUN_INSTANCE = r'''#!/bin/bash
if [ "$1" != v1 ]; then echo "Expected first argument (version string) 'v1', got '$1'"; exit 1; fi
CATEGORY=$2; ONNX=$3; VNNLIB=$4; RESULTS=$5; TIMEOUT=$6
printf '%s\n' "$@" > "$(dirname "$RESULTS")/run_args.txt"
case "$(basename "$VNNLIB" .vnnlib)" in
  unsat) echo unsat > "$RESULTS" ;;
  sat) printf 'sat\n%s\n' "$FAKE_CEX" > "$RESULTS" ;;
  badcex) printf 'sat\n((X_0 0.0)\n(X_1 0.0)\n(X_2 0.0)\n(X_3 0.0)\n(X_4 0.0))\n' > "$RESULTS" ;;
  timeout) echo timeout > "$RESULTS" ;;
  unknown) echo unknown > "$RESULTS" ;;
  error) printf 'error\nout of memory\n' > "$RESULTS" ;;
  garbage) echo "I think it holds" > "$RESULTS" ;;
  nofile) echo "forgot the results" ;;
  crash) echo "Segmentation fault" >&2; exit 139 ;;
  unsatexit) echo unsat > "$RESULTS"; exit 1 ;;
  hang) trap '' TERM; while true; do sleep 0.05; done ;;
esac
'''
PREPARE_OK = '''#!/bin/bash
printf '%s\\n' "$@" > "$(pwd)/prepare_args.txt"
'''
PREPARE_FAILS = '''#!/bin/bash
echo "CATEGORY $2 not supported"
exit 1
'''
PREPARE_KILLALL = '''#!/bin/bash
# kill any zombie processes
killall -q python
exit 0
'''


@pytest.fixture(autouse=True)
def _no_leftover_children(no_leftover_children):
    """No test may leave a process of ours running (see conftest.py)."""


@pytest.fixture(scope="module")
def cex_text() -> str:
    """A valid counterexample for test_sat.onnx / test_prop.vnnlib, in VNN-COMP's format."""
    x, y = corner_counterexample(FIXTURES / "test_sat.onnx", FIXTURES / "test_prop.vnnlib")
    entries = [f"(X_{i} {v!r})" for i, v in enumerate(x.tolist())]
    entries += [f"(Y_{j} {v!r})" for j, v in enumerate(y.tolist())]
    return "(" + "\n".join(entries) + ")"


def tool_dir(tmp_path: Path, prepare: str | None = None, executable: bool = True) -> Path:
    folder = tmp_path / "tool" / "vnncomp_scripts"
    folder.mkdir(parents=True)
    scripts = {"run_instance.sh": RUN_INSTANCE}
    if prepare is not None:
        scripts["prepare_instance.sh"] = prepare
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755 if executable else 0o644)
    return folder


@pytest.fixture
def bench_dir(tmp_path, monkeypatch, cex_text) -> Path:
    monkeypatch.setenv("FAKE_CEX", cex_text)
    folder = tmp_path / "mybench"
    folder.mkdir()
    shutil.copy(FIXTURES / "test_sat.onnx", folder / "net.onnx")
    return folder


def make(folder: Path, name: str, timeout: float = 10.0) -> Instance:
    shutil.copy(FIXTURES / "test_prop.vnnlib", folder / f"{name}.vnnlib")
    return Instance(benchmark=folder.name, root=folder, onnx="net.onnx",
                    vnnlib=f"{name}.vnnlib", timeout=timeout)


def run(tmp_path: Path, bench_dir: Path, name: str, timeout: float = 10.0, **params):
    if "tool_dir" not in params:
        params["tool_dir"] = str(tool_dir(tmp_path))
    return run_instance(VnnComp(**params), make(bench_dir, name, timeout), tmp_path / "logs")


# --------------------------------------------------------------------------- the adapter


def test_registered_and_not_installed(tmp_path, bench_dir):
    assert VERIFIERS.get("vnncomp") is VnnComp
    assert not VnnComp().is_installed()
    record = run_instance(VnnComp(), make(bench_dir, "unsat"), tmp_path / "logs")
    assert record.status == "error" and "tool_dir" in record.reason
    assert VnnComp(tool_dir=str(tool_dir(tmp_path))).is_installed()
    assert VnnComp().grace == 60.0 and VnnComp(grace="2.5").grace == 2.5
    with pytest.raises(Exception, match="grace"):
        VnnComp(grace="soon")


def test_each_tool_keeps_its_own_identity(tmp_path):
    folder = tool_dir(tmp_path)  # .../tool/vnncomp_scripts: the generic folder's parent names it
    assert VnnComp(tool_dir=str(folder)).result_name == "vnncomp:tool"
    assert VnnComp(tool_dir=str(folder), tool="nnenum").result_name == "vnncomp:nnenum"
    assert VnnComp().result_name == "vnncomp"
    with pytest.raises(BenchError, match="tool='a/b' must be a plain name"):
        VnnComp(tool="a/b")
    with pytest.raises(BenchError, match="prepare='sometimes' is not a boolean"):
        VnnComp(prepare="sometimes")


def test_two_tools_keep_separate_rows(tmp_path, bench_dir):
    """Two VNN-COMP tools run through vnncomp on one database: neither overwrites the other's
    rows, so they can be cross-checked."""
    from bench.run.results import read_rows
    from bench.run.runner import run_benchmarks

    make(bench_dir, "unsat")
    (bench_dir / "instances.csv").write_text("net.onnx,unsat.vnnlib,10\n")
    first = tool_dir(tmp_path / "a")
    second = tmp_path / "b" / "othertool"
    shutil.copytree(first, second)
    results = tmp_path / "results.db"
    for folder in (first, second):
        run_benchmarks([bench_dir], "vnncomp", results, progress=False,
                       verifier_params={"tool_dir": str(folder)})
    rows = read_rows(results)
    assert sorted(row["verifier"] for row in rows) == ["vnncomp:othertool", "vnncomp:tool"]
    assert all(row["status"] == "unsat" for row in rows)


def test_unsat_with_the_vnncomp_command_line(tmp_path, bench_dir):
    record = run(tmp_path, bench_dir, "unsat", timeout=42)
    assert record.status == "unsat" and record.reason == ""
    args = (Path(record.log_path) / "run_args.txt").read_text().splitlines()
    results = str((Path(record.log_path) / "results.txt").resolve())
    assert args == ["v1", "mybench", str((bench_dir / "net.onnx").resolve()),
                    str((bench_dir / "unsat.vnnlib").resolve()), results, "42"]


def test_category_can_be_set(tmp_path, bench_dir):
    record = run(tmp_path, bench_dir, "unsat", category="acasxu_2023")
    args = (Path(record.log_path) / "run_args.txt").read_text().splitlines()
    assert args[1] == "acasxu_2023"


def test_sat_with_a_valid_counterexample(tmp_path, bench_dir):
    record = run(tmp_path, bench_dir, "sat")
    assert record.status == "sat"
    assert record.cex_check in ("correct", "correct_up_to_tolerance"), record.cex_detail


def test_sat_with_an_invalid_counterexample_stays_sat(tmp_path, bench_dir):
    record = run(tmp_path, bench_dir, "badcex")
    assert record.status == "sat"
    assert record.cex_check == "invalid" and "outside every input box" in record.cex_detail


@pytest.mark.parametrize("name, status, reason", [
    ("timeout", "timeout", "reported timeout"),
    ("unknown", "unknown", "reported unknown"),
    ("error", "error", "reported error: out of memory"),
    ("garbage", "error", "not a VNN-COMP answer"),
    ("nofile", "error", "exited with code 0 and wrote no results file; last output: forgot"),
    ("crash", "error", "exited with code 139 and wrote no results file; last output: Segm"),
])
def test_answers_and_failures(tmp_path, bench_dir, name, status, reason):
    record = run(tmp_path, bench_dir, name)
    assert record.status == status and reason in record.reason, record.reason


def test_an_answer_followed_by_a_crash_is_an_error(tmp_path, bench_dir):
    # VNN-COMP would count the results file whatever the exit code; an unsat from a tool that
    # then failed is not evidence here.
    record = run(tmp_path, bench_dir, "unsatexit")
    assert record.status == "error"
    assert "exited with code 1 after writing 'unsat'" in record.reason


def test_hang_is_killed_after_the_verifiers_grace(tmp_path, bench_dir):
    # No grace passed to run_instance: the verifier's own (here 0.5 s, VNN-COMP's is 60 s).
    record = run(tmp_path, bench_dir, "hang", timeout=1.0, grace=0.5)
    assert record.status == "timeout" and "SIGKILL" in record.reason
    assert 1.0 <= record.wall_time < 3.0


def test_default_grace_stays_for_other_verifiers():
    from bench.verifiers.harness import _grace
    from bench.verifiers.marabou import Marabou

    assert _grace(Marabou()) == DEFAULT_GRACE and _grace(VnnComp()) == 60.0


def test_script_without_execute_permission_runs_with_bash(tmp_path, bench_dir):
    folder = tool_dir(tmp_path, executable=False)
    record = run(tmp_path, bench_dir, "unsat", tool_dir=str(folder))
    assert record.status == "unsat"
    assert (Path(record.log_path) / "command.txt").read_text().startswith("bash ")


def test_prepare_runs_first_outside_the_timeout(tmp_path, bench_dir):
    folder = tool_dir(tmp_path, prepare=PREPARE_OK)
    record = run(tmp_path, bench_dir, "unsat", tool_dir=str(folder))
    assert record.status == "unsat"
    args = (Path(record.log_path) / "prepare_args.txt").read_text().splitlines()
    assert args == ["v1", "mybench", str((bench_dir / "net.onnx").resolve()),
                    str((bench_dir / "unsat.vnnlib").resolve())]


def test_prepare_failure_is_an_error(tmp_path, bench_dir):
    folder = tool_dir(tmp_path, prepare=PREPARE_FAILS)
    record = run(tmp_path, bench_dir, "unsat", tool_dir=str(folder))
    assert record.status == "error"
    assert "prepare_instance.sh exited with code 1: CATEGORY mybench not supported" \
        in record.reason
    assert not (Path(record.log_path) / "run_args.txt").exists()


def test_prepare_that_kills_by_name_is_refused_or_skipped(tmp_path, bench_dir):
    folder = tool_dir(tmp_path, prepare=PREPARE_KILLALL)
    record = run(tmp_path, bench_dir, "unsat", tool_dir=str(folder))
    assert record.status == "error" and "killall -q python" in record.reason
    assert "prepare=false" in record.reason
    record = run(tmp_path, bench_dir, "unsat", tool_dir=str(folder), prepare="false")
    assert record.status == "unsat"


def test_gzipped_benchmark_files_are_unpacked(tmp_path, bench_dir):
    import gzip

    inst = make(bench_dir, "unsat")
    packed = bench_dir / "unsat.vnnlib.gz"
    packed.write_bytes(gzip.compress((bench_dir / "unsat.vnnlib").read_bytes()))
    inst = Instance(inst.benchmark, inst.root, inst.onnx, "unsat.vnnlib.gz", inst.timeout)
    record = run_instance(VnnComp(tool_dir=str(tool_dir(tmp_path))), inst, tmp_path / "logs")
    assert record.status == "unsat"
    args = (Path(record.log_path) / "run_args.txt").read_text().splitlines()
    assert args[3] == str((Path(record.log_path) / "unsat.vnnlib").resolve())


# --------------------------------------------------------------------------- the parser


def test_parser_answers():
    assert parse_vnncomp_result("unsat\n").status is Status.UNSAT
    assert parse_vnncomp_result("  UNSAT  ").status is Status.UNSAT
    assert parse_vnncomp_result("holds").status is Status.UNSAT  # VNN-COMP 2021
    assert parse_vnncomp_result("timeout").status is Status.TIMEOUT
    assert parse_vnncomp_result("unknown").status is Status.UNKNOWN
    error = parse_vnncomp_result("error\nCUDA out of memory\n")
    assert error.status is Status.ERROR and "CUDA out of memory" in error.reason
    for text in ("", "\n\n", "unsafe", "sat?", "result: unsat"):
        assert parse_vnncomp_result(text).status is Status.ERROR, text


def test_parser_counterexample():
    verdict = parse_vnncomp_result("sat\n((X_0  0.5)\n(X_1 -1e-3)\n(Y_0 2.0)\n(Y_1  3))\n")
    assert verdict.status is Status.SAT and verdict.reason == ""
    assert verdict.counterexample == {"x": [0.5, -0.001], "y": [2.0, 3.0]}
    violated = parse_vnncomp_result("violated\n((X_0 1.0))")
    assert violated.status is Status.SAT and violated.counterexample == {"x": [1.0]}


@pytest.mark.parametrize("body, problem", [
    ("", "no counterexample after sat"),
    ("((Y_0 1.0))", "no X values"),
    ("((X_0 1.0)\n(X_2 2.0))", "indices are not 0..1"),
    ("((X_0 1.0)\n(X_0 2.0))", "appears twice"),
    ("((X_0 nan))", "X_0 is nan"),
    ("((X_0 one))", "not a number"),
])
def test_parser_bad_counterexample_stays_sat_without_one(body, problem):
    verdict = parse_vnncomp_result(f"sat\n{body}")
    assert verdict.status is Status.SAT and verdict.counterexample is None
    assert problem in verdict.reason
    cex, reason = parse_counterexample(body)
    assert cex is None and problem in reason


def test_parser_keeps_full_precision():
    value = 0.1 + 0.2
    cex, _ = parse_counterexample(f"((X_0 {value!r}))")
    assert cex["x"][0] == value and not math.isnan(cex["x"][0])
