"""alpha-beta-CROWN one process per instance against batch mode, side by side (and milp).

    .venv/bin/python scripts/compare_abcrown_modes.py instances/<benchmark> [--out DIR]
        [--timeout S] [--milp] [--option key=value ...]

Runs ``abcrown`` with ``batch=false`` and then ``batch=true`` over the benchmark folder(s), each
into a fresh results database under ``--out``, and prints for each mode the run's own wall time,
the sum of the instances' wall times, how much of it was tool start-up (``startup_time``), the
answers, and whether the two modes (and ``milp`` with ``--milp``) agree on every instance both
decide. Timing needs a quiet machine: run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.formats.folder import find_benchmarks
from bench.run.results import read_rows
from bench.run.runner import run_benchmarks

DECIDED = ("sat", "unsat")


def run(folders: list[Path], verifier: str, db: Path, timeout: float | None,
        params: dict) -> tuple[float, list[dict]]:
    started = time.monotonic()
    run_benchmarks(folders, verifier, db, timeout=timeout, progress=False,
                   verifier_params=params)
    return time.monotonic() - started, read_rows(db)


def key(row: dict) -> tuple[str, str, str]:
    return row["benchmark"], row["onnx"], row["vnnlib"]


def describe(name: str, seconds: float, rows: list[dict]) -> str:
    wall = sum(row["wall_time"] or 0.0 for row in rows)
    startup = sum(row.get("startup_time") or 0.0 for row in rows)
    counts = Counter(row["status"] for row in rows)
    decided_by = Counter(row.get("decided_by") or "-" for row in rows if row["status"] in DECIDED)
    return (f"{name:14s} run {seconds:7.1f} s; instances' wall time {wall:7.1f} s, of which "
            f"start-up {startup:6.1f} s; {dict(sorted(counts.items()))}; decided by "
            f"{dict(sorted(decided_by.items()))}")


def disagreements(a: list[dict], b: list[dict]) -> tuple[int, list[str]]:
    """Instances both decide, and those where they differ."""
    answers = {key(row): row["status"] for row in b if row["status"] in DECIDED}
    both, differ = 0, []
    for row in a:
        other = answers.get(key(row))
        if row["status"] in DECIDED and other is not None:
            both += 1
            if other != row["status"]:
                differ.append(f"{'/'.join(key(row))}: {row['status']} vs {other}")
    return both, differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instances", type=Path, help="a benchmark folder or a folder of them")
    parser.add_argument("--out", type=Path, help="where the databases go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, help="override every instance's timeout")
    parser.add_argument("--milp", action="store_true", help="run milp too and compare")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an abcrown parameter for both modes (e.g. config=gpu)")
    args = parser.parse_args(argv)
    folders = find_benchmarks(args.instances)
    out = args.out or Path(tempfile.mkdtemp(prefix="abcrown-modes-"))
    out.mkdir(parents=True, exist_ok=True)
    params = dict(item.split("=", 1) for item in args.option)
    results = {}
    for name, batch in (("single", "false"), ("batch", "true")):
        seconds, rows = run(folders, "abcrown", out / f"abcrown-{name}.db", args.timeout,
                            {**params, "batch": batch})
        results[f"abcrown {name}"] = rows
        print(describe(f"abcrown {name}", seconds, rows), flush=True)
    if args.milp:
        seconds, rows = run(folders, "milp", out / "milp.db", args.timeout, {})
        results["milp"] = rows
        print(describe("milp", seconds, rows), flush=True)
    names = list(results)
    failed = False
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            both, differ = disagreements(results[first], results[second])
            print(f"{first} vs {second}: {both} instances decided by both, "
                  f"{len(differ)} disagree" + "".join(f"\n  {line}" for line in differ))
            failed |= bool(differ)
    print(f"databases in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
