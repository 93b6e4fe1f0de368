"""AlgorithmCallback (trilevel.training.callbacks.algorithm): the TriLevel algorithm at a run's events."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trilevel.training.callbacks import AlgorithmCallback


class FakeAlgorithm:
    def __init__(self, reweights: bool) -> None:
        self.reweights_loss = reweights
        self.calls = []

    def on_epoch_start(self, epoch, progress):
        self.calls.append(("epoch", epoch, progress))

    def on_step(self, progress):
        self.calls.append(("step", progress))
        return 0.5, 0.25

    def after_forward(self, indices, logits, targets, loss=None):
        self.calls.append(("record", loss is not None, logits.requires_grad))
        return torch.full_like(loss, 2.0) if loss is not None else None


def state_with(algorithm, finite=True):
    logits = torch.zeros(2, 3, requires_grad=True)
    step = SimpleNamespace(progress=0.3, keep_ratio=1.0, attn_keep_ratio=1.0, finite=finite, outcome_indices=torch.arange(2),
                           logits=logits, loss_targets=torch.zeros(2, dtype=torch.long), per_example_loss=torch.ones(2),
                           loss_weights=None)
    return SimpleNamespace(algorithm=algorithm, step=step, epoch=SimpleNamespace(index=3),
                           progress=SimpleNamespace(epoch_start_progress=0.75))


def test_epoch_and_step_start():
    alg = FakeAlgorithm(False)
    state, cb = state_with(alg), AlgorithmCallback()
    cb.epoch_start(state)
    cb.step_start(state)
    assert alg.calls == [("epoch", 3, 0.75), ("step", 0.3)]
    assert (state.step.keep_ratio, state.step.attn_keep_ratio) == (0.5, 0.25)


@pytest.mark.parametrize("finite", [True, False])
def test_a_plain_algorithm_records_after_backward_a_finite_batch_only(finite):
    alg = FakeAlgorithm(False)
    state, cb = state_with(alg, finite), AlgorithmCallback()
    cb.after_forward(state)
    assert alg.calls == []
    cb.after_backward(state)
    assert alg.calls == ([("record", False, False)] if finite else [])  # detached logits
    assert state.step.loss_weights is None


@pytest.mark.parametrize("finite", [True, False])
def test_a_loss_weighting_algorithm_records_after_forward_and_returns_weights(finite):
    alg = FakeAlgorithm(True)
    state, cb = state_with(alg, finite), AlgorithmCallback()
    cb.after_forward(state)
    cb.after_backward(state)
    assert alg.calls == ([("record", True, False)] if finite else [])
    assert (state.step.loss_weights is not None) == finite


def test_a_dense_run_has_nothing_to_drive():
    state, cb = state_with(None), AlgorithmCallback()
    for event in (cb.epoch_start, cb.step_start, cb.after_forward, cb.after_backward):
        event(state)
    assert state.step.keep_ratio == 1.0 and state.step.loss_weights is None
