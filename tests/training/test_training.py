"""Tests of trilevel.training: configuration checks, training outputs, exact resume, SIGTERM,
non-finite losses, evaluation of checkpoints.

All runs are tiny (a 4-block, 32-wide ViT on 7x7 patches of 256 Fashion-MNIST training images,
1000 validation images, 1-2 epochs) and run in this process on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from trilevel import training
from trilevel.checkpoint import load_checkpoint
from trilevel.training import NonFiniteLossError, TrainConfig, TrainingInterrupted, evaluate_checkpoint, train
from trilevel.training.factory import build_model

from _runs import FMNIST, TINY_RUN, needs_fmnist

pytestmark = needs_fmnist

TINY = dict(  # the paper's settings (TINY_RUN's preset), which these tests were written for; the default is tested apart
    TINY_RUN, train_subset=256, val_subset=500, epochs=2, warmup_epochs=0.5, log_interval=2,
    ratio_warmup=0.1, ratio_decay_end=0.6,
)


def tiny(tmp_path: Path, name: str, **overrides) -> dict:
    cfg = dict(TINY, output_dir=str(tmp_path / name))
    cfg.update(overrides)
    return cfg


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def model_state(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


_TIMING_KEYS = {"epoch_seconds", "epoch_cpu_seconds", "train_images_per_s"}


def comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in _TIMING_KEYS} for m in metrics]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch tri-level run (forgetting selector with one update at epoch 1)."""
    tmp = tmp_path_factory.mktemp("straight")
    summary = train(tiny(tmp, "run"))
    return tmp / "run", summary


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"keep_ratio": 1.5}, ["keep-ratio", "1.5"]),
        ({"attn_keep_ratio": 0.0}, ["attn-keep-ratio"]),
        ({"epochs": 0}, ["epochs", "0"]),
        ({"batch_size": 2.5}, ["batch-size"]),
        ({"dataset": "imagenet-22k"}, ["dataset", "fashion-mnist"]),
        ({"selector": "best"}, ["selector", "forgetting"]),
        ({"amp": "fp8"}, ["amp", "bf16"]),
        ({"model": "no_such_model_xyz"}, ["no_such_model_xyz"]),
        ({"warmup_epochs": 3.0, "epochs": 2}, ["warmup-epochs", "epochs"]),
        ({"example_swap": 0.3, "example_remove": 0.2}, ["example-swap", "example-remove"]),
        ({"example_update_every": 1.5}, ["example-update-every"]),
        ({"prune_layers": "3,x"}, ["prune-layers"]),
        ({"prune_layers": [1, 1]}, ["duplicate"]),
        ({"ratio_warmup": 0.5, "ratio_decay_end": 0.2}, ["ratio-decay-end"]),
        ({"mixup": 0.8, "batch_size": 33}, ["even"]),
        ({"token_fate": "merge"}, ["token-fate", "bypass"]),
        ({"token_score": "norm"}, ["token-score", "random"]),
        ({"ratio_schedule": "wave"}, ["ratio-schedule", "grow"]),
        ({"dense_tail": 1.0}, ["dense-tail"]),
        ({"token_fate": "drop", "rejoin_layer": 11}, ["rejoin-layer", "bypass"]),
        ({"token_fate": "bypass", "prune_layers": [3, 9], "rejoin_layer": 9}, ["rejoin-layer", "after"]),
        ({"nonfinite": "ignore"}, ["nonfinite", "skip"]),
        ({"eval_every": 0}, ["eval-every", "0"]),
        ({"val_split": 0}, ["val-split", "0"]),
        ({"classes": [1, 1]}, ["classes", "distinct"]),
        ({"classes": "a,b"}, ["classes", "comma-separated"]),
        ({"layer_decay": 1.5}, ["layer-decay", "1.5"]),
        ({"pretrained": True, "init_from": "w.pth"}, ["--pretrained", "--init-from", "not both"]),
        ({"reset_head": True}, ["reset-head", "--init-from"]),
    ],
)
def test_bad_config_values_raise_value_error_naming_them(overrides, words):
    with pytest.raises(ValueError) as info:
        TrainConfig(**overrides)
    for w in words:
        assert w in str(info.value)


def test_from_dict_accepts_hyphens_and_rejects_unknown_keys():
    cfg = TrainConfig.from_dict({"batch-size": 64, "keep_ratio": 0.5, "prune-layers": "2,4"})
    assert (cfg.batch_size, cfg.keep_ratio, cfg.prune_layers) == (64, 0.5, [2, 4])
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"batch-size": 64, "bach_size": 3, "learning-rate": 1.0})
    msg = str(info.value)
    assert "'bach_size'" in msg and "'learning-rate'" in msg and "batch-size" in msg
    with pytest.raises(ValueError, match="twice"):
        TrainConfig.from_dict({"batch-size": 64, "batch_size": 32})


def test_a_config_built_with_a_preset_takes_its_values_except_those_given():
    from trilevel import TriLevelConfig
    from trilevel.presets import PRESETS
    from trilevel.presets import layered_settings

    for cls in (TriLevelConfig, TrainConfig):
        paper = cls(preset="paper")
        assert {k: getattr(paper, k) for k in PRESETS["paper"]} == PRESETS["paper"]
        mixed = cls(preset="paper", keep_ratio=0.5)  # 0.5 is also the fast default: still given explicitly
        assert mixed.keep_ratio == 0.5 and mixed.attn_keep_ratio == 0.3 and mixed.token_fate == "drop"
    assert TrainConfig.from_dict({"preset": "paper"}).token_fate == "drop"
    full = TrainConfig().to_dict()  # a complete dict gives every field; layered_settings lets a preset apply
    merged = TrainConfig.from_dict(layered_settings({"preset": "paper", "attn_keep_ratio": 1.0}, base=full))
    assert merged.token_fate == "drop" and merged.keep_ratio == 0.7 and merged.attn_keep_ratio == 1.0


def test_the_old_fuse_inattentive_key_is_read_from_old_checkpoints_only():
    with pytest.raises(ValueError, match="fuse-inattentive"):
        TrainConfig.from_dict({"fuse-inattentive": True})


def test_a_checkpoint_from_before_an_option_existed_reads_with_the_papers_value():
    from trilevel.algorithm import PRESETS
    from trilevel.training.config import stored_config

    old = stored_config({"config": {"keep_ratio": 0.6, "fuse_inattentive": False}}, "old.pt")
    assert old["keep_ratio"] == 0.6  # stored values stay
    assert {k: old[k] for k in PRESETS["paper"] if k != "keep_ratio"} == {
        k: v for k, v in PRESETS["paper"].items() if k != "keep_ratio"}
    assert stored_config({"config": {"fuse-inattentive": True}}, "old.pt")["token_fate"] == "fuse"
    assert TrainConfig.from_dict(stored_config({"config": {"fuse-inattentive": True}}, "old.pt")).token_fate == "fuse"
    new = TrainConfig().to_dict()
    assert stored_config({"config": new}, "new.pt") == new  # a current checkpoint is read as written


def test_update_every_and_prune_layers_parsing():
    assert TrainConfig(example_update_every=0.1).example_update_every == 0.1
    assert TrainConfig(example_update_every=3).example_update_every == 3
    assert TrainConfig(example_update_every="3").example_update_every == 3
    assert TrainConfig(example_update_every=4.0).example_update_every == 4
    assert TrainConfig(prune_layers="none").prune_layers is None
    assert TrainConfig(prune_layers=[9, 3, 6]).prune_layers == [3, 6, 9]
    assert TrainConfig(clip_grad=0).clip_grad is None


def test_img_size_not_multiple_of_patch_is_a_clear_error():
    cfg = TrainConfig(embed_dim=32, depth=2, num_heads=2)  # patch 16 on 28x28 images
    with pytest.raises(ValueError, match="patch"):
        build_model(cfg, num_classes=10, in_chans=1, img_size=28)


def test_non_vit_model_needs_dense():
    cfg = TrainConfig(model="resnet18")
    with pytest.raises(ValueError, match="dense"):
        build_model(cfg, num_classes=10, in_chans=1, img_size=32)


def test_missing_data_dir_raises_file_not_found(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError) as info:
        train(tiny(tmp_path, "run", dataset="mnist", data_dir=str(missing), train_subset=None))
    assert str(missing) in str(info.value)


# ------------------------------------------------------------------------------------------------
# outputs of a run
# ------------------------------------------------------------------------------------------------


def test_tri_level_run_writes_outputs(straight):
    out, summary = straight
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json", "train.log"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["finished"] is True
    assert summary["epochs"] == 2 and summary["world_size"] == 1
    assert 0.0 <= summary["val_top1"] <= 100.0
    assert summary["train_seconds"] > 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    # The forgetting selector keeps 80% of the 256 examples active; every epoch sees them once.
    assert [m["active_examples"] for m in metrics] == [205, 205]
    assert summary["train_images"] == sum(m["train_images"] for m in metrics) == 2 * 205
    # Token pruning (keep 0.7 at the end) and example removal cut the forward FLOPs.
    assert 0.2 < summary["relative_train_flops"] < 0.8
    assert metrics[-1]["keep_ratio"] == pytest.approx(0.7)
    assert metrics[-1]["attn_keep_ratio"] == pytest.approx(0.3)
    dense_tokens = 1 + (28 // 7) ** 2
    assert metrics[0]["mean_tokens_per_block"] < dense_tokens
    for key in ("train_loss", "train_acc", "val_top1", "epoch_seconds", "train_images_per_s", "lr"):
        assert math.isfinite(metrics[-1][key]), key
    assert summary["val_top1"] == metrics[-1]["val_top1"]
    # One selector update happened at epoch 1 (update every epoch, 5% of 256 = 13 swapped).
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["algorithm"]["selector"]["history"] == [{"epoch": 1, "removed": 13, "restored": 13}]
    # forgetting events are counted across the update (epoch 1 right, epoch 2 wrong)
    assert int(ckpt["algorithm"]["selector"]["stats"]["forgetting_counts"].sum()) > 0
    assert summary["selector_digest"] == ckpt["selector_digest"] and summary["selector_digest"]
    assert ckpt["progress"]["epoch"] == 2 and ckpt["progress"]["step_in_epoch"] == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert TrainConfig.from_dict(stored).to_dict() == stored
    assert stored["output_dir"] == str(out) and stored["keep_ratio"] == 0.7
    assert "epoch 2/2" in (out / "train.log").read_text()


def test_dense_run_is_stock_and_full_cost(tmp_path):
    summary = train(tiny(tmp_path, "dense", dense=True, epochs=1, warmup_epochs=0.0))
    assert summary["selector"] == "none" and summary["selector_digest"] is None
    assert summary["keep_ratio"] == 1.0 and summary["prune_layers"] is None
    assert summary["train_images"] == 256
    assert summary["relative_train_flops"] == pytest.approx(1.0)
    m = read_metrics(tmp_path / "dense")[0]
    assert m["mean_tokens_per_block"] == 1 + (28 // 7) ** 2
    assert m["active_examples"] == 256
    ckpt = load_checkpoint(tmp_path / "dense" / "checkpoint.pt")
    import timm

    stock = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=28, patch_size=7,
                              embed_dim=32, depth=4, num_heads=2)
    stock.load_state_dict(ckpt["model"])  # same keys as the stock timm model


@pytest.mark.slow
def test_dense_run_of_a_cnn(tmp_path):
    summary = train(tiny(tmp_path, "cnn", model="resnet10t", embed_dim=None, depth=None, num_heads=None,
                         patch_size=None, dense=True, epochs=1, warmup_epochs=0.0, val_subset=100))
    assert summary["relative_train_flops"] == pytest.approx(1.0) and summary["dense_gflops_per_image"] > 0
    assert read_metrics(tmp_path / "cnn")[0]["mean_tokens_per_block"] is None


@pytest.mark.slow
def test_loss_selector_with_mixup_ema_clip_bf16(tmp_path):
    summary = train(tiny(
        tmp_path, "loss", selector="loss", example_remove=0.5, mixup=0.8, cutmix=1.0, ema_decay=0.9,
        clip_grad=1.0, amp="bf16", epochs=3, warmup_epochs=0.0,
    ))
    metrics = read_metrics(tmp_path / "loss")
    active = [m["active_examples"] for m in metrics]
    # InfoBatch-style pruning drops low-loss examples from epoch 2 on (no anneal epoch in 3).
    assert active[0] == 256 and active[1] < 256 and active[2] < 256
    assert summary["train_images"] < 3 * 256
    assert summary["val_top1_ema"] is not None and math.isfinite(summary["val_top1_ema"])
    assert math.isfinite(summary["train_loss"])
    # Mixup needs even batches: the last odd batch is dropped, images are whole batches.
    assert all(m["train_images"] % 32 == 0 for m in metrics)


# ------------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_epoch_one_matches_straight_run(straight, tmp_path):
    out_straight, s_straight = straight
    first = train(tiny(tmp_path, "split", stop_after_epoch=1))
    assert first["finished"] is False and first["epochs_done"] == 1
    ckpt_path = tmp_path / "split" / "checkpoint.pt"
    assert load_checkpoint(ckpt_path)["progress"]["epoch"] == 1
    resumed = train(tiny(tmp_path, "split", resume=str(ckpt_path)))
    assert resumed["finished"] is True
    assert resumed["selector_digest"] == s_straight["selector_digest"]
    for key in ("val_top1", "val_loss", "train_loss", "train_acc", "train_images", "relative_train_flops",
                "global_steps"):
        assert resumed[key] == s_straight[key], key
    assert comparable(read_metrics(tmp_path / "split")) == comparable(read_metrics(out_straight))
    assert_same_weights(model_state(ckpt_path), model_state(out_straight / "checkpoint.pt"))
    assert resumed["train_seconds"] > first["train_seconds"]


def test_eval_every_skips_validation_without_changing_training(straight, tmp_path):
    out_straight, s_straight = straight
    summary = train(tiny(tmp_path, "sparse_eval", eval_every=2))
    metrics, ref = read_metrics(tmp_path / "sparse_eval"), read_metrics(out_straight)
    assert [m["val_top1"] for m in metrics] == [None, ref[1]["val_top1"]]
    assert summary["val_top1"] == s_straight["val_top1"]
    assert_same_weights(model_state(tmp_path / "sparse_eval" / "checkpoint.pt"),
                        model_state(out_straight / "checkpoint.pt"))


def test_resume_with_a_changed_setting_is_refused(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ValueError, match="keep-ratio"):
        train(tiny(tmp_path, "other", keep_ratio=0.5, resume=str(out / "checkpoint.pt")))


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_checkpoint_and_resume_is_exact(straight, tmp_path, monkeypatch):
    out_straight, s_straight = straight
    calls = {"n": 0}
    original = training.State.flops_per_image

    def flops_and_signal(self, keep_ratio, training=False, attn_keep_ratio=1.0):
        calls["n"] += 1
        if calls["n"] == 10:  # during step 3 of epoch 2 (7 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, keep_ratio, training=training, attn_keep_ratio=attn_keep_ratio)

    monkeypatch.setattr(training.State, "flops_per_image", flops_and_signal)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny(tmp_path, "sig"))
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    ckpt_path = tmp_path / "sig" / "checkpoint.pt"
    assert info.value.checkpoint == str(ckpt_path)
    assert "epoch 2, step 3" in str(info.value)
    ckpt = load_checkpoint(ckpt_path)
    p = ckpt["progress"]
    assert (p["epoch"], p["step_in_epoch"], p["global_step"]) == (1, 3, 10)
    assert "SIGTERM received" in (tmp_path / "sig" / "train.log").read_text()
    monkeypatch.setattr(training.State, "flops_per_image", original)

    resumed = train(tiny(tmp_path, "sig", resume=str(ckpt_path)))
    assert resumed["selector_digest"] == s_straight["selector_digest"]
    for key in ("val_top1", "train_loss", "train_acc", "train_images", "global_steps"):
        assert resumed[key] == pytest.approx(s_straight[key], rel=1e-9, abs=0), key
    assert_same_weights(model_state(ckpt_path), model_state(out_straight / "checkpoint.pt"))


# ------------------------------------------------------------------------------------------------
# non-finite losses
# ------------------------------------------------------------------------------------------------


def _nan_on_call(monkeypatch, which: int) -> None:
    from timm.loss import LabelSmoothingCrossEntropy

    original = LabelSmoothingCrossEntropy.forward
    calls = {"n": 0}

    def forward(self, x, target):
        calls["n"] += 1
        loss = original(self, x, target)
        return loss * float("nan") if calls["n"] == which else loss

    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", forward)


def test_nonfinite_stop_saves_last_good_state(tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, 3)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny(tmp_path, "nan", epochs=1, warmup_epochs=0.0))
    assert "epoch 1, step 3" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    p = ckpt["progress"]
    assert (p["epoch"], p["step_in_epoch"], p["global_step"]) == (0, 2, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_skip_skips_the_batch(tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, 3)
    summary = train(tiny(tmp_path, "skip", epochs=1, warmup_epochs=0.0, nonfinite="skip"))
    assert summary["skipped_steps"] == 1
    assert math.isfinite(summary["train_loss"])
    ckpt = load_checkpoint(tmp_path / "skip" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # the skipped batch is not recorded by the selector: 205 active examples, 32 of them skipped
    presentations = ckpt["algorithm"]["selector"]["stats"]["presentations"]
    assert int(presentations.sum()) == 205 - 32


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def test_patchdropout_dense_run_counts_the_tokens_it_trains_on(tmp_path):
    # timm's PatchDropout keeps max(1, int(16 * 0.7)) = 11 of the 16 patches of a 28x28 image with
    # 7x7 patches, plus [CLS]; the metrics must say so, and the FLOPs with it
    summary = train(tiny(tmp_path, "pd", dense=True, patch_drop=0.3, epochs=1, val_subset=50))
    (m,) = read_metrics(tmp_path / "pd")
    assert m["mean_tokens_per_block"] == pytest.approx(12.0)
    assert summary["relative_train_flops"] < 0.8


def test_evaluate_checkpoint_reproduces_final_val_top1(straight):
    out, summary = straight
    result = evaluate_checkpoint(out / "checkpoint.pt", val_subset=500, device="cpu")
    assert result["top1"] == pytest.approx(summary["val_top1"])
    assert (result["keep_ratio"], result["attn_keep_ratio"]) == (0.7, 0.3)
    dense_eval = evaluate_checkpoint(out / "checkpoint.pt", keep_ratio=1.0, attn_keep_ratio=1.0, val_subset=500)
    assert dense_eval["images"] == 500
    with pytest.raises(ValueError, match="EMA"):
        evaluate_checkpoint(out / "checkpoint.pt", ema=True, val_subset=10)


def test_evaluate_checkpoint_rejects_foreign_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        evaluate_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        evaluate_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------
# faults of long runs: step checkpoints, workers, failed writes, world size, failures in the loop
# ------------------------------------------------------------------------------------------------


def _sigterm_at_call(monkeypatch, which: int) -> None:
    """SIGTERM to this process in the ``which``-th training step (counted by FLOP lookups)."""
    calls = {"n": 0}
    original = training.State.flops_per_image

    def flops_and_signal(self, keep_ratio, training=False, attn_keep_ratio=1.0):
        calls["n"] += 1
        if calls["n"] == which:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, keep_ratio, training=training, attn_keep_ratio=attn_keep_ratio)

    monkeypatch.setattr(training.State, "flops_per_image", flops_and_signal)


def assert_same_run(out: Path, summary: dict, out_ref: Path, s_ref: dict) -> None:
    """Bit-identical to the reference run: weights, optimizer state, selector digest, metrics minus timings."""
    assert summary["selector_digest"] == s_ref["selector_digest"]
    for key in ("val_top1", "val_loss", "train_loss", "train_acc", "train_images", "relative_train_flops",
                "global_steps"):
        assert summary[key] == s_ref[key], key
    assert comparable(read_metrics(out)) == comparable(read_metrics(out_ref))
    mine, ref = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(out_ref / "checkpoint.pt")
    assert_same_weights(mine["model"], ref["model"])
    for a, b in zip(mine["optimizer"]["state"].values(), ref["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert mine["selector_digest"] == ref["selector_digest"]


@pytest.mark.slow
def test_step_checkpoints_keep_last_and_resume_from_one_is_exact(straight, tmp_path):
    out_straight, s_straight = straight
    # 7 steps per epoch: saves at global steps 3, 6, 7 (epoch end), 9, 12, 14 (run end)
    summary = train(tiny(tmp_path, "steps", checkpoint_every=3, keep_last=2))
    out = tmp_path / "steps"
    assert sorted(p.name for p in out.glob("checkpoint*.pt")) == [
        "checkpoint-step12.pt", "checkpoint-step14.pt", "checkpoint.pt"]
    assert not list(out.glob(".*.tmp"))
    assert os.path.samefile(out / "checkpoint.pt", out / "checkpoint-step14.pt")  # one file, two names
    assert_same_run(out, summary, out_straight, s_straight)  # saving changes nothing
    step12 = load_checkpoint(out / "checkpoint-step12.pt")
    p = step12["progress"]
    assert (p["epoch"], p["step_in_epoch"], p["global_step"]) == (1, 5, 12)
    assert len(step12["metrics_history"]) == 1
    # resume the step checkpoint in another folder: metrics.jsonl is rebuilt from the checkpoint
    resumed = train(tiny(tmp_path, "from12", resume=str(out / "checkpoint-step12.pt"),
                         output_dir=str(tmp_path / "from12")))
    assert_same_run(tmp_path / "from12", resumed, out_straight, s_straight)


@pytest.mark.slow
def test_workers_sigterm_mid_epoch_resume_is_exact(straight, tmp_path, monkeypatch):
    # Augmentation is seeded per sample: 2 workers give the batches of 0 workers, and a resume
    # (here with 1 worker) continues exactly.
    out_straight, s_straight = straight
    _sigterm_at_call(monkeypatch, 10)  # step 3 of epoch 2
    with pytest.raises(TrainingInterrupted):
        train(tiny(tmp_path, "w2", workers=2))
    monkeypatch.undo()
    ckpt_path = tmp_path / "w2" / "checkpoint.pt"
    assert load_checkpoint(ckpt_path)["progress"]["step_in_epoch"] == 3
    resumed = train(tiny(tmp_path, "w2", workers=1, resume=str(ckpt_path)))
    assert_same_run(tmp_path / "w2", resumed, out_straight, s_straight)


def test_augmentation_streams_differ_per_rank_and_ignore_workers():
    from trilevel.data import build_datasets
    from trilevel.example_selection import IndexedDataset
    from trilevel.training.loaders import make_loader, sample_seed

    assert len({sample_seed(0, e, r, p) for e in range(3) for r in range(4) for p in range(50)}) == 600
    train_set, _, _ = build_datasets("fashion-mnist", str(FMNIST), train_subset=24, aug="light")
    data, order, cpu = IndexedDataset(train_set), [5, 3, 17, 0, 9, 11, 2, 8, 21, 4], torch.device("cpu")

    def batches(rank, workers, skip_steps=0):
        torch.manual_seed(123)  # the main process's stream must not matter
        loader = make_loader(data, 4, workers, cpu, 0, 1, rank, sampler=order, seeded=True, skip_steps=skip_steps)
        return [images for images, _, _ in loader]

    rank0 = batches(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(rank0, batches(0, 2)))  # workers change nothing
    assert all(torch.equal(a, b) for a, b in zip(rank0[1:], batches(0, 1, skip_steps=1)))  # nor a resume
    assert not any(torch.equal(a, b) for a, b in zip(rank0, batches(1, 0)))  # another rank: other crops
    state = torch.get_rng_state()
    next(iter(make_loader(data, 4, 0, cpu, 0, 1, 0, sampler=order, seeded=True)))
    assert torch.equal(state, torch.get_rng_state())  # augmenting leaves the training stream alone


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["torch.save", "os.replace"])
def test_failed_checkpoint_write_keeps_the_previous_one_and_loses_nothing(straight, tmp_path, monkeypatch, broken):
    import errno

    from trilevel.training import CheckpointWriteError

    out_straight, s_straight = straight
    out = tmp_path / "full"
    module, name = broken.split(".")
    real = getattr(torch if module == "torch" else os, name)
    calls = {"n": 0}

    def disk_full(*args, **kwargs):
        if module == "os" and not str(args[1]).endswith("checkpoint.pt"):  # config.yaml, summary.json: not counted
            return real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 2:  # the epoch-1 checkpoint is written, the next write fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch if module == "torch" else os, name, disk_full)
    with pytest.raises(CheckpointWriteError) as info:
        train(tiny(tmp_path, "full"))
    monkeypatch.undo()
    msg = str(info.value)
    assert str(out / "checkpoint.pt") in msg and "No space left" in msg and "ENOSPC" in msg
    assert "the previous checkpoint" in msg and "end of epoch 1" in msg
    assert "\n" not in msg and info.value.kept is not None
    assert not list(out.glob(".*.tmp"))
    ckpt = load_checkpoint(out / "checkpoint.pt")  # the previous one, intact
    assert (ckpt["progress"]["epoch"], ckpt["progress"]["step_in_epoch"]) == (1, 0)
    assert len(read_metrics(out)) == 1  # the unsaved epoch left no line
    resumed = train(tiny(tmp_path, "full", resume=str(out / "checkpoint.pt")))
    assert_same_run(out, resumed, out_straight, s_straight)


def _as_world_size(src: Path, dst: Path, world: int, step_in_epoch: int = 0) -> Path:
    from trilevel.checkpoint import save_checkpoint

    ckpt = load_checkpoint(src)
    ckpt["world_size"] = world
    ckpt["rng"] = ckpt["rng"] * world
    ckpt["progress"]["step_in_epoch"] = step_in_epoch
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(ckpt, dst)


@pytest.mark.slow
def test_world_size_change_is_an_error_unless_allowed(tmp_path, caplog):
    first = train(tiny(tmp_path, "one", stop_after_epoch=1))
    assert first["finished"] is False
    two = _as_world_size(tmp_path / "one" / "checkpoint.pt", tmp_path / "two" / "checkpoint.pt", 2)
    with pytest.raises(ValueError, match=r"saved by 2 process\(es\) but this run has 1.*--allow-world-size-change"):
        train(tiny(tmp_path, "two", resume=str(two)))
    mid = _as_world_size(two, tmp_path / "mid" / "checkpoint.pt", 2, step_in_epoch=3)
    with pytest.raises(ValueError, match="middle of epoch 2"):
        train(tiny(tmp_path, "mid", resume=str(mid), allow_world_size_change=True))
    with caplog.at_level("WARNING", logger="trilevel.training"):
        summary = train(tiny(tmp_path, "two", resume=str(two), allow_world_size_change=True))
    assert summary["finished"] is True and summary["world_size"] == 1
    assert "not an exact continuation" in caplog.text and "LR schedule" in caplog.text


def test_an_error_while_training_is_a_training_failure(tmp_path, monkeypatch):
    from trilevel.training import TrainingFailedError

    calls = {"n": 0}
    original = training.State.flops_per_image

    def broken(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("something inside the loop")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(training.State, "flops_per_image", broken)
    with pytest.raises(TrainingFailedError, match="epoch 1.*ValueError: something inside the loop") as info:
        train(tiny(tmp_path, "boom", epochs=1, warmup_epochs=0.0))
    assert isinstance(info.value.__cause__, ValueError)


def test_run_checkpoints_keep_last_prune_and_fallback_without_hard_links(tmp_path, monkeypatch):
    from trilevel.training.checkpointing import RunCheckpoints
    from trilevel.training.distributed import DistContext

    files = RunCheckpoints(tmp_path, DistContext(), every=2, keep_last=2)
    assert [files.due(s, d, 7) for s, d in ((2, 2), (3, 3), (4, 7), (6, 6))] == [True, False, False, True]
    (tmp_path / "checkpoint-step10.pt").write_bytes(b"from a timeline this run replays")
    (tmp_path / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"left by a SIGKILL")
    files.remove_stale_temp_files()
    assert not list(tmp_path.glob(".*.tmp"))
    for step in (1, 2, 3):
        files.write({"step": step}, step, f"step {step}")
    names = sorted(p.name for p in tmp_path.glob("checkpoint*.pt"))
    assert names == ["checkpoint-step10.pt", "checkpoint-step2.pt", "checkpoint-step3.pt", "checkpoint.pt"]
    assert load_checkpoint(tmp_path / "checkpoint.pt") == {"step": 3}
    assert os.path.samefile(tmp_path / "checkpoint.pt", tmp_path / "checkpoint-step3.pt")

    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a filesystem without hard links: written twice
    files.write({"step": 4}, 4, "step 4")
    assert load_checkpoint(tmp_path / "checkpoint.pt") == {"step": 4}
    assert not os.path.samefile(tmp_path / "checkpoint.pt", tmp_path / "checkpoint-step4.pt")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-step*.pt")) == [
        "checkpoint-step10.pt", "checkpoint-step3.pt", "checkpoint-step4.pt"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_eva02_trains_tri_level(tmp_path):
    eva = dict(model="eva02_tiny_patch14_224", img_size=28, patch_size=7, embed_dim=32, depth=4, num_heads=2,
               keep_ratio=0.5, attn_keep_ratio=1.0, prune_layers=[1, 2], ratio_warmup=0.0, ratio_decay_end=0.5)
    summary = train(tiny(tmp_path, "eva", epochs=1, warmup_epochs=0.0, val_subset=100, **eva))
    assert summary["relative_train_flops"] < 0.9 and math.isfinite(summary["val_top1"])
    dense = train(tiny(tmp_path, "eva-dense", epochs=1, warmup_epochs=0.0, val_subset=100, dense=True, **eva))
    assert dense["relative_train_flops"] == pytest.approx(1.0)
    assert dense["dense_gflops_per_image"] == pytest.approx(summary["dense_gflops_per_image"])
    with pytest.raises(ValueError, match="tri-level training needs"):
        build_model(TrainConfig(model="resnet18"), num_classes=10, in_chans=1, img_size=28)


@pytest.mark.slow
def test_swin_trains_through_the_same_path_and_evaluates_and_draws(tmp_path):
    # 28x28 input, 2x2 patches, 7x7 windows: 4 windows in stage 0, pruned to 2 at keep 0.5
    swin = dict(model="swin_tiny_patch4_window7_224", img_size=28, patch_size=2, embed_dim=16, window_size=7,
                depth=None, num_heads=None, keep_ratio=0.5, ratio_warmup=0.0, ratio_decay_end=0.5)
    summary = train(tiny(tmp_path, "swin", epochs=1, warmup_epochs=0.0, val_subset=100, preset="fast", **swin))
    assert summary["family"] == "swin" and summary["relative_train_flops"] < 1.0
    assert math.isfinite(summary["val_top1"]) and summary["model_description"].startswith("swin:")
    from trilevel.training import evaluate_checkpoint
    from trilevel.viz import visualize_checkpoint

    result = evaluate_checkpoint(summary["checkpoint"], device="cpu", val_subset=100)
    assert result["top1"] == pytest.approx(summary["val_top1"], abs=1e-9)
    png = visualize_checkpoint(summary["checkpoint"], 2, tmp_path / "swin.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="not implemented for swin"):
        train(tiny(tmp_path, "swin-paper", epochs=1, preset="paper", **{k: v for k, v in swin.items()
                                                                    if k not in ("keep_ratio",)}))


@pytest.mark.slow
def test_a_validation_split_is_evaluated_and_the_test_set_reported_apart(tmp_path):
    s = train(tiny(tmp_path, "split", epochs=1, val_split=1000, val_subset=200))
    assert s["eval_set"] == "val-split" and s["val_split"] == 1000 and s["num_val"] == 200 and s["num_test"] == 10000
    assert s["num_train"] == 256  # train-subset counts the images left after the split
    assert 0.0 <= s["val_top1"] <= 100.0 and 0.0 <= s["test_top1"] <= 100.0
    assert s["test_top1_full_tokens"] is not None
    assert s["code_version"].startswith(("git:", "trilevel "))
    last = read_metrics(tmp_path / "split")[-1]
    assert last["test_top1"] == s["test_top1"] and last["val_top1"] == s["val_top1"]
    # without a split the run evaluates the test set, and says so
    d = train(tiny(tmp_path, "nosplit", epochs=1, dense=True))
    assert d["eval_set"] == "test" and d["test_top1"] == d["val_top1"] and d["val_split"] is None


@pytest.mark.slow
def test_fine_tuning_starts_from_the_file_with_a_new_head_and_layer_decay(tmp_path, monkeypatch):
    import torch

    from trilevel.training import factory
    from trilevel.training.config import TrainConfig

    pre = train(tiny(tmp_path, "pre", epochs=1, dense=True, classes=[0, 2, 4]))
    weights = model_state(Path(pre["checkpoint"]))
    cfg = TrainConfig(**tiny(tmp_path, "ft", img_size=56, classes=[1, 3, 5], init_from=pre["checkpoint"],
                             reset_head=True, layer_decay=0.5))
    model = factory.build_model(cfg, 3, 1, 56)
    got = model.state_dict()
    for key, value in weights.items():
        if key == "pos_embed":  # 4x4 grid resampled to 8x8 for the larger images
            assert got[key].shape == (1, 65, 32) and value.shape == (1, 17, 32)
        elif not key.startswith("head."):
            assert torch.equal(got[key], value), key
    assert not torch.equal(got["head.weight"], weights["head.weight"])  # --reset-head: a new task's head
    # a resumed or evaluated run does not read the file again
    assert not torch.equal(factory.build_model(cfg, 3, 1, 56, initial_weights=False).state_dict()["cls_token"],
                           weights["cls_token"])
    scales = []
    import timm.optim

    real = timm.optim.create_optimizer_v2

    def spy(*args, **kwargs):
        opt = real(*args, **kwargs)
        scales.extend(g.get("lr_scale", 1.0) for g in opt.param_groups)
        return opt

    monkeypatch.setattr(timm.optim, "create_optimizer_v2", spy)
    s = train(dict(tiny(tmp_path, "ft-run", epochs=1, classes=[1, 3, 5], init_from=pre["checkpoint"],
                        layer_decay=0.5)))
    assert s["init_from"] == pre["checkpoint"] and s["finished"]
    assert min(scales) == pytest.approx(0.5 ** 5) and max(scales) == 1.0  # 4 blocks + embedding, decayed by 0.5


def test_init_from_a_width_that_does_not_fit_is_a_clear_error(tmp_path):
    pre = train(tiny(tmp_path, "pre", epochs=1, dense=True))
    with pytest.raises(ValueError, match="embed"):
        train(tiny(tmp_path, "ft", embed_dim=64, init_from=pre["checkpoint"]))
