"""The rules for numbers that come from users and from files: written once, used by every command.

A timeout or an eps may come from the command line, a YAML config, an ``instances.csv`` or a
manifest; whichever, it passes through here, so that ``build-instances``, ``run``, ``check`` and
``pack`` accept and refuse exactly the same values.

- A timeout is a finite number of seconds, above 0 and at most ``MAX_TIMEOUT_S``. An infinite
  (``inf``, ``1e400``, YAML's ``.inf``) or huge timeout would disable the harness's hard limit.
- An eps is a finite radius in raw pixel units, ``0 <= eps <= MAX_EPS``: the pixels lie in
  [0, 1], so a larger ball says nothing more, and ``inf`` would make the property the whole box.
"""
from __future__ import annotations

import math
from typing import Any

from bench.errors import BenchError

MAX_TIMEOUT_S = 7 * 24 * 3600.0  # one week: far beyond any verifier's useful time on one property
MAX_EPS = 1.0


def _number(value: Any, what: str, where: str) -> float:
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool):
        raise BenchError(f"{prefix}{what} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise BenchError(f"{prefix}{what} {str(value)[:40]!r} is not a number") from None
    return number


def parse_timeout(value: Any, where: str = "") -> float:
    """A per-instance timeout in seconds; ``where`` names the source for the error message."""
    prefix = f"{where}: " if where else ""
    timeout = _number(value, "timeout", where)
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
        shown = str(value)[:40]
        raise BenchError(f"{prefix}timeout must be a finite number of seconds above 0 and at most "
                         f"{MAX_TIMEOUT_S:.0f} (one week), got {shown!r}")
    return timeout


def parse_eps(value: Any, where: str = "") -> float:
    """An L-inf radius in raw pixel units ([0, 1])."""
    prefix = f"{where}: " if where else ""
    eps = _number(value, "eps", where)
    if not math.isfinite(eps) or not 0 <= eps <= MAX_EPS:
        shown = str(value)[:40]
        raise BenchError(f"{prefix}eps must be a finite radius between 0 and {MAX_EPS:g} in pixel "
                         f"units (pixels lie in [0, 1]), got {shown!r}")
    return eps
