"""Pictures of what the three levels remove, and plots of a training run.

* :func:`visualize_pruning` draws, for a few images, which patch tokens survive each pruning stage
  of a model patched by :func:`trilevel.patch` and which connections one query patch keeps
  at the last stage; :func:`visualize_checkpoint` does the same for a run's ``checkpoint.pt``.
  :func:`pruning_figure` is that drawing as a figure (:func:`figure_to_rgb` renders it to pixels);
  :func:`render_pruning_picture` draws the live pruning picture of ``trilevel train
  --log-tensorboard`` (the command hands it to :func:`trilevel.training.train` as
  ``picture_renderer``); :func:`sample_images` picks the validation images by seed.
  :func:`trace_pruning` and :func:`stage_survival_masks` compute the drawn masks (no plotting).
* :func:`report_run` turns a run folder's ``metrics.jsonl`` (and the example selector's state in
  its ``checkpoint.pt``) into PNG plots next to it; :func:`write_report_html` gathers them, the
  resolved ``config.yaml``, ``summary.json`` and the per-epoch metrics into one self-contained
  ``report.html``.
* :func:`plot_accuracy_vs_time` plots validation top-1 against training time for a benchmark;
  :func:`plot_accuracy_vs_throughput` plots pruned inference (top-1 against images/s per keep ratio).

This package is a library only; the ``trilevel visualize`` and ``trilevel report`` commands are
in :mod:`trilevel.cli`.

Plotting uses matplotlib's Agg renderer through an explicit ``FigureCanvasAgg`` on each
``Figure``: nothing is imported from matplotlib until a plotting function runs, pyplot is never
used, and the process-wide backend is left untouched, so these functions are safe in headless
jobs, in threads and inside notebooks alike.

The method visualised is that of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (token level: [CLS]-attention top-k
pruning; attention level: per-query top-k connection masks; example level: forgetting events).
"""

from .curves import plot_accuracy_vs_throughput, plot_flops_curves, plot_tta_curves
from .figures import figure_to_rgb
from .plots import plot_accuracy_vs_time
from .html_report import write_report_html
from .pruning import pruning_figure, render_pruning_picture, sample_images, visualize_checkpoint, visualize_pruning
from .report import REPORT_FILES, read_metrics, report_run
from .trace import PruningTrace, stage_survival_masks, trace_pruning

__all__ = [
    "render_pruning_picture",
    "PruningTrace",
    "stage_survival_masks",
    "trace_pruning",
    "figure_to_rgb",
    "pruning_figure",
    "sample_images",
    "visualize_pruning",
    "visualize_checkpoint",
    "write_report_html",
    "read_metrics",
    "report_run",
    "REPORT_FILES",
    "plot_accuracy_vs_time",
    "plot_tta_curves",
    "plot_accuracy_vs_throughput",
    "plot_flops_curves",
]
