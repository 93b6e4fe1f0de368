"""The state of a run (trilevel.training.state): what it holds from the start, and its questions about the run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trilevel.training import State, TrainConfig
from trilevel.training.distributed import DistContext


def fresh(**config) -> State:
    cfg = TrainConfig(**{"epochs": 4, "batch_size": 32, **config})
    return State(config=cfg, given_config=cfg, ctx=DistContext(), folder=Path("run"), checkpoint=Path("run/checkpoint.pt"))


def test_a_new_state_owns_the_run_from_its_start():
    state = fresh()
    assert state.progress.global_step == 0 and state.metrics_history == [] and not state.stop_requested
    assert state.partial_epoch is None and not state.training
    assert str(state.device) == "cpu" and "run" in repr(state)
    for later in ("model", "algorithm", "epoch", "step", "summary"):  # built by build_run, set by the loop
        with pytest.raises(AttributeError):
            getattr(state, later)


def test_progress_through_an_epochs_run():
    state = fresh(stop_after_epoch=2)
    state.plan = None
    assert state.run_fraction(1, 3, 4) == pytest.approx((1 + 3 / 4) / 4)
    assert [state.run_ends_after(e) for e in range(4)] == [False, False, False, True]
    assert [state.last_epoch_of_invocation(e) for e in range(4)] == [False, True, True, True]


def test_progress_through_a_budget_run_follows_its_steps():
    state = fresh()
    state.plan = SimpleNamespace(total_steps=10)
    state.progress.global_step = 4
    assert state.run_fraction(0, 1, 7) == 0.4  # the budget's steps, not the epoch's position
    assert not state.run_ends_after(0)
    state.progress.global_step = 10
    assert state.run_ends_after(0) and state.last_epoch_of_invocation(0)


@pytest.mark.parametrize("drop_last, expected", [(False, 4), (True, 3)])
def test_steps_in_an_epoch(drop_last, expected):
    state = fresh()
    state.drop_last = drop_last
    assert state.steps_in_epoch(100) == expected


def test_flops_per_image_asks_the_meter_at_the_models_own_side_as_none():
    calls = []
    state = fresh()
    state.info = SimpleNamespace(img_size=28)
    state.meter = SimpleNamespace(per_image=lambda *args: calls.append(args) or 7.0, dense_flops=9.0)
    assert state.flops_per_image(0.5, training=True, img_size=28) == 7.0
    state.flops_per_image(0.5, attn_keep_ratio=0.3, img_size=14)
    assert calls == [(0.5, True, 1.0, None), (0.5, False, 0.3, 14)] and state.dense_flops == 9.0
