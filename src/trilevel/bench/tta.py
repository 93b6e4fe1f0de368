"""Time to accuracy and FLOPs to accuracy: accuracy curves from budgeted runs, and what they say.

Each configuration is trained at several budgets (:mod:`trilevel.training.budget`) and seeds; a
curve is its mean top-1 against a mean cost, one point per budget, joined by straight lines. The
cost (the curve's x axis, :data:`X_AXES`) is the training wall-clock, the process CPU time of
training, or the training compute from the analytic FLOP model (in dense-epoch equivalents, or
in absolute training FLOPs). From the curves, on any of these axes:

* **cost to accuracy** of a configuration: the first cost at which its curve reaches a target
  top-1 (linear interpolation between budgets; None when it never does);
* **speedup**: the baseline's (dense) cost to the target over the configuration's, with a 95%
  percentile bootstrap interval over seeds (:func:`bootstrap_speedup`: each budget's runs of
  both curves resampled with replacement, the ratio recomputed, 2,000 resamples; Efron and
  Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). None where a point has one seed
  (no spread to resample). A curve already at the target at its first budget reaches it at that
  budget *or sooner*: its speedup is a lower bound (``">="``; the baseline's: an upper bound);
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
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "TRAIN_FLOPS_PER_FORWARD",
    "X_AXES",
    "BOOTSTRAP_RESAMPLES",
    "t_quantile_975",
    "bootstrap_speedup",
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

#: Resamples of :func:`bootstrap_speedup` (a fixed generator: the same tables from the same runs).
BOOTSTRAP_RESAMPLES = 2000

#: Student t's 0.975 quantile for 1..30 degrees of freedom (two-sided 95%), from the standard tables.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student t's 0.975 quantile (the half-width of a 95% interval is this times the s.e.m.).

    Args:
        df: Degrees of freedom (seeds - 1), >= 1; above 30 the normal quantile 1.960 (at most 4% narrower).

    Raises:
        ValueError: If ``df`` < 1.
    """
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 seeds), got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960


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
        top1_mean: Mean top-1 (percent) of the runs' reported set (test, else validation).
        top1_sem: Standard error of that mean (0 for one seed).
        top1_std: Sample standard deviation over seeds (0 for one seed).
        top1_ci95: Half-width of the 95% Student t interval of the mean (``t(seeds - 1) x sem``);
            NaN for one seed.
        val_top1_mean: Mean validation top-1 (percent; what to choose on), NaN where a run has no
            validation split (``eval_set`` other than ``"val-split"``).
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
    top1_ci95: float = math.nan
    val_top1_mean: float = math.nan


@dataclass
class Curve:
    """A configuration's accuracy against its cost, points sorted by budget."""

    name: str
    points: List[CurvePoint] = field(default_factory=list)
    #: Per point, each run's ``(top1, {axis: cost})``: what the bootstrap resamples.
    samples: List[List[Tuple[float, Dict[str, Optional[float]]]]] = field(default_factory=list, repr=False)

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


def reported_top1(r: Mapping[str, Any]) -> Any:
    """The top-1 a run reports: ``test_top1`` where the run has one, else ``val_top1`` (older runs)."""
    return r["test_top1"] if r.get("test_top1") is not None else r.get("val_top1")


def build_curves(runs: Sequence[Mapping], top1: str = "reported") -> Dict[str, Curve]:
    """Group run results into curves of the reported top-1 (:func:`reported_top1`: the test set's),
    or, with ``top1="val"``, of the validation top-1 (to choose on).

    Args:
        runs: One mapping per run with ``name``, ``budget``, ``seed``, ``val_top1`` (percent; and
            ``test_top1``, which the curve uses where present),
            ``train_seconds`` and optionally ``train_cpu_seconds``, ``dense_epochs_used``,
            ``num_train`` and ``dense_gflops_per_image`` (what the compute and cost-per-FLOP
            figures need; NaN in the point where a seed's run lacks them).

    Returns:
        ``{name: Curve}`` in first-seen order, points sorted by budget.

    Raises:
        ValueError: If a run lacks one of the keys or its top-1 or time is not finite.
    """
    if top1 not in ("reported", "val"):
        raise ValueError(f"top1 must be 'reported' or 'val', got {top1!r}")
    score = reported_top1 if top1 == "reported" else (lambda r: r.get("val_top1"))
    groups: Dict[str, Dict[float, List[Mapping]]] = {}
    for r in runs:
        for key in ("name", "budget", "val_top1", "train_seconds"):
            if key not in r:
                raise ValueError(f"run {dict(r)!r} lacks {key!r}")
        if score(r) is None or not (math.isfinite(score(r)) and math.isfinite(r["train_seconds"])):
            raise ValueError(f"run {r['name']} at budget {r['budget']} has a non-finite top-1 or time")
        groups.setdefault(r["name"], {}).setdefault(float(r["budget"]), []).append(r)
    curves = {}
    for name, by_budget in groups.items():
        curve = Curve(name)
        for budget in sorted(by_budget):
            rs = by_budget[budget]
            values = [float(score(r)) for r in rs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            sem = std / math.sqrt(len(values))
            curve.samples.append([(t, {"seconds": float(r["train_seconds"]), "cpu_seconds": _number(r, "train_cpu_seconds"),
                                       "compute": _number(r, "dense_epochs_used"), "flops": run_train_flops(r)})
                                  for t, r in zip(values, rs)])
            curve.points.append(CurvePoint(
                budget=budget, top1_mean=statistics.fmean(values), top1_sem=sem,
                top1_ci95=t_quantile_975(len(values) - 1) * sem if len(values) > 1 else math.nan,
                val_top1_mean=_mean_or_nan([_number(r, "val_top1") if r.get("eval_set") == "val-split" else None
                                            for r in rs]),
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


def _crossing(curve: Curve, x: str, target: float) -> Optional[float]:
    """The mean curve's cost to ``target`` on axis ``x`` (None: never, or the cost is unknown)."""
    return time_to_accuracy(*curve.series(0.0, x), target) if curve.known(x) else None


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation between order statistics."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if v[lo] == v[hi]:  # also two equal infinities
        return v[lo]
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def bootstrap_speedup(base: Curve, curve: Curve, x: str, target: float, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> Tuple[Optional[float], Optional[float]]:
    """95% percentile bootstrap interval over seeds of the speedup ``base cost / curve cost`` to ``target``.

    Each resample draws, at every budget of both curves independently, as many runs as the point
    has, with replacement; recomputes the mean curves (top-1 and cost) and their costs to the
    target on axis ``x``; and takes the ratio. A resample whose configuration never reaches the
    target counts as a speedup of 0, one whose baseline never does as infinite (an interval end
    that falls on either is open: None); one where neither does defines no speedup and is left
    out (no interval when that is half of them or more).

    Args:
        base: The baseline curve (budget-matched dense).
        curve: The configuration's curve.
        x: The axis (a key of :data:`X_AXES`).
        target: Target top-1 (percent).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling generator (fixed: the same runs give the same interval).

    Returns:
        ``(low, high)``: the 2.5% and 97.5% quantiles of the resampled speedups; ``(None, None)``
        when a point of either curve has a single run (no spread to resample) or a cost is unknown.
    """
    if not (base.known(x) and curve.known(x)) or any(len(p) < 2 for c in (base, curve) for p in c.samples):
        return None, None
    rng = random.Random(seed)

    def resampled_cost(c: Curve) -> Optional[float]:
        xs, ys = [], []
        for runs in c.samples:
            pick = [runs[rng.randrange(len(runs))] for _ in runs]
            ys.append(statistics.fmean(t for t, _ in pick))
            xs.append(statistics.fmean(cost[x] for _, cost in pick))  # type: ignore[misc]
        return time_to_accuracy(xs, ys, target)

    ratios = []
    for _ in range(resamples):
        b, c = resampled_cost(base), resampled_cost(curve)
        if b is None and c is None:
            continue  # neither reaches the target: no speedup is defined (left out, not counted as 0 or inf)
        ratios.append(0.0 if c is None else math.inf if b is None else b / c)
    if len(ratios) < resamples // 2:  # mostly undefined: no interval worth the name
        return None, None
    low, high = _percentile(ratios, 0.025), _percentile(ratios, 0.975)
    return (low if 0.0 < low < math.inf else None), (high if 0.0 < high < math.inf else None)


def _bound(base: Curve, curve: Curve, target: float) -> str:
    """``">="`` when the curve is at the target at its first budget (it may get there sooner: the
    speedup is a lower bound), ``"<="`` when the baseline is, ``"?"`` when both are, else ``""``."""
    first = lambda c: bool(c.points) and c.points[0].top1_mean >= target  # noqa: E731
    return {(False, False): "", (False, True): ">=", (True, False): "<=", (True, True): "?"}[(first(base), first(curve))]


def _speedup(base: Curve, curve: Curve, x: str, target: float) -> Dict[str, Any]:
    """Cost to ``target`` on axis ``x`` and the speedup over ``base`` with its 95% bootstrap interval.

    Returns:
        ``to_target`` (the curve's cost, None if it never reaches the target or the cost is
        unknown), ``speedup`` (base's cost over the curve's; None where either never reaches the
        target, or both reach it at their first budget), ``low``/``high`` (:func:`bootstrap_speedup`),
        ``bound`` (:func:`_bound`).
    """
    mid, b_mid = _crossing(curve, x, target), _crossing(base, x, target)
    bound = "" if curve is base else _bound(base, curve, target)
    speedup = None if bound == "?" else _ratio(b_mid, mid)
    if curve is base or speedup is None:  # the baseline's own row is 1.00 by definition
        low, high = None, None
    else:
        low, high = bootstrap_speedup(base, curve, x, target)
    if bound == ">=":
        high = None  # the configuration may reach the target sooner than its first budget: no upper end
    elif bound == "<=":
        low = None
    return {"to_target": mid, "speedup": speedup, "low": low, "high": high, "bound": bound}


def _cost_per_flop(curve: Curve) -> Optional[float]:
    """Mean over the curve's runs of CPU ms per training GFLOP (points with unknown cost left out)."""
    pts = [p for p in curve.points if math.isfinite(p.cpu_ms_per_gflop_mean)]
    seeds = sum(p.seeds for p in pts)
    return sum(p.cpu_ms_per_gflop_mean * p.seeds for p in pts) / seeds if seeds else None


def tta_rows(curves: Mapping[str, Curve], target: float, baseline: str = "dense") -> List[dict]:
    """Per configuration: time and FLOPs to ``target``, speedups over ``baseline``, cost per FLOP, gains.

    Every speedup is the baseline's cost to the target over the configuration's, with the 95%
    bootstrap interval over seeds of :func:`bootstrap_speedup` (None with one seed per point) and
    a bound marker (``">="``: the configuration was at the target at its first budget, so the
    speedup is a lower bound; ``"<="``: the baseline was; ``"?"``: both were, no speedup); None
    where a curve never reaches the target or its cost is unknown. The FLOPs-to-accuracy speedup is read on absolute
    training FLOPs when both curves know them (correct even when a configuration changes the
    model), else on dense-epoch equivalents.

    Returns:
        One dict per curve: ``name``; ``reached`` (bool: whether its mean curve reaches the
        target, the same on every axis); ``best_top1`` (percent);

        * wall-clock: ``tta_seconds`` (None if never), ``speedup``, ``speedup_low``,
          ``speedup_high`` (95% interval), ``speedup_bound`` (the same for every axis), ``gains`` (per point: ``budget``, ``seconds``, ``gain``: top-1 minus
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
            "speedup_bound": wall["bound"],
            "cpu_speedup_bound": cpu["bound"],
            "flops_speedup_bound": flops["bound"],
            "is_baseline": name == baseline,
            "interval": "95% percentile bootstrap over seeds",
            "seeds_min": min(p.seeds for c in (base, curve) for p in c.points),
            "gains": gains,
            "best_top1": max(p.top1_mean for p in curve.points),
            "tta_cpu_seconds": cpu["to_target"],
            "cpu_speedup": cpu["speedup"],
            "cpu_speedup_low": cpu["low"],
            "cpu_speedup_high": cpu["high"],
            "compute_to_target": _crossing(curve, "compute", target),
            "flops_to_target": _crossing(curve, "flops", target),
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
