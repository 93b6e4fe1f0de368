"""SIGTERM: :class:`SigtermHandler` turns the signal into a checkpoint and a clean stop.

A SIGTERM (a scheduler's preemption, ``kill``) sets ``state.stop_requested`` and
:data:`~trilevel.training.signals.STOP_REQUEST` (which outlives the run: a bench stops before its
next run). The current step finishes, :class:`~trilevel.training.callbacks.Checkpointing` saves,
and the run raises :class:`~trilevel.training.checkpointing.TrainingInterrupted` naming the
checkpoint to resume from (``trilevel train`` exits 143). Under DDP a request on any rank stops
every rank at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..checkpointing import TrainingInterrupted
from ..distributed import agree
from ..events import Callback
from ..signals import STOP_REQUEST
from ..state import State

__all__ = ["SigtermHandler"]

logger = logging.getLogger("trilevel.training")


class SigtermHandler(Callback):
    """Installs a SIGTERM handler at ``INIT`` (main thread only) and restores the previous one at ``close``.

    * ``STEP_END``: when ``state.step.stopping`` (set by checkpointing, after its save), raises
      :class:`~trilevel.training.checkpointing.TrainingInterrupted`.
    * ``EPOCH_END``: after the epoch's checkpoint and records, stops when any rank received the
      signal (a collective), unless the run ends with this epoch anyway.
    """

    def __init__(self) -> None:
        self._previous: Any = None

    def init(self, state: State) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            STOP_REQUEST.set()  # outlives this run: a bench stops before its next one
            if not state.stop_requested:
                state.stop_requested = True
                logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and exiting")

        self._previous = signal.signal(signal.SIGTERM, on_sigterm)

    def step_end(self, state: State) -> None:
        if not state.step.stopping:
            return
        epoch = state.epoch
        self._stop(f"stopped by SIGTERM at epoch {epoch.index + 1}, step {epoch.done}/{epoch.iters}",
                   state)

    def epoch_end(self, state: State) -> None:
        stop = agree(state.stop_requested, state.ctx)
        epoch = state.epoch.index
        if stop and not state.run_ends_after(epoch):
            self._stop(f"stopped by SIGTERM after epoch {epoch + 1}/{state.run_epochs}", state)

    def close(self, state: State) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @staticmethod
    def _stop(where: str, state: State) -> None:
        msg = f"{where}; checkpoint saved to {state.checkpoint}; resume with --resume {state.checkpoint}"
        logger.warning(msg)
        raise TrainingInterrupted(msg, str(state.checkpoint))
