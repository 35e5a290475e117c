"""Progress of long work: a bar on a terminal, plain lines in a log file."""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from tqdm import tqdm


def format_duration(seconds: float | None) -> str:
    """h:mm:ss, or ? when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """done / total, per-status counts and the time left, for a long run.

    On a terminal: a tqdm bar (its estimate uses the average rate since the start, not a recent
    window: instance times vary too much, and parallel workers finish in bursts). Elsewhere (a
    batch job's log file): one plain line every ``interval`` seconds and one at the end, instead
    of carriage-return noise. Instances decided before this run count as done but not in the
    rate."""

    def __init__(self, total: int, already_done: int, desc: str, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 30.0):
        self.total, self.skipped, self.desc = total, already_done, desc
        self.counts: Counter[str] = Counter()
        self.stream = stream or sys.stderr
        self.enabled, self.interval = enabled, interval
        self.started = self._last_line = time.monotonic()
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = tqdm(total=total, initial=already_done, desc=desc, unit="inst",
                         smoothing=0, dynamic_ncols=True, file=self.stream,
                         disable=not self.tty)
        self._bar.set_postfix(self._postfix(), refresh=False)

    @property
    def done(self) -> int:
        return self.skipped + sum(self.counts.values())

    def eta(self) -> float | None:
        """Seconds left at the average rate of this run so far; None before the first result."""
        finished = sum(self.counts.values())
        if not finished:
            return None
        return (self.total - self.done) * (time.monotonic() - self.started) / finished

    def line(self) -> str:
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(self.counts.items())) or "none run yet"
        elapsed = time.monotonic() - self.started
        return (f"{self.desc}: {self.done}/{self.total} done ({statuses}; {self.skipped} "
                f"skipped), {format_duration(elapsed)} elapsed, {format_duration(self.eta())} left")

    def _postfix(self) -> dict[str, int]:
        return {**dict(sorted(self.counts.items())), "skipped": self.skipped}

    def advance(self, status: str) -> None:
        self.counts[status] += 1
        if self.tty:
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(1)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._print_line()

    def skip(self) -> None:
        """One more item done without being run here (another process did it)."""
        self.skipped += 1
        if self.tty:
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(1)

    def _print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line = time.monotonic()

    def close(self) -> None:
        self._bar.close()
        if self.enabled and not self.tty and self.counts:  # the summary covers "nothing to do"
            self._print_line()
