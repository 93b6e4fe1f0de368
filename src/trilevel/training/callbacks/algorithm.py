"""The :class:`~trilevel.TriLevel` algorithm at a run's events: :class:`AlgorithmCallback`.

The trainer's counterpart of the Lightning callback (:mod:`trilevel.integrations.lightning`): the
same object, driven at the same points (Kong et al., "Peeling the Onion", AAAI 2023; the event
shape of composer's ``Algorithm``).
"""

from __future__ import annotations

from ..events import Callback
from ..state import State

__all__ = ["AlgorithmCallback"]


class AlgorithmCallback(Callback):
    """Runs ``state.algorithm`` (a :class:`~trilevel.TriLevel`; None for a dense run: nothing happens).

    * ``EPOCH_START``: :meth:`~trilevel.TriLevel.on_epoch_start` at the progress where the epoch
      started (a due selector update; the epoch's order; every example in the dense tail).
    * ``STEP_START``: :meth:`~trilevel.TriLevel.on_step`, the scheduled keep ratios, into
      ``state.step.keep_ratio`` / ``attn_keep_ratio``.
    * The batch's outcomes, for a batch whose loss is finite (a skipped batch is not recorded):
      at ``AFTER_FORWARD`` when the algorithm weights the loss (InfoBatch: the weights, into
      ``state.step.loss_weights``, are needed before backward; the loop has then read the
      finite flag already), else at ``AFTER_BACKWARD`` (the flag is read after backward is
      queued, so the device stays busy).
    """

    def epoch_start(self, state: State) -> None:
        if state.algorithm is not None:
            state.algorithm.on_epoch_start(state.epoch.index, state.progress.epoch_start_progress)

    def step_start(self, state: State) -> None:
        if state.algorithm is not None:
            step = state.step
            step.keep_ratio, step.attn_keep_ratio = state.algorithm.on_step(step.progress)

    def after_forward(self, state: State) -> None:
        step = state.step
        if state.algorithm is None or not state.algorithm.reweights_loss or not step.finite:
            return
        step.loss_weights = state.algorithm.after_forward(
            step.outcome_indices, step.logits.detach(), step.loss_targets, step.per_example_loss.detach())

    def after_backward(self, state: State) -> None:
        step = state.step
        if state.algorithm is None or state.algorithm.reweights_loss or not step.finite:
            return
        state.algorithm.after_forward(step.outcome_indices, step.logits.detach(), step.loss_targets)
