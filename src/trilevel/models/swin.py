"""In-place token-level patch of timm ``SwinTransformer`` models: window pruning or token masking.

Swin (Liu et al., ICCV 2021) attends inside local windows, shifted every other block, and merges
2x2 patches between stages, so its token grid cannot lose single tokens without breaking windows.
:class:`SwinFamily` (registered; reached through :func:`trilevel.patch`) offers two modes
(``mode=``):

* ``mode="window"`` (default; window-level activation pruning after SparseViT, Chen et al.,
  CVPR 2023, scored as Kong et al., AAAI 2023 score tokens): each block keeps, per image, the
  ``ceil(keep_ratio * num_windows)`` windows whose tokens received the most attention in the
  previous block (sum over the window's tokens of the column sums of the head-mean window
  attention), runs attention and MLP on those windows' tokens only, and lets every other window
  pass the block unchanged (identity residual). The grid keeps its shape, so shifted windows and
  patch merging work as before. Selection is recomputed in every block, on that block's (shifted)
  windows. The model's first block runs dense (there are no scores yet); the first block of a
  later stage uses the previous stage's scores summed over the 2x2 patches that merged. Tokens
  of skipped windows keep their last scores. This saves compute (:func:`trilevel.forward_flops`).
* ``mode="mask"`` (fidelity to the authors' Swin variant, no saving): tokens outside the top
  ``ceil(keep_ratio * H * W)`` by the attention they received in the previous block are masked
  as keys inside every window's softmax (a query always keeps its own key, so no row is empty);
  shapes never shrink.

Keep ratios may differ per stage (``keep_ratio`` a tuple, one per stage, for :func:`trilevel.patch` and
:func:`trilevel.set_keep_ratios`). The runtime state is one object on the model,
``model.trilevel_state`` (a :class:`SwinTriLevelState`, as the ViT family's
:class:`~trilevel.models.vit.TriLevelState`): the settings, the mode, the per-stage keep ratios
(``model.trilevel_state.keep_ratios``; :func:`trilevel.get_keep_ratios` returns the first stage's)
and the last forward's record; blocks carry no attributes. The attention level (per-query connection masks) is not
implemented for Swin: ``attn_keep_ratio`` must be 1.0. Blocks that neither prune nor score for
the next block run timm's own forward; pruning or scoring blocks run the unfused window
attention (they need its probabilities). No module or parameter is added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..token_pruning import num_kept_tokens
from .common import check_ratio, conv_flops, linear_macs, restore_class, stage_ratios, swap_class
from .registry import ModelFamily, PatchSettings, register_family

__all__ = ["SwinFamily", "SWIN_MODES", "SwinTriLevelInfo", "SwinTriLevelState", "window_grid", "merge_scores"]

SWIN_MODES = ("window", "mask")
"""``window``: skip low-scoring windows (saves compute); ``mask``: mask low-scoring keys (no saving)."""

def _swin_classes():
    from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention

    return SwinTransformer, SwinTransformerBlock, WindowAttention


@dataclass
class SwinTriLevelInfo:
    """What the last forward pass of a patched Swin did, one entry per block (model order).

    Attributes:
        windows_per_block: ``(kept, total)`` windows per image; ``kept == total`` for blocks that
            ran every window (and always in ``mask`` mode).
        kept_windows: ``(B, k)`` LongTensor of the kept windows' indices in the block's (shifted,
            padded) window grid, row-major, ascending; None when every window ran.
        kept_tokens: ``mask`` mode: ``(B, H, W)`` bool, the tokens whose keys stayed in the
            softmax; None in ``window`` mode or when the block masked nothing.
    """

    windows_per_block: List[Tuple[int, int]] = field(default_factory=list)
    kept_windows: List[Optional[torch.Tensor]] = field(default_factory=list)
    kept_tokens: List[Optional[torch.Tensor]] = field(default_factory=list)


@dataclass(eq=False)
class SwinTriLevelState:
    """The runtime state of a patched Swin: one object, ``model.trilevel_state``.

    :func:`trilevel.patch` sets it, :func:`trilevel.set_keep_ratios` changes its ratios, the model's
    forward reads them and leaves its record in ``info``. A plain object, not a module, parameter or
    buffer, so ``state_dict`` keys stay those of stock timm; ``copy.deepcopy`` of the model copies it.

    Attributes:
        settings: The resolved :class:`~trilevel.models.registry.PatchSettings` the model was patched
            with (``keep_ratio`` a float or a per-stage tuple, as given).
        keep_ratios: The current keep ratio of each stage (one float per ``model.layers`` entry, in (0, 1]);
            read the per-stage ratios here (:func:`trilevel.get_keep_ratios` gives the first stage's).
        mode: ``window`` or ``mask`` (:data:`SWIN_MODES`).
        info: What the last forward did (None before the first).
    """

    settings: PatchSettings
    keep_ratios: Tuple[float, ...]
    mode: str
    info: Optional[SwinTriLevelInfo] = None


def window_grid(block: nn.Module, H: int, W: int) -> Tuple[int, int, int]:
    """``(Hp, Wp, num_windows)`` of a timm ``SwinTransformerBlock`` on an ``H x W`` grid (padded up to windows)."""
    wh, ww = block.window_size
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    return Hp, Wp, (Hp // wh) * (Wp // ww)


def merge_scores(scores: torch.Tensor) -> torch.Tensor:
    """Token scores ``(B, H, W)`` summed over the 2x2 patches that timm's ``PatchMerging`` merges.

    Returns:
        ``(B, ceil(H / 2), ceil(W / 2))`` (odd sizes padded with zeros, as ``PatchMerging`` pads).
    """
    B, H, W = scores.shape
    scores = F.pad(scores, (0, W % 2, 0, H % 2))
    return scores.view(B, (H + 1) // 2, 2, (W + 1) // 2, 2).sum(dim=(2, 4))


def _top_tokens(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """``(B, H, W)`` bool: the ``ceil(keep_ratio * H * W)`` highest-scoring tokens of each image."""
    flat = scores.flatten(1)
    top = flat.topk(num_kept_tokens(flat.shape[1], keep_ratio), dim=1, sorted=False).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter(1, top, True).view_as(scores)


class TriLevelSwinBlockMixin:
    """Window pruning / key masking for a timm ``SwinTransformerBlock`` (mixed into its class).

    The block has no attributes of its own: the model's forward hands it its stage's keep ratio and
    the mode from the model's :class:`SwinTriLevelState`.
    """

    def to_windows(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, nW, A, C)``: cyclic shift, zero padding, window partition (as timm)."""
        from timm.models.swin_transformer import window_partition

        B, H, W, C = t.shape
        if any(self.shift_size):
            t = torch.roll(t, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        Hp, Wp, _ = window_grid(self, H, W)
        t = F.pad(t, (0, 0, 0, Wp - W, 0, Hp - H))
        return window_partition(t, self.window_size).view(B, -1, self.window_area, C)

    def from_windows(self, w: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Inverse of :meth:`to_windows`: ``(B, nW, A, C)`` -> ``(B, H, W, C)``."""
        from timm.models.swin_transformer import window_reverse

        B, nW, A, C = w.shape
        Hp, Wp, _ = window_grid(self, H, W)
        t = window_reverse(w.reshape(B * nW, *self.window_size, C), self.window_size, Hp, Wp)[:, :H, :W]
        if any(self.shift_size):
            t = torch.roll(t, shifts=self.shift_size, dims=(1, 2))
        return t

    def window_attention(self, hw: torch.Tensor, shift_mask: Optional[torch.Tensor],
                         win_idx: Optional[torch.Tensor], key_keep: Optional[torch.Tensor]):
        """Unfused window attention of timm's ``WindowAttention`` on some windows, with its probabilities.

        Args:
            hw: Normalised window tokens ``(B, k, A, C)``.
            shift_mask: timm's additive shifted-window mask ``(nW, A, A)``, or None.
            win_idx: ``(B, k)`` indices of the windows in ``hw`` among the ``nW``, or None (all).
            key_keep: ``(B, k, A)`` bool, keys that stay in the softmax (``mask`` mode), or None.

        Returns:
            ``(out, received)``: output ``(B, k, A, C)`` and the attention each token received,
            the column sums of the head-mean probabilities ``(B, k, A)`` (float32, no gradient).
        """
        attn = self.attn
        B, k, A, C = hw.shape
        q, kk, v = attn.qkv(hw.reshape(B * k, A, C)).reshape(B * k, A, 3, attn.num_heads, -1).permute(
            2, 0, 3, 1, 4).unbind(0)
        logits = (q * attn.scale) @ kk.transpose(-2, -1) + attn._get_rel_pos_bias()
        if shift_mask is not None:
            m = shift_mask.expand(B, -1, -1, -1) if win_idx is None else shift_mask[win_idx]
            logits = logits + m.reshape(B * k, 1, A, A)
        if key_keep is not None:
            allowed = key_keep.reshape(B * k, 1, 1, A) | torch.eye(A, dtype=torch.bool, device=hw.device)
            logits = logits.masked_fill(~allowed, float("-inf"))
        probs = logits.softmax(dim=-1)
        out = (attn.attn_drop(probs) @ v).transpose(1, 2).reshape(B * k, A, -1)
        out = attn.proj_drop(attn.proj(out))
        received = probs.detach().mean(dim=1).sum(dim=1).float()
        return out.view(B, k, A, C), received.view(B, k, A)

    def forward_sparse(self, x: torch.Tensor, scores: Optional[torch.Tensor], emit: bool, keep_ratio: float,
                       mode: str):
        """One block: prune windows (or mask keys) by ``scores``; score the tokens for the next block.

        Args:
            x: Tokens ``(B, H, W, C)``.
            scores: Attention each token received in the previous block ``(B, H, W)``, or None
                (no pruning in this block).
            emit: Whether the next block needs this block's scores.
            keep_ratio: This block's (its stage's) keep ratio, in (0, 1].
            mode: ``window`` or ``mask``.

        Returns:
            ``(x, scores, kept_windows, kept_tokens)``: the tokens ``(B, H, W, C)``, this block's
            scores ``(B, H, W)`` (None unless ``emit``), the ``(B, k)`` kept window indices (None:
            all) and the ``(B, H, W)`` kept-key map of ``mask`` mode (None otherwise).
        """
        prune = scores is not None and keep_ratio < 1.0
        if not prune and not emit:
            return self.forward(x), None, None, None
        B, H, W, C = x.shape
        xw, hw = self.to_windows(x), self.to_windows(self.norm1(x))
        nW, A = xw.shape[1], xw.shape[2]
        win_idx = key_keep = kept_tokens = None
        if prune and mode == "window" and num_kept_tokens(nW, keep_ratio) < nW:
            window_scores = self.to_windows(scores.unsqueeze(-1)).sum(dim=(2, 3))
            k = num_kept_tokens(nW, keep_ratio)
            win_idx = window_scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
        elif prune and mode == "mask":
            kept_tokens = _top_tokens(scores, keep_ratio)
            key_keep = self.to_windows(kept_tokens.unsqueeze(-1).to(hw.dtype)).squeeze(-1) > 0
        if win_idx is not None:
            index = win_idx.view(B, -1, 1, 1).expand(-1, -1, A, C)
            xk, hk = xw.gather(1, index), hw.gather(1, index)
        else:
            xk, hk = xw, hw
        Hp, Wp, _ = window_grid(self, H, W)
        shift_mask = self.get_attn_mask(hw.new_empty(1, Hp, Wp, 1)) if self.dynamic_mask else self.attn_mask
        out, received = self.window_attention(hk, shift_mask, win_idx, key_keep)
        t = xk.reshape(B, -1, C) + self.drop_path1(out.reshape(B, -1, C))
        t = (t + self.drop_path2(self.mlp(self.norm2(t)))).view_as(xk)
        x = self.from_windows(t if win_idx is None else xw.scatter(1, index, t), H, W)
        new_scores = None
        if emit:
            if win_idx is not None:  # skipped windows keep their last scores
                stale = self.to_windows(scores.unsqueeze(-1).float()).squeeze(-1)
                received = stale.scatter(1, win_idx.unsqueeze(-1).expand(-1, -1, A), received)
            new_scores = self.from_windows(received.unsqueeze(-1), H, W).squeeze(-1)
        return x, new_scores, win_idx, kept_tokens


class TriLevelSwinMixin:
    """Token-level ``forward_features`` for a timm ``SwinTransformer`` (mixed into its class)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, the stages (patch merging, then the pruning blocks), final norm.

        Args:
            x: Images ``(B, C, H, W)``.

        Returns:
            Features ``(B, H', W', C')`` after the final norm (the grid is never shrunk).
        """
        state = self.trilevel_state
        x = self.patch_embed(x)
        ratios = [r for r, stage in zip(state.keep_ratios, self.layers) for _ in stage.blocks]
        info = SwinTriLevelInfo()
        scores, i = None, 0
        for stage in self.layers:
            x = stage.downsample(x)
            if scores is not None and not isinstance(stage.downsample, nn.Identity):
                scores = merge_scores(scores)
            use_ckpt = stage.grad_checkpointing and self.training and torch.is_grad_enabled()
            for blk in stage.blocks:
                i += 1
                emit = i < len(ratios) and ratios[i] < 1.0
                step = (blk.forward_sparse, x, scores, emit, ratios[i - 1], state.mode)
                out = checkpoint(*step, use_reentrant=False) if use_ckpt else step[0](*step[1:])
                x, scores, kept_windows, kept_tokens = out
                total = window_grid(blk, x.shape[1], x.shape[2])[2]
                kept = total if kept_windows is None else kept_windows.shape[1]
                info.windows_per_block.append((kept, total))
                info.kept_windows.append(kept_windows)
                info.kept_tokens.append(kept_tokens)
        state.info = info
        return self.norm(x)


def _stages(base: nn.Module) -> List[List[nn.Module]]:
    return [list(stage.blocks) for stage in base.layers]


def _check_swin(base: nn.Module) -> None:
    _, SwinTransformerBlock, WindowAttention = _swin_classes()
    for s, blocks in enumerate(_stages(base)):
        for blk in blocks:
            if not isinstance(blk, SwinTransformerBlock) or not isinstance(blk.attn, WindowAttention):
                raise TypeError(f"stage {s} holds a {type(blk).__name__}; the swin family supports timm "
                                "SwinTransformerBlock with WindowAttention only")


class SwinFamily(ModelFamily):
    """timm ``SwinTransformer``: whole windows skip a block (``window``) or low-scoring keys are masked (``mask``).

    Windows are scored by the attention their tokens received in the previous block (Swin has no
    [CLS] token: the analogue of Kong et al.'s [CLS] score), so ``token_score`` is
    ``cls-attention`` only; skipped windows pass the block unchanged and are back in the next
    one, so the fate is ``bypass`` only. No attention level. Every block but the model's first
    prunes (``prune_layers`` must be None). ``keep_ratio`` is a float for every stage or a tuple,
    one per stage (:func:`trilevel.patch`, :func:`trilevel.set_keep_ratios`,
    :func:`trilevel.forward_flops`).

    Sources: Chen et al., "SparseViT", CVPR 2023 (window-level activation pruning); Kong et al.,
    "Peeling the Onion", AAAI 2023 (scores from the attention a token receives).
    """

    name = "swin"
    supports_attention_level = False
    token_fates = ("bypass",)
    token_scores = ("cls-attention",)
    modes = SWIN_MODES

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, _swin_classes()[0])

    def check(self, model: nn.Module) -> None:
        _check_swin(model)

    def resolve(self, model: nn.Module, settings: PatchSettings) -> PatchSettings:
        """``settings`` checked; a per-stage ``keep_ratio`` (list or tuple) becomes a tuple of floats.

        Raises:
            ValueError: ``prune_layers`` or ``rejoin_layer`` given, a ratio outside (0, 1], a per-stage
                sequence of the wrong length, ``attn_keep_ratio != 1``, or an unknown ``mode`` (named).
        """
        if settings.prune_layers is not None:
            raise ValueError(f"prune_layers={settings.prune_layers!r}: a Swin prunes in every block but the first "
                             "(its keep ratio is per stage); leave prune_layers None")
        if settings.rejoin_layer is not None:
            raise ValueError("rejoin_layer does not apply to Swin (skipped windows are back in the next block)")
        if not isinstance(settings.keep_ratio, (list, tuple)):
            return super().resolve(model, settings)
        ratios = stage_ratios("keep_ratio", settings.keep_ratio, len(model.layers))
        return replace(super().resolve(model, replace(settings, keep_ratio=1.0)), keep_ratio=ratios)

    def patch(self, model: nn.Module, settings: PatchSettings) -> None:
        ratios = stage_ratios("keep_ratio", settings.keep_ratio, len(model.layers))
        swap_class(model, TriLevelSwinMixin,
                   trilevel_state=SwinTriLevelState(settings=settings, keep_ratios=ratios, mode=settings.mode))
        for blocks in _stages(model):
            for blk in blocks:
                swap_class(blk, TriLevelSwinBlockMixin)

    def unpatch(self, model: nn.Module) -> None:
        for blocks in _stages(model):
            for blk in blocks:
                restore_class(blk, ())
        restore_class(model, ("trilevel_state",))

    def is_patched(self, model: nn.Module) -> bool:
        return isinstance(model, TriLevelSwinMixin)

    def set_keep_ratios(self, model: nn.Module, keep_ratio: Union[None, float, Sequence[float]],
                        attn_keep_ratio: Optional[float]) -> None:
        """Set the keep ratio of every stage (a float) or of each stage (a sequence); nothing changes on an error."""
        if attn_keep_ratio is not None and check_ratio("attn_keep_ratio", attn_keep_ratio) != 1.0:
            raise ValueError(f"attn_keep_ratio={attn_keep_ratio!r}: the attention level is not implemented for "
                             "Swin; use attn_keep_ratio=1.0")
        if keep_ratio is not None:
            model.trilevel_state.keep_ratios = stage_ratios("keep_ratio", keep_ratio, len(model.layers))

    def get_keep_ratios(self, model: nn.Module) -> Tuple[float, float]:
        """``(first stage's keep ratio, 1.0)``; every stage's is ``model.trilevel_state.keep_ratios``."""
        return _stage_keep_ratios(model)[0], 1.0

    def forward_flops(self, model: nn.Module, keep_ratio: Union[None, float, Sequence[float]],
                      attn_keep_ratio: Optional[float], training: bool, settings: Optional[PatchSettings],
                      img_size: Optional[int] = None) -> float:
        if img_size is not None and tuple(model.patch_embed.img_size) != (img_size, img_size):
            raise ValueError("the Swin FLOP model counts the model's own input size only")
        if settings is None and not self.is_patched(model):
            return _swin_flops(model, 1.0)
        mode = settings.mode if settings is not None else model.trilevel_state.mode
        if keep_ratio is None and settings is not None and not self.is_patched(model):
            keep_ratio = settings.keep_ratio
        return _swin_flops(model, keep_ratio, mode=mode)

    def info(self, model: nn.Module) -> Optional[SwinTriLevelInfo]:
        return model.trilevel_state.info

    def survival_masks(self, model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
        """After a forward of a patched Swin: per stage, the tokens of the windows its blocks ran.

        For each stage, a ``(B, H_s, W_s)`` bool map on that stage's token grid: True where the
        token's window ran in every pruning block of the stage (shifted windows mapped back to the
        grid). Blocks that ran every window (and ``mask`` mode) mark everything.

        Returns:
            ``[("stage s", mask), ...]`` on the CPU.
        """
        info = model.trilevel_state.info
        out = []
        i = 0
        H, W = model.patch_embed.grid_size
        for s, stage in enumerate(model.layers):
            if not isinstance(stage.downsample, nn.Identity):
                H, W = (H + 1) // 2, (W + 1) // 2
            alive = None
            for blk in stage.blocks:
                kept = info.kept_windows[i]
                i += 1
                if kept is None:
                    continue
                B = kept.shape[0]
                _, _, nW = window_grid(blk, H, W)
                flags = torch.zeros(B, nW, dtype=torch.float32).scatter_(1, kept.detach().cpu(), 1.0)
                tokens = flags.view(B, nW, 1, 1).expand(B, nW, blk.window_area, 1)
                grid = blk.from_windows(tokens, H, W).squeeze(-1) > 0
                alive = grid if alive is None else alive & grid
            if alive is None:
                alive = torch.ones(1, H, W, dtype=torch.bool)
            out.append((f"stage {s}", alive))
        return out

    def describe(self, model: nn.Module) -> str:
        gh, gw = model.patch_embed.grid_size
        depths = [len(b) for b in _stages(model)]
        return (f"swin: stages {depths}, width {model.embed_dim}, window {model.layers[0].blocks[0].window_size}, "
                f"{gh}x{gw} patch grid")


SWIN = register_family(SwinFamily())


def _stage_keep_ratios(base: nn.Module) -> Tuple[float, ...]:
    """Per-stage keep ratios of a patched Swin (its state's); 1.0 for every stage of a stock one."""
    if isinstance(base, TriLevelSwinMixin):
        return tuple(base.trilevel_state.keep_ratios)
    return (1.0,) * len(base.layers)


def _swin_flops(base: nn.Module, keep_ratio: Union[None, float, Sequence[float]] = None,
                mode: Optional[str] = None) -> float:
    """FLOPs (multiply-add = 2) of one forward pass of one image through a (patched) Swin.

    Counted as :mod:`trilevel.flops` counts a ViT: the patch embedding, every ``nn.Linear``
    (qkv, projection, MLP, patch merging, classifier) at the tokens it sees, and the two window
    attention products at the windows that run. Blocks that prune or score run attention and MLP
    in window layout (padding tokens included); others run timm's forward (MLP on the ``H x W``
    tokens). ``mask`` mode costs what the dense model costs. Not counted: norms, softmax,
    activations, the relative position bias, selection, gathers and scatters.

    Args:
        base: A timm ``SwinTransformer`` (unwrapped), patched or not.
        keep_ratio: Keep ratio(s) to assume (a float or one per stage); None: the model's own.
        mode: Count as if patched in this mode (``window`` or ``mask``), e.g. before patching;
            None: the model's own (a stock model counts dense).

    Returns:
        FLOPs of one image.
    """
    stages = _stages(base)
    patched = isinstance(base, TriLevelSwinMixin) or mode is not None
    ratios = _stage_keep_ratios(base) if keep_ratio is None else stage_ratios("keep_ratio", keep_ratio, len(stages))
    ratios = ratios if patched else (1.0,) * len(stages)
    per_block = [r for r, blocks in zip(ratios, stages) for _ in blocks]
    window_mode = not patched or (mode or base.trilevel_state.mode) == "window"
    H, W = base.patch_embed.grid_size
    flops = conv_flops(getattr(base.patch_embed, "proj", None), H * W)
    i = 0
    for stage, blocks in zip(base.layers, stages):
        if not isinstance(stage.downsample, nn.Identity):
            H, W = (H + 1) // 2, (W + 1) // 2
            flops += 2.0 * H * W * linear_macs(stage.downsample)
        for blk in blocks:
            prune = i > 0 and per_block[i] < 1.0
            emit = i + 1 < len(per_block) and per_block[i + 1] < 1.0
            _, _, nW = window_grid(blk, H, W)
            k = num_kept_tokens(nW, per_block[i]) if prune and window_mode else nW
            A = blk.window_area
            attn_dim = blk.attn.qkv.out_features // 3
            flops += 2.0 * k * A * linear_macs(blk.attn) + 2.0 * 2.0 * k * A * A * attn_dim
            flops += 2.0 * (k * A if prune or emit else H * W) * linear_macs(blk.mlp)
            i += 1
    fc = getattr(base.head, "fc", None)
    if isinstance(fc, nn.Linear):
        flops += 2.0 * fc.in_features * fc.out_features
    return flops
