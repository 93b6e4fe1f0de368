"""``trilevel bench train``: full training runs of several configurations with one recipe.

Each configuration (:data:`TRAIN_PRESETS`) overrides the base training configuration; the rows
give validation top-1, training wall-clock, speedup over dense timm and relative FLOPs, and
``dense-same-time`` trains dense for the wall-clock of the fastest other row (the honest
baseline). Over several seeds, :func:`run_train_bench_seeds` pairs each seed's rows with that
seed's dense row.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from typing import Dict, List, Mapping, Sequence

from ..presets import layered_settings

__all__ = [
    "TRAIN_PRESETS", "row_settings", "run_train_bench", "format_train_table",
    "parse_seeds", "run_train_bench_seeds", "summarize_seeds", "format_seeds_table",
]

_LOG = logging.getLogger(__name__)


def _on_paper(**overrides) -> dict:
    """A row on the paper preset's values that keeps the recipe's ``preset`` field (an ablation, a peer)."""
    return layered_settings(overrides, preset="paper")


#: Configurations of ``trilevel bench train``: overrides of the base training config, applied over
#: it by :func:`~trilevel.presets.layered_settings` (a row naming a preset takes its values first).
#: ``trilevel`` is the base config's own tri-level settings; ``dense-same-time`` is dense
#: training for the wall-clock of the fastest other configuration (the honest baseline). The
#: single-level ablations and the peers start from the paper's settings (their schedule: decaying
#: from 1 after a dense warm-up), so they do not change when the defaults do.
TRAIN_PRESETS: Dict[str, dict] = {
    "dense": {"dense": True},
    "trilevel": {},
    "paper": {"dense": False, "preset": "paper"},
    "fast": {"dense": False, "preset": "fast"},
    "fast-patchdrop": {"dense": False, "preset": "fast-patchdrop", "patch_drop": 0.3},
    "token-only": _on_paper(dense=False, attn_keep_ratio=1.0, selector="none"),
    "attention-only": _on_paper(dense=False, keep_ratio=1.0, selector="none"),
    "example-only": _on_paper(dense=False, keep_ratio=1.0, attn_keep_ratio=1.0, selector="forgetting"),
    "evit": _on_paper(dense=False, attn_keep_ratio=1.0, selector="none", token_fate="fuse"),
    "patchdropout": {"dense": True, "patch_drop": 0.3},
    "infobatch": _on_paper(dense=False, keep_ratio=1.0, attn_keep_ratio=1.0, selector="loss", example_remove=0.5),
    "random-examples": _on_paper(dense=False, keep_ratio=1.0, attn_keep_ratio=1.0, selector="random"),
    "dense-same-time": {"dense": True},
}


def row_settings(base: Mapping, row: Mapping) -> dict:
    """The settings of a bench row: the shared recipe ``base`` < the preset the row names < the row."""
    return layered_settings(row, base=base)


def run_train_bench(base: dict, configs: Sequence[str], output_dir: str) -> List[dict]:
    """Train each configuration with the same recipe and epochs; compare with dense timm.

    Args:
        base: Base training config (a ``trilevel.training.TrainConfig`` as a dict: model, data,
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
    from .. import training

    unknown = [c for c in configs if c not in TRAIN_PRESETS]
    if unknown:
        raise ValueError(f"unknown bench configurations {unknown}; allowed: {sorted(TRAIN_PRESETS)}")
    if not configs:
        raise ValueError("configs must name at least one configuration")
    if len(set(configs)) != len(configs):
        raise ValueError(f"--configs {','.join(configs)!r}: configurations repeat, each would overwrite the other's "
                         f"run folder")
    if "dense" not in configs:
        raise ValueError("the bench reports speedups and gaps against dense training: include 'dense' in --configs")
    ordered = [c for c in configs if c != "dense-same-time"]
    if "dense-same-time" in configs and ("dense" not in ordered or len(ordered) < 2):
        raise ValueError("dense-same-time needs 'dense' and at least one other configuration in the list")
    os.makedirs(output_dir, exist_ok=True)
    rows: List[dict] = []

    def run(name: str, overrides: dict) -> dict:
        cfg = {**row_settings(base, overrides), "output_dir": os.path.join(output_dir, name), "resume": None}
        from ..training.signals import STOP_REQUEST
        from ..training.trainer import TrainingInterrupted

        if STOP_REQUEST.is_set():  # SIGTERM during the previous run: start no other
            raise TrainingInterrupted(f"stopped by SIGTERM before bench row {name!r}")
        _LOG.info("bench train: %s (%s)", name, overrides or "base settings")
        s = training.train(cfg)
        row = {"name": name, "val_top1": s["val_top1"], "train_seconds": s["train_seconds"],
               "relative_train_flops": s["relative_train_flops"], "epochs": s["epochs"],
               "train_images": s["train_images"], "keep_ratio": s["keep_ratio"],
               "attn_keep_ratio": s["attn_keep_ratio"], "selector": s["selector"],
               "eval_keep_ratio": s["eval_keep_ratio"], "output_dir": s["output_dir"]}
        rows.append(row)
        return row

    from ..training.signals import STOP_REQUEST, stop_on_sigterm

    STOP_REQUEST.clear()  # a request left from an earlier run in this process is not this bench's
    with stop_on_sigterm():
        for name in ordered:
            run(name, TRAIN_PRESETS[name])
        if "dense-same-time" in configs:
            dense = next(r for r in rows if r["name"] == "dense")
            fastest = min((r for r in rows if r["name"] != "dense"), key=lambda r: r["train_seconds"])
            epochs = max(1, round(dense["epochs"] * fastest["train_seconds"] / dense["train_seconds"]))
            run("dense-same-time", {**TRAIN_PRESETS["dense-same-time"], "epochs": epochs,
                                    "warmup_epochs": min(base.get("warmup_epochs", 1.0), epochs / 5)})
    dense_row = next(r for r in rows if r["name"] == "dense")
    for r in rows:
        r["speedup"] = dense_row["train_seconds"] / r["train_seconds"]
        r["delta_top1"] = r["val_top1"] - dense_row["val_top1"]
    with open(os.path.join(output_dir, "bench_train.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    table = format_train_table(rows)
    with open(os.path.join(output_dir, "bench_train.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    try:
        from ..viz import plot_accuracy_vs_time

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
        raise ValueError(f"--seeds {','.join(map(str, seeds))!r}: seeds repeat")
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

