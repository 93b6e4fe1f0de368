"""What a patched ViT keeps at the token and attention levels, as masks on the patch grid.

:func:`trace_pruning` runs one eval forward of a model patched by :func:`trilevel.patch` whose
family traces tokens (``ModelFamily.traces_tokens``: ViT/DeiT, EVA-02) and returns a
:class:`PruningTrace`: which patches survive each pruning stage (:func:`stage_survival_masks`),
the [CLS] attention the last pruning block ranked them by, and which kept patches one query patch
may attend to. Nothing here plots; see :mod:`trilevel.viz.pruning` for the picture.

The levels traced are those of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (token level: [CLS]-attention
top-k pruning; attention level: per-query top-k connection masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ["PruningTrace", "stage_survival_masks", "trace_pruning"]


def _grid_hw(grid_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(grid_size, bool):
        raise ValueError(f"grid_size must be an int or (rows, cols), got {grid_size!r}")
    if isinstance(grid_size, int):
        gh = gw = grid_size
    else:
        try:
            gh, gw = (int(v) for v in grid_size)
        except (TypeError, ValueError):
            raise ValueError(f"grid_size must be an int or (rows, cols), got {grid_size!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size!r}")
    return gh, gw


def stage_survival_masks(
    kept_positions: Sequence[torch.Tensor],
    grid_size: Union[int, Sequence[int]],
) -> torch.Tensor:
    """Which patches of the patch grid survive each pruning stage.

    Args:
        kept_positions: Per pruning stage, a ``(B, k_s)`` integer tensor of the kept tokens'
            original patch indices, row-major in the patch grid (``TriLevelInfo.kept_positions``);
            ``-1`` (a fused token, EViT option) is ignored.
        grid_size: Patch grid ``(rows, cols)``, or one int for a square grid.

    Returns:
        Boolean tensor ``(B, S, rows, cols)`` on the CPU, ``S = len(kept_positions)``: True where
        the patch is still present after stage ``s``. The dimmed (dropped) patches of stage ``s``
        are the False entries, ``rows * cols - k_s`` of them per image.

    Raises:
        ValueError: If ``kept_positions`` is empty, a stage is not a 2-D integer tensor, the
            stages disagree on the batch size, or an index lies outside the grid (named).
    """
    gh, gw = _grid_hw(grid_size)
    n = gh * gw
    stages = list(kept_positions)
    if not stages:
        raise ValueError("kept_positions is empty: the model has no pruning stage (or the input was shuffled)")
    batch = None
    out = []
    for s, pos in enumerate(stages):
        if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.is_floating_point() or pos.dtype == torch.bool:
            shape = tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__
            raise ValueError(f"kept_positions[{s}] must be a (B, k) integer tensor, got {shape}")
        if batch is None:
            batch = pos.shape[0]
        elif pos.shape[0] != batch:
            raise ValueError(f"kept_positions[{s}] has batch size {pos.shape[0]}, stage 0 has {batch}")
        pos = pos.detach().to("cpu", torch.long)
        bad = (pos < -1) | (pos >= n)
        if bad.any():
            value = int(pos[bad][0])
            raise ValueError(
                f"kept_positions[{s}] holds patch index {value}, outside the {gh}x{gw} grid [0, {n - 1}] (or -1)"
            )
        mask = torch.zeros(pos.shape[0], n + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(pos < 0, torch.full_like(pos, n), pos), True)  # -1 -> spare column
        out.append(mask[:, :n].reshape(-1, gh, gw))
    return torch.stack(out, dim=1)


@dataclass
class PruningTrace:
    """What one eval forward of a patched model kept, per image, in patch-grid coordinates.

    Attributes:
        grid_size: Patch grid ``(rows, cols)``.
        prune_layers: 0-based indices of the pruning blocks (one per stage).
        survival: ``(K, S, rows, cols)`` bool: patch present after stage ``s``
            (see :func:`stage_survival_masks`).
        cls_attention: ``(K, rows, cols)`` float: head-mean [CLS] attention each patch received in
            the last pruning block (the score it was kept by); NaN for patches already dropped
            before that block.
        query: ``(K,)`` long: the query patch (row-major index) of the connection panel.
        query_kept: ``(K,)`` bool: the query patch survived the last stage (if not, it has no
            connections and ``attended`` is all False for that image).
        attended: ``(K, rows, cols)`` bool: patches the query may attend to after the last
            pruning block (its row of the connection mask, restricted to kept patches; the
            prefix tokens and a fused token are always attendable and not drawn).
        predictions: ``(K,)`` long: the model's predicted class.
    """

    grid_size: tuple[int, int]
    prune_layers: tuple[int, ...]
    survival: torch.Tensor
    cls_attention: torch.Tensor
    query: torch.Tensor
    query_kept: torch.Tensor
    attended: torch.Tensor
    predictions: torch.Tensor

    @property
    def kept_counts(self) -> list[int]:
        """Patches kept after each stage (of the first image; equal for all images)."""
        return [int(v) for v in self.survival[0].flatten(1).sum(dim=1)] if len(self.survival) else []


def _patched_family(model: nn.Module):
    """``(base, family)`` of a patched model whose family traces tokens (``ModelFamily.traces_tokens``)."""
    from ..models import find_family, unwrap_model

    base = unwrap_model(model)
    family = find_family(base)
    if family is None or not family.is_patched(base):
        raise ValueError(f"model ({type(base).__name__}) is not patched; call trilevel.patch(model) first")
    if not family.traces_tokens:
        raise ValueError(f"trace_pruning traces kept tokens and connections, which a {family.name} model does "
                         "not record; pruning_figure draws what each of its stages ran")
    return base, family


def _check_images(images: Any, base: nn.Module) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (K, C, H, W), got {shape}")
    if images.shape[0] < 1:
        raise ValueError("images is empty (K = 0)")
    pe = base.patch_embed
    chans = getattr(getattr(pe, "proj", None), "in_channels", None)
    if chans is not None and images.shape[1] != chans:
        raise ValueError(f"images have {images.shape[1]} channels, the model takes {chans}")
    img_size = getattr(pe, "img_size", None)
    if img_size is not None and not getattr(pe, "dynamic_img_size", False):
        if tuple(images.shape[-2:]) != tuple(img_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} pixels, the model takes {tuple(img_size)}")
    return images


def _check_query(query_patch: Any, n: int) -> Optional[int]:
    if query_patch is None:
        return None
    if isinstance(query_patch, bool) or not isinstance(query_patch, (int, np.integer)):
        raise ValueError(f"query_patch must be a patch index (int) or None, got {query_patch!r}")
    if not 0 <= int(query_patch) < n:
        raise ValueError(f"query_patch {query_patch} is outside the patch grid's indices [0, {n - 1}]")
    return int(query_patch)


@torch.no_grad()
def trace_pruning(
    model: nn.Module,
    images: torch.Tensor,
    query_patch: Optional[int] = None,
) -> PruningTrace:
    """Run a patched model in eval mode on ``images`` and record what each level kept.

    Everything comes from the forward's ``TriLevelInfo``: the survival masks from
    ``kept_positions``, the [CLS] attention of the last pruning block from ``cls_scores`` (the
    scores it pruned by) and the connection mask from ``connection_masks``.

    Args:
        model: A model patched by :func:`trilevel.patch` (wrappers such as DDP are looked
            through) of a family that traces tokens (ViT/DeiT, EVA-02). Its training mode is
            restored afterwards; keep ratios are used as set.
        images: Normalised images ``(K, C, H, W)`` the model accepts.
        query_patch: Patch index (row-major in the patch grid) whose connections to show, the
            same for every image; None picks, per image, the patch with the highest [CLS]
            attention in the last pruning block (always one of the kept patches).

    Returns:
        A :class:`PruningTrace` (CPU tensors).

    Raises:
        ValueError: If the model is not patched or of a family that does not trace tokens (Swin),
            the images have the wrong shape, channels or size, or ``query_patch`` is not an index
            of the patch grid.

    Source: Kong et al., "Peeling the Onion", AAAI 2023 (the token and attention levels traced).
    """
    base, family = _patched_family(model)
    images = _check_images(images, base)
    gh, gw = _grid_hw(base.patch_embed.grid_size)
    n = gh * gw
    query_patch = _check_query(query_patch, n)
    prune_layers = tuple(family.settings(base).prune_layers)
    P = int(base.num_prefix_tokens)
    was_training = base.training
    device = next(base.parameters()).device
    base.eval()
    try:
        with torch.no_grad():
            logits = model(images.to(device))
    finally:
        base.train(was_training)
    info = family.info(base)
    if info is None or len(info.kept_positions) != len(prune_layers):
        raise ValueError("the model did not report kept patch positions for every pruning stage")
    captured = {
        "scores": info.cls_scores[-1],
        "positions_in": info.kept_positions[-2] if len(prune_layers) > 1 else None,
        "positions_out": info.kept_positions[-1],
        "mask": info.connection_masks[-1],
    }
    if captured["scores"] is None:  # both ratios 1.0: no scores were needed; rank patches evenly
        captured["scores"] = torch.zeros(images.shape[0], info.tokens_per_block[prune_layers[-1]] - P)
    survival = stage_survival_masks(info.kept_positions, (gh, gw))
    K = survival.shape[0]

    # [CLS] attention of the last pruning block, scattered to the grid (NaN: not present).
    pos_in = captured["positions_in"]
    scores = captured["scores"].float().cpu()
    pos_in = (torch.arange(n).expand(K, n) if pos_in is None else pos_in.cpu()).long()
    cls_map = torch.full((K, n + 1), float("nan"))
    cls_map.scatter_(1, torch.where(pos_in < 0, torch.full_like(pos_in, n), pos_in), scores)
    cls_map = cls_map[:, :n]

    kept_last = survival[:, -1].reshape(K, n)
    if query_patch is None:
        query = torch.where(kept_last, torch.nan_to_num(cls_map, nan=-1.0), torch.tensor(-2.0)).argmax(dim=1)
    else:
        query = torch.full((K,), query_patch, dtype=torch.long)
    query_kept = kept_last.gather(1, query[:, None])[:, 0]

    pos_out = captured["positions_out"].cpu().long()  # (K, k [+ fused])
    mask = captured["mask"]
    attended = torch.zeros(K, n, dtype=torch.bool)
    for b in range(K):
        if not query_kept[b]:
            continue
        j = int((pos_out[b] == query[b]).nonzero()[0, 0])
        if mask is None:  # attention level off: the query attends to every kept token
            row = torch.ones(pos_out.shape[1], dtype=torch.bool)
        else:
            row = mask[b, P + j, P:P + pos_out.shape[1]].cpu()
        cols = pos_out[b][row & (pos_out[b] >= 0)]
        attended[b, cols] = True

    return PruningTrace(
        grid_size=(gh, gw),
        prune_layers=prune_layers,
        survival=survival,
        cls_attention=cls_map.reshape(K, gh, gw),
        query=query,
        query_kept=query_kept,
        attended=attended.reshape(K, gh, gw),
        predictions=logits.detach().argmax(dim=-1).cpu(),
    )
