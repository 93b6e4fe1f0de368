"""CompileTimer (trilevel.training.callbacks.compile_timer): steps that compiled a graph are not training time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trilevel.training.accounting import EpochClock
from trilevel.training.callbacks import compile_timer
from trilevel.training.callbacks.compile_timer import CompileTimer


def run_step(monkeypatch, graphs_before: int, graphs_after: int):
    import torch

    counts = iter([graphs_before, graphs_after])
    monkeypatch.setattr(compile_timer, "compiled_graphs", lambda: next(counts))
    clock = EpochClock(torch.device("cpu"))
    state = SimpleNamespace(epoch=SimpleNamespace(clock=clock), progress=SimpleNamespace(compile_seconds=1.0))
    t0 = clock.t0
    timer = CompileTimer()
    timer.step_start(state)
    sum(range(10000))
    timer.step_end(state)
    return state, clock.t0 - t0


def test_a_step_that_compiled_is_counted_apart(monkeypatch):
    state, excluded = run_step(monkeypatch, 3, 4)
    assert state.progress.compile_seconds > 1.0
    assert excluded == pytest.approx(state.progress.compile_seconds - 1.0)  # the same seconds leave the training clock


def test_a_step_that_compiled_nothing_is_training_time(monkeypatch):
    state, excluded = run_step(monkeypatch, 4, 4)
    assert state.progress.compile_seconds == 1.0 and excluded == 0.0
