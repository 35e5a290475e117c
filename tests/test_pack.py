"""`bench pack`: a benchmark folder made ready for VNN-COMP."""
from __future__ import annotations

import ast
import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.share.check import check_benchmark
from bench.config import make_config
from bench.data import load_dataset
from bench.errors import BenchError
from bench.formats.folder import load_manifest
from bench.build.export import ExportedModel, write_benchmark
from bench.share.pack import pack_benchmark, verified_accuracy_from_db
from bench.build.pipeline import build_instances, train_levels
from bench.run.results import COLUMNS, ResultsDB
from bench.formats.vnnlib import robustness_property
from bench.formats.vnnlib2 import is_vnnlib2


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    base = tmp_path_factory.mktemp("build")
    return make_config(dataset="digits", model="mlp", epochs=1, levels=1, samples=4,
                       train_samples=300, out=str(base / "instances"), runs_dir=str(base / "runs"))


@pytest.fixture(scope="module")
def source(config) -> Path:
    """Our benchmark: 2 levels (dense and one pruned) x 4 samples of digits."""
    return build_instances(config, progress=False)


@pytest.fixture(scope="module")
def packed(source, tmp_path_factory) -> Path:
    return pack_benchmark(source, tmp_path_factory.mktemp("pack") / "packed",
                          verified={0: 75.0})


@pytest.fixture(scope="module")
def packed_seed(source, tmp_path_factory) -> Path:
    return pack_benchmark(source, tmp_path_factory.mktemp("pack") / "seeded", seed=3)


def _rows(folder: Path) -> list[list[str]]:
    with open(folder / "instances.csv", newline="") as handle:
        return [row for row in csv.reader(handle) if row]


def _run_script(folder: Path, seed: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """As VNN-COMP runs it: its own process, cwd the benchmark folder, and a PYTHONPATH whose
    `bench` package fails on import, so the script cannot lean on prune-bench."""
    poison = tmp_path / "poison"
    (poison / "bench").mkdir(parents=True, exist_ok=True)
    (poison / "bench" / "__init__.py").write_text(
        "raise ImportError('generate_properties.py must not import bench')\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(poison)}
    return subprocess.run([sys.executable, "generate_properties.py", str(seed)], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)


def _generated(folder: Path) -> dict[str, bytes]:
    files = {"instances.csv": (folder / "instances.csv").read_bytes()}
    for path in sorted((folder / "vnnlib").iterdir()):
        files[f"vnnlib/{path.name}"] = path.read_bytes()
    return files


def test_layout_and_gzipped_files_are_the_originals(source, packed):
    manifest = load_manifest(source)
    assert sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*") if p.is_file()) \
        == sorted(["README.md", "data/pool.npz", "generate_properties.py", "instances.csv",
                   "manifest.json"]
                  + [f"{m['onnx']}.gz" for m in manifest["models"]]
                  + [f"{p['vnnlib']}.gz" for p in manifest["properties"]])
    files = [m["onnx"] for m in manifest["models"]] + [p["vnnlib"] for p in manifest["properties"]]
    for rel in files:
        assert gzip.decompress((packed / f"{rel}.gz").read_bytes()) == (source / rel).read_bytes()
    # Nothing reduced: the build's instances.csv, listing the names VNN-COMP has after gunzip.
    assert (packed / "instances.csv").read_bytes() == (source / "instances.csv").read_bytes()


def test_packed_folders_pass_check(packed, packed_seed):
    assert check_benchmark(packed) == []
    assert check_benchmark(packed_seed) == []


def test_generate_properties_imports_only_numpy_and_the_standard_library(packed):
    tree = ast.parse((packed / "generate_properties.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules <= {"__future__", "csv", "hashlib", "io", "json", "sys", "pathlib", "numpy"}


def test_generate_properties_is_deterministic_and_seeded(packed, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = shutil.copytree(packed, tmp_path / name)
        done = _run_script(folder, seed, tmp_path)
        assert done.returncode == 0, done.stderr
        runs[name] = _generated(folder)
        # Plain .vnnlib files now; the shipped .gz properties are gone, the folder still checks.
        assert not list((folder / "vnnlib").glob("*.gz"))
        assert check_benchmark(folder) == []
    assert runs["a"] == runs["b"]
    assert set(runs["a"]) != set(runs["c"])  # another seed, other samples

    pool = np.load(packed / "data" / "pool.npz", allow_pickle=False)
    rows = [row for row in csv.reader(runs["a"]["instances.csv"].decode().splitlines())]
    models = [str(m) for m in pool["onnx"]]
    chosen = sorted({row[1] for row in rows})
    assert len(chosen) == int(pool["properties"]) == 4
    assert rows == [[m, v, "300"] for m in models for v in chosen]
    for rel in chosen:
        index = int(rel.split("_")[1].split(".")[0])
        position = int(np.flatnonzero(pool["index"] == index)[0])
        assert pool["correct"][:, position].all()  # every model classifies it correctly
        # Byte for byte what prune-bench's own writer gives for that sample.
        expected = robustness_property(pool["x"][position], int(pool["y"][position]),
                                       float(pool["eps"]), int(pool["num_outputs"]))
        assert runs["a"][rel].decode() == expected


def test_generate_properties_rejects_a_bad_seed(packed, tmp_path):
    folder = shutil.copytree(packed, tmp_path / "bad")
    done = _run_script(folder, -1, tmp_path)
    assert done.returncode == 2 and "SEED" in done.stderr


def test_pack_with_a_seed_ships_what_the_script_writes(packed_seed, tmp_path):
    shipped = {rel: gzip.decompress((packed_seed / f"{rel}.gz").read_bytes())
               for rel in sorted({row[1] for row in _rows(packed_seed)})}
    instances = (packed_seed / "instances.csv").read_bytes()
    folder = shutil.copytree(packed_seed, tmp_path / "again")
    assert _run_script(folder, 3, tmp_path).returncode == 0
    again = _generated(folder)
    assert again.pop("instances.csv") == instances
    assert again == shipped


def test_cap_reduces_properties_per_model(source, tmp_path):
    # Room for 2 properties x 2 models x 300 s, not 3.
    packed = pack_benchmark(source, tmp_path / "capped", max_total_timeout=1500)
    rows = _rows(packed)
    assert len(rows) == 4 and sum(float(r[2]) for r in rows) <= 1500
    assert sorted({r[1] for r in rows}) == ["vnnlib/sample_0000.vnnlib",
                                            "vnnlib/sample_0001.vnnlib"]
    assert sorted(p.name for p in (packed / "vnnlib").iterdir()) == \
        ["sample_0000.vnnlib.gz", "sample_0001.vnnlib.gz"]
    readme = (packed / "README.md").read_text()
    assert "**Reduced**" in readme and "2 properties per model are kept" in readme
    assert int(np.load(packed / "data" / "pool.npz")["properties"]) == 2
    assert check_benchmark(packed) == []

    seeded = pack_benchmark(source, tmp_path / "capped_seed", seed=5, max_total_timeout=1500)
    assert len(_rows(seeded)) == 4


def test_cap_refuses_when_not_one_property_per_model_fits(source, tmp_path):
    with pytest.raises(BenchError, match="cap") as info:
        pack_benchmark(source, tmp_path / "none", max_total_timeout=500)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "none").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".none")]


def test_readme_lists_each_model(source, packed):
    manifest = load_manifest(source)
    readme = (packed / "README.md").read_text()
    assert "VNN-COMP's cap: 21600 s" in readme and "2400 s in all" in readme
    lines = {line.split("|")[1].strip(): line for line in readme.splitlines()
             if line.startswith("| `onnx/")}
    for model in manifest["models"]:
        line = lines[f"`{model['onnx']}`"]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == str(model["level"])
        assert cells[2] == f"{model['remain_ratio']:.4f}"
        assert cells[3] == f"{1 - model['remain_ratio']:.4f}"
        assert cells[4] == f"{model['parameters']:,}"
        assert cells[5] == f"{model['nonzero_parameters']:,}"
        assert cells[6] == f"{100 * model['clean_accuracy']:.2f} %"
        assert cells[7] == ("75.00 %" if model["level"] == 0 else "n/a")
    assert "python generate_properties.py SEED" in readme


def test_refuses_existing_destination_and_tampered_source(source, packed, tmp_path):
    with pytest.raises(BenchError, match="already exists"):
        pack_benchmark(source, packed)
    copy = shutil.copytree(source, tmp_path / "tampered")
    with open(copy / "vnnlib" / "sample_0000.vnnlib", "a") as handle:
        handle.write("; changed\n")
    with pytest.raises(BenchError, match="fails `bench check`.*sha256"):
        pack_benchmark(copy, tmp_path / "out")


def test_verified_accuracy_from_db(source, tmp_path):
    manifest = load_manifest(source)
    db_path = tmp_path / "results.db"
    empty = {name: None for name in COLUMNS}
    with ResultsDB(db_path) as db:
        for inst in manifest["instances"]:
            if inst["level"] == 1 and inst["sample_index"] == 3:
                continue  # level 1 is incomplete: its verified accuracy is unknown
            db.record({**empty, "benchmark": source.name, "root": str(source),
                       "onnx": inst["onnx"], "vnnlib": inst["vnnlib"], "verifier": "v",
                       "status": "unsat", "started_at": "2026-01-01T00:00:00"})
    level0 = [i for i in manifest["instances"] if i["level"] == 0]
    expected = 100.0 * sum(bool(i["correct"]) for i in level0) / len(level0)
    assert verified_accuracy_from_db(db_path, source.name, "v") == {0: expected}
    with pytest.raises(BenchError, match="no results"):
        verified_accuracy_from_db(db_path, source.name, "other")


def test_pack_a_vnnlib_2_benchmark(config, source, tmp_path):
    """The same build exported with VNN-LIB 2.0 properties: the pool check, the shipped files
    and generate_properties.py all speak 2.0."""
    pytest.importorskip("vnnlib")  # bench check parses 2.0 files with it
    dataset = load_dataset("digits")
    levels = train_levels(config, dataset, progress=False)  # finished: loaded, not retrained
    manifest = load_manifest(source)
    root = tmp_path / "v2"
    write_benchmark(root, manifest["config"], manifest["dataset"],
                    [ExportedModel(lv.level, lv.model, lv.metrics["remain_ratio"],
                                   lv.metrics["clean_accuracy"], lv.metrics["layer_sparsity"])
                     for lv in levels],
                    dataset.test_x[:4], dataset.test_y[:4], list(range(4)),
                    eps=config.properties.eps, timeout=config.properties.timeout,
                    vnnlib_version=2)
    as_built = pack_benchmark(root, tmp_path / "packed_v2")
    assert gzip.decompress((as_built / "vnnlib" / "sample_0000.vnnlib.gz").read_bytes()) == \
        (root / "vnnlib" / "sample_0000.vnnlib").read_bytes()
    seeded = pack_benchmark(root, tmp_path / "packed_v2_seed", seed=4)
    for folder in (as_built, seeded):
        assert check_benchmark(folder) == []  # parsed by the vnnlib package
        for path in (folder / "vnnlib").iterdir():
            assert is_vnnlib2(gzip.decompress(path.read_bytes()).decode())
    assert "VNN-LIB 2.0 properties" in (seeded / "README.md").read_text()


# --- checksums, identity, running the packed folder ---------------------------------------------

def _regzip(path: Path, data: bytes) -> None:
    with open(path, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out,
                                                mtime=0) as packed:
        packed.write(data)


def test_packed_folder_has_checksums_of_every_file(source, packed):
    manifest = load_manifest(packed)
    shipped = sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == shipped
    assert manifest["benchmark"] == load_manifest(source)["benchmark"]
    assert manifest["packed"]["seed"] is None
    assert manifest["packed"]["source_benchmark_hash"] == load_manifest(source)["benchmark_hash"]
    assert [(i["onnx"], i["vnnlib"]) for i in manifest["instances"]] == \
        [tuple(row[:2]) for row in _rows(packed)]


def test_widened_bound_inside_a_gz_fails_the_check(packed, tmp_path):
    folder = shutil.copytree(packed, tmp_path / "widened")
    path = folder / "vnnlib" / "sample_0001.vnnlib.gz"
    text = gzip.decompress(path.read_bytes()).decode()
    line = next(line for line in text.splitlines() if line.startswith("(assert (<= X_0 "))
    _regzip(path, text.replace(line, "(assert (<= X_0 1.0))").encode())  # still a valid file
    problems = check_benchmark(folder)
    assert [(p.severity, p.path) for p in problems] == [("error", "vnnlib/sample_0001.vnnlib.gz")]
    assert "sha256" in problems[0].message


def test_model_copied_over_another_fails_the_check(packed, tmp_path):
    folder = shutil.copytree(packed, tmp_path / "swapped")
    shutil.copyfile(folder / "onnx" / "level_00.onnx.gz", folder / "onnx" / "level_01.onnx.gz")
    problems = check_benchmark(folder)
    assert [(p.severity, p.path) for p in problems] == [("error", "onnx/level_01.onnx.gz")]


def test_rerunning_the_script_keeps_the_manifest_true(packed, tmp_path):
    folder = shutil.copytree(packed, tmp_path / "rerun")
    assert _run_script(folder, 11, tmp_path).returncode == 0
    manifest = load_manifest(folder)
    assert manifest["packed"]["seed"] == 11
    assert [[i["onnx"], i["vnnlib"], "300"] for i in manifest["instances"]] == _rows(folder)
    pool = np.load(folder / "data" / "pool.npz", allow_pickle=False)
    for inst in manifest["instances"]:
        position = int(np.flatnonzero(pool["index"] == inst["sample_index"])[0])
        assert inst["label"] == int(pool["y"][position]) and inst["correct"] is True
    assert check_benchmark(folder) == []
    # The script's benchmark hash is bench's.
    from bench.formats.folder import read_listing

    assert manifest["benchmark_hash"] == read_listing(folder).benchmark_hash


def test_packed_folder_keeps_the_benchmark_name_under_any_folder_name(source, packed, tmp_path):
    from bench.formats.folder import read_instances

    unpacked = shutil.copytree(packed, tmp_path / "downloaded-from-somewhere")
    instances = read_instances(unpacked)
    assert {i.benchmark for i in instances} == {source.name}
    assert {i.benchmark_hash for i in instances} == {load_manifest(packed)["benchmark_hash"]}
    # Listed as after gunzip; read from the .gz.
    assert all(i.onnx_path.name.endswith(".onnx.gz") and i.vnnlib_path.name.endswith(
        ".vnnlib.gz") for i in instances)
    assert [(i.onnx, i.vnnlib) for i in instances] == [tuple(r[:2]) for r in _rows(packed)]


def test_bench_run_runs_a_packed_folder_like_its_source(source, packed, tmp_path):
    """The packed folder, renamed as a download would be, runs under the same keys as the folder
    it was packed from, and its tool reads plain files (the fake tool reads the property as
    text: a .gz would be an error)."""
    import fake_verifier as fv
    from bench.run.results import read_rows
    from bench.run.runner import run_benchmarks

    unpacked = shutil.copytree(packed, tmp_path / "unpacked")
    answers = {}
    for name, folder in (("source", source), ("packed", unpacked)):
        db = tmp_path / f"{name}.db"
        summary = run_benchmarks([folder], fv.NAME, db, progress=False)
        assert summary.counts == {"unsat": 8}, summary
        answers[name] = {(r["benchmark"], r["onnx"], r["vnnlib"]): r["status"]
                         for r in read_rows(db)}
    assert answers["packed"] == answers["source"]
    assert {key[0] for key in answers["packed"]} == {source.name}


def test_pack_takes_verified_accuracy_by_the_benchmark_name(source, tmp_path):
    from bench.cli import main

    manifest = load_manifest(source)
    renamed = shutil.copytree(source, tmp_path / "renamed-source")
    db_path = tmp_path / "results.db"
    empty = {name: None for name in COLUMNS}
    with ResultsDB(db_path) as db:
        for inst in manifest["instances"]:
            db.record({**empty, "benchmark": manifest["benchmark"], "root": str(source),
                       "onnx": inst["onnx"], "vnnlib": inst["vnnlib"], "verifier": "milp",
                       "status": "unsat", "started_at": "2026-01-01T00:00:00"})
    result = CliRunner().invoke(main, ["pack", str(renamed), "--out", str(tmp_path / "out"),
                                       "--results", str(db_path)])
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| n/a |" not in readme  # every level's verified accuracy was found


def test_pack_defaults_to_the_trusted_verifier():
    from bench.cli.share import pack

    (option,) = [p for p in pack.params if p.name == "verifier"]
    assert option.default == "milp"


def test_pack_refuses_a_manifest_with_an_infinite_timeout(source, tmp_path):
    import json

    copy = shutil.copytree(source, tmp_path / "inf")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["timeout"] = 1e308 * 10
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match="timeout must be a finite number of seconds") as info:
        pack_benchmark(copy, tmp_path / "out")
    assert len(str(info.value)) < 400


def test_build_records_unstable_relus_per_instance_and_relus_per_model(source):
    """The Addendum's fields: ``relus`` per model (the mlp: two hidden layers of 32) and, per
    instance, the ReLUs unstable under its property's box by CROWN and by IBP bounds."""
    manifest = load_manifest(source)
    assert [m["relus"] for m in manifest["models"]] == [64, 64]
    for inst in manifest["instances"]:
        for name in ("unstable_relus", "unstable_relus_ibp"):
            assert isinstance(inst[name], int) and 0 <= inst[name] <= 64
    for model in manifest["models"]:
        counts = [i["unstable_relus"] for i in manifest["instances"]
                  if i["level"] == model["level"]]
        assert sum(counts) == pytest.approx(model["unstable_ratio"] * len(counts) * 64)
