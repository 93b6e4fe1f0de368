"""The event engine (trilevel.training.events): the events a run fires, in order, and callbacks that observe them.

The run tests are tiny CPU runs on Fashion-MNIST (64 training images, batches of 32: two steps an epoch).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trilevel.checkpoint import load_checkpoint
from trilevel.training import Callback, Event, State, TrainingInterrupted, train
from trilevel.training.events import Engine

from _runs import TINY_RUN, needs_fmnist

TINY = dict(TINY_RUN, train_subset=64, val_subset=64, epochs=2, log_interval=1)
STEP_EVENTS = [Event.STEP_START, Event.AFTER_FORWARD, Event.AFTER_BACKWARD, Event.STEP_END]


class Recorder(Callback):
    """Records every event and what the state holds at it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.seen: list[tuple] = []
        self.closed = False

    def run_event(self, event: Event, state: State) -> None:
        self.events.append(event)
        super().run_event(event, state)

    def step_start(self, state: State) -> None:
        self.seen.append(("ratios", state.step.keep_ratio, state.step.attn_keep_ratio, tuple(state.step.images.shape)))

    def after_forward(self, state: State) -> None:
        self.seen.append(("logits", tuple(state.step.logits.shape), state.step.finite))

    def after_backward(self, state: State) -> None:
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.seen.append(("backward", state.step.finite, len(grads) > 0))

    def step_end(self, state: State) -> None:
        self.seen.append(("step", state.progress.global_step, state.epoch.done, state.epoch.iters))

    def epoch_end(self, state: State) -> None:
        lines = (state.folder / "metrics.jsonl").read_text().splitlines()  # written before a caller's callback
        self.seen.append(("epoch", state.epoch.metrics["epoch"], len(lines), len(state.metrics_history)))

    def fit_end(self, state: State) -> None:
        self.seen.append(("fit", state.summary["finished"], state.summary["global_steps"]))

    def close(self, state: State) -> None:
        self.closed = True


def test_events_run_in_order_and_close_in_reverse():
    calls = []

    class Named(Callback):
        def __init__(self, name):
            self.name = name

        def epoch_start(self, state):
            calls.append((self.name, "epoch_start", state))

        def close(self, state):
            calls.append((self.name, "close"))

    engine = Engine("the state", [Named("a"), Named("b")])
    engine.fire(Event.EPOCH_START)
    engine.fire(Event.STEP_START)  # no method of theirs: nothing happens
    engine.close()
    assert calls == [("a", "epoch_start", "the state"), ("b", "epoch_start", "the state"), ("b", "close"),
                     ("a", "close")]
    assert [e.value for e in Event] == ["init", "fit_start", "epoch_start", "step_start", "after_forward",
                                        "after_backward", "step_end", "epoch_end", "fit_end"]


def test_every_callback_closes_even_when_one_fails():
    closed = []

    class Failing(Callback):
        def close(self, state):
            raise OSError("cannot close")

    class Fine(Callback):
        def close(self, state):
            closed.append(True)

    with pytest.raises(OSError, match="cannot close"):
        Engine(None, [Fine(), Failing()]).close()
    assert closed == [True]


def test_only_callbacks_are_accepted():
    with pytest.raises(TypeError, match="Callback instances, got function"):
        Engine(None, [lambda state: None])


@needs_fmnist
def test_a_tiny_run_fires_the_events_in_order_and_a_callback_sees_the_state(tmp_path):
    rec = Recorder()
    summary = train(dict(TINY, output_dir=str(tmp_path / "run")), callbacks=[rec])
    epoch = [Event.EPOCH_START, *STEP_EVENTS * 2, Event.EPOCH_END]
    assert rec.events == [Event.INIT, Event.FIT_START, *epoch * 2, Event.FIT_END]
    assert rec.closed
    ratios = [s for s in rec.seen if s[0] == "ratios"]
    # the algorithm ran before the caller's callback: the paper's schedule starts at keep 1.0 and decays
    assert ratios[0][1] == 1.0 and ratios[-1][1] < 1.0 and all(r[3][1:] == (1, 28, 28) for r in ratios)
    assert ("logits", (32, 10), None) in rec.seen  # finiteness is known after backward (no loss weighting)
    assert ("backward", True, True) in rec.seen
    assert [s for s in rec.seen if s[0] == "step"] == [("step", 1, 1, 2), ("step", 2, 2, 2), ("step", 3, 1, 2),
                                                      ("step", 4, 2, 2)]
    assert [s for s in rec.seen if s[0] == "epoch"] == [("epoch", 1, 1, 1), ("epoch", 2, 2, 2)]
    assert rec.seen[-1] == ("fit", True, 4) and summary["global_steps"] == 4


@needs_fmnist
def test_the_loss_weighting_algorithm_knows_finiteness_after_forward(tmp_path):
    rec = Recorder()
    train(dict(TINY, epochs=1, selector="loss", output_dir=str(tmp_path / "loss")), callbacks=[rec])
    weights = [s for s in rec.seen if s[0] == "logits"]
    assert weights and all(s[2] is True for s in weights)


class StopAt(Callback):
    """Asks the run to stop in global step ``step`` (1-based), as a SIGTERM would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def step_start(self, state: State) -> None:
        if state.progress.global_step + 1 == self.step:
            state.stop_requested = True


@needs_fmnist
def test_a_stop_request_saves_and_the_resume_is_exact(tmp_path):
    straight = train(dict(TINY, output_dir=str(tmp_path / "straight")))
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 1/2") as info:
        train(dict(TINY, output_dir=str(out)), callbacks=[StopAt(3)])
    assert info.value.checkpoint == str(out / "checkpoint.pt")
    p = load_checkpoint(out / "checkpoint.pt")["progress"]
    assert (p["epoch"], p["step_in_epoch"], p["global_step"]) == (1, 1, 3)
    resumed = train(dict(TINY, output_dir=str(out), resume=str(out / "checkpoint.pt")))
    for key in ("val_top1", "train_loss", "train_acc", "train_images", "global_steps", "relative_train_flops",
                "selector_digest"):
        assert resumed[key] == straight[key], key
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_callback_must_be_a_callback_for_train(tmp_path):
    with pytest.raises(TypeError, match="Callback"):
        train(dict(TINY, output_dir=str(Path(tmp_path) / "bad")), callbacks=[object()])
