"""Keep-ratio schedules for the token and attention levels.

Both ratios start dense and decay to their targets while training (the schedule
is EViT's keep-rate schedule, Liang et al., ICLR 2022, used unchanged by Kong et al., AAAI 2023):
ratio 1 during a warm-up, then a per-iteration cosine from 1 down to the target, then constant.
The paper's 300-epoch run warms up for 10 epochs and finishes the decay at epoch 110, i.e. at
fractions 1/30 and 11/30 of the run, which are the defaults here.

A schedule is a pure function of the run's progress (fraction of all training iterations done),
so it carries no state and a resumed run lands on exactly the same ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["KeepRatioSchedule", "run_progress"]


def _check_ratio(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class KeepRatioSchedule:
    """Warm-up, cosine decay, then constant keep ratio, as a function of run progress.

    ``schedule(p)`` is 1 for ``p <= warmup``, ``target + (1 - target) * (1 + cos(pi * t)) / 2``
    with ``t = (p - warmup) / (decay_end - warmup)`` for ``warmup < p < decay_end``, and ``target``
    for ``p >= decay_end``.

    Args:
        target: Final keep ratio, in (0, 1]. 1 keeps everything for the whole run.
        warmup: Fraction of the run at ratio 1, in [0, 1). Paper: 1/30 (10 of 300 epochs).
        decay_end: Fraction of the run at which the target is reached, in [warmup, 1].
            Paper: 11/30 (epoch 110 of 300).

    Raises:
        ValueError: If ``target`` is outside (0, 1], or the fractions are outside [0, 1] or
            out of order.

    Source: EViT (Liang et al., ICLR 2022) keep-rate schedule, as used by
    Kong et al., AAAI 2023, Sec. "Experiments".
    """

    target: float
    warmup: float = 1.0 / 30.0
    decay_end: float = 11.0 / 30.0

    def __post_init__(self) -> None:
        _check_ratio("target", self.target)
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

    def __call__(self, progress: float) -> float:
        """Keep ratio at ``progress`` (fraction of training iterations done, in [0, 1]).

        Raises:
            ValueError: If ``progress`` is not a finite number. Values past 1 (an extra
                iteration at the end) give the target; negative values give 1.
        """
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise ValueError(f"progress must be a finite fraction of the run, got {progress!r}")
        if progress <= self.warmup or self.target == 1.0:
            return 1.0
        if progress >= self.decay_end:
            return self.target
        t = (progress - self.warmup) / (self.decay_end - self.warmup)
        return self.target + (1.0 - self.target) * 0.5 * (1.0 + math.cos(math.pi * t))

    def state_dict(self) -> dict:
        """The schedule's settings (it has no running state)."""
        return {"target": self.target, "warmup": self.warmup, "decay_end": self.decay_end}


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
