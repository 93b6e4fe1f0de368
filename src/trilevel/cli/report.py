"""``trilevel report``: PNG plots of a run folder and one self-contained ``report.html``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import tyro
from typing_extensions import Annotated

from .common import EXIT_OK, log_outputs, parse_command, usage_error

__all__ = ["ReportOptions", "main"]


@dataclass
class ReportOptions:
    """Options of ``trilevel report``.

    Attributes:
        run_dir: Run folder written by trilevel train (holds metrics.jsonl).
    """

    run_dir: Annotated[str, tyro.conf.Positional]


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel report``; returns 0, or 2 when the folder or its metrics are missing or bad.

    Writes the plots of :func:`trilevel.viz.report_run` into the run folder, then
    ``report.html`` (:func:`trilevel.viz.write_report_html`): every PNG of the folder embedded
    (``pruning.png`` of ``trilevel visualize`` too), ``summary.json``, the per-epoch metrics and the
    resolved ``config.yaml``, in one file to open in a browser or attach.
    """
    from ..viz import report_run, write_report_html

    opts = parse_command(ReportOptions, argv, "trilevel report",
                         "Loss/accuracy curves, images/s, tokens per block, active-set size and the "
                         "forgetting-count histogram, written into the run folder, and report.html: "
                         "one self-contained page of them with summary.json, the per-epoch metrics "
                         "and config.yaml.")
    try:
        paths = report_run(opts.run_dir)
        page = write_report_html(opts.run_dir)
    except (ValueError, OSError) as e:
        return usage_error("trilevel report", str(e))
    log_outputs(opts.run_dir, [page.name] + [p.name for p in paths])
    return EXIT_OK
