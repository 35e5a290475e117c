"""Validate a benchmark folder: ours, a packed one, or anyone's.

``check_benchmark`` reports every problem it finds instead of stopping at the first, so one run
tells a benchmark's author everything to fix:

- every path stays inside the folder: ``instances.csv`` and manifest paths are neither absolute
  nor escape with ``..``, and no symlink anywhere in the folder leads out of it;
- where there is a ``manifest.json`` (ours), every file's sha256 matches it;
- every ONNX model passes ``onnx.checker`` and runs once in onnxruntime;
- every VNN-LIB file parses (1.0 with ``bench.vnnlib``; 2.0 with the ``vnnlib`` package when it
  is installed) and declares as many inputs and outputs as its ONNX model has;
- files are within size limits (a hostile file must not exhaust memory) and not truncated.

A path in ``instances.csv`` may name ``X`` while the folder holds ``X.gz``: that is how VNN-COMP
publishes benchmarks (and what ``bench pack`` writes); such files are decompressed in memory,
never further than the size limit.

``safe_join`` is the one place that decides whether a relative path from a file is safe to
open; ``bench.runner.read_instances`` uses it too.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np

from bench.errors import BenchError

INSTANCES_CSV = "instances.csv"
MANIFEST = "manifest.json"
VNNCOMP_MAX_TOTAL_TIMEOUT = 6 * 3600.0  # seconds; VNN-COMP's cap on a benchmark's timeouts

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Limits:
    """Largest sizes accepted, in bytes (of the decompressed content for ``.gz`` files)."""

    onnx_bytes: int = 2 << 30  # protobuf cannot hold a larger model in one file anyway
    vnnlib_bytes: int = 512 << 20
    csv_bytes: int = 64 << 20
    manifest_bytes: int = 256 << 20


@dataclass(frozen=True)
class Problem:
    severity: Severity
    path: str  # relative to the folder, "" for the folder itself
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path or '.'}: {self.message}"


# --- path safety ------------------------------------------------------------------------------

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

class _FileProblem(Exception):
    """A file cannot be used; the message says why (becomes an error Problem)."""


def _read_limited(path: Path, limit: int) -> bytes:
    """The content of ``path``, decompressed when it ends in ``.gz``, refusing more than
    ``limit`` bytes; a truncated gzip stream is a problem, not an exception."""
    size = path.stat().st_size
    if not path.name.endswith(".gz"):
        if size > limit:
            raise _FileProblem(f"{size} bytes, more than the limit of {limit}")
        return path.read_bytes()
    if size > limit:  # gzip hardly ever grows data: this one holds more than the limit
        raise _FileProblem(f"{size} bytes compressed, more than the limit of {limit}")
    try:
        with gzip.open(path, "rb") as handle:
            # Read one byte past the limit: a gzip bomb is refused without being inflated.
            data = handle.read(limit + 1)
    except EOFError:
        raise _FileProblem("gzip stream is truncated (the file was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise _FileProblem(f"not a valid gzip file ({err})") from None
    if len(data) > limit:
        raise _FileProblem(f"decompresses to more than the limit of {limit} bytes")
    return data


def _locate(root: Path, relative: str, where: str) -> tuple[Path | None, str]:
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


# --- ONNX -------------------------------------------------------------------------------------

@dataclass
class _OnnxInfo:
    inputs: int  # elements of the (only) input
    outputs: int  # elements of the first output


def _check_onnx(data: bytes) -> tuple[_OnnxInfo, str | None]:
    """Check a model; returns its sizes and a warning, if any."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise _FileProblem(f"not a valid ONNX model, truncated or corrupt ({err})") from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        # External data would be read from paths the model names, outside our control.
        raise _FileProblem("keeps weights in external data files; VNN-COMP models must be "
                           "self-contained")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # ValidationError, InferenceError, ...: all mean "invalid model"
        raise _FileProblem(f"fails onnx.checker: {_first_line(err)}") from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()  # graph inputs that are not initializers
        if len(inputs) != 1:
            raise _FileProblem(f"has {len(inputs)} inputs; VNN-LIB properties address one")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].shape]
        dtype = _ORT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise _FileProblem(f"input type {inputs[0].type} is not a float type")
        outputs = session.run(None, {inputs[0].name: np.zeros(shape, dtype=dtype)})
    except _FileProblem:
        raise
    except Exception as err:  # onnxruntime's own exception types are not importable portably
        raise _FileProblem(f"does not run in onnxruntime: {_first_line(err)}") from None
    info = _OnnxInfo(inputs=int(math.prod(shape)), outputs=int(np.asarray(outputs[0]).size))
    note = None
    if len(outputs) > 1:
        note = f"has {len(outputs)} outputs; VNN-LIB's Y_j are checked against the first only"
    return info, note


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- VNN-LIB ----------------------------------------------------------------------------------

@dataclass
class _VnnlibInfo:
    inputs: int
    outputs: int


def _check_vnnlib(data: bytes) -> tuple[_VnnlibInfo | None, str | None]:
    """Parse a property; returns its sizes, or None and a warning when it cannot be checked
    here (VNN-LIB 2.0 without the ``vnnlib`` package)."""
    from bench.vnnlib import parse_vnnlib
    from bench.vnnlib2 import is_vnnlib2

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _FileProblem(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if is_vnnlib2(text):
        return _check_vnnlib2(text)
    try:
        n_in, n_out, disjuncts = parse_vnnlib(text)
    except BenchError as err:
        raise _FileProblem(f"does not parse as VNN-LIB 1.0: {err}") from None
    except (ValueError, IndexError, TypeError) as err:  # malformed declarations or atoms
        raise _FileProblem(f"does not parse as VNN-LIB 1.0: {type(err).__name__}: "
                           f"{_first_line(err)}") from None
    except RecursionError:
        raise _FileProblem("does not parse as VNN-LIB 1.0: nested too deeply") from None
    if n_in == 0 or n_out == 0:
        raise _FileProblem(f"declares {n_in} inputs and {n_out} outputs")
    for box, _ in disjuncts:
        if np.any(box[:, 0] > box[:, 1]):
            raise _FileProblem("an input has a lower bound above its upper bound (empty box)")
    return _VnnlibInfo(n_in, n_out), None


def _check_vnnlib2(text: str) -> tuple[_VnnlibInfo | None, str | None]:
    try:
        import vnnlib
        import vnnlib.compat
    except ImportError:
        return None, "VNN-LIB 2.0 file not parsed: install the `vnnlib` package to check it"
    try:
        query = vnnlib.parse_query_string(text)
        cases = vnnlib.compat.transform(query)
    except vnnlib.VNNLibException as err:
        raise _FileProblem(f"does not parse as VNN-LIB 2.0: {_first_line(err)}") from None
    if len(query.networks) != 1:
        raise _FileProblem(f"declares {len(query.networks)} networks; a VNN-COMP instance has one")
    network = query.networks[0]
    n_in = sum(int(math.prod(d.shape)) for d in network.inputs)
    n_out = sum(int(math.prod(d.shape)) for d in network.outputs)
    for case in cases:
        box = np.asarray(case.input_box, dtype=np.float64).reshape(-1, 2)
        if np.any(box[:, 0] > box[:, 1]):
            raise _FileProblem("an input has a lower bound above its upper bound (empty box)")
    return _VnnlibInfo(n_in, n_out), None


# --- the check --------------------------------------------------------------------------------

@dataclass
class _Row:
    line: int
    onnx: str
    vnnlib: str
    timeout: float


def check_benchmark(folder: str | Path, limits: Limits | None = None) -> list[Problem]:
    """Every problem with the benchmark folder ``folder``; empty when it is fine to publish
    and run. Raises ``BenchError`` only when ``folder`` is not a directory."""
    root = Path(folder)
    if not root.is_dir():
        raise BenchError(f"{root} is not a directory; give a benchmark folder")
    return _Checker(root.resolve(), limits or Limits()).run()


class _Checker:
    def __init__(self, root: Path, limits: Limits):
        self.root = root
        self.limits = limits
        self.problems: list[Problem] = []
        # Each file is checked once, however many rows name it; None: it has a problem
        # (reported once) or could not be checked.
        self.onnx: dict[str, _OnnxInfo | None] = {}
        self.vnnlib: dict[str, _VnnlibInfo | None] = {}

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem("error", path, message))

    def warning(self, path: str, message: str) -> None:
        self.problems.append(Problem("warning", path, message))

    def run(self) -> list[Problem]:
        self.check_symlinks()
        rows = self.read_rows()
        if (self.root / MANIFEST).exists() or (self.root / MANIFEST).is_symlink():
            self.check_manifest()
        total = sum(row.timeout for row in rows)
        if total > VNNCOMP_MAX_TOTAL_TIMEOUT:
            self.warning(INSTANCES_CSV, f"timeouts sum to {total:.0f} s, more than VNN-COMP's "
                                        f"cap of {VNNCOMP_MAX_TOTAL_TIMEOUT:.0f} s (6 hours)")
        for row in rows:
            self.check_row(row)
        return self.problems

    def check_row(self, row: _Row) -> None:
        where = f"{INSTANCES_CSV}, line {row.line}"
        model = self.file_info(row.onnx, where, self.onnx, self.limits.onnx_bytes, _check_onnx)
        prop = self.file_info(row.vnnlib, where, self.vnnlib, self.limits.vnnlib_bytes,
                              _check_vnnlib)
        if model is None or prop is None:
            return
        if prop.inputs != model.inputs:
            self.error(row.vnnlib, f"declares {prop.inputs} inputs but {row.onnx} takes "
                                   f"{model.inputs} ({where})")
        if prop.outputs != model.outputs:
            self.error(row.vnnlib, f"declares {prop.outputs} outputs but {row.onnx} gives "
                                   f"{model.outputs} ({where})")

    def file_info(self, relative: str, where: str, cache: dict, limit: int,
                  check: Callable[[bytes], tuple[Any, str | None]]) -> Any:
        if relative in cache:
            return cache[relative]
        cache[relative] = None
        try:
            path, shown = _locate(self.root, relative, where)
        except BenchError as err:
            self.error(INSTANCES_CSV, str(err))
            return None
        if path is None:
            self.error(relative, f"missing (listed in {where})")
            return None
        try:
            info, note = check(_read_limited(path, limit))
        except _FileProblem as err:
            self.error(shown, str(err))
            return None
        except OSError as err:
            self.error(shown, f"cannot read: {err.strerror or err}")
            return None
        if note:
            self.warning(shown, note)
        cache[relative] = info
        return info

    def check_symlinks(self) -> None:
        """Any symlink in the folder, listed or not, that leads out of it: publishing the folder
        would publish (or break on) whatever it points at."""
        for directory, dirs, files in os.walk(self.root, followlinks=False):
            for name in sorted(dirs + files):
                path = Path(directory) / name
                if not path.is_symlink():
                    continue
                rel = path.relative_to(self.root).as_posix()
                try:
                    target = path.resolve()
                except (OSError, RuntimeError) as err:  # a symlink loop
                    self.error(rel, f"symlink cannot be resolved ({err})")
                    continue
                if not target.is_relative_to(self.root):
                    self.error(rel, f"symlink to {os.readlink(path)} leads out of the benchmark "
                                    "folder")

    def read_rows(self) -> list[_Row]:
        try:
            csv_path = safe_join(self.root, INSTANCES_CSV, INSTANCES_CSV)
        except BenchError as err:
            self.error(INSTANCES_CSV, str(err))
            return []
        if not csv_path.is_file():
            self.error(INSTANCES_CSV, "missing: a VNN-COMP benchmark lists its instances there")
            return []
        try:
            text = _read_limited(csv_path, self.limits.csv_bytes).decode("utf-8")
        except _FileProblem as err:
            self.error(INSTANCES_CSV, str(err))
            return []
        except UnicodeDecodeError as err:
            self.error(INSTANCES_CSV, f"not UTF-8 text ({err.reason} at byte {err.start})")
            return []
        rows, listed = [], 0
        for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            fields = [value.strip() for value in row]
            if not any(fields):
                continue
            listed += 1
            where = f"line {line_no}"
            if len(fields) != 3 or not fields[0] or not fields[1]:
                self.error(INSTANCES_CSV, f"{where}: expected 'onnx,vnnlib,timeout', got "
                                          f"{','.join(fields)!r}")
                continue
            try:
                timeout = float(fields[2])
            except ValueError:
                self.error(INSTANCES_CSV, f"{where}: timeout {fields[2]!r} is not a number")
                continue
            if not (timeout > 0 and math.isfinite(timeout)):
                self.error(INSTANCES_CSV, f"{where}: timeout must be a positive number, got "
                                          f"{fields[2]!r}")
                continue
            rows.append(_Row(line_no, fields[0], fields[1], timeout))
        if not listed:
            self.error(INSTANCES_CSV, "lists no instances")
        return rows

    def check_manifest(self) -> None:
        """Our own folders carry the sha256 of every file; check them, after making sure that
        every path the manifest names is safe to open."""
        from bench.export.benchmark import FORMAT_VERSION, verify_manifest

        try:
            path = safe_join(self.root, MANIFEST, MANIFEST)
            manifest = json.loads(_read_limited(path, self.limits.manifest_bytes).decode("utf-8"))
        except (BenchError, _FileProblem) as err:
            self.error(MANIFEST, str(err))
            return
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            self.error(MANIFEST, f"not valid JSON ({_first_line(err)})")
            return
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            # Someone else's manifest: nothing we know how to check.
            self.warning(MANIFEST, f"not a version-{FORMAT_VERSION} prune-bench manifest; "
                                   "file hashes not checked")
            return
        files = manifest.get("files")
        if not isinstance(files, dict):
            self.error(MANIFEST, "has no 'files' table of sha256 hashes")
            return
        unsafe = False
        for rel in files:
            try:
                safe_join(self.root, str(rel), f"{MANIFEST}, 'files'")
            except BenchError as err:
                self.error(MANIFEST, str(err))
                unsafe = True
        if unsafe:
            return  # never hash a file outside the folder
        for message in verify_manifest(self.root):
            # verify_manifest says "<relative path>: <what is wrong>"
            rel, _, detail = message.partition(": ")
            self.error(rel, detail)


def format_problems(problems: Iterable[Problem], folder: str | Path | None = None) -> str:
    """One line per problem, then a summary line."""
    problems = list(problems)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    lines = [str(p) for p in problems]
    name = f"{folder}: " if folder is not None else ""
    if errors:
        lines.append(f"{name}{errors} error(s), {warnings} warning(s)")
    else:
        lines.append(f"{name}OK" + (f" ({warnings} warning(s))" if warnings else ""))
    return "\n".join(lines)
