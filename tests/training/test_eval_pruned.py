"""Tests of pruned inference of a fine-tuned model (``trilevel eval --keep-ratio/--keep-ratios``).

A densely trained (stock timm) model is evaluated pruned with the token level only, as EViT
(Liang et al., ICLR 2022) evaluates a densely fine-tuned model; every result carries its forward
throughput. Checkpoints are tiny: a 4-block, 32-wide ViT on 7x7 patches of 128 Fashion-MNIST
training images, one epoch, on the CPU. No timing value is asserted beyond being positive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trilevel.cli.eval import parse_keep_ratios
from trilevel.training import evaluation, train
from trilevel.training.evaluation import check_keep_ratio, evaluate, evaluate_checkpoint, evaluate_checkpoint_sweep

from _runs import TINY_RUN, exit_status, needs_fmnist as needs_data

TINY = dict(TINY_RUN, train_subset=128, val_subset=100, epochs=1, warmup_epochs=0.0, log_interval=2)
VAL = 100
TOKENS = 1 + (28 // 7) ** 2  # [CLS] + 16 patches
RESULT_KEYS = {
    "top1", "loss", "images", "seconds", "cpu_seconds", "images_per_s", "keep_ratio", "attn_keep_ratio",
    "gflops_per_image", "dense_run", "epoch", "model", "dataset", "ema",
}


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalp") / "dense"
    train(dict(TINY, dense=True, output_dir=str(out)))
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def tri_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalp") / "tri"
    train(dict(TINY, output_dir=str(out)))
    return out / "checkpoint.pt"


def eval_json(capsys, ckpt: Path, *flags: str):
    assert exit_status(["eval", "--checkpoint", str(ckpt), "--val-subset", str(VAL), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------------
# evaluate(): throughput keys, no data needed
# ------------------------------------------------------------------------------------------------


def test_evaluate_reports_throughput_and_keeps_its_keys():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(3)]
    result = evaluate(model, batches, warmup=1)
    assert {"top1", "loss", "images", "seconds", "cpu_seconds", "images_per_s"} <= result.keys()
    assert result["images"] == 12 and positive(result["images_per_s"]) and result["seconds"] > 0
    assert result["cpu_seconds"] >= 0
    assert result["images_per_s"] == pytest.approx(12 / result["seconds"])
    assert result["top1"] == evaluate(model, batches)["top1"]  # the warm-up counts toward nothing
    empty = evaluate(model, [])
    assert empty["images"] == 0 and math.isnan(empty["images_per_s"]) and empty["seconds"] == 0.0
    with pytest.raises(ValueError, match="warmup"):
        evaluate(model, batches, warmup=-1)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.5, float("nan"), True, "0.5"])
def test_check_keep_ratio_names_value_and_range(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]") as info:
        check_keep_ratio("keep_ratio", bad)
    assert repr(bad) in str(info.value)


def test_parse_keep_ratios():
    assert parse_keep_ratios("1.0,0.7, 0.5,1/4") == [1.0, 0.7, 0.5, 0.25]
    for bad in ("", " , ", "1.0,abc"):
        with pytest.raises(ValueError, match="keep-ratios"):
            parse_keep_ratios(bad)


# ------------------------------------------------------------------------------------------------
# a dense run evaluated pruned
# ------------------------------------------------------------------------------------------------


@needs_data
def test_dense_keep_1_is_the_plain_eval(dense_ckpt, capsys):
    plain = eval_json(capsys, dense_ckpt)
    at_one = eval_json(capsys, dense_ckpt, "--keep-ratio", "1.0")
    assert RESULT_KEYS <= plain.keys() and RESULT_KEYS <= at_one.keys()
    assert plain["dense_run"] is True and plain["keep_ratio"] == 1.0 and plain["images"] == VAL
    assert at_one["top1"] == plain["top1"] and at_one["loss"] == pytest.approx(plain["loss"])
    assert at_one["gflops_per_image"] == pytest.approx(plain["gflops_per_image"])
    for r in (plain, at_one):
        assert positive(r["images_per_s"]) and r["seconds"] > 0 and r["cpu_seconds"] >= 0


@needs_data
def test_dense_run_is_pruned_below_1(dense_ckpt, monkeypatch):
    seen: list[list[int]] = []  # tokens entering each block's attention (its norm1), first forward
    original = evaluation.evaluate

    def counting(model, *args, **kwargs):
        counts: list[int] = []
        hooks = [b.norm1.register_forward_pre_hook(lambda m, inp: counts.append(inp[0].shape[1]))
                 for b in model.blocks]
        try:
            return original(model, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            seen.append(counts[: len(model.blocks)])

    monkeypatch.setattr(evaluation, "evaluate", counting)
    dense = evaluate_checkpoint(dense_ckpt, keep_ratio=1.0, device="cpu", val_subset=VAL)
    pruned = evaluate_checkpoint(dense_ckpt, keep_ratio=0.5, device="cpu", val_subset=VAL)
    assert seen[0] == [TOKENS] * 4
    assert seen[1][0] == TOKENS and seen[1][-1] < TOKENS and seen[1] == sorted(seen[1], reverse=True)
    assert pruned["keep_ratio"] == 0.5 and pruned["attn_keep_ratio"] == 1.0 and pruned["dense_run"] is True
    assert math.isfinite(pruned["top1"]) and 0.0 <= pruned["top1"] <= 100.0 and pruned["images"] == VAL
    assert pruned["gflops_per_image"] < dense["gflops_per_image"]
    assert positive(pruned["images_per_s"])


@needs_data
def test_dense_run_pruned_text_output(dense_ckpt, capsys):
    argv = ["eval", "--checkpoint", str(dense_ckpt), "--val-subset", str(VAL), "--keep-ratio", "0.5"]
    assert exit_status(argv) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "keep_ratio 0.5" in out and "images/s" in out and "token level only" in out


@needs_data
def test_dense_sweep_one_entry_per_ratio_in_order(dense_ckpt, capsys):
    ratios = [1.0, 0.7, 0.5, 0.3]
    results = evaluate_checkpoint_sweep(dense_ckpt, ratios, device="cpu", val_subset=VAL)
    assert [r["keep_ratio"] for r in results] == ratios
    assert all(RESULT_KEYS <= r.keys() and r["images"] == VAL and positive(r["images_per_s"]) for r in results)
    assert results[0]["relative_images_per_s"] == pytest.approx(1.0)
    assert all(positive(r["relative_images_per_s"]) for r in results)
    flops = [r["gflops_per_image"] for r in results]
    assert flops == sorted(flops, reverse=True) and flops[-1] < flops[0]
    single = evaluate_checkpoint(dense_ckpt, keep_ratio=0.5, device="cpu", val_subset=VAL)
    assert results[2]["top1"] == single["top1"]  # the same batches, whatever ran before

    listed = eval_json(capsys, dense_ckpt, "--keep-ratios", "1.0,0.5")
    assert isinstance(listed, list) and [r["keep_ratio"] for r in listed] == [1.0, 0.5]
    assert listed[0]["top1"] == results[0]["top1"] and listed[1]["top1"] == results[2]["top1"]

    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), "--val-subset", str(VAL),
                        "--keep-ratios", "1.0,0.7,0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "keep ratio" in lines[1] and "images/s" in lines[1] and "GFLOPs" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["1", "0.7", "0.5"]
    assert lines[2].split()[3] == "1.00x"


@needs_data
def test_sweep_without_1_has_no_relative_throughput(dense_ckpt):
    results = evaluate_checkpoint_sweep(dense_ckpt, [0.5], device="cpu", val_subset=VAL)
    assert len(results) == 1 and results[0]["relative_images_per_s"] is None
    with pytest.raises(ValueError, match="at least one"):
        evaluate_checkpoint_sweep(dense_ckpt, [], device="cpu", val_subset=VAL)


@needs_data
@pytest.mark.parametrize("flags, value", [
    (["--keep-ratio", "0"], "0.0"), (["--keep-ratio", "1.5"], "1.5"), (["--keep-ratios", "1.0,0"], "0.0"),
    (["--keep-ratios", "1.5,0.5"], "1.5"), (["--attn-keep-ratio", "2"], "2.0"),
])
def test_bad_keep_ratios_exit_2_naming_the_value(dense_ckpt, flags, value, capsys):
    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), *flags]) == 2
    err = capsys.readouterr().err
    assert f"got {value}" in err and "(0, 1]" in err


@needs_data
def test_attention_level_on_a_dense_run_is_an_error(dense_ckpt, capsys):
    with pytest.raises(ValueError, match="dense run.*attn_keep_ratio must be 1.0"):
        evaluate_checkpoint(dense_ckpt, keep_ratio=0.5, attn_keep_ratio=0.5, device="cpu", val_subset=10)
    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), "--attn-keep-ratio", "0.5"]) == 2
    assert "attn_keep_ratio must be 1.0 (got 0.5)" in capsys.readouterr().err
    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), "--keep-ratio", "0.5",
                        "--keep-ratios", "1.0,0.5"]) == 2
    assert "not both" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# a tri-level run
# ------------------------------------------------------------------------------------------------


@needs_data
def test_trilevel_run_eval_and_sweep(tri_ckpt, capsys):
    default = eval_json(capsys, tri_ckpt)
    assert RESULT_KEYS <= default.keys() and default["dense_run"] is False
    assert (default["keep_ratio"], default["attn_keep_ratio"]) == (0.7, 0.3)  # the paper preset's eval ratios
    assert positive(default["images_per_s"]) and positive(default["gflops_per_image"])
    results = evaluate_checkpoint_sweep(tri_ckpt, [1.0, 0.7], device="cpu", val_subset=VAL)
    assert [r["keep_ratio"] for r in results] == [1.0, 0.7]
    assert all(r["attn_keep_ratio"] == 0.3 for r in results)
    assert results[1]["top1"] == default["top1"]
    assert results[1]["gflops_per_image"] < results[0]["gflops_per_image"]


@needs_data
def test_sweep_plot_draws_accuracy_against_throughput(dense_ckpt, tmp_path, capsys):
    out = tmp_path / "pruned.png"
    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), "--val-subset", str(VAL), "--keep-ratios", "1.0,0.5",
                        "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert exit_status(["eval", "--checkpoint", str(dense_ckpt), "--plot", str(out)]) == 2  # a plot needs a sweep
    assert "--keep-ratios" in capsys.readouterr().err


def test_plot_accuracy_vs_throughput_checks_its_input(tmp_path):
    from trilevel.viz import plot_accuracy_vs_throughput

    good = [{"keep_ratio": 1.0, "top1": 80.0, "images_per_s": 100.0}, {"keep_ratio": 0.5, "top1": 78.0,
                                                                        "images_per_s": 180.0}]
    assert plot_accuracy_vs_throughput({"a": good, "b": good[:1]}, tmp_path / "p.png").is_file()
    for bad in ({}, {"a": []}, {"a": [{"keep_ratio": 1.0, "top1": 80.0}]}):
        with pytest.raises(ValueError):
            plot_accuracy_vs_throughput(bad, tmp_path / "q.png")
    with pytest.raises(ValueError, match="png"):
        plot_accuracy_vs_throughput({"a": good}, tmp_path / "p.pdf")
