"""The end of an epoch (trilevel.training.epoch_metrics): the run's totals and the metrics line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trilevel.training import State, TrainConfig
from trilevel.training.accounting import EpochAccumulator, EpochClock, StepFlags
from trilevel.training.build import build_run
from trilevel.training.distributed import DistContext
from trilevel.training.epoch_metrics import epoch_metrics
from trilevel.training.state import EpochState

from _runs import TINY_RUN, needs_fmnist

pytestmark = needs_fmnist

KEYS = ["epoch", "train_loss", "train_acc", "val_top1", "val_loss", "val_images"]
TAIL = ["epoch_seconds", "epoch_cpu_seconds", "train_images", "train_images_per_s", "active_examples",
        "mean_tokens_per_block", "keep_ratio", "attn_keep_ratio", "lr", "skipped_steps", "dense_epochs_so_far"]


def ended_epoch(tmp_path: Path, index: int, **overrides) -> tuple:
    cfg = TrainConfig.from_dict(dict(TINY_RUN, train_subset=64, val_subset=32, epochs=2, **overrides))
    state = State(config=cfg, given_config=cfg, ctx=DistContext(), folder=tmp_path, checkpoint=tmp_path / "c.pt")
    build_run(state)
    acc = EpochAccumulator(state.device)
    acc.loss_sum += 6.0
    acc.correct += 16
    acc.images = acc.counted = 64
    acc.steps, acc.flops, acc.tokens_sum, acc.seconds = 2, 64 * 1e6, 20.0, 2.0
    state.epoch = EpochState(index=index, skip=0, acc=acc, clock=EpochClock(state.device), flags=StepFlags(state.ctx),
                             lr=1e-3, iters=2, full_iters=2, keep_ratio=0.7, attn_keep_ratio=0.3)
    return state, epoch_metrics(state)


def test_a_middle_epoch_folds_its_sums_into_the_run(tmp_path):
    state, m = ended_epoch(tmp_path, 0, eval_every=2)
    assert list(m) == KEYS + TAIL
    assert (m["epoch"], m["train_loss"], m["train_acc"], m["val_top1"]) == (1, 6.0 / 64, 25.0, None)  # not due
    assert (m["keep_ratio"], m["attn_keep_ratio"], m["lr"], m["mean_tokens_per_block"]) == (0.7, 0.3, 1e-3, 10.0)
    p = state.progress
    assert (p.train_images, p.flops_sum, p.train_seconds, p.epochs_trained) == (64, 64e6, 2.0, 1.0)
    assert m["dense_epochs_so_far"] == pytest.approx(64e6 / (64 * state.dense_flops))


def test_the_last_epoch_evaluates_full_tokens_the_test_set_and_ema(tmp_path):
    state, m = ended_epoch(tmp_path, 1, val_split=32, ema_decay=0.9)
    assert list(m) == KEYS + ["val_top1_full_tokens", "test_top1", "test_top1_full_tokens", "val_top1_ema"] + TAIL
    assert all(isinstance(m[k], float) for k in ("val_top1", "val_top1_full_tokens", "test_top1", "val_top1_ema"))
    assert m["val_images"] == 32 and state.progress.eval_seconds > 0
    assert torch.is_tensor(state.epoch.acc.loss_sum)
