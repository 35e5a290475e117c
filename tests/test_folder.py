"""The benchmark folder contract (bench.formats.folder): one reader of instances.csv for run and
check, the benchmark's identity (name and content hash), compressed files within limits."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import fake_verifier as fv
from bench.build.export import write_benchmark
from bench.cli import main
from bench.errors import BenchError
from bench.formats import folder as folder_module
from bench.formats.folder import (INSTANCES, MANIFEST, FileProblem, Instance, Limits,
                                  benchmark_name, content_hash, format_timeout, load_manifest,
                                  materialize, plain_copy, read_instances, read_listing,
                                  sha256_file)
from bench.run.runner import run_benchmarks, shard_instances
from bench.share.check import check_benchmark

from test_check import write_tiny_benchmark


@pytest.fixture
def foreign(tmp_path) -> Path:
    """A foreign benchmark (no manifest) for the fake verifier: three instances."""
    return fv.make_benchmark(tmp_path / "foreign", [("unsat", 0), ("sat", 0), ("unsat", 0)])


@pytest.fixture
def ours(tmp_path) -> Path:
    return write_tiny_benchmark(tmp_path / "tiny-benchmark")


def set_rows(root: Path, *rows: str) -> None:
    (root / INSTANCES).write_text("".join(f"{row}\n" for row in rows))


def run_cli(root: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(main, ["run", "--instances", str(root), "--verifier", fv.NAME,
                                     "--results", str(tmp_path / "results.db"), "--quiet",
                                     *extra])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- timeouts: one rule in instances.csv, in run and in check ------------------------------------

TIMEOUT_RULE = "timeout must be a finite number of seconds above 0"  # bench.formats.rules
HOSTILE_TIMEOUTS = ["inf", "1e400", "nan", "-5", "0", "604801", "1e308", "soon"]


@pytest.mark.parametrize("timeout", HOSTILE_TIMEOUTS)
def test_run_and_check_refuse_the_same_timeouts(foreign, timeout):
    set_rows(foreign, "net0.onnx,prop_0_000.vnnlib,60", f"net0.onnx,prop_0_001.vnnlib,{timeout}")
    with pytest.raises(BenchError) as info:
        read_instances(foreign)
    message = str(info.value)
    assert f"{INSTANCES}, line 2: " in message and "\n" not in message
    assert len(message) < 400  # never a 300-digit number
    # (The fake verifier's files are no real models: only instances.csv matters here.)
    problems = [p for p in check_benchmark(foreign) if p.path == INSTANCES]
    assert [p.severity for p in problems] == ["error"]
    # Word for word the rule's message, in both commands.
    assert problems[0].message == "line 2: " + message.split(", line 2: ", 1)[1]


def test_the_largest_allowed_timeout_is_one_week(foreign):
    set_rows(foreign, "net0.onnx,prop_0_000.vnnlib,604800", "net0.onnx,prop_0_001.vnnlib,0.5")
    assert [i.timeout for i in read_instances(foreign)] == [604800.0, 0.5]


def test_bench_run_refuses_an_infinite_timeout_before_any_tool_starts(foreign, tmp_path,
                                                                        monkeypatch):
    set_rows(foreign, "net0.onnx,prop_0_000.vnnlib,inf")
    ledger = tmp_path / "ledger"
    monkeypatch.setenv(fv.LEDGER_ENV, str(ledger))
    result = run_cli(foreign, tmp_path)
    assert_one_line_error(result, "line 1", "timeout", "one week")
    assert fv.read_ledger(ledger) == [] and not (tmp_path / "results_logs").exists()


@pytest.mark.parametrize("timeout", [1e308, 1e15, 3e20, 0.1, 300.0, 12.5])
def test_printed_timeouts_are_short(timeout):
    text = format_timeout(timeout)
    assert len(text) <= 24 and float(text) == timeout  # repr of a float: never 300 digits


def test_manifest_timeouts_obey_the_rule(ours):
    manifest = json.loads((ours / MANIFEST).read_text())
    manifest["timeout"] = 1e400  # json writes Infinity
    (ours / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match=f"'timeout': {TIMEOUT_RULE}"):
        load_manifest(ours)
    with pytest.raises(BenchError, match=TIMEOUT_RULE):
        read_instances(ours)  # our manifest names the benchmark: a broken one is refused
    (problem,) = check_benchmark(ours)
    assert problem.path == MANIFEST and TIMEOUT_RULE in problem.message

    manifest["timeout"] = 60
    manifest["instances"][1]["timeout"] = float("nan")
    (ours / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match=f"instance 1: {TIMEOUT_RULE}"):
        load_manifest(ours)


@pytest.mark.parametrize("eps, timeout, what", [
    (float("inf"), 60, "eps"), (float("nan"), 60, "eps"), (1.5, 60, "eps"), (-0.1, 60, "eps"),
    (0.05, float("inf"), "timeout"), (0.05, 1e9, "timeout"), (0.05, 0, "timeout"),
])
def test_export_refuses_what_the_rules_refuse(tmp_path, eps, timeout, what):
    root = tmp_path / "bad"
    with pytest.raises(BenchError, match=f"{what} must be") as info:
        _export_tiny(root, eps=eps, timeout=timeout)
    assert "\n" not in str(info.value)
    assert not root.exists()  # refused before any file was written


def _export_tiny(root: Path, eps: float, timeout: float) -> None:
    import torch
    from torch import nn

    from bench.build.export import ExportedModel

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    write_benchmark(root, {}, {"name": "tiny", "mean": [0.5], "std": [0.25],
                               "input_shape": [1, 4, 4], "num_classes": 3},
                    [ExportedModel(0, model, 1.0, 0.5, {})], torch.rand(1, 1, 4, 4),
                    torch.tensor([0]), [0], eps=eps, timeout=timeout)


# --- the file itself: encoding, size, emptiness ------------------------------------------------

def test_non_utf8_instances_csv_is_one_line(foreign, tmp_path):
    (foreign / INSTANCES).write_bytes("net0.onnx,prop_0_000.vnnlib,60 # é\n".encode("latin-1"))
    with pytest.raises(BenchError, match="not UTF-8 text .* save it as UTF-8"):
        read_instances(foreign)
    assert_one_line_error(run_cli(foreign, tmp_path), "not UTF-8")
    (problem,) = check_benchmark(foreign)
    assert problem.path == INSTANCES and "not UTF-8" in problem.message


def test_byte_order_mark_is_not_part_of_the_first_path(foreign):
    text = (foreign / INSTANCES).read_text()
    (foreign / INSTANCES).write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_instances(foreign)[0].onnx == "net0.onnx"


@pytest.mark.parametrize("content", ["", "\n\n  \n", " , , \n"])
def test_empty_instances_csv_is_refused_not_zero_run(foreign, tmp_path, content):
    (foreign / INSTANCES).write_text(content)
    with pytest.raises(BenchError, match="lists no instances"):
        read_instances(foreign)
    assert_one_line_error(run_cli(foreign, tmp_path), "lists no instances")
    assert [p.message for p in check_benchmark(foreign)] == [
        "lists no instances: a benchmark lists one 'onnx,vnnlib,timeout' row per instance"]


def test_instances_csv_over_its_size_limit(foreign):
    with pytest.raises(BenchError, match="more than the limit of 10"):
        read_instances(foreign, Limits(csv_bytes=10))


def test_a_field_over_the_csv_limit_is_a_problem_not_a_traceback(foreign):
    (foreign / INSTANCES).write_text('"' + "x" * 200_000 + '",a,60\n')
    with pytest.raises(BenchError, match="not a CSV file"):
        read_instances(foreign)


# --- listed files: found (X or X.gz), readable, or the folder is refused -------------------------

def test_missing_files_are_refused_before_any_tool_starts(foreign, tmp_path, monkeypatch):
    (foreign / "prop_0_001.vnnlib").unlink()
    (foreign / "net0.onnx").rename(foreign / "elsewhere.onnx")
    with pytest.raises(BenchError) as info:
        read_instances(foreign)
    message = str(info.value)
    assert "2 file(s) listed in instances.csv cannot be used" in message
    assert "net0.onnx: missing (listed in instances.csv, line 1)" in message
    assert f"bench check {foreign.resolve()}" in message and "\n" not in message

    ledger = tmp_path / "ledger"
    monkeypatch.setenv(fv.LEDGER_ENV, str(ledger))
    summary = None
    with pytest.raises(BenchError):
        summary = run_benchmarks([foreign], fv.NAME, tmp_path / "r.db", progress=False)
    assert summary is None and fv.read_ledger(ledger) == []
    assert_one_line_error(run_cli(foreign, tmp_path), "cannot be used", "bench check")
    assert not (tmp_path / "results_logs").exists()


def test_a_directory_is_not_a_file(foreign):
    (foreign / "net0.onnx").unlink()
    (foreign / "net0.onnx").mkdir()
    with pytest.raises(BenchError, match="net0.onnx: missing"):
        read_instances(foreign)


def test_unreadable_file_is_refused(foreign, monkeypatch):
    real = folder_module.sha256_file

    def unreadable(path):
        if Path(path).name == "prop_0_002.vnnlib":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(folder_module, "sha256_file", unreadable)
    with pytest.raises(BenchError, match="prop_0_002.vnnlib: cannot read: Permission denied "
                                         r"\(listed in instances.csv, line 3\)"):
        read_instances(foreign)


def test_listed_files_over_their_limit_are_refused(foreign):
    with pytest.raises(BenchError, match="prop_0_000.vnnlib: .* more than the limit of 5"):
        read_instances(foreign, Limits(vnnlib_bytes=5))


def test_gzipped_files_stand_for_their_listed_names(foreign, tmp_path):
    for name in ("net0.onnx", "prop_0_001.vnnlib"):
        path = foreign / name
        Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    first, second, _ = read_instances(foreign)
    # Identity as listed; the file to read is the .gz.
    assert (second.onnx, second.vnnlib) == ("net0.onnx", "prop_0_001.vnnlib")
    assert second.onnx_path == foreign.resolve() / "net0.onnx.gz"
    assert second.vnnlib_path == foreign.resolve() / "prop_0_001.vnnlib.gz"
    assert first.vnnlib_path == foreign.resolve() / "prop_0_000.vnnlib"
    # Plain copies for the tools, named by the compressed file's hash; identity unchanged.
    plain = materialize(second, tmp_path / "cache")
    assert plain.vnnlib_path.read_bytes() == gzip.decompress(second.vnnlib_path.read_bytes())
    assert plain.vnnlib_path.parent.parent == tmp_path / "cache"
    assert (plain.benchmark, plain.onnx, plain.vnnlib) == (second.benchmark, "net0.onnx",
                                                            "prop_0_001.vnnlib")
    assert materialize(second, tmp_path / "cache") == plain  # made once


def test_materialize_refuses_a_gzip_bomb_without_inflating_it(foreign, tmp_path):
    bomb = foreign / "prop_0_001.vnnlib.gz"
    bomb.write_bytes(gzip.compress(b";" * (4 << 20)))  # 4 MiB of comment in 4 KiB
    (foreign / "prop_0_001.vnnlib").unlink()
    instance = read_instances(foreign)[1]
    with pytest.raises(BenchError, match="decompresses to more than the limit of 1048576") as info:
        materialize(instance, tmp_path / "cache", Limits(vnnlib_bytes=1 << 20))
    assert str(bomb) in str(info.value)
    assert isinstance(info.value, FileProblem)  # what the runner records as the row's error
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left
    with pytest.raises(BenchError, match="not a valid gzip file|truncated"):
        bad = foreign / "broken.vnnlib.gz"
        bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
        plain_copy(bad, tmp_path / "cache", 1 << 20)


# --- the benchmark's identity: its name and content hash, not its folder ------------------------

def test_our_benchmark_keeps_its_name_and_hash_when_copied(ours, tmp_path):
    manifest = load_manifest(ours)
    copy = shutil.copytree(ours, tmp_path / "downloaded" / "renamed")
    original, copied = read_instances(ours), read_instances(copy)
    assert {i.benchmark for i in original} == {i.benchmark for i in copied} == {"tiny-benchmark"}
    assert {i.benchmark_hash for i in copied} == {manifest["benchmark_hash"]}
    assert {i.benchmark_hash for i in original} == {manifest["benchmark_hash"]}
    # The recorded hash is the documented one: the sha256sum listing of the 'files' table.
    assert manifest["benchmark_hash"] == content_hash(manifest["files"])
    for shard in ("1/3", "2/3", "3/3"):
        assert [(i.onnx, i.vnnlib) for i in shard_instances(original, shard)] == \
            [(i.onnx, i.vnnlib) for i in shard_instances(copied, shard)]


def test_foreign_benchmark_is_named_by_its_folder_and_hashed_by_content(foreign, tmp_path):
    instances = read_instances(foreign)
    assert {i.benchmark for i in instances} == {"foreign"}
    listing = read_listing(foreign)
    expected = {INSTANCES: sha256_file(foreign / INSTANCES)}
    expected.update({name: sha256_file(foreign / name) for name in
                     ("net0.onnx", "prop_0_000.vnnlib", "prop_0_001.vnnlib",
                      "prop_0_002.vnnlib")})
    assert listing.files() == expected
    assert {i.benchmark_hash for i in instances} == {content_hash(expected)}
    copy = shutil.copytree(foreign, tmp_path / "other")
    assert read_instances(copy)[0].benchmark_hash == instances[0].benchmark_hash
    with open(copy / "prop_0_002.vnnlib", "a") as handle:
        handle.write("; one more byte\n")
    assert read_instances(copy)[0].benchmark_hash != instances[0].benchmark_hash
    (copy / "unlisted.txt").write_text("not part of the benchmark")
    assert benchmark_name(copy) == "other"


@pytest.mark.parametrize("name", ["../escape", "a/b", "line\nbreak", "", ".", 7, None])
def test_hostile_names_in_the_manifest_are_refused(ours, name):
    manifest = json.loads((ours / MANIFEST).read_text())
    manifest["benchmark"] = name
    (ours / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match="is not a name") as info:
        read_instances(ours)
    assert "\n" not in str(info.value)


def test_broken_manifest_is_refused_and_a_foreign_one_ignored(ours):
    (ours / MANIFEST).write_text("{not json")
    with pytest.raises(BenchError, match="cannot read .*manifest.json"):
        read_instances(ours)
    (ours / MANIFEST).write_text(json.dumps({"schema": "someone else's"}))
    assert {i.benchmark for i in read_instances(ours)} == {"tiny-benchmark"}
    assert benchmark_name(ours) == ours.name


def test_manifest_benchmark_hash_is_checked(ours):
    manifest = json.loads((ours / MANIFEST).read_text())
    manifest["benchmark_hash"] = "0" * 64
    (ours / MANIFEST).write_text(json.dumps(manifest))
    (problem,) = check_benchmark(ours)
    assert problem.path == MANIFEST and "'benchmark_hash' is not the hash" in problem.message


def test_missing_manifest_names_the_real_command(tmp_path):
    with pytest.raises(BenchError, match="bench build-instances") as info:
        load_manifest(tmp_path)
    assert "`bench build`" not in str(info.value)


def test_instance_paths_default_to_the_listed_files(tmp_path):
    instance = Instance("b", tmp_path, "a.onnx", "p.vnnlib", 60)
    assert (instance.onnx_path, instance.vnnlib_path) == (tmp_path / "a.onnx",
                                                          tmp_path / "p.vnnlib")


def test_two_folders_of_one_benchmark_must_hold_the_same_files(tmp_path):
    from bench.formats.folder import read_benchmarks

    original = write_tiny_benchmark(tmp_path / "a" / "tiny")
    copy = shutil.copytree(original, tmp_path / "b" / "tiny-copy")
    both = read_benchmarks([original, copy])
    assert len(both) == 2 * len(read_instances(original))
    with open(copy / "vnnlib" / "sample_0000.vnnlib", "a") as handle:
        handle.write("; changed\n")
    with pytest.raises(BenchError, match="both hold benchmark 'tiny' but their files differ"):
        read_benchmarks([original, copy])


def test_vnncomp_tools_never_get_a_gzip_bomb_inflated(tmp_path):
    """A .vnnlib.gz that inflates past the property limit (64 MiB) is refused before the tool
    starts, and nothing near that size is written."""
    import gzip

    from bench.formats.folder import Instance
    from bench.verifiers.vnncomp import VnnComp

    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "run_instance.sh").write_text("#!/bin/bash\necho unsat > \"$5\"\n")
    root = tmp_path / "bench"
    root.mkdir()
    (root / "net.onnx").write_bytes(b"model")
    (root / "prop.vnnlib.gz").write_bytes(gzip.compress(b"\0" * ((64 << 20) + 1), 1))
    instance = Instance("bench", root, "net.onnx", "prop.vnnlib", 60,
                        vnnlib_file=root / "prop.vnnlib.gz")
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(BenchError, match="decompresses to more than the limit of 67108864"):
        VnnComp(tool_dir=str(tool)).command(instance, workdir)
    written = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    assert written == 0


def test_a_manifest_without_name_or_files_loads_but_fails_the_check(ours):
    manifest = json.loads((ours / MANIFEST).read_text())
    del manifest["benchmark"], manifest["files"]
    (ours / MANIFEST).write_text(json.dumps(manifest))
    assert load_manifest(ours)["instances"]  # collation reads what it has
    assert benchmark_name(ours) == "tiny-benchmark"  # the folder's name
    messages = sorted(p.message for p in check_benchmark(ours) if p.path == MANIFEST)
    assert messages == [
        "has no 'benchmark' (the benchmark's name); rebuild it with `bench build-instances`",
        "has no 'files' table of sha256 hashes; rebuild it with `bench build-instances`"]
