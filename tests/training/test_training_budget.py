"""Compute budgets: the step plan (pure arithmetic on crafted costs) and budgeted training runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trilevel.training import TrainConfig, train
from trilevel.training.budget import epoch_batch_sizes, plan_budget, plan_run, resolution_schedule

from _runs import TINY_RUN, needs_fmnist as needs_data



# ------------------------------------------------------------------------------------ the plan
def test_epoch_batch_sizes():
    assert epoch_batch_sizes(10, 4, 1, drop_last=False) == [4, 4, 2]
    assert epoch_batch_sizes(10, 4, 1, drop_last=True) == [4, 4]
    assert epoch_batch_sizes(10, 4, 2, drop_last=False) == [8, 8, 4]  # global images per step
    assert epoch_batch_sizes(3, 4, 1, drop_last=True) == []
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batch_sizes(10, 0, 1, False)


def test_constant_cost_buys_the_budget_in_images():
    # 100 images, dense cost 1 per image: a budget of 2.5 epochs buys 250 images = 25 steps of 10
    plan = plan_budget(2.5, 100, 1.0, [10] * 10, lambda p: 1.0)
    assert plan.total_steps == 25 and plan.planned_flops == 250.0 and plan.budget_flops == 250.0
    assert plan.epochs == 2.5 and plan.whole_epochs == 3 and plan.steps_per_epoch == 10


def test_cheaper_steps_buy_more_steps_and_partial_batches_count():
    # half the cost per image: twice the steps
    assert plan_budget(2.0, 100, 1.0, [10] * 10, lambda p: 0.5).total_steps == 40
    # epochs of 25 images with batch 10: 10, 10, 5 -> one epoch costs 25, budget 1 (100) buys 4 epochs = 12 steps
    plan = plan_budget(1.0, 100, 1.0, [10, 10, 5], lambda p: 1.0)
    assert plan.total_steps == 12 and plan.planned_flops == 100.0 and plan.epochs == 4.0


def test_the_plan_is_step_exact_for_a_schedule():
    cost = lambda p: 1.0 - 0.5 * p  # noqa: E731 - a decaying keep ratio: cheaper later
    batches = [8] * 7 + [3]
    plan = plan_budget(3.0, 59, 2.0, batches, cost)

    def spent(steps):
        return sum(batches[s % len(batches)] * cost(s / steps) for s in range(steps))

    assert spent(plan.total_steps) <= plan.budget_flops < spent(plan.total_steps + 1)
    assert plan.planned_flops == pytest.approx(spent(plan.total_steps))


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        plan_budget(budget, 100, 1.0, [10], lambda p: 1.0)


def test_a_budget_that_fits_no_step_is_a_clear_error():
    with pytest.raises(ValueError, match="does not pay for one step"):
        plan_budget(0.05, 100, 1.0, [10], lambda p: 1.0)
    with pytest.raises(ValueError, match="no step"):
        plan_budget(1.0, 100, 1.0, [], lambda p: 1.0)


def test_config_budget_and_warmup_checks():
    assert TrainConfig(budget=1.5).budget == 1.5
    assert TrainConfig().warmup_fraction() == pytest.approx(1 / 30)
    assert TrainConfig(epochs=4, warmup_epochs=1).warmup_fraction() == 0.25
    assert TrainConfig(budget=2.0, warmup_epochs=0.5).warmup_fraction() == 0.25
    assert TrainConfig(epochs=1).epochs == 1  # the default warm-up (1/30 of the run) fits any run
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(budget=0)
    with pytest.raises(ValueError, match="warmup-epochs.*budget"):
        TrainConfig(budget=1.0, warmup_epochs=1.0)


# ------------------------------------------------------------------------------------ runs
TINY = dict(
    TINY_RUN, train_subset=256, val_subset=200, log_interval=2, ratio_warmup=0.0, ratio_decay_end=0.5,
    attn_keep_ratio=1.0, prune_layers=[1, 2],
)


def run(tmp_path: Path, name: str, **overrides) -> dict:
    return train(dict(TINY, output_dir=str(tmp_path / name), **overrides))


@needs_data
def test_dense_budget_run_takes_the_planned_steps(tmp_path):
    s = run(tmp_path, "dense", dense=True, budget=1.5)
    # 256 images, batch 32: 8 full steps per epoch; 1.5 epochs of dense compute = 12 steps
    assert s["budget"] == 1.5 and s["total_steps"] == 12 and s["global_steps"] == 12
    assert s["train_images"] == 384 and s["epochs_trained"] == 1.5 and s["epochs"] == 2
    assert s["dense_epochs_used"] == pytest.approx(1.5) and s["relative_train_flops"] == pytest.approx(1.0)
    assert s["train_cpu_seconds"] > 0 and s["eval_seconds"] > 0 and s["checkpoint_seconds"] > 0
    metrics = [json.loads(x) for x in (tmp_path / "dense" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_images"] for m in metrics] == [256, 128]
    # the LR schedule is fitted to the 12 steps: the last step's LR is near the cosine's end
    assert metrics[-1]["lr"] < 0.05 * TrainConfig().lr


@needs_data
def test_tri_level_budget_run_gets_more_steps_within_the_same_compute(tmp_path):
    s = run(tmp_path, "tri", budget=1.5, keep_ratio=0.5, selector="none")
    assert s["total_steps"] > 12 and s["global_steps"] == s["total_steps"]
    assert s["dense_epochs_used"] <= 1.5 and s["relative_train_flops"] > 0.95
    assert s["epochs_trained"] == pytest.approx(s["total_steps"] / 8)
    assert s["val_top1_full_tokens"] is not None  # evaluated at full tokens too (the run ends pruned)


@pytest.mark.slow
@needs_data
def test_budget_run_resumes_exactly(tmp_path):
    straight = run(tmp_path, "straight", budget=2.5, keep_ratio=0.5)
    first = run(tmp_path, "split", budget=2.5, keep_ratio=0.5, stop_after_epoch=1)
    assert first["finished"] is False
    resumed = run(tmp_path, "split", budget=2.5, keep_ratio=0.5, resume=str(tmp_path / "split" / "checkpoint.pt"))
    for key in ("val_top1", "train_loss", "global_steps", "train_images", "selector_digest", "epochs_trained"):
        assert resumed[key] == straight[key], key
    assert math.isclose(resumed["dense_epochs_used"], straight["dense_epochs_used"], rel_tol=1e-12)


# ------------------------------------------------------------------------------------ resolution curriculum
@pytest.mark.parametrize("full, patch, start, ramp_end", [(28, 7, 0.5, 0.8), (224, 16, 0.3, 0.8), (56, 4, 0.75, 0.5)])
def test_resolution_schedule_sides(full, patch, start, ramp_end):
    side = resolution_schedule(TrainConfig(resolution_start=start, resolution_ramp_end=ramp_end), full, patch)
    grid = [i / 1000 for i in range(1001)]
    sides = [side(p) for p in grid]
    assert all(s % patch == 0 and patch <= s <= full for s in sides)
    assert start * full - patch < sides[0] <= start * full  # the start side, rounded down to the patch
    assert all(a <= b for a, b in zip(sides, sides[1:]))  # never shrinks
    assert all(s == full for p, s in zip(grid, sides) if p >= ramp_end)  # full size for the end of the run
    assert side(ramp_end - 1e-3) < full  # ... and not before the ramp's end
    assert len(set(sides)) > 2  # it ramps, not a jump from the start side to the full one


def test_resolution_start_bounds():
    assert resolution_schedule(TrainConfig(resolution_start=1.0), 28, 7) is None  # 1: the curriculum is off
    assert resolution_schedule(TrainConfig(), 28, 7) is None  # the default
    tiny = resolution_schedule(TrainConfig(resolution_start=1e-3), 28, 7)  # (0, 1]: any positive start
    assert tiny(0.0) == 7  # never below one patch
    assert TrainConfig.from_dict({"resolution-start": 0.5}).resolution_start == 0.5
    for bad in (0, 0.0, -0.5, 1.0001, 1.5):
        with pytest.raises(ValueError, match=rf"resolution-start must be in \(0, 1\], got {bad!r}"):
            TrainConfig(resolution_start=bad)
    for bad in (float("nan"), True, "half"):
        with pytest.raises(ValueError, match=r"resolution-start must be a number in \(0, 1\]"):
            TrainConfig(resolution_start=bad)
    with pytest.raises(ValueError, match=r"resolution-ramp-end must be in \(0, 1\], got 0"):
        TrainConfig(resolution_start=0.5, resolution_ramp_end=0)


@pytest.mark.parametrize("dense", [True, False])
def test_the_plan_prices_each_step_at_its_side(dense):
    # FLOPs proportional to the pixels (times the keep ratio): the plan must ask for each step's side
    asked = []

    def flops_per_image(keep_ratio, training=True, attn_keep_ratio=1.0, img_size=None):
        asked.append(img_size)
        return keep_ratio * ((img_size or 28) / 28) ** 2

    base = dict(dense=dense, budget=2.0, batch_size=32, keep_ratio=0.7, selector="none")
    flat = plan_run(TrainConfig(**base), 256, 1, False, 1.0, flops_per_image, full_side=28, patch=7)
    assert set(asked) == {None}
    asked.clear()
    cfg = TrainConfig(resolution_start=0.5, **base)
    curriculum = plan_run(cfg, 256, 1, False, 1.0, flops_per_image, full_side=28, patch=7)
    assert {14, 21} <= set(asked) <= {14, 21, 28, None}
    assert curriculum.total_steps > flat.total_steps  # cheaper early steps buy more of them
    assert curriculum.planned_flops <= curriculum.budget_flops == flat.budget_flops
    # step s of n at progress s / n: its side from the curriculum, its keep ratio from the ratio schedule
    side, keep = resolution_schedule(cfg, 28, 7), cfg.schedule(cfg.keep_ratio)
    n = curriculum.total_steps
    spent = sum(32 * flops_per_image(1.0 if dense else keep(s / n), img_size=side(s / n)) for s in range(n))
    assert curriculum.planned_flops == pytest.approx(spent)


def test_the_curriculum_model_takes_any_multiple_of_the_patch():
    from trilevel.training.factory import build_model

    model = build_model(TrainConfig.from_dict(dict(TINY, dense=True, resolution_start=0.5)), 10, 1, 28)
    for side in (14, 21, 28):
        assert model(torch.zeros(2, 1, side, side)).shape == (2, 10)
    stock = build_model(TrainConfig.from_dict(dict(TINY, dense=True)), 10, 1, 28)
    with pytest.raises(AssertionError):  # without the curriculum the input size stays fixed (timm checks it)
        stock(torch.zeros(2, 1, 14, 14))


@pytest.mark.slow
@needs_data
def test_curriculum_epoch_run_resizes_and_costs_less(tmp_path, monkeypatch):
    import torch.nn.functional as F

    from trilevel.models import forward_flops
    from trilevel.training.factory import build_model

    resized = []
    interpolate = F.interpolate

    def recording(x, *args, **kwargs):
        out = interpolate(x, *args, **kwargs)
        if x.dim() == 4 and x.shape[1] == 1:  # the images (timm's position-embedding resampling has 32 channels)
            resized.append((x.shape[-1], out.shape[-1]))
        return out

    monkeypatch.setattr(F, "interpolate", recording)
    flat = run(tmp_path, "flat", dense=True, epochs=1)
    assert resized == []
    curriculum = run(tmp_path, "curriculum", dense=True, epochs=1, resolution_start=0.5)
    # 8 steps at progress 0, 1/8, ...: sides 14 (4 steps), 21 (3 steps), then the full 28 (not resized)
    assert resized == [(28, 14)] * 4 + [(28, 21)] * 3
    assert curriculum["train_images"] == flat["train_images"] == 256
    assert flat["dense_epochs_used"] == pytest.approx(1.0)
    assert curriculum["dense_epochs_used"] < 0.6 and curriculum["val_top1"] is not None
    # the summary's FLOPs are those of the FLOP model at each step's side
    model = build_model(TrainConfig.from_dict(dict(TINY, dense=True, resolution_start=0.5)), 10, 1, 28)
    dense = forward_flops(model, 1.0, attn_keep_ratio=1.0)
    sides = [14] * 4 + [21] * 3 + [28]
    expected = sum(32 * forward_flops(model, 1.0, training=True, attn_keep_ratio=1.0, img_size=s) for s in sides)
    assert curriculum["dense_epochs_used"] == pytest.approx(expected / (256 * dense), rel=1e-9)


@needs_data
def test_curriculum_budget_run_gets_more_steps(tmp_path):
    s = run(tmp_path, "curriculum", dense=True, budget=1.5, resolution_start=0.5)
    # without the curriculum 1.5 dense epochs buy 12 steps of 32 (test_dense_budget_run_takes_the_planned_steps)
    assert s["finished"] and s["total_steps"] > 12 and s["global_steps"] == s["total_steps"]
    # the plan and the run price the steps alike: within the budget, and no room for one more full step
    assert 1.5 - 32 / 256 < s["dense_epochs_used"] <= 1.5
    assert s["val_top1"] is not None
