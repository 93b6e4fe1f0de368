"""Keep-ratio schedules for the token and attention levels.

In the paper both ratios start dense and decay to their targets while training (EViT's keep-rate
schedule, Liang et al., ICLR 2022, used unchanged by Kong et al., AAAI 2023): ratio 1 during a
warm-up, then a per-iteration cosine from 1 down to the target, then constant. The paper's
300-epoch run warms up for 10 epochs and finishes the decay at epoch 110, i.e. at fractions 1/30
and 11/30 of the run, which are the defaults here. Beyond the paper, a schedule may instead grow
from the target to 1 (fewer tokens early, every token at the end) and may end with a dense tail.

A schedule is a pure function of the run's progress (fraction of all training iterations done),
so it carries no state and a resumed run lands on exactly the same ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .options import check_ratio
from .presets import PRESETS

_PAPER = PRESETS["paper"]  # the defaults of a schedule: the paper's (EViT's)

__all__ = ["SCHEDULE_SHAPES", "SCHEDULE_CURVES", "KeepRatioSchedule", "ResolutionSchedule", "run_progress"]


SCHEDULE_SHAPES = ("decay", "grow")
"""``decay``: 1 -> target (the paper's, from EViT); ``grow``: target -> 1 (random-LTD, Token Expansion)."""
SCHEDULE_CURVES = ("cosine", "linear", "step")
"""How the ratio moves between ``warmup`` and ``decay_end``."""


@dataclass(frozen=True)
class KeepRatioSchedule:
    """A keep ratio as a function of run progress: flat, a change, flat, and an optional dense tail.

    With ``shape="decay"`` (the paper's, EViT's keep-rate schedule) the ratio is 1 for
    ``p <= warmup``, moves from 1 down to ``target`` until ``decay_end`` (per-iteration cosine by
    default), then stays at ``target``. With ``shape="grow"`` it is ``target`` first and moves up
    to 1 (random-LTD, Yao et al. 2022; Token Expansion, Huang et al., CVPR 2024), so the run ends
    at full tokens. ``curve`` is the move's form: ``cosine``, ``linear``, or ``step`` (``stages``
    equal jumps, the last one at ``decay_end``). With ``dense_tail > 0`` the last ``dense_tail``
    of the run is at ratio 1 whatever the shape (FLIP's and CLIPA's unmasked tail, Li et al., CVPR
    2023; EfficientTrain's full-resolution end). With ``buckets = B >= 2`` every value is rounded
    to the nearest of ``B`` evenly spaced levels between the two ends, so a run uses at most ``B``
    keep ratios (hence at most ``B`` token counts: the FLOP model, budget planning and
    ``torch.compile`` key on them); ``0`` keeps the continuous curve (the paper's, bit for bit).

    Args:
        target: The pruned end of the schedule, in (0, 1]. 1 keeps everything for the whole run.
            The defaults of the others are the ``paper`` preset's (:data:`trilevel.presets.PRESETS`).
        warmup: Fraction of the run before the ratio starts to move, in [0, 1). Paper: 1/30.
        decay_end: Fraction of the run where the move ends, in [warmup, 1]. Paper: 11/30.
        shape: ``decay`` or ``grow``.
        curve: ``cosine``, ``linear`` or ``step``.
        stages: Jumps of a ``step`` curve (>= 1).
        dense_tail: Final fraction of the run at ratio 1, in [0, 1).
        buckets: Levels the ratio is rounded to (0: continuous; else >= 2).

    Raises:
        ValueError: If ``target`` is outside (0, 1], a fraction is outside its range or out of
            order, or ``shape``/``curve``/``stages`` is not allowed.

    Source: EViT (Liang et al., ICLR 2022) keep-rate schedule, as used by Kong et al., AAAI 2023,
    Sec. "Experiments"; the growing shapes and the dense tail as cited above.
    """

    target: float
    warmup: float = _PAPER["ratio_warmup"]
    decay_end: float = _PAPER["ratio_decay_end"]
    shape: str = _PAPER["ratio_schedule"]
    curve: str = _PAPER["ratio_curve"]
    stages: int = 3
    dense_tail: float = _PAPER["dense_tail"]
    buckets: int = _PAPER["ratio_buckets"]

    def __post_init__(self) -> None:
        check_ratio("target", self.target)
        for name in ("warmup", "decay_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction of the run in [0, 1], got {v!r}")
        if self.warmup >= 1.0:
            raise ValueError(f"warmup must be < 1 (a fraction of the run), got {self.warmup!r}")
        if self.decay_end < self.warmup:
            raise ValueError(
                f"decay_end ({self.decay_end!r}) must be >= warmup ({self.warmup!r})"
            )
        if self.shape not in SCHEDULE_SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SCHEDULE_SHAPES)}; got {self.shape!r}")
        if self.curve not in SCHEDULE_CURVES:
            raise ValueError(f"curve must be one of {', '.join(SCHEDULE_CURVES)}; got {self.curve!r}")
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {self.stages!r}")
        t = self.dense_tail
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 1.0:
            raise ValueError(f"dense_tail must be a fraction of the run in [0, 1), got {t!r}")
        b = self.buckets
        if isinstance(b, bool) or not isinstance(b, int) or b < 0 or b == 1:
            raise ValueError(f"buckets must be 0 (continuous) or an integer >= 2, got {b!r}")

    def __call__(self, progress: float) -> float:
        """Keep ratio at ``progress`` (fraction of training iterations done, in [0, 1]).

        Raises:
            ValueError: If ``progress`` is not a finite number. Values past 1 (an extra
                iteration at the end) count as the end of the run; negative values as its start.
        """
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise ValueError(f"progress must be a finite fraction of the run, got {progress!r}")
        value = self._continuous(progress)
        if self.buckets and self.target != 1.0:
            low, span = self.target, 1.0 - self.target
            value = low + span * round((value - low) / span * (self.buckets - 1)) / (self.buckets - 1)
        return min(value, 1.0)  # the top level is 1 exactly (low + span may round above it)

    def _continuous(self, progress: float) -> float:
        if self.target == 1.0 or (self.dense_tail > 0.0 and progress >= 1.0 - self.dense_tail):
            return 1.0
        start, end = (1.0, self.target) if self.shape == "decay" else (self.target, 1.0)
        if progress <= self.warmup:
            return start
        if progress >= self.decay_end:
            return end
        t = (progress - self.warmup) / (self.decay_end - self.warmup)
        if self.curve == "cosine":
            if self.shape == "decay":  # EViT's expression, kept as it is so the paper's ratios are bit-exact
                return self.target + (1.0 - self.target) * 0.5 * (1.0 + math.cos(math.pi * t))
            w = 0.5 * (1.0 - math.cos(math.pi * t))
        elif self.curve == "linear":
            w = t
        else:
            w = math.floor(t * self.stages) / self.stages
        return start + (end - start) * w

    def ends_dense(self) -> bool:
        """Whether the ratio at the end of the run is 1 (grow, a dense tail, or target 1)."""
        return self(1.0) == 1.0

    def state_dict(self) -> dict:
        """The schedule's settings (it has no running state)."""
        return {"target": self.target, "warmup": self.warmup, "decay_end": self.decay_end, "shape": self.shape,
                "curve": self.curve, "stages": self.stages, "dense_tail": self.dense_tail, "buckets": self.buckets}


def run_progress(epoch: int, step_in_epoch: int, steps_per_epoch: int, epochs: int) -> float:
    """Fraction of the run done before iteration ``step_in_epoch`` of ``epoch`` (0-based).

    Args:
        epoch: Current epoch, 0-based.
        step_in_epoch: Iteration inside the epoch, 0-based.
        steps_per_epoch: Iterations per epoch (> 0).
        epochs: Epochs in the whole run (> 0).

    Returns:
        ``(epoch + step_in_epoch / steps_per_epoch) / epochs``.

    Raises:
        ValueError: If ``steps_per_epoch`` or ``epochs`` is not positive.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch!r}")
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    return (epoch + step_in_epoch / steps_per_epoch) / epochs


@dataclass(frozen=True)
class ResolutionSchedule:
    """The input side of each training step: low resolution early, full resolution for the end.

    The side grows linearly from ``start * full`` at the run's start to ``full`` at ``ramp_end``
    and stays full after it, rounded down to a multiple of the patch size (so a run uses few
    sides: at most ``full / patch`` of them). Fewer tokens early by resizing the images instead
    of dropping tokens (EfficientTrain++, Wang et al., TPAMI 2024: lower resolution / lower
    frequencies early, full resolution at the end; FixRes-style train/test agreement at the end).

    Args:
        full: The model's input side in pixels.
        patch: Patch side in pixels (sides are multiples of it).
        start: Side at the start as a fraction of ``full``, in (0, 1]; 1 turns the curriculum off.
        ramp_end: Fraction of the run where the side reaches ``full``, in (0, 1].

    Raises:
        ValueError: For a bad argument (named).
    """

    full: int
    patch: int
    start: float = 1.0
    ramp_end: float = 0.8

    def __post_init__(self) -> None:
        for name in ("full", "patch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.full % self.patch:
            raise ValueError(f"full side {self.full} is not a multiple of the patch size {self.patch}")
        for name in ("start", "ramp_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v!r}")

    def __call__(self, progress: float) -> int:
        """Input side in pixels at ``progress`` (fraction of the run done)."""
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise ValueError(f"progress must be a finite fraction of the run, got {progress!r}")
        if self.start >= 1.0 or progress >= self.ramp_end:
            return self.full
        t = max(0.0, progress) / self.ramp_end
        side = self.full * (self.start + (1.0 - self.start) * t)
        return max(self.patch, int(side // self.patch) * self.patch)
