"""Training-step throughput benchmark: dense timm against the tri-level patch, side by side.

Every configuration gets its own copy of the same initial weights and its own AdamW. The
configurations run in rounds, in rotating order (A B C, B C A, ...), a few timed steps each, so
slow drifts of the machine hit all of them alike; the report gives the median step time, its
min-max over rounds, throughput, the measured speedup over dense timm and the FLOP-implied one.
Used by ``trilevel bench speed`` and by ``docs/benchmarks.md``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from .flops import forward_flops
from .vit import patch_vit

__all__ = [
    "SpeedConfig", "SpeedResult", "DEFAULT_SPEED_CONFIGS", "benchmark_speed", "format_speed_table",
    "TRAIN_PRESETS", "run_train_bench", "format_train_table",
    "parse_seeds", "run_train_bench_seeds", "summarize_seeds", "format_seeds_table",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedConfig:
    """One benchmarked configuration.

    Attributes:
        name: Row label.
        keep_ratio: Token keep ratio; None means stock timm (not patched).
        attn_keep_ratio: Attention keep ratio (ignored for stock timm).
        fuse_inattentive: EViT-style fusion of dropped tokens.
    """

    name: str
    keep_ratio: Optional[float] = None
    attn_keep_ratio: float = 1.0
    fuse_inattentive: bool = False


@dataclass
class SpeedResult:
    """Measured step times of one configuration (seconds per training step)."""

    name: str
    keep_ratio: Optional[float]
    attn_keep_ratio: float
    median_s: float
    min_s: float
    max_s: float
    images_per_s: float
    speedup: float
    flops_speedup: float
    relative_flops: float


def DEFAULT_SPEED_CONFIGS(keep_ratio: float = 0.7, attn_keep_ratio: float = 0.3) -> List[SpeedConfig]:
    """Dense timm, the patch at ratio 1, token level alone, attention level alone, tri-level."""
    return [
        SpeedConfig("dense timm"),
        SpeedConfig("patched, ratios 1.0/1.0", 1.0, 1.0),
        SpeedConfig(f"token {keep_ratio} / attn 1.0", keep_ratio, 1.0),
        SpeedConfig(f"token 1.0 / attn {attn_keep_ratio}", 1.0, attn_keep_ratio),
        SpeedConfig(f"token {keep_ratio} / attn {attn_keep_ratio}", keep_ratio, attn_keep_ratio),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_speed(
    make_model: Callable[[], nn.Module],
    configs: Sequence[SpeedConfig],
    batch_size: int,
    input_shape: Sequence[int],
    num_classes: int,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    steps_per_round: int = 3,
    warmup_steps: int = 2,
    amp_dtype: Optional[torch.dtype] = None,
    prune_layers: Optional[Sequence[int]] = None,
    seed: int = 0,
) -> List[SpeedResult]:
    """Time forward + backward + AdamW step for each configuration, alternating.

    Args:
        make_model: Builds the stock timm model (called once; copies are patched).
        configs: Configurations to compare; the first one without ``keep_ratio`` is the
            dense baseline (speedups are relative to it; else to the first config).
        batch_size: Images per step.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Classes of the random labels.
        device: ``"cpu"`` or ``"cuda"``.
        rounds: Rounds; each config runs ``steps_per_round`` timed steps per round.
        steps_per_round: Timed steps per config per round; the round's mean is one sample.
        warmup_steps: Untimed steps per config before the first round.
        amp_dtype: ``torch.bfloat16``/``torch.float16`` for autocast, None for full precision.
        prune_layers: Pruning blocks (None: the paper's default).
        seed: Seed of the weights and the (fixed) random batch.

    Returns:
        One :class:`SpeedResult` per config, in ``configs`` order.

    Raises:
        ValueError: If ``batch_size``, ``rounds`` or ``steps_per_round`` is not positive, or
            ``configs`` is empty.
    """
    for name, v in (("batch_size", batch_size), ("rounds", rounds), ("steps_per_round", steps_per_round)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not configs:
        raise ValueError("configs must not be empty")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = make_model()
    x = torch.randn(batch_size, *input_shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    dense_flops = forward_flops(base)

    runners = []
    for cfg in configs:
        model = copy.deepcopy(base)
        if cfg.keep_ratio is not None:
            patch_vit(model, prune_layers=prune_layers, keep_ratio=cfg.keep_ratio,
                      attn_keep_ratio=cfg.attn_keep_ratio, fuse_inattentive=cfg.fuse_inattentive)
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        runners.append((cfg, model, opt))
    del base

    def step(model, opt):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _, model, opt in runners:
        for _ in range(warmup_steps):
            step(model, opt)
    _sync(device)

    samples: Dict[int, List[float]] = {i: [] for i in range(len(runners))}
    for r in range(rounds):
        order = [(r + j) % len(runners) for j in range(len(runners))]
        for i in order:
            _, model, opt = runners[i]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step(model, opt)
            _sync(device)
            samples[i].append((time.perf_counter() - t0) / steps_per_round)
        _LOG.info("round %d/%d done", r + 1, rounds)

    base_i = next((i for i, (c, _, _) in enumerate(runners) if c.keep_ratio is None), 0)
    base_median = statistics.median(samples[base_i])
    base_cfg_flops = forward_flops(runners[base_i][1])
    results = []
    for i, (cfg, model, _) in enumerate(runners):
        med = statistics.median(samples[i])
        fl = forward_flops(model)
        results.append(SpeedResult(
            name=cfg.name, keep_ratio=cfg.keep_ratio, attn_keep_ratio=cfg.attn_keep_ratio,
            median_s=med, min_s=min(samples[i]), max_s=max(samples[i]),
            images_per_s=batch_size / med, speedup=base_median / med,
            flops_speedup=base_cfg_flops / fl, relative_flops=fl / dense_flops,
        ))
    return results


def format_speed_table(results: Sequence[SpeedResult], as_json: bool = False) -> str:
    """Markdown table (or JSON) of :func:`benchmark_speed` results."""
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    lines = [
        "| configuration | step median (min-max) ms | images/s | speedup | FLOP-implied | measured / implied |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.median_s * 1e3:.1f} ({r.min_s * 1e3:.1f}-{r.max_s * 1e3:.1f}) | "
            f"{r.images_per_s:.1f} | {r.speedup:.3f}x | {r.flops_speedup:.3f}x | "
            f"{r.speedup / r.flops_speedup:.3f} |"
        )
    return "\n".join(lines)


def add_speed_arguments(parser) -> None:
    """Flags of ``trilevel bench speed`` (model flags as in ``trilevel train``)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT name")
    g.add_argument("--img-size", type=int, default=None)
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--in-chans", type=int, default=None)
    g.add_argument("--embed-dim", type=int, default=None)
    g.add_argument("--depth", type=int, default=None)
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--num-classes", type=int, default=10)
    g = parser.add_argument_group("benchmark")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--keep-ratio", type=float, default=0.7)
    g.add_argument("--attn-keep-ratio", type=float, default=0.3)
    g.add_argument("--prune-layers", default=None, help="comma-separated block indices (default: depth//4, //2, 3//4)")
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--steps-per-round", type=int, default=3)
    g.add_argument("--warmup-steps", type=int, default=2)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _model_kwargs(args) -> dict:
    kw = {"num_classes": args.num_classes}
    for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
        v = getattr(args, name)
        if v is not None:
            if v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive int, got {v}")
            kw[name] = v
    return kw


def run_speed(args) -> List[SpeedResult]:
    """Run ``trilevel bench speed`` from parsed arguments; prints the table and returns the rows.

    Raises:
        ValueError: For a bad flag value (named in the message).
    """
    import timm

    kw = _model_kwargs(args)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch.cuda.is_available() is False")
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    layers = None
    if args.prune_layers not in (None, "", "none"):
        try:
            layers = [int(v) for v in str(args.prune_layers).split(",")]
        except ValueError:
            raise ValueError(f"--prune-layers must be comma-separated ints, got {args.prune_layers!r}") from None

    def make():
        return timm.create_model(args.model, pretrained=False, **kw)

    probe = make()
    in_chans = probe.patch_embed.proj.in_channels
    img = probe.patch_embed.img_size
    del probe
    results = benchmark_speed(
        make, DEFAULT_SPEED_CONFIGS(args.keep_ratio, args.attn_keep_ratio), args.batch_size,
        (in_chans, img[0], img[1]), args.num_classes, device=device, rounds=args.rounds,
        steps_per_round=args.steps_per_round, warmup_steps=args.warmup_steps, amp_dtype=amp,
        prune_layers=layers,
    )
    print(format_speed_table(results, as_json=args.json))
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m trilevel.bench speed ...`` (the same as ``trilevel bench speed``)."""
    import argparse

    from .cli import _EXIT_FAILURE, _EXIT_SIGTERM, _add_train_arguments, parse_train_config
    from .engine import NonFiniteLossError, TrainingInterrupted

    parser = argparse.ArgumentParser(prog="trilevel bench")
    sub = parser.add_subparsers(dest="what", required=True)
    speed_p = sub.add_parser("speed", help="training-step throughput, dense vs tri-level")
    add_speed_arguments(speed_p)
    train_p = sub.add_parser(
        "train", help="full training runs: dense, tri-level, peers, dense for the same wall-clock",
        description="Train each configuration with the same recipe (the train flags below) and print a "
                    "table of val top-1, training wall-clock, speedup and relative FLOPs. Configurations: "
                    + ", ".join(TRAIN_PRESETS),
    )
    _add_train_arguments(train_p)
    train_p.add_argument("--configs", default="dense,trilevel,dense-same-time",
                         help="comma-separated configurations (default: dense,trilevel,dense-same-time)")
    train_p.add_argument("--seeds", default=None, metavar="LIST",
                         help="comma-separated seeds: the whole bench once per seed (replaces --seed), then "
                              "a table of means and paired gaps to dense over the seeds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.what == "speed":
            run_speed(args)
        else:
            configs = [c.strip() for c in args.configs.split(",") if c.strip()]
            seeds = parse_seeds(args.seeds) if args.seeds is not None else None
            ns = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("what", "configs", "seeds")})
            base = parse_train_config(ns).to_dict()
            out = base.get("output_dir") or time.strftime("runs/bench-%Y%m%d-%H%M%S")
            if seeds is None:
                rows = run_train_bench(base, configs, out)
                print(format_train_table(rows))
            else:
                summary = run_train_bench_seeds(base, configs, seeds, out)
                print(format_seeds_table(summary))
            print(f"(tables and plot in {out})")
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"trilevel bench: error: {e}\n")
    except TrainingInterrupted as e:  # SIGTERM during a row: its checkpoint is saved, say where
        parser.exit(_EXIT_SIGTERM, f"trilevel bench: {e}\n")
    except NonFiniteLossError as e:
        parser.exit(_EXIT_FAILURE, f"trilevel bench: {e}\n")


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------- bench train
#: Configurations of ``trilevel bench train``: overrides of the base training config.
#: ``trilevel`` is the base config's own tri-level settings; ``dense-same-time`` is dense
#: training for the wall-clock of the fastest other configuration (the honest baseline).
TRAIN_PRESETS: Dict[str, dict] = {
    "dense": {"dense": True},
    "trilevel": {},
    "paper": {"dense": False, "keep_ratio": 0.7, "attn_keep_ratio": 0.3, "selector": "forgetting",
              "example_remove": 0.2, "example_swap": 0.05, "eval_keep_ratio": None, "eval_attn_keep_ratio": None},
    "token-only": {"dense": False, "attn_keep_ratio": 1.0, "selector": "none"},
    "attention-only": {"dense": False, "keep_ratio": 1.0, "selector": "none"},
    "example-only": {"dense": False, "keep_ratio": 1.0, "attn_keep_ratio": 1.0, "selector": "forgetting"},
    "evit": {"dense": False, "attn_keep_ratio": 1.0, "selector": "none", "fuse_inattentive": True},
    "patchdropout": {"dense": True, "patch_drop": 0.3},
    "infobatch": {"dense": False, "keep_ratio": 1.0, "attn_keep_ratio": 1.0, "selector": "loss",
                  "example_remove": 0.5},
    "random-examples": {"dense": False, "keep_ratio": 1.0, "attn_keep_ratio": 1.0, "selector": "random"},
    "dense-same-time": {"dense": True},
}


def run_train_bench(base: dict, configs: Sequence[str], output_dir: str) -> List[dict]:
    """Train each configuration with the same recipe and epochs; compare with dense timm.

    Args:
        base: Base training config (a ``trilevel.engine.TrainConfig`` as a dict: model, data,
            optimisation, and the tri-level settings used by the ``trilevel`` row).
        configs: Names from :data:`TRAIN_PRESETS`, run in this order, except that
            ``dense-same-time`` runs last: dense training for ``round(epochs * t / t_dense)``
            epochs (at least 1), ``t`` the shortest wall-clock among the other non-dense rows.
        output_dir: Each run writes ``<output_dir>/<name>/``; the table goes to
            ``<output_dir>/bench_train.md`` and ``.json``, the plot to ``accuracy_vs_time.png``.

    Returns:
        One row per configuration: name, val_top1, train_seconds, speedup (over ``dense``),
        relative_train_flops, epochs, and the run folder.

    Raises:
        ValueError: For an unknown configuration name (the allowed ones are listed), or when
            ``dense-same-time`` is asked without ``dense`` and another row to time.
    """
    from .engine import train

    unknown = [c for c in configs if c not in TRAIN_PRESETS]
    if unknown:
        raise ValueError(f"unknown bench configurations {unknown}; allowed: {sorted(TRAIN_PRESETS)}")
    if not configs:
        raise ValueError("configs must name at least one configuration")
    ordered = [c for c in configs if c != "dense-same-time"]
    if "dense-same-time" in configs and ("dense" not in ordered or len(ordered) < 2):
        raise ValueError("dense-same-time needs 'dense' and at least one other configuration in the list")
    os.makedirs(output_dir, exist_ok=True)
    rows: List[dict] = []

    def run(name: str, overrides: dict) -> dict:
        cfg = {**base, **overrides, "output_dir": os.path.join(output_dir, name), "resume": None}
        _LOG.info("bench train: %s (%s)", name, overrides or "base settings")
        s = train(cfg)
        row = {"name": name, "val_top1": s["val_top1"], "train_seconds": s["train_seconds"],
               "relative_train_flops": s["relative_train_flops"], "epochs": s["epochs"],
               "train_images": s["train_images"], "keep_ratio": s["keep_ratio"],
               "attn_keep_ratio": s["attn_keep_ratio"], "selector": s["selector"],
               "eval_keep_ratio": s["eval_keep_ratio"], "output_dir": s["output_dir"]}
        rows.append(row)
        return row

    for name in ordered:
        run(name, TRAIN_PRESETS[name])
    if "dense-same-time" in configs:
        dense = next(r for r in rows if r["name"] == "dense")
        fastest = min((r for r in rows if r["name"] != "dense"), key=lambda r: r["train_seconds"])
        epochs = max(1, round(dense["epochs"] * fastest["train_seconds"] / dense["train_seconds"]))
        run("dense-same-time", {**TRAIN_PRESETS["dense-same-time"], "epochs": epochs,
                                "warmup_epochs": min(base.get("warmup_epochs", 1.0), epochs / 5)})
    dense_row = next((r for r in rows if r["name"] == "dense"), rows[0])
    for r in rows:
        r["speedup"] = dense_row["train_seconds"] / r["train_seconds"]
        r["delta_top1"] = r["val_top1"] - dense_row["val_top1"]
    with open(os.path.join(output_dir, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    table = format_train_table(rows)
    with open(os.path.join(output_dir, "bench_train.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    try:
        from .viz import plot_accuracy_vs_time

        plot_accuracy_vs_time(rows, os.path.join(output_dir, "accuracy_vs_time.png"))
    except ImportError:  # pragma: no cover - viz is part of the package
        _LOG.warning("trilevel.viz unavailable: no plot written")
    return rows


def format_train_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`run_train_bench` rows."""
    lines = ["| configuration | epochs | val top-1 % | vs dense | train s | speedup | relative FLOPs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['epochs']} | {r['val_top1']:.2f} | {r.get('delta_top1', 0.0):+.2f} | "
            f"{r['train_seconds']:.0f} | {r.get('speedup', 1.0):.2f}x | {r['relative_train_flops']:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------- bench train over seeds
def parse_seeds(text: str) -> List[int]:
    """Seeds from the ``--seeds`` text, e.g. ``"0,1,2"``.

    Args:
        text: Comma-separated seeds (spaces around entries are allowed).

    Returns:
        The seeds, in the given order.

    Raises:
        ValueError: If an entry is not a non-negative decimal integer, a seed repeats, or none is given.
    """
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdecimal():
            raise ValueError(f"--seeds must be comma-separated non-negative integers, got {text!r}")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {text!r}")
    return seeds


def run_train_bench_seeds(base: dict, configs: Sequence[str], seeds: Sequence[int], output_dir: str) -> List[dict]:
    """:func:`run_train_bench` once per seed, then a summary over the seeds.

    Each seed's rows, table and plot go to ``<output_dir>/seed-<s>/``; the summary to
    ``<output_dir>/bench_train_seeds.md`` and ``.json``. The rows of one seed run back to back, so
    their speedups are comparable; gaps to dense are paired (same seed: same initial weights,
    data order and augmentation draws for every configuration).

    Args:
        base: Base training config, as for :func:`run_train_bench` (its ``seed`` is replaced).
        configs: Names from :data:`TRAIN_PRESETS`; must include ``dense``.
        seeds: The seeds, at least two, no repeats.
        output_dir: Output folder.

    Returns:
        The summary rows of :func:`summarize_seeds`.

    Raises:
        ValueError: For fewer than two seeds, a repeated seed, no ``dense`` configuration, or the
            errors of :func:`run_train_bench`.
    """
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"a bench over seeds needs at least two seeds, got {seeds}; use --seed for one")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    if "dense" not in configs:
        raise ValueError("a bench over seeds reports paired gaps to dense: include 'dense' in the configurations")
    per_seed = {}
    for seed in seeds:
        _LOG.info("bench train: seed %d", seed)
        per_seed[seed] = run_train_bench({**base, "seed": seed}, configs, os.path.join(output_dir, f"seed-{seed}"))
    summary = summarize_seeds(per_seed)
    with open(os.path.join(output_dir, "bench_train_seeds.json"), "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "summary": summary, "per_seed": {str(k): v for k, v in per_seed.items()}},
                  f, indent=2)
    with open(os.path.join(output_dir, "bench_train_seeds.md"), "w", encoding="utf-8") as f:
        f.write(format_seeds_table(summary) + "\n")
    return summary


def summarize_seeds(per_seed: Mapping[int, Sequence[dict]]) -> List[dict]:
    """Per configuration: mean top-1, paired gap to dense (mean, sample std, standard error, worst)
    and median speedup over the seeds.

    Args:
        per_seed: ``{seed: rows}``, rows as returned by :func:`run_train_bench` (with
            ``delta_top1`` and ``speedup`` relative to that seed's dense row).

    Returns:
        One dict per configuration, in first-seen order: ``name``, ``seeds``, ``val_top1_mean``,
        ``delta_mean``, ``delta_std`` (0 for one seed), ``delta_sem``, ``delta_min``,
        ``speedup_median``, ``relative_flops_mean``. Top-1 is in percent, gaps in percentage
        points, speedups are dense seconds over the row's seconds of the same seed.
    """
    names: List[str] = []
    for rows in per_seed.values():
        for r in rows:
            if r["name"] not in names:
                names.append(r["name"])
    out = []
    for name in names:
        rs = [r for rows in per_seed.values() for r in rows if r["name"] == name]
        deltas = [r["delta_top1"] for r in rs]
        std = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        out.append({
            "name": name,
            "seeds": len(rs),
            "val_top1_mean": statistics.fmean(r["val_top1"] for r in rs),
            "delta_mean": statistics.fmean(deltas),
            "delta_std": std,
            "delta_sem": std / len(deltas) ** 0.5,
            "delta_min": min(deltas),
            "speedup_median": statistics.median(r["speedup"] for r in rs),
            "relative_flops_mean": statistics.fmean(r["relative_train_flops"] for r in rs),
        })
    return out


def format_seeds_table(summary: Sequence[dict]) -> str:
    """Markdown table of :func:`summarize_seeds` rows.

    Args:
        summary: Rows from :func:`summarize_seeds`.

    Returns:
        The table: mean top-1 (%), gap to dense in points as ``mean +- std (sem)``, worst gap,
        median speedup (dense wall-clock over the row's) and mean relative training FLOPs.
    """
    lines = ["| configuration | seeds | mean val top-1 % | gap to dense, mean +- std (sem) | worst gap | "
             "median speedup | relative FLOPs |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['name']} | {r['seeds']} | {r['val_top1_mean']:.2f} | {r['delta_mean']:+.2f} +- "
            f"{r['delta_std']:.2f} ({r['delta_sem']:.2f}) | {r['delta_min']:+.2f} | {r['speedup_median']:.2f}x | "
            f"{r['relative_flops_mean']:.3f} |"
        )
    return "\n".join(lines)
