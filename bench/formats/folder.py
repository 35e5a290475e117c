"""The benchmark folder: the one interface between building and running, written once here.

A benchmark folder follows VNN-COMP::

    root/instances.csv       no header; ``onnx,vnnlib,timeout`` per row, paths relative to root
    root/onnx/...            the models (``X.onnx``, or ``X.onnx.gz`` as VNN-COMP publishes them)
    root/vnnlib/...          the properties (likewise, possibly gzipped)
    root/manifest.json       ours only: what everything is, and the sha256 of every file

Everything that reads or writes these files goes through this module: ``Instance`` (one row of
``instances.csv``), reading and writing ``instances.csv`` and ``manifest.json``, path safety
(``safe_join``), size limits, atomic writes and hashes. Exporting (``bench.build.export``),
running (``bench.run``), checking and packing (``bench.share``) use the same rules.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError


FORMAT_VERSION = 1

MANIFEST = "manifest.json"

INSTANCES = "instances.csv"

VNNCOMP_MAX_TOTAL_TIMEOUT = 6 * 3600.0  # seconds; VNN-COMP's cap on a benchmark's timeouts

@dataclass(frozen=True)
class Instance:
    """One row of a benchmark's instances.csv."""

    benchmark: str  # the benchmark's name (see ``read_instances``)
    root: Path  # the benchmark folder
    onnx: str  # relative to root, as written in instances.csv
    vnnlib: str
    timeout: float
    benchmark_hash: str = ""  # the benchmark's content hash; "" where not known
    # The files to read, where they are not root/onnx and root/vnnlib: the ``.gz`` that
    # instances.csv's name stands for, or its uncompressed copy (see ``materialize``).
    onnx_file: Path | None = None
    vnnlib_file: Path | None = None

    @property
    def onnx_path(self) -> Path:
        return self.onnx_file or self.root / self.onnx

    @property
    def vnnlib_path(self) -> Path:
        return self.vnnlib_file or self.root / self.vnnlib


@dataclass(frozen=True)
class Limits:
    """Largest sizes accepted, in bytes (of the decompressed content for ``.gz`` files)."""

    onnx_bytes: int = 2 << 30  # protobuf cannot hold a larger model in one file anyway
    vnnlib_bytes: int = 512 << 20
    csv_bytes: int = 64 << 20
    manifest_bytes: int = 256 << 20

# --- paths -------------------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")

def safe_join(root: str | Path, relative: str, where: str | None = None) -> Path:
    """``root / relative`` resolved, if it stays inside ``root``; else a ``BenchError`` that
    starts with ``where`` (e.g. ``"instances.csv, line 3"``).

    Refused: empty paths, absolute paths (``/x``, ``\\x``, ``C:x``), ``..`` components that climb
    above ``root``, and paths whose symlinks resolve outside ``root``. The file need not exist."""
    prefix = f"{where}: " if where else ""
    if not relative or "\0" in relative:
        raise BenchError(f"{prefix}empty or invalid path {relative!r}")
    if relative.startswith(("/", "\\")) or _DRIVE.match(relative):
        raise BenchError(f"{prefix}path {relative!r} is absolute; paths must be relative to the "
                         "benchmark folder")
    # Judge ".." before any symlink is followed, on both separators so that a path meant for
    # Windows cannot climb either.
    depth = 0
    for part in re.split(r"[\\/]+", relative):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise BenchError(f"{prefix}path {relative!r} leads out of the benchmark folder "
                                 "with '..'")
        elif part not in ("", "."):
            depth += 1
    try:
        root = Path(root).resolve()
        resolved = (root / relative).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
        raise BenchError(f"{prefix}path {relative!r} cannot be resolved ({err})") from None
    if not resolved.is_relative_to(root):
        raise BenchError(f"{prefix}path {relative!r} resolves to {resolved}, outside the "
                         "benchmark folder (a symlink leads out of it)")
    return resolved

# --- reading files within limits --------------------------------------------------------------

class FileProblem(Exception):
    """A file cannot be used; the message says why (becomes an error Problem)."""

def read_limited(path: Path, limit: int) -> bytes:
    """The content of ``path``, decompressed when it ends in ``.gz``, refusing more than
    ``limit`` bytes; a truncated gzip stream is a problem, not an exception."""
    size = path.stat().st_size
    if not path.name.endswith(".gz"):
        if size > limit:
            raise FileProblem(f"{size} bytes, more than the limit of {limit}")
        return path.read_bytes()
    if size > limit:  # gzip hardly ever grows data: this one holds more than the limit
        raise FileProblem(f"{size} bytes compressed, more than the limit of {limit}")
    try:
        with gzip.open(path, "rb") as handle:
            # Read one byte past the limit: a gzip bomb is refused without being inflated.
            data = handle.read(limit + 1)
    except EOFError:
        raise FileProblem("gzip stream is truncated (the file was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise FileProblem(f"not a valid gzip file ({err})") from None
    if len(data) > limit:
        raise FileProblem(f"decompresses to more than the limit of {limit} bytes")
    return data

def locate(root: Path, relative: str, where: str) -> tuple[Path | None, str]:
    """The file an instances.csv path names: ``relative`` itself, or ``relative.gz`` as
    VNN-COMP publishes it. Returns ``(path, shown)``; path is None when neither exists."""
    plain = safe_join(root, relative, where)
    if plain.is_file():
        return plain, relative
    if not relative.endswith(".gz"):
        packed = safe_join(root, relative + ".gz", where)
        if packed.is_file():
            return packed, relative + ".gz"
    return None, relative

# --- instances.csv ----------------------------------------------------------------------------

def read_instances(folder: str | Path) -> list[Instance]:
    """The instances of one benchmark folder; its name is the benchmark's name."""
    folder = Path(folder).resolve()
    csv_path = folder / INSTANCES
    if not csv_path.is_file():
        raise BenchError(f"{csv_path} does not exist; run `bench build-instances` first")
    instances = []
    with open(csv_path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            fields = [value.strip() for value in row]
            if not any(fields):
                continue  # blank line
            instances.append(_instance(folder, csv_path, line_no, fields))
    return instances

def _instance(folder: Path, csv_path: Path, line_no: int, fields: list[str]) -> Instance:
    where = f"{csv_path}, line {line_no}"
    if len(fields) != 3 or not fields[0] or not fields[1]:
        raise BenchError(f"{where}: expected 'onnx,vnnlib,timeout', got {','.join(fields)!r}")
    try:
        timeout = float(fields[2])
    except ValueError:
        raise BenchError(f"{where}: timeout {fields[2]!r} is not a number") from None
    if not timeout > 0:  # also rejects nan
        raise BenchError(f"{where}: timeout must be positive, got {fields[2]!r}")
    # instances.csv may come from anyone: a path that is absolute, climbs out with '..' or
    # leads out through a symlink would have the verifier read files outside the folder.
    for path in fields[:2]:
        safe_join(folder, path, where)
    return Instance(benchmark=folder.name, root=folder, onnx=fields[0], vnnlib=fields[1],
                    timeout=timeout)

def find_benchmarks(path: str | Path) -> list[Path]:
    """``path`` itself if it is a benchmark folder, else its benchmark subfolders (sorted)."""
    path = Path(path)
    if (path / INSTANCES).is_file():
        return [path]
    found = []
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / INSTANCES).is_file())
    if not found:
        raise BenchError(f"no benchmark in {path}: neither it nor its subfolders have an "
                         f"{INSTANCES}; run `bench build-instances` first")
    return found

def onnx_name(level: int) -> str:
    return f"onnx/level_{level:02d}.onnx"

def vnnlib_name(sample_index: int) -> str:
    return f"vnnlib/sample_{sample_index:04d}.vnnlib"

def format_timeout(timeout: float) -> str:
    # "300", not "300.0": the form every published VNN-COMP instances.csv uses.
    return str(int(timeout)) if float(timeout).is_integer() else repr(float(timeout))

def instances_csv_text(instances: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for inst in instances:
        writer.writerow([inst["onnx"], inst["vnnlib"], format_timeout(inst["timeout"])])
    return buffer.getvalue()

# --- manifest and hashes ----------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers see the old file or
    the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

def load_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path} does not exist: the benchmark was never exported or its export "
                         "was interrupted; run `bench build` again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read {path}: {err}; export the benchmark again") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise BenchError(f"{path} is not a version-{FORMAT_VERSION} benchmark manifest; export "
                         "the benchmark again with this version of bench")
    return manifest

def verify_manifest(root: Path) -> list[str]:
    """Problems with the folder against its manifest (missing files, changed files, an
    instances.csv that lists other instances); empty when all is well."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except BenchError as err:
        return [str(err)]
    problems = []
    for rel, expected in manifest.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel}: sha256 differs from the manifest (file changed)")
    csv_path = root / INSTANCES
    if csv_path.is_file():
        rows = [row for row in csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8"))) if row]
        listed = [[i["onnx"], i["vnnlib"], format_timeout(i["timeout"])]
                  for i in manifest.get("instances", [])]
        if rows != listed:
            problems.append(f"{INSTANCES}: rows differ from the manifest's instances")
    elif INSTANCES not in manifest.get("files", {}):
        problems.append(f"{INSTANCES}: missing")
    return problems


# --- compressed files -------------------------------------------------------------------------

def plain_copy(path: Path, cache_dir: Path, limit: int) -> Path:
    """``path`` itself, or for ``X.gz`` an uncompressed copy in ``cache_dir``, named by the
    sha256 of the compressed file (so it is made once and never mistaken for another), inflated
    no further than ``limit`` bytes. Raises ``FileProblem`` for a bomb or a broken file."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        return path
    digest = sha256_file(path)
    target = Path(cache_dir) / digest[:2] / f"{digest}-{path.name[:-3]}"
    if target.is_file():
        return target
    data = read_limited(path, limit)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def materialize(instance: Instance, cache_dir: Path, limits: Limits | None = None) -> Instance:
    """The instance with plain (uncompressed) files for the tools, which read neither ``.gz``
    ONNX nor ``.gz`` VNN-LIB; its identity (benchmark, onnx, vnnlib as listed) is unchanged."""
    from dataclasses import replace

    limits = limits or Limits()
    return replace(instance,
                   onnx_file=plain_copy(instance.onnx_path, cache_dir, limits.onnx_bytes),
                   vnnlib_file=plain_copy(instance.vnnlib_path, cache_dir, limits.vnnlib_bytes))
