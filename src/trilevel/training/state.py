"""The state of one training run: :class:`State`, and the :class:`EpochState` / :class:`StepState` of the loop.

The :class:`~trilevel.training.trainer.Trainer` creates a :class:`State` at the start of a run,
with the configuration, the distributed context and the run folder; :func:`~trilevel.training.build.build_run`
then fills in the parts (data, model, algorithm, optimizer, schedules, budget plan), and the loop
keeps the current epoch and step in :attr:`State.epoch` and :attr:`State.step`. Every callback
(:mod:`trilevel.training.callbacks`), checkpointing, the summary and the outputs read the run from
this one object, and only from it (after composer's ``State``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .accounting import EpochAccumulator, EpochClock, FlopMeter, RunProgress, StepFlags
from .config import TrainConfig
from .distributed import DistContext

if TYPE_CHECKING:  # typing only: these import timm or sit beside this module
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3
    from torch.utils.data import DataLoader, Dataset, Sampler

    from ..algorithm import TriLevel
    from ..data import DataInfo
    from ..example_selection import IndexedDataset
    from ..schedules import ResolutionSchedule
    from ..settings import ResolvedTriLevel
    from .budget import BudgetPlan

__all__ = ["EpochState", "State", "StepState"]


@dataclass(eq=False)
class StepState:
    """One training step, as the loop and the callbacks see it (set at ``STEP_START``).

    Attributes:
        index: 0-based step in the epoch.
        progress: Fraction of the run done before this step, in [0, 1).
        images: ``(B, C, H, W)`` input batch on the training device (resized by the resolution
            curriculum at ``STEP_START``).
        targets: ``(B,)`` class indices.
        indices: ``(B,)`` example indices (:class:`~trilevel.example_selection.IndexedDataset`).
        batch_size: ``B``.
        lr: Learning rate of the step (the top layer's with ``layer_decay``).
        keep_ratio: Token keep ratio of the step (1.0 for a dense run).
        attn_keep_ratio: Attention keep ratio of the step (1.0 for a dense run).
        img_size: Input side of the step in pixels under a resolution curriculum, else None.
        loss_targets: ``(B,)`` or ``(B, K)`` soft targets after mixup (set before ``AFTER_FORWARD``).
        outcome_indices: ``(B,)`` whose outcome each (mixed) image is (set before ``AFTER_FORWARD``).
        logits: ``(B, K)`` float32 outputs (set before ``AFTER_FORWARD``).
        per_example_loss: ``(B,)`` loss when the algorithm weights it (InfoBatch), else None.
        loss_weights: ``(B,)`` weights the algorithm returned at ``AFTER_FORWARD``, else None.
        finite: Whether the loss is finite, agreed over ranks; None until known (known at
            ``AFTER_FORWARD`` when the algorithm weights the loss, else at ``AFTER_BACKWARD``).
        stop: Whether any rank asked to stop (SIGTERM), read with the finite flag under DDP.
        stopping: Set at ``STEP_END`` by checkpointing: the run stops after this step.
        tokens: Mean tokens per block of the step's forward (FLOP model), set at ``STEP_END``.
    """

    index: int
    progress: float
    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    batch_size: int
    lr: float
    keep_ratio: float = 1.0
    attn_keep_ratio: float = 1.0
    img_size: Optional[int] = None
    loss_targets: Optional[torch.Tensor] = None
    outcome_indices: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    per_example_loss: Optional[torch.Tensor] = None
    loss_weights: Optional[torch.Tensor] = None
    finite: Optional[bool] = None
    stop: bool = False
    stopping: bool = False
    tokens: Optional[float] = None


@dataclass(eq=False)
class EpochState:
    """One epoch of the loop (set before ``EPOCH_START``).

    Attributes:
        index: 0-based epoch.
        skip: Steps of this epoch done before this invocation (a mid-epoch resume), else 0.
        acc: The epoch's running sums (saved in a mid-epoch checkpoint).
        clock: The epoch's training clock (evaluation, checkpoint writes and compiles excluded).
        flags: The per-step finite/stop flags.
        iters: Steps in this epoch (set after ``EPOCH_START``: the algorithm may resize the active set).
        full_iters: Steps of a whole pass over the active set (``iters`` unless a budget ends early).
        done: Steps done in the epoch (1-based at ``STEP_END``).
        keep_ratio, attn_keep_ratio, lr: Those of the last step (1.0, 1.0 and the current LR before any).
        metrics: The epoch's metrics line (``metrics.jsonl``), set before ``EPOCH_END``.
    """

    index: int
    skip: int
    acc: EpochAccumulator
    clock: EpochClock
    flags: StepFlags
    lr: float
    iters: int = 0
    full_iters: int = 0
    done: int = 0
    keep_ratio: float = 1.0
    attn_keep_ratio: float = 1.0
    metrics: Optional[Dict[str, Any]] = None


@dataclass(eq=False, repr=False)
class State:
    """One run's parts and figures, by reference (the live objects, not copies).

    Created with the fields below ``Args``; :func:`~trilevel.training.build.build_run` sets the
    run's parts before ``FIT_START``, the loop sets ``epoch``, ``step`` and ``summary`` (reading
    one earlier raises ``AttributeError``).

    Args:
        config: The run's configuration (the resolved one from ``build_run`` on: ``--speedup``).
        given_config: The configuration as given (written to checkpoints; resolved again on resume).
        ctx: The process's :class:`~trilevel.training.distributed.DistContext`.
        folder: The run folder.
        checkpoint: The run's ``checkpoint.pt``.
        resumed: The loaded checkpoint this run resumes, or None.

    Attributes:
        progress: The :class:`~trilevel.training.accounting.RunProgress` (saved in checkpoints).
        metrics_history: The metrics line of every completed epoch.
        partial_epoch: The running sums of the resumed epoch (a mid-epoch checkpoint), until used.
        stop_requested: Set by SIGTERM (:class:`~trilevel.training.callbacks.SigtermHandler`).
        training: Set when the loop starts: later failures are the run's (``TrainingFailedError``).
        info: The dataset's :class:`~trilevel.data.DataInfo`.
        train_set, val_set, test_set: The data; ``val_set`` is evaluated each epoch (the
            validation split, or the test set itself without one).
        train_indexed: ``train_set`` yielding ``(image, target, index)``.
        num_train: Training-set size.
        model: The (unwrapped) model: what is saved, patched and counted.
        wrapped_model: What the loop calls: ``model`` under DDP and ``torch.compile`` (or ``model``).
        resolved: The :class:`~trilevel.settings.ResolvedTriLevel` of a tri-level run, else None.
        algorithm: The :class:`~trilevel.TriLevel` of a tri-level run, else None.
        meter: The FLOP model of ``model`` (:class:`~trilevel.training.accounting.FlopMeter`).
        optimizer, lr_scheduler, scaler, ema: The optimisation parts (``ema`` may be None).
        mixup, criterion: timm's ``Mixup`` (or None) and the loss.
        sampler: The training sampler (the algorithm's active set, or a ``DistributedSampler``).
        val_loader: The loader of ``val_set`` (sharded over ranks).
        drop_last: Whether epochs drop their last partial batch (mixup needs even batches).
        resolution: The resolution curriculum's schedule, or None.
        plan: The :class:`~trilevel.training.budget.BudgetPlan` of a budget run, else None.
        run_epochs: Epochs of the run (begun epochs of a budget run).
        nominal_iters: Steps of the first epoch (the LR schedule's epoch).
        total_updates: Optimizer steps of the whole run.
        eval_ratios: ``(keep_ratio, attn_keep_ratio)`` of evaluation.
        epoch: The current :class:`EpochState` (set before ``EPOCH_START``).
        step: The current :class:`StepState` (set before ``STEP_START``).
        summary: The run's summary (set before ``FIT_END``).
    """

    config: TrainConfig
    given_config: TrainConfig
    ctx: DistContext
    folder: Path
    checkpoint: Path
    resumed: Optional[Mapping[str, Any]] = None
    progress: RunProgress = field(default_factory=RunProgress)
    metrics_history: List[Dict[str, Any]] = field(default_factory=list)
    partial_epoch: Optional[Mapping[str, Any]] = None
    stop_requested: bool = False
    training: bool = False
    # Set by build_run, before FIT_START:
    info: DataInfo = field(init=False)
    train_set: Dataset = field(init=False)
    val_set: Dataset = field(init=False)
    test_set: Dataset = field(init=False)
    train_indexed: IndexedDataset = field(init=False)
    num_train: int = field(init=False)
    model: nn.Module = field(init=False)
    wrapped_model: nn.Module = field(init=False)
    resolved: Optional[ResolvedTriLevel] = field(init=False)
    algorithm: Optional[TriLevel] = field(init=False)
    meter: FlopMeter = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    lr_scheduler: Scheduler = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    ema: Optional[ModelEmaV3] = field(init=False)
    mixup: Optional[Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = field(init=False)
    criterion: Callable[..., torch.Tensor] = field(init=False)
    sampler: Sampler = field(init=False)
    val_loader: DataLoader = field(init=False)
    drop_last: bool = field(init=False)
    resolution: Optional[ResolutionSchedule] = field(init=False)
    plan: Optional[BudgetPlan] = field(init=False)
    run_epochs: int = field(init=False)
    nominal_iters: int = field(init=False)
    total_updates: int = field(init=False)
    eval_ratios: Tuple[float, float] = field(init=False)
    # Set by the loop:
    epoch: EpochState = field(init=False)
    step: StepState = field(init=False)
    summary: Dict[str, Any] = field(init=False)

    def __repr__(self) -> str:
        return f"State(folder={str(self.folder)!r}, progress={self.progress!r})"

    @property
    def device(self) -> torch.device:
        """The training device."""
        return self.ctx.device

    @property
    def dense_flops(self) -> float:
        """Forward FLOPs per image of the dense model at evaluation."""
        return self.meter.dense_flops

    def flops_per_image(self, keep_ratio: float, training: bool = False, attn_keep_ratio: float = 1.0,
                        img_size: Optional[int] = None) -> float:
        """Forward FLOPs per image at the given ratios (cached; the dense count for a dense model).

        Args:
            keep_ratio: Token keep ratio.
            training: Count a training forward (timm's PatchDropout active, when configured).
            attn_keep_ratio: Attention keep ratio.
            img_size: Input side in pixels (resolution curriculum); None: the model's.
        """
        if img_size == self.info.img_size:
            img_size = None
        return self.meter.per_image(keep_ratio, training, attn_keep_ratio, img_size)

    def steps_in_epoch(self, num_examples: int) -> int:
        """Steps over ``num_examples`` examples on this rank (the last partial batch dropped with ``drop_last``)."""
        b = self.config.batch_size
        return num_examples // b if self.drop_last else math.ceil(num_examples / b)

    def run_fraction(self, epoch: int, step: int, iters: int) -> float:
        """Fraction of the run done before step ``step`` of ``epoch``: by epochs, or by the budget's steps."""
        if self.plan is not None:
            return self.progress.global_step / self.plan.total_steps
        return (epoch + step / iters) / self.config.epochs

    def run_ends_after(self, epoch: int) -> bool:
        """Whether the run is complete after 0-based ``epoch`` (its last epoch, or its budget spent)."""
        if self.plan is not None:
            return self.progress.global_step >= self.plan.total_steps
        return epoch + 1 >= self.config.epochs

    def last_epoch_of_invocation(self, epoch: int) -> bool:
        """Whether this invocation ends after 0-based ``epoch`` (end of run or ``stop_after_epoch``)."""
        stop_after = self.config.stop_after_epoch
        return self.run_ends_after(epoch) or (stop_after is not None and epoch + 1 >= stop_after)
