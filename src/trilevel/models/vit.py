"""In-place patch of timm Vision Transformers with the token and attention levels.

``patch_vit`` swaps the class of a timm ``VisionTransformer`` and of its blocks for subclasses
that add the tri-level forward; no module or parameter is added or replaced, so ``state_dict``
keys are unchanged and checkpoints move freely between patched and stock models. Each block
reuses its own submodules (``norm1``, ``attn`` with its ``qkv``, ``q_norm``, ``k_norm``,
``attn_drop``, ``proj``; ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``, ``drop_path2``),
so LayerScale (DeiT-III) and QK-norm models work unchanged. Keep ratios are block attributes,
set by :func:`set_keep_ratios`; nothing per-call is passed through ``forward``.

Per pruning block (Kong et al., AAAI 2023, Sec. "Token-level" and
"Attention-level data reduction"):

1. attention with the connection mask carried from the previous pruning block (if any);
2. the attention residual;
3. token level: keep the prefix tokens and the ``ceil(keep_ratio * N_p)`` patch tokens with the
   highest head-mean [CLS] attention (this block's masked probabilities);
4. attention level: from the head-mean probabilities between the kept patch tokens, keep per
   query row the connections >= the row's ``ceil(n * attn_keep_ratio)``-th largest, always
   keeping prefix rows and columns; this mask applies to the following blocks until the next
   pruning block recomputes it;
5. the MLP on the kept tokens only.

Blocks that need no probabilities run timm's fused attention (``F.scaled_dot_product_attention``,
with the boolean mask when one is active), following timm's ``fused_attn`` switch per attention
module (``TIMM_FUSED_ATTN=0`` selects the unfused reference path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention_sparsity import connection_mask, masked_attention
from .token_pruning import cls_attention_scores, select_topk_tokens

__all__ = [
    "TOKEN_FATES",
    "TOKEN_SCORES",
    "TriLevelInfo",
    "rejoin_tokens",
    "patch_vit",
    "unpatch_vit",
    "set_keep_ratios",
    "get_keep_ratios",
    "get_trilevel_info",
    "is_patched",
    "default_prune_layers",
    "resolve_bypass",
    "unwrap_model",
]


TOKEN_FATES = ("drop", "fuse", "bypass")
"""What happens to pruned tokens: dropped (the paper), fused into one (EViT), or bypassed and rejoined."""
TOKEN_SCORES = ("cls-attention", "random")
"""How the kept tokens are chosen: by the [CLS] attention they receive (the paper), or at random."""


@dataclass
class TriLevelInfo:
    """What the last forward pass of a patched model did.

    Attributes:
        tokens_per_block: Tokens entering each block, prefix tokens included (the MLP of a
            pruning block sees the count of the next entry).
        kept_positions: Per pruning stage, ``(B, k_s)`` LongTensor of the kept tokens' original
            patch indices (row-major in the patch grid; -1 marks a fused token). Empty when the
            input was shuffled by PatchDropout.
        connection_density: Per pruning stage, a 0-d float tensor: the fraction of kept
            patch-to-patch connections in the new mask (1.0 when attention sparsity is off).
            A tensor, so reading it is the caller's choice of host-device sync.
        cls_scores: Per pruning stage, ``(B, N_in - P)`` head-mean [CLS] attention of the
            tokens entering the block (the selection scores), or None when the block needed
            none (both ratios 1.0).
        connection_masks: Per pruning stage, the boolean connection mask ``(B, M, M)`` over the
            tokens leaving the block (prefix tokens first), or None when attention sparsity is off.
    """

    tokens_per_block: List[int] = field(default_factory=list)
    kept_positions: List[torch.Tensor] = field(default_factory=list)
    connection_density: List[torch.Tensor] = field(default_factory=list)
    cls_scores: List[Optional[torch.Tensor]] = field(default_factory=list)
    connection_masks: List[Optional[torch.Tensor]] = field(default_factory=list)


def _vit_classes():
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    return VisionTransformer, Block, Attention


def default_prune_layers(depth: int) -> Tuple[int, ...]:
    """``(depth // 4, depth // 2, 3 * depth // 4)``: blocks 3, 6, 9 of a 12-block ViT (paper).

    Duplicates (for depth < 4) are dropped.
    """
    return tuple(sorted({depth // 4, depth // 2, (3 * depth) // 4}))


def resolve_bypass(layers: Tuple[int, ...], rejoin_layer: Optional[int], depth: int,
                   layers_given: bool) -> Tuple[Tuple[int, ...], int]:
    """Pruning blocks and rejoin block of the bypass fate (random-LTD: tokens skip, then rejoin).

    Args:
        layers: Resolved pruning blocks (sorted).
        rejoin_layer: Block where bypassed tokens come back; None: the last block.
        depth: Number of blocks.
        layers_given: Whether ``layers`` were given by the user; default ones at or after the
            rejoin block are left out (e.g. blocks 1, 2, 3 of a 4-block model prune in 1 and 2).

    Returns:
        ``(layers, rejoin)``.

    Raises:
        ValueError: A rejoin block that is not after every pruning block, or past the last block.
    """
    rejoin = depth - 1 if rejoin_layer is None else rejoin_layer
    is_index = isinstance(rejoin, int) and not isinstance(rejoin, bool)
    if is_index and not layers_given:
        layers = tuple(i for i in layers if i < rejoin) or layers
    if not (is_index and max(layers) < rejoin < depth):
        raise ValueError(
            f"rejoin_layer must be a block after the last pruning block {max(layers)} and at most "
            f"{depth - 1}, got {rejoin!r}"
        )
    return layers, rejoin


def _check_ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers.

    Args:
        model: A model, wrapped or not.

    Returns:
        The innermost wrapped module (``model`` itself when it is not wrapped).
    """
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class TriLevelBlockMixin:
    """Tri-level forward for a timm ``Block``; mixed into a subclass of the block's class.

    Attributes set by :func:`patch_vit` / :func:`set_keep_ratios`:
        trilevel_prune (bool): whether this block prunes tokens and recomputes the mask.
        keep_ratio (float): kept fraction of patch tokens in this block (pruning blocks).
        attn_keep_ratio (float): kept fraction of connections per query (pruning blocks).
        token_fate (str): what happens to pruned tokens: ``drop``, ``fuse`` or ``bypass``.
        token_score (str): how tokens are chosen: ``cls-attention`` or ``random``.
        num_prefix_tokens (int): prefix tokens of the model ([CLS], dist, registers).
    """

    def qkv_heads(self, x: torch.Tensor):
        """Hook: ``(q, k, v)``, each ``(B, H, N, D)``, of the normalised tokens ``x`` ``(B, N, C)``.

        Other model families (EVA-02) override it, e.g. to rotate q and k.
        """
        attn = self.attn
        B, N, _ = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def _attn_out(self, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Merge heads ``(B, H, N, D) -> (B, N, H*D)``, then timm's norm, gate and projection."""
        attn = self.attn
        B, H, N, D = o.shape
        o = o.transpose(1, 2).reshape(B, N, H * D)
        o = attn.norm(o) if hasattr(attn, "norm") else o
        gate = getattr(attn, "gate", None)
        if gate is not None:
            o = o * gate(h).sigmoid()
        return attn.proj_drop(attn.proj(o))

    def _dropout_p(self) -> float:
        return self.attn.attn_drop.p if self.training else 0.0

    def attention_output(self, h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Hook: the attention branch ``(B, N, C)`` for tokens ``h`` under connection ``mask`` (or None)."""
        if mask is None:
            return self.attn(h)
        q, k, v = self.qkv_heads(h)
        o = masked_attention(q, k, v, mask, self.attn.scale, self._dropout_p(), fused=self.attn.fused_attn)
        return self._attn_out(h, o)

    def _attention_with_probs(self, h: torch.Tensor, mask: Optional[torch.Tensor]):
        """Attention whose probabilities are also returned: one unfused pass serves the output,
        the [CLS] scores and the new connection mask (no second, forward-only pass)."""
        q, k, v = self.qkv_heads(h)
        logits = (q * self.attn.scale) @ k.transpose(-2, -1)
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        probs = logits.softmax(dim=-1)
        p = self._dropout_p()
        o = (F.dropout(probs, p=p) if p > 0 else probs) @ v
        return self._attn_out(h, o), probs.detach()

    def _cls_scores(self, h: torch.Tensor, mask: Optional[torch.Tensor]):
        """Attention output and the head-mean [CLS] row of its probabilities (a forward-only side product)."""
        q, k, v = self.qkv_heads(h)
        o = masked_attention(q, k, v, mask, self.attn.scale, self._dropout_p(), fused=self.attn.fused_attn)
        with torch.no_grad():  # the [CLS] row of any connection mask is all True
            probs = ((q[:, :, :1] * self.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self._attn_out(h, o), cls_attention_scores(probs, self.num_prefix_tokens)

    def forward_trilevel(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        positions: torch.Tensor,
        stash: Optional[torch.Tensor],
    ):
        """One block of the tri-level forward.

        Args:
            x: Tokens ``(B, N, C)``, prefix tokens first.
            mask: Boolean connection mask ``(B, N, N)`` from the last pruning block, or None.
            positions: Index of each non-prefix token in the sequence that entered the first
                block ``(B, N - P)`` (the original patch index unless PatchDropout shuffled it).
            stash: ``bypass`` fate only: ``(B, P + N0, C)``, the latest value of every token of
                the full sequence (the bypassed tokens wait there), or None before the first
                bypass pruning.

        Returns:
            ``(x, mask, positions, stash, density, scores)`` for the tokens leaving the block;
            ``density`` is a 0-d tensor (pruning blocks with attention sparsity) or None;
            ``scores`` the ``(B, N - P)`` scores a pruning block selected by, or None.
        """
        if not self.trilevel_prune:
            if mask is None:
                return self.forward(x), None, positions, stash, None, None  # the stock block, bit for bit
            x = x + self.drop_path1(self.ls1(self.attention_output(self.norm1(x), mask)))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
            return x, mask, positions, stash, None, None

        P = self.num_prefix_tokens
        keep, attn_keep = self.keep_ratio, self.attn_keep_ratio
        cls_scored = keep < 1.0 and self.token_score == "cls-attention"
        h = self.norm1(x)
        probs_mean = scores = None
        if attn_keep < 1.0:
            a, probs = self._attention_with_probs(h, mask)
            probs_mean = probs.mean(dim=1)  # (B, N, N)
            scores = cls_attention_scores(probs, P) if cls_scored else None
        elif cls_scored:
            a, scores = self._cls_scores(h, mask)
        else:
            a = self.attention_output(h, mask)
        x = x + self.drop_path1(self.ls1(a))

        kept_idx, fused = None, 0
        if keep < 1.0:
            B, N, C = x.shape
            if scores is None:  # random selection (random-LTD, Yao et al. 2022)
                scores = torch.rand(B, N - P, device=x.device)
            if self.token_fate == "bypass":  # the tokens about to be dropped wait in the stash
                stash = x if stash is None else stash.scatter(1, _token_index(positions, P, C), x[:, P:])
            x, kept_idx = select_topk_tokens(x, scores, keep, P, self.token_fate == "fuse")
            fused = x.shape[1] - P - kept_idx.shape[1]
            positions = positions.gather(1, kept_idx)
            if fused:
                positions = torch.cat([positions, positions.new_full((B, 1), -1)], dim=1)
            if kept_idx.shape[1] == N - P:
                kept_idx = None  # nothing dropped

        density = None
        if probs_mean is not None:
            mask = connection_mask(probs_mean, kept_idx, attn_keep, P, fused)
            n = mask.shape[1] - P - fused
            density = mask[:, P:P + n, P:P + n].float().mean()
        else:
            mask = None
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, mask, positions, stash, density, scores


def _token_index(positions: torch.Tensor, num_prefix_tokens: int, dim: int) -> torch.Tensor:
    """``(B, n, C)`` gather/scatter index of the patch tokens at ``positions`` in the full sequence."""
    return (positions + num_prefix_tokens).unsqueeze(-1).expand(-1, -1, dim)


def rejoin_tokens(x: torch.Tensor, stash: torch.Tensor, positions: torch.Tensor, num_prefix_tokens: int):
    """Put bypassed tokens back: the current tokens ``x`` return to their places in ``stash``.

    Args:
        x: Current tokens ``(B, P + n, C)``.
        stash: Latest value of every token ``(B, P + N0, C)``.
        positions: Index of each current patch token in the full sequence ``(B, n)``.
        num_prefix_tokens: ``P``.

    Returns:
        ``(B, P + N0, C)``: the full sequence in its original order, prefix tokens from ``x``.
    """
    P = num_prefix_tokens
    full = stash.scatter(1, _token_index(positions, P, x.shape[-1]), x[:, P:])
    return torch.cat([x[:, :P], full[:, P:]], dim=1)


class TriLevelViTMixin:
    """Tri-level ``forward_features`` for a timm ``VisionTransformer`` (mixed into its class)."""

    def forward_features(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Patch embedding, the tri-level blocks, final norm.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            Tokens ``(B, N', C)`` after the final norm, ``N'`` the tokens left after pruning.

        Raises:
            ValueError: If ``attn_mask`` or ``is_causal`` is given (not supported with pruning).
        """
        if attn_mask is not None or is_causal:
            raise ValueError("a tri-level patched model does not take attn_mask/is_causal; "
                             "call trilevel.unpatch_vit(model) first")
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        B, N, _ = x.shape
        P = self.num_prefix_tokens
        shuffled = self.training and not isinstance(self.patch_drop, nn.Identity)
        positions = torch.arange(N - P, device=x.device).expand(B, N - P)
        mask = stash = None
        info = TriLevelInfo()
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if i == self.trilevel_rejoin_layer and stash is not None:  # bypassed tokens come back
                x = rejoin_tokens(x, stash, positions, P)
                positions = torch.arange(N - P, device=x.device).expand(B, N - P)
                mask = stash = None
            info.tokens_per_block.append(x.shape[1])
            if use_ckpt:
                x, mask, positions, stash, density, scores = checkpoint(
                    blk.forward_trilevel, x, mask, positions, stash, use_reentrant=False
                )
            else:
                x, mask, positions, stash, density, scores = blk.forward_trilevel(x, mask, positions, stash)
            if blk.trilevel_prune:
                if not shuffled:
                    info.kept_positions.append(positions)
                info.connection_density.append(
                    density if density is not None else torch.ones((), device=x.device)
                )
                info.cls_scores.append(scores)
                info.connection_masks.append(mask)
        self.trilevel_info = info
        return self.norm(x)


_CLASS_CACHE: dict = {}


def _trilevel_class(mixin: type, cls: type) -> type:
    if issubclass(cls, mixin):
        return cls
    key = (mixin, cls)
    if key not in _CLASS_CACHE:
        _CLASS_CACHE[key] = type(f"TriLevel{cls.__name__}", (mixin, cls), {"_trilevel_base": cls})
    return _CLASS_CACHE[key]


def _resolve_prune_layers(prune_layers: Optional[Iterable[int]], depth: int) -> Tuple[int, ...]:
    if prune_layers is None:
        return default_prune_layers(depth)
    if isinstance(prune_layers, (str, bytes)) or not isinstance(prune_layers, Iterable):
        raise ValueError(f"prune_layers must be a sequence of block indices, got {prune_layers!r}")
    layers = list(prune_layers)
    if not layers:
        raise ValueError("prune_layers must name at least one block (got an empty sequence); "
                         "use keep_ratio=1.0, attn_keep_ratio=1.0 for a dense model")
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"prune_layers entries must be ints, got {i!r}")
        if not 0 <= i < depth:
            raise ValueError(f"prune layer index {i} is outside the model's blocks [0, {depth - 1}]")
    if len(set(layers)) != len(layers):
        dup = sorted({i for i in layers if layers.count(i) > 1})
        raise ValueError(f"prune_layers has duplicate indices {dup}")
    return tuple(sorted(layers))


def patch_vit(
    model: nn.Module,
    prune_layers: Optional[Sequence[int]] = None,
    keep_ratio: float = 0.7,
    attn_keep_ratio: float = 0.3,
    fuse_inattentive: bool = False,
    token_fate: str = "drop",
    token_score: str = "cls-attention",
    rejoin_layer: Optional[int] = None,
) -> nn.Module:
    """Add token- and attention-level sparsity to a timm Vision Transformer, in place.

    Works on timm's ``VisionTransformer`` family whose blocks are timm ``Block`` with timm
    ``Attention``: ViT, DeiT, DeiT distilled (two prefix tokens), register tokens, LayerScale
    (DeiT-III), QK-norm. The number of prefix tokens is read from ``model.num_prefix_tokens``.
    Patching again replaces the earlier settings.

    Args:
        model: A timm ``VisionTransformer`` (or a subclass such as ``VisionTransformerDistilled``).
        prune_layers: 0-based indices of the pruning blocks; None picks
            ``(depth//4, depth//2, 3*depth//4)`` = (3, 6, 9) at depth 12, the paper's choice (with
            ``token_fate='bypass'``, those before the rejoin block).
        keep_ratio: Kept fraction of patch tokens per pruning block, in (0, 1]; compounds
            across stages (paper: 0.7).
        attn_keep_ratio: Kept fraction of attention connections per query row, in (0, 1]
            (authors' default 0.3); 1.0 turns the attention level off.
        fuse_inattentive: The same as ``token_fate="fuse"`` (kept for existing code).
        token_fate: What happens to the pruned tokens. ``drop`` (the paper): they are gone for
            the rest of the forward. ``fuse`` (EViT, Liang et al., ICLR 2022): merged into one extra
            token weighted by their scores. ``bypass`` (random-LTD, Yao et al. 2022; Token Dropping,
            Hou et al., ACL 2022): they skip the blocks up to ``rejoin_layer`` and are put back in
            their places there, so that block, the later ones and the output see every token.
        token_score: How the kept tokens are chosen: ``cls-attention`` (the paper: the head-mean
            [CLS] attention they receive) or ``random`` (random-LTD, PatchDropout).
        rejoin_layer: ``bypass`` only: the block where the bypassed tokens come back; None: the
            last block. Must come after every pruning block.

    Returns:
        The same model object, patched.

    Raises:
        TypeError: If the model or one of its blocks/attention modules is not a supported timm
            class (the message names the class).
        ValueError: If a ratio is outside (0, 1], ``prune_layers`` has an index outside the
            model's depth, a duplicate, a non-integer, or is empty, ``token_fate`` or ``token_score``
            is unknown, or ``rejoin_layer`` is not after every pruning block.

    Source: Kong et al., "Peeling the Onion", AAAI 2023, Secs. on token- and attention-level
    data reduction.
    """
    VisionTransformer, Block, Attention = _vit_classes()
    base = unwrap_model(model)
    if not isinstance(base, VisionTransformer):
        raise TypeError(
            f"patch_vit supports timm VisionTransformer models (ViT, DeiT, DeiT-III, ...); "
            f"got {type(base).__module__}.{type(base).__name__}. Supported families: VisionTransformer "
            f"(trilevel.patch_vit), Eva / EVA-02 (trilevel.patch_eva), SwinTransformer (trilevel.patch_swin)"
        )
    if getattr(base, "cls_token", None) is None:
        raise TypeError(
            f"patch_vit scores tokens by their [CLS] attention, but this {type(base).__name__} has no "
            f"[CLS] token (class_token=False)"
        )
    blocks = list(base.blocks)
    for i, blk in enumerate(blocks):
        if not isinstance(blk, Block):
            raise TypeError(f"block {i} is a {type(blk).__name__}; patch_vit supports timm Block only")
        if not isinstance(blk.attn, Attention):
            raise TypeError(
                f"block {i} attention is a {type(blk.attn).__name__}; patch_vit supports timm Attention only"
            )
    keep_ratio = _check_ratio("keep_ratio", keep_ratio)
    attn_keep_ratio = _check_ratio("attn_keep_ratio", attn_keep_ratio)
    layers = _resolve_prune_layers(prune_layers, len(blocks))
    if fuse_inattentive:
        if token_fate not in ("drop", "fuse"):
            raise ValueError(f"fuse_inattentive=True asks for token_fate='fuse', but token_fate={token_fate!r}")
        token_fate = "fuse"
    if token_fate not in TOKEN_FATES:
        raise ValueError(f"token_fate must be one of {', '.join(TOKEN_FATES)}; got {token_fate!r}")
    if token_score not in TOKEN_SCORES:
        raise ValueError(f"token_score must be one of {', '.join(TOKEN_SCORES)}; got {token_score!r}")
    rejoin = None
    if token_fate == "bypass":
        layers, rejoin = resolve_bypass(layers, rejoin_layer, len(blocks), prune_layers is not None)
    elif rejoin_layer is not None:
        raise ValueError(f"rejoin_layer is for token_fate='bypass' only (token_fate={token_fate!r})")

    base.__class__ = _trilevel_class(TriLevelViTMixin, type(base))
    base.trilevel_prune_layers = layers
    base.trilevel_rejoin_layer = rejoin
    base.trilevel_info = None
    for i, blk in enumerate(blocks):
        blk.__class__ = _trilevel_class(TriLevelBlockMixin, type(blk))
        blk.trilevel_prune = i in layers
        blk.keep_ratio = keep_ratio
        blk.attn_keep_ratio = attn_keep_ratio
        blk.token_fate = token_fate
        blk.token_score = token_score
        blk.num_prefix_tokens = base.num_prefix_tokens
    return model


def unpatch_vit(model: nn.Module) -> nn.Module:
    """Restore the stock timm classes of a patched model, in place (weights untouched)."""
    base = unwrap_model(model)
    if not is_patched(base):
        return model
    for blk in base.blocks:
        blk.__class__ = blk._trilevel_base
        for name in ("trilevel_prune", "keep_ratio", "attn_keep_ratio", "token_fate", "token_score",
                     "num_prefix_tokens"):
            blk.__dict__.pop(name, None)
    base.__class__ = base._trilevel_base
    for name in ("trilevel_prune_layers", "trilevel_rejoin_layer", "trilevel_info"):
        base.__dict__.pop(name, None)
    return model


def is_patched(model: nn.Module) -> bool:
    """True if :func:`patch_vit` was applied to ``model`` (wrappers such as DDP are looked through)."""
    return isinstance(unwrap_model(model), TriLevelViTMixin)


def _require_patched(model: nn.Module) -> nn.Module:
    base = unwrap_model(model)
    if not isinstance(base, TriLevelViTMixin):
        raise ValueError(f"model ({type(base).__name__}) is not patched; call trilevel.patch_vit(model) first")
    return base


def set_keep_ratios(
    model: nn.Module,
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
) -> None:
    """Set the token and/or attention keep ratio of every pruning block (e.g. from a schedule).

    Args:
        model: A model patched by :func:`patch_vit` (DDP-wrapped is fine).
        keep_ratio: New kept fraction of patch tokens, in (0, 1]; None leaves it.
        attn_keep_ratio: New kept fraction of connections per query, in (0, 1]; None leaves it.

    Raises:
        ValueError: If the model is not patched or a ratio is outside (0, 1].
    """
    base = _require_patched(model)
    if keep_ratio is not None:
        keep_ratio = _check_ratio("keep_ratio", keep_ratio)
    if attn_keep_ratio is not None:
        attn_keep_ratio = _check_ratio("attn_keep_ratio", attn_keep_ratio)
    for blk in base.blocks:
        if keep_ratio is not None:
            blk.keep_ratio = keep_ratio
        if attn_keep_ratio is not None:
            blk.attn_keep_ratio = attn_keep_ratio


def get_keep_ratios(model: nn.Module) -> Tuple[float, float]:
    """``(keep_ratio, attn_keep_ratio)`` of a patched model; ``(1.0, 1.0)`` for a stock model."""
    base = unwrap_model(model)
    if not isinstance(base, TriLevelViTMixin):
        return 1.0, 1.0
    blk = base.blocks[base.trilevel_prune_layers[0]]
    return blk.keep_ratio, blk.attn_keep_ratio


def get_trilevel_info(model: nn.Module) -> Optional[TriLevelInfo]:
    """The :class:`TriLevelInfo` of the model's last forward pass (None before the first one).

    Raises:
        ValueError: If the model is not patched.
    """
    return _require_patched(model).trilevel_info
