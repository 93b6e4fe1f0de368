"""Time to accuracy and FLOPs to accuracy: accuracy curves from budgeted runs, and what they say.

Each configuration is trained at several budgets (:mod:`trilevel.training.budget`) and seeds; a
curve is its mean top-1 against a mean cost, one point per budget, joined by straight lines. The
cost (the curve's x axis, :data:`X_AXES`) is the training wall-clock, the process CPU time of
training, or the training compute from the analytic FLOP model (in dense-epoch equivalents, or
in absolute training FLOPs). From the curves, on any of these axes:

* **cost to accuracy** of a configuration: the first cost at which its curve reaches a target
  top-1 (linear interpolation between budgets; None when it never does);
* **speedup**: the baseline's (dense) cost to the target over the configuration's, with an
  interval from the seed spread: the same computed on the curves shifted by one standard error
  of the mean (the configuration's up and the baseline's down for the high end, and the reverse);
* **gain at equal wall-clock**: a configuration's top-1 minus the baseline curve's top-1 at the
  same wall-clock (None outside the baseline curve's time range: no extrapolation).

On wall-clock (or CPU time) this is **time to accuracy**: the method times this implementation on
this machine. On training FLOPs it is **FLOPs to accuracy**: the method alone, the same on any
hardware. Their link is the **CPU seconds per training FLOP** of each configuration relative to
dense's (the engineering overhead: 1.00 when a configuration's steps cost what their FLOPs imply
relative to dense): the CPU-time speedup is about the FLOPs-to-accuracy speedup over it.

Time to accuracy follows MLPerf Training (Mattson et al., MLSys 2020) and DAWNBench (Coleman et
al., NIPS ML Systems Workshop 2017): the time to a target accuracy, here against a baseline whose
schedule is fitted to each budget (Li et al., ICLR 2020; Kaddour et al., NeurIPS 2023).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "TRAIN_FLOPS_PER_FORWARD",
    "X_AXES",
    "CurvePoint",
    "Curve",
    "run_train_flops",
    "build_curves",
    "time_to_accuracy",
    "accuracy_at_time",
    "tta_rows",
    "interleaved_order",
]

#: Training FLOPs of a step over its forward FLOPs: the backward pass costs about twice the forward
#: (gradients with respect to both the activations and the weights; the ``6N`` per token of
#: training against ``2N`` for the forward of Kaplan et al., 2020). Pruned tokens and attention
#: connections are absent from the backward pass as from the forward, so the factor holds for
#: tri-level steps as for dense ones.
TRAIN_FLOPS_PER_FORWARD = 3.0

#: The axes a curve can be read on: name -> (:class:`CurvePoint` attribute, unit).
X_AXES: Dict[str, Tuple[str, str]] = {
    "seconds": ("seconds_mean", "s of wall-clock"),
    "cpu_seconds": ("cpu_seconds_mean", "s of process CPU time"),
    "compute": ("compute_mean", "dense-epoch equivalents"),
    "flops": ("train_flops_mean", "training FLOPs"),
}


@dataclass
class CurvePoint:
    """One configuration at one budget, over its seeds.

    A mean over the seeds is NaN when one of the seeds' runs lacks what it is computed from.

    Attributes:
        budget: Dense-epoch equivalents.
        top1_mean: Mean validation top-1 (percent).
        top1_sem: Standard error of that mean (0 for one seed).
        top1_std: Sample standard deviation over seeds (0 for one seed).
        seconds_mean: Mean training wall-clock (seconds).
        cpu_seconds_mean: Mean process CPU time of training (seconds).
        seeds: Number of seeds.
        compute_mean: Mean training compute in dense-epoch equivalents (``dense_epochs_used``:
            forward FLOPs summed over steps / (train-set size x dense forward FLOPs per image)).
        train_flops_mean: Mean absolute training FLOPs (:func:`run_train_flops`: forward x
            :data:`TRAIN_FLOPS_PER_FORWARD`).
        cpu_ms_per_gflop_mean: Mean over the runs of their CPU milliseconds per training GFLOP
            (= CPU seconds per training FLOP x 1e12).
    """

    budget: float
    top1_mean: float
    top1_sem: float
    top1_std: float
    seconds_mean: float
    cpu_seconds_mean: float
    seeds: int
    compute_mean: float = math.nan
    train_flops_mean: float = math.nan
    cpu_ms_per_gflop_mean: float = math.nan


@dataclass
class Curve:
    """A configuration's accuracy against its cost, points sorted by budget."""

    name: str
    points: List[CurvePoint] = field(default_factory=list)

    def series(self, shift_sem: float = 0.0, x: str = "seconds") -> Tuple[List[float], List[float]]:
        """The curve as two lists, one entry per point in budget order.

        Args:
            shift_sem: Top-1 shifted by this many standard errors of the mean (e.g. +1, -1).
            x: The axis (a key of :data:`X_AXES`): ``"seconds"`` (wall-clock), ``"cpu_seconds"``,
                ``"compute"`` (dense-epoch equivalents) or ``"flops"`` (training FLOPs).

        Returns:
            ``(xs, top1)``: the points' mean cost on ``x`` (NaN where unknown) and mean top-1
            (percent) plus ``shift_sem`` standard errors.

        Raises:
            ValueError: If ``x`` is not an axis.
        """
        if x not in X_AXES:
            raise ValueError(f"unknown curve axis {x!r}; choose one of {sorted(X_AXES)}")
        attr = X_AXES[x][0]
        return ([getattr(p, attr) for p in self.points], [p.top1_mean + shift_sem * p.top1_sem for p in self.points])

    def known(self, x: str) -> bool:
        """Whether every point's mean cost on axis ``x`` is known (finite)."""
        return bool(self.points) and all(math.isfinite(v) for v in self.series(x=x)[0])


def _number(r: Mapping[str, Any], key: str) -> Optional[float]:
    """``r[key]`` as a finite float, or None when absent, None or not finite."""
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def run_train_flops(r: Mapping[str, Any]) -> Optional[float]:
    """A run's absolute training FLOPs from its summary fields.

    ``TRAIN_FLOPS_PER_FORWARD x dense_epochs_used x num_train x dense_gflops_per_image x 1e9``: its
    forward FLOPs from the analytic FLOP model, times 3 for the backward pass.

    Args:
        r: A run's fields: ``dense_epochs_used`` (dense-epoch equivalents), ``num_train`` (images)
            and ``dense_gflops_per_image`` (dense forward GFLOPs per image).

    Returns:
        The training FLOPs, or None if one of the fields is missing or not finite.
    """
    vals = [_number(r, k) for k in ("dense_epochs_used", "num_train", "dense_gflops_per_image")]
    if any(v is None for v in vals):
        return None
    epochs, images, gflops = vals
    return TRAIN_FLOPS_PER_FORWARD * epochs * images * gflops * 1e9  # type: ignore[operator]


def _cpu_ms_per_gflop(r: Mapping[str, Any]) -> Optional[float]:
    """A run's process CPU milliseconds per training GFLOP, or None when unknown."""
    cpu, flops = _number(r, "train_cpu_seconds"), run_train_flops(r)
    return None if cpu is None or flops is None or flops <= 0 else cpu * 1e3 / (flops / 1e9)


def _mean_or_nan(values: Sequence[Optional[float]]) -> float:
    """The mean of ``values``, NaN if one of them is None."""
    return statistics.fmean(values) if all(v is not None for v in values) else math.nan  # type: ignore[arg-type]


def build_curves(runs: Sequence[Mapping]) -> Dict[str, Curve]:
    """Group run results into curves.

    Args:
        runs: One mapping per run with ``name``, ``budget``, ``seed``, ``val_top1`` (percent),
            ``train_seconds`` and optionally ``train_cpu_seconds``, ``dense_epochs_used``,
            ``num_train`` and ``dense_gflops_per_image`` (what the compute and cost-per-FLOP
            figures need; NaN in the point where a seed's run lacks them).

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
            curve.points.append(CurvePoint(
                budget=budget, top1_mean=statistics.fmean(top1), top1_sem=std / math.sqrt(len(top1)),
                top1_std=std, seconds_mean=statistics.fmean(float(r["train_seconds"]) for r in rs),
                cpu_seconds_mean=_mean_or_nan([_number(r, "train_cpu_seconds") for r in rs]), seeds=len(rs),
                compute_mean=_mean_or_nan([_number(r, "dense_epochs_used") for r in rs]),
                train_flops_mean=_mean_or_nan([run_train_flops(r) for r in rs]),
                cpu_ms_per_gflop_mean=_mean_or_nan([_cpu_ms_per_gflop(r) for r in rs]),
            ))
        curves[name] = curve
    return curves


def time_to_accuracy(xs: Sequence[float], top1: Sequence[float], target: float) -> Optional[float]:
    """First cost at which the piecewise-linear curve reaches ``target``: time, CPU time or compute to accuracy.

    Args:
        xs: The curve's points' cost in budget order, on any axis (wall-clock or CPU seconds,
            dense-epoch equivalents, training FLOPs), shape ``(P,)``.
        top1: Top-1 of the points (percent), shape ``(P,)``.
        target: Target top-1 (percent).

    Returns:
        The interpolated cost, in the unit of ``xs``; the first point's if it already reaches the
        target; None if no point does.

    Raises:
        ValueError: If the lists differ in length or are empty.
    """
    if len(xs) != len(top1) or not xs:
        raise ValueError(f"a curve needs as many costs as accuracies (>= 1), got {len(xs)} and {len(top1)}")
    if top1[0] >= target:
        return float(xs[0])
    for i in range(1, len(top1)):
        if top1[i] >= target:
            a0, a1, t0, t1 = top1[i - 1], top1[i], xs[i - 1], xs[i]
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


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return None if num is None or den is None or den <= 0 else num / den


def _crossings(curve: Curve, x: str, target: float) -> Tuple[Optional[float], ...]:
    """Cost to ``target`` on axis ``x`` of the curve, of it one s.e.m. up and one down (None: never or unknown)."""
    if not curve.known(x):
        return (None, None, None)
    return tuple(time_to_accuracy(*curve.series(shift, x), target) for shift in (0.0, +1.0, -1.0))


def _speedup(base: Curve, curve: Curve, x: str, target: float) -> Dict[str, Optional[float]]:
    """Cost to ``target`` on axis ``x`` and the speedup over ``base`` with its interval from the seed spread.

    Returns:
        ``to_target`` (the curve's cost, None if it never reaches the target or the cost is
        unknown), ``speedup`` (base's cost over the curve's), ``low`` (base one s.e.m. up over
        the curve one down) and ``high`` (base one down over the curve one up); each None where
        a curve never reaches the target or its cost is unknown.
    """
    (b_mid, b_up, b_down), (mid, up, down) = _crossings(base, x, target), _crossings(curve, x, target)
    return {"to_target": mid, "speedup": _ratio(b_mid, mid), "low": _ratio(b_up, down), "high": _ratio(b_down, up)}


def _cost_per_flop(curve: Curve) -> Optional[float]:
    """Mean over the curve's runs of CPU ms per training GFLOP (points with unknown cost left out)."""
    pts = [p for p in curve.points if math.isfinite(p.cpu_ms_per_gflop_mean)]
    seeds = sum(p.seeds for p in pts)
    return sum(p.cpu_ms_per_gflop_mean * p.seeds for p in pts) / seeds if seeds else None


def tta_rows(curves: Mapping[str, Curve], target: float, baseline: str = "dense") -> List[dict]:
    """Per configuration: time and FLOPs to ``target``, speedups over ``baseline``, cost per FLOP, gains.

    Every speedup is the baseline's cost to the target over the configuration's, with the interval
    of :func:`_speedup` (curves shifted by one standard error of the mean); None where a curve never
    reaches the target or its cost is unknown. The FLOPs-to-accuracy speedup is read on absolute
    training FLOPs when both curves know them (correct even when a configuration changes the
    model), else on dense-epoch equivalents.

    Returns:
        One dict per curve: ``name``; ``reached`` (bool: whether its mean curve reaches the
        target, the same on every axis); ``best_top1`` (percent);

        * wall-clock: ``tta_seconds`` (None if never), ``speedup``, ``speedup_low``,
          ``speedup_high``, ``gains`` (per point: ``budget``, ``seconds``, ``gain``: top-1 minus
          the baseline curve at that wall-clock in points, or None outside its range);
        * process CPU time: ``tta_cpu_seconds``, ``cpu_speedup``, ``cpu_speedup_low``,
          ``cpu_speedup_high``;
        * compute: ``compute_to_target`` (dense-epoch equivalents), ``flops_to_target`` (training
          FLOPs, 3 x forward), ``flops_speedup``, ``flops_speedup_low``, ``flops_speedup_high``,
          ``flops_speedup_axis`` (``"flops"`` or ``"compute"``: what it was read on);
        * cost per FLOP: ``cpu_ms_per_gflop`` (mean over its runs of CPU milliseconds per
          training GFLOP) and ``cpu_per_flop_vs_dense`` (that over the baseline's: 1.00 when its
          steps cost what their FLOPs imply relative to the baseline's).

    Raises:
        ValueError: If ``baseline`` has no curve.
    """
    if baseline not in curves:
        raise ValueError(f"the time-to-accuracy table needs a {baseline!r} curve (the budget-matched baseline)")
    base = curves[baseline]
    base_cost = _cost_per_flop(base)
    bs, ba = base.series()
    rows = []
    for name, curve in curves.items():
        wall = _speedup(base, curve, "seconds", target)
        cpu = _speedup(base, curve, "cpu_seconds", target)
        axis = "flops" if base.known("flops") and curve.known("flops") else "compute"
        flops = _speedup(base, curve, axis, target)
        gains = []
        for p in curve.points:
            at = accuracy_at_time(bs, ba, p.seconds_mean)
            gains.append({"budget": p.budget, "seconds": p.seconds_mean,
                          "gain": None if at is None else p.top1_mean - at})
        cost = _cost_per_flop(curve)
        rows.append({
            "name": name,
            "reached": time_to_accuracy(*curve.series(), target) is not None,
            "tta_seconds": wall["to_target"],
            "speedup": wall["speedup"],
            "speedup_low": wall["low"],
            "speedup_high": wall["high"],
            "gains": gains,
            "best_top1": max(p.top1_mean for p in curve.points),
            "tta_cpu_seconds": cpu["to_target"],
            "cpu_speedup": cpu["speedup"],
            "cpu_speedup_low": cpu["low"],
            "cpu_speedup_high": cpu["high"],
            "compute_to_target": _crossings(curve, "compute", target)[0],
            "flops_to_target": _crossings(curve, "flops", target)[0],
            "flops_speedup": flops["speedup"],
            "flops_speedup_low": flops["low"],
            "flops_speedup_high": flops["high"],
            "flops_speedup_axis": axis,
            "cpu_ms_per_gflop": cost,
            "cpu_per_flop_vs_dense": _ratio(cost, base_cost),
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
