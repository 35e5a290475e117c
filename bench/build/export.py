"""Write one VNN-COMP benchmark folder from the pruning levels of one build.

Layout (paths in every listing are relative to the folder, as VNN-COMP wants)::

    root/onnx/level_00.onnx          one model of raw pixels per level (Normalize prepended)
    root/vnnlib/sample_0000.vnnlib   one L-inf robustness property per test sample, shared by
                                     all levels; the number is the sample's test-set index
    root/instances.csv               level x sample, ordered by level then sample
    root/manifest.json               the benchmark's name and content hash, what everything
                                     is, and the sha256 of every file

The benchmark's name is the folder's name at export; it stays in the manifest when the folder is
copied or renamed. Its content hash (``benchmark_hash``) is
``bench.formats.folder.content_hash`` of the manifest's ``files`` table: instances.csv and every
file it lists, the manifest itself excluded.

The manifest is written last and removed first: a folder whose export was interrupted has no
manifest rather than one that describes files that are not there (or not those).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import bench
from bench.formats.folder import (FORMAT_VERSION, INSTANCES, MANIFEST, atomic_write_text,
                                  check_name, content_hash, instances_csv_text, onnx_name,
                                  sha256_file, vnnlib_name)
from bench.formats.rules import parse_eps, parse_timeout
from bench.build.onnx_export import check_onnx, export_onnx, onnx_stats
from bench.models.normalize import with_normalization
from bench.formats.vnnlib import robustness_property
from bench.formats.vnnlib2 import robustness_property_v2

# The fields of an instance entry that the export itself writes.
_INSTANCE_FIELDS = ("onnx", "vnnlib", "timeout", "level", "sample_index", "label", "correct")
# Files this module writes; only these are removed when a new export leaves them out.
_OWN_FILES = (("onnx", "level_*.onnx"), ("vnnlib", "sample_*.vnnlib"))


@dataclass
class ExportedModel:
    """One pruning level, ready to export."""

    level: int
    model: nn.Module  # eval mode, WITHOUT normalization, masks permanent
    remain_ratio: float
    clean_accuracy: float
    layer_sparsity: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the manifest verbatim
    # Per-sample scalars of this level (name -> one value per sample, in the samples' order),
    # copied into each of its instance entries, e.g. ``unstable_relus``.
    per_sample: dict[str, list] = field(default_factory=dict)


def write_benchmark(root: Path, config: dict, dataset_info: dict, models: list[ExportedModel],
                    samples_x: torch.Tensor, samples_y: torch.Tensor, sample_indices: list[int],
                    eps: float, timeout: float, max_abs_diff: float = 1e-4,
                    vnnlib_version: int = 1, experiment: dict | None = None) -> Path:
    """Export every level and property into ``root``; returns the manifest's path.

    ``vnnlib_version`` 1 writes properties as VNN-COMP reads them today; 2 writes VNN-LIB 2.0
    (``bench.formats.vnnlib2``), same file names. The manifest records which.

    ``dataset_info`` holds name, test_order, mean, std, input_shape and num_classes. Raises
    ``BenchError`` for an eps or timeout that ``bench.formats.rules`` refuses, RuntimeError when
    an ONNX file disagrees with its torch model by ``max_abs_diff`` or more: that is a bug in the
    export, not something the user can fix."""
    root = Path(root)
    # The rules every command applies (a user's config may carry them): refused before any file
    # is written.
    eps = parse_eps(eps, str(root))
    timeout = parse_timeout(timeout, str(root))
    name = check_name(root.resolve().name, str(root))
    models = sorted(models, key=lambda m: m.level)
    sample_indices = [int(i) for i in sample_indices]
    _check_inputs(dataset_info, models, samples_x, samples_y, sample_indices)
    if vnnlib_version not in (1, 2):
        raise ValueError(f"vnnlib_version must be 1 or 2 (got {vnnlib_version!r})")

    (root / "onnx").mkdir(parents=True, exist_ok=True)
    (root / "vnnlib").mkdir(parents=True, exist_ok=True)
    # From here on the folder changes; an old manifest would describe the old files.
    (root / MANIFEST).unlink(missing_ok=True)

    labels = [int(y) for y in samples_y]
    properties = _write_properties(root, samples_x, labels, sample_indices, eps,
                                   int(dataset_info["num_classes"]), vnnlib_version)
    model_entries, instances = [], []
    for exported in models:
        entry, correct = _export_level(root, exported, dataset_info, samples_x, labels,
                                       max_abs_diff)
        model_entries.append(entry)
        for position, (prop, is_correct) in enumerate(zip(properties, correct)):
            instances.append({
                "onnx": entry["onnx"], "vnnlib": prop["vnnlib"], "timeout": float(timeout),
                "level": exported.level, "sample_index": prop["sample_index"],
                "label": prop["label"], "correct": is_correct,
                **{name: values[position] for name, values in exported.per_sample.items()},
            })
    atomic_write_text(root / INSTANCES, instances_csv_text(instances))
    listed = [e["onnx"] for e in model_entries] + [p["vnnlib"] for p in properties]
    _remove_stale_files(root, set(listed))

    files = {rel: sha256_file(root / rel) for rel in [*listed, INSTANCES]}
    manifest = {
        "format_version": FORMAT_VERSION,
        "benchmark": name,
        "benchmark_hash": content_hash(files),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite_version": bench.__version__,
        "config": config,
        "experiment": experiment or {},
        "dataset": dataset_info,
        "eps": float(eps),
        "timeout": float(timeout),
        "vnnlib_version": vnnlib_version,
        "models": model_entries,
        "properties": properties,
        "instances": instances,
        "files": files,
    }
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return path


def _check_inputs(dataset_info: dict, models: list[ExportedModel], samples_x: torch.Tensor,
                  samples_y: torch.Tensor, sample_indices: list[int]) -> None:
    """The pipeline's side of the contract; a violation is a bug there (ValueError)."""
    missing = {"name", "mean", "std", "input_shape", "num_classes"} - set(dataset_info)
    if missing:
        raise ValueError(f"dataset_info lacks {sorted(missing)}")
    if not models:
        raise ValueError("write_benchmark needs at least one model")
    levels = [m.level for m in models]
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must be unique (got {levels})")
    n = len(samples_x)
    if n == 0 or len(samples_y) != n or len(sample_indices) != n:
        raise ValueError(f"need as many labels and indices as samples (got {n} samples, "
                         f"{len(samples_y)} labels, {len(sample_indices)} indices)")
    labels = [int(label) for label in samples_y]
    if not all(0 <= label < int(dataset_info["num_classes"]) for label in labels):
        raise ValueError(f"labels {labels} outside 0..{int(dataset_info['num_classes']) - 1}")
    if len(set(sample_indices)) != n:
        raise ValueError("sample indices must be unique: they name the VNN-LIB files")
    for m in models:
        for name, values in m.per_sample.items():
            if name in _INSTANCE_FIELDS:
                raise ValueError(f"level {m.level}: per-sample field {name!r} would overwrite "
                                 "the instance's own field")
            if len(values) != n or not all(_is_scalar(v) for v in values):
                raise ValueError(f"level {m.level}: per-sample field {name!r} needs one scalar "
                                 f"per sample ({n}), got {len(values)} values")
    if tuple(samples_x.shape[1:]) != tuple(dataset_info["input_shape"]):
        raise ValueError(f"samples have shape {tuple(samples_x.shape[1:])}, dataset says "
                         f"{tuple(dataset_info['input_shape'])}")
    # Properties box raw pixels clipped to [0, 1]; samples outside it were normalized already.
    if float(samples_x.min()) < 0.0 or float(samples_x.max()) > 1.0:
        raise ValueError("samples must be raw pixels in [0, 1], not normalized")


def _write_properties(root: Path, samples_x: torch.Tensor, labels: list[int],
                      sample_indices: list[int], eps: float, num_classes: int,
                      vnnlib_version: int = 1) -> list[dict]:
    write = robustness_property_v2 if vnnlib_version == 2 else robustness_property
    properties = []
    for x, label, index in zip(samples_x, labels, sample_indices):
        rel = vnnlib_name(index)
        text = write(x.detach().cpu().numpy(), label, float(eps), num_classes)
        atomic_write_text(root / rel, text)
        # alpha-beta-CROWN caches the parsed property next to the file; a cache of the previous
        # export's property (another eps) must not outlive it.
        (root / f"{rel}.compiled").unlink(missing_ok=True)
        properties.append({"vnnlib": rel, "sample_index": index, "label": label, "eps": float(eps)})
    return properties


def _export_level(root: Path, exported: ExportedModel, dataset_info: dict, samples_x: torch.Tensor,
                  labels: list[int], max_abs_diff: float) -> tuple[dict, list[bool]]:
    """Export one level and check it; returns its manifest entry and, per sample, whether the
    model classifies it correctly."""
    rel = onnx_name(exported.level)
    full = with_normalization(exported.model, dataset_info["mean"], dataset_info["std"]).eval()
    export_onnx(full, tuple(dataset_info["input_shape"]), root / rel)
    diff = check_onnx(root / rel, full, samples_x)
    if not diff < max_abs_diff:  # also catches NaN
        raise RuntimeError(f"{rel}: onnxruntime and torch disagree by {diff:.3g} "
                           f"(allowed < {max_abs_diff:.3g}); the export is wrong")
    with torch.no_grad():
        device = next(full.parameters()).device
        logits = full(samples_x.to(device=device, dtype=torch.float32)).cpu()
    num_classes = int(dataset_info["num_classes"])
    if tuple(logits.shape[1:]) != (num_classes,):
        raise ValueError(f"level {exported.level}: model outputs shape {tuple(logits.shape[1:])}, "
                         f"but the properties are written for {num_classes} classes")
    predicted = logits.argmax(dim=1)
    correct = [int(p) == label for p, label in zip(predicted, labels)]
    stats = onnx_stats(root / rel)
    entry = {
        "onnx": rel,
        "level": exported.level,
        "remain_ratio": float(exported.remain_ratio),
        "clean_accuracy": float(exported.clean_accuracy),
        "layer_sparsity": {str(k): float(v) for k, v in exported.layer_sparsity.items()},
        "onnx_max_abs_diff": diff,
        "parameters": stats["parameters"],
        "nonzero_parameters": stats["nonzero_parameters"],
        "onnx_ops": stats["ops"],
    }
    clash = set(entry) & set(exported.extra)
    if clash:
        raise ValueError(f"level {exported.level}: extra keys {sorted(clash)} would overwrite "
                         "the manifest's own fields")
    entry.update(exported.extra)
    return entry, correct


def _remove_stale_files(root: Path, keep: set[str]) -> None:
    """Drop levels and properties of an earlier export that this one no longer has, so the
    folder holds what the manifest lists."""
    for folder, pattern in _OWN_FILES:
        for path in (root / folder).glob(pattern):
            rel = f"{folder}/{path.name}"
            if rel not in keep:
                path.unlink()
                Path(f"{path}.compiled").unlink(missing_ok=True)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, np.generic))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest: {value!r}")
