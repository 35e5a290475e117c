"""Per-instance results out, for people who analyse them in their own notebooks.

One row per (benchmark, verifier, instance): every instance the benchmark's manifest lists,
with its result (``status`` empty where there is none yet), plus any result for a file the
manifest does not list (its manifest columns empty). Benchmarks whose folder holds no manifest
(a foreign VNN-COMP folder, a moved one) are exported with their results alone.

Columns: ``FIXED_COLUMNS``, then whatever else the manifests provide, so that statistics a
build adds later arrive without a change here:

- every other field of a manifest ``instances`` entry (per sample and level, e.g. a count of
  unstable neurons), under its own name (``instance_<name>`` if it collides with a fixed
  column); lists and mappings as JSON text;
- every other field of the sample's ``properties`` entry as ``property_<name>``;
- every scalar field of the level's ``models`` entry as ``model_<name>`` (standard and PGD
  accuracy, instability, ...).

``verified`` is true only for ``unsat`` on a correctly classified sample, as in every table.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.collate.aggregate import make_run
from bench.collate.tables import find_manifest, instance_key, read_results
from bench.errors import BenchError
from bench.verifiers.base import Status

FORMATS = ("csv", "parquet")
# The same form as the ray extra's message (bench.parallel).
INSTALL_EXPORT = "pip install 'prune-bench[export]' (in a checkout, `make install` does)"
FIXED_COLUMNS = (
    "benchmark", "root", "experiment_name", "experiment_hash", "seed", "verifier",
    "verifier_version", "level", "remain_ratio", "sample_index", "label", "correct", "onnx",
    "vnnlib", "status", "verified", "decided_by", "timeout", "wall_time", "verifier_time",
    "peak_memory_mb", "peak_gpu_memory_mb", "cex_check", "reason", "started_at", "host",
    "device", "params_hash", "suite_version",
)
_RESULT_COLUMNS = ("verifier_version", "status", "decided_by", "timeout", "wall_time",
                   "verifier_time", "peak_memory_mb", "peak_gpu_memory_mb", "cex_check",
                   "reason", "started_at", "host", "device", "params_hash", "suite_version")
_INSTANCE_FIELDS = ("onnx", "vnnlib", "level", "sample_index", "label", "correct", "timeout")


def _cell(value: Any) -> Any:
    """A value a CSV or Parquet column can hold: scalars as they are, the rest as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def instance_records(results_path: str | Path) -> list[dict]:
    """The export's rows as dicts, sorted by benchmark, verifier, level and sample."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for row in read_results(Path(results_path)):
        by_benchmark[row["benchmark"]].append(row)
    records: list[dict] = []
    for benchmark, rows in sorted(by_benchmark.items()):
        found = find_manifest(rows)
        root, manifest = found if found is not None else (None, {})
        run = make_run(None, manifest, benchmark) if manifest else None
        common = {
            "benchmark": benchmark,
            "root": str(root) if root is not None else rows[0]["root"],
            "experiment_name": run.experiment_name if run else None,
            "experiment_hash": run.experiment[1] if run and run.experiment[0] == "experiment"
            else None,
            "seed": _seed(run.seed) if run and run.seed != benchmark else None,
        }
        by_verifier: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_verifier[row["verifier"]].append(row)
        for verifier, verifier_rows in sorted(by_verifier.items()):
            records += _benchmark_records(common, verifier, verifier_rows, manifest)
    return records


def _benchmark_records(common: dict, verifier: str, rows: list[dict], manifest: dict
                       ) -> list[dict]:
    models = {m.get("level"): m for m in manifest.get("models", []) if isinstance(m, dict)}
    properties = {instance_key("", p["vnnlib"])[1]: p for p in manifest.get("properties", [])
                  if isinstance(p, dict) and isinstance(p.get("vnnlib"), str)}
    results = {instance_key(r["onnx"], r["vnnlib"]): r for r in rows}
    records = []
    for inst in manifest.get("instances", []):
        key = instance_key(inst["onnx"], inst["vnnlib"])
        model = models.get(inst.get("level"), {})
        record = {**common, "verifier": verifier,
                  **{f: inst.get(f) for f in _INSTANCE_FIELDS},
                  "remain_ratio": model.get("remain_ratio"),
                  **_result_fields(results.pop(key, None), inst.get("correct"))}
        for name, value in inst.items():
            if name not in _INSTANCE_FIELDS:
                record[f"instance_{name}" if name in FIXED_COLUMNS else name] = _cell(value)
        for name, value in properties.get(key[1], {}).items():
            if name not in ("vnnlib", "sample_index", "label"):
                record[f"property_{name}"] = _cell(value)
        for name, value in model.items():
            if name not in ("level", "onnx", "remain_ratio") and \
                    (value is None or isinstance(value, (bool, int, float, str))):
                record[f"model_{name}"] = value
        records.append(record)
    # Results for files the manifest does not list: kept, with what the row itself says.
    for row in results.values():
        records.append({**common, "verifier": verifier, "onnx": row["onnx"],
                        "vnnlib": row["vnnlib"], **_result_fields(row, None)})
    return sorted(records, key=lambda r: (r.get("level") is None, r.get("level") or 0,
                                          str(r.get("sample_index")), r["onnx"], r["vnnlib"]))


def _seed(seed: str) -> int | str:
    return int(seed) if seed.lstrip("-").isdigit() else seed


def _result_fields(row: dict | None, correct: Any) -> dict:
    if row is None:
        return {"status": None, "verified": None}
    fields = {name: row.get(name) for name in _RESULT_COLUMNS}
    # Unknown (None) for a result the manifest does not describe: it may be correct or not.
    fields["verified"] = None if correct is None else \
        row["status"] == Status.UNSAT.value and bool(correct)
    return fields


def instance_frame(results_path: str | Path):
    """The export as a ``pandas.DataFrame``: ``FIXED_COLUMNS`` first, then the manifests'
    extra fields in alphabetical order; nullable dtypes, so a missing value stays missing."""
    try:
        import pandas as pd
    except ImportError as err:
        raise BenchError(f"the per-instance export needs pandas ({err}); "
                         f"{INSTALL_EXPORT}") from None

    records = instance_records(results_path)
    extra = sorted({name for record in records for name in record} - set(FIXED_COLUMNS))
    frame = pd.DataFrame.from_records(records, columns=[*FIXED_COLUMNS, *extra])
    frame = frame.convert_dtypes()
    for name in frame.columns:
        # A column that mixes kinds (a field that is a number in one manifest and text in
        # another) becomes text: Parquet needs one type per column.
        if frame[name].dtype == object:
            kinds = {type(v) for v in frame[name] if v is not None and v is not pd.NA}
            if len(kinds) > 1:
                frame[name] = frame[name].map(lambda v: None if v is None or v is pd.NA
                                              else str(v)).astype("string")
    return frame


def export_results(results_path: str | Path, out: str | Path, fmt: str = "csv") -> int:
    """Write the per-instance export of ``results_path`` to ``out`` as ``fmt`` (csv or
    parquet), replacing it atomically; returns the number of rows."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise BenchError(f"{out} is a folder; give --out a file name, e.g. {out}/results.{fmt}")
    frame = instance_frame(results_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if fmt == "csv":
            frame.to_csv(partial, index=False)
        else:
            try:
                frame.to_parquet(partial, index=False)
            except ImportError as err:
                raise BenchError(f"Parquet export needs pyarrow ({err}); {INSTALL_EXPORT}, "
                                 "or use --format csv") from None
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return len(frame)
