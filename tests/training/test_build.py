"""Building a run's parts (trilevel.training.build): every part of the state, in the trainer's order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trilevel import TriLevel
from trilevel.training import State, TrainConfig
from trilevel.training.build import build_run
from trilevel.training.distributed import DistContext

from _runs import TINY_RUN, needs_fmnist


def built(tmp_path: Path, **overrides) -> State:
    cfg = TrainConfig.from_dict(dict(TINY_RUN, train_subset=64, val_subset=32, epochs=2, **overrides))
    state = State(config=cfg, given_config=cfg, ctx=DistContext(), folder=tmp_path, checkpoint=tmp_path / "c.pt")
    build_run(state)
    return state


@needs_fmnist
def test_a_tri_level_run_is_built_whole(tmp_path):
    state = built(tmp_path)
    for name in ("info", "train_set", "val_set", "test_set", "train_indexed", "model", "wrapped_model", "meter",
                 "optimizer", "lr_scheduler", "scaler", "criterion", "sampler", "val_loader"):
        assert getattr(state, name) is not None, name
    assert isinstance(state.algorithm, TriLevel) and state.sampler is state.algorithm.sampler
    assert state.wrapped_model is state.model and state.ema is None and state.mixup is None and state.plan is None
    assert state.val_set is state.test_set  # no --val-split: the test set is evaluated each epoch
    assert (state.num_train, state.nominal_iters, state.total_updates, state.run_epochs) == (64, 2, 4, 2)
    assert state.config is state.resolved.config and state.given_config is not state.config
    assert state.eval_ratios == state.resolved.eval_ratios and state.dense_flops > 0


@needs_fmnist
def test_a_dense_budget_run_has_no_algorithm_and_a_plan(tmp_path):
    state = built(tmp_path, dense=True, budget=1.5, mixup=0.8)
    assert state.algorithm is None and state.resolved is None and state.eval_ratios == (1.0, 1.0)
    assert isinstance(state.sampler, torch.utils.data.DistributedSampler) and state.drop_last
    assert state.plan is not None and state.total_updates == state.plan.total_steps == 3
    assert state.mixup is not None


@needs_fmnist
def test_the_same_seed_builds_the_same_model(tmp_path):
    a, b = built(tmp_path / "a"), built(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


@needs_fmnist
def test_a_batch_larger_than_the_training_set_is_named(tmp_path):
    with pytest.raises(ValueError, match="batch-size 128 is larger than the per-rank share"):
        built(tmp_path, batch_size=128, mixup=0.8)  # even batches only: not one step


def test_fp16_off_cuda_is_refused_before_anything_is_built(tmp_path):
    cfg = TrainConfig(amp="fp16", device="cpu")
    state = State(config=cfg, given_config=cfg, ctx=DistContext(), folder=tmp_path, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device"):
        build_run(state)
