"""The events of a training run, the :class:`Callback` that reacts to them, and the :class:`Engine` that fires them.

After composer's ``Event`` / ``Callback`` / ``Engine``: the
:class:`~trilevel.training.trainer.Trainer` is a loop that fires fixed events; everything else a
run does (driving the :class:`~trilevel.TriLevel` algorithm, the resolution curriculum, compile
timing, FLOP accounting, logging, checkpointing, SIGTERM) is a callback reading and writing the
one :class:`~trilevel.training.state.State`. The order of a run::

    INIT                                  the run folder is open; nothing is built yet
    FIT_START                             built (and restored, when resuming)
      EPOCH_START                         per epoch
        STEP_START                        per step: the batch is on the device
        AFTER_FORWARD                     logits and loss computed
        AFTER_BACKWARD                    gradients computed; the loss's finiteness is known
        STEP_END                          the update is done and counted
      EPOCH_END                           the epoch's metrics line is computed
    FIT_END                               the summary is computed

A callback's ``close`` runs once at the end, also after an exception (in reverse order).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Iterable, List, Optional

if TYPE_CHECKING:
    from .state import State

__all__ = ["Callback", "Engine", "Event"]


class Event(str, enum.Enum):
    """The points of a training run at which callbacks run, in the order of a run."""

    INIT = "init"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    STEP_START = "step_start"
    AFTER_FORWARD = "after_forward"
    AFTER_BACKWARD = "after_backward"
    STEP_END = "step_end"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"


class Callback:
    """Something a run does at its events; override the methods of the events it reacts to.

    Each method is named after its :class:`Event` (``epoch_start`` for ``Event.EPOCH_START``) and
    takes the run's :class:`~trilevel.training.state.State`; the defaults do nothing. A callback may
    raise to end the run (e.g. ``TrainingInterrupted``); :meth:`close` still runs.
    """

    def run_event(self, event: Event, state: State) -> None:
        """Run this callback's method for ``event``."""
        getattr(self, event.value)(state)

    def init(self, state: State) -> None:
        """The run folder is open (``state.folder``); nothing is built."""

    def fit_start(self, state: State) -> None:
        """The run is built and, when resuming, restored; no epoch has started."""

    def epoch_start(self, state: State) -> None:
        """``state.epoch`` is new (its sizes are set after this event)."""

    def step_start(self, state: State) -> None:
        """``state.step`` is new: the batch is on the device, the LR set."""

    def after_forward(self, state: State) -> None:
        """``state.step.logits`` and ``loss_targets`` are set."""

    def after_backward(self, state: State) -> None:
        """The gradients are computed and ``state.step.finite`` is known; no update yet."""

    def step_end(self, state: State) -> None:
        """The update is done (or skipped), ``state.progress.global_step`` counts it."""

    def epoch_end(self, state: State) -> None:
        """``state.epoch.metrics`` is the epoch's metrics line (also in ``state.metrics_history``)."""

    def fit_end(self, state: State) -> None:
        """``state.summary`` is the run's summary."""

    def close(self, state: State) -> None:
        """Release what the callback holds (handlers, files); runs also after an exception."""


class Engine:
    """Fires events to a run's callbacks, in their order.

    Args:
        state: The run's state, passed to every callback.
        callbacks: The callbacks, in the order they run at each event.

    Attributes:
        callbacks (List[Callback]): As given.
    """

    def __init__(self, state: State, callbacks: Iterable[Callback]) -> None:
        self.state = state
        self.callbacks: List[Callback] = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be trilevel.training.events.Callback instances, got {type(cb).__name__}")

    def fire(self, event: Event) -> None:
        """Run every callback's method for ``event``, in order."""
        for cb in self.callbacks:
            cb.run_event(event, self.state)

    def close(self) -> None:
        """Run every callback's :meth:`Callback.close`, in reverse order; the first error is raised after all ran."""
        error: Optional[BaseException] = None
        for cb in reversed(self.callbacks):
            try:
                cb.close(self.state)
            except BaseException as e:  # noqa: BLE001 - the others still close
                error = error or e
        if error is not None:
            raise error
