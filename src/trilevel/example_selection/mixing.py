"""Whose outcome a mixed image is: the example whose label dominates the mix (mixup/cutmix)."""

from __future__ import annotations

import torch

__all__ = ["dominant_indices"]


def dominant_indices(indices: torch.Tensor, labels: torch.Tensor, mixed_targets: torch.Tensor) -> torch.Tensor:
    """The example each mixed image is credited to: its own, or its partner's when the partner's label dominates.

    timm's ``Mixup`` (every mode: batch, pair, elem) mixes image ``i`` with image ``B - 1 - i`` (the
    batch flipped) and weights their one-hot labels by ``lam`` and ``1 - lam``. A selector judges a
    mixed image against the dominant label (``argmax`` of its soft target); this credits the
    outcome to the example that label belongs to, instead of always to example ``i`` (the authors'
    code judged the mixed image against example ``i``'s hard label). When both labels are the same
    class, example ``i`` is credited.

    Args:
        indices: ``(B,)`` example indices of the batch before mixing.
        labels: ``(B,)`` class indices before mixing.
        mixed_targets: ``(B, K)`` soft targets after mixing (label smoothing allowed).

    Returns:
        ``(B,)`` example indices, on ``indices``' device.

    Raises:
        ValueError: If the shapes disagree.
    """
    if indices.dim() != 1 or labels.shape != indices.shape or mixed_targets.dim() != 2 \
            or mixed_targets.shape[0] != indices.shape[0]:
        raise ValueError(
            f"expected indices (B,), labels (B,) and mixed targets (B, K), got {tuple(indices.shape)}, "
            f"{tuple(labels.shape)} and {tuple(mixed_targets.shape)}"
        )
    labels = labels.to(mixed_targets.device, torch.int64)
    own = mixed_targets.gather(1, labels.unsqueeze(1)).squeeze(1)
    other = mixed_targets.gather(1, labels.flip(0).unsqueeze(1)).squeeze(1)
    partner_dominates = (other > own).to(indices.device)
    return torch.where(partner_dominates, indices.flip(0), indices)
