"""Accuracy against wall-clock curves of a time-to-accuracy bench (:mod:`trilevel.bench.tta`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from .figures import PathLike, check_png_path, new_figure, save_figure

__all__ = ["plot_tta_curves"]


def plot_tta_curves(curves: Mapping[str, Any], output_path: PathLike, target: Optional[float] = None) -> Path:
    """One line per configuration: mean top-1 against mean training wall-clock, one point per budget.

    Error bars are one standard error of the mean over seeds; each point is labelled with its
    budget; a dashed horizontal line marks the time-to-accuracy target.

    Args:
        curves: ``{name: Curve}`` from :func:`trilevel.bench.tta.build_curves`.
        output_path: PNG file to write.
        target: The target top-1 (percent), or None.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: If there is no curve or ``output_path`` is not a ``.png``.
    """
    if not curves:
        raise ValueError("plot_tta_curves needs at least one curve")
    check_png_path(output_path)
    fig = new_figure(7.2, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        xs = [p.seconds_mean for p in curve.points]
        ys = [p.top1_mean for p in curve.points]
        es = [p.top1_sem for p in curve.points]
        line = ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, lw=1.5, label=name,
                           ls="--" if name == "dense" else "-")
        color = line[0].get_color()
        for p in curve.points:
            ax.annotate(f"{p.budget:g}", (p.seconds_mean, p.top1_mean), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=color)
    if target is not None:
        ax.axhline(target, color="0.4", lw=0.8, ls=":", label=f"target {target:.2f}%")
    ax.set_xlabel("training wall-clock (s), mean over seeds")
    ax.set_ylabel("validation top-1 (%), mean +- s.e.m.")
    ax.set_title("accuracy against time (labels: budget in dense epochs)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, output_path)
