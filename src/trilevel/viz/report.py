"""Plots of a training run: :func:`report_run` turns a run folder's ``metrics.jsonl`` (and the
example selector's state in its ``checkpoint.pt``) into PNG plots next to it.

The forgetting-count histogram shows the example level of Kong et al., "Peeling the Onion:
Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer Training", AAAI 2023
(examples ranked by forgetting events, after Toneva et al., "An Empirical Study of Example
Forgetting during Deep Neural Network Learning", ICLR 2019).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .figures import PathLike, new_figure, save_figure

__all__ = ["REPORT_FILES", "read_metrics", "report_run"]

logger = logging.getLogger(__name__)

#: Plots written by :func:`report_run` (file name -> what it shows).
REPORT_FILES = {
    "report_loss.png": "train and validation loss per epoch",
    "report_accuracy.png": "train accuracy and validation top-1 per epoch",
    "report_throughput.png": "training images per second per epoch",
    "report_tokens.png": "mean tokens per block and the keep ratios per epoch",
    "report_active_examples.png": "size of the active training set per epoch",
    "report_forgetting.png": "histogram of the selector's forgetting counts (checkpoint.pt)",
}


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
    fig = new_figure(6.4, 4.0)
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
    return save_figure(fig, path)


def _forgetting_plot(run_dir: Path) -> Optional[Path]:
    """Histogram of the forgetting counts in ``checkpoint.pt``'s selector state, if there is one."""
    from ..checkpoint import load_checkpoint
    from ..training.run import checkpoint_epoch

    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        logger.info("no %s: skipping the forgetting-count histogram", ckpt_path)
        return None
    try:
        ckpt = load_checkpoint(ckpt_path)
    except (ValueError, OSError) as e:
        logger.warning("cannot read %s (%s): skipping the forgetting-count histogram", ckpt_path, e)
        return None
    algorithm = ckpt.get("algorithm") if isinstance(ckpt, Mapping) else None
    state = algorithm.get("selector") if isinstance(algorithm, Mapping) else None
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
    fig = new_figure(6.4, 4.0)
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
    ax.set_title(f"{kind} forgetting counts at epoch {checkpoint_epoch(ckpt)}{suffix}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, run_dir / "report_forgetting.png")


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
