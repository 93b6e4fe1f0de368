"""Checkpointing: :class:`Checkpointing` saves a run's state at the ends of epochs, every
``checkpoint_every`` steps, on a stop request and before stopping on a non-finite loss.

Every save is atomic (:class:`~trilevel.training.checkpointing.RunCheckpoints`: a temporary file,
``fsync``, ``os.replace``), so a crash or ``SIGKILL`` at any moment leaves the previous checkpoint
loadable; what a checkpoint holds is :func:`~trilevel.training.checkpointing.checkpoint_state`.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from ..accounting import EpochAccumulator
from ..checkpointing import NonFiniteLossError, RunCheckpoints, checkpoint_state
from ..events import Callback
from ..state import State

__all__ = ["Checkpointing"]

logger = logging.getLogger("trilevel.training")


class Checkpointing(Callback):
    """Writes ``state.checkpoint`` (and step files with ``keep_last``); under DDP a collective.

    * ``INIT``: deletes the temporary files of a write that a killed process left behind.
    * ``FIT_START``: when resuming, rewrites ``metrics.jsonl`` to the checkpoint's epoch lines.
    * ``AFTER_BACKWARD``: a non-finite loss with ``nonfinite="stop"``: saves the last good state
      (the bad step changed nothing; the checkpoint resumes at this batch) and raises
      :class:`~trilevel.training.checkpointing.NonFiniteLossError`.
    * ``STEP_END``: decides whether the run stops after this step (``state.step.stopping``: a
      SIGTERM seen on any rank, agreed through the step's flags under DDP, on this rank's
      request otherwise) and saves when stopping or when a step checkpoint is due; the
      write's time is not training time. :class:`~trilevel.training.callbacks.SigtermHandler`
      then ends the run.
    * ``EPOCH_END``: saves at the epoch boundary.

    Raises:
        CheckpointWriteError: A write failed (on every rank); the previous checkpoint is kept.

    Attributes:
        files (RunCheckpoints): The run folder's checkpoint files (from ``INIT`` on).
    """

    def __init__(self) -> None:
        self.files: Optional[RunCheckpoints] = None

    def init(self, state: State) -> None:
        cfg = state.config
        self.files = RunCheckpoints(state.folder, state.ctx, cfg.checkpoint_every, cfg.keep_last)
        self.files.remove_stale_temp_files()

    def fit_start(self, state: State) -> None:
        if state.resumed is not None:
            self.files.kept = f"{state.config.resume} (the resumed one)"
            self.files.rewrite_metrics(state.metrics_history)

    def after_backward(self, state: State) -> None:
        step, epoch = state.step, state.epoch
        if step.finite is not False or state.config.nonfinite != "stop":
            return
        self.save(state, epoch.index, step.index, epoch.acc)
        msg = (
            f"non-finite loss at epoch {epoch.index + 1}, step {step.index + 1} "
            f"(global step {state.progress.global_step + 1}); the last good state was saved to {state.checkpoint}. "
            f"Lower --lr, set --clip-grad, or pass --nonfinite skip to skip such batches"
        )
        logger.error(msg)
        raise NonFiniteLossError(msg)

    def step_end(self, state: State) -> None:
        step, epoch = state.step, state.epoch
        step.stopping = step.stop or (not state.ctx.distributed and state.stop_requested)
        if step.stopping or self.files.due(state.progress.global_step, epoch.done, epoch.iters):
            epoch.clock.stamp(epoch.acc)
            spent = self.save(state, epoch.index, epoch.done, epoch.acc)
            epoch.clock.exclude(spent)  # writing checkpoints is not training time

    def epoch_end(self, state: State) -> None:
        self.save(state, state.epoch.index + 1, 0)

    def save(self, state: State, next_epoch: int, next_step: int, acc: Optional[EpochAccumulator] = None) -> float:
        """Save the checkpoint (a collective under DDP); returns the seconds it took.

        Args:
            state: The run's state.
            next_epoch: The 0-based epoch a resume continues.
            next_step: The step inside ``next_epoch`` a resume continues at (0: its start).
            acc: The partial epoch's running sums, or None at an epoch boundary.

        Raises:
            CheckpointWriteError: The write failed on rank 0 (every rank raises); the previous file is kept.
        """
        t_save = time.perf_counter()
        state.progress.epoch, state.progress.step_in_epoch = int(next_epoch), int(next_step)
        where = f"epoch {next_epoch + 1}, step {next_step}" if next_step else f"the end of epoch {next_epoch}"
        self.files.write(checkpoint_state(state, acc), state.progress.global_step, where)
        spent = time.perf_counter() - t_save
        state.progress.checkpoint_seconds += spent
        return spent
