"""Token level: keep the top-k patch tokens by the [CLS] attention they receive.

Pure tensor functions, and the registries of token scores (how patch tokens are ranked) and token
fates (strategies: what happens to the tokens a pruning block does not keep); the stateful part
(which blocks prune, at what keep ratio) lives in :mod:`trilevel.models.vit`. Source: Kong et al.,
"Peeling the Onion", AAAI 2023, Sec. "Token-level data reduction", which scores tokens like EViT
(Liang et al., ICLR 2022) but drops the inattentive tokens instead of fusing them; the optional
fusion follows EViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .options import check_ratio

__all__ = ["num_kept_tokens", "cls_attention_scores", "select_topk_tokens", "ScoreInputs", "TokenScore",
           "TokenFate", "FuseFate", "BypassFate", "set_aside_tokens", "rejoin_tokens", "TOKEN_SCORES", "TOKEN_FATES",
           "register_token_score", "register_token_fate", "get_token_score", "get_token_fate"]


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
    """What happens to the patch tokens a pruning block does not keep: a strategy, one per fate.

    The block loop of a token-pruning family (:mod:`trilevel.models.vit`, which EVA-02 shares) calls
    only these methods, so registering a subclass with :func:`register_token_fate` adds a fate with no
    edit to the models. This base class is the paper's fate, ``drop`` (Kong et al., AAAI 2023, Sec.
    "Token-level data reduction"): the pruned tokens are gone for the rest of the forward. A subclass
    overrides what differs:

    * :meth:`select` -- the tokens that leave the pruning block (the kept ones, and any tokens the
      fate appends after them, such as EViT's fused token);
    * :meth:`extra_tokens` -- how many it appends (what the FLOP model counts);
    * :meth:`set_aside` and :meth:`rejoin` -- for a fate that ``rejoins``: what it keeps of the pruned
      tokens, and how they come back at the rejoin block (random-LTD's bypass).

    All of them run on whole batches (no host-device sync, no Python loop over tokens or examples).

    Attributes:
        name: The name ``token_fate=`` / ``--token-fate`` takes.
        source: Where the idea comes from (shown in docs).
        rejoins: Whether the pruned tokens come back at a rejoin block (``rejoin_layer``; the family
            resolves it, and the FLOP model counts every token again from there).
    """

    name: str
    source: str = ""
    rejoins: bool = False

    def select(self, x: torch.Tensor, scores: torch.Tensor, keep_ratio: float,
               num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The tokens leaving the pruning block, and which patch tokens were kept.

        Args:
            x: Tokens after the block's attention residual ``(B, N, C)``, ``P = num_prefix_tokens``
                prefix tokens first.
            scores: Patch-token scores ``(B, N - P)`` (the registered token score's), higher kept first.
            keep_ratio: Kept fraction of the patch tokens, in (0, 1).
            num_prefix_tokens: ``P``.

        Returns:
            ``(tokens, kept_idx)``: ``tokens`` is ``(B, P + k + e, C)``, the prefix tokens, the ``k``
            kept patch tokens in their order, then ``e = extra_tokens(N - P, k)`` tokens of the fate's
            own (they get no patch position: -1 in ``TriLevelInfo.kept_positions``, the identity
            rotation in EVA-02, every connection in the attention level's mask); ``kept_idx`` is
            ``(B, k)``, the kept tokens' indices among the ``N - P`` patch tokens, ascending.
        """
        return select_topk_tokens(x, scores, keep_ratio, num_prefix_tokens)

    def extra_tokens(self, num_patches: int, num_kept: int) -> int:
        """Tokens :meth:`select` appends after the ``num_kept`` kept of ``num_patches`` patch tokens (0 here)."""
        return 0

    def set_aside(self, x: torch.Tensor, kept_idx: torch.Tensor, positions: torch.Tensor, num_prefix_tokens: int,
                  stash: Any) -> Any:
        """What a rejoining fate keeps of the pruned tokens, added to ``stash`` (returned unchanged here).

        Args:
            x: Tokens after the block's attention residual ``(B, N, C)``, prefix tokens first.
            kept_idx: ``(B, k)`` kept patch-token indices, as :meth:`select` returned them.
            positions: ``(B, N - P)`` index of each patch token of ``x`` in the sequence that entered the
                first block.
            num_prefix_tokens: ``P``.
            stash: What earlier pruning blocks set aside (None before the first).

        Returns:
            The new stash (any structure of tensors; it is carried from block to block, through
            activation checkpointing too).
        """
        return stash

    def rejoin(self, x: torch.Tensor, stash: Any, positions: torch.Tensor, num_prefix_tokens: int,
               num_patches: int) -> torch.Tensor:
        """At the rejoin block: the full sequence ``(B, P + num_patches, C)`` in its original order.

        Called only for a fate that ``rejoins``, with the stash :meth:`set_aside` built. Args as
        :func:`rejoin_tokens`.
        """
        raise NotImplementedError(f"token fate {self.name!r} rejoins but does not implement rejoin")


@dataclass(frozen=True)
class FuseFate(TokenFate):
    """EViT's fate: the pruned tokens become one extra token, their score-weighted mean.

    Source: Liang et al., "Not All Patches are What You Need" (EViT), ICLR 2022 (inattentive token fusion).
    """

    def select(self, x, scores, keep_ratio, num_prefix_tokens):
        return select_topk_tokens(x, scores, keep_ratio, num_prefix_tokens, fuse=True)

    def extra_tokens(self, num_patches: int, num_kept: int) -> int:
        return 1 if num_kept < num_patches else 0


@dataclass(frozen=True)
class BypassFate(TokenFate):
    """random-LTD's fate: the pruned tokens skip the blocks up to the rejoin block and come back there.

    They keep the value they had after the pruning block's attention residual. Source: Yao et al.,
    "Random-LTD", 2022 (arXiv 2211.11586); Hou et al., "Token Dropping", ACL 2022.
    """

    rejoins: bool = True

    def set_aside(self, x, kept_idx, positions, num_prefix_tokens, stash):
        return (stash or ()) + (set_aside_tokens(x, kept_idx, positions, num_prefix_tokens),)

    def rejoin(self, x, stash, positions, num_prefix_tokens, num_patches):
        return rejoin_tokens(x, stash, positions, num_prefix_tokens, num_patches)


def set_aside_tokens(x: torch.Tensor, kept_idx: torch.Tensor, positions: torch.Tensor,
                     num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(positions (B, d), values (B, d, C))`` of the patch tokens of ``x`` ``(B, N, C)`` that ``kept_idx``
    ``(B, k)`` does not keep, ``d = N - P - k`` (fixed shapes, no host-device sync)."""
    P = num_prefix_tokens
    B, N, C = x.shape
    kept = torch.zeros(B, N - P, dtype=torch.bool, device=x.device).scatter_(1, kept_idx, True)
    # the dropped indices first: a stable sort of the kept flags (False < True); no data-dependent shape
    dropped = torch.argsort(kept.to(torch.uint8), dim=1, stable=True)[:, : N - P - kept_idx.shape[1]]
    values = x[:, P:].gather(1, dropped.unsqueeze(-1).expand(-1, -1, C))
    return positions.gather(1, dropped), values


def rejoin_tokens(x: torch.Tensor, stash, positions: torch.Tensor, num_prefix_tokens: int,
                  num_patches: int) -> torch.Tensor:
    """Put bypassed tokens back: the full sequence rebuilt once, every token in its original place.

    Args:
        x: Current tokens ``(B, P + n, C)``.
        stash: ``(positions (B, d), values (B, d, C))`` pairs of the tokens set aside.
        positions: Index of each current patch token in the full sequence ``(B, n)``.
        num_prefix_tokens: ``P``.
        num_patches: ``N0``, patch tokens of the sequence that entered the first block.

    Returns:
        ``(B, P + N0, C)``: the full sequence in its original order, prefix tokens from ``x``.
    """
    P = num_prefix_tokens
    B, _, C = x.shape
    pos = torch.cat([positions, *(p for p, _ in stash)], dim=1)
    val = torch.cat([x[:, P:], *(v for _, v in stash)], dim=1)
    full = val.new_empty(B, num_patches, C).scatter(1, pos.unsqueeze(-1).expand(-1, -1, C), val)
    return torch.cat([x[:, :P], full], dim=1)


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
    """Register ``fate`` under ``fate.name`` (replacing one of the same name); returns it.

    Raises:
        ValueError: If ``fate`` is not a :class:`TokenFate` with a name, or it ``rejoins`` without
            overriding :meth:`TokenFate.set_aside` and :meth:`TokenFate.rejoin`.
    """
    if not isinstance(fate, TokenFate) or not fate.name:
        raise ValueError(f"register_token_fate takes a TokenFate with a name, got {fate!r}")
    if fate.rejoins and (type(fate).rejoin is TokenFate.rejoin or type(fate).set_aside is TokenFate.set_aside):
        raise ValueError(f"token fate {fate.name!r} rejoins, so it must implement set_aside and rejoin")
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
register_token_fate(FuseFate("fuse", source="EViT (Liang et al., ICLR 2022): one extra fused token"))
register_token_fate(BypassFate("bypass", source="random-LTD (Yao et al., 2022); Token Dropping (Hou et al., ACL 2022)"))
