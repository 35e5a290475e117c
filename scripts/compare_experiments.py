"""Two experiments on the same test samples, level by level: is B's verified accuracy different
from A's? (For example IMP+NRS against IMP: the paper's question 2.)

    .venv/bin/bench results export --results DB --out study.csv
    .venv/bin/python scripts/compare_experiments.py study.csv mnist-cnn4-crown-ibp-imp \\
        mnist-cnn4-crown-ibp-imp+nrs [--verifier milp]

Both experiments must verify the same samples (the first N of the test split, as every build
does) under the same seeds. Per level: verified accuracy of each (pooled over seeds, 95 % Wilson
interval), the mean over seeds of B - A with a two-stage paired bootstrap interval, and the exact
McNemar test on the discordant pairs pooled over seeds, Holm-adjusted over the levels: the same
statistics `bench tables` uses against the dense level (bench.collate.stats). Prints Markdown.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from bench.collate.stats import holm, mcnemar_exact, paired_bootstrap_interval, wilson_interval


def compare(rows: pd.DataFrame, first: str, second: str, verifier: str) -> list[list[str]]:
    rows = rows[rows["verifier"] == verifier]
    pairs = (rows[rows["experiment_name"] == first]
             .merge(rows[rows["experiment_name"] == second],
                    on=["seed", "level", "sample_index"], suffixes=("_a", "_b")))
    if pairs.empty:
        raise SystemExit(f"no sample has a result from both {first} and {second} ({verifier})")
    table, pvalues = [], []
    for level, at_level in sorted(pairs.groupby("level")):
        a, b = at_level["verified_a"].astype(bool), at_level["verified_b"].astype(bool)
        gained, lost = int((b & ~a).sum()), int((a & ~b).sum())
        pvalues.append(mcnemar_exact(gained, lost))
        per_seed = [(g["verified_b"].astype(int) - g["verified_a"].astype(int)).tolist()
                    for _, g in at_level.groupby("seed")]
        low, high = paired_bootstrap_interval(per_seed)
        mean = 100 * sum(sum(d) / len(d) for d in per_seed) / len(per_seed)
        cells = []
        for verified in (a, b):
            lo, hi = wilson_interval(int(verified.sum()), len(verified))
            cells.append(f"{100 * verified.mean():.1f} ({100 * lo:.1f}-{100 * hi:.1f})")
        table.append([str(level), str(len(at_level)), *cells,
                      f"{mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]", f"{gained}/{lost}"])
    for row, p in zip(table, holm(pvalues)):
        row.append(f"{p:.3f}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="CSV or Parquet from `bench results export`")
    parser.add_argument("first", help="experiment A (its experiment_name)")
    parser.add_argument("second", help="experiment B")
    parser.add_argument("--verifier", default="milp")
    args = parser.parse_args(argv)
    read = pd.read_parquet if args.export.endswith(".parquet") else pd.read_csv
    table = compare(read(args.export), args.first, args.second, args.verifier)
    headers = ["level", "pairs", f"ver % {args.first} (95% CI)", f"ver % {args.second} (95% CI)",
               "mean Δ pp [95% CI]", "B gained/lost", "McNemar p (Holm)"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
