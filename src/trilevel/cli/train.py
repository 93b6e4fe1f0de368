"""``trilevel train``: train a ViT with tri-level data reduction (or the dense baseline).

Configuration precedence (later wins): the defaults of :class:`~trilevel.training.TrainConfig`
(the default preset's), the ``--preset``, the configuration stored in the ``--resume`` checkpoint,
the ``-c/--config`` YAML file, the flags. :func:`parse_train_config` builds it, once: the flags
naming the sources (``-c``, ``--preset``, ``--resume``) are taken out of the arguments first,
:func:`~trilevel.presets.layered_settings` layers the sources (the one place a preset is
applied), and tyro parses the other flags over the result. YAML keys are the option names with
hyphens or underscores (``batch-size`` or ``batch_size``); unknown keys are an error. The resolved
configuration is written to ``<output-dir>/config.yaml``, which can be passed back with ``-c``.

Examples::

    trilevel train --embed-dim 128 --depth 12 --num-heads 4 --patch-size 4 --epochs 8
    trilevel train --dense ...                          # the dense baseline
    torchrun --nproc_per_node=2 -m trilevel train ...   # DDP; --batch-size is per process
    trilevel train --resume runs/X/checkpoint.pt        # continue exactly where it stopped
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..options import parse_none
from .common import (
    EXIT_OK, EXIT_SIGTERM, log_outputs, parse_options, run_failed, setup_logging, split_common_flags, usage_error,
)

__all__ = ["PROG", "DESCRIPTION", "SOURCE_FLAGS", "split_source_flags", "layered_train_config", "parse_train_config",
           "main"]

logger = logging.getLogger("trilevel.cli")

PROG = "trilevel train"
DESCRIPTION = (
    "Train a timm ViT with tri-level data reduction (Kong et al., AAAI 2023), or the dense baseline "
    "(--dense). Writes config.yaml, train.log, metrics.jsonl, checkpoint.pt and summary.json to "
    "--output-dir. Options may also come from a YAML file: -c FILE (flags override it); -v for debug logs."
)

#: Settings of an interrupted invocation that a resumed one does not inherit.
_NOT_INHERITED = ("output_dir", "stop_after_epoch", "resume", "allow_world_size_change")


#: The flags (fields) that name where a run's settings come from, besides ``-c``: read first.
SOURCE_FLAGS = ("preset", "resume")


def split_source_flags(argv: Sequence[str]) -> Tuple[Dict[str, Optional[str]], List[str]]:
    """Take the flags naming a run's sources (``--preset``, ``--resume``) out of ``argv``.

    They decide the layers the other flags override, so they are read before tyro parses the rest
    (as ``-c`` is, :func:`~trilevel.cli.common.split_common_flags`); each is read here only.

    Args:
        argv: The command's arguments (``--preset P`` or ``--preset=P``; the last one given wins).

    Returns:
        ``({field: value}, rest)``: the source flags given (``none`` read as None) and the other
        arguments, in order.

    Raises:
        ValueError: A source flag without its value.
    """
    sources: Dict[str, Optional[str]] = {}
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        field = name[2:].replace("-", "_") if name.startswith("--") else None
        if field not in SOURCE_FLAGS:
            rest.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"{name} needs a value")
            value = args[i + 1]
            i += 1
        sources[field] = None if parse_none(value) else value
        i += 1
    return sources, rest


def layered_train_config(config_file: Optional[str], sources: Dict[str, Optional[str]]):
    """The settings the other flags override: defaults < preset < checkpoint < file < source flags.

    Args:
        config_file: ``-c`` YAML file, or None.
        sources: The source flags given (:func:`split_source_flags`); a ``--resume`` (else the file's
            ``resume``) names the checkpoint, a ``--preset`` (else the file's, else the
            checkpoint's) the preset.

    Returns:
        A :class:`~trilevel.training.TrainConfig` (what tyro parses the other flags over).

    Raises:
        FileNotFoundError: Missing file or checkpoint.
        ValueError: Unknown YAML keys, an unknown preset, an invalid value or an unreadable checkpoint.
    """
    from ..presets import layered_settings
    from ..training.config import TrainConfig, config_from_checkpoint, load_config_file

    from_file = load_config_file(config_file) if config_file else {}
    resume = sources["resume"] if "resume" in sources else from_file.get("resume")
    checkpoint: Dict[str, Any] = {}
    if resume:
        checkpoint = {k: v for k, v in config_from_checkpoint(resume).items() if k not in _NOT_INHERITED}
    settings = layered_settings(checkpoint, from_file, sources)
    return TrainConfig.from_dict(settings, source=config_file or "the resumed checkpoint")


def parse_train_config(argv: Sequence[str], prog: str = PROG):
    """Build the configuration of a ``trilevel train`` run from its arguments: the one place it is built.

    Defaults < ``--preset`` < the ``--resume`` checkpoint's configuration < the ``-c`` file < the
    flags: the source flags are taken out first (:func:`split_source_flags`), the sources layered
    (:func:`layered_train_config`), then tyro parses the other flags over them.

    Returns:
        The validated, frozen :class:`~trilevel.training.TrainConfig`.

    Raises:
        ValueError: Unknown YAML keys, an unknown preset or an invalid value (the option is named).
        FileNotFoundError: Missing config file or resume checkpoint.
        SystemExit: Status 2 on a bad flag (tyro prints the message).
    """
    from ..training.config import TrainConfig

    common, rest = split_common_flags(argv)
    sources, rest = split_source_flags(rest)
    return parse_options(TrainConfig, rest, prog, DESCRIPTION, default=layered_train_config(common.config, sources))


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


