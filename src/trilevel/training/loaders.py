"""The training and validation ``DataLoader``s of a run: deterministic per (seed, epoch, rank), resumable mid-epoch.

Augmentation randomness is a function of where a sample falls, not of which process draws it:
before transforming the sample at position ``p`` of rank ``r``'s order in epoch ``e``, the global
torch (CPU), Python ``random`` and NumPy generators are seeded from ``(seed, e, r, p)``
(:func:`sample_seed`). So any number of worker processes, persistent or not, gives the same
batches as ``workers=0``; a mid-epoch resume starts at position ``skip x batch size`` and draws
exactly what the uninterrupted run drew there (no worker RNG to replay); ``--workers`` may change
on resume; and every DDP rank has its own augmentation stream. In the main process
(``workers=0``) the global generators are restored after each batch, so augmentation does not
consume the training loop's random stream (dropout, mixup).
"""

from __future__ import annotations

import random
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import skip_unreadable_collate

__all__ = ["PositionSeededSampler", "SeededSamples", "loader_generator", "make_loader", "sample_seed",
           "seed_rank_streams"]

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea and Flood, OOPSLA 2014): a 64-bit hash of ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The 64-bit augmentation seed of the sample at ``position`` of ``rank``'s order in ``epoch``."""
    h = 0
    for value in (seed, epoch, rank, position):
        h = _mix64(h ^ (int(value) & _MASK64))
    return h


def _seed_globals(seed: int) -> None:
    """Seed the generators transforms draw from: torch's CPU generator, ``random``, NumPy's global one."""
    torch.default_generator.manual_seed(seed)  # CPU only: the CUDA generators stay untouched
    random.seed(seed)
    np.random.seed(seed >> 32)


def seed_rank_streams(seed: int, rank: int) -> None:
    """Seed rank ``rank``'s own main-process streams (dropout, mixup; CUDA too) after the shared init.

    Rank 0 keeps the run's ``seed`` streams; rank ``r > 0`` reseeds torch (every device), ``random``
    and NumPy from ``sample_seed(seed, -1, r, 0)``, so no two ranks draw alike.
    """
    s = sample_seed(seed, -1, rank, 0)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s >> 32)


class SeededSamples(Dataset):
    """A dataset read with keys ``(augmentation seed, index)`` from a :class:`PositionSeededSampler`.

    Each item is ``dataset[index]`` transformed with the global generators seeded from its key;
    the generators' previous states are restored after each batch (what the main process needs
    with ``workers=0``; in a worker process it is harmless).

    Args:
        dataset: Map-style dataset (e.g. an :class:`~trilevel.example_selection.IndexedDataset`).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Tuple[int, int]]) -> List[Any]:
        torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            out = []
            for seed, index in keys:
                _seed_globals(seed)
                out.append(self.dataset[index])
            return out
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


class PositionSeededSampler(Sampler[Tuple[int, int]]):
    """Keys ``(sample_seed(seed, epoch, rank, position), index)`` for the indices of ``base`` from ``start`` on.

    Args:
        base: The epoch's sampler (the same order on every call of ``iter``).
        seed: The run's seed.
        epoch: The epoch.
        rank: This process's rank.
        start: Positions already consumed (a mid-epoch resume: steps done x batch size).
    """

    def __init__(self, base: Sampler, seed: int, epoch: int, rank: int, start: int = 0) -> None:
        self.base = base
        self.seed, self.epoch, self.rank, self.start = int(seed), int(epoch), int(rank), int(start)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for position, index in enumerate(iter(self.base)):
            if position >= self.start:
                yield sample_seed(self.seed, self.epoch, self.rank, position), int(index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)  # type: ignore[arg-type]


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """A generator seeded per (seed, epoch, rank): the loader's own draws repeat on resume."""
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
    seeded: bool = False,
    skip_steps: int = 0,
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
        seeded: The training loader: each sample's augmentation seeded from (seed, epoch, rank,
            position), so the batches depend on nothing else: not on ``workers``, nor on where the
            epoch was resumed (see the module docstring). Needs ``sampler`` (the epoch's order on
            this rank, ``set_epoch`` already called).
        skip_steps: With ``seeded``: steps of the epoch already done (a mid-epoch resume).
    """
    if seeded:
        if sampler is None:
            raise ValueError("a seeded (training) loader needs the epoch's sampler")
        dataset = SeededSamples(dataset)
        sampler = PositionSeededSampler(sampler, seed, epoch, rank, start=skip_steps * batch_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=drop_last,
        generator=loader_generator(seed, epoch, rank), collate_fn=skip_unreadable_collate,
    )
