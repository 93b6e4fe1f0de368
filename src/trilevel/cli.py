"""Command line: ``trilevel train`` and ``trilevel eval`` (also ``python -m trilevel ...``).

This module only parses; the work is done by :func:`trilevel.engine.train` and
:func:`trilevel.engine.evaluate_checkpoint`.

Configuration precedence for ``train`` (later wins): built-in defaults, the configuration stored
in the ``--resume`` checkpoint, the ``-c/--config`` YAML file, flags given on the command line.
YAML keys are the flag names with hyphens or underscores (``batch-size`` or ``batch_size``);
unknown keys are an error. The resolved configuration is written to ``<output-dir>/config.yaml``,
which can be passed back with ``-c``.

Examples::

    trilevel train --model vit_tiny_patch16_224 --embed-dim 128 --depth 12 --num-heads 4 \\
        --patch-size 4 --dataset fashion-mnist --epochs 8 --batch-size 128
    trilevel train --dense ...                        # the dense baseline
    torchrun --nproc_per_node=2 -m trilevel train ... # DDP; --batch-size is per process
    trilevel train --resume runs/X/checkpoint.pt      # continue exactly where it stopped
    trilevel eval --checkpoint runs/X/checkpoint.pt --keep-ratio 0.8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

import yaml

from . import __version__

__all__ = ["build_parser", "load_config_file", "parse_train_config", "main"]

logger = logging.getLogger(__name__)

_EXIT_USAGE = 2
_EXIT_FAILURE = 1
_EXIT_SIGTERM = 128 + 15

# Fields that hold floats (YAML 1.1 reads "1e-3" as a string; such strings are converted).
_FLOAT_FIELDS = {
    "drop_path", "patch_drop", "lr", "min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "smoothing", "mixup",
    "cutmix", "clip_grad", "ema_decay", "keep_ratio", "attn_keep_ratio", "ratio_warmup",
    "ratio_decay_end", "eval_keep_ratio", "eval_attn_keep_ratio", "example_remove", "example_swap",
}


# --------------------------------------------------------------------------------------------------
# argument types (conversion only; ranges are checked by TrainConfig, which names the flag)
# --------------------------------------------------------------------------------------------------


def _optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.strip().lower() in ("none", "null", ""):
            return None
        return conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _fraction_text(text: str) -> float:
    """A float, also written as a fraction such as ``1/30``."""
    if "/" in text:
        num, _, den = text.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 1/30, got {text!r}") from None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _update_every_text(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of epochs (e.g. 3) or a fraction of the run (e.g. 0.1), got {text!r}"
        ) from None


def _prune_layers_text(text: str) -> Any:
    t = text.strip().lower()
    if t in ("none", "default", ""):
        return None
    try:
        return [int(p) for p in t.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated block indices such as 3,6,9 (or 'none' for the default), got {text!r}"
        ) from None


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .data import ALLOWED_BAD_IMAGES
    from .engine import (
        ALLOWED_AMP, ALLOWED_AUGS, ALLOWED_DATASETS, ALLOWED_DEVICES, ALLOWED_NONFINITE,
        ALLOWED_SELECTORS, TrainConfig,
    )

    defaults = {f: getattr(TrainConfig, f, None) for f in TrainConfig.field_names()}

    def add(group: argparse._ArgumentGroup, flag: str, help: str, **kw: Any) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        default = defaults.get(dest)
        shown = "none" if default is None else default
        if isinstance(shown, float):
            shown = f"{shown:.6g}"
        group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"{help} (default: {shown})", **kw)

    p.add_argument("-c", "--config", default=None, metavar="YAML",
                   help="YAML file of options (keys: flag names); command-line flags override it")

    g = p.add_argument_group("model")
    add(g, "--model", "timm model name (any VisionTransformer for tri-level training)", metavar="NAME")
    add(g, "--img-size", "input side in pixels; none: the dataset's", type=_optional(_int_text), metavar="PX")
    add(g, "--patch-size", "patch side in pixels; none: the model's", type=_optional(_int_text), metavar="PX")
    add(g, "--in-chans", "input channels; none: the dataset's (3 repeats grayscale)", type=_optional(_int_text),
        metavar="C")
    add(g, "--embed-dim", "embedding width; none: the model's", type=_optional(_int_text), metavar="D")
    add(g, "--depth", "number of blocks; none: the model's", type=_optional(_int_text), metavar="N")
    add(g, "--num-heads", "attention heads; none: the model's", type=_optional(_int_text), metavar="H")
    add(g, "--drop-path", "stochastic depth rate in [0, 1)", type=_float_text, metavar="P")
    add(g, "--patch-drop", "fraction of patch tokens dropped at random while training (timm PatchDropout)",
        type=_float_text, metavar="P")

    g = p.add_argument_group("data")
    add(g, "--dataset", "dataset", choices=ALLOWED_DATASETS)
    add(g, "--data-dir", "data folder; none: the dataset's default (Fashion-MNIST only)", metavar="DIR")
    add(g, "--train-subset", "train on the first N training examples only; none: all",
        type=_optional(_int_text), metavar="N")
    add(g, "--val-subset", "evaluate on the first N validation examples only; none: all",
        type=_optional(_int_text), metavar="N")
    add(g, "--aug", "training augmentation", choices=ALLOWED_AUGS)
    add(g, "--workers", "DataLoader worker processes per rank (0: main process)", type=_int_text, metavar="N")

    g = p.add_argument_group("optimisation (AdamW, per-iteration cosine LR with warm-up)")
    add(g, "--epochs", "training epochs", type=_int_text, metavar="N")
    add(g, "--batch-size", "batch size per process", type=_int_text, metavar="B")
    add(g, "--lr", "peak learning rate, absolute (not scaled by the batch size)", type=_float_text)
    add(g, "--min-lr", "final learning rate", type=_float_text)
    add(g, "--warmup-lr", "learning rate at the start of the warm-up", type=_float_text)
    add(g, "--warmup-epochs", "LR warm-up in epochs (may be fractional)", type=_float_text, metavar="E")
    add(g, "--weight-decay", "AdamW weight decay", type=_float_text, metavar="WD")
    add(g, "--seed", "seed (same on every rank)", type=_int_text)
    add(g, "--device", "device", choices=ALLOWED_DEVICES)
    add(g, "--smoothing", "label smoothing in [0, 1)", type=_float_text)
    add(g, "--mixup", "mixup alpha (0: off)", type=_float_text, metavar="ALPHA")
    add(g, "--cutmix", "cutmix alpha (0: off)", type=_float_text, metavar="ALPHA")
    add(g, "--clip-grad", "max gradient norm (none or 0: off)", type=_optional(_float_text), metavar="NORM")
    add(g, "--amp", "mixed precision (fp16: CUDA only)", choices=ALLOWED_AMP)
    add(g, "--ema-decay", "EMA decay of the weights (0: off)", type=_float_text, metavar="D")

    g = p.add_argument_group("tri-level (token, attention and example levels)")
    add(g, "--keep-ratio", "final token keep ratio per pruning block, in (0, 1]", type=_float_text, metavar="R")
    add(g, "--attn-keep-ratio", "final kept fraction of attention connections, in (0, 1]", type=_float_text,
        metavar="R")
    add(g, "--prune-layers", "pruning blocks, comma-separated 0-based indices; none: depth//4, depth//2, "
        "3*depth//4", type=_prune_layers_text, metavar="LIST")
    add(g, "--ratio-warmup", "fraction of the run at ratio 1 (e.g. 1/30)", type=_fraction_text, metavar="F")
    add(g, "--ratio-decay-end", "fraction of the run where the ratios reach their targets (e.g. 11/30)",
        type=_fraction_text, metavar="F")
    add(g, "--fuse-inattentive", "fuse the pruned tokens into one (EViT)", action=argparse.BooleanOptionalAction)
    add(g, "--eval-keep-ratio", "token keep ratio for evaluation; none: the final schedule value",
        type=_optional(_float_text), metavar="R")
    add(g, "--eval-attn-keep-ratio", "attention keep ratio for evaluation; none: the final value",
        type=_optional(_float_text), metavar="R")
    add(g, "--selector", "example selector", choices=ALLOWED_SELECTORS)
    add(g, "--example-remove", "fraction of the training set removed (loss selector: drop probability of "
        "low-loss examples)", type=_float_text, metavar="F")
    add(g, "--example-swap", "fraction of the training set swapped at each update", type=_float_text, metavar="F")
    add(g, "--example-update-every", "epochs between selector updates (int), or a fraction of the run",
        type=_update_every_text, metavar="E")
    add(g, "--example-max-updates", "maximum number of selector updates", type=_int_text, metavar="N")
    add(g, "--dense", "baseline: all three levels off (stock timm model, no selector)",
        action=argparse.BooleanOptionalAction)

    g = p.add_argument_group("output / runtime")
    add(g, "--output-dir", "output folder; none: runs/<timestamp> (on resume: the checkpoint's folder)",
        metavar="DIR")
    add(g, "--resume", "checkpoint to resume from (its configuration is the base)", metavar="CHECKPOINT")
    add(g, "--stop-after-epoch", "end this invocation after this epoch (checkpoint saved, resume later)",
        type=_optional(_int_text), metavar="N")
    add(g, "--nonfinite", "on a NaN/inf loss: stop (save the last good state) or skip the batch",
        choices=ALLOWED_NONFINITE)
    add(g, "--bad-images", "imagefolder: on an unreadable image file, fail naming its path, or skip it",
        choices=ALLOWED_BAD_IMAGES)
    add(g, "--log-interval", "steps between progress updates", type=_int_text, metavar="N")
    add(g, "--eval-every", "epochs between validation passes (the last epoch is always evaluated)",
        type=_int_text, metavar="N")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The ``trilevel`` argument parser with the ``train`` and ``eval`` subcommands."""
    from .engine import ALLOWED_DEVICES

    parser = argparse.ArgumentParser(
        prog="trilevel",
        description="Tri-level (example, token, attention) data reduction for faster ViT training "
                    "(Kong et al., AAAI 2023).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench,visualize,report}")
    sub.required = True

    train_p = sub.add_parser(
        "train", help="train a ViT (tri-level or --dense)",
        description="Train a timm ViT with tri-level data reduction (or the dense baseline). "
                    "Writes config.yaml, train.log, metrics.jsonl, checkpoint.pt and summary.json "
                    "to --output-dir.",
    )
    _add_train_arguments(train_p)

    eval_p = sub.add_parser(
        "eval", help="evaluate a checkpoint",
        description="Rebuild the model stored in a trilevel checkpoint and print its validation top-1.",
    )
    eval_p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint.pt written by train")
    eval_p.add_argument("--keep-ratio", type=_optional(_float_text), default=None, metavar="R",
                        help="token keep ratio (default: the run's evaluation ratio)")
    eval_p.add_argument("--attn-keep-ratio", type=_optional(_float_text), default=None, metavar="R",
                        help="attention keep ratio (default: the run's evaluation ratio)")
    eval_p.add_argument("--data-dir", default=None, metavar="DIR", help="data folder (default: the run's)")
    eval_p.add_argument("--val-subset", type=_optional(_int_text), default=None, metavar="N",
                        help="evaluate on the first N validation examples only (default: all)")
    eval_p.add_argument("--batch-size", type=_int_text, default=None, metavar="B",
                        help="batch size (default: twice the training batch size)")
    eval_p.add_argument("--device", choices=ALLOWED_DEVICES, default="auto", help="device (default: auto)")
    eval_p.add_argument("--workers", type=_int_text, default=0, metavar="N", help="DataLoader workers (default: 0)")
    eval_p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    eval_p.add_argument("--json", action="store_true", help="print the result as JSON")
    eval_p.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    bench_p = sub.add_parser(
        "bench", help="benchmarks (trilevel bench speed ...; see trilevel bench --help)", add_help=False,
        description="Benchmarks of trilevel.bench; the arguments are passed on to it.",
    )
    bench_p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of trilevel.bench")

    from .viz import add_report_arguments, add_visualize_arguments

    add_visualize_arguments(sub.add_parser(
        "visualize", help="picture of the patches kept at each pruning stage",
        description="For K validation images: which patches survive each pruning stage (dropped ones "
                    "dimmed) and the attention connections kept for one query patch."))
    add_report_arguments(sub.add_parser(
        "report", help="PNG plots of a run folder",
        description="Loss/accuracy curves, images/s, tokens per block, active-set size and the "
                    "forgetting-count histogram, written into the run folder."))
    return parser


# --------------------------------------------------------------------------------------------------
# configuration assembly
# --------------------------------------------------------------------------------------------------


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML option file into a dict of field names (underscored).

    Args:
        path: YAML file with a mapping of option names (flag names, hyphens or underscores) to
            values. An empty file is an empty mapping.

    Returns:
        The options, keys normalised to field names; float options written as strings (YAML 1.1
        reads ``1e-3`` as a string) converted.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not valid YAML, not a mapping, or has unknown keys (all named).
    """
    from .engine import normalize_keys

    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    options = normalize_keys(data, source=str(path))
    for key, value in options.items():
        if key in _FLOAT_FIELDS and isinstance(value, str):
            try:
                options[key] = _fraction_text(value)
            except argparse.ArgumentTypeError:
                raise ValueError(f"{path}: {key.replace('_', '-')} must be a number, got {value!r}") from None
    return options


def parse_train_config(args: argparse.Namespace) -> "Any":
    """Merge defaults, the resumed checkpoint's configuration, the YAML file and the flags.

    Args:
        args: The parsed ``train`` namespace (flags not given on the command line are absent).

    Returns:
        A validated :class:`trilevel.engine.TrainConfig`.

    Raises:
        ValueError: Unknown YAML keys, or an invalid value (the option is named).
        FileNotFoundError: Missing config file or resume checkpoint.
    """
    from .engine import TrainConfig, config_from_checkpoint

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose")}
    from_file = load_config_file(args.config) if args.config else {}
    resume = given.get("resume", from_file.get("resume"))
    merged: dict[str, Any] = {}
    if resume:
        merged.update(config_from_checkpoint(resume))
        # runtime settings of the interrupted invocation are not inherited
        for key in ("output_dir", "stop_after_epoch", "resume"):
            merged.pop(key, None)
    merged.update(from_file)
    merged.update(given)
    return TrainConfig.from_dict(merged, source=args.config or "command line")


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``trilevel`` console script; returns the exit status.

    Exit status: 0 on success, 1 on a failed run (non-finite loss, runtime error), 2 on bad
    options, bad configuration or missing data/checkpoint, 143 after SIGTERM (checkpoint saved).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to trilevel.bench's own parser
        from .bench import main as bench_main

        bench_main(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(bool(getattr(args, "verbose", False)))
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]

    from .engine import NonFiniteLossError, TrainingInterrupted, evaluate_checkpoint, train

    if args.command in ("visualize", "report"):
        from .viz import run_report, run_visualize

        try:
            return (run_visualize if args.command == "visualize" else run_report)(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"trilevel {args.command}: error: {e}", file=sys.stderr)
            return _EXIT_USAGE

    if args.command == "train":
        try:
            config = parse_train_config(args)
        except (ValueError, FileNotFoundError) as e:
            sub.error(str(e))  # exits with status 2
        try:
            train(config)
        except TrainingInterrupted as e:
            logger.warning("%s", e)
            return _EXIT_SIGTERM
        except NonFiniteLossError as e:
            logger.error("%s", e)
            return _EXIT_FAILURE
        except (ValueError, FileNotFoundError) as e:
            logger.debug("details", exc_info=True)
            print(f"trilevel train: error: {e}", file=sys.stderr)
            return _EXIT_USAGE
        return 0

    try:
        result = evaluate_checkpoint(
            args.checkpoint, keep_ratio=args.keep_ratio, attn_keep_ratio=args.attn_keep_ratio,
            data_dir=args.data_dir, batch_size=args.batch_size, device=args.device, workers=args.workers,
            ema=args.ema, val_subset=args.val_subset,
        )
    except (ValueError, FileNotFoundError) as e:
        logger.debug("details", exc_info=True)
        print(f"trilevel eval: error: {e}", file=sys.stderr)
        return _EXIT_USAGE
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"top-1 {result['top1']:.2f}% on {result['images']} {result['dataset']} validation images "
                f"({result['model']}{', EMA' if result['ema'] else ''}, epoch {result['epoch']}, "
                f"keep_ratio {result['keep_ratio']:g}, attn_keep_ratio {result['attn_keep_ratio']:g})"
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
