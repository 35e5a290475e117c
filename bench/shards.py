"""Splitting work into shards for job arrays: which of N shards an item belongs to.

An item belongs to shard ``1 + h mod N``, where ``h`` is the first 8 bytes of the SHA-256 of its
parts joined by ``\x1f``, read as an unsigned integer. The hash, not a position, decides, so the
shards do not depend on the order of items, nor on which other items exist, nor on the machine
or the Python version (unlike ``hash()``). The N shards are disjoint and together hold every
item; their sizes are equal only on average.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bench.errors import BenchError


def stable_hash(*parts: str) -> int:
    """A 64-bit hash of ``parts`` that is the same on every machine and in every process."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1 <= index <= count); see the module's docstring."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: "str | Shard") -> "Shard":
        if isinstance(text, Shard):
            return text
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise BenchError(f"shard must be K/N (e.g. 2/8), got {text!r}") from None
        if count < 1 or not 1 <= index <= count:
            raise BenchError(f"shard {text!r}: K counts from 1 and must be at most N (with a "
                             f"0-based SLURM array use $((SLURM_ARRAY_TASK_ID + 1))/N)")
        return cls(index, count)

    def owns(self, *parts: str) -> bool:
        return stable_hash(*parts) % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
