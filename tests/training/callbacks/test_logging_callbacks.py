"""ProgressLogger and MetricsLogger (trilevel.training.callbacks.logs): the run's lines, records and live logs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import torch

from trilevel.training.callbacks import MetricsLogger, ProgressLogger
from trilevel.training.output import EPOCH_TAGS, PICTURE_IMAGES, PICTURE_TAG

METRICS = {"epoch": 2, "train_loss": 1.5, "train_acc": 40.0, "val_top1": 50.0, "val_loss": 1.2, "val_images": 64,
           "epoch_seconds": 3.0, "epoch_cpu_seconds": 3.0, "train_images": 64, "train_images_per_s": 21.3,
           "active_examples": 60, "mean_tokens_per_block": 12.5, "keep_ratio": 0.7, "attn_keep_ratio": 0.3,
           "lr": 1e-3, "skipped_steps": 0, "dense_epochs_so_far": 1.4}


class FakeOutput:
    def __init__(self, live: bool) -> None:
        self.live = live
        self.calls = []

    def append_metrics(self, metrics):
        self.calls.append(("metrics", metrics["epoch"]))

    def log_scalars(self, scalars, step):
        self.calls.append(("scalars", sorted(scalars), step))

    def log_histogram(self, tag, values, step):
        self.calls.append(("histogram", tag, list(values), step))

    def log_image(self, tag, image, step, caption):
        self.calls.append(("image", tag, image.shape, step, caption))

    def flush(self):
        self.calls.append(("flush",))

    def write_summary(self, summary):
        self.calls.append(("summary", summary))


def epoch_state(algorithm=None, last=False, every=5):
    return SimpleNamespace(
        epoch=SimpleNamespace(index=1, metrics=dict(METRICS)), progress=SimpleNamespace(global_step=8),
        algorithm=algorithm, run_ends_after=lambda epoch: last, run_epochs=3, num_train=64,
        config=SimpleNamespace(tensorboard_images_every=every, seed=0), device=torch.device("cpu"),
        model="model", val_set="val", info="info", summary={"finished": True})


def test_the_epoch_line(caplog):
    logger = ProgressLogger(FakeOutput(False))
    with caplog.at_level(logging.INFO, logger="trilevel.training"):
        logger.epoch_end(epoch_state())
    assert caplog.messages == ["epoch 2/3: train loss 1.5000 acc 40.00% | val top-1 50.00% | 3.0 s, 21 img/s | "
                               "active 60/64 | tokens/block 12.5 | keep 0.700 attn 0.300 | lr 1.000e-03"]


def test_without_live_logging_only_the_metrics_file_and_summary_are_written():
    output = FakeOutput(False)
    logger = MetricsLogger(output)
    state = epoch_state()
    logger.epoch_end(state)
    logger.fit_end(state)
    assert output.calls == [("metrics", 2), ("summary", {"finished": True})]


def test_live_epoch_logs_the_histogram_and_a_picture_drawn_with_the_rng_untouched():
    output = FakeOutput(True)
    selector = SimpleNamespace(forgetting_counts=torch.tensor([1, 2, 3]), active_mask=torch.tensor([True, False, True]))
    seen = []

    def renderer(model, val_set, info, seed, num_images):
        seen.append((model, val_set, info, seed, num_images))
        torch.rand(100)  # the drawing may use the RNG: the run's stream is restored
        return np.zeros((4, 5, 3), dtype=np.uint8)

    state = epoch_state(SimpleNamespace(selector=selector), last=True)
    before = torch.random.get_rng_state()
    MetricsLogger(output, renderer).epoch_end(state)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert seen == [("model", "val", "info", 0, PICTURE_IMAGES)]
    assert output.calls == [("metrics", 2), ("scalars", sorted(EPOCH_TAGS), 8),
                            ("histogram", "examples/forgetting_counts", [1, 3], 8),
                            ("image", PICTURE_TAG, (4, 5, 3), 8, "epoch 2"), ("flush",)]


def test_no_picture_between_its_epochs_nor_for_a_dense_run():
    for algorithm, last in ((SimpleNamespace(selector=None), False), (None, True)):
        output = FakeOutput(True)
        MetricsLogger(output, lambda *a: np.zeros((1, 1, 3), dtype=np.uint8)).epoch_end(epoch_state(algorithm, last))
        assert [c[0] for c in output.calls] == ["metrics", "scalars", "flush"]


def test_without_a_renderer_a_due_picture_is_a_warning_once(caplog):
    output = FakeOutput(True)
    logger = MetricsLogger(output)
    with caplog.at_level(logging.WARNING, logger="trilevel.training"):
        logger.epoch_end(epoch_state(SimpleNamespace(), every=1))
        logger.epoch_end(epoch_state(SimpleNamespace(), every=1))
    assert [m for m in caplog.messages if "renderer" in m] == [
        "no pruning-picture renderer: pass picture_renderer=trilevel.viz.render_pruning_picture to train() to log "
        "pruning pictures"]
    assert not any(c[0] == "image" for c in output.calls)
