"""Whose outcome a mixed image is: the example whose label dominates the mix (mixup/cutmix).

Used with the example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (example-level sparsity): the
forgetting events (Toneva et al., ICLR 2019) of a mixed image are credited to one example.
"""

from __future__ import annotations

import torch

from .syncfree import move

__all__ = ["dominant_indices"]


def dominant_indices(indices: torch.Tensor, labels: torch.Tensor, mixed_targets: torch.Tensor) -> torch.Tensor:
    """The example each mixed image is credited to: its own, or its partner's when the partner's label dominates.

    timm's ``Mixup`` (every mode: batch, pair, elem) mixes image ``i`` with image ``B - 1 - i`` (the
    batch flipped) and weights their one-hot labels by ``lam`` and ``1 - lam``. A selector judges a
    mixed image against the dominant label (``argmax`` of its soft target); this credits the
    outcome to the example that label belongs to, instead of always to example ``i`` (the authors'
    code judged the mixed image against example ``i``'s hard label). When both labels are the same
    class, example ``i`` is credited.

    Computed on ``mixed_targets``' device without a host read: ``indices`` and ``labels`` are copied
    there with ``non_blocking=True`` (e.g. indices straight from a ``DataLoader`` to the GPU), and
    the result stays there, ready for :meth:`ExampleSelector.record` with the statistics on the same
    device.

    Args:
        indices: ``(B,)`` integer example indices of the batch before mixing, any device.
        labels: ``(B,)`` class indices before mixing, any device.
        mixed_targets: ``(B, K)`` soft targets after mixing (label smoothing allowed).

    Returns:
        ``(B,)`` example indices with ``indices``' dtype, on ``mixed_targets``' device (not copied
        back to ``indices``' device when it differs).

    Raises:
        ValueError: If the shapes disagree.
    """
    if indices.dim() != 1 or labels.shape != indices.shape or mixed_targets.dim() != 2 \
            or mixed_targets.shape[0] != indices.shape[0]:
        raise ValueError(
            f"expected indices (B,), labels (B,) and mixed targets (B, K), got {tuple(indices.shape)}, "
            f"{tuple(labels.shape)} and {tuple(mixed_targets.shape)}"
        )
    device = mixed_targets.device
    labels = move(labels, device, torch.int64)
    indices = move(indices, device)
    own = mixed_targets.gather(1, labels.unsqueeze(1)).squeeze(1)
    other = mixed_targets.gather(1, labels.flip(0).unsqueeze(1)).squeeze(1)
    return torch.where(other > own, indices.flip(0), indices)
