"""Time-to-accuracy: accuracy-against-wall-clock curves from budgeted runs, and what they say.

Each configuration is trained at several budgets (:mod:`trilevel.training.budget`) and seeds; a
curve is its mean top-1 against its mean training wall-clock, one point per budget, joined by
straight lines. From the curves:

* **time to accuracy** of a configuration: the first wall-clock at which its curve reaches a
  target top-1 (linear interpolation between budgets; None when it never does);
* **TTA speedup**: the baseline's (dense) time to the target over the configuration's, with an
  interval from the seed spread: the same computed on the curves shifted by one standard error
  of the mean (the configuration's up and the baseline's down for the high end, and the reverse);
* **gain at equal wall-clock**: a configuration's top-1 minus the baseline curve's top-1 at the
  same wall-clock (None outside the baseline curve's time range: no extrapolation).

The measure follows MLPerf Training and DAWNBench (time to a target accuracy) against a baseline
whose schedule is fitted to each budget (Li et al., ICLR 2020; Kaddour et al., NeurIPS 2023).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "CurvePoint",
    "Curve",
    "build_curves",
    "time_to_accuracy",
    "accuracy_at_time",
    "tta_rows",
    "interleaved_order",
]


@dataclass
class CurvePoint:
    """One configuration at one budget, over its seeds.

    Attributes:
        budget: Dense-epoch equivalents.
        top1_mean: Mean validation top-1 (percent).
        top1_sem: Standard error of that mean (0 for one seed).
        top1_std: Sample standard deviation over seeds (0 for one seed).
        seconds_mean: Mean training wall-clock (seconds).
        cpu_seconds_mean: Mean process CPU time of training (seconds), or NaN when unknown.
        seeds: Number of seeds.
    """

    budget: float
    top1_mean: float
    top1_sem: float
    top1_std: float
    seconds_mean: float
    cpu_seconds_mean: float
    seeds: int


@dataclass
class Curve:
    """A configuration's accuracy against wall-clock, points sorted by budget."""

    name: str
    points: List[CurvePoint] = field(default_factory=list)

    def series(self, shift_sem: float = 0.0) -> Tuple[List[float], List[float]]:
        """``(seconds, top1)`` lists, top-1 shifted by ``shift_sem`` standard errors."""
        return ([p.seconds_mean for p in self.points], [p.top1_mean + shift_sem * p.top1_sem for p in self.points])


def build_curves(runs: Sequence[Mapping]) -> Dict[str, Curve]:
    """Group run results into curves.

    Args:
        runs: One mapping per run with ``name``, ``budget``, ``seed``, ``val_top1`` (percent),
            ``train_seconds`` and optionally ``train_cpu_seconds``.

    Returns:
        ``{name: Curve}`` in first-seen order, points sorted by budget.

    Raises:
        ValueError: If a run lacks one of the keys or its top-1 or time is not finite.
    """
    groups: Dict[str, Dict[float, List[Mapping]]] = {}
    for r in runs:
        for key in ("name", "budget", "val_top1", "train_seconds"):
            if key not in r:
                raise ValueError(f"run {dict(r)!r} lacks {key!r}")
        if not (math.isfinite(r["val_top1"]) and math.isfinite(r["train_seconds"])):
            raise ValueError(f"run {r['name']} at budget {r['budget']} has a non-finite top-1 or time")
        groups.setdefault(r["name"], {}).setdefault(float(r["budget"]), []).append(r)
    curves = {}
    for name, by_budget in groups.items():
        curve = Curve(name)
        for budget in sorted(by_budget):
            rs = by_budget[budget]
            top1 = [float(r["val_top1"]) for r in rs]
            std = statistics.stdev(top1) if len(top1) > 1 else 0.0
            cpu = [r.get("train_cpu_seconds") for r in rs]
            cpu_mean = statistics.fmean(cpu) if all(c is not None for c in cpu) else float("nan")
            curve.points.append(CurvePoint(
                budget=budget, top1_mean=statistics.fmean(top1), top1_sem=std / math.sqrt(len(top1)),
                top1_std=std, seconds_mean=statistics.fmean(float(r["train_seconds"]) for r in rs),
                cpu_seconds_mean=cpu_mean, seeds=len(rs),
            ))
        curves[name] = curve
    return curves


def time_to_accuracy(seconds: Sequence[float], top1: Sequence[float], target: float) -> Optional[float]:
    """First wall-clock at which the piecewise-linear curve reaches ``target``.

    Args:
        seconds: Wall-clock of the curve's points, in budget order.
        top1: Top-1 of the points.
        target: Target top-1.

    Returns:
        The interpolated time; the first point's time if it already reaches the target; None if
        no point does.

    Raises:
        ValueError: If the lists differ in length or are empty.
    """
    if len(seconds) != len(top1) or not seconds:
        raise ValueError(f"a curve needs as many times as accuracies (>= 1), got {len(seconds)} and {len(top1)}")
    if top1[0] >= target:
        return float(seconds[0])
    for i in range(1, len(top1)):
        if top1[i] >= target:
            a0, a1, t0, t1 = top1[i - 1], top1[i], seconds[i - 1], seconds[i]
            return float(t0 + (target - a0) / (a1 - a0) * (t1 - t0))
    return None


def accuracy_at_time(seconds: Sequence[float], top1: Sequence[float], t: float) -> Optional[float]:
    """The curve's top-1 at wall-clock ``t`` (linear between points ordered by time), None outside its range."""
    pts = sorted(zip(seconds, top1))
    if not pts or t < pts[0][0] or t > pts[-1][0]:
        return None
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return a0 if t1 == t0 else a0 + (t - t0) / (t1 - t0) * (a1 - a0)
    return pts[0][1]


def tta_rows(curves: Mapping[str, Curve], target: float, baseline: str = "dense") -> List[dict]:
    """Per configuration: time to ``target``, TTA speedup over ``baseline`` with its interval, gains at equal time.

    Returns:
        One dict per curve: ``name``, ``reached`` (bool), ``tta_seconds`` (None if never),
        ``speedup`` (baseline time / this time; None if either never reaches the target),
        ``speedup_low``/``speedup_high`` (from the curves shifted by one standard error; None
        where a shifted curve never reaches the target), ``gains`` (per point: budget, seconds,
        top-1 minus the baseline curve at that time or None), ``best_top1``.

    Raises:
        ValueError: If ``baseline`` has no curve.
    """
    if baseline not in curves:
        raise ValueError(f"the time-to-accuracy table needs a {baseline!r} curve (the budget-matched baseline)")
    base = curves[baseline]
    b_mid = time_to_accuracy(*base.series(), target)
    b_fast = time_to_accuracy(*base.series(+1.0), target)
    b_slow = time_to_accuracy(*base.series(-1.0), target)
    rows = []
    for name, curve in curves.items():
        mid = time_to_accuracy(*curve.series(), target)
        fast = time_to_accuracy(*curve.series(+1.0), target)
        slow = time_to_accuracy(*curve.series(-1.0), target)

        def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
            return None if num is None or den is None or den <= 0 else num / den

        gains = []
        bs, ba = base.series()
        for p in curve.points:
            at = accuracy_at_time(bs, ba, p.seconds_mean)
            gains.append({"budget": p.budget, "seconds": p.seconds_mean,
                          "gain": None if at is None else p.top1_mean - at})
        rows.append({
            "name": name,
            "reached": mid is not None,
            "tta_seconds": mid,
            "speedup": ratio(b_mid, mid),
            "speedup_low": ratio(b_fast, slow),
            "speedup_high": ratio(b_slow, fast),
            "gains": gains,
            "best_top1": max(p.top1_mean for p in curve.points),
        })
    return rows


def interleaved_order(configs: Sequence[str], budgets: Sequence[float], seeds: Sequence[int]) -> List[Tuple[int, float, str]]:
    """The order of a bench's runs: seed by seed, budget by budget, configurations in rotating order.

    Configuration ``j`` of the ``i``-th (seed, budget) group runs at position ``(i + j) % len(configs)``
    of that group, so every configuration runs early and late alike and a drift of the machine's
    speed hits all of them (the runs of one group take about the same time: same budget).

    Returns:
        ``(seed, budget, configuration)`` triples.
    """
    order = []
    n = len(configs)
    i = 0
    for seed in seeds:
        for budget in budgets:
            order += [(seed, budget, configs[(i + j) % n]) for j in range(n)]
            i += 1
    return order
