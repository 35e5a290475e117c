"""Pack a benchmark folder for VNN-COMP: ``bench pack SRC --out DEST [--seed S] [--select
graded --budget 6h --results DB ...]``.

The packed folder::

    DEST/instances.csv              onnx/X.onnx,vnnlib/Y.vnnlib,timeout (the names VNN-COMP
                                    uses after unzipping)
    DEST/onnx/level_00.onnx.gz      the models, gzipped as VNN-COMP publishes them
    DEST/vnnlib/sample_0000.vnnlib.gz
    DEST/generate_properties.py     `python generate_properties.py SEED`: numpy only
    DEST/data/pool.npz              the candidate samples that script selects from
    DEST/README.md                  the properties, the selection, and each model's statistics
    DEST/reference/                 with results databases (and no seed): the shipped
                                    instances' reference results (CSV, Markdown), difficulty
                                    histogram, cactus plot, time vs unstable ReLUs
    DEST/manifest.json              the source's manifest for the shipped instances: the
                                    benchmark's name and content hash, and the sha256 of every
                                    other file of DEST (checked by `bench check`)

Which properties are shipped:

- ``seed=None``: the build's own properties, byte for byte (the first N test samples, whether
  or not a model misclassifies them), so results of ``bench run`` on the source folder are
  results on the shipped instances, and the README's verified accuracy describes them.
- ``seed=S``: what ``generate_properties.py S`` writes: N samples drawn from the pool among
  those every model classifies correctly (see that script). VNN-COMP reruns it with its own seed.
- ``select="graded"`` (no seed): the instances and models ``bench.share.graded`` chooses by the
  difficulty measured in the results databases, filling the budget (``max_total_timeout``),
  with the build's own property files; the README states the rule and the mix.

The pool also predicts each candidate's difficulty: its unstable ReLUs under the property's box
on each shipped model (CROWN bounds intersected with IBP's, ``bench.build.metrics``, on the ONNX
model converted to torch), averaged over the models (``hardness``), which
``generate_properties.py`` stratifies its draw by. On the samples the build measured, they are
compared with the manifest's ``unstable_relus`` (the same bounds of the same network, so they
agree up to rounding), and the README says how many agree. Where a model cannot be bounded,
the pool has no prediction and the draw is uniform; the README says why.

The pool is the first ``pool_size`` (default 1000) test samples of the benchmark's dataset,
loaded again here; the build's own properties must come out of it byte for byte, which proves
that it is the dataset (and order) the benchmark was built from. Which pool samples each model
classifies correctly is computed here with onnxruntime, since the script may not need it.

The 6-hour cap: VNN-COMP caps the sum of a benchmark's timeouts at 6 hours. When
N x models x timeout exceeds ``max_total_timeout``, the number of properties per model is reduced
(the same for every model, keeping the first ones: the lowest test indices with ``seed=None``,
the first drawn with a seed) to the largest count that fits, and the README says so. Packing is
refused only when not even one property per model fits.

Checksums: the packed ``manifest.json`` is the source's, describing the shipped instances and
properties, with a ``files`` table holding the sha256 of every other file of the packed folder
as shipped (the ``.gz`` files, the pool, the script, the README), its ``benchmark_hash`` (see
``bench.formats.folder``) and a ``packed`` entry (seed, cap, the source's hash). The benchmark
keeps its name: ``bench run`` on the packed folder, under whatever folder name, records results
under the source's name. ``generate_properties.py`` rewrites the manifest's instances,
properties, hashes and benchmark hash along with the properties, so the folder still passes
``bench check`` after VNN-COMP reruns it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import bench
from bench.collate.authors import write_views
from bench.collate.difficulty import BenchmarkDifficulty, assess_benchmark, hardness_score, \
    read_results_rows
from bench.collate.render import markdown_table, render_markdown
from bench.collate.tables import instance_key
from bench.share.graded import GradedSelection, readme_lines, select_graded
from bench.share.check import check_benchmark, format_problems
from bench.errors import BenchError
from bench.formats.folder import (INSTANCES, MANIFEST, REBUILD, VNNCOMP_MAX_TOTAL_TIMEOUT,
                                  atomic_write_text, format_timeout, instances_csv_text,
                                  load_manifest, read_listing, safe_join, sha256_file)

SCRIPT = "generate_properties.py"
POOL = "data/pool.npz"
README = "README.md"
DEFAULT_POOL_SIZE = 1000
DEFAULT_STRATA = 10  # groups of predicted difficulty generate_properties.py draws from equally
_SCRIPT_SOURCE = Path(__file__).with_name("generate_properties.py")


@dataclass
class Shipment:
    """What a selection ships, before a seed (if any) re-selects the properties."""

    models: list[dict]  # manifest model entries, by level
    instances: list[dict]  # manifest instance entries, by level then sample
    properties: list[dict]  # manifest property entries
    per_model: int  # properties per model that generate_properties.py draws
    reduced: bool = False  # fewer properties per model than the benchmark has (the cap)
    graded: GradedSelection | None = None


def _select_all(manifest: dict, assessed: BenchmarkDifficulty | None, cap: float,
                include_trivial: bool) -> Shipment:
    """Every model with the first properties that fit under the cap (all of them if they do)."""
    models = sorted(manifest["models"], key=lambda m: int(m["level"]))
    properties = manifest["properties"]
    timeout = float(manifest["timeout"])  # within the rules: load_manifest checked it
    count = _properties_within_cap(len(properties), len(models), timeout, cap)
    shipped = {p["vnnlib"] for p in properties[:count]}
    return Shipment(models, [i for i in manifest["instances"] if i["vnnlib"] in shipped],
                    properties[:count], count, reduced=count < len(properties))


def _select_graded(manifest: dict, assessed: BenchmarkDifficulty | None, cap: float,
                   include_trivial: bool) -> Shipment:
    """``bench.share.graded``: instances by measured difficulty, filling the budget ``cap``."""
    if assessed is None:
        raise BenchError("--select graded needs the measurements: pass --results DB (repeatable) "
                         "with results of `bench run` on this benchmark")
    selection = select_graded(assessed, cap, include_trivial)
    graded = {(i.onnx, i.vnnlib): i for i in selection.chosen}
    instances = [{**inst, "difficulty": graded[key].difficulty,
                  "reference_outcome": graded[key].outcome}
                 for inst in manifest["instances"]
                 if (key := (inst["onnx"], inst["vnnlib"])) in graded]
    levels = set(selection.levels)
    models = sorted((m for m in manifest["models"] if int(m["level"]) in levels),
                    key=lambda m: int(m["level"]))
    vnnlibs = {i["vnnlib"] for i in instances}
    properties = [p for p in manifest["properties"] if p["vnnlib"] in vnnlibs]
    timeout = float(manifest["timeout"])
    # A rerun of generate_properties.py ships about as many instances, under the same cap.
    per_model = min(max(1, round(len(instances) / len(models))),
                    _properties_within_cap(len(manifest["properties"]), len(models), timeout,
                                           cap))
    return Shipment(models, instances, properties, per_model, graded=selection)


SELECTIONS = {"all": _select_all, "graded": _select_graded}


def pack_benchmark(src: str | Path, dest: str | Path, seed: int | None = None,
                   max_total_timeout: float = VNNCOMP_MAX_TOTAL_TIMEOUT,
                   verified: Mapping[Any, float] | None = None,
                   pool_size: int = DEFAULT_POOL_SIZE, select: str = "all",
                   results: Sequence[str | Path] = (), include_trivial: bool = False,
                   strata: int = DEFAULT_STRATA) -> Path:
    """Write the VNN-COMP folder for the benchmark ``src`` (ours, with a manifest) to ``dest``,
    which must not exist; returns ``dest``.

    ``select`` (``SELECTIONS``): ``all`` ships every model with the benchmark's properties (the
    first ones that fit under ``max_total_timeout``); ``graded`` chooses models and instances by
    the difficulty measured in the ``results`` databases to fill ``max_total_timeout`` (the
    budget; ``bench.share.graded``), leaving trivial instances out unless ``include_trivial``.
    With ``results`` (and no ``seed``), the pack also holds each shipped instance's reference
    results and the views of ``bench.collate.authors`` under ``reference/``. ``strata``: how
    many groups of predicted difficulty ``generate_properties.py`` draws equally from.

    ``verified`` maps a level to its verified accuracy in percent over the source benchmark's
    samples (``verified_accuracy_from_db`` gives it); it only feeds the README."""
    src, dest = Path(src), Path(dest)
    if select not in SELECTIONS:
        raise BenchError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
    if seed is not None and seed < 0:
        raise BenchError(f"seed must be >= 0, got {seed}")
    if seed is not None and select == "graded":
        raise BenchError("--select graded ships the measured instances, which --seed would "
                         "replace by new ones; drop --seed (the packed generate_properties.py "
                         "still draws a stratified selection from any seed)")
    if not (math.isfinite(max_total_timeout) and max_total_timeout > 0):
        raise BenchError(f"the cap on the sum of timeouts must be a positive number of seconds, "
                         f"got {max_total_timeout:g}")
    if pool_size < 1 or strata < 1:
        raise BenchError(f"pool_size and strata must be >= 1, got {pool_size} and {strata}")
    manifest = load_manifest(src)
    if "packed" in manifest:
        raise BenchError(f"{src} is a packed benchmark already; pack the folder it was packed "
                         "from")
    # The whole check, hashes included: what is packed is what was built, and valid.
    problems = [p for p in check_benchmark(src) if p.severity == "error"]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BenchError(f"{src} fails `bench check`: {problems[0]}{more}; {REBUILD}")
    if dest.exists() or dest.is_symlink():
        raise BenchError(f"{dest} already exists; remove it or choose another --out")

    rows = _benchmark_rows(manifest, results) if results else []
    assessed = assess_benchmark(manifest["benchmark"], manifest, rows, src) if rows else None
    shipment = SELECTIONS[select](manifest, assessed, max_total_timeout, include_trivial)
    models = shipment.models
    pool, pool_note = _make_pool(src, manifest, models, pool_size)
    pool.update(properties=np.int64(shipment.per_model),
                max_total_timeout=np.float64(max_total_timeout),
                strata=np.int64(min(strata, shipment.per_model)))

    # Build beside dest and rename at the end: an interrupted pack leaves no half folder
    # that looks finished.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "onnx").mkdir(parents=True)
        (tmp / "vnnlib").mkdir()
        (tmp / "data").mkdir()
        for model in models:
            _gzip_file(_source(src, manifest, model["onnx"]), tmp / f"{model['onnx']}.gz")
        with open(tmp / POOL, "wb") as handle:
            np.savez_compressed(handle, **pool)
        shutil.copyfile(_SCRIPT_SOURCE, tmp / SCRIPT)
        packed = _packed_manifest(src, manifest, seed, max_total_timeout, select, models)
        if seed is None:
            shipped = [p["vnnlib"] for p in shipment.properties]
            _write_own_properties(src, tmp, manifest, packed, shipment)
        else:
            # The script selects the properties and rewrites the manifest's instances.
            packed["files"] = _files_table(tmp)
            _write_manifest(tmp, packed)
            shipped = _run_script(tmp, seed)
            packed = json.loads((tmp / MANIFEST).read_text(encoding="utf-8"))
        for rel in shipped:  # shipped gzipped, as VNN-COMP publishes them
            _gzip_file(tmp / rel, tmp / f"{rel}.gz")
            (tmp / rel).unlink()
        reference = []
        if assessed is not None and seed is None:
            reference = _write_reference(tmp, assessed, rows, packed["instances"], results)
        graded = [] if shipment.graded is None else \
            readme_lines(shipment.graded, assessed, [Path(r).name for r in results])
        _write_text(tmp / README, _readme(_ReadmeInputs(
            manifest, shipment, packed["instances"], shipped, pool, pool_note, seed,
            max_total_timeout, verified, graded, reference)))
        _seal(tmp, packed)
        errors = [p for p in check_benchmark(tmp) if p.severity == "error"]
        if errors:
            raise RuntimeError(f"the packed folder fails its own check (a bug in bench pack):\n"
                               f"{format_problems(errors)}")
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _benchmark_rows(manifest: dict, results: Sequence[str | Path]) -> list[dict]:
    """This benchmark's rows in the results databases; ``BenchError`` when there are none."""
    name = manifest["benchmark"]
    rows = [r for r in read_results_rows(results) if r["benchmark"] == name]
    if not rows:
        raise BenchError(f"{', '.join(map(str, results))} hold no result for benchmark {name}; "
                         "run `bench run` on it first")
    return rows


def _source(src: Path, manifest: dict, rel: str) -> Path:
    """A file of the source benchmark that pack may read: inside the folder, and one whose
    hash the manifest lists (and the check verified), whatever else the manifest says."""
    path = safe_join(src, rel, f"{src / MANIFEST}")
    if rel not in manifest.get("files", {}):
        raise BenchError(f"{src / MANIFEST}: {rel!r} has no sha256 in 'files'; {REBUILD}")
    return path


# --- the packed manifest ----------------------------------------------------------------------

def _packed_manifest(src: Path, manifest: dict, seed: int | None, cap: float, select: str,
                     models: list[dict]) -> dict:
    """The source's manifest with the shipped models, to be narrowed to the shipped instances
    and sealed (``_seal``)."""
    packed = dict(manifest)
    packed["models"] = models
    packed["packed"] = {"seed": seed, "max_total_timeout": cap, "select": select,
                        "source_benchmark_hash": read_listing(src).benchmark_hash,
                        "suite_version": bench.__version__}
    return packed


def _files_table(folder: Path) -> dict[str, str]:
    """The sha256 of every file of the folder but the manifest, by relative path."""
    files = {path.relative_to(folder).as_posix(): sha256_file(path)
             for path in sorted(folder.rglob("*")) if path.is_file()}
    files.pop(MANIFEST, None)
    return files


def _seal(folder: Path, packed: dict) -> None:
    """Write the manifest with the sha256 of every other file of the folder and the
    benchmark's content hash."""
    listing = read_listing(folder)
    if listing.problems:
        raise RuntimeError(f"the packed folder's {INSTANCES} is broken (a bug in bench pack): "
                           f"{listing.problems[0]}")
    packed["files"] = _files_table(folder)
    packed["benchmark_hash"] = listing.benchmark_hash
    _write_manifest(folder, packed)


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _properties_within_cap(wanted: int, models: int, timeout: float, cap: float) -> int:
    """How many properties per model fit under the cap: all of them if they fit."""
    fitting = math.floor(cap / (models * timeout) + 1e-9)  # 1e-9: 6 h / 300 s is exactly 72
    if fitting < 1:
        raise BenchError(
            f"one property on each of the {models} models already takes {models} x {timeout:g} s "
            f"= {models * timeout:g} s, more than the cap of {cap:g} s on the sum of timeouts; "
            "build with a lower --timeout or fewer --levels")
    return min(wanted, fitting)


# --- the pool ---------------------------------------------------------------------------------

def _make_pool(src: Path, manifest: dict, models: list[dict], pool_size: int
               ) -> tuple[dict, str]:
    """The pool ``generate_properties.py`` draws from, and a sentence on its predicted
    difficulty (how it was computed and checked, or why it is missing)."""
    from bench.data import load_dataset

    info = manifest["dataset"]
    config = manifest.get("config") or {}
    dataset = load_dataset(info["name"], config.get("data_dir"), False)
    if tuple(dataset.test_x.shape[1:]) != tuple(info["input_shape"]):
        raise BenchError(f"dataset {info['name']} now has inputs of shape "
                         f"{tuple(dataset.test_x.shape[1:])}, the benchmark "
                         f"{tuple(info['input_shape'])}; is it the same dataset?")
    own = [int(p["sample_index"]) for p in manifest["properties"]]
    size = min(dataset.test_x.shape[0], max(pool_size, max(own) + 1))
    x = dataset.test_x[:size].detach().cpu().numpy().astype(np.float32)
    y = dataset.test_y[:size].detach().cpu().numpy().astype(np.int64)
    eps = float(manifest["eps"])
    num_classes = int(info["num_classes"])
    version = int(manifest.get("vnnlib_version", 1))
    _require_same_samples(manifest, x, y, eps, num_classes, version)
    correct = np.stack([_classifies(_source(src, manifest, m["onnx"]), x, y) for m in models])
    pool = {
        "x": x, "y": y, "index": np.arange(size, dtype=np.int64), "correct": correct,
        "onnx": np.array([m["onnx"] for m in models]),
        "eps": np.float64(eps), "timeout": np.float64(manifest["timeout"]),
        "lower": np.float64(0.0), "upper": np.float64(1.0),
        "num_outputs": np.int64(num_classes), "vnnlib_version": np.int64(version),
    }
    try:
        unstable = np.stack([_unstable_relus(_source(src, manifest, m["onnx"]), x, eps)
                             for m in models])
    except HardnessUnavailable as err:
        return pool, (f"Predicted difficulty is not available ({err}), so the draw is uniform "
                      "among the candidates.")
    pool["unstable_relus"] = unstable
    # Per sample: the mean over the models of each instance's predicted hardness.
    pool["hardness"] = np.array([
        np.mean([hardness_score({"correct": bool(correct[m, s]),
                                 "unstable_relus": int(unstable[m, s])})
                 for m in range(len(models))]) for s in range(size)], dtype=np.float64)
    return pool, _agreement(manifest, models, unstable)


class HardnessUnavailable(Exception):
    """The pool's unstable ReLUs cannot be computed for this model."""


def _unstable_relus(onnx_path: Path, x: np.ndarray, eps: float) -> np.ndarray:
    """Per pool sample: the ReLUs of the ONNX model with ``l < 0 < u`` under the sample's
    property box (clipped to [0, 1]), from CROWN bounds (``bench.build.metrics``) on the model
    converted to torch as the ``lirpa`` verifier converts it."""
    import torch

    from bench.build.metrics import unstable_relus_per_sample
    from bench.verifiers.onnx_torch import (WorkerError, conv_mode, convert, load_onnx,
                                            prepare_onnx)

    try:
        prepared, _ = prepare_onnx(load_onnx(onnx_path))
        network = convert(prepared)
        boxes = torch.from_numpy(x)
        counts = unstable_relus_per_sample(network, (boxes - eps).clamp(0.0, 1.0),
                                           (boxes + eps).clamp(0.0, 1.0),
                                           bound_opts={"conv_mode": conv_mode(prepared)})
    except (WorkerError, RuntimeError, AssertionError, ValueError, TypeError) as err:
        text = str(err).strip().splitlines()
        raise HardnessUnavailable(f"{onnx_path.name}: {type(err).__name__}: "
                                  f"{text[0] if text else ''}") from None
    return np.asarray(counts["unstable_relus"], dtype=np.int64)


def _agreement(manifest: dict, models: list[dict], unstable: np.ndarray) -> str:
    """How the pool's counts compare with the build's (the manifest's ``unstable_relus``)."""
    row = {m["onnx"]: k for k, m in enumerate(models)}
    pairs = [(int(i["unstable_relus"]), int(unstable[row[i["onnx"]], int(i["sample_index"])]))
             for i in manifest["instances"]
             if i["onnx"] in row and isinstance(i.get("unstable_relus"), int)]
    text = ("Predicted difficulty: per candidate, the unstable ReLUs under its property's box "
            "(CROWN bounds, auto_LiRPA, on the shipped ONNX models), averaged over the models.")
    if not pairs:
        return text + " (The build recorded none to compare with.)"
    same = sum(a == b for a, b in pairs)
    worst = max(abs(a - b) for a, b in pairs)
    return (text + f" On the {len(pairs)} instances the build measured, they equal the "
            f"manifest's `unstable_relus` in {same}" + ("." if same == len(pairs) else
                                                        f" (largest difference {worst})."))


def _require_same_samples(manifest: dict, x: np.ndarray, y: np.ndarray, eps: float,
                          num_classes: int, version: int) -> None:
    """The build's properties, rewritten from the pool with generate_properties.py's own
    writer, must be the manifest's files byte for byte."""
    from bench.share import generate_properties as script

    write = script.robustness_property_v2 if version == 2 else script.robustness_property
    for prop in manifest["properties"]:
        index, label = int(prop["sample_index"]), int(prop["label"])
        text = write(x[index], label, eps, num_classes)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if int(y[index]) != label or digest != manifest["files"].get(prop["vnnlib"]):
            raise BenchError(
                f"test sample {index} of dataset {manifest['dataset']['name']} does not give "
                f"{prop['vnnlib']}: the dataset (or its order) differs from the one the benchmark "
                "was built from, so a pool drawn from it would not match; rebuild the benchmark")


def _classifies(onnx_path: Path, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample, whether the model's top logit is the label (the ONNX takes a batch of 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predicted = [int(np.argmax(session.run(None, {name: sample[None]})[0])) for sample in x]
    return np.asarray(predicted) == y


# --- properties -------------------------------------------------------------------------------

def _write_own_properties(src: Path, tmp: Path, manifest: dict, packed: dict,
                          shipment: Shipment) -> None:
    """The build's own property files (those the selection keeps) and their instances."""
    for prop in shipment.properties:
        shutil.copyfile(_source(src, manifest, prop["vnnlib"]), tmp / prop["vnnlib"])
    # Already ordered by level, then sample.
    packed["instances"] = shipment.instances
    packed["properties"] = shipment.properties
    _write_text(tmp / INSTANCES, instances_csv_text(packed["instances"]))


REFERENCE_DIR = "reference"


def _write_reference(tmp: Path, assessed: BenchmarkDifficulty, rows: list[dict],
                     instances: list[dict], results: Sequence[str | Path]) -> list[str]:
    """The shipped instances' reference results and the views of ``bench.collate.authors``
    under ``reference/``; returns the README's lines about them."""
    shipped = {(i["onnx"], i["vnnlib"]) for i in instances}
    subset = replace(assessed, instances=[i for i in assessed.instances
                                          if (i.onnx, i.vnnlib) in shipped])
    subset_rows = [r for r in rows if instance_key(r["onnx"], r["vnnlib"]) in shipped]
    views = write_views(subset, subset_rows, tmp / REFERENCE_DIR, "reference", link_base=tmp)
    verifiers = subset.verifiers
    headers = ["instance", "level", "sample", "difficulty", "reference", "time (s)",
               *verifiers]
    cells = [[f"`{i.onnx}` + `{i.vnnlib}`", str(i.level), str(i.sample_index), i.difficulty,
              i.outcome, "" if i.time is None else f"{i.time:.2f}",
              *(_answer_text(i.answers.get(v)) for v in verifiers)] for i in subset.instances]
    lines = ["## Reference results", "",
             f"Measured by {', '.join(verifiers) or 'no verifier'} (results databases: "
             f"{', '.join(Path(r).name for r in results)}). Per instance: its difficulty class, "
             "the reference outcome (never resolved where verifiers disagree: `disputed`), the "
             "reference time (the fastest agreeing answer) and each verifier's status and time. "
             f"The same as CSV: `{views.files['difficulty_csv'].relative_to(tmp).as_posix()}`.",
             ""]
    if assessed.foreign:
        lines += [f"{assessed.foreign} result(s) of another version of this benchmark (another "
                  "content hash) were left out.", ""]
    lines += [*markdown_table(headers, cells), "", render_markdown(views.blocks)]
    return lines


def _answer_text(answer) -> str:
    if answer is None:
        return "—"
    return answer.status if answer.time is None else f"{answer.status} ({answer.time:.2f} s)"


def _run_script(folder: Path, seed: int) -> list[str]:
    """Run the shipped generate_properties.py as VNN-COMP will: its own process, in the packed
    folder, with nothing of prune-bench on its path."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "SYSTEMROOT")
           if key in os.environ}
    done = subprocess.run([sys.executable, SCRIPT, str(seed)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"{SCRIPT} {seed} failed in the packed folder: {detail}")
    listing = read_listing(folder)
    if listing.problems:
        raise RuntimeError(f"{SCRIPT} {seed} wrote a broken {INSTANCES} (a bug in it): "
                           f"{listing.problems[0]}")
    return list(dict.fromkeys(row.vnnlib.listed for row in listing.rows))  # unique, in order


# --- files ------------------------------------------------------------------------------------

def _gzip_file(source: Path, target: Path) -> None:
    """gzip with no file name and mtime 0 in the header, so packing twice gives the same bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as raw, open(target, "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9,
                           mtime=0) as packed:
            shutil.copyfileobj(raw, packed, 1 << 20)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


# --- README -----------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


@dataclass
class _ReadmeInputs:
    manifest: dict
    shipment: Shipment
    instances: list[dict]  # as shipped (after the seed, if any)
    shipped: list[str]  # property files
    pool: dict
    pool_note: str
    seed: int | None
    cap: float
    verified: Mapping[Any, float] | None
    graded_lines: list[str]
    reference_lines: list[str]


def _readme(r: _ReadmeInputs) -> str:
    manifest, models, pool = r.manifest, r.shipment.models, r.pool
    info = manifest["dataset"]
    timeout = float(manifest["timeout"])
    wanted = len(manifest["properties"])
    count = r.shipment.per_model
    total = sum(float(i["timeout"]) for i in r.instances)
    name = manifest.get("benchmark", "benchmark")
    verified_by_level = {int(k): float(v) for k, v in (r.verified or {}).items()}
    if r.shipment.graded is None:
        size = (f"{len(r.shipped)} properties x {len(models)} models = {len(r.instances)} "
                "instances")
    else:
        size = (f"{len(r.instances)} instances of {len(r.shipped)} properties on "
                f"{len(models)} models, chosen by measured difficulty (below)")
    lines = [
        f"# {name}",
        "",
        f"L-inf robustness of {len(models)} pruning levels of one network "
        f"({manifest['config'].get('model', '?')} trained with "
        f"{manifest['config'].get('training', '?')}, pruned with "
        f"{manifest['config'].get('pruner', '?')}) on {info['name']}, packed for VNN-COMP by "
        f"prune-bench {bench.__version__}.",
        "",
        "## Properties",
        "",
        f"- Each property is the L-inf ball of radius eps = {float(manifest['eps'])!r} (raw "
        "pixels in [0, 1], clipped to [0, 1]) around one test image; it is violated (sat) when "
        "some other logit is >= the true label's. The models take raw pixels: normalization is "
        "their first layer.",
        f"- Test samples: {info.get('test_order', 'in the dataset order')}",
        f"- {size}, {format_timeout(timeout)} s each: {total:g} s in all "
        f"(VNN-COMP's cap: {r.cap:g} s).",
    ]
    if r.shipment.reduced:
        lines.append(f"- **Reduced**: the benchmark has {wanted} properties per model; "
                     f"{wanted} x {len(models)} x {timeout:g} s would exceed the cap, so {count} "
                     "properties per model are kept (the first ones).")
    if r.seed is None and r.shipment.graded is not None:
        lines.append("- Shipped: the build's own property files of the chosen instances, byte "
                     "for byte.")
    elif r.seed is None:
        lines.append("- Shipped: the build's own properties (the first test samples, whether or "
                     "not a model classifies them correctly), byte for byte.")
    else:
        lines.append(f"- Shipped: the properties of `python {SCRIPT} {r.seed}`.")
    if r.seed is not None and len(r.shipped) < count:
        lines.append(f"- Only {len(r.shipped)} samples of the pool are candidates (see below), "
                     f"fewer than the {count} wanted.")
    lines += ["", *r.graded_lines]
    lines += [
        "## Models",
        "",
        "Sparsity is the fraction of prunable weights removed; parameters count every "
        "floating-point constant of the ONNX graph (BatchNorm folded, the normalization layer "
        "included). Clean accuracy is on the whole test split. Verified accuracy, where known, "
        "is the share of the source benchmark's "
        f"{wanted} samples that a verifier proved robust (unsat on a correctly classified sample)"
        + ("; the samples shipped here were drawn anew from the seed." if r.seed is not None
           else "."),
        "",
        "| model | level | remaining weights | sparsity | parameters | nonzero parameters "
        "| clean accuracy | verified accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        level = int(model["level"])
        remain = float(model["remain_ratio"])
        clean = model.get("clean_accuracy")
        lines.append(
            f"| `{model['onnx']}` | {level} | {remain:.4f} | {1 - remain:.4f} "
            f"| {int(model['parameters']):,} | {int(model['nonzero_parameters']):,} "
            f"| {_percent(None if clean is None else 100 * float(clean))} "
            f"| {_percent(verified_by_level.get(level))} |")
    lines += ["", *_regenerating(r, count), *r.reference_lines]
    lines += [
        "## Files",
        "",
        "- `instances.csv`: `onnx,vnnlib,timeout` per instance, paths relative to this folder, "
        "named as after `gunzip`.",
        "- `onnx/*.onnx.gz`: one model per pruning level; input `(1, C, H, W)` raw pixels, "
        "output the logits.",
        "- `vnnlib/*.vnnlib.gz`: VNN-LIB "
        f"{int(pool['vnnlib_version'])}.0 properties, inputs numbered in row-major order.",
        f"- `{SCRIPT}`, `{POOL}`: see above.",
    ]
    if r.reference_lines:
        lines.append(f"- `{REFERENCE_DIR}/`: reference results (CSV, Markdown), difficulty "
                     "histogram, cactus plot, time vs unstable ReLUs.")
    return "\n".join(lines) + "\n"


def _regenerating(r: _ReadmeInputs, count: int) -> list[str]:
    correct = r.pool["correct"]
    everyone = int(np.all(correct, axis=0).sum())
    text = (f"Needs Python 3 and numpy only. It reads `{POOL}`: the first {correct.shape[1]} "
            f"test samples (images, labels, and which of them each model classifies correctly; "
            f"{everyone} are classified correctly by every model). ")
    if "hardness" in r.pool:
        strata = int(r.pool["strata"])
        candidates = int((np.all(correct, axis=0) & np.isfinite(r.pool["hardness"])).sum())
        text += (f"{r.pool_note} The {candidates} candidates (classified correctly by every "
                 f"model) ranked by it are cut into {strata} groups of equal size (up to one), "
                 f"and `numpy.random.default_rng(SEED)` draws {count} of them, the same number "
                 "from each group (the extra ones from the hardest groups), the same samples "
                 "for every model: every seed gives the same spread of predicted difficulty, "
                 "so no seed makes the benchmark easy. ")
    else:
        text += (f"{r.pool_note} From `numpy.random.default_rng(SEED)` it draws {count} of the "
                 "samples every model classifies correctly, the same for every model. ")
    text += ("It writes `vnnlib/sample_<test index>.vnnlib` (plain text; earlier `sample_*` "
             "files are removed), `instances.csv` (every model with every property) and the "
             "manifest's instances and hashes. The same seed always gives the same files.")
    if r.shipment.graded is not None:
        text += (" The instances it writes are not the graded selection above, and have no "
                 "reference results: those are for the shipped instances only.")
    return [f"## Regenerating the properties: `python {SCRIPT} SEED`", "", text, ""]


# --- verified accuracy ------------------------------------------------------------------------

def verified_accuracy_from_db(results: str | Path | Sequence[str | Path], benchmark_name: str,
                              verifier: str) -> dict[int, float]:
    """Verified accuracy in percent per level, as ``bench tables`` computes it (unsat on a
    correctly classified sample), for levels whose every instance has a result; levels with
    missing results are left out (unknown, not zero). ``results``: one database or several
    (combined as ``bench merge`` would)."""
    from bench.collate.tables import verified_accuracy_of

    paths = [results] if isinstance(results, (str, Path)) else list(results)
    return verified_accuracy_of(read_results_rows(paths), benchmark_name, verifier,
                                ", ".join(map(str, paths)))
