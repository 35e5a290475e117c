#!/usr/bin/env python3
"""Select this benchmark's properties from a seed: ``python generate_properties.py SEED``.

VNN-COMP runs this before the competition with a seed nobody knew in advance, so that no tool
can be tuned to the published properties. It reads ``data/pool.npz`` (shipped beside this
script), picks ``properties`` samples deterministically from SEED among the samples that EVERY
model classifies correctly (a misclassified sample is a trivial counterexample, not a
robustness question; picking the same samples for every model keeps the pruning levels
comparable), and writes the files below.

The selection is STRATIFIED by predicted difficulty where the pool carries it (``hardness``:
per sample, the mean over the models of its unstable ReLUs under the property's box, from CROWN
bounds; see the README): the candidates sorted by it are cut into ``strata`` groups of (nearly)
equal size, and every seed draws the same number from each group, the extra ones (when the
count does not divide) from the hardest groups. So every seed gives the same spread of predicted
difficulty, and a new seed cannot silently make the benchmark easy; only which samples of each
group are drawn changes. Samples without a predicted difficulty are then not candidates. A pool
without ``hardness`` (an older pack) gets the plain uniform draw of ``select``.

- ``vnnlib/sample_<test index>.vnnlib``: one L-inf robustness property per selected sample, plain
  text (earlier ``sample_*.vnnlib`` / ``.vnnlib.gz`` files of this benchmark are removed);
- ``instances.csv``: every model with every property, ordered by model then sample;
- ``manifest.json`` (where there is one, as ``bench pack`` writes it): its instances, properties,
  the sha256 of the files just written, and the benchmark hash, so that the folder still passes
  ``bench check``. The benchmark hash is the sha256 of the ``sha256sum`` listing
  (``"<sha256>  <path>\n"``, sorted by path) of instances.csv and the files it lists, as stored
  (``bench.formats.folder.content_hash``).

It needs Python 3 and numpy only: it must run on a machine without prune-bench. ``bench pack``
copies it verbatim from prune-bench's ``bench/share/generate_properties.py``; its two writers produce
byte for byte what ``bench.formats.vnnlib.robustness_property`` and
``bench.formats.vnnlib2.robustness_property_v2`` produce (prune-bench's tests check that).

``data/pool.npz`` holds ``x`` (candidate images, float32, raw pixels), ``y`` (labels), ``index``
(their test-set indices), ``correct`` (models x candidates, bool), ``onnx`` (model paths),
``eps``, ``timeout``, ``lower``, ``upper``, ``num_outputs``, ``properties`` (how many to select),
``max_total_timeout`` and ``vnnlib_version``; and, where difficulty is predicted,
``unstable_relus`` (models x candidates, CROWN, -1 where unknown), ``hardness`` (per candidate,
float, NaN where unknown) and ``strata``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POOL = HERE / "data" / "pool.npz"


# --- selection --------------------------------------------------------------------------------

def select(correct: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Positions in the pool of the selected samples, in increasing order.

    Candidates are the samples every model classifies correctly. Each gets a uniform random key
    from ``numpy.random.default_rng(seed)`` and the ``count`` smallest keys win: this uses only
    ``Generator.random``, the most basic draw (its stream is the one least likely to change
    between numpy versions), and a stable sort, so a seed always gives the same selection."""
    candidates = np.flatnonzero(np.all(correct, axis=0))
    keys = np.random.default_rng(seed).random(candidates.size)
    chosen = candidates[np.argsort(keys, kind="stable")[:count]]
    return np.sort(chosen)


def strata_sizes(total: int, groups: int) -> np.ndarray:
    """``total`` split into ``groups`` near-equal integers, the larger ones LAST (the hardest
    groups), so quotas that put their extra ones last always fit the groups."""
    sizes = np.full(groups, total // groups, dtype=np.int64)
    sizes[groups - total % groups:] += 1
    return sizes


def strata(correct: np.ndarray, hardness: np.ndarray, count: int, groups: int
           ) -> list[np.ndarray]:
    """The candidates (classified correctly by every model, with a finite ``hardness``) ranked
    by ``hardness`` (ties by pool position) and cut into ``min(groups, count)`` near-equal
    groups, easiest first: pool positions per group."""
    candidates = np.flatnonzero(np.all(correct, axis=0) & np.isfinite(hardness))
    groups = max(1, min(int(groups), int(count), max(candidates.size, 1)))
    ranked = candidates[np.lexsort((candidates, hardness[candidates]))]
    cuts = np.cumsum(strata_sizes(candidates.size, groups))[:-1]
    return np.split(ranked, cuts)


def select_stratified(correct: np.ndarray, hardness: np.ndarray, count: int, seed: int,
                      groups: int) -> np.ndarray:
    """Positions in the pool of the selected samples, in increasing order: ``count`` samples,
    the same number from each group of ``strata``, the extra ones from the hardest groups
    (all candidates when there are no more than ``count``). Each candidate gets a key from one
    ``Generator.random`` draw in pool order, and the smallest keys of a group win, as in
    ``select``."""
    cut = strata(correct, hardness, count, groups)
    candidates = np.sort(np.concatenate(cut))
    keys = dict(zip(candidates.tolist(), np.random.default_rng(seed).random(candidates.size)))
    if candidates.size <= count:
        return candidates
    chosen = []
    for members, quota in zip(cut, strata_sizes(count, len(cut))):
        order = sorted(members.tolist(), key=lambda position: keys[position])
        chosen += order[:quota]
    return np.sort(np.asarray(chosen, dtype=np.int64))


# --- VNN-LIB 1.0 (as bench.formats.vnnlib.robustness_property) ----------------------------------------

def robustness_property(x: np.ndarray, label: int, eps: float, num_outputs: int,
                        lower: float = 0.0, upper: float = 1.0) -> str:
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    lo = np.clip(flat - eps, lower, upper)
    hi = np.clip(flat + eps, lower, upper)
    lines = [f"; L-inf robustness: label {label}, eps {eps!r}, {flat.size} inputs, "
             f"{num_outputs} outputs"]
    lines += [f"(declare-const X_{i} Real)" for i in range(flat.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_outputs)]
    for i in range(flat.size):
        lines.append(f"(assert (<= X_{i} {float(hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo[i])!r}))")
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_outputs) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


# --- VNN-LIB 2.0 (as bench.formats.vnnlib2.robustness_property_v2) ------------------------------------

def _number(value: float) -> str:
    text = np.format_float_positional(float(value), unique=True, trim="0")
    return "0.0" if text == "-0.0" else text


def _index(flat: int, shape: tuple) -> str:
    return ",".join(str(int(i)) for i in np.unravel_index(flat, shape))


def robustness_property_v2(x: np.ndarray, label: int, eps: float, num_outputs: int,
                           lower: float = 0.0, upper: float = 1.0) -> str:
    array = np.asarray(x, dtype=np.float64)
    shape = (1, *array.shape)
    flat = array.reshape(-1)
    lo = np.clip(flat - eps, lower, upper)
    hi = np.clip(flat + eps, lower, upper)
    out_shape = (1, num_outputs)
    lines = [
        "(vnnlib-version <2.0>)",
        f"; L-inf robustness: label {label}, eps {eps!r}, {flat.size} inputs, "
        f"{num_outputs} outputs",
        "(declare-network N",
        f"    (declare-input X float32 [{','.join(map(str, shape))}])",
        f"    (declare-output Y float32 [{','.join(map(str, out_shape))}]))",
    ]
    for i in range(flat.size):
        at = _index(i, shape)
        lines.append(f"(assert (>= X[{at}] {_number(lo[i])}))")
        lines.append(f"(assert (<= X[{at}] {_number(hi[i])}))")
    true_logit = f"Y[{_index(label, out_shape)}]"
    lines.append("(assert (or")
    lines += [f"    (>= Y[{_index(j, out_shape)}] {true_logit})"
              for j in range(num_outputs) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


# --- writing ----------------------------------------------------------------------------------

def vnnlib_name(sample_index: int) -> str:
    return f"vnnlib/sample_{sample_index:04d}.vnnlib"


def format_timeout(timeout: float) -> str:
    # "300", not "300.0": the form every published VNN-COMP instances.csv uses.
    value = float(timeout)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def generate(seed: int, root: Path = HERE) -> list[str]:
    """Write the properties and instances.csv for ``seed`` under ``root``; returns the
    property paths written."""
    with np.load(root / "data" / "pool.npz", allow_pickle=False) as data:
        pool = {key: data[key] for key in data.files}
    eps, timeout = float(pool["eps"]), float(pool["timeout"])
    lower, upper = float(pool["lower"]), float(pool["upper"])
    num_outputs, wanted = int(pool["num_outputs"]), int(pool["properties"])
    models = [str(name) for name in pool["onnx"]]
    write = robustness_property_v2 if int(pool["vnnlib_version"]) == 2 else robustness_property

    total = wanted * len(models) * timeout
    if total > float(pool["max_total_timeout"]):
        raise SystemExit(f"error: {wanted} properties x {len(models)} models x {timeout} s = "
                         f"{total} s exceeds the cap of {float(pool['max_total_timeout'])} s")
    if "hardness" in pool:
        chosen = select_stratified(pool["correct"], pool["hardness"], wanted, seed,
                                   int(pool["strata"]))
        which = "classified correctly by every model and with a predicted difficulty"
    else:
        chosen = select(pool["correct"], wanted, seed)
        which = "classified correctly by every model"
    if chosen.size == 0:
        raise SystemExit(f"error: no sample of the pool is {which}")
    if chosen.size < wanted:
        print(f"warning: only {chosen.size} samples of the pool are {which}; writing "
              f"{chosen.size} properties instead of {wanted}", file=sys.stderr)

    written = []
    (root / "vnnlib").mkdir(exist_ok=True)
    for position in chosen:
        rel = vnnlib_name(int(pool["index"][position]))
        text = write(pool["x"][position], int(pool["y"][position]), eps, num_outputs, lower, upper)
        (root / rel).write_text(text, encoding="utf-8", newline="")
        written.append(rel)
    keep = set(written)
    # Properties of an earlier selection (plain, or gzipped as shipped) and the caches some
    # verifiers write beside them (.compiled) would otherwise linger next to the new ones.
    for path in sorted((root / "vnnlib").glob("sample_*")):
        stale = path.name.endswith((".vnnlib", ".vnnlib.gz", ".vnnlib.compiled"))
        if stale and f"vnnlib/{path.name}" not in keep:
            path.unlink()

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for model in models:
        for rel in written:
            writer.writerow([model, rel, format_timeout(timeout)])
    (root / "instances.csv").write_text(buffer.getvalue(), encoding="utf-8", newline="")
    update_manifest(root, seed, pool, models, chosen, written)
    return written


# --- the manifest -----------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def update_manifest(root: Path, seed: int, pool: dict, models: list[str], chosen: np.ndarray,
                    written: list[str]) -> None:
    """Describe the new selection in ``manifest.json`` (if the folder has one): the fields
    ``bench`` reads (instances, properties, files, benchmark_hash) and the seed."""
    path = root / "manifest.json"
    if not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format_version") != 1:
        return  # not bench's: nothing of it describes what was just written
    levels = {str(m["onnx"]): m["level"] for m in manifest["models"]}
    samples = [(rel, int(pool["index"][pos]), int(pool["y"][pos]), int(pos))
               for rel, pos in zip(written, chosen)]
    manifest["properties"] = [{"vnnlib": rel, "sample_index": index, "label": label,
                               "eps": float(pool["eps"])} for rel, index, label, _ in samples]
    unstable = pool.get("unstable_relus")  # predicted difficulty, where the pool has it
    manifest["instances"] = [
        {"onnx": model, "vnnlib": rel, "timeout": float(pool["timeout"]),
         "level": levels[model], "sample_index": index, "label": label,
         "correct": bool(pool["correct"][number, pos]),
         **({"unstable_relus": int(unstable[number, pos])}
            if unstable is not None and unstable[number, pos] >= 0 else {})}
        for number, model in enumerate(models) for rel, index, label, pos in samples]
    # Only what this script wrote is hashed anew: the models keep the hashes they were shipped
    # with, so that a model changed since is still caught.
    files = {rel: digest for rel, digest in manifest["files"].items()
             if not rel.startswith("vnnlib/")}
    for rel in ["instances.csv", *written]:
        files[rel] = sha256(root / rel)
    manifest["files"] = dict(sorted(files.items()))
    # Models are listed by their plain names and shipped as .gz.
    stored = [m + ".gz" if m + ".gz" in files else m for m in models]
    listed = {"instances.csv", *written, *stored}
    lines = "".join(f"{files.get(rel, '')}  {rel}\n" for rel in sorted(listed))
    manifest["benchmark_hash"] = hashlib.sha256(lines.encode("utf-8")).hexdigest()
    manifest.setdefault("packed", {})["seed"] = seed
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {Path(argv[0]).name} SEED", file=sys.stderr)
        return 2
    try:
        seed = int(argv[1])
    except ValueError:
        print(f"error: SEED must be an integer, got {argv[1]!r}", file=sys.stderr)
        return 2
    if seed < 0:
        print(f"error: SEED must be >= 0 (numpy seeds are non-negative), got {seed}",
              file=sys.stderr)
        return 2
    written = generate(seed)
    print(f"seed {seed}: wrote {len(written)} properties and instances.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
