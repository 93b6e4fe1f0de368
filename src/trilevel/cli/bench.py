"""``trilevel bench speed`` and ``trilevel bench train``: the benchmarks of ``docs/benchmarks.md``."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import tyro
from typing_extensions import Annotated

from ..options import BlockList, OptionalFloat, parse_float_list
from ..presets import PRESETS
from ..training.config import AmpName, DeviceName, ModelConfig, TrainConfig
from .common import EXIT_OK, EXIT_SIGTERM, log_outputs, parse_options, run_failed, split_common_flags, usage_error
from .train import layered_train_config, split_source_flags

__all__ = ["SpeedOptions", "BenchTrainOptions", "main"]

logger = logging.getLogger("trilevel.cli")


@dataclass(frozen=True)
class SpeedOptions(ModelConfig):
    """Options of ``trilevel bench speed`` (training-step throughput, dense timm vs the tri-level patch).

    The model fields are those of :class:`~trilevel.training.config.ModelConfig` (none: the model's own).

    Attributes:
        num_classes: Classes of the random labels.
        batch_size: Images per step.
        keep_ratio: Token keep ratio of the pruned rows (the paper preset's).
        attn_keep_ratio: Attention keep ratio of the pruned rows (the paper preset's).
        prune_layers: Pruning blocks, comma-separated; none: depth//4, depth//2, 3*depth//4.
        rounds: Rounds of the alternation (the median is over rounds).
        steps_per_round: Timed steps per configuration per round.
        warmup_steps: Untimed steps per configuration before the first round.
        device: Device.
        amp: Mixed precision.
        json: Print JSON instead of a table.
        compile: Also time each variant under torch.compile and report the step speedup of compile over eager.
    """

    num_classes: int = 10
    batch_size: int = 128
    keep_ratio: float = PRESETS["paper"]["keep_ratio"]
    attn_keep_ratio: float = PRESETS["paper"]["attn_keep_ratio"]
    prune_layers: BlockList = None
    rounds: int = 5
    steps_per_round: int = 3
    warmup_steps: int = 2
    device: DeviceName = "auto"
    amp: AmpName = "none"
    json: bool = False
    compile: bool = False


@dataclass
class BenchTrainOptions:
    """Options of ``trilevel bench train`` (full runs of several configurations with one recipe).

    Attributes:
        configs: Comma-separated configurations (see trilevel.bench.TRAIN_PRESETS).
        seeds: Comma-separated seeds: the whole bench once per seed (replaces --seed); none: --seed only.
        budgets: Comma-separated budgets in dense-epoch equivalents: every configuration at every budget and seed, interleaved, then accuracy-against-time curves and time to accuracy against dense; none: the epochs bench (every configuration at --epochs, plus dense-same-time).
        target: Time-to-accuracy target top-1 (percent); none: dense's mean top-1 at the largest budget minus --target-drop.
        target_drop: Points below dense's mean top-1 at its largest budget for the default target.
        extra_configs: YAML file of more configurations for a budget bench: a mapping of names to overrides of the recipe (e.g. the rows of a study).
        baseline: Budget bench: the dense configuration the target and every speedup are read against (e.g. dense tuned on validation, from --extra-configs); default: dense.
        allow_mixed_code: Budget bench: reuse stored runs made by another code version too (the tables then say that they mix versions); default: a run is reused only when the commit that made it is the current one.
        recipe: The training recipe every configuration shares (the flags of trilevel train).
    """

    configs: str = "dense,trilevel,dense-same-time"
    seeds: Optional[str] = None
    budgets: Optional[str] = None
    target: OptionalFloat = None
    target_drop: float = 0.3
    allow_mixed_code: bool = False
    baseline: str = "dense"
    extra_configs: Optional[str] = None
    recipe: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=TrainConfig)


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _read_extra_configs(path: str) -> dict:
    """``{name: overrides}`` from a YAML file; every override set is checked as a training config."""
    import yaml

    from ..training.config import normalize_keys

    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"--extra-configs {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"--extra-configs {path} must map configuration names to mappings of options")
    return {str(name): normalize_keys(v, source=f"{path}: {name}") for name, v in data.items()}


def _speed(argv: Sequence[str]) -> int:
    from ..bench.speed import format_speed_table, speed_for_model

    opts = parse_options(SpeedOptions, argv, "trilevel bench speed", "Training-step throughput, dense vs tri-level.")
    kw = {"num_classes": opts.num_classes, **opts.model_kwargs()}
    for name in ("num_classes", "batch_size", "rounds", "steps_per_round"):
        _check_positive(name, getattr(opts, name))
    if opts.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be an integer >= 0, got {opts.warmup_steps}")
    run = speed_for_model
    results = run(
        opts.model, kw, batch_size=opts.batch_size, keep_ratio=opts.keep_ratio, attn_keep_ratio=opts.attn_keep_ratio,
        prune_layers=opts.prune_layers, rounds=opts.rounds, steps_per_round=opts.steps_per_round,
        warmup_steps=opts.warmup_steps, device=opts.device, amp=opts.amp, compile=opts.compile,
    )
    print(format_speed_table(results, as_json=opts.json))
    log_outputs(None)
    return EXIT_OK


def _train(argv: Sequence[str]) -> int:
    from ..bench.train import TRAIN_PRESETS, format_seeds_table, format_train_table, parse_seeds
    from ..bench.train import run_train_bench, run_train_bench_seeds

    common, rest = split_common_flags(argv)  # the recipe is built as trilevel train builds a run's configuration
    sources, rest = split_source_flags(rest)
    base = layered_train_config(common.config, sources)
    opts = parse_options(
        BenchTrainOptions, rest, "trilevel bench train",
        "Train each configuration with the same recipe (the train flags below) and print a table of val top-1, "
        "training wall-clock, speedup and relative FLOPs. Configurations: " + ", ".join(TRAIN_PRESETS),
        default=BenchTrainOptions(recipe=base),
    )
    configs = [c.strip() for c in opts.configs.split(",") if c.strip()]
    seeds = parse_seeds(opts.seeds) if opts.seeds is not None else None
    recipe = opts.recipe.to_dict()
    out = recipe.get("output_dir") or time.strftime("runs/bench-%Y%m%d-%H%M%S")
    if opts.budgets is not None:
        from ..bench.budgets import (
            format_curve_table, format_provenance, format_selection, format_tta_table, run_budget_bench,
        )
        from ..bench.tta import build_curves

        try:
            budgets = parse_float_list(opts.budgets)
        except ValueError as e:
            raise ValueError(f"--budgets: {e}") from None
        extra = _read_extra_configs(opts.extra_configs) if opts.extra_configs else None
        result = run_budget_bench(recipe, configs, budgets, seeds or [recipe["seed"]], out, opts.target,
                                  opts.target_drop, extra, opts.allow_mixed_code, opts.baseline)
        print(format_provenance(result))
        print()
        print(format_curve_table(build_curves(result["runs"])))
        print()
        print(format_tta_table(result["tta"], result["target"]))
        print(format_selection(result["selection"]))
    elif seeds is None:
        print(format_train_table(run_train_bench(recipe, configs, out)))
    else:
        print(format_seeds_table(run_train_bench_seeds(recipe, configs, seeds, out)))
    log_outputs(out)  # the tables, the plot and a folder per run
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel bench speed|train ...``; returns the exit status (2 on bad input, 1 on a run that
    fails while training, 143 on SIGTERM)."""
    from ..training import TrainingInterrupted

    argv = list(argv)
    usage = "usage: trilevel bench {speed,train} [options]  (trilevel bench speed --help, trilevel bench train --help)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return EXIT_OK if argv else usage_error("trilevel bench", "name what to benchmark: speed or train")
    what, rest = argv[0], argv[1:]
    if what not in ("speed", "train"):
        return usage_error("trilevel bench", f"unknown benchmark {what!r}; choose speed or train")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _speed(rest) if what == "speed" else _train(rest)
    except (ValueError, OSError) as e:
        return usage_error("trilevel bench", str(e))
    except TrainingInterrupted as e:  # SIGTERM during a row: its checkpoint is saved, say where
        print(f"trilevel bench: {e}", file=sys.stderr)
        return EXIT_SIGTERM
    except RuntimeError as e:  # a row failed while training (non-finite loss, a checkpoint write, ...)
        return run_failed("trilevel bench", e)


