"""In-place patch of timm Vision Transformers with the token and attention levels.

:class:`ViTFamily` (registered; reached through :func:`trilevel.patch`) swaps the class of a timm
``VisionTransformer`` and of its blocks for subclasses that add the tri-level forward; no module or
parameter is added or replaced, so ``state_dict`` keys are unchanged and checkpoints move freely
between patched and stock models. Each block reuses its own submodules (``norm1``, ``attn`` with
its ``qkv``, ``q_norm``, ``k_norm``, ``attn_drop``, ``proj``; ``ls1``, ``drop_path1``, ``norm2``,
``mlp``, ``ls2``, ``drop_path2``), so LayerScale (DeiT-III) and QK-norm models work unchanged.
The runtime state is one object on the model, ``model.trilevel_state`` (a :class:`TriLevelState`,
as ToMe keeps ``_tome_info``): the ratios :func:`trilevel.set_keep_ratios` sets, the token fate and
score, the pruning and rejoin blocks and the last forward's record. The model's forward hands it
to each block; blocks carry no attributes of their own, and nothing per-call is passed through
``forward``.

Per pruning block (Kong et al., AAAI 2023, Sec. "Token-level" and
"Attention-level data reduction"):

1. attention with the connection mask carried from the previous pruning block (if any);
2. the attention residual;
3. token level: keep the prefix tokens and the ``ceil(keep_ratio * N_p)`` patch tokens with the
   highest head-mean [CLS] attention (this block's masked probabilities); the token fate (a
   :class:`~trilevel.token_pruning.TokenFate` strategy) decides what becomes of the others
   (dropped, fused into one token, set aside until the rejoin block);
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

from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..attention_sparsity import connection_mask, masked_attention
from ..token_pruning import (
    TOKEN_FATES, ScoreInputs, TokenFate, TokenScore, cls_attention_scores, get_token_fate, get_token_score,
)
from .common import check_ratio, restore_class, swap_class
from .registry import ModelFamily, PatchSettings, check_indices, register_family

__all__ = ["ViTFamily", "TriLevelInfo", "TriLevelState", "default_prune_layers", "resolve_bypass"]


@dataclass
class TriLevelInfo:
    """What the last forward pass of a patched model did.

    Attributes:
        tokens_per_block: Tokens entering each block, prefix tokens included (the MLP of a
            pruning block sees the count of the next entry).
        kept_positions: Per pruning stage, ``(B, k_s)`` LongTensor of the kept tokens' original
            patch indices (row-major in the patch grid; -1 marks a fused token). Empty when the
            input was shuffled by PatchDropout.
        cls_scores: Per pruning stage, ``(B, N_in - P)`` head-mean [CLS] attention of the
            tokens entering the block (the selection scores), or None when the block needed
            none (both ratios 1.0).
        connection_masks: Per pruning stage, the boolean connection mask ``(B, M, M)`` over the
            tokens leaving the block (prefix tokens first), or None when attention sparsity is off.
    """

    tokens_per_block: List[int] = field(default_factory=list)
    kept_positions: List[torch.Tensor] = field(default_factory=list)
    cls_scores: List[Optional[torch.Tensor]] = field(default_factory=list)
    connection_masks: List[Optional[torch.Tensor]] = field(default_factory=list)


@dataclass(eq=False)
class TriLevelState:
    """The runtime state of a patched ViT or Eva: one object, ``model.trilevel_state``.

    As ToMe keeps ``_tome_info`` (Bolya et al., ICLR 2023): :func:`trilevel.patch` sets it,
    :func:`trilevel.set_keep_ratios` changes its ratios, the model's forward hands it to each block and
    leaves its record in ``info``. It is a plain object, not a module, parameter or buffer, so
    ``state_dict`` keys stay those of stock timm; ``copy.deepcopy`` of the model copies it.

    Attributes:
        settings: The resolved :class:`~trilevel.models.registry.PatchSettings` the model was patched with.
        keep_ratio: Kept fraction of patch tokens in each pruning block, in (0, 1].
        attn_keep_ratio: Kept fraction of connections per query in each pruning block, in (0, 1].
        fate: The registered :class:`~trilevel.token_pruning.TokenFate` of ``settings.token_fate``.
        score: The registered :class:`~trilevel.token_pruning.TokenScore` of ``settings.token_score``.
        pruning: Per block, whether it prunes tokens and recomputes the connection mask.
        rejoin_layer: The block where a rejoining fate's tokens come back, or None.
        num_prefix_tokens: ``P``, the model's prefix tokens ([CLS], distillation, registers).
        info: What the last forward did (None before the first; not kept while compiled).
    """

    settings: PatchSettings
    keep_ratio: float
    attn_keep_ratio: float
    fate: TokenFate
    score: TokenScore
    pruning: Tuple[bool, ...]
    rejoin_layer: Optional[int]
    num_prefix_tokens: int
    info: Optional[TriLevelInfo] = None


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


class TriLevelBlockMixin:
    """Tri-level forward for a timm ``Block``; mixed into a subclass of the block's class.

    The block has no attributes of its own: the model's :class:`TriLevelState` is handed to
    :meth:`forward_trilevel` with each call.
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
        """The attention branch, and the head-mean probabilities ``(B, N, N)`` (forward-only) that the
        attention level builds its mask from and the token level scores by.

        The output comes from the block's own attention (fused SDPA when ``fused_attn``), so the
        backward pass keeps no ``(B, H, N, N)`` tensor; the probabilities are a second ``Q K^T``
        under ``no_grad`` (counted by the FLOP model) and only their head mean is kept.
        """
        q, k, v = self.qkv_heads(h)
        o = masked_attention(q, k, v, mask, self.attn.scale, self._dropout_p(), fused=self.attn.fused_attn)
        with torch.no_grad():
            logits = (q * self.attn.scale) @ k.transpose(-2, -1)
            if mask is not None:
                logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
            probs = logits.softmax(dim=-1)
        return self._attn_out(h, o), probs

    def _cls_scores(self, h: torch.Tensor, mask: Optional[torch.Tensor], num_prefix_tokens: int):
        """Attention output and the head-mean [CLS] row of its probabilities (a forward-only side product)."""
        q, k, v = self.qkv_heads(h)
        o = masked_attention(q, k, v, mask, self.attn.scale, self._dropout_p(), fused=self.attn.fused_attn)
        with torch.no_grad():  # the [CLS] row of any connection mask is all True
            probs = ((q[:, :, :1] * self.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self._attn_out(h, o), cls_attention_scores(probs, num_prefix_tokens)

    def forward_trilevel(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        positions: torch.Tensor,
        stash: Any,
        state: TriLevelState,
        prune: bool,
    ):
        """One block of the tri-level forward.

        Args:
            x: Tokens ``(B, N, C)``, prefix tokens first.
            mask: Boolean connection mask ``(B, N, N)`` from the last pruning block, or None.
            positions: Index of each non-prefix token in the sequence that entered the first
                block ``(B, N - P)`` (the original patch index unless PatchDropout shuffled it; -1
                for a token the fate added, such as EViT's fused token).
            stash: What the fate set aside in earlier pruning blocks (:meth:`TokenFate.set_aside`;
                for ``bypass`` a tuple of ``(positions (B, d), values (B, d, C))`` pairs), or None.
            state: The model's :class:`TriLevelState` (ratios, fate, score, prefix tokens).
            prune: Whether this block prunes (``state.pruning`` at its index).

        Returns:
            ``(x, mask, positions, stash, scores)`` for the tokens leaving the block; ``scores`` the
            ``(B, N - P)`` scores a pruning block selected by, or None.
        """
        if not prune:
            if mask is None:
                return self.forward(x), None, positions, stash, None  # the stock block, bit for bit
            x = x + self.drop_path1(self.ls1(self.attention_output(self.norm1(x), mask)))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
            return x, mask, positions, stash, None

        P = state.num_prefix_tokens
        keep, attn_keep, score, fate = state.keep_ratio, state.attn_keep_ratio, state.score, state.fate
        cls_scored = keep < 1.0 and score.uses_cls_attention
        h = self.norm1(x)
        probs_mean = cls_attention = None
        if attn_keep < 1.0:
            a, probs = self._attention_with_probs(h, mask)
            probs_mean = probs.mean(dim=1)  # (B, N, N)
            cls_attention = cls_attention_scores(probs, P) if cls_scored else None
        elif cls_scored:
            a, cls_attention = self._cls_scores(h, mask, P)
        else:
            a = self.attention_output(h, mask)
        x = x + self.drop_path1(self.ls1(a))

        kept_idx, extra, scores = None, 0, None
        if keep < 1.0:
            B, N, C = x.shape
            scores = score.score(ScoreInputs(x, cls_attention, P))
            kept_x, kept_idx = fate.select(x, scores, keep, P)
            stash = fate.set_aside(x, kept_idx, positions, P, stash)  # e.g. bypass: only those tokens copied
            x = kept_x
            extra = x.shape[1] - P - kept_idx.shape[1]  # tokens the fate appended (a shape, no sync)
            positions = positions.gather(1, kept_idx)
            if extra:
                positions = torch.cat([positions, positions.new_full((B, extra), -1)], dim=1)
            if kept_idx.shape[1] == N - P:
                kept_idx = None  # nothing dropped

        mask = None if probs_mean is None else connection_mask(probs_mean, kept_idx, attn_keep, P, extra)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, mask, positions, stash, scores


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
                             "call trilevel.unpatch(model) first")
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        B, N, _ = x.shape
        P = self.num_prefix_tokens
        shuffled = self.training and not isinstance(self.patch_drop, nn.Identity)
        positions = torch.arange(N - P, device=x.device).expand(B, N - P)
        mask = stash = None
        state = self.trilevel_state
        info = TriLevelInfo()
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if i == state.rejoin_layer and stash is not None:  # the tokens set aside come back
                x = state.fate.rejoin(x, stash, positions, P, N - P)
                positions = torch.arange(N - P, device=x.device).expand(B, N - P)
                mask = stash = None
            info.tokens_per_block.append(x.shape[1])
            prune = state.pruning[i]
            if use_ckpt:
                x, mask, positions, stash, scores = checkpoint(
                    blk.forward_trilevel, x, mask, positions, stash, state, prune, use_reentrant=False
                )
            else:
                x, mask, positions, stash, scores = blk.forward_trilevel(x, mask, positions, stash, state, prune)
            if prune:
                if not shuffled:
                    info.kept_positions.append(positions)
                info.cls_scores.append(scores)
                info.connection_masks.append(mask)
        if not torch.compiler.is_compiling():  # per-call state off the compiled path
            state.info = info
        return self.norm(x)




class ViTFamily(ModelFamily):
    """timm ``VisionTransformer`` (ViT, DeiT, DeiT distilled, registers, LayerScale, QK-norm): the paper's family.

    Token level: [CLS]-attention top-k in the pruning blocks; attention level: per-query top-k
    connection masks (Kong et al., AAAI 2023). Subclassed by :class:`trilevel.models.eva.EvaFamily`.
    """

    name = "vit"
    traces_tokens = True
    model_mixin: type = None  # set below (the mixins are defined in this module)
    block_mixin: type = None

    def classes(self):
        """``(model class, block class, attention class)`` this family patches."""
        return _vit_classes()

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.classes()[0])

    def patch_dropout_class(self) -> Optional[type]:
        from timm.layers import PatchDropout
        return PatchDropout

    def check(self, model: nn.Module) -> None:
        _, Block, Attention = self.classes()
        for i, blk in enumerate(model.blocks):
            if not isinstance(blk, Block):
                raise TypeError(f"block {i} is a {type(blk).__name__}; the {self.name} family supports timm "
                                "Block only")
            if not isinstance(blk.attn, Attention):
                raise TypeError(f"block {i} attention is a {type(blk.attn).__name__}; the {self.name} family "
                                "supports timm Attention only")

    def default_prune_layers(self, model: nn.Module) -> Tuple[int, ...]:
        return default_prune_layers(len(model.blocks))

    def resolve(self, model: nn.Module, settings: PatchSettings) -> PatchSettings:
        settings = super().resolve(model, settings)
        depth = len(model.blocks)
        layers = check_indices(settings.prune_layers, depth)
        given = layers is not None
        layers = self.default_prune_layers(model) if layers is None else layers
        if get_token_score(settings.token_score).uses_cls_attention and getattr(model, "cls_token", None) is None:
            raise TypeError(f"token_score={settings.token_score!r} scores tokens by their [CLS] attention, but this "
                            f"{type(model).__name__} has no [CLS] token (class_token=False); use token_score='random'")
        rejoin = None
        if get_token_fate(settings.token_fate).rejoins:
            layers, rejoin = resolve_bypass(layers, settings.rejoin_layer, depth, given)
        elif settings.rejoin_layer is not None:
            rejoining = ", ".join(repr(name) for name, fate in TOKEN_FATES.items() if fate.rejoins)
            raise ValueError(f"rejoin_layer is for a token fate that rejoins ({rejoining}), "
                             f"not token_fate={settings.token_fate!r}")
        return replace(settings, prune_layers=tuple(layers), rejoin_layer=rejoin)

    def patch(self, model: nn.Module, settings: PatchSettings) -> None:
        state = TriLevelState(
            settings=settings, keep_ratio=settings.keep_ratio, attn_keep_ratio=settings.attn_keep_ratio,
            fate=get_token_fate(settings.token_fate), score=get_token_score(settings.token_score),
            pruning=tuple(i in settings.prune_layers for i in range(len(model.blocks))),
            rejoin_layer=settings.rejoin_layer, num_prefix_tokens=model.num_prefix_tokens,
        )
        swap_class(model, self.model_mixin, trilevel_state=state)
        for blk in model.blocks:
            swap_class(blk, self.block_mixin)

    def unpatch(self, model: nn.Module) -> None:
        for blk in model.blocks:
            restore_class(blk, ())
        restore_class(model, ("trilevel_state",))

    def is_patched(self, model: nn.Module) -> bool:
        return isinstance(model, TriLevelViTMixin)

    def set_keep_ratios(self, model: nn.Module, keep_ratio: Optional[float], attn_keep_ratio: Optional[float]) -> None:
        state = model.trilevel_state
        keep_ratio = state.keep_ratio if keep_ratio is None else check_ratio("keep_ratio", keep_ratio)
        attn_keep_ratio = (state.attn_keep_ratio if attn_keep_ratio is None
                           else check_ratio("attn_keep_ratio", attn_keep_ratio))
        state.keep_ratio, state.attn_keep_ratio = keep_ratio, attn_keep_ratio

    def get_keep_ratios(self, model: nn.Module) -> Tuple[float, float]:
        if not self.is_patched(model):
            return 1.0, 1.0
        state = model.trilevel_state
        return state.keep_ratio, state.attn_keep_ratio

    def info(self, model: nn.Module) -> Optional[TriLevelInfo]:
        return model.trilevel_state.info

    def tokens_per_block(self, model: nn.Module, keep_ratio: float, training: bool,
                         settings: Optional[PatchSettings] = None,
                         img_size: Optional[int] = None) -> List[Tuple[int, int]]:
        from ..flops import vit_tokens_per_block

        return vit_tokens_per_block(model, self._settings_or_own(model, settings), keep_ratio, training, img_size)

    def forward_flops(self, model: nn.Module, keep_ratio: Optional[float], attn_keep_ratio: Optional[float],
                      training: bool, settings: Optional[PatchSettings], img_size: Optional[int] = None) -> float:
        from ..flops import vit_forward_flops

        own_keep, own_attn = self.get_keep_ratios(model)
        return vit_forward_flops(model, self._settings_or_own(model, settings),
                                 own_keep if keep_ratio is None else keep_ratio,
                                 own_attn if attn_keep_ratio is None else attn_keep_ratio, training, img_size)

    def _settings_or_own(self, model: nn.Module, settings: Optional[PatchSettings]) -> Optional[PatchSettings]:
        if settings is not None:
            return settings if settings.prune_layers is not None else self.resolve(model, settings)
        return self.settings(model)

    def survival_masks(self, model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
        from .common import survival_from_positions

        info = self.info(model)
        grid = model.patch_embed.grid_size
        return survival_from_positions(info.kept_positions, grid, model.trilevel_state.settings.prune_layers)

    def describe(self, model: nn.Module) -> str:
        pe = model.patch_embed
        gh, gw = pe.grid_size
        ph, pw = pe.patch_size
        return (f"{self.name}: {len(model.blocks)} blocks, width {model.embed_dim}, "
                f"{model.blocks[0].attn.num_heads} heads, {ph}x{pw} patches on {gh * ph}x{gw * pw} input "
                f"({gh * gw} patch tokens + {model.num_prefix_tokens} prefix)")


ViTFamily.model_mixin = TriLevelViTMixin
ViTFamily.block_mixin = TriLevelBlockMixin
VIT = register_family(ViTFamily())

