"""Accuracy curves of a budget bench (:mod:`trilevel.bench.tta`): against wall-clock and against compute.

:func:`plot_tta_curves` draws top-1 against training wall-clock (time to accuracy: the method
times this implementation on this machine); :func:`plot_flops_curves` draws it against training
compute from the analytic FLOP model (FLOPs to accuracy: the method, the same on any hardware).
Both draw through one helper; only the x axis differs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .figures import PathLike, check_png_path, new_figure, save_figure

__all__ = ["plot_tta_curves", "plot_flops_curves", "plot_accuracy_vs_throughput"]

#: Per x axis of :meth:`trilevel.bench.tta.Curve.series`: the axis label and the title.
_AXES = {
    "seconds": ("training wall-clock (s), mean over seeds", "accuracy against time"),
    "compute": ("training compute (dense-epoch equivalents, analytic FLOP model), mean over seeds",
                "accuracy against training compute"),
}


def _plot_curves(curves: Mapping[str, Any], output_path: PathLike, target: Optional[float], x: str,
                 caller: str, speedups: Optional[Mapping[str, str]] = None) -> Path:
    """Draw one line per configuration, top-1 against the curves' axis ``x``, and write the PNG.

    Points whose cost on ``x`` is unknown (NaN) are left out; error bars are the 95% Student t
    interval of the mean over seeds (none for one seed); each point is labelled with its budget; a
    dotted horizontal line marks ``target``; ``speedups`` (name -> text, e.g. ``">=1.98x"``) go
    into the legend. ``caller`` names the public function in errors.
    """
    if not curves:
        raise ValueError(f"{caller} needs at least one curve")
    check_png_path(output_path)
    drawn = {name: [(cost, p) for cost, p in zip(curve.series(x=x)[0], curve.points) if math.isfinite(cost)]
             for name, curve in curves.items()}
    if not any(drawn.values()):
        raise ValueError(f"{caller}: no curve has a point with a known {x!r} value")
    xlabel, title = _AXES[x]
    fig = new_figure(7.2, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for name, pts in drawn.items():
        if not pts:
            continue
        yerr = [p.top1_ci95 if math.isfinite(p.top1_ci95) else 0.0 for _, p in pts]
        label = name if not speedups or name not in speedups else f"{name} ({speedups[name]})"
        line = ax.errorbar([c for c, _ in pts], [p.top1_mean for _, p in pts], yerr=yerr,
                           marker="o", ms=4, capsize=3, lw=1.5, label=label, ls="--" if name == "dense" else "-")
        color = line[0].get_color()
        for cost, p in pts:
            ax.annotate(f"{p.budget:g}", (cost, p.top1_mean), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=color)
    if target is not None:
        ax.axhline(target, color="0.4", lw=0.8, ls=":", label=f"target {target:.2f}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%), mean over seeds, 95% CI")
    ax.set_title(f"{title} (labels: budget in dense epochs)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, output_path)


def plot_tta_curves(curves: Mapping[str, Any], output_path: PathLike, target: Optional[float] = None,
                    speedups: Optional[Mapping[str, str]] = None) -> Path:
    """One line per configuration: mean top-1 against mean training wall-clock, one point per budget.

    Error bars are the 95% Student t interval of the mean over seeds (none for one seed); each
    point is labelled with its budget; a dotted horizontal line marks the time-to-accuracy target.

    Args:
        curves: ``{name: Curve}`` from :func:`trilevel.bench.tta.build_curves`.
        output_path: PNG file to write.
        target: The target top-1 (percent), or None.
        speedups: Text per configuration for the legend (e.g. ``">=1.50x"``), or None.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: If there is no curve or ``output_path`` is not a ``.png``.
    """
    return _plot_curves(curves, output_path, target, "seconds", "plot_tta_curves", speedups)


def plot_flops_curves(curves: Mapping[str, Any], output_path: PathLike, target: Optional[float] = None,
                      speedups: Optional[Mapping[str, str]] = None) -> Path:
    """FLOPs to accuracy: mean top-1 against mean training compute, a line per configuration.

    The x axis is the compute each budget's runs used (``dense_epochs_used``: forward FLOPs of
    the analytic model over train-set size x dense forward FLOPs per image), so the picture is the
    same on any hardware. Drawn like :func:`plot_tta_curves` (95% CI error bars, budget labels,
    target line, speedups in the legend); points with unknown compute are left out.

    Args:
        curves: The bench's curves by configuration (:func:`trilevel.bench.tta.build_curves`),
            their points' ``compute_mean`` in dense-epoch equivalents.
        output_path: Where the ``.png`` goes (folders created).
        target: A top-1 (percent) to mark with a dotted line; None for none.
        speedups: Text per configuration for the legend (e.g. ``">=1.98x [95% CI 1.5-2.4]"``), or None.

    Returns:
        ``output_path`` as a ``Path``, once written.

    Raises:
        ValueError: On no curves, no point with known compute, or a path not ending in ``.png``.
    """
    return _plot_curves(curves, output_path, target, "compute", "plot_flops_curves", speedups)


def plot_accuracy_vs_throughput(sweeps: Mapping[str, Sequence[Mapping[str, Any]]], output_path: PathLike) -> Path:
    """Pruned inference: top-1 against forward images/s, a line per model, a point per keep ratio.

    What EViT (Liang et al., ICLR 2022) reports for a model evaluated with fewer tokens: how much
    accuracy each step of throughput costs. Each point is labelled with its keep ratio.

    Args:
        sweeps: ``{model name: results}``, each result a dict of
            :func:`trilevel.training.evaluation.evaluate_checkpoint_sweep` (``keep_ratio``,
            ``top1`` in percent, ``images_per_s``).
        output_path: Where the ``.png`` goes (folders created).

    Returns:
        ``output_path`` as a ``Path``, once written.

    Raises:
        ValueError: On no sweep, a result without those keys, or a path not ending in ``.png``.
    """
    if not sweeps or not all(sweeps.values()):
        raise ValueError("plot_accuracy_vs_throughput needs at least one non-empty sweep")
    for name, results in sweeps.items():
        for r in results:
            if not all(isinstance(r.get(k), (int, float)) for k in ("keep_ratio", "top1", "images_per_s")):
                raise ValueError(f"sweep {name!r}: every result needs keep_ratio, top1 and images_per_s, got {dict(r)!r}")
    check_png_path(output_path)
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for name, results in sweeps.items():
        pts = sorted(results, key=lambda r: r["images_per_s"])
        line = ax.plot([r["images_per_s"] for r in pts], [r["top1"] for r in pts], marker="o", ms=4, lw=1.5,
                       label=name)
        for r in pts:
            ax.annotate(f"{r['keep_ratio']:g}", (r["images_per_s"], r["top1"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=line[0].get_color())
    ax.set_xlabel("forward throughput (images/s)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("pruned inference (labels: token keep ratio)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, output_path)
