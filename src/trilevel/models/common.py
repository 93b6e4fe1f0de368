"""Shared pieces of the in-place patches of the timm families: checks, the class swap, FLOP helpers.

Validation of user settings, the class swap (a subclass per patched class, cached, so that
``isinstance`` checks against the stock class keep working and no module or parameter is added),
and FLOP helpers. Used by the families (:mod:`trilevel.models.vit`, :mod:`trilevel.models.eva`,
:mod:`trilevel.models.swin`), the registry and :mod:`trilevel.flops`.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..options import check_ratio  # the one keep-ratio check, re-exported for the families

__all__ = [
    "check_ratio", "stage_ratios", "patched_class", "swap_class", "restore_class",
    "linear_macs", "conv_flops", "survival_from_positions",
]


def stage_ratios(name: str, value: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
    """One ratio per stage from a float (every stage) or a sequence of ``num_stages`` floats.

    Raises:
        ValueError: If a ratio is outside (0, 1] or the sequence has the wrong length.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} has {len(value)} entries, but the model has {num_stages} stages")
        return tuple(check_ratio(f"{name}[{s}]", v) for s, v in enumerate(value))
    return (check_ratio(name, value),) * num_stages


@functools.lru_cache(maxsize=None)
def patched_class(mixin: type, cls: type) -> type:
    """The subclass ``TriLevel<cls>`` of ``(mixin, cls)``, created once per pair.

    The stock class is kept as the class attribute ``_trilevel_base``, which :func:`restore_class`
    (a family's ``unpatch``, reached through :func:`trilevel.unpatch`) puts back.
    """
    if issubclass(cls, mixin):
        return cls
    return type("TriLevel" + cls.__name__, (mixin, cls), {"_trilevel_base": cls})


def swap_class(module: nn.Module, mixin: type, **attributes) -> None:
    """Swap ``module``'s class for :func:`patched_class` and set plain attributes on it."""
    module.__class__ = patched_class(mixin, type(module))
    for key, value in attributes.items():
        setattr(module, key, value)


def restore_class(module: nn.Module, attributes: Iterable[str]) -> None:
    """Undo :func:`swap_class`: the stock class back, the named attributes removed."""
    base = getattr(type(module), "_trilevel_base", None)
    if base is not None:
        module.__class__ = base
    for key in attributes:
        module.__dict__.pop(key, None)


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds per token of every ``nn.Linear`` inside ``module``."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def conv_flops(conv: Optional[nn.Module], out_positions: int) -> float:
    """FLOPs (multiply-add = 2) of an ``nn.Conv2d`` at ``out_positions`` output positions; 0 otherwise."""
    if not isinstance(conv, nn.Conv2d):
        return 0.0
    per_output = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    return 2.0 * out_positions * conv.out_channels * per_output


def survival_from_positions(kept_positions, grid_size, prune_layers):
    """Per pruning stage, ``("block i", (B, gh, gw) bool)``: the patches still present after it.

    Args:
        kept_positions: Per stage, ``(B, k_s)`` original patch indices (row-major; -1 marks a
            fused token, ignored).
        grid_size: Patch grid ``(gh, gw)``.
        prune_layers: The pruning blocks, one per stage (for the labels).

    Returns:
        A list of ``(label, mask)`` on the CPU; empty when the input was shuffled (no positions).
    """
    import torch

    gh, gw = grid_size
    n = gh * gw
    out = []
    for layer, pos in zip(prune_layers, kept_positions):
        pos = pos.detach().to("cpu", torch.long)
        mask = torch.zeros(pos.shape[0], n + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(pos < 0, torch.full_like(pos, n), pos), True)  # -1 -> spare column
        out.append((f"block {layer}", mask[:, :n].reshape(-1, gh, gw)))
    return out
