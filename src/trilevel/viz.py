"""Pictures of what the three levels remove, and plots of a training run.

* :func:`visualize_pruning` draws, for a few images, which patch tokens survive each pruning stage
  of a model patched by :func:`trilevel.vit.patch_vit` and which connections one query patch keeps
  at the last stage; :func:`visualize_checkpoint` does the same for a run's ``checkpoint.pt``.
  :func:`trace_pruning` and :func:`stage_survival_masks` compute the drawn masks (no plotting).
* :func:`report_run` turns a run folder's ``metrics.jsonl`` (and the example selector's state in
  its ``checkpoint.pt``) into PNG plots next to it.
* :func:`plot_accuracy_vs_time` plots validation top-1 against training time for a benchmark.

The command line uses :func:`add_visualize_arguments` / :func:`run_visualize`
(``trilevel visualize``) and :func:`add_report_arguments` / :func:`run_report` (``trilevel report``).

Plotting uses matplotlib's Agg renderer through an explicit ``FigureCanvasAgg`` on each
``Figure``: nothing is imported from matplotlib until a plotting function runs, pyplot is never
used, and the process-wide backend is left untouched, so these functions are safe in headless
jobs, in threads and inside notebooks alike.

The method visualised is that of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (token level: [CLS]-attention top-k
pruning; attention level: per-query top-k connection masks; example level: forgetting events).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "PruningTrace",
    "stage_survival_masks",
    "trace_pruning",
    "visualize_pruning",
    "visualize_checkpoint",
    "read_metrics",
    "report_run",
    "plot_accuracy_vs_time",
    "add_visualize_arguments",
    "run_visualize",
    "add_report_arguments",
    "run_report",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Display of a dropped patch: 20% of the image over 80% of a grey-blue tint (a tint, not a grey,
# so that both black and white dropped patches stand out from the kept grayscale ones).
_DIM_ALPHA = 0.2
_DIM_COLOR = np.array([0.45, 0.55, 0.75])
# Display of a patch kept at the last stage that the query may not attend to.
_HALF_ALPHA = 0.5
_QUERY_COLOR = "red"
_ATTEND_COLOR = "gold"

#: Plots written by :func:`report_run` (file name -> what it shows).
REPORT_FILES = {
    "report_loss.png": "train and validation loss per epoch",
    "report_accuracy.png": "train accuracy and validation top-1 per epoch",
    "report_throughput.png": "training images per second per epoch",
    "report_tokens.png": "mean tokens per block and the keep ratios per epoch",
    "report_active_examples.png": "size of the active training set per epoch",
    "report_forgetting.png": "histogram of the selector's forgetting counts (checkpoint.pt)",
}


# --------------------------------------------------------------------------------------------------
# matplotlib plumbing
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    """A matplotlib ``Figure`` drawn by the Agg renderer (no pyplot, global backend untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, output_path: PathLike) -> Path:
    path = Path(output_path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output_path must end in .png, got {os.fspath(output_path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("wrote %s", path)
    return path


# --------------------------------------------------------------------------------------------------
# token and attention levels: the masks
# --------------------------------------------------------------------------------------------------


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


def _base_model(model: nn.Module) -> nn.Module:
    from .vit import unwrap_model, is_patched

    base = unwrap_model(model)
    if not is_patched(base):
        raise ValueError(
            f"model ({type(base).__name__}) is not patched; call trilevel.patch_vit(model) first"
        )
    return base


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
        model: A model patched by :func:`trilevel.vit.patch_vit` (wrappers such as DDP are looked
            through). Its training mode is restored afterwards; keep ratios are used as set.
        images: Normalised images ``(K, C, H, W)`` the model accepts.
        query_patch: Patch index (row-major in the patch grid) whose connections to show, the
            same for every image; None picks, per image, the patch with the highest [CLS]
            attention in the last pruning block (always one of the kept patches).

    Returns:
        A :class:`PruningTrace` (CPU tensors).

    Raises:
        ValueError: If the model is not patched, the images have the wrong shape, channels or
            size, or ``query_patch`` is not an index of the patch grid.
    """
    base = _base_model(model)
    images = _check_images(images, base)
    gh, gw = _grid_hw(base.patch_embed.grid_size)
    n = gh * gw
    query_patch = _check_query(query_patch, n)
    prune_layers = tuple(base.trilevel_prune_layers)
    last = base.blocks[prune_layers[-1]]
    P = int(base.num_prefix_tokens)
    was_training = base.training
    device = next(base.parameters()).device
    base.eval()
    try:
        with torch.no_grad():
            logits = model(images.to(device))
    finally:
        base.train(was_training)
    from .vit import get_trilevel_info

    info = get_trilevel_info(base)
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


# --------------------------------------------------------------------------------------------------
# token and attention levels: the picture
# --------------------------------------------------------------------------------------------------


def _channel_stats(value: Any, name: str, chans: int) -> np.ndarray:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or one value per channel, got {value!r}")
    if isinstance(value, (int, float)):
        arr = np.full(chans, float(value))
    else:
        try:
            arr = np.asarray([float(v) for v in value], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or one value per channel, got {value!r}") from None
        if arr.size == 1:
            arr = np.full(chans, arr[0])
        if arr.size != chans:
            raise ValueError(f"{name} has {arr.size} values, the images have {chans} channels")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "std" and np.any(arr <= 0):
        raise ValueError(f"std must be positive, got {value!r}")
    return arr


def _to_display(images: torch.Tensor, mean: Any, std: Any) -> np.ndarray:
    """Undo the normalisation: ``(K, H, W, 3)`` floats in [0, 1] (grayscale repeated)."""
    K, C, H, W = images.shape
    m = _channel_stats(mean, "mean", C)
    s = _channel_stats(std, "std", C)
    x = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1) * s + m
    x = np.clip(x, 0.0, 1.0)
    if C == 1:
        x = np.repeat(x, 3, axis=-1)
    elif C != 3:
        x = x.mean(axis=-1, keepdims=True).repeat(3, axis=-1)  # no natural colours: show the mean
    return x


def _upsample(grid_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    gh, gw = grid_mask.shape
    H, W = shape
    rows = np.minimum(np.arange(H) * gh // H, gh - 1)
    cols = np.minimum(np.arange(W) * gw // W, gw - 1)
    return grid_mask[rows][:, cols]


def _dim(img: np.ndarray, keep: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the pixels outside ``keep`` (pixel mask) towards the dim tint, leaving ``alpha`` of them."""
    dimmed = alpha * img + (1.0 - alpha) * _DIM_COLOR
    return np.where(keep[..., None], img, dimmed)


def _patch_rect(ax, index: int, grid: tuple[int, int], shape: tuple[int, int], **kwargs):
    from matplotlib.patches import Rectangle

    gh, gw = grid
    H, W = shape
    r, c = divmod(index, gw)
    ph, pw = H / gh, W / gw
    ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, **kwargs))


def visualize_pruning(
    model: nn.Module,
    images: torch.Tensor,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    output_path: PathLike,
    query_patch: Optional[int] = None,
    row_labels: Optional[Sequence[str]] = None,
) -> Path:
    """Draw which patch tokens and attention connections a patched ViT keeps, as a PNG grid.

    One row per image. Columns: the image; one column per pruning stage (block index in the
    title) where the patches dropped by that stage or earlier are dimmed (20% of the image over a
    grey-blue tint); a last column with the connections of one query patch after the last pruning
    block: the query outlined in red, the kept patches it may attend to shown in full with gold
    outlines, kept patches it may not attend to half-dimmed, pruned patches dimmed.

    The default query (``query_patch=None``) is, per image, the kept patch with the highest
    [CLS] attention in the last pruning block. See :func:`trace_pruning` for how the masks are
    obtained.

    Args:
        model: A model patched by :func:`trilevel.vit.patch_vit`; run in eval mode with its
            current keep ratios (its mode is restored).
        images: Normalised images ``(K, C, H, W)``.
        mean: Per-channel normalisation mean (or one number), pixel values in [0, 1].
        std: Per-channel normalisation standard deviation (or one number).
        output_path: PNG file to write (folders are created).
        query_patch: Row-major patch index of the query for every image, or None (see above).
            An index pruned in some image is drawn outlined with no connections.
        row_labels: Optional text per image, shown left of its row above the predicted class.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: If the model is not patched; ``images``, ``mean``, ``std``, ``query_patch``
            or ``row_labels`` do not fit (the bad value is named); ``output_path`` is not a
            ``.png``.
    """
    if Path(output_path).suffix.lower() != ".png":
        raise ValueError(f"output_path must end in .png, got {os.fspath(output_path)!r}")
    trace = trace_pruning(model, images, query_patch)
    K = images.shape[0]
    if row_labels is not None:
        row_labels = [str(v) for v in row_labels]
        if len(row_labels) != K:
            raise ValueError(f"row_labels has {len(row_labels)} entries for {K} images")
    pix = _to_display(images, mean, std)
    H, W = pix.shape[1:3]
    grid = trace.grid_size
    n = grid[0] * grid[1]
    S = len(trace.prune_layers)
    cols = 2 + S
    cell = 2.0
    fig = _new_figure(cell * cols, cell * K + 0.6)
    axes = fig.subplots(K, cols, squeeze=False)
    counts = trace.kept_counts
    for b in range(K):
        img = pix[b]
        ax = axes[b, 0]
        ax.imshow(img, interpolation="nearest")
        pred = f"pred {int(trace.predictions[b])}"
        ax.set_ylabel(pred if row_labels is None else f"{row_labels[b]}\n{pred}", fontsize=8)
        if b == 0:
            ax.set_title("input", fontsize=9)
        for s in range(S):
            keep = _upsample(trace.survival[b, s].numpy(), (H, W))
            ax = axes[b, 1 + s]
            ax.imshow(_dim(img, keep, _DIM_ALPHA), interpolation="nearest")
            if b == 0:
                ax.set_title(f"block {trace.prune_layers[s]}: {counts[s]}/{n} kept", fontsize=9)
        ax = axes[b, -1]
        kept = _upsample(trace.survival[b, -1].numpy(), (H, W))
        att = _upsample(trace.attended[b].numpy(), (H, W))
        shown = _dim(img, kept, _DIM_ALPHA)
        shown = np.where((kept & ~att)[..., None], _dim(img, att, _HALF_ALPHA), shown)
        ax.imshow(shown, interpolation="nearest")
        for idx in torch.nonzero(trace.attended[b].flatten()).flatten().tolist():
            _patch_rect(ax, idx, grid, (H, W), edgecolor=_ATTEND_COLOR, linewidth=0.8)
        q = int(trace.query[b])
        _patch_rect(ax, q, grid, (H, W), edgecolor=_QUERY_COLOR, linewidth=2.0,
                    linestyle="-" if trace.query_kept[b] else "--")
        n_att = int(trace.attended[b].sum())
        label = f"query {q}: {n_att}/{counts[-1]}" if trace.query_kept[b] else f"query {q} pruned"
        ax.set_xlabel(label, fontsize=8)
        if b == 0:
            ax.set_title(f"connections after block {trace.prune_layers[-1]}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("tokens kept per pruning stage (dropped: tinted); query (red) and its kept connections (gold)",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, output_path)


def visualize_checkpoint(
    checkpoint_path: PathLike,
    num_images: int,
    output_path: PathLike,
    data_dir: Optional[PathLike] = None,
    seed: int = 0,
    query_patch: Optional[int] = None,
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
) -> Path:
    """Rebuild a run's model from its checkpoint and draw :func:`visualize_pruning` for it.

    The model and the validation set (no augmentation) are rebuilt from the configuration stored
    in the checkpoint with :func:`trilevel.engine.build_model` and
    :func:`trilevel.data.build_datasets`, the model weights loaded, and the keep ratios set to
    the run's evaluation ratios (``eval_keep_ratio`` / ``eval_attn_keep_ratio`` or the schedules'
    final values) unless overridden. ``num_images`` validation images are drawn at random with
    ``seed``; each row is labelled with the validation index, the true and the predicted class.
    Runs on the CPU.

    Args:
        checkpoint_path: A ``checkpoint.pt`` written by :func:`trilevel.engine.train`.
        num_images: Number of validation images (rows), >= 1.
        output_path: PNG file to write.
        data_dir: Data folder; None: the one stored in the checkpoint's configuration.
        seed: Seed of the image choice.
        query_patch: See :func:`visualize_pruning`.
        keep_ratio: Token keep ratio to draw with; None: the run's evaluation ratio.
        attn_keep_ratio: Attention keep ratio to draw with; None: the run's evaluation ratio.

    Returns:
        The path of the written PNG.

    Raises:
        FileNotFoundError: Missing checkpoint or data.
        ValueError: Not a training checkpoint (``CheckpointError`` is a ``ValueError``), a dense
            run (nothing is pruned), ``num_images`` not in ``[1, validation set size]``, or
            another bad argument (named).
    """
    from .checkpoint import load_checkpoint
    from .data import build_datasets
    from .engine import TrainConfig, _checkpoint_config, _eval_ratios, build_model
    from .vit import set_keep_ratios

    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if Path(output_path).suffix.lower() != ".png":
        raise ValueError(f"output_path must end in .png, got {os.fspath(output_path)!r}")
    ckpt = load_checkpoint(checkpoint_path)
    stored = _checkpoint_config(ckpt, checkpoint_path)
    stored.update(resume=None, output_dir=None, device="cpu")
    if data_dir is not None:
        stored["data_dir"] = os.fspath(data_dir)
    config = TrainConfig.from_dict(stored, source=f"configuration stored in {checkpoint_path}")
    if config.dense:
        raise ValueError(f"{checkpoint_path} is a dense run: its model prunes nothing to visualise")
    if "model" not in ckpt:
        raise ValueError(f"{checkpoint_path} holds no model weights")
    _, val_ds, info = build_datasets(
        config.dataset, config.data_dir, train_subset=None, img_size=config.img_size, aug="none",
        in_chans=config.in_chans,
    )
    if num_images > len(val_ds):
        raise ValueError(f"num_images {num_images} exceeds the {len(val_ds)} validation images")
    model = build_model(config, info.num_classes, info.in_chans, info.img_size)
    model.load_state_dict(ckpt["model"])
    kr, akr = _eval_ratios(config)
    set_keep_ratios(model, kr if keep_ratio is None else keep_ratio,
                    akr if attn_keep_ratio is None else attn_keep_ratio)
    g = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(len(val_ds), generator=g)[:num_images].tolist()
    items = [val_ds[i] for i in indices]
    images = torch.stack([item[0] for item in items])
    labels = [f"val #{i}, class {int(item[1])}" for i, item in zip(indices, items)]
    logger.info("visualising %d validation images of %s (epoch %s)", num_images, checkpoint_path, ckpt.get("epoch"))
    return visualize_pruning(model, images, info.mean, info.std, output_path, query_patch, row_labels=labels)


# --------------------------------------------------------------------------------------------------
# run report
# --------------------------------------------------------------------------------------------------


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """Read a run's ``metrics.jsonl`` (one JSON object per epoch).

    Blank lines are skipped. When an epoch appears more than once (a resumed run that re-did an
    epoch), its last line wins. Rows are returned sorted by ``epoch``.

    Args:
        path: The ``metrics.jsonl`` file.

    Returns:
        One dict per epoch.

    Raises:
        FileNotFoundError: If the file does not exist (the path is named).
        ValueError: If it holds no rows, a line is not a JSON object, or a row lacks an integer
            ``epoch`` (path and line number are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a run folder written by 'trilevel train' has one)")
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno} must be a JSON object, got {type(row).__name__}")
            epoch = row.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int):
                raise ValueError(f"{path}:{lineno} has no integer 'epoch' (got {epoch!r})")
            by_epoch[epoch] = row
    if not by_epoch:
        raise ValueError(f"{path} is empty: no epoch has finished in this run yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> Optional[np.ndarray]:
    """Values of ``key`` per row as floats (NaN where missing or not a number); None if none is."""
    vals = []
    for r in rows:
        v = r.get(key)
        vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan"))
    arr = np.asarray(vals, dtype=np.float64)
    return None if np.all(np.isnan(arr)) else arr


def _line_plot(
    epochs: np.ndarray,
    curves: Sequence[tuple[str, Optional[np.ndarray]]],
    ylabel: str,
    title: str,
    path: Path,
    right: Sequence[tuple[str, Optional[np.ndarray]]] = (),
    right_label: str = "",
) -> Optional[Path]:
    curves = [(label, y) for label, y in curves if y is not None]
    right = [(label, y) for label, y in right if y is not None]
    if not curves and not right:
        logger.info("skipping %s: metrics.jsonl has none of its values", path.name)
        return None
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    handles = []
    for label, y in curves:
        handles += ax.plot(epochs, y, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if right:
        ax2 = ax.twinx()
        styles = (("tab:red", "--", "s"), ("tab:purple", ":", "^"), ("tab:brown", "-.", "v"))
        for (label, y), (color, style, marker) in zip(right, styles):
            handles += ax2.plot(epochs, y, linestyle=style, marker=marker, markersize=4, color=color, label=label)
        ax2.set_ylabel(right_label)
        ax2.set_ylim(0.0, 1.05)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    if len(epochs) and np.all(np.mod(epochs, 1) == 0):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)


def _forgetting_plot(run_dir: Path) -> Optional[Path]:
    """Histogram of the forgetting counts in ``checkpoint.pt``'s selector state, if there is one."""
    from .checkpoint import load_checkpoint

    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        logger.info("no %s: skipping the forgetting-count histogram", ckpt_path)
        return None
    try:
        ckpt = load_checkpoint(ckpt_path)
    except (ValueError, OSError) as e:
        logger.warning("cannot read %s (%s): skipping the forgetting-count histogram", ckpt_path, e)
        return None
    state = ckpt.get("selector") if isinstance(ckpt, Mapping) else None
    stats = state.get("stats") if isinstance(state, Mapping) else None
    counts = stats.get("forgetting_counts") if isinstance(stats, Mapping) else None
    if not isinstance(counts, torch.Tensor):
        logger.info("%s holds no forgetting-count selector state: skipping the histogram", ckpt_path)
        return None
    counts = counts.detach().cpu().long()
    select = torch.ones_like(counts, dtype=torch.bool)
    active = state.get("active_mask")
    if isinstance(active, torch.Tensor) and active.shape == counts.shape:
        select &= active.cpu().bool()
    presented = stats.get("presentations")
    if isinstance(presented, torch.Tensor) and presented.shape == counts.shape:
        select &= presented.cpu() > 0
    learned = stats.get("ever_learned")
    never = torch.zeros_like(select)
    if isinstance(learned, torch.Tensor) and learned.shape == counts.shape:
        never = select & ~learned.cpu().bool()
    values = counts[select & ~never].numpy()
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    top = int(values.max()) if values.size else 0
    bins = np.arange(-0.5, top + 1.5, 1.0)
    ax.hist(values, bins=bins, color="tab:blue", label=f"learned at least once ({values.size})")
    if int(never.sum()):
        ax.bar([top + 1], [int(never.sum())], width=0.9, color="tab:red",
               label=f"never learned ({int(never.sum())}; kept by the selector)")
        ax.set_xticks(list(range(0, top + 1, max(1, (top + 1) // 10))) + [top + 1])
        ax.set_xticklabels([str(t) for t in range(0, top + 1, max(1, (top + 1) // 10))] + ["never"])
    elif top < 20:
        ax.set_xticks(list(range(0, top + 1)))
    ax.set_xlabel("forgetting events since the last selector update")
    ax.set_ylabel("active examples presented")
    n_updates = state.get("num_updates")
    kind = state.get("kind", "selector")
    suffix = f" (selector updates so far: {n_updates})" if isinstance(n_updates, int) else ""
    ax.set_title(f"{kind} forgetting counts at epoch {ckpt.get('epoch', '?')}{suffix}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, run_dir / "report_forgetting.png")


def report_run(run_dir: PathLike) -> list[Path]:
    """Write PNG plots of a training run into its folder.

    From ``<run_dir>/metrics.jsonl`` (see :func:`read_metrics`), one PNG each (skipped, with a log
    line, when the metrics lack all of its values): ``report_loss.png`` (train/val loss),
    ``report_accuracy.png`` (train accuracy, val top-1, EMA top-1 if present),
    ``report_throughput.png`` (training images/s), ``report_tokens.png`` (mean tokens per block;
    token and attention keep ratios on a second axis), ``report_active_examples.png`` (active
    training-set size). When ``<run_dir>/checkpoint.pt`` holds forgetting-selector state:
    ``report_forgetting.png``, a histogram of the forgetting counts of the active examples
    presented since the last selector update, never-learned examples as a separate bar.

    Args:
        run_dir: A run folder written by ``trilevel train``.

    Returns:
        The paths of the written PNGs, in the order above.

    Raises:
        FileNotFoundError: If ``run_dir`` or its ``metrics.jsonl`` does not exist (named).
        ValueError: If ``metrics.jsonl`` is empty or malformed (path and line named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    rows = read_metrics(run_dir / "metrics.jsonl")
    epochs = np.asarray([r["epoch"] for r in rows], dtype=np.float64)
    name = run_dir.resolve().name
    s = lambda key: _series(rows, key)  # noqa: E731
    written = [
        _line_plot(epochs, [("train loss", s("train_loss")), ("val loss", s("val_loss"))],
                   "loss", f"{name}: loss", run_dir / "report_loss.png"),
        _line_plot(epochs, [("train acc", s("train_acc")), ("val top-1", s("val_top1")),
                            ("val top-1 (EMA)", s("val_top1_ema"))],
                   "accuracy (%)", f"{name}: accuracy", run_dir / "report_accuracy.png"),
        _line_plot(epochs, [("train images/s", s("train_images_per_s"))],
                   "images / s", f"{name}: training throughput", run_dir / "report_throughput.png"),
        _line_plot(epochs, [("mean tokens per block", s("mean_tokens_per_block"))],
                   "tokens", f"{name}: tokens and keep ratios", run_dir / "report_tokens.png",
                   right=[("keep ratio", s("keep_ratio")), ("attn keep ratio", s("attn_keep_ratio"))],
                   right_label="keep ratio (end of epoch)"),
        _line_plot(epochs, [("active examples", s("active_examples"))],
                   "examples", f"{name}: active training set", run_dir / "report_active_examples.png"),
        _forgetting_plot(run_dir),
    ]
    return [p for p in written if p is not None]


# --------------------------------------------------------------------------------------------------
# benchmark plot
# --------------------------------------------------------------------------------------------------


def plot_accuracy_vs_time(rows: Sequence[Mapping[str, Any]], output_path: PathLike) -> Path:
    """Scatter validation top-1 against training wall-clock time, one labelled point per run.

    A dashed line joins the runs on the Pareto front (no other run is both faster and more
    accurate). Rows whose ``val_top1`` or ``train_seconds`` is NaN/inf (a failed run) are left
    out with a warning.

    Args:
        rows: One mapping per run with ``name`` (str), ``val_top1`` (percent) and
            ``train_seconds`` (>= 0); other keys are ignored.
        output_path: PNG file to write.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: If ``rows`` is empty, a row is not a mapping or lacks a key or has a
            non-numeric or negative value (row index and key named), no row has finite values,
            or ``output_path`` is not a ``.png``.
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
        raise ValueError(f"rows must be a non-empty list of dicts with name, val_top1, train_seconds; got {rows!r}")
    if Path(output_path).suffix.lower() != ".png":
        raise ValueError(f"output_path must end in .png, got {os.fspath(output_path)!r}")
    points = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        for key in ("name", "val_top1", "train_seconds"):
            if key not in row:
                raise ValueError(f"rows[{i}] has no {key!r} (keys: {sorted(row)})")
        vals = []
        for key in ("val_top1", "train_seconds"):
            v = row[key]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"rows[{i}][{key!r}] must be a number, got {v!r}")
            vals.append(float(v))
        acc, secs = vals
        if not (math.isfinite(acc) and math.isfinite(secs)):
            logger.warning("leaving out %r: val_top1=%s, train_seconds=%s", row["name"], acc, secs)
            continue
        if secs < 0:
            raise ValueError(f"rows[{i}]['train_seconds'] must be >= 0, got {secs!r}")
        points.append((str(row["name"]), secs, acc))
    if not points:
        raise ValueError("no row has finite val_top1 and train_seconds")
    fig = _new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.asarray([p[1] for p in points])
    ys = np.asarray([p[2] for p in points])
    ax.scatter(xs, ys, s=30, color="tab:blue", zorder=3)
    for (name, x, y), dy in zip(points, _label_offsets(xs, ys, [p[0] for p in points])):
        moved = dy != _LABEL_DY  # a displaced label gets a leader line to its point
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(14 if moved else 4, dy), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "tab:gray", "lw": 0.5} if moved else None)
    front, best = [], -math.inf
    for x, y in sorted(zip(xs, ys), key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.plot(fx, fy, linestyle="--", color="tab:gray", linewidth=1, label="Pareto front", zorder=2)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("accuracy vs training time", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    fig.tight_layout()
    return _save(fig, output_path)


_LABEL_DY = 4.0  # default vertical offset of a scatter label from its point, in points


def _label_offsets(xs: np.ndarray, ys: np.ndarray, names: Sequence[str]) -> List[float]:
    """Vertical label offsets (points) that keep nearby scatter labels from overlapping.

    Labels are placed from the top point down; a label whose box (about 5 pt per character
    wide, 11 pt high; the data span about 300 x 200 pt of the axes) would overlap one already
    placed moves down in 11 pt steps.
    """
    def span(v: np.ndarray) -> float:
        return float(v.max() - v.min()) or 1.0

    px = (xs - xs.min()) / span(xs) * 300.0
    py = (ys - ys.min()) / span(ys) * 200.0
    placed: List[tuple[float, float, float]] = []  # (left, bottom, right) in points
    offsets = [_LABEL_DY] * len(names)
    for i in sorted(range(len(names)), key=lambda j: -py[j]):
        left, width, off = px[i] + 4.0, 5.0 * len(names[i]) + 10.0, _LABEL_DY
        while any(left < r and left + width > lft and abs(py[i] + off - b) < 11.0 for lft, b, r in placed):
            off -= 11.0
        placed.append((left, py[i] + off, left + width))
        offsets[i] = off
    return offsets


# --------------------------------------------------------------------------------------------------
# command-line helpers (wired by trilevel.cli)
# --------------------------------------------------------------------------------------------------


def _ratio_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``trilevel visualize`` (see :func:`visualize_checkpoint`) to ``parser``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a tri-level run")
    parser.add_argument("--images", "--num-images", dest="num_images", type=int, default=4, metavar="K",
                        help="validation images (rows) to draw (default 4)")
    parser.add_argument("--output", default=None,
                        help="PNG to write (default: pruning.png next to the checkpoint)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    parser.add_argument("--query-patch", type=int, default=None,
                        help="row-major patch index whose connections to draw "
                             "(default: per image, the kept patch with the highest [CLS] attention)")
    parser.add_argument("--keep-ratio", type=_ratio_arg, default=None,
                        help="token keep ratio (default: the run's evaluation ratio)")
    parser.add_argument("--attn-keep-ratio", type=_ratio_arg, default=None,
                        help="attention keep ratio (default: the run's evaluation ratio)")


def run_visualize(args: argparse.Namespace) -> int:
    """Run ``trilevel visualize`` from parsed arguments; returns exit status 0.

    Raises:
        FileNotFoundError, ValueError: As :func:`visualize_checkpoint` (the caller reports them).
    """
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "pruning.png")
    path = visualize_checkpoint(
        args.checkpoint, args.num_images, output, data_dir=args.data_dir, seed=args.seed,
        query_patch=args.query_patch, keep_ratio=args.keep_ratio, attn_keep_ratio=args.attn_keep_ratio,
    )
    logger.info("pruning visualisation written to %s", path)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``trilevel report`` (see :func:`report_run`) to ``parser``."""
    parser.add_argument("run_dir", help="run folder written by 'trilevel train' (holds metrics.jsonl)")


def run_report(args: argparse.Namespace) -> int:
    """Run ``trilevel report`` from parsed arguments; returns exit status 0.

    Raises:
        FileNotFoundError, ValueError: As :func:`report_run` (the caller reports them).
    """
    paths = report_run(args.run_dir)
    logger.info("%d plots written to %s", len(paths), args.run_dir)
    return 0
