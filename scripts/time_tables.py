"""Time ``bench.collate.report.make_tables`` (``bench tables``) on a results database.

    .venv/bin/python scripts/time_tables.py results/results.db [--out DIR]
    .venv/bin/python scripts/time_tables.py --synthetic 10x5x17x200 [--verifiers 1]

``--synthetic PRUNERSxSEEDSxLEVELSxSAMPLES`` builds a fake paper-sized experiment in a
temporary folder first (manifest.json files and a results database; no ONNX or VNN-LIB files,
which the tables never read), e.g. 10x5x17x200 is Table 2's grid for one dataset and training:
10 pruners, 5 seeds, 16 pruning levels plus the dense one, the first 200 test samples.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.run.results import ResultsDB
from bench.collate.report import make_tables

PRUNERS = ("imp", "snip", "taylor", "hydra", "hydra+nrs", "imp+rs", "imp+nrs", "random",
           "struct-lth", "slim")
STRUCTURED = {"struct-lth", "slim"}


def synthetic(base: Path, pruners: int, seeds: int, levels: int, samples: int,
              verifiers: int) -> Path:
    """Manifests and a results database for ``pruners`` x ``seeds`` benchmarks."""
    rng = random.Random(0)
    db_path = base / "results.db"
    with ResultsDB(db_path) as db, db.transaction():
        for p in range(pruners):
            pruner = PRUNERS[p % len(PRUNERS)] + (f"-{p}" if p >= len(PRUNERS) else "")
            for s in range(seeds):
                seed = 100 * (s + 1)
                root = base / "instances" / f"{pruner}-{seed}"
                root.mkdir(parents=True)
                models, instances = [], []
                for level in range(levels):
                    onnx = f"onnx/level_{level:02d}.onnx"
                    rate = 0.89 if pruner in STRUCTURED else 0.8
                    models.append({
                        "onnx": onnx, "level": level, "remain_ratio": rate ** level,
                        "clean_accuracy": rng.uniform(0.5, 0.6), "layer_sparsity": {},
                        "standard_accuracy": rng.uniform(0.5, 0.6),
                        "pgd_accuracy": rng.uniform(0.4, 0.5),
                        "instability": rng.uniform(1, 10) / (level + 1),
                        "instability_pre_bn": rng.uniform(5, 20) / (level + 1),
                        "unstable_ratio": rng.uniform(0.1, 0.3) / (level + 1),
                        "seed": seed, "pruner": pruner, "structured": pruner in STRUCTURED,
                    })
                    for i in range(samples):
                        instances.append({"onnx": onnx, "vnnlib": f"vnnlib/sample_{i:04d}.vnnlib",
                                          "timeout": 300.0, "level": level, "sample_index": i,
                                          "label": 0, "correct": rng.random() < 0.6})
                        for v in range(verifiers):
                            db.record({
                                "benchmark": root.name, "root": str(root), "onnx": onnx,
                                "vnnlib": f"vnnlib/sample_{i:04d}.vnnlib",
                                "verifier": f"verifier{v}", "verifier_version": "1.0",
                                "timeout": 300.0,
                                "status": rng.choice(("unsat", "unsat", "sat", "timeout")),
                                "wall_time": rng.uniform(1, 10), "peak_memory_mb": 500.0,
                                "started_at": "2026-01-01T00:00:00+00:00", "host": "synthetic",
                                "suite_version": "0.1.0", "device": "cpu"})
                manifest = {
                    "format_version": 1, "benchmark": root.name, "suite_version": "0.1.0",
                    "created": "2026-01-01T00:00:00+00:00",
                    "config": {"dataset": "cifar10", "model": "cnn7", "training": "crown-ibp",
                               "pruner": pruner, "eps": 2 / 255, "seed": seed},
                    "experiment": {"name": pruner, "hash": f"synthetic-{pruner}", "seed": seed},
                    "dataset": {"name": "cifar10"}, "eps": 2 / 255, "timeout": 300.0,
                    "models": models, "instances": instances,
                    "files": {"onnx/level_00.onnx": f"dense-{seed}"},
                }
                (root / "manifest.json").write_text(json.dumps(manifest))
    return db_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="results database")
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument("--synthetic", help="PRUNERSxSEEDSxLEVELSxSAMPLES, e.g. 10x5x17x200")
    parser.add_argument("--verifiers", type=int, default=1, help="with --synthetic")
    args = parser.parse_args(argv)
    if (args.results is None) == (args.synthetic is None):
        parser.error("give a results database or --synthetic, not both")
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results
        if args.synthetic:
            pruners, seeds, levels, samples = (int(x) for x in args.synthetic.lower().split("x"))
            start = time.perf_counter()
            results = synthetic(Path(tmp), pruners, seeds, levels, samples, args.verifiers)
            print(f"built the synthetic experiment in {time.perf_counter() - start:.1f} s")
        out = args.out or Path(tmp) / "tables"
        start = time.perf_counter()
        written = make_tables(results, out)
        seconds = time.perf_counter() - start
        figures = sum(p.suffix == ".png" for p in written)
        print(f"make_tables: {seconds:.1f} s, {len(written)} files ({figures} PNG) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
