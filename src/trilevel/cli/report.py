"""``trilevel report``: PNG plots of a run folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import tyro
from typing_extensions import Annotated

from .common import EXIT_OK, parse_command, usage_error

__all__ = ["ReportOptions", "main"]


@dataclass
class ReportOptions:
    """Options of ``trilevel report``.

    Attributes:
        run_dir: Run folder written by trilevel train (holds metrics.jsonl).
    """

    run_dir: Annotated[str, tyro.conf.Positional]


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel report``; returns 0, or 2 when the folder or its metrics are missing or bad."""
    from ..viz import report_run

    opts = parse_command(ReportOptions, argv, "trilevel report",
                         "Loss/accuracy curves, images/s, tokens per block, active-set size and the "
                         "forgetting-count histogram, written into the run folder.")
    try:
        paths = report_run(opts.run_dir)
    except (ValueError, FileNotFoundError) as e:
        return usage_error("trilevel report", str(e))
    logging.getLogger("trilevel.cli").info("%d plots written to %s", len(paths), opts.run_dir)
    return EXIT_OK
