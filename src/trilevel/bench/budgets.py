"""``trilevel bench train --budgets ...``: every configuration at every budget and seed, interleaved.

Each run is a full ``trilevel train`` with ``--budget B`` (its LR, warm-up and keep-ratio schedules
fitted to the steps B dense epochs of compute buy, :mod:`trilevel.training.budget`). The runs
alternate on the machine (seed by seed, budget by budget, configurations in rotating order), so
a drift of its speed hits every configuration alike. The results become accuracy curves against
wall-clock and against training compute, time-to-accuracy and FLOPs-to-accuracy tables against
budget-matched dense training with each configuration's CPU cost per FLOP
(:mod:`trilevel.bench.tta`), two plots and JSON. A run whose folder already holds a finished
summary with the same configuration is not run again, so an interrupted bench resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from ..checkpoint import atomic_write_json
from ..settings import merge_settings
from .train import TRAIN_PRESETS
from .tta import TRAIN_FLOPS_PER_FORWARD, build_curves, interleaved_order, tta_rows

__all__ = ["BUDGET_RUN_KEYS", "FIGURES_NOTE", "run_budget_bench", "format_curve_table", "format_tta_table"]

_LOG = logging.getLogger(__name__)

#: Summary fields kept for each run of the bench.
BUDGET_RUN_KEYS = ("val_top1", "val_top1_full_tokens", "train_seconds", "train_cpu_seconds", "eval_seconds",
                   "checkpoint_seconds", "total_steps", "epochs_trained", "dense_epochs_used",
                   "relative_train_flops", "num_train", "dense_gflops_per_image", "output_dir")

#: What the two kinds of figures of a budget bench measure (the heading of its tables).
FIGURES_NOTE = (
    "FLOPs to accuracy: the method, the same on any hardware (from the analytic FLOP model; a training step "
    "counted as 3x its forward FLOPs). Time to accuracy: the method times this implementation on this machine. "
    "CPU s per FLOP vs dense is the link: this implementation's CPU time per training FLOP over dense's (1.00: "
    "its steps cost what their FLOPs imply relative to dense; above 1: overhead), so the TTA speedup on CPU time "
    "is about the FLOPs-to-accuracy speedup divided by it."
)


def _check(configs: Sequence[str], budgets: Sequence[float], seeds: Sequence[int], table: Mapping) -> None:
    allowed = sorted(n for n in table if n != "dense-same-time")
    unknown = [c for c in configs if c not in table or c == "dense-same-time"]
    if unknown:
        raise ValueError(f"unknown bench configurations {unknown} for a budget bench; allowed: {allowed}")
    if "dense" not in configs:
        raise ValueError("a budget bench measures time to accuracy against dense training: include 'dense' in --configs")
    for what, values in (("configurations", configs), ("budgets", budgets), ("seeds", seeds)):
        if not values:
            raise ValueError(f"--{what if what != 'configurations' else 'configs'} must name at least one")
        if len(set(values)) != len(values):
            name = "configs" if what == "configurations" else what
            raise ValueError(f"--{name} {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)!r}: "
                             f"{what} repeat, each would overwrite the other's run folder")
    for b in budgets:
        if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0):
            raise ValueError(f"--budgets must be positive numbers of dense epochs, got {b!r}")


def _done_before(folder: str, cfg: Mapping[str, Any]) -> Optional[dict]:
    """The finished summary in ``folder`` if it was trained with ``cfg`` (else None)."""
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as f:
            stored = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    from ..training.config import RUNTIME_KEYS

    # a runtime switch added after the run was stored (e.g. compile) does not change what it trained
    same = all(stored.get(k) == v for k, v in cfg.items()
               if k not in ("output_dir", "resume") and (k in stored or k not in RUNTIME_KEYS))
    return summary if summary.get("finished") and same else None


def run_budget_bench(
    base: Mapping[str, Any],
    configs: Sequence[str],
    budgets: Sequence[float],
    seeds: Sequence[int],
    output_dir: str,
    target: Optional[float] = None,
    target_drop: float = 0.3,
    extra_configs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Train every configuration at every budget and seed (interleaved); return curves and TTA figures.

    Args:
        base: The shared recipe (a :class:`~trilevel.training.TrainConfig` as a dict; ``budget``
            and ``seed`` are set per run).
        configs: Names from :data:`~trilevel.bench.train.TRAIN_PRESETS`, ``dense`` included.
        budgets: Budgets in dense-epoch equivalents.
        seeds: Seeds.
        output_dir: Runs go to ``<output_dir>/<config>/b<budget>-s<seed>/``; ``bench_runs.json``
            (every run, written as they finish), ``bench_tta.json``, ``bench_tta.md``,
            ``accuracy_vs_time.png`` and ``accuracy_vs_flops.png`` to ``output_dir``.
        target: Time-to-accuracy target top-1 (percent); None: dense's mean top-1 at the
            largest budget minus ``target_drop``.
        target_drop: Points below dense's best mean for the default target.
        extra_configs: More configurations, ``{name: overrides of the recipe}`` (e.g. the rows of
            a study), next to :data:`~trilevel.bench.train.TRAIN_PRESETS`.

    Returns:
        ``{"runs", "curves", "target", "tta", "configs", "budgets", "seeds",
        "train_flops_per_forward", "figures_note"}``: the run rows, the curves (as dicts, one per
        point: :class:`~trilevel.bench.tta.CurvePoint`'s fields), the target, the rows of
        :func:`trilevel.bench.tta.tta_rows` (time and FLOPs to accuracy, speedups, cost per FLOP),
        the bench's settings, the factor from forward to training FLOPs and :data:`FIGURES_NOTE`.

    Raises:
        ValueError: Unknown or repeated configurations, no ``dense``, bad budgets or seeds
            (before anything trains), and the errors of :func:`trilevel.train`.
    """
    from .. import training

    budgets = [float(b) for b in budgets]
    table = {**TRAIN_PRESETS, **dict(extra_configs or {})}
    _check(configs, budgets, seeds, table)
    os.makedirs(output_dir, exist_ok=True)
    rows: List[dict] = []
    order = interleaved_order(list(configs), budgets, list(seeds))
    from ..training.signals import STOP_REQUEST, stop_on_sigterm
    from ..training.trainer import TrainingInterrupted

    STOP_REQUEST.clear()  # a request left from an earlier run in this process is not this bench's
    with stop_on_sigterm():
        for n, (seed, budget, name) in enumerate(order, start=1):
            if STOP_REQUEST.is_set():  # a SIGTERM during the previous run (or between runs)
                raise TrainingInterrupted(f"stopped by SIGTERM before bench run {n}/{len(order)}; run the same "
                                          f"command again to continue (finished runs are reused)")
            folder = os.path.join(output_dir, name, f"b{budget:g}-s{seed}")
            cfg = {**merge_settings(base, table[name]), "budget": budget, "seed": seed, "output_dir": folder,
                   "resume": None}
            summary = _done_before(folder, training.TrainConfig.from_dict(cfg).to_dict())
            if summary is None:
                _LOG.info("bench run %d/%d: %s at budget %g, seed %d", n, len(order), name, budget, seed)
                summary = training.train(cfg)
            else:
                _LOG.info("bench run %d/%d: %s at budget %g, seed %d: done before, reused", n, len(order), name,
                          budget, seed)
            rows.append({"name": name, "budget": budget, "seed": seed,
                         **{k: summary.get(k) for k in BUDGET_RUN_KEYS}})
            atomic_write_json(os.path.join(output_dir, "bench_runs.json"), rows)
    curves = build_curves(rows)
    dense_best = curves["dense"].points[-1].top1_mean
    target = dense_best - target_drop if target is None else float(target)
    tta = tta_rows(curves, target)
    result = {"runs": rows, "curves": {k: [vars(p) for p in c.points] for k, c in curves.items()},
              "target": target, "tta": tta, "configs": list(configs), "budgets": budgets, "seeds": list(seeds),
              "train_flops_per_forward": TRAIN_FLOPS_PER_FORWARD, "figures_note": FIGURES_NOTE}
    with open(os.path.join(output_dir, "bench_tta.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "bench_tta.md"), "w", encoding="utf-8") as f:
        f.write(format_curve_table(curves) + "\n\n" + format_tta_table(tta, target) + "\n")
    from ..viz import plot_flops_curves, plot_tta_curves

    plot_tta_curves(curves, os.path.join(output_dir, "accuracy_vs_time.png"), target)
    if any(c.known("compute") for c in curves.values()):
        plot_flops_curves(curves, os.path.join(output_dir, "accuracy_vs_flops.png"), target)
    return result


def _fmt(x: Optional[float], spec: str, none: str = "n/a") -> str:
    """``x`` formatted by ``spec``; ``none`` when it is None or NaN."""
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_curve_table(curves: Mapping[str, Any]) -> str:
    """Markdown table of the curves' points.

    Per configuration and budget: seeds, mean top-1 +- s.e.m. and standard deviation (percent),
    mean training wall-clock and CPU time (s), mean compute used (dense-epoch equivalents) and
    mean training FLOPs (3 x forward); ``n/a`` where unknown.
    """
    lines = ["| configuration | budget (dense epochs) | seeds | top-1 % (mean +- sem) | std | train s (wall) | "
             "train s (CPU) | compute used (dense epochs) | train FLOPs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, curve in curves.items():
        for p in curve.points:
            lines.append(f"| {name} | {p.budget:g} | {p.seeds} | {p.top1_mean:.2f} +- {p.top1_sem:.2f} | "
                         f"{p.top1_std:.2f} | {p.seconds_mean:.0f} | {_fmt(p.cpu_seconds_mean, '.0f')} | "
                         f"{_fmt(p.compute_mean, '.3g')} | {_fmt(p.train_flops_mean, '.3g')} |")
    return "\n".join(lines)


def _speedup_cell(r: Mapping[str, Any], key: str, never: str = "never reaches the target") -> str:
    """``r[key]`` with its interval (``r[key + '_low']``-``r[key + '_high']``; ``?`` for an open end)."""
    if not r["reached"]:
        return never
    if r[key] is None:
        return "n/a"
    return f"{r[key]:.2f}x ({_fmt(r[key + '_low'], '.2f', '?')}-{_fmt(r[key + '_high'], '.2f', '?')})"


def format_tta_table(rows: Sequence[Mapping[str, Any]], target: float) -> str:
    """Markdown tables of :func:`trilevel.bench.tta.tta_rows`, headed by :data:`FIGURES_NOTE`.

    * **Time to accuracy** (the method times this implementation on this machine): time to
      ``target`` (wall-clock s), TTA speedup vs dense on wall-clock and on process CPU time (with
      their intervals), gain over dense at equal wall-clock per budget (points).
    * **FLOPs to accuracy and cost per FLOP**: compute to ``target`` (dense-epoch equivalents and
      training FLOPs), FLOPs-to-accuracy speedup vs dense (interval), CPU milliseconds per
      training GFLOP and its ratio to dense's.
    """
    lines = [f"Target: {target:.2f}% top-1 (dense at its largest budget minus the drop, unless given).", "",
             FIGURES_NOTE, "", "Time to accuracy (the method times this implementation on this machine):", "",
             "| configuration | time to target (s) | TTA speedup vs dense, wall-clock (interval) | TTA speedup vs "
             "dense, CPU time (interval) | gain over dense at equal wall-clock, per budget (points) |",
             "|---|---|---|---|---|"]
    for r in rows:
        gains = ", ".join(f"{g['budget']:g}: {_fmt(g['gain'], '+.2f')}" for g in r["gains"])
        lines.append(f"| {r['name']} | {_fmt(r['tta_seconds'], '.0f', 'never')} | {_speedup_cell(r, 'speedup')} | "
                     f"{_speedup_cell(r, 'cpu_speedup', 'never')} | {gains} |")
    lines += ["", "FLOPs to accuracy (the method, the same on any hardware) and cost per FLOP (this implementation "
              "on this machine):", "",
              "| configuration | compute to target (dense epochs) | training FLOPs to target | FLOPs-to-accuracy "
              "speedup vs dense (interval) | CPU ms per training GFLOP | CPU s per FLOP vs dense |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        unknown = "n/a" if r["reached"] else "never"
        lines.append(f"| {r['name']} | {_fmt(r['compute_to_target'], '.3g', unknown)} | "
                     f"{_fmt(r['flops_to_target'], '.3g', unknown)}"
                     f" | {_speedup_cell(r, 'flops_speedup')} | {_fmt(r['cpu_ms_per_gflop'], '.3g')} | "
                     f"{_fmt(r['cpu_per_flop_vs_dense'], '.2f')} |")
    return "\n".join(lines)
