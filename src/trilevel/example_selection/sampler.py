"""Data plumbing for the example selectors: a distributed sampler over the active set, and a dataset
wrapper that returns each example's index.

:class:`ActiveSubsetSampler` follows ``torch.utils.data.DistributedSampler``
(https://pytorch.org/docs/stable/data.html#torch.utils.data.distributed.DistributedSampler: per-epoch
seeded permutation, padding to a multiple of the world size, strided shards) but over the current
active set of an :class:`~trilevel.example_selection.ExampleSelector` - the example level of Kong et
al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer
Training", AAAI 2023 (example-level sparsity), and InfoBatch (Qin et al., ICLR 2024).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from .base import ExampleSelector
from .validation import check_int, check_seed, is_int

__all__ = ["ActiveSubsetSampler", "IndexedDataset"]


class ActiveSubsetSampler(Sampler[int]):
    """A ``DistributedSampler`` over the selector's current active set.

    At each epoch the active set (read at :meth:`set_epoch`, after the selector's due update) is
    permuted with a generator seeded by ``seed + epoch`` - identical on all ranks - padded by
    repeating its first indices until divisible by ``num_replicas`` (or truncated with
    ``drop_last``), and rank ``r`` takes positions ``r, r + num_replicas, ...``. The shards are
    disjoint, of equal length, and cover the active set (up to padding). Used with the example
    selectors of Kong et al. (AAAI 2023, example level) and InfoBatch.

    Args:
        selector: Any :class:`~trilevel.example_selection.ExampleSelector`: a
            :class:`~trilevel.example_selection.ForgettingSelector`,
            :class:`~trilevel.example_selection.RandomSelector` or
            :class:`~trilevel.example_selection.LossSelector`.
        num_replicas: Number of ranks; defaults to the ``torch.distributed`` world size if
            initialised, else 1.
        rank: This rank, in ``[0, num_replicas)``; defaults to the distributed rank, else 0.
        shuffle: Permute the active set each epoch (otherwise ascending index order).
        seed: Base seed of the per-epoch permutation; must be the same on all ranks.
        drop_last: Drop the tail instead of padding when the active set is not divisible by
            ``num_replicas``.

    Raises:
        ValueError: If ``num_replicas < 1`` or ``rank`` is outside ``[0, num_replicas)``.
    """

    def __init__(
        self,
        selector: ExampleSelector,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        self.num_replicas = check_int("num_replicas", num_replicas, 1)
        if not is_int(rank) or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be an integer in [0, num_replicas) = [0, {self.num_replicas}), got {rank!r}")
        self.rank = int(rank)
        self.selector = selector
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.all_examples = False
        self._snapshot: torch.Tensor | None = None
        self._snapshot_key: tuple[int, int] | None = None

    def set_epoch(self, epoch: int, all_examples: bool = False) -> None:
        """Start ``epoch``: apply the selector's due update, then fix this epoch's order.

        Args:
            epoch: The epoch about to start, ``>= 0``.
            all_examples: Draw from every example this epoch, not only the active set (a dense
                tail at the end of a run, as InfoBatch anneals to the full data).

        Raises:
            ValueError: If ``epoch`` is not an integer ``>= 0``.
        """
        epoch = check_int("epoch", epoch, 0)
        self.selector.set_epoch(epoch)
        self.epoch = epoch
        self.all_examples = bool(all_examples)
        self._indices()

    def _sizes(self, n: int) -> tuple[int, int]:
        if self.drop_last and n % self.num_replicas != 0:
            num_samples = (n - self.num_replicas) // self.num_replicas + 1 if n >= self.num_replicas else 0
        else:
            num_samples = math.ceil(n / self.num_replicas)
        return num_samples, num_samples * self.num_replicas

    def _indices(self) -> torch.Tensor:
        key = (self.epoch, self.selector.active_set_version, self.all_examples)
        if self._snapshot is None or self._snapshot_key != key:
            active = torch.arange(self.selector.num_examples) if self.all_examples else self.selector.index_sets()[0]
            n = int(active.numel())
            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self.seed + self.epoch)
                order = active[torch.randperm(n, generator=g)]
            else:
                order = active.clone()
            num_samples, total = self._sizes(n)
            if total > n and n > 0:
                reps = math.ceil((total - n) / n)
                order = torch.cat([order, order.repeat(reps)[: total - n]])
            order = order[:total]
            self._snapshot = order[self.rank : total : self.num_replicas].clone()
            self._snapshot_key = key
        return self._snapshot

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return int(self._indices().numel())

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its epoch and order settings (ints and bools only)."""
        return {"epoch": int(self.epoch), "seed": self.seed, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch saved by :meth:`state_dict` (does not call the selector).

        ``num_replicas`` and ``rank`` are not restored, so a run may resume on another world size
        (with a different split of the same epoch order).

        Raises:
            ValueError: If ``seed``, ``shuffle`` or ``drop_last`` differ from this sampler's.
        """
        for key in ("seed", "shuffle", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state.get(key)!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.epoch = check_int("epoch", state["epoch"], 0)
        self._snapshot = None


class IndexedDataset(Dataset):
    """Wrap a dataset so that each item also carries its index: ``(image, target, index)``.

    Tuple or list items are extended with the index (``(image, target)`` becomes
    ``(image, target, index)``); any other item ``x`` becomes ``(x, index)``. The index lets
    :meth:`~trilevel.example_selection.ExampleSelector.record` attribute a batch's outcomes to examples.

    Args:
        dataset: Any map-style dataset with ``__getitem__`` and ``__len__``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)
