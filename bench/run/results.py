"""The results database: one SQLite row per (benchmark, onnx, vnnlib, verifier).

SQLite in WAL mode with a generous busy timeout, so that several processes (parallel workers,
one runner per verifier or per shard, a merge) can write to the same file. Every write is one
short transaction, so a process killed at any moment leaves either its whole row or nothing. A
rerun replaces the row (upsert); ``is_decided`` tells the runner what it may skip: anything but
``error``, which is retried.

Provenance. Besides what the harness measures (``RunRecord``: verifier version, host, start
time, ...), every row the runner writes says which code and configuration produced it:
``suite_version`` (prune-bench's version), ``verifier_params`` (the verifier's parameters as
JSON) and ``params_hash`` (a short hash of them) and ``device`` (``cpu (<model>)`` or
``cuda:<id> (<name>)``). ``show`` prints them, ``describe_provenance`` gives one line for tables.

Merging (``merge``): shards run on different machines write separate databases that are then
combined on the unique key. When both sides hold a row for the same key, a decided row (any
status but ``error``) beats an ``error``; between two decided rows, or two errors, the newer
``started_at`` wins; on a tie the row already in the target stays. So merging is idempotent,
and merging the same shards in any order gives the same database (up to exact ties).

SQLite over a network filesystem (NFS, Lustre) has unreliable locking and WAL does not work on
it at all: keep each database on a local disk, one per machine, and merge them afterwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from bench.errors import BenchError
from bench.verifiers.harness import RunRecord

KEY = ("benchmark", "onnx", "vnnlib", "verifier")
# What the harness measures, in RunRecord's order ...
RECORD_COLUMNS: dict[str, str] = {
    "benchmark": "TEXT NOT NULL",
    "root": "TEXT",
    "onnx": "TEXT NOT NULL",
    "vnnlib": "TEXT NOT NULL",
    "verifier": "TEXT NOT NULL",
    "verifier_version": "TEXT",
    "timeout": "REAL",
    "status": "TEXT NOT NULL",
    "reason": "TEXT",
    "wall_time": "REAL",
    "verifier_time": "REAL",
    "peak_memory_mb": "REAL",
    "peak_gpu_memory_mb": "REAL",
    "cex_check": "TEXT",
    "cex_detail": "TEXT",
    "log_path": "TEXT",
    "started_at": "TEXT",
    "host": "TEXT",
    "decided_by": "TEXT",
    "startup_time": "REAL",
}
assert list(RECORD_COLUMNS) == [f.name for f in dataclasses.fields(RunRecord)], "keep in step"
# ... and what the runner adds: which code, configuration and device produced the row.
PROVENANCE_COLUMNS: dict[str, str] = {
    "suite_version": "TEXT",
    "verifier_params": "TEXT",  # JSON, keys sorted
    "params_hash": "TEXT",
    "device": "TEXT",
}
COLUMNS: dict[str, str] = {**RECORD_COLUMNS, **PROVENANCE_COLUMNS}

BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for another process's transaction
UNDECIDED = "error"  # the one status that is retried, and loses to any other when merging


def params_hash(params: Mapping[str, Any]) -> str:
    """A short, stable hash of a verifier's parameters (key order does not matter)."""
    return hashlib.sha256(params_json(params).encode()).hexdigest()[:12]


def params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str, separators=(",", ":"))


class ResultsDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._create()

    @property
    def conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a child process opens its own.
        if self._conn is None or self._pid != os.getpid():
            # Autocommit: every write is one upsert statement, so no transaction is held open.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _create(self) -> None:
        columns = ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        self.conn.execute(f"""
            CREATE TABLE IF NOT EXISTS results (
                id INTEGER PRIMARY KEY,
                {columns},
                UNIQUE ({", ".join(KEY)})
            )""")
        # A database written by an older version gains the newer columns (as NULL). Altered
        # inside one write transaction that looks again: several workers open the same old
        # database at once, and only the first may add a column.
        if self._missing_columns():
            with self.transaction():
                for name in self._missing_columns():
                    kind = COLUMNS[name].replace(" NOT NULL", "")  # existing rows get NULL
                    self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")

    def _missing_columns(self) -> list[str]:
        present = {row["name"] for row in self.conn.execute("PRAGMA table_info(results)")}
        return [name for name in COLUMNS if name not in present]

    def transaction(self) -> "_Transaction":
        """``with db.transaction(): ...``: one write transaction, taken at once (BEGIN
        IMMEDIATE), so that it waits for other writers up front instead of failing midway."""
        return _Transaction(self.conn)

    def record(self, run: RunRecord | Mapping[str, Any]) -> None:
        """Insert the result, replacing an earlier one for the same instance and verifier. A
        mapping may carry the provenance columns besides the ``RunRecord`` fields."""
        row = run.to_dict() if isinstance(run, RunRecord) else dict(run)
        row["status"] = getattr(row["status"], "value", row["status"])  # a Status or its value
        self.conn.execute(_UPSERT, [row.get(name) for name in COLUMNS])

    def get(self, benchmark: str, onnx: str, vnnlib: str, verifier: str) -> dict | None:
        row = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM results WHERE benchmark = ? AND onnx = ? "
            f"AND vnnlib = ? AND verifier = ?", (benchmark, onnx, vnnlib, verifier)).fetchone()
        return dict(row) if row else None

    def rows(self, benchmark: str | None = None, verifier: str | None = None,
             status: str | None = None) -> list[dict]:
        where, args = [], []
        for column, value in (("benchmark", benchmark), ("verifier", verifier),
                              ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY benchmark, verifier, onnx, vnnlib"
        return [dict(row) for row in self.conn.execute(sql, args)]

    def is_decided(self, benchmark: str, onnx: str, vnnlib: str, verifier: str,
                   timeout: float | None = None, params_hash: str | None = None) -> bool:
        """A result exists and is not ``error`` (errors are retried). With ``timeout``, a
        ``timeout`` result obtained under a shorter limit is not decided either, so that raising
        the limit reruns exactly those instances. With ``params_hash``, a result obtained with
        other verifier parameters is not decided (so changing a parameter reruns everything
        rather than mixing two configurations in one table); rows from before provenance was
        recorded (no hash) are kept."""
        row = self.get(benchmark, onnx, vnnlib, verifier)
        if row is None or row["status"] == UNDECIDED:
            return False
        if timeout is not None and row["status"] == "timeout" and (row["timeout"] or 0) < timeout:
            return False
        if params_hash is not None and row["params_hash"] not in (None, params_hash):
            return False
        return True

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_UPSERT = (
    f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in COLUMNS if name not in KEY))


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# --------------------------------------------------------------------------- merging


@dataclass
class MergeSummary:
    target: str
    inserted: int = 0  # keys the target did not have
    replaced: int = 0  # the source's row won (decided over error, or newer)
    kept: int = 0  # the target's row won, or both were the same
    sources: list[str] = field(default_factory=list)
    skipped_sources: list[str] = field(default_factory=list)  # the target itself

    def __str__(self) -> str:
        text = (f"merged {len(self.sources)} database(s) into {self.target}: {self.inserted} "
                f"new, {self.replaced} replaced, {self.kept} kept")
        if self.skipped_sources:
            text += f" (skipped the target itself: {', '.join(self.skipped_sources)})"
        return text


def _rank(status: str | None, started_at: str | None) -> tuple[bool, str]:
    """Which of two rows for one key a merge keeps: the larger rank. ISO 8601 times in UTC
    compare correctly as text."""
    return (status != UNDECIDED, started_at or "")


def merge(sources: Iterable[str | Path], target: str | Path) -> MergeSummary:
    """Merge the results databases ``sources`` into ``target`` (created if missing), one row per
    key; see the module's docstring for which row wins. Sources are only read. Each source is
    merged in one transaction, so a merge killed midway leaves whole sources merged or not."""
    target = Path(target)
    summary = MergeSummary(target=str(target))
    with ResultsDB(target) as db:
        for source in map(Path, sources):
            if target.exists() and source.exists() and source.resolve() == target.resolve():
                summary.skipped_sources.append(str(source))
                continue
            rows = read_rows(source)
            with db.transaction() as conn:
                for row in rows:
                    existing = conn.execute(
                        "SELECT status, started_at FROM results WHERE benchmark = ? AND "
                        "onnx = ? AND vnnlib = ? AND verifier = ?",
                        [row[k] for k in KEY]).fetchone()
                    if existing is None:
                        summary.inserted += 1
                    elif _rank(row["status"], row["started_at"]) > _rank(*existing):
                        summary.replaced += 1
                    else:
                        summary.kept += 1
                        continue
                    conn.execute(_UPSERT, [row.get(name) for name in COLUMNS])
            summary.sources.append(str(source))
    return summary


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a results database, opened read-only; columns it lacks (an older version
    wrote it) are None."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"no results database at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        raise BenchError(f"cannot open results database {path}: {err}") from None
    try:
        conn.row_factory = sqlite3.Row
        present = {row["name"] for row in conn.execute("PRAGMA table_info(results)")}
        if not set(KEY) <= present or "status" not in present:
            raise BenchError(f"{path} is not a results database (no results table)")
        select = ", ".join(name if name in present else f"NULL AS {name}" for name in COLUMNS)
        return [dict(row) for row in conn.execute(f"SELECT {select} FROM results")]
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{path} is not a results database ({err})") from None
    finally:
        conn.close()


# --------------------------------------------------------------------------- showing


# What identifies the code and setting behind a group of results.
PROVENANCE_GROUP = ("benchmark", "verifier", "verifier_version", "params_hash", "suite_version",
                    "host", "device")
INSTANCE_COLUMNS = ("benchmark", "onnx", "vnnlib", "verifier", "status", "wall_time",
                    "verifier_version", "params_hash", "suite_version", "host", "device",
                    "started_at")


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One entry per distinct provenance (``PROVENANCE_GROUP``): how many results, per status,
    and when the first and the last of them started."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(name) for name in PROVENANCE_GROUP)
        group = groups.setdefault(key, {**dict(zip(PROVENANCE_GROUP, key)), "results": 0,
                                        "statuses": Counter(), "first_start": None,
                                        "last_start": None, "verifier_params": None})
        group["results"] += 1
        group["statuses"][row["status"]] += 1
        group["verifier_params"] = group["verifier_params"] or row.get("verifier_params")
        started = row.get("started_at")
        if started:
            group["first_start"] = min(filter(None, (group["first_start"], started)))
            group["last_start"] = max(filter(None, (group["last_start"], started)))
    return [groups[key] for key in sorted(groups, key=lambda k: tuple(str(v) for v in k))]


def describe_provenance(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line saying what produced ``rows``, for the notes under a table, e.g. ``marabou
    2.0.0, parameters 3f2a9c01d2e4 {"num_workers":1}, prune-bench 0.1.0, on host-a (cpu (AMD
    EPYC 7B13))``. Several distinct values are all listed: a mixed table should say so."""
    rows = list(rows)

    def values(name: str) -> list[str]:
        return sorted({str(r.get(name)) for r in rows if r.get(name) is not None})

    versions = ", ".join(sorted({f"{r.get('verifier')} {r.get('verifier_version') or ''}".strip()
                                 for r in rows if r.get("verifier")}))
    params = "; ".join(sorted({f"{r.get('params_hash')} {r.get('verifier_params') or ''}".strip()
                               for r in rows if r.get("params_hash")}))
    parts = [versions or "unknown verifier"]
    if params:
        parts.append(f"parameters {params}")
    if values("suite_version"):
        parts.append(f"prune-bench {', '.join(values('suite_version'))}")
    where = ", ".join(values("host"))
    if where:
        devices = ", ".join(values("device"))
        parts.append(f"on {where}" + (f" ({devices})" if devices else ""))
    return ", ".join(parts)


def format_table(rows: list[Mapping[str, Any]], columns: Iterable[str]) -> str:
    """A plain, aligned text table (no dependency, fits a terminal or a log file)."""
    columns = list(columns)

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, Counter):
            return " ".join(f"{k} {v}" for k, v in sorted(value.items()))
        return str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def show(path: str | Path, benchmark: str | None = None, verifier: str | None = None,
         status: str | None = None, instances: bool = False) -> str:
    """What ``bench results show`` prints: the results grouped by provenance (how many, per
    status, verifier version, parameter hash, suite version, host, device, first and last
    start), then the parameters behind each hash; or with ``instances`` one line per result."""
    rows = [row for row in read_rows(path)
            if all(value is None or row[column] == value for column, value in
                   (("benchmark", benchmark), ("verifier", verifier), ("status", status)))]
    if not rows:
        return f"no results in {path}" + (" matching the filter" if
                                          (benchmark or verifier or status) else "")
    if instances:
        rows.sort(key=lambda r: (r["benchmark"], r["verifier"], r["onnx"], r["vnnlib"]))
        return format_table(rows, INSTANCE_COLUMNS)
    groups = summarize(rows)
    text = format_table(groups, [*PROVENANCE_GROUP, "results", "statuses", "first_start",
                                 "last_start"])
    params = sorted({(g["params_hash"], g["verifier_params"]) for g in groups
                     if g["params_hash"]}, key=str)
    if params:
        text += "\n\nparameters:\n" + "\n".join(f"  {h}  {p or '?'}" for h, p in params)
    return text
