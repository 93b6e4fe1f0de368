"""Helpers that keep the example selectors' per-step path free of host-device synchronisation.

The example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for
Efficient Vision Transformer Training", AAAI 2023 (arXiv 2211.10801), method section, example-level
sparsity, records every training batch. On an accelerator, any host read of device data (``.item()``,
``int(t)``, ``bool(t)``, a blocking copy to the CPU, ``nonzero``, boolean-mask indexing and other
data-dependent shapes) stalls the host until the device queue drains, so these helpers never do one:

* :func:`move` copies between devices with ``non_blocking=True`` wherever that is safe;
* :func:`host_bounds` / :func:`host_any` read values of tensors that already live in host memory
  (reading host memory is not a device sync) without dispatching ``aten._local_scalar_dense``;
* :func:`first_occurrence` and :func:`redirect` handle duplicate indices with fixed shapes: rows that
  must not update the statistics (repeats, ignored or invalid rows) are sent to a *dummy slot* (index
  ``num_examples``, one extra entry at the end of every statistics tensor) instead of being dropped
  with a data-dependent compaction.
"""

from __future__ import annotations

import torch

__all__ = ["first_occurrence", "host_any", "host_bounds", "is_host", "move", "redirect"]


def is_host(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lives in host memory (its values can be read without a device sync)."""
    return tensor.device.type == "cpu"


def move(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor.to(device, dtype)`` without a host sync where that is safe.

    Host-to-device and device-to-device copies are issued with ``non_blocking=True`` (the caching
    host allocator keeps a pinned source alive until the copy ends; a pageable source is staged).
    A copy from an accelerator to the CPU stays blocking: a non-blocking one would hand back host
    memory before the data arrives, so keep the statistics on the data's device to avoid it.

    Args:
        tensor: Any tensor.
        device: The destination device.
        dtype: The destination dtype; None keeps ``tensor.dtype``.

    Returns:
        ``tensor`` itself when nothing changes, else a copy on ``device`` with ``dtype``.
    """
    device = torch.device(device)
    non_blocking = not (device.type == "cpu" and tensor.device.type != "cpu")
    return tensor.to(device=device, dtype=dtype, non_blocking=non_blocking)


def host_bounds(tensor: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of a non-empty host tensor, read through NumPy (no ``_local_scalar_dense``).

    Args:
        tensor: A non-empty integer CPU tensor.

    Returns:
        The smallest and the largest value, as Python ints.
    """
    lo, hi = torch.aminmax(tensor)
    return int(lo.numpy()), int(hi.numpy())


def host_any(tensor: torch.Tensor) -> bool:
    """Whether any element of a bool host tensor is True, read through NumPy.

    Args:
        tensor: A bool CPU tensor (any shape, possibly empty).

    Returns:
        ``tensor.any()`` as a Python bool.
    """
    return bool(tensor.any().numpy())


def first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """Mark the first occurrence (in order) of every value of ``keys``, with fixed shapes.

    A stable sort groups equal keys in their original order; the first element of each group is
    scattered back to its position. No host read, no data-dependent shape (unlike ``unique``).

    Args:
        keys: ``(N,)`` integer tensor, any device.

    Returns:
        ``(N,)`` bool tensor on ``keys``' device: True where ``keys[i]`` differs from every
        ``keys[j]``, ``j < i``.
    """
    sorted_keys, order = torch.sort(keys, stable=True)
    first_sorted = torch.ones_like(sorted_keys, dtype=torch.bool)
    first_sorted[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return torch.empty_like(first_sorted).scatter_(0, order, first_sorted)


def redirect(indices: torch.Tensor, recorded: torch.Tensor, dummy: int) -> torch.Tensor:
    """Scatter targets for one batch: first recorded occurrences keep their index, the rest go to ``dummy``.

    Rows with ``recorded`` False (ignored or invalid rows) are sent to ``dummy`` before duplicates
    are found, so a repeat of an ignored row still counts; among the recorded rows, the first
    occurrence of each index wins (batch order, then rank order when gathered). Every real index
    then appears at most once, so a plain ``index_put_`` is exact and deterministic; the slot
    ``dummy`` absorbs everything else.

    Args:
        indices: ``(N,)`` int64 example indices, any device.
        recorded: ``(N,)`` bool, on ``indices``' device: whether the row may update the statistics.
        dummy: The dummy slot, ``num_examples``.

    Returns:
        ``(N,)`` int64 on ``indices``' device, values in ``[0, dummy]``, each value below ``dummy``
        at most once.
    """
    key = torch.where(recorded, indices, dummy)
    return torch.where(first_occurrence(key), key, dummy)
