"""The order of an epoch's batches, and each batch's augmentation seed: functions of (seed, epoch,
batch) alone, so a run repeats whatever the worker count, every process of a DDP run takes the
same number of steps, and a run resumed mid-epoch skips exactly the batches it saw.

Floor 5 (data): imports torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (epoch, batch, ...)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(index, batch_seed)``; the order depends only on (seed, epoch).

    With ``shard=(rank, world)`` each of ``world`` processes takes every world-th image of
    the same order. Training (``shuffle``) repeats images from the start of the order so
    that every process takes the same number of steps, as DDP needs; validation does
    not, so that every image counts once.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        balanced: bool = False,
        shard: tuple[int, int] = (0, 1),
        weights: torch.Tensor | None = None,
    ):
        self.labels, self.batch_size, self.shuffle = labels, batch_size, shuffle
        self.seed, self.balanced, self.epoch = seed, balanced, 0
        self.rank, self.world = shard
        self.skip = 0  # batches the next pass leaves out: a run resumed mid-epoch saw them (start_at)
        self.weights = weights  # given: multi-label's (ImageDataset.sampling_weights)
        if weights is None and balanced:
            counts = torch.bincount(labels).double() if len(labels) else torch.zeros(1)
            self.weights = (1.0 / counts.clamp(min=1))[labels] if len(labels) else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, batch: int) -> None:
        """The next pass starts at its ``batch``-th batch (the order and seeds unchanged), once."""
        self.skip = batch

    def _order(self) -> list[int]:
        n = len(self.labels)
        if not self.shuffle:
            order = list(range(n))
        else:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
            if self.balanced:  # each class drawn equally often, with replacement
                order = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
            else:
                order = torch.randperm(n, generator=g).tolist()
        if self.world == 1:
            return order
        if self.shuffle and n:
            padded = -(-n // self.world) * self.world
            order = (order * -(-padded // n))[:padded]
        return order[self.rank :: self.world]

    def _share(self) -> int:
        n = len(self.labels)
        if self.world == 1:
            return n
        if self.shuffle:
            return -(-n // self.world) if n else 0
        return len(range(self.rank, n, self.world))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, skip, self.skip = self._order(), self.skip, 0
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            if b < skip:
                continue
            chunk = order[start : start + self.batch_size]
            if self.shuffle and len(chunk) == 1 and self.batch_size > 1 and start > 0:
                break  # a lone last image would break BatchNorm's batch statistics
            # each process draws its own augmentations; one process keeps its seeds of old
            seed = (
                mix_seed(self.seed, self.epoch, b, 2)
                if self.world == 1
                else mix_seed(self.seed, self.epoch, b, 2, self.rank)
            )
            yield [(i, seed) for i in chunk]

    def __len__(self) -> int:
        n = self._share()
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and (full == 0 or not self.shuffle)) else 0)
