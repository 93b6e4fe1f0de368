"""Analytic FLOP counts of token-pruned ViT-like timm models (VisionTransformer, Eva).

A multiply-add counts as 2 FLOPs, the convention of ``torch.utils.flop_counter.FlopCounterMode``
(the tests check these counts against it). Counted: the patch embedding, every ``nn.Linear`` of
every block (qkv, projection, gate, MLP) at the number of tokens it sees, the two attention
matrix products (``Q K^T`` and ``A V``, dense even when a connection mask is active: a masked
dense kernel does the same arithmetic), the forward-only [CLS] row of ``Q K^T`` that scores the
tokens when only the token level is on, the forward-only ``Q K^T`` of a pruning block whose
attention level builds a new mask (its probabilities also serve the scores), and the classifier
head. A pruning block passes on the kept tokens and the tokens its fate appends
(:meth:`~trilevel.token_pruning.TokenFate.extra_tokens`: EViT's fused token); with a fate that
rejoins (``bypass``), the blocks from the rejoin block on see every token again. Not counted:
norms, softmax, GELU, rotary embeddings, token selection, mask construction, gathers and
scatters (well under 1% here).

These are the counts behind :func:`trilevel.forward_flops` and :func:`trilevel.tokens_per_block`
for the ViT and EVA-02 families (:mod:`trilevel.models.registry`); the Swin family counts windows
(:mod:`trilevel.models.swin`). ``settings`` are resolved
:class:`~trilevel.models.registry.PatchSettings` (pruning blocks filled in), or None for the
stock model.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch.nn as nn

from .models.common import conv_flops, linear_macs
from .token_pruning import get_token_fate, get_token_score, num_kept_tokens

__all__ = ["num_patches", "vit_tokens_per_block", "vit_forward_flops"]


def num_patches(model: nn.Module, img_size: Optional[int] = None) -> int:
    """Patch tokens of one image: the model's own count, or that of an ``img_size`` x ``img_size`` input.

    Raises:
        ValueError: If ``img_size`` is not a positive multiple of the patch size.
    """
    pe = model.patch_embed
    if img_size is None:
        return int(pe.num_patches)
    ph, pw = pe.patch_size
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < max(ph, pw) \
            or img_size % ph or img_size % pw:
        raise ValueError(f"img_size must be a positive multiple of the patch size {ph}x{pw}, got {img_size!r}")
    return (img_size // ph) * (img_size // pw)


def vit_tokens_per_block(model: nn.Module, settings: Optional[Any], keep_ratio: float, training: bool = False,
                         img_size: Optional[int] = None) -> List[Tuple[int, int]]:
    """Tokens seen by the attention and by the MLP of each block, for one image.

    Args:
        model: A timm ``VisionTransformer`` or ``Eva`` (unwrapped), patched or not.
        settings: Resolved patch settings, or None for the stock model (no pruning).
        keep_ratio: Token keep ratio to assume.
        training: Count a training forward: timm's ``PatchDropout`` (``patch_drop_rate``, Liu et
            al., WACV 2023) then keeps ``max(1, int(N * (1 - prob)))`` of the ``N`` patches, as timm
            does. Evaluation (False) sees every patch.
        img_size: Input side in pixels; None: the model's.

    Returns:
        A list over blocks of ``(n_attention, n_mlp)`` token counts, prefix tokens included.
    """
    P = model.num_prefix_tokens
    n_patch = num_patches(model, img_size)
    patch_drop = getattr(model, "patch_drop", None)
    prob = float(getattr(patch_drop, "prob", 0.0) or 0.0)
    if training and prob > 0:
        n_patch = max(1, int(n_patch * (1.0 - prob)))
    layers = set(settings.prune_layers) if settings is not None else set()
    fate = get_token_fate(settings.token_fate) if settings is not None else None
    rejoin = settings.rejoin_layer if settings is not None else None
    all_patches = n_patch
    counts = []
    for i in range(len(model.blocks)):
        if i == rejoin:  # bypassed tokens come back
            n_patch = all_patches
        n_in = P + n_patch
        if i in layers and keep_ratio < 1.0:
            k = num_kept_tokens(n_patch, keep_ratio)
            n_patch = k + fate.extra_tokens(n_patch, k)  # e.g. EViT's fused token
        counts.append((n_in, P + n_patch))
    return counts


def vit_forward_flops(model: nn.Module, settings: Optional[Any], keep_ratio: float, attn_keep_ratio: float,
                      training: bool = False, img_size: Optional[int] = None) -> float:
    """FLOPs of one forward pass of one image of a ViT-like model (see the module docstring).

    Args:
        model: A timm ``VisionTransformer`` or ``Eva`` (unwrapped), patched or not.
        settings: Resolved patch settings, or None for the stock model.
        keep_ratio: Token keep ratio to assume.
        attn_keep_ratio: Attention keep ratio to assume (it decides the pruning blocks' scoring cost).
        training: Count a training forward (timm's PatchDropout active).
        img_size: Input side in pixels; None: the model's.

    Returns:
        FLOPs (multiply-add = 2).
    """
    flops = conv_flops(getattr(model.patch_embed, "proj", None), num_patches(model, img_size))
    layers = set(settings.prune_layers) if settings is not None else set()
    scored = settings is not None and get_token_score(settings.token_score).uses_cls_attention
    counts = vit_tokens_per_block(model, settings, keep_ratio, training, img_size)
    for i, (blk, (n_in, n_mlp)) in enumerate(zip(model.blocks, counts)):
        attn = blk.attn
        attn_dim = attn.num_heads * attn.head_dim
        flops += 2.0 * n_in * linear_macs(attn)
        flops += 2.0 * 2.0 * n_in * n_in * attn_dim  # Q K^T and A V
        flops += 2.0 * n_mlp * linear_macs(blk.mlp)
        if i in layers and attn_keep_ratio < 1.0:
            # forward-only Q K^T for the probabilities of the attention level's mask (and the scores)
            flops += 2.0 * n_in * n_in * attn_dim
        elif i in layers and scored and keep_ratio < 1.0:
            flops += 2.0 * n_in * attn_dim  # forward-only [CLS] row of Q K^T for the scores
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            flops += 2.0 * head.in_features * head.out_features
    return flops

