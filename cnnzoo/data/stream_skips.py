"""What a stream says about the samples it could not use: :class:`Skips`, one per loader worker and
pass, names the first few skipped samples of each shard, counts the rest, reports a damaged shard
once, and turns a pass with no usable sample into one line.

Imports console only; torch-free.
"""

from __future__ import annotations

import os
from collections import Counter

from ..console import warn

NAMED_SKIPS = 3  # skipped samples named per shard and pass; the rest are counted


class Skips:
    """The samples one worker used and skipped in a pass, and the shards that broke off. Warnings
    name the first NAMED_SKIPS per shard and count the rest; they wait until a sample is used, so
    that a pass in which none is usable ends in one line (:meth:`unusable`), not a flood."""

    def __init__(self) -> None:
        self.used = self.tried = 0
        self.per_shard: Counter[str] = Counter()
        self.summed: Counter[str] = Counter()
        self.damaged: dict[str, str] = {}
        self.first = ""
        self.waiting: list[str] = []

    def skip(self, shard: str, what: str) -> None:
        self.tried += 1
        self.per_shard[shard] += 1
        self.first = self.first or f"{os.path.basename(shard)}: {what}"
        if self.per_shard[shard] <= NAMED_SKIPS:
            self._say(f"skipped {shard}: {what}")

    def damage(self, shard: str, reason: str) -> None:
        if shard not in self.damaged:  # a shard read round and round breaks off each time: said once
            self.damaged[shard] = reason
            self.first = self.first or f"{os.path.basename(shard)} is damaged ({reason})"
            self._say(f"skipped the rest of shard {shard}: it is damaged ({reason})")

    def _say(self, line: str) -> None:
        if self.used:
            warn(line)
        elif len(self.waiting) < 4 * NAMED_SKIPS:
            self.waiting.append(line)

    def flush(self) -> None:
        if self.waiting:
            for line in self.waiting:
                warn(line)
            self.waiting = []
            self.summary()

    def summary(self) -> None:
        """How many more samples of each shard were skipped than were named, when that grew."""
        if not self.used:
            return
        for shard, n in self.per_shard.items():
            if n > NAMED_SKIPS and n > self.summed[shard]:
                warn(f"skipped {n:,} samples of shard {shard} in this pass ({NAMED_SKIPS} named above)")
                self.summed[shard] = n

    def unusable(self, shards: list[str]) -> str:
        """The one line that ends a pass in which no sample was usable."""
        named = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
        what = f"all {self.tried:,} read were skipped (first: {self.first})" if self.tried else self.first
        return (
            f"no usable sample in shard{'s' * (len(shards) > 1)} {named}: {what or 'they hold no samples'}; "
            f"cnnzoo data check lists every problem"
        )
