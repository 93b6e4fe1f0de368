"""``trilevel eval``: the validation top-1 of a run's checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

from ..options import OptionalInt
from ..training.config import DeviceName
from .common import EXIT_OK, CheckpointOptions, log_outputs, parse_command, usage_error

__all__ = ["EvalOptions", "main"]


@dataclass
class EvalOptions(CheckpointOptions):
    """Options of ``trilevel eval`` (and those of :class:`~trilevel.cli.common.CheckpointOptions`).

    Attributes:
        val_subset: Evaluate on the first N validation examples only; none: all.
        batch_size: Batch size; none: twice the training batch size.
        device: Device.
        workers: DataLoader worker processes.
        ema: Evaluate the EMA weights.
        json: Print the result as JSON.
    """

    val_subset: OptionalInt = None
    batch_size: OptionalInt = None
    device: DeviceName = "auto"
    workers: int = 0
    ema: bool = False
    json: bool = False


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel eval``; returns 0, or 2 on a bad option, checkpoint or data."""
    from ..training import evaluate_checkpoint

    opts = parse_command(EvalOptions, argv, "trilevel eval",
                         "Rebuild the model stored in a trilevel checkpoint and print its validation top-1.")
    try:
        result = evaluate_checkpoint(
            opts.checkpoint, keep_ratio=opts.keep_ratio, attn_keep_ratio=opts.attn_keep_ratio,
            data_dir=opts.data_dir, batch_size=opts.batch_size, device=opts.device, workers=opts.workers,
            ema=opts.ema, val_subset=opts.val_subset,
        )
    except (ValueError, OSError) as e:
        return usage_error("trilevel eval", str(e))
    if int(os.environ.get("RANK", "0")) == 0:
        if opts.json:
            print(json.dumps(result))
        else:
            print(
                f"top-1 {result['top1']:.2f}% on {result['images']} {result['dataset']} validation images "
                f"({result['model']}{', EMA' if result['ema'] else ''}, epoch {result['epoch']}, "
                f"keep_ratio {result['keep_ratio']:g}, attn_keep_ratio {result['attn_keep_ratio']:g})"
            )
    log_outputs(None)
    return EXIT_OK
