"""Attention level: per-query top-k connection masks between the kept tokens.

Pure tensor functions; :mod:`trilevel.models.vit` calls them in each pruning block and carries the mask
to the following blocks. Source: Kong et al., "Peeling the Onion", AAAI 2023, Sec.
"Attention-level data reduction".
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .options import check_ratio

__all__ = ["topk_connection_mask", "connection_mask", "masked_attention"]


def topk_connection_mask(patch_probs: torch.Tensor, attn_keep_ratio: float) -> torch.Tensor:
    """Keep, per query row, every connection at least as strong as the row's k-th largest.

    ``k = ceil(n * attn_keep_ratio)`` (Python floating point, as the authors compute it). Ties
    at the threshold are all kept, so a row may keep more than ``k`` entries; in particular a row
    with fewer than ``k`` non-zero entries has threshold 0 and keeps everything.

    Args:
        patch_probs: Head-mean attention probabilities between the kept patch tokens
            ``(B, n, n)``; rows are queries.
        attn_keep_ratio: Kept fraction of connections per row, in (0, 1].

    Returns:
        Boolean mask ``(B, n, n)``, True where the connection is kept.

    Raises:
        ValueError: If ``attn_keep_ratio`` is outside (0, 1] or ``patch_probs`` is not 3-D.
    """
    check_ratio("attn_keep_ratio", attn_keep_ratio)
    if patch_probs.dim() != 3:
        raise ValueError(f"patch_probs must be (B, n, n), got shape {tuple(patch_probs.shape)}")
    n = patch_probs.shape[-1]
    k = max(1, min(n, math.ceil(n * attn_keep_ratio)))
    threshold = patch_probs.kthvalue(n - k + 1, dim=-1, keepdim=True).values  # the row's k-th largest
    return patch_probs >= threshold


def connection_mask(
    attn_probs_mean: torch.Tensor,
    kept_idx: Optional[torch.Tensor],
    attn_keep_ratio: float,
    num_prefix_tokens: int = 1,
    num_extra_tokens: int = 0,
) -> torch.Tensor:
    """Connection mask for the token sequence that leaves a pruning block.

    Restricts this block's head-mean attention probabilities to the kept patch tokens, applies
    :func:`topk_connection_mask`, and keeps every row and column of the prefix tokens ([CLS]
    first) and of any extra tokens appended after the kept patches (the fused token).

    Args:
        attn_probs_mean: Head-mean attention probabilities of the block ``(B, N, N)`` over the
            tokens that entered it (prefix tokens first).
        kept_idx: Kept patch-token indices ``(B, k)`` among the ``N - num_prefix_tokens``
            patch tokens, or None when no token was pruned.
        attn_keep_ratio: Kept fraction of connections per query row, in (0, 1].
        num_prefix_tokens: Prefix tokens, whose rows and columns are always kept.
        num_extra_tokens: Tokens appended after the kept patches (0 or 1), always kept.

    Returns:
        Boolean mask ``(B, M, M)`` with ``M = num_prefix_tokens + k + num_extra_tokens``,
        True where query row may attend to key column.
    """
    B, N, _ = attn_probs_mean.shape
    P = num_prefix_tokens
    patch = attn_probs_mean[:, P:, P:]
    if kept_idx is not None:
        k = kept_idx.shape[1]
        patch = patch.gather(1, kept_idx.unsqueeze(-1).expand(B, k, N - P))
        patch = patch.gather(2, kept_idx.unsqueeze(1).expand(B, k, k))
    n = patch.shape[-1]
    M = P + n + num_extra_tokens
    mask = torch.ones(B, M, M, dtype=torch.bool, device=attn_probs_mean.device)
    mask[:, P:P + n, P:P + n] = topk_connection_mask(patch, attn_keep_ratio)
    return mask


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    scale: float,
    dropout_p: float = 0.0,
    fused: bool = True,
) -> torch.Tensor:
    """Multi-head attention with an optional boolean connection mask (cut = probability 0).

    Args:
        q, k, v: ``(B, H, N, D)``.
        mask: Boolean ``(B, N, N)`` (True = connection kept) or None for dense attention.
            Every row must keep at least one connection (the [CLS] column always is).
        scale: Logit scale, ``D ** -0.5`` for standard attention.
        dropout_p: Attention dropout probability (training only; pass 0 in eval).
        fused: Use ``F.scaled_dot_product_attention``; False runs the reference unfused path.

    Returns:
        Attention output ``(B, H, N, D)``.
    """
    attn_mask = mask.unsqueeze(1) if mask is not None else None
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    logits = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    probs = logits.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v
