"""Shared matplotlib plumbing of :mod:`trilevel.viz`: new Agg figures and saving them as PNG.

Plotting uses matplotlib's Agg renderer through an explicit ``FigureCanvasAgg`` on each
``Figure``: nothing is imported from matplotlib until a figure is made, pyplot is never used, and
the process-wide backend is left untouched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["PathLike", "check_png_path", "figure_to_rgb", "new_figure", "save_figure"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def check_png_path(output_path: PathLike) -> None:
    """Check that a figure's output path names a PNG file.

    Args:
        output_path: The file a figure will be written to.

    Raises:
        ValueError: If ``output_path`` does not end in ``.png`` (case-insensitive); the path is named.
    """
    if Path(output_path).suffix.lower() != ".png":
        raise ValueError(f"output_path must end in .png, got {os.fspath(output_path)!r}")


def new_figure(width: float, height: float):
    """Create a matplotlib ``Figure`` drawn by the Agg renderer (no pyplot, global backend untouched).

    Args:
        width: Figure width in inches.
        height: Figure height in inches.

    Returns:
        A ``matplotlib.figure.Figure`` at 100 dpi with a ``FigureCanvasAgg`` attached.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, output_path: PathLike) -> Path:
    """Write a figure as a PNG file, creating its folders, and log the path.

    Args:
        fig: A ``Figure`` from :func:`new_figure`.
        output_path: PNG file to write.

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If ``output_path`` does not end in ``.png``.
    """
    check_png_path(output_path)
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("wrote %s", path)
    return path


def figure_to_rgb(fig) -> np.ndarray:
    """Render a figure into an RGB array (the pixels :func:`save_figure` would write).

    Args:
        fig: A ``Figure`` from :func:`new_figure`.

    Returns:
        A ``uint8`` array ``(H, W, 3)``, ``H`` and ``W`` in pixels (inches x 100 dpi), alpha dropped.
    """
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba(), dtype=np.uint8)[..., :3])
