"""Time-to-accuracy: curves, interpolation and speedups on crafted numbers; the interleaved order;
the budget bench's bookkeeping with training stubbed (no real training)."""

from __future__ import annotations

import json

import pytest

from trilevel import training
from trilevel.bench.budgets import format_tta_table, run_budget_bench
from trilevel.bench.tta import accuracy_at_time, build_curves, interleaved_order, time_to_accuracy, tta_rows
from trilevel.cli.bench import main as bench_main


def test_time_to_accuracy_interpolates_the_first_crossing():
    assert time_to_accuracy([10, 20, 40], [70, 80, 90], 85) == pytest.approx(30.0)
    assert time_to_accuracy([10, 20, 40], [70, 80, 90], 70) == 10.0  # the first point already reaches it
    assert time_to_accuracy([10, 20, 40], [70, 80, 90], 90.5) is None  # never
    assert time_to_accuracy([10, 20, 40], [80, 75, 90], 78) == pytest.approx(10.0)
    assert time_to_accuracy([10, 20, 40], [70, 75, 95], 85) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        time_to_accuracy([1, 2], [3], 1)


def test_accuracy_at_time_stays_inside_the_curve():
    assert accuracy_at_time([10, 30], [60, 80], 20) == pytest.approx(70.0)
    assert accuracy_at_time([30, 10], [80, 60], 25) == pytest.approx(75.0)  # points in any order
    assert accuracy_at_time([10, 30], [60, 80], 5) is None and accuracy_at_time([10, 30], [60, 80], 31) is None


def _runs(name, per_budget):
    """Crafted runs: per budget, (seconds, [top-1 per seed])."""
    return [{"name": name, "budget": b, "seed": s, "val_top1": a, "train_seconds": t, "train_cpu_seconds": 2 * t}
            for b, (t, accs) in per_budget.items() for s, a in enumerate(accs)]


def test_curves_tta_speedup_interval_and_gains():
    runs = (_runs("dense", {1: (100, [70, 72]), 2: (200, [80, 82]), 4: (400, [89, 91])})
            + _runs("ours", {1: (100, [79, 81]), 2: (200, [88, 90]), 4: (400, [90, 90])}))
    curves = build_curves(runs)
    d = curves["dense"].points
    assert [p.budget for p in d] == [1.0, 2.0, 4.0] and d[2].top1_mean == 90 and d[2].seeds == 2
    assert d[2].top1_std == pytest.approx(2 ** 0.5) and d[2].top1_sem == pytest.approx(1.0)
    assert d[0].cpu_seconds_mean == 200
    rows = {r["name"]: r for r in tta_rows(curves, target=89.7)}
    # dense reaches 89.7 at 200 + (89.7 - 81) / (90 - 81) * 200 = 393.3 s; ours at 200 + 0.7 / 1 * 200 = 340 s
    assert rows["dense"]["tta_seconds"] == pytest.approx(200 + 8.7 / 9 * 200)
    assert rows["ours"]["tta_seconds"] == pytest.approx(340.0)
    assert rows["ours"]["speedup"] == pytest.approx(rows["dense"]["tta_seconds"] / 340.0)
    assert rows["dense"]["speedup"] == pytest.approx(1.0)
    # the interval: low end = dense one s.e.m. up (72, 82, 91: 200 + 7.7 / 9 * 200 s) over ours one s.e.m.
    # down (79, 88, 90: 200 + 1.7 / 2 * 200 = 370 s); high end = dense one s.e.m. down (70, 80, 89) over
    # ours one up: dense's pessimistic curve never reaches 89.7, so the interval is open above
    assert rows["ours"]["speedup_low"] == pytest.approx((200 + 7.7 / 9 * 200) / 370.0)
    assert rows["ours"]["speedup_high"] is None
    assert "(1.00-?)" in format_tta_table([rows["ours"]], 89.7)
    gains = {g["budget"]: g["gain"] for g in rows["ours"]["gains"]}
    assert gains == pytest.approx({1.0: 9.0, 2.0: 8.0, 4.0: 0.0})
    assert "never" not in format_tta_table(list(rows.values()), 89.7)


def test_a_curve_that_never_reaches_the_target_says_so():
    runs = _runs("dense", {1: (100, [80]), 2: (200, [90])}) + _runs("slow", {1: (150, [70]), 2: (300, [85])})
    rows = {r["name"]: r for r in tta_rows(build_curves(runs), target=89.7)}
    assert rows["slow"]["reached"] is False and rows["slow"]["speedup"] is None
    assert "never reaches the target" in format_tta_table(list(rows.values()), 89.7)
    with pytest.raises(ValueError, match="dense"):
        tta_rows(build_curves(_runs("ours", {1: (1, [1])})), 1.0)


def test_interleaved_order_rotates_configurations():
    order = interleaved_order(["dense", "a", "b"], [1.0, 2.0], [0, 1])
    assert len(order) == 12 and len(set(order)) == 12
    firsts = [order[i][2] for i in range(0, 12, 3)]
    assert firsts == ["dense", "a", "b", "dense"]  # who goes first rotates group by group
    assert [o[:2] for o in order[:3]] == [(0, 1.0)] * 3 and order[3][:2] == (0, 2.0)


def _fake_train(calls):
    def fake(cfg):
        calls.append(cfg)
        cheap = 0.5 if not cfg.get("dense") else 1.0
        return {"val_top1": 60.0 + 10 * cfg["budget"] + cfg["seed"], "val_top1_full_tokens": None,
                "train_seconds": 100.0 * cfg["budget"] * cheap, "train_cpu_seconds": 1.0, "eval_seconds": 1.0,
                "checkpoint_seconds": 0.1, "total_steps": 10, "epochs_trained": 1.0,
                "dense_epochs_used": cfg["budget"], "relative_train_flops": 1.0, "output_dir": cfg["output_dir"]}

    return fake


def test_budget_bench_runs_every_cell_interleaved_and_writes_outputs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "train", _fake_train(calls))
    base = training.TrainConfig(epochs=2).to_dict()
    result = run_budget_bench(base, ["dense", "token-only"], [1, 2], [0, 1], str(tmp_path))
    assert len(calls) == 8
    assert {(c["budget"], c["seed"], c.get("dense", False)) for c in calls} == {
        (b, s, d) for b in (1.0, 2.0) for s in (0, 1) for d in (True, False)}
    assert calls[0]["dense"] is True and calls[3].get("dense") is True  # rotating order
    assert all(c["resume"] is None and c["output_dir"].startswith(str(tmp_path)) for c in calls)
    assert result["target"] == pytest.approx(80.5 - 0.3)  # dense mean at budget 2 minus 0.3
    for name in ("bench_runs.json", "bench_tta.json", "bench_tta.md", "accuracy_vs_time.png"):
        assert (tmp_path / name).is_file(), name
    assert len(json.loads((tmp_path / "bench_runs.json").read_text())) == 8
    tta = {r["name"]: r for r in result["tta"]}
    assert tta["token-only"]["speedup"] > 1.9  # same accuracy in half the time


@pytest.mark.parametrize("configs, budgets, seeds, words", [
    (["trilevel"], [1], [0], ["dense"]),
    (["dense", "dense"], [1], [0], ["repeat", "overwrite"]),
    (["dense", "warp"], [1], [0], ["warp"]),
    (["dense"], [1, 1], [0], ["budgets repeat"]),
    (["dense"], [0], [0], ["budgets"]),
    (["dense"], [1], [0, 0], ["seeds repeat"]),
])
def test_budget_bench_bad_input_fails_before_training(tmp_path, monkeypatch, configs, budgets, seeds, words):
    monkeypatch.setattr(training, "train", lambda cfg: pytest.fail("nothing may train"))
    with pytest.raises(ValueError) as info:
        run_budget_bench({}, configs, budgets, seeds, str(tmp_path))
    for w in words:
        assert w in str(info.value)


def test_bench_command_with_budgets(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(training, "train", _fake_train(calls))
    code = bench_main(["train", "--configs", "dense,token-only", "--budgets", "1,2", "--seeds", "0,1",
                       "--output-dir", str(tmp_path)])
    assert code == 0 and len(calls) == 8
    out = capsys.readouterr().out
    assert "TTA speedup" in out and "token-only" in out
    assert bench_main(["train", "--configs", "dense", "--budgets", "1,x", "--output-dir", str(tmp_path)]) == 2
    assert "--budgets" in capsys.readouterr().err
