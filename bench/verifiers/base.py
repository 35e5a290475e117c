"""One small interface for every verifier, and the vocabulary of results.

Modelled on DNNV's ``verifiers/common/base.py``: a verifier declares its parameters, says whether
it is installed (and its version), builds the command for one instance and parses what the
process left behind. The harness (``bench.verifiers.harness``) owns everything else: the hard
timeout, killing the process tree, peak memory, logs and checking counterexamples, so that every
verifier is measured the same way.
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.formats.folder import Instance


class Status(str, enum.Enum):
    """What happened on one instance. Never merge these: an error is not an unknown, and only
    ``unsat`` means the property was verified."""

    SAT = "sat"  # a counterexample exists (the property is violated)
    UNSAT = "unsat"  # verified: no input in the region violates the property
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"  # an incomplete method could not decide
    ERROR = "error"  # the tool failed; see the reason




@dataclass
class Verdict:
    """What a verifier said about one instance, parsed from its output."""

    status: Status
    counterexample: dict[str, list[float]] | None = None  # {"x": [...], "y": [...] or absent}
    verifier_time: float | None = None  # the tool's own reported time, where it reports one
    reason: str = ""  # why, for error/unknown/timeout


@dataclass
class Command:
    """The process to run for one instance."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the harness's environment
    cwd: Path | None = None


class Verifier(ABC):
    name: ClassVar[str]
    complete: ClassVar[bool]  # complete verifiers may answer unsat/sat on every instance
    install_hint: ClassVar[str]  # one line: how to install it
    parameters: ClassVar[dict[str, Any]] = {}  # declared parameters and their defaults
    # Seconds between SIGTERM at the timeout and SIGKILL; None: the harness's default. A
    # verifier may set it per object (from a parameter) in __init__.
    grace: float | None = None

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.parameters)
        if unknown:
            from bench.errors import BenchError

            raise BenchError(
                f"verifier {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
                f"it takes: {', '.join(self.parameters) or 'none'}"
            )
        self.params = {**self.parameters, **params}

    @property
    def result_name(self) -> str:
        """What the results database calls this verifier: its name, or more where one adapter
        runs several tools (``vnncomp``), so that two tools never share rows."""
        return self.name

    def bool_param(self, name: str) -> bool:
        """A boolean parameter, given as a bool or as text from the command line."""
        value = self.params[name]
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        from bench.errors import BenchError

        raise BenchError(f"{self.name}: {name}={value!r} is not a boolean (true/false)")

    @abstractmethod
    def is_installed(self) -> bool: ...

    @abstractmethod
    def version(self) -> str | None: ...

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
