"""In-place tri-level patch of timm ``Eva`` models (EVA-02 and the RoPE ViTs built on it).

EVA-02 (Fang et al., "EVA-02: A Visual Representation for Neon Genesis", 2023) is a ViT with
SwiGLU MLPs, sub-LayerNorm in attention and 2-D rotary position embeddings (RoPE) on the patch
tokens' queries and keys. The token and attention levels of Kong et al. (AAAI 2023) apply as in
:mod:`trilevel.models.vit`: :class:`EvaFamily` (registered; reached through :func:`trilevel.patch`)
swaps the classes of the model and of its blocks for subclasses of the ViT mixins
(:class:`trilevel.models.vit.TriLevelViTMixin`, :class:`trilevel.models.vit.TriLevelBlockMixin`), so
the block arithmetic (scores, token fates, connection masks) is that of the ViT patch, and
:func:`trilevel.set_keep_ratios`, :func:`trilevel.get_trilevel_info`, :func:`trilevel.is_patched` and
:func:`trilevel.forward_flops` work on a patched Eva as on a patched ViT.

What is Eva-specific:

* Rotary embeddings are per patch. The rope tensor of the model, ``(N, 2 * head_dim)``, has one
  row per patch token; after a pruning block the kept tokens carry their own rows (gathered by
  the tokens' positions in the sequence that entered the first block), a token the fate adds (EViT's
  fused token) gets the identity rotation (``sin = 0, cos = 1``: no position, like a prefix token),
  and tokens set aside get theirs back when they rejoin.
* The fused q/v biases of ``EvaAttention`` (``q_bias``, a zero ``k_bias``, ``v_bias``) or its
  separate ``q_proj``/``k_proj``/``v_proj``, and LayerScale as ``gamma_1``/``gamma_2``.

Supported: ``Eva`` with ``EvaBlock`` (pre-norm) and ``EvaAttention``, with or without RoPE
(``rope_type='cat'``), [CLS] and register tokens, QK-norm, gated attention, PatchDropout.
Not supported (``TypeError``): post-norm blocks, ``AttentionRope`` (``attn_type='rope'``,
e.g. the PE/DINOv3 models), depth-dependent ``rope_type='mixed'``. The FLOP count of
:func:`trilevel.forward_flops` leaves out ``global_pool='map'`` attention pooling.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .registry import register_family
from .vit import TriLevelBlockMixin, TriLevelInfo, TriLevelViTMixin, ViTFamily

__all__ = ["EvaFamily", "gather_rope"]


def _eva_classes():
    from timm.models.eva import Eva, EvaAttention, EvaBlock

    return Eva, EvaBlock, EvaAttention


def gather_rope(rope: Optional[torch.Tensor], positions: torch.Tensor) -> Optional[torch.Tensor]:
    """The rotary embedding rows of the tokens at ``positions``.

    Args:
        rope: Concatenated ``[sin, cos]`` rotary embeddings of the patch tokens entering the
            first block: ``(N, D)``, or ``(B, 1, N, D)`` after PatchDropout; None for no RoPE.
        positions: ``(B, n)`` index of each current patch token among those ``N`` tokens;
            ``-1`` marks a fused token, which gets the identity rotation (sin 0, cos 1).

    Returns:
        ``(B, 1, n, D)`` rows for the tokens (broadcast over heads), or None when ``rope`` is None.
    """
    if rope is None:
        return None
    B, n = positions.shape
    D = rope.shape[-1]
    if rope.dim() == 2:
        rope = rope.unsqueeze(0).unsqueeze(0).expand(B, 1, -1, -1)
    index = positions.clamp_min(0).view(B, 1, n, 1).expand(B, 1, n, D)
    rows = rope.gather(2, index)
    fused = positions < 0  # no host read: the identity rows are written wherever they apply
    identity = torch.cat([rope.new_zeros(D // 2), rope.new_ones(D - D // 2)])
    rows = torch.where(fused.view(B, 1, n, 1), identity, rows)
    return rows


class TriLevelEvaBlockMixin(TriLevelBlockMixin):
    """The ViT block mixin on an ``EvaBlock``: Eva's q/k/v projections, RoPE and LayerScale.

    It reuses :meth:`TriLevelBlockMixin.forward_trilevel` unchanged and overrides that mixin's
    two attention hooks, ``qkv_heads`` (heads of q, k, v) and ``attention_output`` (the unmasked
    case calls the stock attention module with the current rope rows).

    ``trilevel_rope`` holds the rope rows of the current tokens only while
    :meth:`forward_trilevel_rope` runs; outside it the block is stock.
    """

    trilevel_rope: Optional[torch.Tensor] = None

    def ls1(self, x: torch.Tensor) -> torch.Tensor:
        """LayerScale of the attention branch (``gamma_1``; identity when absent)."""
        return x if self.gamma_1 is None else self.gamma_1 * x

    def ls2(self, x: torch.Tensor) -> torch.Tensor:
        """LayerScale of the MLP branch (``gamma_2``; identity when absent)."""
        return x if self.gamma_2 is None else self.gamma_2 * x

    def forward(self, x, rope=None, attn_mask=None, is_causal=False):
        """Stock ``EvaBlock.forward``; inside the tri-level forward the current rope rows are the default."""
        return super().forward(x, rope=self.trilevel_rope if rope is None else rope,
                               attn_mask=attn_mask, is_causal=is_causal)

    def qkv_heads(self, x: torch.Tensor):
        """Heads ``(B, H, N, D)`` of q, k, v with Eva's biases, QK-norm and RoPE on the patch tokens."""
        attn = self.attn
        B, N, _ = x.shape
        if attn.qkv is not None:
            bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            q, k, v = F.linear(x, attn.qkv.weight, bias).reshape(B, N, 3, attn.num_heads, -1).permute(
                2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (p(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
                       for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = attn.q_norm(q), attn.k_norm(k)
        rope = self.trilevel_rope
        if rope is not None:
            from timm.layers import apply_rot_embed_cat

            P, half = attn.num_prefix_tokens, attn.rotate_half
            q, k = (torch.cat([t[:, :, :P], apply_rot_embed_cat(t[:, :, P:], rope, half=half)], dim=2).type_as(v)
                    for t in (q, k))
        return q, k, v

    def attention_output(self, h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if mask is None:
            return self.attn(h, rope=self.trilevel_rope)
        return super().attention_output(h, mask)

    def forward_trilevel_rope(self, x, rope, mask, positions, stash, state, prune):
        """:meth:`forward_trilevel` with the rope rows ``(B, 1, n, D)`` (or ``(n, D)``, or None) of the tokens ``x``."""
        self.trilevel_rope = rope
        try:
            return self.forward_trilevel(x, mask, positions, stash, state, prune)
        finally:
            self.trilevel_rope = None


class TriLevelEvaMixin(TriLevelViTMixin):
    """Tri-level ``forward_features`` for a timm ``Eva`` (mixed into its class)."""

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        """The tri-level forward of :class:`trilevel.models.vit.TriLevelViTMixin`, rotary rows following the tokens.

        Images ``(B, C, H, W)`` in, tokens ``(B, N', C)`` after the final norm out (``N'``: the
        tokens left after pruning). ``attn_mask``/``is_causal`` raise ``ValueError`` (no pruning with them).
        """
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask/is_causal are not supported by a patched Eva; "
                             "call trilevel.unpatch(model) first")
        x, full_rope = self._pos_embed(self.patch_embed(x))
        x = self.norm_pre(x)
        B, N, _ = x.shape
        P = self.num_prefix_tokens
        everyone = torch.arange(N - P, device=x.device).expand(B, N - P)
        positions, rope, mask, stash = everyone, full_rope, None, None
        shuffled = self.training and self.patch_drop is not None
        state = self.trilevel_state
        info = TriLevelInfo()
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if stash is not None and i == state.rejoin_layer:  # the tokens set aside come back
                x, positions, rope = state.fate.rejoin(x, stash, positions, P, N - P), everyone, full_rope
                mask = stash = None
            info.tokens_per_block.append(x.shape[1])
            prune = state.pruning[i]
            step = (blk.forward_trilevel_rope, x, rope, mask, positions, stash, state, prune)
            out = checkpoint(*step, use_reentrant=False) if use_ckpt else step[0](*step[1:])
            x, mask, kept, stash, scores = out
            if kept is not positions:  # a pruning block selected tokens: they take their rope rows along
                positions, rope = kept, gather_rope(full_rope, kept)
            if prune:
                if not shuffled:
                    info.kept_positions.append(positions)
                info.cls_scores.append(scores)
                info.connection_masks.append(mask)
        if not torch.compiler.is_compiling():  # per-call state off the compiled path
            state.info = info
        return self.norm(x)


class EvaFamily(ViTFamily):
    """timm ``Eva`` (EVA-02 and the RoPE ViTs built on it): the ViT family's levels, rotary rows following tokens."""

    name = "eva"
    model_mixin = TriLevelEvaMixin
    block_mixin = TriLevelEvaBlockMixin

    def classes(self):
        return _eva_classes()

    def check(self, model: nn.Module) -> None:
        _, EvaBlock, EvaAttention = self.classes()
        for i, blk in enumerate(model.blocks):
            if not isinstance(blk, EvaBlock) or not isinstance(blk.attn, EvaAttention):
                raise TypeError(f"block {i} is a {type(blk).__name__} with {type(blk.attn).__name__}; the eva "
                                "family supports pre-norm EvaBlock with EvaAttention only (no use_post_norm, no "
                                "attn_type='rope')")
        if getattr(model, "rope_mixed", False):
            raise TypeError("the eva family does not support rope_type='mixed' (per-block rotary embeddings)")

    def patch_dropout_class(self) -> Optional[type]:
        from timm.layers import PatchDropoutWithIndices  # Eva gathers its rotary rows by the kept indices
        return PatchDropoutWithIndices

    def unpatch(self, model: nn.Module) -> None:
        for blk in model.blocks:
            blk.__dict__.pop("trilevel_rope", None)
        super().unpatch(model)

    def describe(self, model: nn.Module) -> str:
        return super().describe(model) + (", RoPE" if getattr(model, "rope", None) is not None else "")


EVA = register_family(EvaFamily())

