"""One small interface for every verifier, and the vocabulary of results.

Modelled on DNNV's ``verifiers/common/base.py``: a verifier declares its parameters (typed, with
their defaults, choices and help), says whether it is installed (and its version), builds the
command for one instance and parses what the process left behind. The harness
(``bench.verifiers.harness``) owns everything else: the hard timeout, killing the process tree,
peak memory, logs and checking counterexamples, so that every verifier is measured the same way.

Parameters are converted and checked in one place, ``Verifier.__init__``: a bad value (an unknown
name, ``batch=maybe``, ``device=tpu``, a config file that does not exist) is a ``BenchError``
before any instance runs, never an error row per instance.
"""
from __future__ import annotations

import enum
import functools
import importlib
import math
import os
import shutil
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from bench.errors import BenchError
from bench.formats.folder import Instance


class Status(str, enum.Enum):
    """What happened on one instance. Never merge these: an error is not an unknown, and only
    ``unsat`` means the property was verified."""

    SAT = "sat"  # a counterexample exists (the property is violated)
    UNSAT = "unsat"  # verified: no input in the region violates the property
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"  # an incomplete method could not decide
    ERROR = "error"  # the tool failed; see the reason


DECIDED = (Status.SAT, Status.UNSAT)  # the answers that settle a property


@dataclass
class Verdict:
    """What a verifier said about one instance, parsed from its output."""

    status: Status
    counterexample: dict[str, list[float]] | None = None  # {"x": [...], "y": [...] or absent}
    verifier_time: float | None = None  # the tool's own reported time, where it reports one
    reason: str = ""  # why, for error/unknown/timeout
    # Which stage of the tool decided, where it says so (alpha-beta-CROWN: attack, incomplete,
    # bab, mip); None where the tool does not tell.
    decided_by: str | None = None


@dataclass
class Command:
    """The process to run for one instance."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the harness's environment
    cwd: Path | None = None


# --------------------------------------------------------------------------- parameters

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("is not a boolean (true or false)")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("is not an integer")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError("is not an integer") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError("is not an integer")
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("is not a number")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(number):
        raise ValueError("is not a finite number")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, (dict, list, tuple, set)):
        raise ValueError("is not a single value")
    return str(value)


_CONVERTERS: dict[type, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int,
                                                 float: _to_float, str: _to_str}


@dataclass(frozen=True)
class Parameter:
    """One declared parameter of a verifier, as DNNV declares them.

    ``type`` is bool, int, float or str; values given as text (``--verifier-option key=value``)
    are converted to it (booleans: true/false, yes/no, on/off, 1/0). ``None`` means "not set"
    and is always allowed; the verifier then decides (e.g. from an environment variable).
    ``choices`` lists the allowed values; ``check`` is a further test of a converted value that
    raises ``ValueError`` with the reason (e.g. "does not exist")."""

    type: type
    default: Any = None
    choices: Sequence[Any] | None = None
    help: str = ""
    check: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if self.type not in _CONVERTERS:
            raise TypeError(f"Parameter type must be one of bool, int, float, str, "
                            f"not {self.type!r}")

    def convert(self, value: Any) -> Any:
        """The value as this parameter's type; raises ValueError with the reason."""
        if value is None:
            return None
        converted = _CONVERTERS[self.type](value)
        if self.choices is not None and converted not in self.choices:
            raise ValueError(f"is not one of {', '.join(map(str, self.choices))}")
        if self.check is not None:
            self.check(converted)
        return converted

    def describe(self) -> str:
        """``type, default X, one of A|B: help`` for listings."""
        parts = [self.type.__name__]
        if self.choices is not None:
            parts.append("one of " + "|".join(map(str, self.choices)))
        if self.default is not None:
            parts.append(f"default {self.default}")
        return ", ".join(parts) + (f": {self.help}" if self.help else "")


def at_least(bound: float) -> Callable[[float], None]:
    """A ``Parameter.check``: the value must be ``>= bound``."""
    def check(value: float) -> None:
        if value < bound:
            raise ValueError(f"must be at least {bound:g}")
    return check


def positive(value: float) -> None:
    """A ``Parameter.check``: the value must be ``> 0``."""
    if value <= 0:
        raise ValueError("must be positive")


# --------------------------------------------------------------------------- installation


def find_executable(name: str) -> str | None:
    """``name`` installed next to this interpreter (the project's virtual environment), else
    the first one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@functools.cache
def modules_import(modules: tuple[str, ...]) -> bool:
    """Whether every module imports in this interpreter. Cached: importing torch and
    auto_LiRPA takes seconds."""
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception:
        return False
    return True


def module_found(module: str) -> bool:
    """Whether ``module`` can be imported. A module found is kept as found for the process
    (``bench run`` asks before every instance; a lookup costs ~0.2 ms a module); one missing is
    looked up again, so that installing it mid-run is seen."""
    if module in _found_modules:
        return True
    try:
        found = find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    if found:
        _found_modules.add(module)
    return found


_found_modules: set[str] = set()


def package_version(package: str) -> str | None:
    """The installed version of a Python package, None where it is missing. A found version is
    kept for the process (``bench run`` records it on every row; reading the distribution's
    metadata again costs ~2 ms an instance): the code it describes is the code already loaded."""
    found = _found_versions.get(package)
    if found is None:
        try:
            found = _found_versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            return None
    return found


_found_versions: dict[str, str] = {}


# --------------------------------------------------------------------------- the interface


class Verifier(ABC):
    name: ClassVar[str]
    complete: ClassVar[bool]  # complete verifiers may answer unsat/sat on every instance
    install_hint: ClassVar[str]  # one line: how to install it
    parameters: ClassVar[dict[str, Parameter]] = {}
    # What the default is_installed()/version() look at: an executable that must be found
    # (beside this interpreter or on PATH), Python modules that must import, and the
    # distribution whose version is the tool's (formatted with ``version_format``).
    executable: ClassVar[str | None] = None
    modules: ClassVar[tuple[str, ...]] = ()
    package: ClassVar[str | None] = None
    version_format: ClassVar[str] = "{version}"
    # Seconds between SIGTERM at the timeout and SIGKILL; None: the harness's default. A
    # verifier may set it per object (from a parameter) in __init__.
    grace: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for key, declared in cls.parameters.items():
            if not isinstance(declared, Parameter):
                raise TypeError(f"{cls.__name__}.parameters[{key!r}] must be a Parameter")

    def __init__(self, **params: Any):
        """Convert and check every parameter (the one place where that happens); raises
        BenchError naming the parameter, the value and what is allowed."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            accepted = "; ".join(f"{key} ({declared.describe()})"
                                 for key, declared in self.parameters.items())
            raise BenchError(f"verifier {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                             f"it takes: {accepted or 'none'}")
        self.params: dict[str, Any] = {}
        for key, declared in self.parameters.items():
            value = params.get(key, declared.default)
            try:
                self.params[key] = declared.convert(value)
            except ValueError as err:
                raise BenchError(f"{self.name}: {key}={value!r} {err}; {key} is "
                                 f"{declared.describe()}") from None

    @property
    def result_name(self) -> str:
        """What the results database calls this verifier: its name, or more where one adapter
        runs several tools (``vnncomp``), so that two tools never share rows."""
        return self.name

    def is_installed(self) -> bool:
        """By default: the declared executable is found and the declared modules import."""
        if self.executable is not None and find_executable(self.executable) is None:
            return False
        return modules_import(tuple(self.modules))

    def version(self) -> str | None:
        """By default: the declared package's version, None where it is missing."""
        found = package_version(self.package) if self.package else None
        return self.version_format.format(version=found) if found else None

    def uses_gpu(self) -> bool:
        """Whether this verifier runs on a GPU (workers are then pinned to one, Ray tasks ask
        for one). By default: what a declared ``device`` parameter names (cuda..., gpu)."""
        device = self.params.get("device")
        return str(device or "cpu").lower().startswith(("cuda", "gpu"))

    # ------------------------------------------------------------------ installing
    # A tool that bench can install (into its own folder under ``bench.verifiers.installer``'s
    # tools folder) overrides these; ``bench verifiers install NAME`` calls them for any tool.

    def install(self, *, force: bool = False, source: str | None = None,
                ref: str | None = None, dependencies: dict[str, str] | None = None,
                echo: Callable[[str], None] = print) -> str:
        """Install the tool (through ``bench.verifiers.installer.install_tool``); returns one
        line saying what and where. ``source`` and ``ref`` pick where from (a URL or a local
        path) and which commit, for tools installed from a repository; ``dependencies`` name
        other sources for its git dependencies. Raises BenchError (one line) when a step
        fails, leaving nothing half-made."""
        raise BenchError(f"{self.name} is not installed by bench; {self.install_hint}")

    def uninstall(self, echo: Callable[[str], None] = print) -> str:
        """Remove what ``install`` made; returns one line saying what was removed."""
        raise BenchError(f"{self.name} is not installed by bench, so bench does not remove it")

    def install_info(self) -> str:
        """One line for ``bench verifiers`` about where the installed tool comes from (e.g. its
        commit); '' when there is nothing to add to the version."""
        return ""

    # ------------------------------------------------------------------ one instance

    @abstractmethod
    def command(self, instance: Instance, workdir: Path) -> Command:
        """The process that verifies ``instance``; it may write files into ``workdir``."""

    @abstractmethod
    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        """Read the outcome of a process that exited by itself (the harness handles timeouts).
        Anything unexpected is ``Status.ERROR`` with a reason, never ``unknown`` or ``unsat``."""

    # ------------------------------------------------------------------ optional: batch mode
    # A tool that verifies many instances in one process (to pay its start-up once) implements
    # these three; ``bench.verifiers.harness.run_batch`` then runs it, still enforcing each
    # instance's own timeout. The process must work through the instances in the given order.

    def supports_batch(self) -> bool:
        """Whether ``batch_command`` may be used (it may depend on the parameters)."""
        return False

    def batch_command(self, instances: list[Instance], workdir: Path) -> Command:
        """The one process that verifies ``instances`` (all of one model), in this order. Its
        output goes to ``workdir/stdout.log`` and ``workdir/stderr.log``."""
        raise NotImplementedError(f"verifier {self.name!r} has no batch mode")

    def parse_batch_progress(self, instances: list[Instance], workdir: Path,
                             stdout: str) -> dict[int, Verdict]:
        """The instances decided so far, by their index in ``instances``, each with the tool's
        own time for it in ``verifier_time`` where it reports one. Called repeatedly while the
        process runs (``stdout`` so far; files may be half-written) and once after it ends.
        Only report an instance once its answer is final."""
        raise NotImplementedError(f"verifier {self.name!r} has no batch mode")
