"""``trilevel bench train --budgets ...``: every configuration at every budget and seed, interleaved.

Each run is a full ``trilevel train`` with ``--budget B`` (its LR, warm-up and keep-ratio schedules
fitted to the steps B dense epochs of compute buy, :mod:`trilevel.training.budget`). The runs
alternate on the machine (seed by seed, budget by budget, configurations in rotating order), so
a drift of its speed hits every configuration alike. The results become accuracy curves against
wall-clock and against training compute, time-to-accuracy and FLOPs-to-accuracy tables against
budget-matched dense training with each configuration's CPU cost per FLOP
(:mod:`trilevel.bench.tta`), two plots and JSON. A run whose folder already holds a finished
summary with the same configuration, made by the same code version (the commit in its summary,
:func:`trilevel.version.code_version`), is not run again, so an interrupted bench resumes; with
``allow_mixed_code`` a run of another version is reused too, and the tables say that they mix
versions. The curves and the speedups are read on the test set (``test_top1``; a run without a
validation split has only it); the validation top-1 (``val_top1``, with ``--val-split``) stands
beside them in the curve table, the column to choose settings on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from ..checkpoint import atomic_write_json
from .train import TRAIN_PRESETS, row_settings
from .tta import BOOTSTRAP_RESAMPLES, TRAIN_FLOPS_PER_FORWARD, build_curves, interleaved_order, tta_rows

__all__ = ["BUDGET_RUN_KEYS", "FIGURES_NOTE", "run_budget_bench", "format_curve_table", "format_provenance",
           "format_selection", "format_tta_table"]

_LOG = logging.getLogger(__name__)

#: Summary fields kept for each run of the bench.
BUDGET_RUN_KEYS = ("val_top1", "val_top1_full_tokens", "test_top1", "test_top1_full_tokens", "eval_set",
                   "val_split", "code_version", "train_seconds", "train_cpu_seconds", "eval_seconds",
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


def _check(configs: Sequence[str], budgets: Sequence[float], seeds: Sequence[int], table: Mapping,
           baseline: str = "dense") -> None:
    allowed = sorted(n for n in table if n != "dense-same-time")
    unknown = [c for c in configs if c not in table or c == "dense-same-time"]
    if unknown:
        raise ValueError(f"unknown bench configurations {unknown} for a budget bench; allowed: {allowed}")
    if "dense" not in configs:
        raise ValueError("a budget bench measures time to accuracy against dense training: include 'dense' in --configs")
    if baseline not in configs:
        raise ValueError(f"--baseline {baseline!r} must be one of --configs ({', '.join(configs)})")
    if not table[baseline].get("dense"):
        raise ValueError(f"--baseline {baseline!r} must be a dense configuration (dense: true), the budget-matched "
                         f"baseline the speedups divide by")
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


def _done_before(folder: str, cfg: Mapping[str, Any], allow_mixed_code: bool = False) -> Optional[dict]:
    """The finished summary in ``folder`` if it was trained with ``cfg`` by this code version (else None).

    A run made by another code version (or by uncommitted code, ``+dirty``, which names no fixed
    code) is reused only with ``allow_mixed_code``.
    """
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as f:
            stored = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    from ..training.config import RUNTIME_KEYS, field_defaults

    # a runtime switch added after the run was stored (e.g. compile) does not change what it trained
    defaults = field_defaults()
    # an option the stored run's version did not have yet ran at its default
    same = all(stored.get(k, defaults.get(k)) == v for k, v in cfg.items()
               if k not in ("output_dir", "resume") and (k in stored or k not in RUNTIME_KEYS))
    if not (summary.get("finished") and same):
        return None
    from ..version import code_version

    version = summary.get("code_version")
    if not allow_mixed_code and (version != code_version() or str(version).endswith("+dirty")):
        _LOG.info("%s: not reused, made by code version %s (now %s); pass --allow-mixed-code to reuse it",
                  folder, version, code_version())
        return None
    return summary


def run_budget_bench(
    base: Mapping[str, Any],
    configs: Sequence[str],
    budgets: Sequence[float],
    seeds: Sequence[int],
    output_dir: str,
    target: Optional[float] = None,
    target_drop: float = 0.3,
    extra_configs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    allow_mixed_code: bool = False,
    baseline: str = "dense",
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
        allow_mixed_code: Reuse stored runs made by another code version (the result's
            ``code_versions`` lists every version in it, and the tables say so).
        baseline: The dense configuration the target and the speedups are read against (e.g. a
            dense row tuned on validation, next to the untuned ``dense``).

    Returns:
        ``{"runs", "curves", "target", "tta", "configs", "budgets", "seeds",
        "train_flops_per_forward", "figures_note", "code_versions", "reported_set", "selection"}``
        (``selection``: ``{"target", "tta"}`` read on the validation curves when every run has a
        validation split, else None; ``reported_set``: the set of ``curves`` and ``tta``): the run rows, the curves (as dicts, one per
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
    _check(configs, budgets, seeds, table, baseline)
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
            cfg = {**row_settings(base, table[name]), "budget": budget, "seed": seed, "output_dir": folder,
                   "resume": None}
            summary = _done_before(folder, training.TrainConfig.from_dict(cfg).to_dict(), allow_mixed_code)
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
    dense_best = curves[baseline].points[-1].top1_mean
    target = dense_best - target_drop if target is None else float(target)
    tta = tta_rows(curves, target, baseline)
    selection = None
    if all(r.get("eval_set") == "val-split" for r in rows):  # the same figures on validation: what to choose on
        val_curves = build_curves(rows, top1="val")
        val_target = val_curves[baseline].points[-1].top1_mean - target_drop
        selection = {"target": val_target, "tta": tta_rows(val_curves, val_target, baseline)}
    versions = sorted({str(r.get("code_version")) for r in rows})
    result = {"runs": rows, "curves": {k: [vars(p) for p in c.points] for k, c in curves.items()},
              "target": target, "tta": tta, "configs": list(configs), "budgets": budgets, "seeds": list(seeds),
              "train_flops_per_forward": TRAIN_FLOPS_PER_FORWARD, "figures_note": FIGURES_NOTE,
              "baseline": baseline, "code_versions": versions, "reported_set": _reported_set(rows), "selection": selection}
    with open(os.path.join(output_dir, "bench_tta.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "bench_tta.md"), "w", encoding="utf-8") as f:
        f.write(format_provenance(result) + "\n\n" + format_curve_table(curves) + "\n\n"
                + format_tta_table(tta, target) + "\n" + format_selection(selection))
    from ..viz import plot_flops_curves, plot_tta_curves

    def legend(key: str) -> Dict[str, str]:
        return {r["name"]: speedup_text(r, key, "never") for r in tta if r["name"] != baseline}

    plot_tta_curves(curves, os.path.join(output_dir, "accuracy_vs_time.png"), target, legend("speedup"))
    if any(c.known("compute") for c in curves.values()):
        plot_flops_curves(curves, os.path.join(output_dir, "accuracy_vs_flops.png"), target, legend("flops_speedup"))
    return result


def _reported_set(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which set the curves' top-1 comes from: ``test`` (every run has ``test_top1``), or what mixes."""
    sets = {"test" if r.get("test_top1") is not None else "the evaluated set (val_top1; a run from before test_top1)"
            for r in rows}
    return sets.pop() if len(sets) == 1 else "mixed: " + " and ".join(sorted(sets))


def format_provenance(result: Mapping[str, Any]) -> str:
    """The lines that say what a bench's figures come from: code version(s), the reported set, the intervals."""
    versions = list(result.get("code_versions") or [])
    code = (f"code version {versions[0]}" if len(versions) == 1 else
            f"**mixes {len(versions)} code versions** ({', '.join(versions)}; runs reused with --allow-mixed-code)")
    return (f"Runs made by {code}. Speedups are over {result.get('baseline', 'dense')} (the budget-matched "
            f"dense baseline). Top-1 and speedups on the {result.get('reported_set', 'test')} set; "
            f"val top-1 (the held-out validation split, --val-split) is the column to choose on. "
            f"Intervals: 95% (Student t over seeds for a mean; percentile bootstrap over seeds, "
            f"{BOOTSTRAP_RESAMPLES} resamples, for a speedup); none with one seed.")


def format_selection(selection: Optional[Mapping[str, Any]]) -> str:
    """The FLOPs-to-accuracy speedups read on the validation split (what to choose on), or ``""`` without one.

    Args:
        selection: ``{"target", "tta"}`` of :func:`run_budget_bench` (validation curves), or None.
    """
    if not selection:
        return ""
    lines = ["", f"Selection on the validation split (choose on this; target {selection['target']:.2f}% val top-1 = "
             f"dense's at its largest budget minus the drop):", "",
             "| configuration | best val top-1 % | FLOPs-to-accuracy speedup vs dense on val (95% CI) | "
             "TTA speedup on val, wall-clock (95% CI) |", "|---|---|---|---|"]
    for r in selection["tta"]:
        lines.append(f"| {r['name']} | {r['best_top1']:.2f} | {speedup_text(r, 'flops_speedup')} | "
                     f"{speedup_text(r, 'speedup')} |")
    return "\n".join(lines) + "\n"


def _fmt(x: Optional[float], spec: str, none: str = "n/a") -> str:
    """``x`` formatted by ``spec``; ``none`` when it is None or NaN."""
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_curve_table(curves: Mapping[str, Any]) -> str:
    """Markdown table of the curves' points.

    Per configuration and budget: seeds, mean validation top-1 (``n/a`` without a validation
    split: choose on this column), mean reported (test) top-1 with its 95% Student t interval
    (none for one seed), s.e.m. and standard deviation (percent), mean training wall-clock and CPU
    time (s), mean compute used (dense-epoch equivalents) and mean training FLOPs (3 x forward).
    """
    lines = ["| configuration | budget (dense epochs) | seeds | val top-1 % (mean) | test top-1 % (mean, 95% CI) | "
             "sem | std | train s (wall) | train s (CPU) | compute used (dense epochs) | train FLOPs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, curve in curves.items():
        for p in curve.points:
            ci = "" if p.seeds < 2 else f" [{p.top1_mean - p.top1_ci95:.2f}, {p.top1_mean + p.top1_ci95:.2f}]"
            lines.append(f"| {name} | {p.budget:g} | {p.seeds} | {_fmt(p.val_top1_mean, '.2f')} | {p.top1_mean:.2f}{ci} | "
                         f"{p.top1_sem:.2f} | {p.top1_std:.2f} | {p.seconds_mean:.0f} | {_fmt(p.cpu_seconds_mean, '.0f')} | "
                         f"{_fmt(p.compute_mean, '.3g')} | {_fmt(p.train_flops_mean, '.3g')} |")
    return "\n".join(lines)


def speedup_text(r: Mapping[str, Any], key: str, never: str = "never reaches the target") -> str:
    """``r[key]`` as text: its bound marker (``>=`` a lower bound, ``<=`` an upper bound), the value and
    its 95% interval (``[low-high]``, ``?`` for an open end; none with one seed)."""
    if not r["reached"]:
        return never
    bound = r.get(key + "_bound", "")
    if bound == "?":
        return "n/a (dense and this row both at the target at the first budget)"
    if r[key] is None:
        return "n/a"
    text = f"{bound}{r[key]:.2f}x"
    if r.get("is_baseline"):
        return f"{text} (the baseline)"
    if r.get("seeds_min", 2) < 2:
        return text  # one seed: no interval
    return f"{text} [95% CI {_fmt(r[key + '_low'], '.2f', '?')}-{_fmt(r[key + '_high'], '.2f', '?')}]"



def format_tta_table(rows: Sequence[Mapping[str, Any]], target: float) -> str:
    """Markdown tables of :func:`trilevel.bench.tta.tta_rows`, headed by :data:`FIGURES_NOTE`.

    * **Time to accuracy** (the method times this implementation on this machine): time to
      ``target`` (wall-clock s), TTA speedup vs dense on wall-clock and on process CPU time (with
      their intervals), gain over dense at equal wall-clock per budget (points).
    * **FLOPs to accuracy and cost per FLOP**: compute to ``target`` (dense-epoch equivalents and
      training FLOPs), FLOPs-to-accuracy speedup vs dense (95% CI), CPU milliseconds per
      training GFLOP and its ratio to dense's.
    """
    lines = [f"Target: {target:.2f}% top-1 (dense at its largest budget minus the drop, unless given). "
             f"'>=': the row was at the target at its first budget, so its speedup is a lower bound.", "",
             FIGURES_NOTE, "", "Time to accuracy (the method times this implementation on this machine):", "",
             "| configuration | time to target (s) | TTA speedup vs dense, wall-clock (95% CI) | TTA speedup vs "
             "dense, CPU time (95% CI) | gain over dense at equal wall-clock, per budget (points) |",
             "|---|---|---|---|---|"]
    for r in rows:
        gains = ", ".join(f"{g['budget']:g}: {_fmt(g['gain'], '+.2f')}" for g in r["gains"])
        lines.append(f"| {r['name']} | {_fmt(r['tta_seconds'], '.0f', 'never')} | {speedup_text(r, 'speedup')} | "
                     f"{speedup_text(r, 'cpu_speedup', 'never')} | {gains} |")
    lines += ["", "FLOPs to accuracy (the method, the same on any hardware) and cost per FLOP (this implementation "
              "on this machine):", "",
              "| configuration | compute to target (dense epochs) | training FLOPs to target | FLOPs-to-accuracy "
              "speedup vs dense (95% CI) | CPU ms per training GFLOP | CPU s per FLOP vs dense |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        unknown = "n/a" if r["reached"] else "never"
        lines.append(f"| {r['name']} | {_fmt(r['compute_to_target'], '.3g', unknown)} | "
                     f"{_fmt(r['flops_to_target'], '.3g', unknown)}"
                     f" | {speedup_text(r, 'flops_speedup')} | {_fmt(r['cpu_ms_per_gflop'], '.3g')} | "
                     f"{_fmt(r['cpu_per_flop_vs_dense'], '.2f')} |")
    return "\n".join(lines)
