"""Training-step speed of stock timm against the EVA-02 / Swin patches, rows as ``trilevel bench speed``.

:func:`speed_for_family` builds a timm ``Eva`` or ``SwinTransformer`` by name and times the
variants of :func:`family_variants` with :func:`compare_speed`: every variant gets its own copy of
the same weights and its own AdamW, the variants take turns in rotating order within each round,
and the rows are :class:`trilevel.bench.speed.SpeedResult` (print them with
:func:`trilevel.bench.speed.format_speed_table`). The FLOP-implied speedups come from
:func:`trilevel.flops.forward_flops`.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..bench.speed import SpeedResult, Variant, compare_speed
from .eva import is_eva, patch_eva
from .swin import is_swin, patch_swin

__all__ = ["family_variants", "speed_for_family"]


def family_variants(model: nn.Module, keep_ratio: float = 0.7, attn_keep_ratio: float = 0.3,
                    prune_layers: Optional[Sequence[int]] = None) -> List[Variant]:
    """The variants worth timing for an ``Eva`` or a ``SwinTransformer``.

    Eva: stock, the patch at ratios 1/1, token level alone, attention level alone, both. Swin:
    stock, window pruning at ratio 1 and at ``keep_ratio``, key masking at ``keep_ratio``
    (``attn_keep_ratio`` does not apply).

    Raises:
        ValueError: If ``model`` is neither.
    """
    if is_eva(model):
        def eva(keep, attn):
            return (f"token {keep} / attn {attn}", keep, attn,
                    lambda m: patch_eva(m, prune_layers=prune_layers, keep_ratio=keep, attn_keep_ratio=attn))
        return [("dense timm", None, 1.0, None), eva(1.0, 1.0), eva(keep_ratio, 1.0), eva(1.0, attn_keep_ratio),
                eva(keep_ratio, attn_keep_ratio)]
    if is_swin(model):
        def swin(keep, mode):
            return f"{mode} {keep}", keep, 1.0, lambda m: patch_swin(m, keep_ratio=keep, mode=mode)
        return [("dense timm", None, 1.0, None), swin(1.0, "window"), swin(keep_ratio, "window"),
                swin(keep_ratio, "mask")]
    raise ValueError(f"model is a {type(model).__name__}; family_variants takes a timm Eva or SwinTransformer "
                     "(trilevel.bench.speed covers VisionTransformer)")




def speed_for_family(model: str, model_kwargs: Mapping[str, Any], keep_ratio: float = 0.7,
                     attn_keep_ratio: float = 0.3, prune_layers: Optional[Sequence[int]] = None,
                     device: str = "auto", amp: str = "none", **timing: int) -> List[SpeedResult]:
    """:func:`compare_speed` of a timm ``Eva`` or ``SwinTransformer`` by name, with :func:`family_variants`.

    Takes the options of :func:`trilevel.bench.speed.speed_for_model` (``trilevel bench speed``).

    Args:
        model: timm model name (e.g. ``eva02_tiny_patch14_224``, ``swin_tiny_patch4_window7_224``).
        model_kwargs: Keyword arguments of ``timm.create_model`` (``img_size``, ``in_chans``,
            ``num_classes``, ...).
        keep_ratio, attn_keep_ratio, prune_layers: As :func:`family_variants`.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``none``, ``bf16`` or ``fp16``.
        **timing: ``batch_size`` (default 128), ``rounds``, ``steps_per_round``, ``warmup_steps``
            of :func:`compare_speed`.

    Returns:
        One :class:`~trilevel.bench.speed.SpeedResult` per variant.

    Raises:
        ValueError: For an unknown model name, a model of another family, an unavailable device,
            an unknown ``amp`` or timing option (each named).
    """
    import timm

    amp_dtypes = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    unknown = sorted(set(timing) - {"batch_size", "rounds", "steps_per_round", "warmup_steps"})
    problems = [
        (not timm.is_model(model), f"model {model!r} is not a timm model name (e.g. eva02_tiny_patch14_224)"),
        (amp not in amp_dtypes, f"amp must be one of {', '.join(amp_dtypes)}; got {amp!r}"),
        (device == "cuda" and not torch.cuda.is_available(), "device 'cuda' asked for, but CUDA is not available"),
        (bool(unknown), f"unknown timing options {unknown}"),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(message)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    def make():
        return timm.create_model(model, pretrained=False, **model_kwargs)

    probe = make()
    variants = family_variants(probe, keep_ratio, attn_keep_ratio, prune_layers)
    shape = (probe.patch_embed.proj.in_channels, *probe.patch_embed.img_size)
    del probe
    timing.setdefault("batch_size", 128)
    return compare_speed(make, variants, input_shape=shape, num_classes=int(model_kwargs.get("num_classes", 1000)),
                         device=device, amp_dtype=amp_dtypes[amp], **timing)
