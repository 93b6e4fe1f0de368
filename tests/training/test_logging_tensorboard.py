"""Watching a run as it happens: --log-tensorboard and --log-wandb.

Tiny CPU runs on real Fashion-MNIST; the TensorBoard event files are read back with TensorBoard's
own ``EventAccumulator``. Tests that need the tensorboard package skip without it (``pip install
trilevel[tensorboard]``); the W&B run test skips without wandb.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trilevel.checkpoint import load_checkpoint
from trilevel.training import train as plain_train
from trilevel.viz import render_pruning_picture
from trilevel.training.output import (
    EPOCH_TAGS, HISTOGRAM_TAG, PICTURE_TAG, STEP_TAGS, TENSORBOARD_DIR, check_live_logging,
)

from _runs import TINY_RUN, needs_fmnist as needs_data


def train(config, **kwargs):
    """``trilevel.training.train`` with the live logs' pruning picture drawn, as ``trilevel train`` passes it."""
    return plain_train(config, picture_renderer=render_pruning_picture, **kwargs)


needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed (pip install trilevel[tensorboard])"
)

TINY = dict(TINY_RUN, train_subset=128, val_subset=100, epochs=2, log_interval=1)
STEPS_PER_EPOCH = 4  # 128 / 32
# A single evaluation without EMA has no EMA top-1.
EXPECTED_SCALARS = set(STEP_TAGS) | (set(EPOCH_TAGS) - {"epoch/val_top1_ema"})


def _events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    summary = train(dict(TINY, log_tensorboard=True, tensorboard_images_every=1, output_dir=str(out)))
    return out, summary


@needs_data
@needs_tensorboard
def test_tensorboard_events_hold_every_scalar_the_histogram_and_the_picture(tb_run):
    from PIL import Image

    out, summary = tb_run
    ea = _events(out)
    tags = ea.Tags()
    assert EXPECTED_SCALARS <= set(tags["scalars"]), EXPECTED_SCALARS - set(tags["scalars"])
    last_step = 2 * STEPS_PER_EPOCH
    for tag in STEP_TAGS:  # log_interval 1: every global step once
        assert [e.step for e in ea.Scalars(tag)] == list(range(1, last_step + 1)), tag
    for tag in set(EPOCH_TAGS) - {"epoch/val_top1_ema"}:  # at each epoch's last global step
        assert [e.step for e in ea.Scalars(tag)] == [STEPS_PER_EPOCH, last_step], tag
    assert [e.value for e in ea.Scalars("epoch/val_top1")][-1] == pytest.approx(summary["val_top1"])
    assert ea.Scalars("flops/relative_so_far")[-1].value == pytest.approx(summary["relative_train_flops"], rel=1e-5)
    assert ea.Scalars("epoch/active_examples")[-1].value == summary["active_examples"]
    # the histogram covers the active set only
    hist = ea.Histograms(HISTOGRAM_TAG)
    assert [h.step for h in hist] == [STEPS_PER_EPOCH, last_step]
    assert hist[-1].histogram_value.num == summary["active_examples"]
    # one picture per epoch (tensorboard_images_every=1), a decodable RGB PNG with 4 rows of panels
    images = ea.Images(PICTURE_TAG)
    assert [i.step for i in images] == [STEPS_PER_EPOCH, last_step]
    pic = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert pic.format == "PNG" and pic.mode == "RGB" and pic.height > 400 and pic.width > 400
    assert len(np.unique(np.asarray(pic).reshape(-1, 3), axis=0)) > 10  # not blank


@needs_data
@needs_tensorboard
def test_logging_changes_nothing_and_a_resume_continues_the_curves(tb_run, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    uninterrupted, _ = tb_run
    out = tmp_path / "resumed"
    cfg = dict(TINY, log_tensorboard=True, tensorboard_images_every=5, output_dir=str(out))
    first = train(dict(cfg, stop_after_epoch=1))
    assert not first["finished"]
    # what a crashed continuation would have left after the checkpoint (global step 4): purged on resume
    with SummaryWriter(str(out / TENSORBOARD_DIR)) as stale:
        for step in range(STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 3):
            stale.add_scalar("train/loss", 999.0, step)
    train(dict(cfg, resume=str(out / "checkpoint.pt")))
    # bit-identical to the uninterrupted run that drew a picture every epoch: logging touched no RNG
    a, b = load_checkpoint(uninterrupted / "checkpoint.pt")["model"], load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea = _events(out)
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert 999.0 not in [e.value for e in loss]
    ref = _events(uninterrupted).Scalars("train/loss")
    assert [e.value for e in loss] == pytest.approx([e.value for e in ref])
    # images_every 5 in a 2-epoch run: the last epoch's picture only
    assert [i.step for i in ea.Images(PICTURE_TAG)] == [2 * STEPS_PER_EPOCH]


@needs_data
@needs_tensorboard
def test_a_dense_run_has_scalars_but_no_pruning_picture_or_histogram(tmp_path):
    out = tmp_path / "dense"
    train(dict(TINY, dense=True, epochs=1, log_tensorboard=True, tensorboard_images_every=1, output_dir=str(out)))
    tags = _events(out).Tags()
    assert EXPECTED_SCALARS <= set(tags["scalars"])
    assert tags["images"] == [] and tags["histograms"] == []


def test_log_tensorboard_without_tensorboard_fails_at_startup(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"pip install trilevel\[tensorboard\]"):
        train(dict(TINY, log_tensorboard=True, output_dir=str(out)))
    assert not out.exists()  # nothing was written


def test_log_wandb_without_wandb_fails_at_startup(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"pip install trilevel\[wandb\]"):
        train(dict(TINY, log_wandb=True, output_dir=str(out)))
    assert not out.exists()


@pytest.mark.parametrize("field, value", [("tensorboard_images_every", 0), ("log_tensorboard", "yes"),
                                          ("log_wandb", 1)])
def test_bad_live_logging_values_are_named(field, value):
    from trilevel.training import TrainConfig

    cfg = TrainConfig(**{field: value})  # the constructor leaves these to check_live_logging (a frozen config)
    with pytest.raises(ValueError, match=field.replace("_", "[-_]")):
        check_live_logging(cfg)


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed (pip install trilevel[wandb])")
def test_wandb_offline_run_is_written_under_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(dict(TINY, epochs=1, log_wandb=True, tensorboard_images_every=1, output_dir=str(out)))
    run_id = (out / "wandb" / "trilevel-run-id").read_text().strip()
    assert list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
