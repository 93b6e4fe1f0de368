"""The training loop of ``trilevel train``: tri-level (or dense) training of a timm model.

:func:`train` runs one job from a :class:`~trilevel.training.TrainConfig` and returns its summary
(Kong et al., "Peeling the Onion", AAAI 2023; DeiT's recipe, Touvron et al., ICML 2021, via timm).
The :class:`Trainer` is the loop, in composer's manner: it builds the run's
:class:`~trilevel.training.state.State` (:func:`~trilevel.training.build.build_run`), runs the
epochs and steps (forward, loss, backward, update) and fires the events of
:mod:`~trilevel.training.events`; what a run does besides is a callback
(:mod:`~trilevel.training.callbacks`): the :class:`~trilevel.TriLevel` algorithm (unless
``dense``: the patch, keep-ratio schedules, example selector and sampler, driven at epoch start,
step start and the batch's outcomes, with progress ``(epoch + i / iters_this_epoch) / epochs``,
which also drives the per-iteration cosine LR with warm-up), the resolution curriculum, compile
timing, FLOP accounting, logging, checkpointing and SIGTERM. Under ``torchrun`` the model is
wrapped in DDP, every rank initialises with the same ``seed`` (then draws its own dropout, mixup
and augmentation streams), the selector all-gathers its observations, evaluation is sharded, and
only rank 0 writes (:class:`~trilevel.training.output.RunOutput`). Each stateful part (model,
optimizer, LR scheduler, grad scaler, EMA, algorithm, run progress) contributes its own
``state_dict`` to the checkpoint (:mod:`~trilevel.training.checkpointing`), so a resumed run
(after an epoch, after SIGTERM or a step checkpoint mid-epoch, or after SIGKILL from its last
checkpoint) ends bit-identical to an uninterrupted one on CPU, with any number of workers
(augmentation is seeded per sample: :mod:`~trilevel.training.loaders`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..example_selection import dominant_indices
from .accounting import EpochAccumulator, EpochClock, StepFlags
from .build import build_run
from .callbacks import PictureRenderer, default_callbacks
from .checkpoint_config import check_resume
from .checkpointing import (
    CHECKPOINT_FORMAT, CheckpointWriteError, NonFiniteLossError, TrainingFailedError, TrainingInterrupted,
    restore_state,
)
from .config import TrainConfig
from .distributed import DistContext, setup_distributed
from .epoch_metrics import epoch_metrics
from .evaluation import autocast
from .events import Callback, Engine, Event
from .loaders import make_loader
from .output import RunOutput
from .state import EpochState, State, StepState

__all__ = ["CHECKPOINT_FORMAT", "CheckpointWriteError", "NonFiniteLossError", "Trainer", "TrainingFailedError",
           "TrainingInterrupted", "train"]

logger = logging.getLogger("trilevel.training")


class Trainer:
    """One training run (see :func:`train`): the loop that fires the events; :meth:`fit` returns the summary.

    Args:
        config: The run's configuration (``output_dir`` is resolved in place).
        ctx: This process's distributed context.
        callbacks: Callbacks to run after the built-in ones (:func:`~trilevel.training.callbacks.default_callbacks`)
            at every event.
        picture_renderer: Draws the live logs' pruning picture (``trilevel train`` passes
            :func:`trilevel.viz.render_pruning_picture`); None: no picture.

    Attributes:
        state (State): The run's state (from :meth:`fit` on).
        engine (Engine): Fires the events to the callbacks (from :meth:`fit` on).
    """

    def __init__(self, config: TrainConfig, ctx: DistContext, callbacks: Sequence[Callback] = (),
                 picture_renderer: Optional[PictureRenderer] = None) -> None:
        self.config = config
        self.ctx = ctx
        self.callbacks = list(callbacks)
        self.picture_renderer = picture_renderer

    def fit(self) -> Dict[str, Any]:
        """Train (or resume) to the end or to ``stop_after_epoch``; returns the summary.

        Raises:
            ValueError, FileNotFoundError, NonFiniteLossError, TrainingInterrupted: See :func:`train`.
        """
        from ..checkpoint import load_checkpoint

        cfg = self.config
        resumed = None
        if cfg.resume is not None:
            resumed = load_checkpoint(cfg.resume)
            check_resume(cfg, resumed, CHECKPOINT_FORMAT)
        output = RunOutput(cfg, self.ctx, resumed=resumed)  # live logs (if any) continue after its step
        cfg = output.config  # output_dir resolved (a copy: configs are frozen)
        self.state = State(config=cfg, given_config=cfg, ctx=self.ctx, folder=output.folder,
                           checkpoint=output.checkpoint, resumed=resumed)
        self.engine = Engine(self.state, [*default_callbacks(output, self.picture_renderer), *self.callbacks])
        output.open()
        try:
            return self._fit()
        except (TrainingInterrupted, NonFiniteLossError, CheckpointWriteError, TrainingFailedError):
            raise
        except Exception as e:
            from ..data import UnreadableImageError

            if not self.state.training or isinstance(e, UnreadableImageError):
                raise  # a bad option, data file or checkpoint
            p = self.state.progress
            raise TrainingFailedError(
                f"training failed at epoch {p.epoch + 1} (global step {p.global_step}): {type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[-1]}"
            ) from e
        finally:
            try:
                self.engine.close()
            finally:
                output.close()

    def _fit(self) -> Dict[str, Any]:
        state, ctx = self.state, self.ctx
        self.engine.fire(Event.INIT)
        cfg = state.config
        logger.info("trilevel train: %s on %s, world size %d, device %s, output %s%s", cfg.model, cfg.dataset,
                    ctx.world_size, state.device, state.folder, f", resuming {cfg.resume}" if cfg.resume else "")
        build_run(state)
        if state.resumed is not None:
            state.partial_epoch, state.metrics_history = restore_state(state, state.resumed)
            logger.info("resumed from %s at epoch %d, step %d", cfg.resume, state.progress.epoch + 1,
                        state.progress.step_in_epoch)
        self.engine.fire(Event.FIT_START)
        state.training = True
        finished = self._epochs()
        from .summary import run_summary

        state.summary = run_summary(state, finished)
        self.engine.fire(Event.FIT_END)
        return state.summary

    def _epochs(self) -> bool:
        """Run the epochs left; returns whether the run finished (False after ``stop_after_epoch``)."""
        state = self.state
        start_epoch, start_step = state.progress.epoch, state.progress.step_in_epoch
        epoch = start_epoch
        while not (state.plan is None and epoch >= state.config.epochs) and not (
                state.plan is not None and state.progress.global_step >= state.plan.total_steps):
            self._epoch(epoch, start_step if epoch == start_epoch else 0)
            if not state.run_ends_after(epoch) and state.last_epoch_of_invocation(epoch):
                logger.info("stopping after epoch %d as requested (stop-after-epoch); resume with --resume %s",
                            epoch + 1, state.checkpoint)
                return False
            epoch += 1
        return True

    def _epoch(self, index: int, skip: int) -> None:
        """One epoch from step ``skip``: ``EPOCH_START``, the steps, the metrics line, ``EPOCH_END``."""
        state, ctx, cfg = self.state, self.ctx, self.state.config
        acc = EpochAccumulator(state.device)
        if state.partial_epoch is not None:
            acc.load(state.partial_epoch, ctx)
            state.partial_epoch = None
        # The clock starts here: what a user waits for (updates and data too).
        state.epoch = epoch = EpochState(index=index, skip=skip, acc=acc, clock=EpochClock(
            state.device, acc.seconds, acc.cpu_seconds), flags=StepFlags(ctx), lr=self._lr())
        if skip == 0:  # where the epoch starts decides its data (the dense tail); a resume reuses it
            state.progress.epoch_start_progress = (state.progress.global_step / state.plan.total_steps
                                                   if state.plan is not None else index / cfg.epochs)
        if state.sampler is not getattr(state.algorithm, "sampler", None):
            state.sampler.set_epoch(index)  # type: ignore[attr-defined]
        self.engine.fire(Event.EPOCH_START)
        epoch.iters = epoch.full_iters = state.steps_in_epoch(len(state.sampler))  # type: ignore[arg-type]
        if state.plan is not None:  # the budget's last epoch ends early
            epoch.iters = min(epoch.iters, skip + state.plan.total_steps - state.progress.global_step)
        loader = make_loader(state.train_indexed, cfg.batch_size, cfg.workers, state.device, cfg.seed, index, ctx.rank,
                             sampler=state.sampler, drop_last=state.drop_last, seeded=True, skip_steps=skip)
        state.wrapped_model.train()
        for i, (images, targets, indices) in enumerate(loader, start=skip):
            if i >= epoch.iters:
                break
            self._step(i, images, targets, indices)
        epoch.clock.stamp(acc)
        epoch.metrics = epoch_metrics(state)
        state.progress.last_metrics = epoch.metrics
        state.metrics_history.append(epoch.metrics)
        self.engine.fire(Event.EPOCH_END)

    def _lr(self) -> float:
        """The current learning rate (the top layer's with ``--layer-decay``)."""
        return max(g["lr"] for g in self.state.optimizer.param_groups)

    def _step(self, i: int, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> None:
        """Step ``i`` of the epoch: ``STEP_START``, forward, backward and update, ``STEP_END``."""
        state, epoch = self.state, self.state.epoch
        progress = state.run_fraction(epoch.index, i, epoch.iters)
        state.lr_scheduler.step_update(num_updates=progress * state.total_updates)
        device = state.device
        state.step = step = StepState(
            index=i, progress=progress, images=images.to(device, non_blocking=True),
            targets=targets.to(device, non_blocking=True), indices=indices, batch_size=int(images.shape[0]),
            lr=self._lr())
        self.engine.fire(Event.STEP_START)
        epoch.keep_ratio, epoch.attn_keep_ratio, epoch.lr = step.keep_ratio, step.attn_keep_ratio, step.lr
        self._update()
        if not step.finite:
            epoch.acc.skipped += 1
            state.progress.skipped_steps += 1
            logger.warning("non-finite loss at epoch %d, step %d: batch skipped (nonfinite=skip)", epoch.index + 1,
                           i + 1)
        state.progress.global_step += 1
        epoch.acc.images += step.batch_size
        epoch.done = i + 1
        self.engine.fire(Event.STEP_END)

    def _update(self) -> None:
        """Forward, loss, backward and update on ``state.step``'s batch (``AFTER_FORWARD``, ``AFTER_BACKWARD``).

        Sets ``state.step.finite`` and ``stop`` (agreed over ranks). A batch whose loss is not
        finite changes nothing: no update, not recorded by the algorithm, not counted.
        """
        state, step = self.state, self.state.step
        cfg, flags, acc = state.config, state.epoch.flags, state.epoch.acc
        images, loss_targets, indices = step.images, step.targets, step.indices
        if state.mixup is not None:
            images, loss_targets = state.mixup(images, step.targets)  # soft (B, K) targets
            indices = dominant_indices(indices, step.targets, loss_targets)
        step.loss_targets, step.outcome_indices = loss_targets, indices
        with autocast(state.device, cfg.amp):
            logits = state.wrapped_model(images)
        step.logits = logits = logits.float()
        state.optimizer.zero_grad(set_to_none=True)
        if state.algorithm is not None and state.algorithm.reweights_loss:
            # The algorithm weights the per-example losses (InfoBatch): check them before it records them.
            per_example = F.cross_entropy(logits, loss_targets, reduction="none",
                                          label_smoothing=0.0 if state.mixup is not None else cfg.smoothing)
            step.per_example_loss = per_example
            flags.launch(per_example, state.stop_requested)
            bad, step.stop = flags.read(state.stop_requested)
            step.finite = not bad
            self.engine.fire(Event.AFTER_FORWARD)
            weights = step.loss_weights
            loss = per_example.mean() if weights is None else (per_example * weights).mean()
            loss_sum = per_example.detach().sum()
            state.scaler.scale(loss).backward()  # also for a bad batch: DDP expects every backward
        else:
            loss = state.criterion(logits, loss_targets)
            loss_sum = loss.detach() * images.shape[0]
            flags.launch(loss, state.stop_requested)
            self.engine.fire(Event.AFTER_FORWARD)
            state.scaler.scale(loss).backward()  # queued before the flag wait: the device stays busy
            bad, step.stop = flags.read(state.stop_requested)
            step.finite = not bad
        self.engine.fire(Event.AFTER_BACKWARD)
        if bad:
            state.optimizer.zero_grad(set_to_none=True)
            return
        if cfg.clip_grad is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(state.model, step=state.progress.global_step)
        with torch.no_grad():
            # Accuracy against the hard label, or the dominant class of a mixed target.
            label = loss_targets.argmax(dim=1) if loss_targets.dim() == 2 else loss_targets
            acc.correct += (logits.detach().argmax(dim=1) == label).sum()
            acc.loss_sum += loss_sum.double()
        acc.steps += 1
        acc.counted += int(images.shape[0])


def train(config: TrainConfig | Mapping[str, Any], *, callbacks: Iterable[Callback] = (),
          picture_renderer: Optional[PictureRenderer] = None) -> Dict[str, Any]:
    """Run one training job; returns the summary (also written to ``<output_dir>/summary.json``).

    Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) it initialises the process
    group itself (and destroys it at the end); inside an already initialised group it uses that.

    Args:
        config: A :class:`~trilevel.training.TrainConfig`, or a mapping of its fields (hyphens or
            underscores).
        callbacks: :class:`~trilevel.training.events.Callback` objects run after the built-in ones
            at every event (they read and may change the run's :class:`~trilevel.training.state.State`).
        picture_renderer: Draws the pruning picture of ``log_tensorboard`` / ``log_wandb``
            (:func:`trilevel.viz.render_pruning_picture`, which ``trilevel train`` passes); None:
            no picture (a warning when one is due).

    Returns:
        The summary dict: ``val_top1`` (percent), ``train_seconds`` (training loops only, summed
        over resumes), ``epochs``, ``train_images``, ``relative_train_flops`` (sum over steps of
        images x forward FLOPs at that step's keep ratio, over ``epochs x train-set size x dense
        forward FLOPs``), the tri-level settings, ``world_size``, ``selector_digest`` (and one per
        rank), ``finished`` (False after ``stop_after_epoch``), and more.

    Raises:
        ValueError: An invalid setting (named), a resume configuration that does not match the
            checkpoint, or a corrupt checkpoint (``CheckpointError``).
        FileNotFoundError: Missing data (``DatasetNotFoundError``) or checkpoint.
        NonFiniteLossError: The loss became NaN/inf with ``nonfinite="stop"`` (state saved).
        TrainingInterrupted: SIGTERM was received (checkpoint saved).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)  # frozen: no copy needed
    ctx = setup_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx, list(callbacks), picture_renderer).fit()
    finally:
        ctx.close()
