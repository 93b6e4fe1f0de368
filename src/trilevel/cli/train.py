"""``trilevel train``: train a ViT with tri-level data reduction (or the dense baseline).

Configuration precedence (later wins): the defaults of :class:`~trilevel.training.TrainConfig`,
the configuration stored in the ``--resume`` checkpoint, the ``-c/--config`` YAML file, the flags.
YAML keys are the option names with hyphens or underscores (``batch-size`` or ``batch_size``);
unknown keys are an error. The resolved configuration is written to ``<output-dir>/config.yaml``,
which can be passed back with ``-c``.

Examples::

    trilevel train --embed-dim 128 --depth 12 --num-heads 4 --patch-size 4 --epochs 8
    trilevel train --dense ...                          # the dense baseline
    torchrun --nproc_per_node=2 -m trilevel train ...   # DDP; --batch-size is per process
    trilevel train --resume runs/X/checkpoint.pt        # continue exactly where it stopped
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

from .common import (
    EXIT_OK, EXIT_SIGTERM, flag_value, log_outputs, parse_options, run_failed, setup_logging,
    split_common_flags, usage_error,
)

__all__ = ["PROG", "DESCRIPTION", "base_train_options", "parse_train_config", "main"]

logger = logging.getLogger("trilevel.cli")

PROG = "trilevel train"
DESCRIPTION = (
    "Train a timm ViT with tri-level data reduction (Kong et al., AAAI 2023), or the dense baseline "
    "(--dense). Writes config.yaml, train.log, metrics.jsonl, checkpoint.pt and summary.json to "
    "--output-dir. Options may also come from a YAML file: -c FILE (flags override it); -v for debug logs."
)

#: Settings of an interrupted invocation that a resumed one does not inherit.
_NOT_INHERITED = ("output_dir", "stop_after_epoch", "resume", "allow_world_size_change")


def base_train_options(config_file: Optional[str], resume: Optional[str], preset: Optional[str] = None) -> Dict[str, Any]:
    """The options that flags override: a preset's, the resumed checkpoint's configuration, the YAML file's.

    Args:
        config_file: ``-c`` YAML file, or None.
        resume: The ``--resume`` checkpoint (from the flags or the file), or None.
        preset: ``--preset`` name from the flags (else the file's ``preset``), or None.

    Raises:
        FileNotFoundError: Missing file or checkpoint.
        ValueError: Unknown YAML keys or an unreadable checkpoint.
    """
    from ..training.config import config_from_checkpoint, load_config_file

    from_file = load_config_file(config_file) if config_file else {}
    resume = resume or from_file.get("resume")
    merged: Dict[str, Any] = {}  # a config built with a preset takes its values for what is not given
    if preset:
        merged["preset"] = preset
    if resume:
        merged.update(config_from_checkpoint(resume))
        for key in _NOT_INHERITED:
            merged.pop(key, None)
    merged.update(from_file)
    return merged


def parse_train_config(argv: Sequence[str], prog: str = PROG):
    """Parse ``trilevel train`` arguments (``-c FILE`` and ``-v`` included) into a TrainConfig.

    Returns:
        A validated :class:`~trilevel.training.TrainConfig`.

    Raises:
        ValueError: Unknown YAML keys or an invalid value in the file (the option is named).
        FileNotFoundError: Missing config file or resume checkpoint.
        SystemExit: Status 2 on a bad flag (tyro prints the message).
    """
    from ..training.config import TrainConfig

    common, rest = split_common_flags(argv)
    base = base_train_options(common.config, flag_value(rest, "--resume"), flag_value(rest, "--preset"))
    default = TrainConfig.from_dict(base, source=common.config or "the resumed checkpoint")
    return parse_options(TrainConfig, rest, prog, DESCRIPTION, default=default)


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel train``; returns the exit status.

    Exit status: 0 on success; 2 on bad options, data or checkpoint (found before training starts,
    or an unreadable image file); 1 on a run that fails while training (a non-finite loss, a
    checkpoint that cannot be written, any other error), with a one-line message (the traceback
    with ``-v``); 143 after SIGTERM (checkpoint saved).
    """
    from ..training import TrainingInterrupted, train
    from ..viz import render_pruning_picture
    from ..training.output import run_outputs

    try:
        common, _ = split_common_flags(argv)
        setup_logging(common.verbose)
        config = parse_train_config(argv)
    except (ValueError, OSError) as e:
        return usage_error(PROG, str(e))
    try:
        summary = train(config, picture_renderer=render_pruning_picture)  # the live logs' pruning picture
    except TrainingInterrupted as e:
        logger.warning("%s", e)
        return EXIT_SIGTERM
    except RuntimeError as e:  # NonFiniteLossError, CheckpointWriteError, TrainingFailedError, ...
        return run_failed(PROG, e)
    except (ValueError, OSError) as e:
        logger.debug("details", exc_info=True)
        return usage_error(PROG, str(e))
    log_outputs(summary["output_dir"], run_outputs(summary["output_dir"]))
    return EXIT_OK


