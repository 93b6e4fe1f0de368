"""Benchmark plot: :func:`plot_accuracy_vs_time` plots validation top-1 against training time,
one labelled point per run, with the runs on the Pareto front joined.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, List, Mapping, Sequence

import numpy as np

from .figures import PathLike, check_png_path, new_figure, save_figure

__all__ = ["plot_accuracy_vs_time", "label_offsets"]

logger = logging.getLogger(__name__)

_LABEL_DY = 4.0  # default vertical offset of a scatter label from its point, in points


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
    check_png_path(output_path)
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
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.asarray([p[1] for p in points])
    ys = np.asarray([p[2] for p in points])
    ax.scatter(xs, ys, s=30, color="tab:blue", zorder=3)
    for (name, x, y), dy in zip(points, label_offsets(xs, ys, [p[0] for p in points])):
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
    return save_figure(fig, output_path)


def label_offsets(xs: np.ndarray, ys: np.ndarray, names: Sequence[str]) -> List[float]:
    """Vertical label offsets (points) that keep nearby scatter labels from overlapping.

    Labels are placed from the top point down; a label whose box (about 5 pt per character
    wide, 11 pt high; the data span about 300 x 200 pt of the axes) would overlap one already
    placed moves down in 11 pt steps.

    Args:
        xs: The points' x values (data units).
        ys: The points' y values (data units), same length as ``xs``.
        names: The label of each point.

    Returns:
        One vertical offset per point, in points: 4.0 (just above the point) for a label left in
        place, lower for a label moved down.
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
