"""The training and validation ``DataLoader``s of a run: deterministic per (seed, epoch, rank), resumable mid-epoch."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import skip_unreadable_collate

__all__ = ["SkipSampler", "loader_generator", "make_loader"]


class SkipSampler(Sampler[int]):
    """Yield the indices of ``base`` after the first ``skip`` (a mid-epoch resume).

    Args:
        base: The epoch's sampler.
        skip: Indices already consumed.
    """

    def __init__(self, base: Sampler, skip: int) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """A generator seeded per (seed, epoch, rank): worker seeds and loader randomness repeat on resume."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003) + epoch) * 1_009 + rank)
    return g


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    seed: int,
    epoch: int,
    rank: int,
    sampler: Optional[Sampler] = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` with the run's conventions (pinned memory on CUDA, unreadable images skipped).

    Args:
        dataset: Map-style dataset.
        batch_size: Batch size per process.
        workers: Worker processes.
        device: Where the batches go (pins memory for CUDA).
        seed: The run's seed.
        epoch: The epoch (0 for validation).
        rank: This process's rank.
        sampler: Order of the items; None: in order, no shuffling.
        drop_last: Drop a final incomplete batch.
    """
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=drop_last,
        generator=loader_generator(seed, epoch, rank), collate_fn=skip_unreadable_collate,
    )
