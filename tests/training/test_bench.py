"""trilevel.bench: speed benchmark rows, bench-train bookkeeping, and the command's exits.

The training bench is tested with ``trilevel.training.train`` stubbed (no real training): what is
checked is which configurations run with which overrides, the dense-same-time epochs, the
speedup and accuracy columns, and the files written.
"""

import json
import logging

import pytest
import torch
import torch.nn as nn

import trilevel
from trilevel import training
from trilevel.cli.bench import main as bench_main
from trilevel.bench import (SpeedConfig, benchmark_speed, format_seeds_table, format_train_table, parse_seeds,
                            run_train_bench, run_train_bench_seeds, summarize_seeds)
from trilevel.bench import speed as speed_mod
from trilevel.bench.speed import compare_speed, format_speed_table, max_batch_in_memory, saved_bytes_for_backward

from _models import tiny_vit


def test_benchmark_speed_rows_and_flop_implied_speedups():
    configs = [SpeedConfig("dense"), SpeedConfig("patched 1.0", keep_ratio=1.0),
               SpeedConfig("token 0.5", keep_ratio=0.5)]
    rows = benchmark_speed(lambda: tiny_vit(depth=4), configs, batch_size=2, input_shape=(1, 28, 28),
                           num_classes=10, rounds=1, steps_per_round=1, warmup_steps=0)
    assert [r.name for r in rows] == ["dense", "patched 1.0", "token 0.5"]
    assert rows[0].speedup == 1.0 and rows[0].flops_speedup == 1.0
    assert rows[1].flops_speedup == pytest.approx(1.0)  # same arithmetic at ratio 1
    assert rows[2].flops_speedup > 1.2 and rows[2].relative_flops < 0.85
    for r in rows:
        assert r.min_s <= r.median_s <= r.max_s and r.images_per_s > 0


def _drop(keep):
    settings = trilevel.PatchSettings(keep_ratio=keep, token_fate="drop")
    return lambda m: trilevel.patch(m, settings)


MEMORY_COLUMNS = ["saved for backward MB/image", "memory vs dense", "tokens vs dense", "batch in dense's memory"]


def test_memory_of_a_pruned_variant_follows_its_kept_tokens():
    batch = 3
    variants = [("dense", None, 1.0, None), ("patched 1.0", 1.0, 1.0, _drop(1.0)), ("drop 0.5", 0.5, 1.0, _drop(0.5))]
    rows = compare_speed(lambda: tiny_vit(depth=8), variants, batch_size=batch, input_shape=(1, 28, 28),
                         num_classes=10, rounds=1, steps_per_round=1, warmup_steps=0)
    dense, same, pruned = rows
    assert dense.memory_ratio == 1.0 and dense.token_fraction == 1.0 and dense.max_batch_same_memory == batch
    assert same.saved_bytes == dense.saved_bytes  # ratio 1 keeps every token: nothing more, nothing less
    assert dense.cuda_peak_bytes_per_image is None and dense.compile_speedup is None  # CPU, no compile
    # token_fraction counts prefix tokens and the blocks before the first pruning block at full
    # size, and a pruning block half full (its attention) and half pruned (its MLP). What it leaves
    # out is dense for every row (patch embedding, head, loss) or small (scores, kept indices): the
    # saving in memory is at least what the kept tokens imply, up to 10 %.
    assert 0.4 < pruned.token_fraction < 0.75
    assert 0 < pruned.memory_ratio < 1 and pruned.memory_ratio <= pruned.token_fraction * 1.1
    assert pruned.memory_ratio == pytest.approx(pruned.saved_bytes / dense.saved_bytes)
    for r in rows:
        assert r.saved_bytes_per_image == round(r.saved_bytes / batch)
        assert r.max_batch_same_memory == batch * dense.saved_bytes // r.saved_bytes
    m = pruned.max_batch_same_memory  # the largest batch that fits dense's memory at batch 3
    assert m > batch and m * pruned.saved_bytes <= batch * dense.saved_bytes < (m + 1) * pruned.saved_bytes
    table = format_speed_table(rows)
    assert table.splitlines()[0].endswith(" | ".join(MEMORY_COLUMNS) + " |") and "compile" not in table
    assert f"| {pruned.memory_ratio:.3f} | {pruned.token_fraction:.3f} | {m} |" in table.splitlines()[-1]


def test_max_batch_in_memory_is_exact():
    assert max_batch_in_memory(8, 1000, 300) == 26  # 26.67 images
    assert max_batch_in_memory(8, 1000, 1000) == 8
    assert max_batch_in_memory(3, 7, 7) == 3 and max_batch_in_memory(49, 100, 49 * 100 // 49) == 49
    assert max_batch_in_memory(10, 7, 0) == 0


class _Sliced(nn.Module):
    """A head twice as wide whose extra outputs are dropped: twice the parameters, the same activations."""

    def __init__(self, width):
        super().__init__()
        self.body, self.fc = nn.Linear(16, 16), nn.Linear(16, width)

    def forward(self, x):  # the head's input needs a gradient: the head saves its weight for it
        return self.fc(self.body(x))[:, :4]


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_saved_bytes_leave_out_parameters(amp_dtype):
    x, y = torch.randn(5, 16), torch.randint(0, 4, (5,))
    small, big = _Sliced(4), _Sliced(8)
    assert sum(p.numel() for p in big.fc.parameters()) == 2 * sum(p.numel() for p in small.fc.parameters())
    a = saved_bytes_for_backward(small, x, y, amp_dtype)
    b = saved_bytes_for_backward(big, x, y, amp_dtype)
    assert a == b  # the weight (and under autocast its bf16 copy) is saved too, but is no activation
    width = 4 if amp_dtype is None else 2
    assert a >= 2 * 5 * 16 * width + 5 * 4 * 4  # at least the two inputs and the log-probabilities
    assert saved_bytes_for_backward(small, torch.randn(10, 16), torch.randint(0, 4, (10,)), amp_dtype) > a


@pytest.mark.slow
def test_compile_path_reports_compile_figures():
    variants = [("dense", None, 1.0, None), ("drop 0.5", 0.5, 1.0, _drop(0.5))]
    rows = compare_speed(lambda: tiny_vit(depth=2), variants, batch_size=2, input_shape=(1, 28, 28), num_classes=10,
                         rounds=2, steps_per_round=1, warmup_steps=1, compile=True, compile_backend="eager")
    for r in rows:
        assert r.compile_error is None and r.compile_speedup > 0 and r.compile_seconds > 0
        assert r.min_s <= r.median_s <= r.max_s
    head = format_speed_table(rows).splitlines()[0]
    assert head.endswith("| compile speedup | compile s |") and "memory vs dense" in head


def test_a_failed_compile_is_reported_in_its_row(caplog):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    with caplog.at_level(logging.WARNING, logger="trilevel.bench.speed"):
        (row,) = compare_speed(lambda: tiny_vit(depth=1), [("dense", None, 1.0, None)], batch_size=2,
                               input_shape=(1, 28, 28), num_classes=10, rounds=1, steps_per_round=1, warmup_steps=0,
                               compile=True, compile_backend=broken)
    assert row.compile_speedup is None and row.compile_seconds is None and "no compiler here" in row.compile_error
    assert row.median_s > 0 and row.saved_bytes > 0  # the eager figures are still there
    assert "torch.compile" in caplog.text and "failed" in format_speed_table([row]).splitlines()[-1]


@pytest.mark.parametrize("flag, expected", [([], False), (["--compile"], True)])
def test_bench_speed_command_passes_compile(monkeypatch, capsys, flag, expected):
    seen = {}

    def fake(model, kw, **options):
        seen.update(options)
        return compare_speed(lambda: tiny_vit(depth=1), [("dense", None, 1.0, None)], batch_size=1,
                             input_shape=(1, 28, 28), num_classes=10, rounds=1, steps_per_round=1, warmup_steps=0)

    monkeypatch.setattr(speed_mod, "speed_for_model", fake)
    assert bench_main(["speed", "--device", "cpu"] + flag) == 0
    assert seen["compile"] is expected and "batch in dense's memory" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 0}, ["batch_size", "0"]),
    ({"rounds": 1.5}, ["rounds"]),
    ({"configs": []}, ["configs"]),
])
def test_benchmark_speed_bad_input(kwargs, words):
    args = dict(make_model=lambda: tiny_vit(depth=2), configs=[SpeedConfig("dense")], batch_size=2,
                input_shape=(1, 28, 28), num_classes=10, rounds=1, steps_per_round=1)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        benchmark_speed(**args)
    for w in words:
        assert w in str(info.value)


def _fake_train(calls, seconds):
    """A stand-in for trilevel.training.train: records the config, returns a summary with given timings."""

    def fake(cfg):
        calls.append(cfg)
        name = cfg["output_dir"].rsplit("/", 1)[-1]
        dense = cfg.get("dense", False)
        return {"val_top1": 50.0 + len(calls), "train_seconds": seconds[name], "epochs": cfg["epochs"],
                "relative_train_flops": 1.0 if dense else 0.6, "train_images": 100,
                "keep_ratio": None if dense else cfg.get("keep_ratio"),
                "attn_keep_ratio": None if dense else cfg.get("attn_keep_ratio"),
                "selector": None if dense else cfg.get("selector"), "eval_keep_ratio": None,
                "output_dir": cfg["output_dir"]}

    return fake


def test_run_train_bench_rows_and_dense_same_time(tmp_path, monkeypatch):
    calls = []
    seconds = {"dense": 500.0, "trilevel": 300.0, "token-only": 400.0, "dense-same-time": 310.0}
    monkeypatch.setattr(training, "train", _fake_train(calls, seconds))
    base = {"epochs": 10, "warmup_epochs": 1.0, "keep_ratio": 0.7, "attn_keep_ratio": 1.0,
            "selector": "forgetting"}
    rows = run_train_bench(base, ["dense-same-time", "dense", "trilevel", "token-only"], str(tmp_path))
    # dense-same-time runs last, for round(10 * 300 / 500) = 6 epochs, warm-up within them
    assert [r["name"] for r in rows] == ["dense", "trilevel", "token-only", "dense-same-time"]
    assert calls[0]["dense"] is True and calls[2]["selector"] == "none" and calls[2]["attn_keep_ratio"] == 1.0
    assert calls[3]["dense"] is True and calls[3]["epochs"] == 6 and calls[3]["warmup_epochs"] <= 6 / 5
    assert all(c["resume"] is None for c in calls)
    by = {r["name"]: r for r in rows}
    assert by["trilevel"]["speedup"] == pytest.approx(500 / 300)
    assert by["trilevel"]["delta_top1"] == pytest.approx(by["trilevel"]["val_top1"] - by["dense"]["val_top1"])
    saved = json.loads((tmp_path / "bench_train.json").read_text())
    assert [r["name"] for r in saved] == [r["name"] for r in rows]
    table = (tmp_path / "bench_train.md").read_text()
    assert table.strip() == format_train_table(rows) and "| trilevel | 10 |" in table
    assert (tmp_path / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("configs, words", [
    (["dense", "fastest-ever"], ["fastest-ever", "allowed"]),
    (["trilevel", "dense-same-time"], ["include 'dense'"]),
    (["dense", "dense-same-time"], ["dense-same-time", "at least one other"]),
    (["dense", "trilevel", "trilevel"], ["repeat", "overwrite"]),
    ([], ["at least one"]),
])
def test_run_train_bench_bad_configs(tmp_path, monkeypatch, configs, words):
    monkeypatch.setattr(training, "train", lambda cfg: pytest.fail("nothing may train"))
    with pytest.raises(ValueError) as info:
        run_train_bench({"epochs": 2}, configs, str(tmp_path))
    for w in words:
        assert w in str(info.value)


def test_bench_command_reports_a_sigterm_with_the_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise training.TrainingInterrupted("stopped by SIGTERM at epoch 1", str(tmp_path / "checkpoint.pt"))

    monkeypatch.setattr(training, "train", interrupted)
    assert bench_main(["train", "--dataset", "fashion-mnist", "--configs", "dense,trilevel",
                    "--output-dir", str(tmp_path)]) == 128 + 15
    assert "SIGTERM" in capsys.readouterr().err


def test_bench_command_unknown_configuration_is_a_usage_error(tmp_path, capsys):
    assert bench_main(["train", "--configs", "dense,warp-speed", "--output-dir", str(tmp_path)]) == 2
    assert "warp-speed" in capsys.readouterr().err


def test_bench_over_seeds_pairs_each_seed_with_its_own_dense(tmp_path, monkeypatch):
    calls = []
    top1 = {(0, "dense"): 60.0, (0, "trilevel"): 59.0, (1, "dense"): 64.0, (1, "trilevel"): 61.0,
            (2, "dense"): 62.0, (2, "trilevel"): 62.5}
    secs = {"dense": 500.0, "trilevel": 250.0}

    def fake(cfg):
        calls.append(cfg)
        name = cfg["output_dir"].rsplit("/", 1)[-1]
        return {"val_top1": top1[(cfg["seed"], name)], "train_seconds": secs[name] + cfg["seed"],
                "epochs": cfg["epochs"], "relative_train_flops": 1.0 if name == "dense" else 0.6,
                "train_images": 100, "keep_ratio": None, "attn_keep_ratio": None, "selector": None,
                "eval_keep_ratio": None, "output_dir": cfg["output_dir"]}

    monkeypatch.setattr(training, "train", fake)
    summary = run_train_bench_seeds({"epochs": 4, "seed": 7}, ["dense", "trilevel"], [0, 1, 2], str(tmp_path))
    assert [c["seed"] for c in calls] == [0, 0, 1, 1, 2, 2]  # --seed 7 is replaced
    assert calls[3]["output_dir"] == str(tmp_path / "seed-1" / "trilevel")
    by = {r["name"]: r for r in summary}
    ours = by["trilevel"]
    # paired gaps -1.0, -3.0, +0.5: mean -7/6, sample std, worst -3.0
    assert ours["seeds"] == 3 and ours["delta_mean"] == pytest.approx(-3.5 / 3)
    assert ours["delta_std"] == pytest.approx(1.755942292142123)
    assert ours["delta_sem"] == pytest.approx(1.755942292142123 / 3 ** 0.5)
    assert ours["delta_min"] == -3.0 and ours["val_top1_mean"] == pytest.approx(182.5 / 3)
    assert ours["speedup_median"] == pytest.approx(501 / 251)
    assert by["dense"]["delta_mean"] == 0.0 and by["dense"]["speedup_median"] == 1.0
    saved = json.loads((tmp_path / "bench_train_seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and set(saved["per_seed"]) == {"0", "1", "2"}
    assert (tmp_path / "bench_train_seeds.md").read_text().strip() == format_seeds_table(summary)
    assert "| trilevel | 3 | 60.83 | -1.17 +- 1.76 (1.01) | -3.00 | 2.00x | 0.600 |" in format_seeds_table(summary)
    assert (tmp_path / "seed-2" / "bench_train.md").exists()


@pytest.mark.parametrize("seeds, configs, words", [
    ([3], ["dense", "trilevel"], ["two seeds"]),
    ([1, 1], ["dense", "trilevel"], ["repeat"]),
    ([0, 1], ["trilevel", "token-only"], ["dense"]),
])
def test_bench_over_seeds_bad_input(tmp_path, monkeypatch, seeds, configs, words):
    monkeypatch.setattr(training, "train", lambda cfg: pytest.fail("nothing may train"))
    with pytest.raises(ValueError) as info:
        run_train_bench_seeds({"epochs": 2}, configs, seeds, str(tmp_path))
    for w in words:
        assert w in str(info.value)


def test_parse_seeds():
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0,x", "1,,2", "-1,2", "1,1"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_bench_command_bad_seeds_is_a_usage_error(tmp_path, capsys):
    assert bench_main(["train", "--seeds", "1,x", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_summarize_seeds_single_seed_has_zero_spread():
    rows = [{"name": "dense", "val_top1": 60.0, "delta_top1": 0.0, "speedup": 1.0, "relative_train_flops": 1.0}]
    (r,) = summarize_seeds({5: rows})
    assert (r["delta_std"], r["delta_sem"], r["seeds"]) == (0.0, 0.0, 1)

