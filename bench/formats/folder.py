"""The benchmark folder: the one interface between building and running, written once here.

A benchmark folder follows VNN-COMP::

    root/instances.csv       no header; ``onnx,vnnlib,timeout`` per row, paths relative to root
    root/onnx/...            the models (``X.onnx``, or ``X.onnx.gz`` as VNN-COMP publishes them)
    root/vnnlib/...          the properties (likewise, possibly gzipped)
    root/manifest.json       ours only: the benchmark's name, what everything is, and the sha256
                             of every file

Everything that reads or writes these files goes through this module, so that exporting
(``bench.build.export``), running (``bench.run``), checking and packing (``bench.share``) apply
one set of rules:

- ``read_listing`` is THE reader of ``instances.csv``: size limit, UTF-8, row shape, timeouts
  (``bench.formats.rules.parse_timeout``), paths that stay inside the folder (``safe_join``), and
  every listed file found (``X`` or ``X.gz``), within its size limit and readable. It reports
  every problem; ``read_instances`` (for ``bench run``) refuses a folder that has any, before any
  tool starts; ``bench check`` lists them all.
- A benchmark is known by its NAME and its CONTENT HASH, not by the folder it sits in: the name
  is the manifest's ``benchmark`` (the folder's name for folders without our manifest); the
  content hash is ``benchmark_hash`` below. A benchmark copied or unpacked under another folder
  name keeps both, so its results, shards and merges still match.
- The benchmark hash: ``content_hash`` of ``instances.csv`` and every file it lists, as stored
  (the ``.gz`` where the folder holds ``X.gz``): the sha256 of the ``sha256sum`` listing
  ``"<sha256 of the file>  <relative path>\\n"`` of those files, sorted by path. The same files
  give the same hash in any folder, ours or foreign; computing it reads each file once (which
  also proves it readable). Our manifest records it (``benchmark_hash``) and ``bench check``
  verifies the record against the manifest's ``files`` table. ``read_benchmarks`` refuses two
  folders that hold one benchmark name with different content.
- Compressed files are inflated only within ``Limits`` (``read_limited`` in memory, ``inflate``,
  ``plain_copy`` and ``materialize`` to disk): a gzip bomb is refused after the limit, never
  inflated further.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from bench.errors import BenchError
from bench.formats.rules import parse_eps, parse_timeout


FORMAT_VERSION = 1

MANIFEST = "manifest.json"

INSTANCES = "instances.csv"

VNNCOMP_MAX_TOTAL_TIMEOUT = 6 * 3600.0  # seconds; VNN-COMP's cap on a benchmark's timeouts

REBUILD = "rebuild it with `bench build-instances`"


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
    """Largest sizes accepted, in bytes (of the decompressed content for ``.gz`` files).

    Properties: the largest VNN-COMP properties are ImageNet-sized (3x224x224 = 150,528 inputs,
    two bounds each: about 12 MB as VNN-COMP writes them); 64 MiB leaves five times that, and the
    linear parser (``bench.formats.vnnlib``) reads it in seconds. Models: protobuf cannot hold a
    larger model than 2 GiB in one file anyway."""

    onnx_bytes: int = 2 << 30
    vnnlib_bytes: int = 64 << 20
    csv_bytes: int = 64 << 20  # a million rows
    manifest_bytes: int = 64 << 20  # our manifest takes about 300 bytes per instance

    def for_file(self, path: str | Path) -> int:
        """The limit for a listed file, by its name: a property or (otherwise) a model."""
        name = Path(path).name.removesuffix(".gz")
        return self.vnnlib_bytes if name.endswith(".vnnlib") else self.onnx_bytes


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


_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

def check_name(name: Any, where: str) -> str:
    """A benchmark's name: what results, shards and log folders are keyed by. One line, at
    most 255 characters, no path separator (it names log folders)."""
    if (not isinstance(name, str) or not 0 < len(name) <= 255 or name in (".", "..")
            or _BAD_NAME.search(name)):
        raise BenchError(f"{where}: benchmark name {str(name)[:60]!r} is not a name (1 to 255 "
                         "characters, no '/', '\\' or control characters)")
    return name

# --- reading files within limits --------------------------------------------------------------

class FileProblem(BenchError):
    """A file cannot be used; the message says why. ``bench check`` reports it as an error of
    that file; elsewhere it is a ``BenchError`` like any other (one line, no traceback)."""

def read_limited(path: Path, limit: int) -> bytes:
    """The content of ``path``, decompressed when it ends in ``.gz``, refusing more than
    ``limit`` bytes; a truncated gzip stream is a problem, not an exception."""
    _stored_size(path, limit)
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    with _Inflater(path, limit) as inflater:
        return b"".join(inflater)


def _stored_size(path: Path, limit: int) -> int:
    size = path.stat().st_size
    if size > limit:  # gzip hardly ever grows data: a .gz this large holds more than the limit
        compressed = " compressed" if path.name.endswith(".gz") else ""
        raise FileProblem(f"{size} bytes{compressed}, more than the limit of {limit}")
    return size


class _Inflater:
    """The decompressed blocks of a ``.gz`` file, refusing more than ``limit`` bytes in all: a
    gzip bomb is refused after ``limit`` bytes, never inflated further."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit = path, limit

    def __enter__(self) -> "_Inflater":
        self.handle = gzip.open(self.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def __iter__(self):
        total = 0
        while True:
            try:
                block = self.handle.read(min(1 << 20, self.limit + 1 - total))
            except EOFError:
                raise FileProblem("gzip stream is truncated (the file was cut short)") from None
            except (gzip.BadGzipFile, zlib.error) as err:
                raise FileProblem(f"not a valid gzip file ({err})") from None
            if not block:
                return
            total += len(block)
            if total > self.limit:
                raise FileProblem(f"decompresses to more than the limit of {self.limit} bytes")
            yield block


def locate(root: Path, relative: str, where: str) -> tuple[Path | None, str]:
    """The file an instances.csv path names: ``relative`` itself, or ``relative.gz`` as
    VNN-COMP publishes it. Returns ``(path, stored)``, ``stored`` being the name in the folder;
    path is None when neither exists."""
    plain = safe_join(root, relative, where)
    if plain.is_file():
        return plain, relative
    if not relative.endswith(".gz"):
        packed = safe_join(root, relative + ".gz", where)
        if packed.is_file():
            return packed, relative + ".gz"
    return None, relative

# --- hashes -----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(files: Mapping[str, str]) -> str:
    """The sha256 of the ``sha256sum`` listing of ``files`` (relative path -> sha256 of its
    bytes): one line ``"<sha256>  <path>\\n"`` per file, sorted by path, UTF-8."""
    listing = "".join(f"{files[path]}  {path}\n" for path in sorted(files))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()

# --- instances.csv ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderProblem:
    """Something wrong with a benchmark folder: ``path`` is relative to it (the file at fault),
    ``line`` the line of instances.csv where there is one; ``message`` says what and the fix."""

    path: str
    message: str
    line: int | None = None

    def where(self, root: Path | None = None) -> str:
        path = str(root / self.path) if root is not None else self.path
        return path + (f", line {self.line}" if self.line is not None else "")

    @property
    def text(self) -> str:
        """The message with its line, as ``bench check`` prints it after the path."""
        return (f"line {self.line}: " if self.line is not None else "") + self.message


@dataclass(frozen=True)
class ListedFile:
    """A file that instances.csv lists, found in the folder."""

    listed: str  # as written in instances.csv
    stored: str  # its name in the folder: ``listed``, or ``listed + ".gz"``
    path: Path  # resolved, inside the folder
    sha256: str  # of the stored bytes

    @property
    def compressed(self) -> bool:
        return self.stored != self.listed


@dataclass(frozen=True)
class Row:
    """One well-formed row of instances.csv; a file is None when it cannot be used (missing,
    too large or unreadable: a FolderProblem says which)."""

    line: int
    onnx: ListedFile | None
    vnnlib: ListedFile | None
    timeout: float


@dataclass
class Listing:
    """What instances.csv lists, and everything wrong with it."""

    root: Path
    rows: list[Row] = field(default_factory=list)
    problems: list[FolderProblem] = field(default_factory=list)
    csv_sha256: str = ""  # of instances.csv's bytes; "" when it could not be read

    def files(self) -> dict[str, str]:
        """instances.csv and every file it lists, as stored: relative path -> sha256."""
        files = {INSTANCES: self.csv_sha256} if self.csv_sha256 else {}
        for row in self.rows:
            for listed in (row.onnx, row.vnnlib):
                if listed is not None:
                    files[listed.stored] = listed.sha256
        return files

    @property
    def benchmark_hash(self) -> str:
        """The benchmark's content hash (see the module's docstring)."""
        return content_hash(self.files())


def read_listing(folder: str | Path, limits: Limits | None = None) -> Listing:
    """Read ``folder``'s instances.csv by the rules of the module's docstring; never raises for
    a problem of the folder: every problem is in ``problems`` (empty when it can be run)."""
    root = Path(folder).resolve()
    return _ListingReader(root, limits or Limits()).read()


class _ListingReader:
    def __init__(self, root: Path, limits: Limits):
        self.listing = Listing(root)
        self.root, self.limits = root, limits
        self.found: dict[str, ListedFile | None] = {}  # each file is looked at once

    def problem(self, path: str, message: str, line: int | None = None) -> None:
        self.listing.problems.append(FolderProblem(path, message, line))

    def read(self) -> Listing:
        text = self.read_text()
        if text is None:
            return self.listing
        try:
            lines = list(csv.reader(io.StringIO(text)))
        except csv.Error as err:  # a field over csv's own limit (128 KiB)
            self.problem(INSTANCES, f"not a CSV file ({err})")
            return self.listing
        listed = 0
        for line_no, fields in enumerate(lines, start=1):
            fields = [value.strip() for value in fields]
            if any(fields):
                listed += 1
                self.read_row(line_no, fields)
        if not listed:
            self.problem(INSTANCES, "lists no instances: a benchmark lists one "
                                    "'onnx,vnnlib,timeout' row per instance")
        return self.listing

    def read_text(self) -> str | None:
        try:
            path = safe_join(self.root, INSTANCES)
        except BenchError as err:
            self.problem(INSTANCES, str(err))
            return None
        if not path.is_file():
            self.problem(INSTANCES, "missing: a benchmark folder lists its instances there; "
                                    "build one with `bench build-instances`")
            return None
        try:
            data = read_limited(path, self.limits.csv_bytes)
            text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first path
        except FileProblem as err:
            self.problem(INSTANCES, str(err))
            return None
        except OSError as err:
            self.problem(INSTANCES, f"cannot read: {err.strerror or err}")
            return None
        except UnicodeDecodeError as err:
            self.problem(INSTANCES, f"not UTF-8 text ({err.reason} at byte {err.start}); save "
                                    "it as UTF-8")
            return None
        self.listing.csv_sha256 = hashlib.sha256(data).hexdigest()
        return text

    def read_row(self, line: int, fields: list[str]) -> None:
        if len(fields) != 3 or not fields[0] or not fields[1]:
            shown = ",".join(fields)
            shown = shown if len(shown) <= 200 else shown[:200] + "..."
            self.problem(INSTANCES, f"expected 'onnx,vnnlib,timeout', got {shown!r}", line)
            return
        try:
            timeout = parse_timeout(fields[2])
            # instances.csv may come from anyone: a path that is absolute, climbs out with '..'
            # or leads out through a symlink would have the verifier read files outside it.
            for relative in fields[:2]:
                safe_join(self.root, relative)
        except BenchError as err:
            self.problem(INSTANCES, str(err), line)
            return
        self.listing.rows.append(Row(line, self.find(fields[0], line), self.find(fields[1], line),
                                     timeout))

    def find(self, relative: str, line: int) -> ListedFile | None:
        if relative in self.found:
            return self.found[relative]
        self.found[relative] = None
        where = f"listed in {INSTANCES}, line {line}"
        path, stored = locate(self.root, relative, "")
        if path is None:
            self.problem(relative, f"missing ({where})")
            return None
        try:
            _stored_size(path, self.limits.for_file(stored))
            digest = sha256_file(path)  # reads it all: a file that cannot be read fails here
        except FileProblem as err:
            self.problem(stored, f"{err} ({where})")
            return None
        except OSError as err:
            self.problem(stored, f"cannot read: {err.strerror or err} ({where})")
            return None
        self.found[relative] = ListedFile(relative, stored, path, digest)
        return self.found[relative]


def read_instances(folder: str | Path, limits: Limits | None = None) -> list[Instance]:
    """The instances of one benchmark folder, each with the benchmark's name and content hash
    (see the module's docstring) and the file to read (``X`` or ``X.gz``).

    Raises ``BenchError`` (one line) when the folder has any problem ``read_listing`` finds,
    missing or unreadable files included: nothing of a broken folder reaches a tool."""
    listing = read_listing(folder, limits)
    root = listing.root
    if listing.problems:
        raise BenchError(refusal(root, listing.problems))
    name = benchmark_name(root, limits)
    digest = listing.benchmark_hash
    return [Instance(benchmark=name, root=root, onnx=row.onnx.listed, vnnlib=row.vnnlib.listed,
                     timeout=row.timeout, benchmark_hash=digest,
                     onnx_file=row.onnx.path if row.onnx.compressed else None,
                     vnnlib_file=row.vnnlib.path if row.vnnlib.compressed else None)
            for row in listing.rows]


def read_benchmarks(folders: Iterable[str | Path], limits: Limits | None = None
                    ) -> list[Instance]:
    """The instances of several benchmark folders (``read_instances`` each). Two folders that
    hold the same benchmark (its name) are fine when they hold the same content (a copy: the
    same instances, which a runner keeps once); with different content they are refused, since
    their results would be recorded under one name."""
    instances: list[Instance] = []
    seen: dict[str, tuple[str, Path]] = {}
    for folder in folders:
        found = read_instances(folder, limits)
        name, digest, root = found[0].benchmark, found[0].benchmark_hash, found[0].root
        if name in seen and seen[name][0] != digest:
            raise BenchError(f"{seen[name][1]} and {root} both hold benchmark {name!r} but their "
                             "files differ; run one of them, or rename one (its manifest's "
                             "'benchmark') if both are wanted")
        seen.setdefault(name, (digest, root))
        instances += found
    return instances


def refusal(root: Path, problems: list[FolderProblem]) -> str:
    """One line for a folder that cannot be run: its first problem, how many more, and where
    to see them all."""
    rows = [p for p in problems if p.path == INSTANCES]
    check = f"`bench check {root}` lists every problem"
    if rows:
        first = rows[0]
        more = len(problems) - 1
        return (f"{first.where(root)}: {first.message}"
                + (f" (and {more} more problem(s); {check})" if more else ""))
    first = problems[0]
    return (f"{root}: {len(problems)} file(s) listed in {INSTANCES} cannot be used, e.g. "
            f"{first.path}: {first.message}; nothing was run; {check}")


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
    # "300", not "300.0": the form every published VNN-COMP instances.csv uses; never the 300
    # digits of int(1e300) (parse_timeout refuses such a timeout anyway).
    value = float(timeout)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)

def instances_csv_text(instances: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for inst in instances:
        writer.writerow([inst["onnx"], inst["vnnlib"], format_timeout(inst["timeout"])])
    return buffer.getvalue()

# --- manifest ---------------------------------------------------------------------------------

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


def read_manifest(root: Path, limits: Limits | None = None) -> dict | None:
    """Our manifest, checked (``check_manifest``); None when there is no manifest or it is not
    ours (another tool's manifest.json: the folder is foreign). Raises ``BenchError`` for a
    manifest that cannot be read."""
    path = Path(root) / MANIFEST
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        data = read_limited(safe_join(root, MANIFEST, str(path)),
                            (limits or Limits()).manifest_bytes)
        manifest = json.loads(data.decode("utf-8"))
    except FileProblem as err:
        raise BenchError(f"{path}: {err}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BenchError(f"cannot read {path}: {_first_line(err)}; {REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return check_manifest(manifest, str(path))


def load_manifest(root: Path, limits: Limits | None = None) -> dict:
    """Our manifest of the benchmark ``root``; ``BenchError`` when it has none, or a broken one."""
    path = Path(root) / MANIFEST
    manifest = read_manifest(Path(root), limits)
    if manifest is None and not path.exists():
        raise BenchError(f"{path} does not exist: the benchmark was never exported or its export "
                         f"was interrupted; {REBUILD}")
    if manifest is None:
        raise BenchError(f"{path} is not a version-{FORMAT_VERSION} benchmark manifest; "
                         f"{REBUILD} with this version of bench")
    return manifest


def check_manifest(manifest: dict, where: str) -> dict:
    """``manifest`` if the fields it has obey the rules (the name, the 'files' table, timeouts
    and eps by ``bench.formats.rules``); else ``BenchError``. Fields it lacks are left to the
    readers that need them (``manifest_problems`` requires the name and the files)."""
    if "benchmark" in manifest:
        check_name(manifest["benchmark"], where)
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise BenchError(f"{where}: 'files' is not a table of sha256 hashes; {REBUILD}")
    if "timeout" in manifest:
        parse_timeout(manifest["timeout"], f"{where}, 'timeout'")
    if "eps" in manifest:
        parse_eps(manifest["eps"], f"{where}, 'eps'")
    instances = manifest.get("instances", [])
    if not isinstance(instances, list):
        raise BenchError(f"{where}: 'instances' is not a list; {REBUILD}")
    for number, inst in enumerate(instances):
        if not (isinstance(inst, dict) and isinstance(inst.get("onnx"), str)
                and isinstance(inst.get("vnnlib"), str)):
            raise BenchError(f"{where}: instance {number} lacks its onnx and vnnlib; {REBUILD}")
        parse_timeout(inst.get("timeout"), f"{where}, instance {number}")
    return manifest


def benchmark_name(root: str | Path, limits: Limits | None = None) -> str:
    """The benchmark's name: its manifest's for our folders, the folder's name otherwise (and
    for a manifest that names none)."""
    manifest = read_manifest(Path(root), limits) or {}
    return manifest.get("benchmark") or Path(root).resolve().name


def verify_manifest(root: Path, limits: Limits | None = None) -> list[str]:
    """Problems with the folder against its manifest (missing, changed or unsafe files, an
    instances.csv that lists other instances) and with its instances.csv, one line each
    (``"<relative path>: <what is wrong>"``); empty when all is well."""
    root = Path(root).resolve()
    try:
        manifest = load_manifest(root, limits)
    except BenchError as err:
        return [f"{MANIFEST}: {err}"]
    listing = read_listing(root, limits)
    problems = manifest_problems(root, manifest, listing) + listing.problems
    return [f"{problem.path}: {problem.text}" for problem in problems]


def manifest_problems(root: Path, manifest: dict, listing: Listing) -> list[FolderProblem]:
    """What differs between the folder and its (checked) manifest: every file of its 'files'
    table must be inside the folder and have its sha256, instances.csv must list its
    'instances', and its 'benchmark_hash' must be the hash of its files. Problems of the listing
    itself are not repeated."""
    problems = []
    reported = {p.path for p in listing.problems}
    for field_name, what in (("benchmark", "'benchmark' (the benchmark's name)"),
                             ("files", "'files' table of sha256 hashes")):
        if field_name not in manifest:
            problems.append(FolderProblem(MANIFEST, f"has no {what}; {REBUILD}"))
    files = manifest.get("files", {})
    for rel, expected in files.items():
        try:
            path = safe_join(root, rel)  # never hash a file outside the folder
        except BenchError as err:
            problems.append(FolderProblem(MANIFEST, f"'files': {err}"))
            continue
        if rel in reported:
            continue
        if not path.is_file():
            problems.append(FolderProblem(rel, "missing"))
        elif sha256_file(path) != expected:
            problems.append(FolderProblem(rel, "sha256 differs from the manifest (file changed)"))
    if "files" in manifest and INSTANCES not in files:
        problems.append(FolderProblem(MANIFEST, f"'files' has no sha256 of {INSTANCES}"))
    if not listing.problems:
        rows = [(row.onnx.listed, row.vnnlib.listed, row.timeout) for row in listing.rows]
        listed = [(i["onnx"], i["vnnlib"], float(i["timeout"]))
                  for i in manifest.get("instances", [])]
        if rows != listed:
            problems.append(FolderProblem(INSTANCES, "rows differ from the manifest's instances"))
        recorded = manifest.get("benchmark_hash")
        own = {rel: files.get(rel, "") for rel in listing.files()}
        if recorded is not None and "files" in manifest and recorded != content_hash(own):
            problems.append(FolderProblem(MANIFEST, "'benchmark_hash' is not the hash of its "
                                                    f"files; {REBUILD}"))
    return problems


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

# --- compressed files -------------------------------------------------------------------------

def inflate(path: Path, target: Path, limit: int) -> Path:
    """Write the decompressed content of the ``.gz`` file ``path`` to ``target`` (atomically:
    a temporary file renamed over it), inflating no further than ``limit`` bytes. Raises
    ``FileProblem`` (a ``BenchError`` naming the file) for a gzip bomb, a broken or an
    unreadable file, and leaves nothing behind."""
    path, target = Path(path), Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _stored_size(path, limit)
        with _Inflater(path, limit) as inflater, open(tmp, "wb") as out:
            for block in inflater:
                out.write(block)
        os.replace(tmp, target)
    except FileProblem as err:
        raise FileProblem(f"{path}: {err}; `bench check` the benchmark") from None
    except OSError as err:
        raise FileProblem(f"cannot decompress {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def plain_copy(path: Path, cache_dir: Path, limit: int) -> Path:
    """``path`` itself, or for ``X.gz`` an uncompressed copy in ``cache_dir``, named by the
    sha256 of the compressed file (so it is made once and never mistaken for another), inflated
    no further than ``limit`` bytes. Raises ``FileProblem`` as ``inflate`` does."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        return path
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise FileProblem(f"cannot read {path}: {err.strerror or err}") from None
    target = Path(cache_dir) / digest[:2] / f"{digest}-{path.name[:-3]}"
    return target if target.is_file() else inflate(path, target, limit)


def materialize(instance: Instance, cache_dir: Path, limits: Limits | None = None) -> Instance:
    """The instance with plain (uncompressed) files for the tools, which read neither ``.gz``
    ONNX nor ``.gz`` VNN-LIB; its identity (benchmark, onnx, vnnlib as listed) is unchanged.
    Raises ``FileProblem`` (a ``BenchError`` naming the file) as ``plain_copy`` does; never
    inflates past ``limits``."""
    limits = limits or Limits()
    return replace(instance,
                   onnx_file=plain_copy(instance.onnx_path, cache_dir, limits.onnx_bytes),
                   vnnlib_file=plain_copy(instance.vnnlib_path, cache_dir, limits.vnnlib_bytes))
