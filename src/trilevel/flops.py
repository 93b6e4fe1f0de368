"""Analytic FLOP counts of (patched) timm Vision Transformers.

A multiply-add counts as 2 FLOPs, the convention of ``torch.utils.flop_counter.FlopCounterMode``
(the tests check these counts against it). Counted: the patch embedding, every ``nn.Linear`` of
every block (qkv, projection, gate, MLP) at the number of tokens it sees, the two attention
matrix products (``Q K^T`` and ``A V``, dense even when a connection mask is active: a masked
dense kernel does the same arithmetic), the forward-only [CLS] row of ``Q K^T`` that scores the
tokens when only the token level is on (with the attention level on, the block's own attention
probabilities serve the scores and the new mask), and the classifier head. With the ``bypass``
token fate, the blocks from the rejoin block on see every token again. Not counted: norms,
softmax, GELU, token selection, mask construction, gathers and scatters (well under 1% here).

timm ``Eva`` models (EVA-02, patched by :func:`trilevel.patch_eva`) are counted by the same code
(rotary embeddings are elementwise, not counted); ``SwinTransformer`` models go to
:func:`trilevel.models.swin.swin_forward_flops`.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch.nn as nn

from .models.swin import is_swin, swin_forward_flops
from .token_pruning import num_kept_tokens
from .vit import unwrap_model, get_keep_ratios, is_patched

__all__ = ["tokens_per_block", "forward_flops"]


def tokens_per_block(
    model: nn.Module, keep_ratio: Optional[float] = None, training: bool = False
) -> List[Tuple[int, int]]:
    """Tokens seen by the attention and by the MLP of each block, for one image.

    Args:
        model: A timm ``VisionTransformer``, patched or not.
        keep_ratio: Token keep ratio to assume; None uses the model's current ratio (1.0 for a
            stock model).
        training: Count a training forward: timm's ``PatchDropout`` (``patch_drop_rate``,
            Liu et al. 2022) then keeps ``max(1, int(N * (1 - prob)))`` of the ``N`` patches, as
            timm does. Evaluation (False) sees every patch.

    Returns:
        A list over blocks of ``(n_attention, n_mlp)`` token counts, prefix tokens included.

    Raises:
        TypeError: For a Swin model (its blocks see windows; see
            :func:`trilevel.models.swin.swin_forward_flops`).
    """
    base = unwrap_model(model)
    if is_swin(base):
        raise TypeError("tokens_per_block counts ViT/Eva tokens; a SwinTransformer keeps its grid "
                        "(see trilevel.get_swin_info for the windows each block ran)")
    if keep_ratio is None:
        keep_ratio = get_keep_ratios(base)[0]
    P = base.num_prefix_tokens
    n_patch = base.patch_embed.num_patches
    patch_drop = getattr(base, "patch_drop", None)
    prob = float(getattr(patch_drop, "prob", 0.0) or 0.0)
    if training and prob > 0:
        n_patch = max(1, int(n_patch * (1.0 - prob)))
    patched = is_patched(base)
    rejoin = getattr(base, "trilevel_rejoin_layer", None) if patched else None
    all_patches = n_patch
    counts = []
    for i, blk in enumerate(base.blocks):
        if i == rejoin:  # bypassed tokens come back
            n_patch = all_patches
        n_in = P + n_patch
        if patched and blk.trilevel_prune and keep_ratio < 1.0:
            k = num_kept_tokens(n_patch, keep_ratio)
            fused = 1 if (blk.token_fate == "fuse" and k < n_patch) else 0
            n_patch = k + fused
        counts.append((n_in, P + n_patch))
    return counts


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def forward_flops(
    model: nn.Module,
    keep_ratio: Optional[float] = None,
    training: bool = False,
    attn_keep_ratio: Optional[float] = None,
) -> float:
    """FLOPs of one forward pass of one image.

    Args:
        model: A timm ``VisionTransformer``, patched or not (DDP-wrapped is fine).
        keep_ratio: Token keep ratio to assume; None uses the model's current ratio.
        training: Count a training forward (timm's ``PatchDropout`` active; see
            :func:`tokens_per_block`).
        attn_keep_ratio: Attention keep ratio to assume (it decides the pruning blocks' scoring
            cost); None uses the model's current ratio.

    Returns:
        FLOPs (multiply-add = 2). Training (forward + backward) costs about 3x this; ratios
        between two settings are the same either way.
    """
    base = unwrap_model(model)
    if is_swin(base):  # keep_ratio: a float or one per stage; Swin has no attention level
        return swin_forward_flops(base, keep_ratio)
    keep, attn_keep = get_keep_ratios(base)
    if keep_ratio is not None:
        keep = keep_ratio
    if attn_keep_ratio is not None:
        attn_keep = attn_keep_ratio
    pe = base.patch_embed
    n_patch = pe.num_patches
    flops = 0.0
    proj = getattr(pe, "proj", None)
    if isinstance(proj, nn.Conv2d):
        k = proj.in_channels // proj.groups * proj.kernel_size[0] * proj.kernel_size[1]
        flops += 2.0 * n_patch * proj.out_channels * k
    for blk, (n_in, n_mlp) in zip(base.blocks, tokens_per_block(base, keep_ratio, training)):
        attn = blk.attn
        attn_dim = attn.num_heads * attn.head_dim
        flops += 2.0 * n_in * _linear_macs(attn)
        flops += 2.0 * 2.0 * n_in * n_in * attn_dim  # Q K^T and A V
        flops += 2.0 * n_mlp * _linear_macs(blk.mlp)
        if getattr(blk, "trilevel_prune", False) and attn_keep == 1.0 and keep < 1.0 \
                and blk.token_score == "cls-attention":
            # forward-only [CLS] row of Q K^T for the scores (with the attention level, the
            # probabilities of the block's own attention pass serve the scores and the mask)
            flops += 2.0 * n_in * attn_dim
    head = getattr(base, "head", None)
    if isinstance(head, nn.Linear):
        flops += 2.0 * head.in_features * head.out_features
    head_dist = getattr(base, "head_dist", None)
    if isinstance(head_dist, nn.Linear):
        flops += 2.0 * head_dist.in_features * head_dist.out_features
    return flops
