"""Pictures of which patch tokens and attention connections a patched ViT keeps.

:func:`pruning_figure` draws, for a few images, which patch tokens survive each pruning stage
of a model patched by :func:`trilevel.patch` and which connections one query patch keeps
at the last stage (a family that records no token positions, such as Swin, gets what each stage
ran instead); :func:`visualize_pruning` writes that drawing as a PNG and
:func:`visualize_checkpoint` does so for a run's ``checkpoint.pt`` (``trilevel visualize``); the
live pruning picture of ``trilevel train --log-tensorboard`` renders the same figure to pixels.
:func:`sample_images` picks the validation images (by seed). The masks come from
:func:`trilevel.viz.trace.trace_pruning`.

The method drawn is that of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (token level: [CLS]-attention
top-k pruning; attention level: per-query top-k connection masks).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .figures import PathLike, check_png_path, new_figure, save_figure
from .trace import trace_pruning

__all__ = ["pruning_figure", "sample_images", "visualize_pruning", "visualize_checkpoint"]

logger = logging.getLogger(__name__)

# Display of a dropped patch: 20% of the image over 80% of a grey-blue tint (a tint, not a grey,
# so that both black and white dropped patches stand out from the kept grayscale ones).
_DIM_ALPHA = 0.2
_DIM_COLOR = np.array([0.45, 0.55, 0.75])
# Display of a patch kept at the last stage that the query may not attend to.
_HALF_ALPHA = 0.5
_QUERY_COLOR = "red"
_ATTEND_COLOR = "gold"


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


def pruning_figure(
    model: nn.Module,
    images: torch.Tensor,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    query_patch: Optional[int] = None,
    row_labels: Optional[Sequence[str]] = None,
):
    """Draw which patch tokens and attention connections a patched ViT keeps, as a figure.

    The one drawing behind :func:`visualize_pruning` (a PNG file), ``trilevel visualize`` and the
    pruning picture of ``trilevel train --log-tensorboard`` / ``--log-wandb`` (an RGB array via
    :func:`trilevel.viz.figures.figure_to_rgb`). One row per image. Columns: the image; one column per pruning stage (block index in the
    title) where the patches dropped by that stage or earlier are dimmed (20% of the image over a
    grey-blue tint); a last column with the connections of one query patch after the last pruning
    block: the query outlined in red, the kept patches it may attend to shown in full with gold
    outlines, kept patches it may not attend to half-dimmed, pruned patches dimmed.

    The default query (``query_patch=None``) is, per image, the kept patch with the highest
    [CLS] attention in the last pruning block. See :func:`trace_pruning` for how the masks are
    obtained.

    Args:
        model: A model patched by :func:`trilevel.patch`; run in eval mode with its current
            keep ratios (its mode is restored). A family that does not trace tokens
            (``ModelFamily.traces_tokens`` False: Swin, a registered family of your own) is drawn
            as its ``survival_masks``: the input, then per stage the tokens that stage ran.
        images: Normalised images ``(K, C, H, W)``.
        mean: Per-channel normalisation mean (or one number), pixel values in [0, 1].
        std: Per-channel normalisation standard deviation (or one number).
        query_patch: Row-major patch index of the query for every image, or None (see above).
            An index pruned in some image is drawn outlined with no connections.
        row_labels: Optional text per image, shown left of its row above the predicted class.

    Returns:
        A matplotlib ``Figure`` (Agg canvas, 2 inches per panel at 100 dpi: ``2 + stages``
        columns, one row per image).

    Raises:
        ValueError: If the model is not patched; ``images``, ``mean``, ``std``, ``query_patch``
            or ``row_labels`` do not fit (the bad value is named).
    """
    from ..models import family_of, unwrap_model

    K = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() == 4 else None
    if row_labels is not None:
        row_labels = [str(v) for v in row_labels]
        if K is not None and len(row_labels) != K:
            raise ValueError(f"row_labels has {len(row_labels)} entries for {K} images")
    if not family_of(model).traces_tokens:  # no token positions (Swin): draw what each stage ran
        return _stage_figure(unwrap_model(model), images, mean, std, row_labels)
    trace = trace_pruning(model, images, query_patch)
    K = images.shape[0]
    pix = _to_display(images, mean, std)
    H, W = pix.shape[1:3]
    grid = trace.grid_size
    n = grid[0] * grid[1]
    S = len(trace.prune_layers)
    cols = 2 + S
    cell = 2.0
    fig = new_figure(cell * cols, cell * K + 0.6)
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
    return fig


@torch.no_grad()
def _stage_figure(model: nn.Module, images: torch.Tensor, mean: Any, std: Any, row_labels: Optional[Sequence[str]]):
    """One row per image: the input, then per stage the tokens whose windows ran (others tinted)."""
    from ..models import family_of, is_patched

    if not is_patched(model):
        raise ValueError(f"model ({type(model).__name__}) is not patched; call trilevel.patch(model) first")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (K, C, H, W), got {getattr(images, 'shape', type(images))}")
    was_training = model.training
    model.eval()
    try:
        logits = model(images.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    stages = family_of(model).survival_masks(model)
    pix = _to_display(images, mean, std)
    K, (H, W) = images.shape[0], pix.shape[1:3]
    fig = new_figure(2.0 * (1 + len(stages)), 2.0 * K + 0.6)
    axes = fig.subplots(K, 1 + len(stages), squeeze=False)
    for b in range(K):
        axes[b, 0].imshow(pix[b], interpolation="nearest")
        pred = f"pred {int(logits[b].argmax())}"
        axes[b, 0].set_ylabel(pred if row_labels is None else f"{row_labels[b]}\n{pred}", fontsize=8)
        for s, (label, mask) in enumerate(stages):
            m = mask[b if mask.shape[0] > 1 else 0].numpy()
            axes[b, 1 + s].imshow(_dim(pix[b], _upsample(m, (H, W)), _DIM_ALPHA), interpolation="nearest")
            if b == 0:
                axes[b, 1 + s].set_title(f"{label}: {100.0 * m.mean():.0f}% ran", fontsize=9)
    axes[0, 0].set_title("input", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("tokens whose windows ran in every block of the stage (skipped: tinted)", fontsize=9)
    fig.tight_layout()
    return fig


def visualize_pruning(
    model: nn.Module,
    images: torch.Tensor,
    mean: Union[float, Sequence[float]],
    std: Union[float, Sequence[float]],
    output_path: PathLike,
    query_patch: Optional[int] = None,
    row_labels: Optional[Sequence[str]] = None,
) -> Path:
    """Draw :func:`pruning_figure` and write it as a PNG grid.

    One row per image. Columns: the image; one column per pruning stage (block index in the
    title) where the patches dropped by that stage or earlier are dimmed; a last column with the
    connections of one query patch after the last pruning block (see :func:`pruning_figure`).

    Args:
        model: A patched model, as for :func:`pruning_figure`.
        images: Normalised images ``(K, C, H, W)``.
        mean: Normalisation mean, as for :func:`pruning_figure`.
        std: Normalisation standard deviation, likewise.
        output_path: PNG file to write (folders are created).
        query_patch: The query patch, as for :func:`pruning_figure`.
        row_labels: Optional text per image (see :func:`pruning_figure`).

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: As :func:`pruning_figure`; or ``output_path`` is not a ``.png``.
    """
    check_png_path(output_path)
    return save_figure(pruning_figure(model, images, mean, std, query_patch, row_labels), output_path)


def _check_sample_args(num_images: Any, seed: Any) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def sample_images(dataset: Any, num_images: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Draw ``num_images`` distinct items of a validation set at random, with a label per row.

    The choice depends on ``seed`` only (a private ``torch.Generator``; the global RNG is not
    touched), so the same seed gives the same images in ``trilevel visualize`` and in every
    epoch's pruning picture of a run.

    Args:
        dataset: Items ``(image (C, H, W) normalised, target int, ...)``.
        num_images: How many, in ``[1, len(dataset)]``.
        seed: Seed of the choice.

    Returns:
        ``(images (K, C, H, W), labels)``, each label ``"val #<index>, class <target>"``.

    Raises:
        ValueError: If ``num_images`` or ``seed`` is not an integer, or ``num_images`` is not in
            ``[1, len(dataset)]`` (named).
    """
    _check_sample_args(num_images, seed)
    if num_images > len(dataset):
        raise ValueError(f"num_images {num_images} exceeds the {len(dataset)} validation images")
    g = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(len(dataset), generator=g)[:num_images].tolist()
    items = [dataset[i] for i in indices]
    images = torch.stack([item[0] for item in items])
    return images, [f"val #{i}, class {int(item[1])}" for i, item in zip(indices, items)]


_PICTURE_SETS: dict = {}


def render_pruning_picture(model: nn.Module, val_set: Any, data_info: Any, seed: int, num_images: int) -> np.ndarray:
    """The live logs' pruning picture (:func:`pruning_figure` of ``num_images`` validation images chosen
    by ``seed``, the same ones every time) as an RGB ``uint8`` array ``(H, W, 3)``."""
    from .figures import figure_to_rgb

    key = (id(val_set), seed, num_images)
    if key not in _PICTURE_SETS:
        _PICTURE_SETS.clear()
        _PICTURE_SETS[key] = sample_images(val_set, min(num_images, len(val_set)), seed)
    images, labels = _PICTURE_SETS[key]
    return figure_to_rgb(pruning_figure(model, images, data_info.mean, data_info.std, row_labels=labels))


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

    The model and the validation set (no augmentation) are rebuilt on the CPU by
    :func:`trilevel.training.run.load_run` from the configuration stored in the checkpoint, with
    the weights loaded and the keep ratios set to the run's evaluation ratios
    (``eval_keep_ratio`` / ``eval_attn_keep_ratio`` or the schedules' final values) unless
    overridden. ``num_images`` validation images are drawn at random with ``seed``; each row is
    labelled with the validation index, the true and the predicted class.

    Args:
        checkpoint_path: A ``checkpoint.pt`` written by a ``trilevel train`` run.
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
    from ..training.run import load_run
    from ..models import set_keep_ratios

    _check_sample_args(num_images, seed)  # before the (slow) rebuild
    check_png_path(output_path)
    overrides = None if data_dir is None else {"data_dir": os.fspath(data_dir)}
    run = load_run(checkpoint_path, overrides, device="cpu")
    if run.config.dense:
        raise ValueError(f"{checkpoint_path} is a dense run: its model prunes nothing to visualise")
    images, labels = sample_images(run.val_set, num_images, seed)
    kr, akr = run.eval_ratios
    set_keep_ratios(run.model, kr if keep_ratio is None else keep_ratio,
                    akr if attn_keep_ratio is None else attn_keep_ratio)
    info = run.data_info
    logger.info("visualising %d validation images of %s (epoch %s)", num_images, checkpoint_path, run.epoch)
    return visualize_pruning(run.model, images, info.mean, info.std, output_path, query_patch, row_labels=labels)
