"""``trilevel eval``: the validation top-1 of a run's checkpoint."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from ..options import OptionalFloat, OptionalInt
from ..training.config import DeviceName
from .common import EXIT_OK, parse_options, setup_logging, split_common_flags, usage_error

__all__ = ["EvalOptions", "main"]

logger = logging.getLogger("trilevel.cli")
PROG = "trilevel eval"


@dataclass
class EvalOptions:
    """Options of ``trilevel eval``.

    Attributes:
        checkpoint: checkpoint.pt written by trilevel train.
        keep_ratio: Token keep ratio; none: the run's evaluation ratio.
        attn_keep_ratio: Attention keep ratio; none: the run's evaluation ratio.
        data_dir: Data folder; none: the run's.
        val_subset: Evaluate on the first N validation examples only; none: all.
        batch_size: Batch size; none: twice the training batch size.
        device: Device.
        workers: DataLoader worker processes.
        ema: Evaluate the EMA weights.
        json: Print the result as JSON.
    """

    checkpoint: str
    keep_ratio: OptionalFloat = None
    attn_keep_ratio: OptionalFloat = None
    data_dir: Optional[str] = None
    val_subset: OptionalInt = None
    batch_size: OptionalInt = None
    device: DeviceName = "auto"
    workers: int = 0
    ema: bool = False
    json: bool = False


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel eval``; returns 0, or 2 on a bad option, checkpoint or data."""
    from ..training import evaluate_checkpoint

    common, rest = split_common_flags(argv)
    setup_logging(common.verbose)
    opts = parse_options(EvalOptions, rest, PROG,
                         "Rebuild the model stored in a trilevel checkpoint and print its validation top-1.")
    try:
        result = evaluate_checkpoint(
            opts.checkpoint, keep_ratio=opts.keep_ratio, attn_keep_ratio=opts.attn_keep_ratio,
            data_dir=opts.data_dir, batch_size=opts.batch_size, device=opts.device, workers=opts.workers,
            ema=opts.ema, val_subset=opts.val_subset,
        )
    except (ValueError, FileNotFoundError) as e:
        logger.debug("details", exc_info=True)
        return usage_error(PROG, str(e))
    if int(os.environ.get("RANK", "0")) == 0:
        if opts.json:
            print(json.dumps(result))
        else:
            print(
                f"top-1 {result['top1']:.2f}% on {result['images']} {result['dataset']} validation images "
                f"({result['model']}{', EMA' if result['ema'] else ''}, epoch {result['epoch']}, "
                f"keep_ratio {result['keep_ratio']:g}, attn_keep_ratio {result['attn_keep_ratio']:g})"
            )
    return EXIT_OK
