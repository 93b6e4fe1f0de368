"""What a run's checkpointing, summary and outputs read: :class:`RunState`, an explicit object.

The trainer hands these helpers a :class:`RunState` (:meth:`trilevel.training.Trainer.run_state`)
instead of itself, so what they depend on is named here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["RunState"]


@dataclass
class RunState:
    """One run's parts and figures, by reference (the live objects, not copies).

    Attributes:
        cfg: The run's configuration (``--speedup`` resolved).
        given_cfg: The configuration as given (written to checkpoints; resolved again on resume).
        ctx: The process's :class:`~trilevel.training.distributed.DistContext`.
        device: The training device.
        info: The dataset's :class:`~trilevel.data.DataInfo`.
        resolved: The :class:`~trilevel.settings.ResolvedTriLevel` of a tri-level run, else None.
        model: The (unwrapped) model.
        optimizer, lr_scheduler, scaler, ema: The optimisation parts (``ema`` may be None).
        algorithm: The :class:`~trilevel.TriLevel` of a tri-level run, else None.
        progress: The :class:`~trilevel.training.accounting.RunProgress` (saved in checkpoints).
        metrics_history: The metrics line of every completed epoch.
        plan: The :class:`~trilevel.training.budget.BudgetPlan` of a budget run, else None.
        run_epochs: Epochs of the run (begun epochs of a budget run).
        total_updates: Optimizer steps of the whole run.
        num_train: Training-set size.
        val_set: The set evaluated each epoch: the validation split, or the test set without one.
        test_set: The test set (the same object as ``val_set`` without a validation split).
        dense_flops: Forward FLOPs per image of the dense model.
        eval_ratios: ``(keep_ratio, attn_keep_ratio)`` of evaluation.
        flops_per_image: ``(keep_ratio, training=False, attn_keep_ratio=1.0, img_size=None) -> FLOPs``.
        folder: The run folder.
        checkpoint: The run's ``checkpoint.pt``.
    """

    cfg: Any
    given_cfg: Any
    ctx: Any
    device: torch.device
    info: Any
    resolved: Any
    model: nn.Module
    optimizer: Any
    lr_scheduler: Any
    scaler: Any
    ema: Any
    algorithm: Any
    progress: Any
    metrics_history: List[Dict[str, Any]]
    plan: Any
    run_epochs: int
    total_updates: int
    num_train: int
    val_set: Any
    dense_flops: float
    eval_ratios: Tuple[float, float]
    flops_per_image: Callable[..., float]
    folder: Optional[Path]
    checkpoint: Optional[Path]
    test_set: Any = None
