"""Token level: keep the top-k patch tokens by the [CLS] attention they receive.

Pure tensor functions; the stateful part (which blocks prune, at what keep ratio) lives in
:mod:`trilevel.models.vit`. Source: Kong et al., "Peeling the Onion", AAAI 2023, Sec. "Token-level
data reduction", which scores tokens like EViT (Liang et al., ICLR 2022) but
drops the inattentive tokens instead of fusing them; the optional fusion follows EViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .options import check_ratio

__all__ = ["num_kept_tokens", "cls_attention_scores", "select_topk_tokens", "ScoreInputs", "TokenScore",
           "TokenFate", "TOKEN_SCORES", "TOKEN_FATES", "register_token_score", "register_token_fate",
           "get_token_score", "get_token_fate"]


def num_kept_tokens(num_tokens: int, keep_ratio: float) -> int:
    """Number of patch tokens kept: ``ceil(keep_ratio * num_tokens)``.

    The product is taken in Python floating point, exactly as the authors' code does, so the
    kept counts, and so the logits, are identical to theirs.

    Args:
        num_tokens: Patch tokens entering the pruning block (prefix tokens excluded), >= 0.
        keep_ratio: Kept fraction, in (0, 1].

    Returns:
        The kept count, between 1 and ``num_tokens`` (0 when ``num_tokens`` is 0).

    Raises:
        ValueError: If ``keep_ratio`` is outside (0, 1] or ``num_tokens`` is negative.
    """
    check_ratio("keep_ratio", keep_ratio)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens!r}")
    return min(num_tokens, math.ceil(keep_ratio * num_tokens))


def cls_attention_scores(attn_probs: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """[CLS] attention of each patch token, averaged over heads.

    Args:
        attn_probs: Attention probabilities ``(B, H, N, N)`` (rows are queries, after softmax
            and after any connection mask), or ``(B, H, 1, N)`` holding only the [CLS] row.
        num_prefix_tokens: Prefix tokens at the start of the sequence ([CLS] first, then e.g.
            a distillation token or registers); they are not scored.

    Returns:
        Scores ``(B, N - num_prefix_tokens)``: the probability from the [CLS] query to each
        patch token's key, head-mean.
    """
    return attn_probs[:, :, 0, num_prefix_tokens:].mean(dim=1)


def select_topk_tokens(
    x: torch.Tensor,
    scores: torch.Tensor,
    keep_ratio: float,
    num_prefix_tokens: int = 1,
    fuse: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep the prefix tokens and the ``ceil(keep_ratio * N_p)`` highest-scoring patch tokens.

    Kept patch tokens stay in their original order (indices sorted ascending), so the output
    is a sub-sequence of the input. Selection carries no gradient; gradients flow to the kept
    tokens' values.

    Args:
        x: Tokens ``(B, N, C)``: ``num_prefix_tokens`` prefix tokens, then ``N_p`` patch tokens.
        scores: Patch-token scores ``(B, N_p)``, higher is kept first (the [CLS] attention).
        keep_ratio: Kept fraction of the patch tokens, in (0, 1].
        num_prefix_tokens: Prefix tokens, always kept.
        fuse: EViT-style option (off in the paper): append one token, the
            score-weighted mean of the dropped patch tokens. Only when some token is dropped.

    Returns:
        ``(x_kept, kept_idx)``: ``x_kept`` is ``(B, num_prefix_tokens + k [+ 1], C)`` and
        ``kept_idx`` is ``(B, k)``, the kept patch tokens' indices among the ``N_p`` patch
        tokens (0-based, ascending).

    Raises:
        ValueError: If ``keep_ratio`` is outside (0, 1] or the shapes disagree.
    """
    B, N, C = x.shape
    n_patch = N - num_prefix_tokens
    if scores.shape != (B, n_patch):
        raise ValueError(
            f"scores must have shape (B, N - num_prefix_tokens) = {(B, n_patch)}, "
            f"got {tuple(scores.shape)}"
        )
    k = num_kept_tokens(n_patch, keep_ratio)
    scores = scores.detach()
    kept_idx = scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    patches = x[:, num_prefix_tokens:]
    kept = patches.gather(1, kept_idx.unsqueeze(-1).expand(B, k, C))
    parts = [x[:, :num_prefix_tokens], kept]
    if fuse and k < n_patch:
        dropped_w = scores.scatter(1, kept_idx, 0.0)  # (B, N_p): 0 at kept tokens
        dropped_w = dropped_w / dropped_w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dropped_w.dtype).tiny)
        fused = torch.einsum("bn,bnc->bc", dropped_w.to(patches.dtype), patches).unsqueeze(1)
        parts.append(fused)
    return torch.cat(parts, dim=1), kept_idx


# --------------------------------------------------------------------------------------------------
# registries: how tokens are scored, and what happens to the pruned ones
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreInputs:
    """What a pruning block offers a token score.

    Attributes:
        tokens: Tokens after the block's attention residual ``(B, N, C)``, prefix tokens first.
        cls_attention: Head-mean [CLS] attention of the patch tokens ``(B, N - P)`` (a forward-only
            side product of the block's attention), or None when the score does not use it.
        num_prefix_tokens: ``P``.
    """

    tokens: torch.Tensor
    cls_attention: Optional[torch.Tensor]
    num_prefix_tokens: int


@dataclass(frozen=True)
class TokenScore:
    """A way to rank patch tokens in a pruning block (higher is kept first).

    Attributes:
        name: The name ``token_score=`` / ``--token-score`` takes.
        uses_cls_attention: Whether it reads the [CLS] row of the block's attention probabilities
            (then the block computes it, and the FLOP model counts its cost).
        score: ``ScoreInputs -> (B, N - P)`` scores.
        source: Where the idea comes from (shown in docs and errors).
    """

    name: str
    uses_cls_attention: bool
    score: Callable[[ScoreInputs], torch.Tensor]
    source: str = ""


@dataclass(frozen=True)
class TokenFate:
    """What happens to the tokens a pruning block does not keep.

    Attributes:
        name: The name ``token_fate=`` / ``--token-fate`` takes.
        fuses: The dropped tokens become one extra token, their score-weighted mean (EViT).
        rejoins: The dropped tokens skip the following blocks and come back, in their places, at the
            rejoin block (random-LTD); the FLOP model counts every token again from there.
        source: Where the idea comes from.
    """

    name: str
    fuses: bool = False
    rejoins: bool = False
    source: str = ""


TOKEN_SCORES: Dict[str, TokenScore] = {}
"""Registered token scores by name (:func:`register_token_score`)."""
TOKEN_FATES: Dict[str, TokenFate] = {}
"""Registered token fates by name (:func:`register_token_fate`)."""


def register_token_score(score: TokenScore) -> TokenScore:
    """Register ``score`` under ``score.name`` (replacing one of the same name); returns it."""
    if not isinstance(score, TokenScore) or not score.name:
        raise ValueError(f"register_token_score takes a TokenScore with a name, got {score!r}")
    TOKEN_SCORES[score.name] = score
    return score


def register_token_fate(fate: TokenFate) -> TokenFate:
    """Register ``fate`` under ``fate.name`` (replacing one of the same name); returns it."""
    if not isinstance(fate, TokenFate) or not fate.name:
        raise ValueError(f"register_token_fate takes a TokenFate with a name, got {fate!r}")
    TOKEN_FATES[fate.name] = fate
    return fate


def get_token_score(name: str) -> TokenScore:
    """The registered token score ``name``.

    Raises:
        ValueError: Naming the value and the registered scores.
    """
    if name not in TOKEN_SCORES:
        raise ValueError(f"token_score must be one of {', '.join(TOKEN_SCORES)}; got {name!r}")
    return TOKEN_SCORES[name]


def get_token_fate(name: str) -> TokenFate:
    """The registered token fate ``name``.

    Raises:
        ValueError: Naming the value and the registered fates.
    """
    if name not in TOKEN_FATES:
        raise ValueError(f"token_fate must be one of {', '.join(TOKEN_FATES)}; got {name!r}")
    return TOKEN_FATES[name]


def _cls_attention(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.cls_attention


def _random(inputs: ScoreInputs) -> torch.Tensor:
    x, P = inputs.tokens, inputs.num_prefix_tokens
    return torch.rand(x.shape[0], x.shape[1] - P, device=x.device)


register_token_score(TokenScore("cls-attention", True, _cls_attention,
                                "Kong et al., AAAI 2023 (as EViT, Liang et al., ICLR 2022): head-mean [CLS] attention"))
register_token_score(TokenScore("random", False, _random,
                                "random-LTD (Yao et al., 2022); PatchDropout (Liu et al., WACV 2023)"))
register_token_fate(TokenFate("drop", source="Kong et al., AAAI 2023: pruned tokens are gone for the rest of the forward"))
register_token_fate(TokenFate("fuse", fuses=True, source="EViT (Liang et al., ICLR 2022): one extra fused token"))
register_token_fate(TokenFate("bypass", rejoins=True,
                              source="random-LTD (Yao et al., 2022); Token Dropping (Hou et al., ACL 2022)"))
