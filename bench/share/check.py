"""Validate a benchmark folder: ours, a packed one, or anyone's.

``check_benchmark`` reports every problem it finds instead of stopping at the first, so one run
tells a benchmark's author everything to fix:

- every path stays inside the folder: ``instances.csv`` and manifest paths are neither absolute
  nor escape with ``..``, and no symlink anywhere in the folder leads out of it;
- where there is a ``manifest.json`` (ours, or a packed folder's), every file's sha256 matches
  it;
- every ONNX model passes ``onnx.checker`` and runs once in onnxruntime;
- every VNN-LIB file parses (1.0 with ``bench.formats.vnnlib``; 2.0 with the ``vnnlib`` package when it
  is installed) and declares as many inputs and outputs as its ONNX model has;
- files are within size limits (a hostile file must not exhaust memory) and not truncated.

A path in ``instances.csv`` may name ``X`` while the folder holds ``X.gz``: that is how VNN-COMP
publishes benchmarks (and what ``bench pack`` writes); such files are decompressed in memory,
never further than the size limit.

instances.csv is read by ``bench.formats.folder.read_listing``, the reader ``bench run`` uses:
its rows, timeouts, paths and listed files obey the same rules, and a folder that passes the
check can be run. Path safety, size limits and the manifest's hashes (our folders, and packed
ones) are the rules of ``bench.formats.folder`` too.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np

from bench.errors import BenchError
from bench.formats.folder import (INSTANCES, MANIFEST, VNNCOMP_MAX_TOTAL_TIMEOUT, FileProblem,
                                  Limits, ListedFile, Listing, Row, manifest_problems,
                                  read_limited, read_listing, read_manifest)


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    severity: Severity
    path: str  # relative to the folder, "" for the folder itself
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path or '.'}: {self.message}"


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
        raise FileProblem(f"not a valid ONNX model, truncated or corrupt ({err})") from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        # External data would be read from paths the model names, outside our control.
        raise FileProblem("keeps weights in external data files; VNN-COMP models must be "
                           "self-contained")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # ValidationError, InferenceError, ...: all mean "invalid model"
        raise FileProblem(f"fails onnx.checker: {_first_line(err)}") from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()  # graph inputs that are not initializers
        if len(inputs) != 1:
            raise FileProblem(f"has {len(inputs)} inputs; VNN-LIB properties address one")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].shape]
        dtype = _ORT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise FileProblem(f"input type {inputs[0].type} is not a float type")
        outputs = session.run(None, {inputs[0].name: np.zeros(shape, dtype=dtype)})
    except FileProblem:
        raise
    except Exception as err:  # onnxruntime's own exception types are not importable portably
        raise FileProblem(f"does not run in onnxruntime: {_first_line(err)}") from None
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
    from bench.formats.vnnlib import parse_vnnlib
    from bench.formats.vnnlib2 import is_vnnlib2

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileProblem(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if is_vnnlib2(text):
        return _check_vnnlib2(text)
    try:
        n_in, n_out, disjuncts = parse_vnnlib(text)
    except BenchError as err:
        raise FileProblem(f"does not parse as VNN-LIB 1.0: {err}") from None
    except (ValueError, IndexError, TypeError) as err:  # malformed declarations or atoms
        raise FileProblem(f"does not parse as VNN-LIB 1.0: {type(err).__name__}: "
                           f"{_first_line(err)}") from None
    except RecursionError:
        raise FileProblem("does not parse as VNN-LIB 1.0: nested too deeply") from None
    if n_in == 0 or n_out == 0:
        raise FileProblem(f"declares {n_in} inputs and {n_out} outputs")
    for box, _ in disjuncts:
        if np.any(box[:, 0] > box[:, 1]):
            raise FileProblem("an input has a lower bound above its upper bound (empty box)")
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
        raise FileProblem(f"does not parse as VNN-LIB 2.0: {_first_line(err)}") from None
    if len(query.networks) != 1:
        raise FileProblem(f"declares {len(query.networks)} networks; a VNN-COMP instance has one")
    network = query.networks[0]
    n_in = sum(int(math.prod(d.shape)) for d in network.inputs)
    n_out = sum(int(math.prod(d.shape)) for d in network.outputs)
    for case in cases:
        box = np.asarray(case.input_box, dtype=np.float64).reshape(-1, 2)
        if np.any(box[:, 0] > box[:, 1]):
            raise FileProblem("an input has a lower bound above its upper bound (empty box)")
    return _VnnlibInfo(n_in, n_out), None


# --- the check --------------------------------------------------------------------------------

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
        # instances.csv by the rules `bench run` applies: rows, timeouts, paths, files found.
        listing = read_listing(self.root, self.limits)
        for problem in listing.problems:
            self.error(problem.path, problem.text)
        if (self.root / MANIFEST).exists() or (self.root / MANIFEST).is_symlink():
            self.check_manifest(listing)
        total = sum(row.timeout for row in listing.rows)
        if total > VNNCOMP_MAX_TOTAL_TIMEOUT:
            self.warning(INSTANCES, f"timeouts sum to {total:.0f} s, more than VNN-COMP's "
                                        f"cap of {VNNCOMP_MAX_TOTAL_TIMEOUT:.0f} s (6 hours)")
        for row in listing.rows:
            self.check_row(row)
        return self.problems

    def check_row(self, row: Row) -> None:
        model = self.file_info(row.onnx, self.onnx, self.limits.onnx_bytes, _check_onnx)
        prop = self.file_info(row.vnnlib, self.vnnlib, self.limits.vnnlib_bytes, _check_vnnlib)
        if model is None or prop is None:
            return
        where = f"{INSTANCES}, line {row.line}"
        if prop.inputs != model.inputs:
            self.error(row.vnnlib.listed, f"declares {prop.inputs} inputs but {row.onnx.listed} "
                                          f"takes {model.inputs} ({where})")
        if prop.outputs != model.outputs:
            self.error(row.vnnlib.listed, f"declares {prop.outputs} outputs but "
                                          f"{row.onnx.listed} gives {model.outputs} ({where})")

    def file_info(self, listed: ListedFile | None, cache: dict, limit: int,
                  check: Callable[[bytes], tuple[Any, str | None]]) -> Any:
        if listed is None:  # missing or unreadable: the listing said so
            return None
        if listed.listed in cache:
            return cache[listed.listed]
        cache[listed.listed] = None
        try:
            info, note = check(read_limited(listed.path, limit))
        except FileProblem as err:
            self.error(listed.stored, str(err))
            return None
        except OSError as err:
            self.error(listed.stored, f"cannot read: {err.strerror or err}")
            return None
        if note:
            self.warning(listed.stored, note)
        cache[listed.listed] = info
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

    def check_manifest(self, listing: Listing) -> None:
        """Our own folders (and packed ones) carry the sha256 of every file: check them, after
        making sure that every path the manifest names is safe to open."""
        try:
            manifest = read_manifest(self.root, self.limits)
        except BenchError as err:
            self.error(MANIFEST, str(err))
            return
        if manifest is None:  # someone else's manifest: nothing we know how to check
            self.warning(MANIFEST, "not a prune-bench manifest; file hashes not checked")
            return
        for problem in manifest_problems(self.root, manifest, listing):
            self.error(problem.path, problem.text)


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
