"""SigtermHandler (trilevel.training.callbacks.sigterm): SIGTERM into a stop request, and the stop after the save."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from trilevel.training import TrainingInterrupted
from trilevel.training.callbacks import SigtermHandler
from trilevel.training.distributed import DistContext
from trilevel.training.signals import STOP_REQUEST


def run_state(last=False):
    return SimpleNamespace(stop_requested=False, ctx=DistContext(), checkpoint=Path("run/checkpoint.pt"), run_epochs=3,
                           run_ends_after=lambda epoch: last, epoch=SimpleNamespace(index=0, done=2, iters=5),
                           step=SimpleNamespace(stopping=False))


def test_the_signal_becomes_a_request_and_the_handler_is_restored():
    previous = signal.getsignal(signal.SIGTERM)
    state, handler = run_state(), SigtermHandler()
    handler.init(state)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert state.stop_requested and STOP_REQUEST.is_set()
    finally:
        handler.close(state)
        STOP_REQUEST.clear()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_stopping_step_ends_the_run_naming_the_checkpoint():
    state, handler = run_state(), SigtermHandler()
    handler.step_end(state)  # not stopping: nothing
    state.step.stopping = True
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 2/5; checkpoint saved to run/checkpoint.pt") as info:
        handler.step_end(state)
    assert info.value.checkpoint == "run/checkpoint.pt"


def test_at_an_epoch_end_a_request_stops_the_run_unless_it_ends_anyway():
    state, handler = run_state(), SigtermHandler()
    handler.epoch_end(state)
    state.stop_requested = True
    with pytest.raises(TrainingInterrupted, match="after epoch 1/3"):
        handler.epoch_end(state)
    last = run_state(last=True)
    last.stop_requested = True
    handler.epoch_end(last)
