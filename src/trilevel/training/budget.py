"""Compute budgets: how many steps a run of B dense-epoch equivalents may take.

A budget of ``B`` gives a run the training compute of ``B`` epochs of dense training on the same
data: ``B x N x F_dense`` forward FLOPs (``N`` training images, ``F_dense`` the stock model's
forward FLOPs per image; a training step costs about 3x its forward, for every configuration
alike). A run whose steps are cheaper (fewer tokens) gets more of them. The number of steps is
exact: the largest ``S`` whose summed cost, step by step at the keep ratio each step will use
(the schedules are functions of the progress ``s / S``) and at each step's real batch size
(epochs end with a smaller batch), stays within the budget. The LR, warm-up and keep-ratio
schedules are then fitted to those ``S`` steps.

This is budget-limited training (Li, Yumer and Ramanan, "Budgeted Training: Rethinking Deep Neural
Network Training Under Resource Constraints", ICLR 2020): every configuration, the dense baseline
included, gets schedules compressed to its budget, so a comparison at equal budget (or equal
wall-clock) is fair (Kaddour et al., "No Train No Gain", NeurIPS 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

__all__ = ["BudgetPlan", "epoch_batch_sizes", "plan_budget", "plan_run", "resolution_schedule"]


@dataclass(frozen=True)
class BudgetPlan:
    """The steps a budget buys.

    Attributes:
        budget: The budget in dense-epoch equivalents.
        total_steps: Optimizer steps of the run.
        budget_flops: ``budget x N x F_dense``, forward FLOPs.
        planned_flops: Forward FLOPs of the planned steps (at most ``budget_flops``).
        steps_per_epoch: Steps of one pass over the (initial) active set.
        epochs: Passes over the (initial) active set the steps make, fractional.
    """

    budget: float
    total_steps: int
    budget_flops: float
    planned_flops: float
    steps_per_epoch: int
    epochs: float

    @property
    def whole_epochs(self) -> int:
        """Epochs begun: ``ceil(epochs)`` (the last one may be partial)."""
        return max(1, math.ceil(self.epochs - 1e-12))


def epoch_batch_sizes(samples_per_rank: int, batch_size: int, world_size: int, drop_last: bool) -> List[int]:
    """Global images of each step of one epoch.

    Args:
        samples_per_rank: Items each rank's sampler yields per epoch.
        batch_size: Batch size per rank.
        world_size: Ranks.
        drop_last: Whether a final incomplete batch is dropped.

    Returns:
        One entry per step: ``batch_size x world_size``, the last one smaller unless ``drop_last``.

    Raises:
        ValueError: If an argument is not positive (``samples_per_rank`` may be 0: no steps).
    """
    for name, v in (("batch_size", batch_size), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(samples_per_rank, bool) or not isinstance(samples_per_rank, int) or samples_per_rank < 0:
        raise ValueError(f"samples_per_rank must be an integer >= 0, got {samples_per_rank!r}")
    full, rest = divmod(samples_per_rank, batch_size)
    sizes = [batch_size * world_size] * full
    if rest and not drop_last:
        sizes.append(rest * world_size)
    return sizes


def plan_budget(
    budget: float,
    num_train: int,
    dense_flops: float,
    batch_sizes: List[int],
    step_flops: Callable[[float], float],
) -> BudgetPlan:
    """The largest number of steps whose cost fits ``budget`` dense epochs.

    Args:
        budget: Dense-epoch equivalents, > 0.
        num_train: Training images ``N`` (the whole training set, not the active set).
        dense_flops: Forward FLOPs per image of the dense (stock) model.
        batch_sizes: Global images of each step of one epoch (:func:`epoch_batch_sizes`); epochs
            repeat this pattern.
        step_flops: Forward FLOPs per image of a step taken at progress ``p`` (fraction of the run
            done before it), e.g. at the keep ratio the schedule gives at ``p``.

    Returns:
        The :class:`BudgetPlan`.

    Raises:
        ValueError: If ``budget`` is not a positive finite number, the epoch has no step, or the
            budget does not pay for a single step (the message says how large it must be).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of dense-epoch equivalents, got {budget!r}")
    if not batch_sizes:
        raise ValueError("an epoch has no step (the active set is smaller than one batch with drop-last)")
    budget_flops = float(budget) * num_train * dense_flops
    k = len(batch_sizes)

    def cost(steps: int) -> float:
        return sum(batch_sizes[s % k] * step_flops(s / steps) for s in range(steps))

    first = batch_sizes[0] * step_flops(0.0)
    if first > budget_flops:
        raise ValueError(
            f"budget {budget:g} does not pay for one step: one step of {batch_sizes[0]} images costs "
            f"{first / (num_train * dense_flops):.3g} dense epochs; raise --budget"
        )
    # Bracket with the cheapest per-image cost seen on a grid, then bisect on the exact sum (the sum
    # grows with the step count: one more step adds a step's cost, the shifted progress grid moves it little).
    probes = [step_flops(i / 64) for i in range(65)]
    lo, hi = 1, max(2, math.ceil(budget_flops / (min(batch_sizes) * min(probes))) + k + 1)
    while cost(hi) <= budget_flops:  # the probes may miss the cheapest stretch
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget_flops:
            lo = mid
        else:
            hi = mid
    steps = lo
    planned = cost(steps)
    return BudgetPlan(budget=float(budget), total_steps=steps, budget_flops=budget_flops, planned_flops=planned,
                      steps_per_epoch=k, epochs=steps / k)


def resolution_schedule(config: Any, full_side: int, patch: int):
    """The run's :class:`~trilevel.schedules.ResolutionSchedule`, or None when the curriculum is off."""
    from ..schedules import ResolutionSchedule

    if config.resolution_start >= 1.0:
        return None
    return ResolutionSchedule(full_side, patch, config.resolution_start, config.resolution_ramp_end)


def plan_run(
    config: Any,
    num_train: int,
    world_size: int,
    drop_last: bool,
    dense_flops: float,
    flops_per_image: Callable[..., float],
    full_side: Optional[int] = None,
    patch: int = 1,
) -> BudgetPlan:
    """:func:`plan_budget` for a training run of ``config`` (a :class:`~trilevel.training.TrainConfig`).

    Each step's cost is read at the keep ratios the run's schedules give at its progress; epochs
    are passes over the initial active set (all examples, or those the forgetting/random selector
    keeps), split over ``world_size`` ranks like the samplers do.

    Args:
        config: The run's configuration (``budget``, ``batch_size``, ratios, schedule, selector).
        num_train: Training-set size.
        world_size: Ranks.
        drop_last: Whether each epoch's incomplete last batch is dropped (mixup).
        dense_flops: Forward FLOPs per image of the dense model.
        flops_per_image: ``flops_per_image(keep_ratio, training=True, attn_keep_ratio=r, img_size=side)``.

        full_side: The model's input side (with ``patch``, for the resolution curriculum); None:
            no curriculum.
        patch: Patch side in pixels.

    Raises:
        ValueError: As :func:`plan_budget`.
    """
    from ..example_selection import initial_active_count

    n_active = num_train
    if config.effective_selector in ("forgetting", "random"):
        n_active = initial_active_count(num_train, config.example_remove)
    sizes = epoch_batch_sizes(math.ceil(n_active / world_size), config.batch_size, world_size, drop_last)
    side = resolution_schedule(config, full_side, patch) if full_side is not None else None
    if config.tri_level:
        token, attn = config.schedule(config.keep_ratio), config.schedule(config.attn_keep_ratio)

        def step_flops(p: float) -> float:
            return flops_per_image(token(p), training=True, attn_keep_ratio=attn(p), img_size=side(p) if side else None)
    else:
        def step_flops(p: float) -> float:
            return flops_per_image(1.0, training=True, img_size=side(p) if side else None)
    return plan_budget(config.budget, num_train, dense_flops, sizes, step_flops)
