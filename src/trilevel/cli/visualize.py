"""``trilevel visualize``: which patches survive each pruning stage, for K validation images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import tyro
from typing_extensions import Annotated

from ..options import OptionalInt
from .common import EXIT_OK, CheckpointOptions, log_outputs, parse_command, usage_error

__all__ = ["VisualizeOptions", "main"]


@dataclass
class VisualizeOptions(CheckpointOptions):
    """Options of ``trilevel visualize`` (and those of :class:`~trilevel.cli.common.CheckpointOptions`).

    Attributes:
        images: Validation images (rows) to draw.
        output: PNG to write; none: pruning.png next to the checkpoint.
        seed: Seed of the image choice.
        query_patch: Row-major patch index whose kept connections to draw; none: per image, the kept patch with the highest [CLS] attention.
    """

    images: Annotated[int, tyro.conf.arg(aliases=("--num-images",))] = 4
    output: Optional[str] = None
    seed: int = 0
    query_patch: OptionalInt = None


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel visualize``; returns 0, or 2 on a bad option, checkpoint or data."""
    from ..viz import visualize_checkpoint

    opts = parse_command(VisualizeOptions, argv, "trilevel visualize",
                         "For K validation images: which patches survive each pruning stage (dropped ones "
                         "dimmed) and the attention connections kept for one query patch.")
    output = opts.output or os.path.join(os.path.dirname(os.path.abspath(opts.checkpoint)), "pruning.png")
    try:
        path = visualize_checkpoint(
            opts.checkpoint, opts.images, output, data_dir=opts.data_dir, seed=opts.seed,
            query_patch=opts.query_patch, keep_ratio=opts.keep_ratio, attn_keep_ratio=opts.attn_keep_ratio,
        )
    except (ValueError, OSError) as e:
        return usage_error("trilevel visualize", str(e))
    log_outputs(str(path.parent), [path.name])
    return EXIT_OK
