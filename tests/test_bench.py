"""trilevel.bench: speed benchmark rows, bench-train bookkeeping, and the command's exits.

The training bench is tested with ``trilevel.engine.train`` stubbed (no real training): what is
checked is which configurations run with which overrides, the dense-same-time epochs, the
speedup and accuracy columns, and the files written.
"""

import json

import pytest

from trilevel import bench, engine
from trilevel.bench import SpeedConfig, benchmark_speed, format_train_table, run_train_bench

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
    """A stand-in for engine.train: records the config, returns a summary with given timings."""

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
    monkeypatch.setattr(engine, "train", _fake_train(calls, seconds))
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
    (["trilevel", "dense-same-time"], ["dense-same-time", "dense"]),
    ([], ["at least one"]),
])
def test_run_train_bench_bad_configs(tmp_path, monkeypatch, configs, words):
    monkeypatch.setattr(engine, "train", lambda cfg: pytest.fail("nothing may train"))
    with pytest.raises(ValueError) as info:
        run_train_bench({"epochs": 2}, configs, str(tmp_path))
    for w in words:
        assert w in str(info.value)


def test_bench_command_reports_a_sigterm_with_the_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise engine.TrainingInterrupted("stopped by SIGTERM at epoch 1", str(tmp_path / "checkpoint.pt"))

    monkeypatch.setattr(engine, "train", interrupted)
    with pytest.raises(SystemExit) as info:
        bench.main(["train", "--dataset", "fashion-mnist", "--configs", "dense,trilevel",
                    "--output-dir", str(tmp_path)])
    assert info.value.code == 128 + 15
    assert "SIGTERM" in capsys.readouterr().err


def test_bench_command_unknown_configuration_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["train", "--configs", "dense,warp-speed", "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "warp-speed" in capsys.readouterr().err
