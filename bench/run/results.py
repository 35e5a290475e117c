"""The results database: one SQLite row per (benchmark, onnx, vnnlib, verifier).

SQLite in WAL mode with a generous busy timeout, so that several processes (parallel workers,
one runner per verifier or per shard, several ``bench run`` on the same file, a merge) can write
to the same file. Every write is one short transaction, so a process killed at any moment leaves
either its whole row or nothing. A rerun replaces the row (upsert); ``is_decided`` tells the
runner what it may skip: anything but ``error``, which is retried. The ``verifier`` column holds
``Verifier.result_name`` (``vnncomp:<tool>`` for a VNN-COMP tool), so two tools never share rows.

Several runs on one database. A run claims each instance in the ``claims`` table before it
starts it (``bench.run.claims``), and releases the claim in the same transaction that writes the
instance's row. A row written by a run (``record(row, run=...)``) never replaces a decided row
with an ``error`` when that decided row was obtained with the same parameters after the run
started: only a concurrent run can have written it, and its answer stands. (An error does
replace a decided row from before the run, e.g. under ``--rerun``: that is what the run was
asked to redo.)

Databases from elsewhere are checked before use: a file that is not SQLite, an SQLite file of
something else, a ``results`` table without the key, or a damaged file is refused with a
``BenchError`` that names the file, never used or altered (``ResultsDB``, ``read_rows``).

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
import itertools
import json
import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from bench.errors import BenchError
from bench.verifiers.base import Status
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
    "benchmark_hash": "TEXT",
    "stage_times": "TEXT",  # JSON: seconds per cascade stage
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

# Who is verifying which instance right now: one row per claimed instance (``bench.run.claims``).
CLAIM_COLUMNS: dict[str, str] = {
    "benchmark": "TEXT NOT NULL",
    "onnx": "TEXT NOT NULL",
    "vnnlib": "TEXT NOT NULL",
    "verifier": "TEXT NOT NULL",
    "run_id": "TEXT NOT NULL",  # the claiming run
    "host": "TEXT",  # where it runs ...
    "boot_id": "TEXT",  # ... since which boot (a pid means nothing after a reboot)
    "pid": "INTEGER",  # the run's process ...
    "pid_start": "INTEGER",  # ... and when it started (clock ticks since boot): pids are reused
    "claimed_at": "TEXT",  # ISO 8601, UTC
    "heartbeat": "REAL",  # Unix time of the owner's last sign of life
}

BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for another process's transaction
UNDECIDED = Status.ERROR.value  # the one status that is retried, and loses to any other in merges
_STATUSES = frozenset(status.value for status in Status)


def params_hash(params: Mapping[str, Any]) -> str:
    """A short, stable hash of a verifier's parameters (key order does not matter)."""
    return hashlib.sha256(params_json(params).encode()).hexdigest()[:12]


def params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str, separators=(",", ":"))


def is_decided_row(row: Mapping[str, Any] | None, timeout: float | None = None,
                   params_hash: str | None = None, since: str | None = None) -> bool:
    """Whether ``row`` settles its instance: it exists and is not ``error`` (errors are retried).
    With ``timeout``, a ``timeout`` result obtained under a shorter limit is not decided either,
    so that raising the limit reruns exactly those instances. With ``params_hash``, a result
    obtained with other verifier parameters is not decided (so changing a parameter reruns
    everything rather than mixing two configurations in one table); rows from before provenance
    was recorded (no hash) are kept. With ``since`` (an ISO 8601 UTC time in whole seconds, a
    run's start: ``--rerun``), only a result started after it counts: a run that redoes
    everything still skips what a concurrent run has just done. (A result of the very second
    the run started is redone: that costs a duplicate at worst, never a result.)"""
    if row is None or row["status"] == UNDECIDED:
        return False
    if timeout is not None and row["status"] == Status.TIMEOUT.value and \
            (row["timeout"] or 0) < timeout:
        return False
    if params_hash is not None and row["params_hash"] not in (None, params_hash):
        return False
    if since is not None and (row["started_at"] or "") <= since:
        return False
    return True


class RunOwner(Protocol):
    """What ``ResultsDB.record`` needs to know of the run that wrote a row (``bench.run.claims.
    RunIdentity``)."""

    run_id: str
    started_at: str  # ISO 8601, UTC, whole seconds: the run's start


class ResultsDB:
    """A results database, opened for writing (created if missing, or if the file is empty).
    A file that is not a results database is refused with a ``BenchError`` naming it, before
    anything is written to it; ``check`` also runs SQLite's quick integrity check (once per
    command, not in every worker)."""

    def __init__(self, path: str | Path, *, check: bool = False):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        if self.path.is_dir():
            raise BenchError(f"{self.path} is a directory, not a results database; give a file "
                             "path (e.g. results/results.db)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create(check)
        except OSError as err:
            self.close()
            raise BenchError(f"cannot use results database {self.path}: "
                             f"{err.strerror or err}") from None
        except sqlite3.Error as err:
            self.close()
            raise database_error(self.path, err) from None

    @property
    def conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a child process opens its own.
        if self._conn is None or self._pid != os.getpid():
            # Autocommit: every write is one statement or one explicit short transaction.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _create(self, check: bool) -> None:
        # Several processes opening a new database at once can meet in a lock upgrade that SQLite
        # answers with an immediate SQLITE_BUSY instead of waiting (its deadlock rule, which the
        # busy timeout does not cover): such a start is tried again, within the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        for attempt in itertools.count():
            try:
                return self._create_once(check)
            except sqlite3.OperationalError as err:
                name = getattr(err, "sqlite_errorname", "") or ""
                if not name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) \
                        or time.monotonic() > deadline:
                    raise
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                time.sleep(min(0.01 * 2 ** attempt, 0.5) * random.uniform(0.5, 1.0))

    def _create_once(self, check: bool) -> None:
        # Judge the file before changing anything in it (even WAL mode is written to the file).
        problem = schema_problem(self.conn, writing=True)
        if problem is None and check:
            problem = _integrity_problem(self.conn, self.path)
        if problem is not None:
            raise BenchError(f"{self.path} {problem}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        with self.transaction():
            self._create_tables()
        # A database written by an older version gains the newer columns (as NULL). Altered
        # inside one write transaction that looks again: several workers open the same old
        # database at once, and only the first may add a column.
        if self._missing_columns():
            with self.transaction():
                for name in self._missing_columns():
                    kind = COLUMNS[name].replace(" NOT NULL", "")  # existing rows get NULL
                    self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")

    def _create_tables(self) -> None:
        columns = ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        self.conn.execute(f"""
            CREATE TABLE IF NOT EXISTS results (
                id INTEGER PRIMARY KEY,
                {columns},
                UNIQUE ({", ".join(KEY)})
            )""")
        claim_columns = ",\n    ".join(f"{name} {kind}" for name, kind in CLAIM_COLUMNS.items())
        self.conn.execute(f"""
            CREATE TABLE IF NOT EXISTS claims (
                {claim_columns},
                PRIMARY KEY ({", ".join(KEY)})
            )""")

    def _missing_columns(self) -> list[str]:
        present = {row["name"] for row in self.conn.execute("PRAGMA table_info(results)")}
        return [name for name in COLUMNS if name not in present]

    def transaction(self) -> "_Transaction":
        """``with db.transaction(): ...``: one write transaction, taken at once (BEGIN
        IMMEDIATE), so that it waits for other writers up front instead of failing midway."""
        return _Transaction(self.conn)

    def record(self, result: RunRecord | Mapping[str, Any], *, by: RunOwner | None = None) -> None:
        """Insert the result, replacing an earlier one for the same instance and verifier. A
        mapping may carry the provenance columns besides the ``RunRecord`` fields.

        With ``by``, the run that produced it: the run's claim on the instance is released in
        the same transaction, and an ``error`` does not replace a decided row obtained with the
        same parameters after the run started (another run's answer; see the module's
        docstring)."""
        row = result.to_dict() if isinstance(result, RunRecord) else dict(result)
        row["status"] = getattr(row["status"], "value", row["status"])  # a Status or its value
        values = [row.get(name) for name in COLUMNS]
        if by is None:
            self.conn.execute(_UPSERT, values)
            return
        with self.transaction() as conn:
            conn.execute(_UPSERT_KEEPING_ANSWERS, [*values, by.started_at])
            conn.execute(f"DELETE FROM claims WHERE {_KEY_MATCH} AND run_id = ?",
                         [*(row[name] for name in KEY), by.run_id])

    def get(self, benchmark: str, onnx: str, vnnlib: str, verifier: str) -> dict | None:
        row = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM results WHERE {_KEY_MATCH}",
            (benchmark, onnx, vnnlib, verifier)).fetchone()
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
                   timeout: float | None = None, params_hash: str | None = None,
                   since: str | None = None) -> bool:
        """Whether the instance has a result that settles it (``is_decided_row``)."""
        return is_decided_row(self.get(benchmark, onnx, vnnlib, verifier), timeout=timeout,
                              params_hash=params_hash, since=since)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEY_MATCH = " AND ".join(f"{name} = ?" for name in KEY)
_UPSERT = (
    f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in COLUMNS if name not in KEY))
# The last parameter is the writing run's start: a decided row of the same parameters started
# after it is a concurrent run's answer, and an error does not replace it.
_UPSERT_KEEPING_ANSWERS = (
    f"{_UPSERT} WHERE excluded.status != '{UNDECIDED}' OR results.status = '{UNDECIDED}' "
    "OR results.params_hash IS NOT excluded.params_hash OR COALESCE(results.started_at, '') <= ?")


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# --------------------------------------------------------------------------- hostile files

# What to do about each kind of SQLite failure (by the start of its error name).
_ADVICE = {
    "SQLITE_NOTADB": "is not an SQLite database: move it away, or give another file",
    "SQLITE_CORRUPT": "is damaged: restore it from a copy, or save what is left of it with "
                      "`sqlite3 {path} .recover`",
    "SQLITE_BUSY": "is locked by another process: try again when that one is done",
    "SQLITE_LOCKED": "is locked by another process: try again when that one is done",
    "SQLITE_CANTOPEN": "cannot be opened: check the path and its permissions",
    "SQLITE_READONLY": "is read-only: give a writable file",
    "SQLITE_FULL": "cannot grow: the disk is full",
    "SQLITE_IOERR": "cannot be read or written (a disk or filesystem error)",
}


def database_error(path: Path, err: sqlite3.Error) -> BenchError:
    """A one-line ``BenchError`` for an SQLite failure on the results database ``path``."""
    name = getattr(err, "sqlite_errorname", "") or ""
    advice = next((text for prefix, text in _ADVICE.items() if name.startswith(prefix)),
                  "is not a usable results database: move it away, or give another file")
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return BenchError(f"{path} {advice.format(path=path)} ({detail})")


def schema_problem(conn: sqlite3.Connection, writing: bool) -> str | None:
    """Why the database on ``conn`` is not a results database prune-bench can read (or, with
    ``writing``, also write), as the end of a sentence that starts with its path; None if it is
    one. For writing, a database without any table (a new or empty file) is fine."""
    advice = "give another file (this one was not written by prune-bench, or was altered)"
    tables = {row[0]: row[1] for row in conn.execute(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')")}
    if "results" not in tables:
        if not tables:
            return None if writing else "holds no results yet (an empty database): run " \
                                        "`bench run` into it first, or check the path"
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        return f"is an SQLite database of something else (tables: {shown}); {advice}"
    if tables["results"] != "table":
        return f"has a results {tables['results']}, not a table; {advice}"
    columns = {row[1]: row for row in conn.execute("PRAGMA table_info(results)")}
    missing = [name for name in (*KEY, "status") if name not in columns]
    if missing:
        return f"has a results table without the column(s) {', '.join(missing)}; {advice}"
    # Without it, one instance could have several rows, and every count would be wrong.
    unique = [[row[2] for row in conn.execute(f"PRAGMA index_info('{index[1]}')")]
              for index in conn.execute("PRAGMA index_list(results)") if index[2]]
    if not any(sorted(names) == sorted(KEY) for names in unique):
        return f"has a results table without a unique key on ({', '.join(KEY)}); {advice}"
    if not writing:
        return None
    # (cid, name, type, notnull, default, pk): a column we never fill must not be required.
    required = [name for name, info in columns.items()
                if name not in COLUMNS and info[3] and info[4] is None and not info[5]]
    if required:
        return f"has a results table with required column(s) {', '.join(required)} that " \
               f"prune-bench does not fill; {advice}"
    if "claims" in tables:
        present = {row[1] for row in conn.execute("PRAGMA table_info(claims)")}
        if tables["claims"] != "table" or not set(CLAIM_COLUMNS) <= present:
            return f"has a claims table that is not prune-bench's; {advice}"
    return None


def _integrity_problem(conn: sqlite3.Connection, path: Path) -> str | None:
    found = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    if found == ["ok"]:
        return None
    return (f"is damaged ({found[0][:200]}): restore it from a copy, or save what is left of "
            f"it with `sqlite3 {path} .recover`")


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
    wrote it) are None. A file that is not a results database, or holds a row that no
    prune-bench wrote (an unknown status, text where a number belongs), is refused with a
    one-line ``BenchError`` naming it: a table computed from such rows would be evidence of
    nothing."""
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"{path} is a directory, not a results database; give the database "
                         "file (e.g. results/results.db)")
    if not path.is_file():
        raise BenchError(f"no results database at {path}; run `bench run` first, or check the "
                         "path")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        raise database_error(path, err) from None
    try:
        conn.row_factory = sqlite3.Row
        problem = schema_problem(conn, writing=False)
        if problem is not None:
            raise BenchError(f"{path} {problem}")
        present = {row["name"] for row in conn.execute("PRAGMA table_info(results)")}
        select = ", ".join(name if name in present else f"NULL AS {name}" for name in COLUMNS)
        rows = [dict(row) for row in conn.execute(f"SELECT {select} FROM results")]
    except sqlite3.Error as err:
        raise database_error(path, err) from None
    finally:
        conn.close()
    for row in rows:
        problem = _row_problem(row)
        if problem:
            where = ", ".join(f"{str(row.get(name))[:60]!r}" for name in KEY)
            raise BenchError(f"{path}: the row ({where}) {problem}; it was not written by "
                             "prune-bench or was altered: remove or fix that row")
    return rows


_NUMBER_COLUMNS = frozenset(name for name, kind in COLUMNS.items() if kind.startswith("REAL"))


def _row_problem(row: Mapping[str, Any]) -> str | None:
    for name in KEY:
        if not isinstance(row[name], str) or not row[name]:
            return f"has {name} = {row[name]!r:.60}, not a name"
    if row["status"] not in _STATUSES:
        return (f"has status {row['status']!r:.60}, not one of "
                f"{', '.join(sorted(_STATUSES))}")
    for name, value in row.items():
        if value is None:
            continue
        if name in _NUMBER_COLUMNS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"has {name} = {value!r:.60}, not a number"
        elif not isinstance(value, str):
            return f"has {name} = {value!r:.60}, not text"
    return None


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
