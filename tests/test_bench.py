"""trilevel.bench: speed benchmark rows, bench-train bookkeeping, and the command's exits.

The training bench is tested with ``trilevel.training.train`` stubbed (no real training): what is
checked is which configurations run with which overrides, the dense-same-time epochs, the
speedup and accuracy columns, and the files written.
"""

import json

import pytest

from trilevel import training
from trilevel.cli.bench import main as bench_main
from trilevel.bench import (SpeedConfig, benchmark_speed, format_seeds_table, format_train_table, parse_seeds,
                            run_train_bench, run_train_bench_seeds, summarize_seeds)

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

