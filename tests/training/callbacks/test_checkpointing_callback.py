"""Checkpointing (trilevel.training.callbacks.checkpoint): when a run saves, and what it does around a save."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trilevel.training.accounting import EpochClock, RunProgress
from trilevel.training.callbacks import Checkpointing
from trilevel.training.callbacks import checkpoint as checkpoint_module
from trilevel.training.checkpointing import NonFiniteLossError
from trilevel.training.distributed import DistContext


def run_state(tmp_path: Path, every=None, nonfinite="stop", resumed=None):
    config = SimpleNamespace(checkpoint_every=every, keep_last=0, nonfinite=nonfinite, resume="old.pt")
    return SimpleNamespace(
        config=config, ctx=DistContext(), folder=tmp_path, checkpoint=tmp_path / "checkpoint.pt", resumed=resumed,
        progress=RunProgress(global_step=4), stop_requested=False, metrics_history=[{"epoch": 1}],
        epoch=SimpleNamespace(index=1, done=2, iters=5, acc=SimpleNamespace(seconds=0.0, cpu_seconds=0.0),
                              clock=EpochClock(torch.device("cpu"))),
        step=SimpleNamespace(index=1, finite=True, stop=False, stopping=False))


@pytest.fixture
def saves(monkeypatch):
    """What each save held: (next epoch, next step, the partial epoch's sums)."""
    out = []
    monkeypatch.setattr(checkpoint_module, "checkpoint_state",
                        lambda state, acc: out.append((state.progress.epoch, state.progress.step_in_epoch,
                                                                  acc and "acc")) or {"x": 1})
    return out


def started(state) -> Checkpointing:
    cb = Checkpointing()
    cb.init(state)
    return cb


def test_init_removes_what_a_killed_write_left(tmp_path):
    (tmp_path / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    started(run_state(tmp_path))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_resume_rewrites_metrics_and_keeps_the_resumed_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    state = run_state(tmp_path, resumed={})
    cb = started(state)
    cb.fit_start(state)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n' and "old.pt" in cb.files.kept


def test_epoch_end_saves_at_the_boundary(tmp_path, saves):
    state = run_state(tmp_path)
    started(state).epoch_end(state)
    assert saves == [(2, 0, None)] and (tmp_path / "checkpoint.pt").is_file()
    assert state.progress.checkpoint_seconds > 0


def test_a_due_step_checkpoint_is_saved_and_its_time_is_not_training(tmp_path, saves):
    state = run_state(tmp_path, every=4)
    t0 = state.epoch.clock.t0
    started(state).step_end(state)
    assert saves == [(1, 2, "acc")] and not state.step.stopping
    assert state.epoch.acc.seconds > 0  # the partial epoch's time so far travels in the checkpoint
    assert state.epoch.clock.t0 - t0 == pytest.approx(state.progress.checkpoint_seconds)


def test_a_stop_request_is_decided_once_and_saved(tmp_path, saves):
    state = run_state(tmp_path)
    cb = started(state)
    cb.step_end(state)
    assert saves == [] and not state.step.stopping  # nothing due, nothing asked
    state.stop_requested = True
    cb.step_end(state)
    assert saves == [(1, 2, "acc")] and state.step.stopping


def test_a_non_finite_loss_saves_the_last_good_state_and_stops(tmp_path, saves):
    state = run_state(tmp_path)
    state.step.finite = False
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 5\).*saved to .*checkpoint.pt"):
        started(state).after_backward(state)
    assert saves == [(1, 1, "acc")]  # resumes at the bad batch


def test_skipping_non_finite_losses_saves_nothing(tmp_path, saves):
    state = run_state(tmp_path, nonfinite="skip")
    state.step.finite = False
    started(state).after_backward(state)
    assert saves == []
