"""Time and FLOPs to accuracy: curves, interpolation, speedups and cost per FLOP on crafted numbers;
the interleaved order; the plots; the budget bench's bookkeeping with training stubbed (no real
training)."""

from __future__ import annotations

import json

import pytest

from trilevel import training
from trilevel.bench.budgets import format_curve_table, format_tta_table, run_budget_bench
from trilevel.bench.tta import (
    accuracy_at_time,
    build_curves,
    interleaved_order,
    run_train_flops,
    time_to_accuracy,
    tta_rows,
)
from trilevel.cli.bench import main as bench_main
from trilevel.viz import plot_flops_curves


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


def _runs(name, per_budget, compute_per_budget=None, num_train=1000, gflops=2.0):
    """Crafted runs: per budget, (seconds, [top-1 per seed]); CPU time twice the wall-clock; with
    ``compute_per_budget``, ``dense_epochs_used`` = that x budget on ``num_train`` images of
    ``gflops`` dense forward GFLOPs each."""
    runs = [{"name": name, "budget": b, "seed": s, "val_top1": a, "train_seconds": t, "train_cpu_seconds": 2 * t}
            for b, (t, accs) in per_budget.items() for s, a in enumerate(accs)]
    if compute_per_budget is not None:
        for r in runs:
            r.update(dense_epochs_used=compute_per_budget * r["budget"], num_train=num_train,
                     dense_gflops_per_image=gflops)
    return runs


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
    # the 95% bootstrap interval: no resample is below dense's best case (72, 82, 91: 200 + 7.7 / 9 * 200 s)
    # over ours' worst (79, 88, 90: 370 s); dense's resampled last point is 89 (< 89.7: never) in a quarter
    # of the resamples, more than 2.5%, so the interval is open above
    low = rows["ours"]["speedup_low"]
    assert (200 + 7.7 / 9 * 200) / 370.0 <= low <= rows["ours"]["speedup"]
    assert rows["ours"]["speedup_high"] is None and rows["ours"]["speedup_bound"] == ""
    assert f"[95% CI {low:.2f}-?]" in format_tta_table([rows["ours"]], 89.7)
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


# dense: top-1 71, 81, 90 (s.e.m. 1) at 1, 2, 4 dense epochs; ours: 80, 89, 90 (s.e.m. 1, 1, 0) at half
# the compute (0.5, 1, 2 dense epochs) and the same wall-clock as dense per budget
_DENSE = {1: (100, [70, 72]), 2: (200, [80, 82]), 4: (400, [89, 91])}
_OURS = {1: (100, [79, 81]), 2: (200, [88, 90]), 4: (400, [90, 90])}


def test_compute_to_target_interpolates_on_the_compute_axis():
    curves = build_curves(_runs("dense", _DENSE, 1.0) + _runs("ours", _OURS, 0.5))
    assert curves["ours"].series(x="compute") == ([0.5, 1.0, 2.0], [80.0, 89.0, 90.0])
    assert curves["ours"].series(-1.0, x="compute")[1] == [79.0, 88.0, 90.0]
    with pytest.raises(ValueError, match="axis"):
        curves["ours"].series(x="joules")
    assert time_to_accuracy(*curves["dense"].series(x="compute"), 85) == pytest.approx(2 + 4 / 9 * 2)
    rows = {r["name"]: r for r in tta_rows(curves, target=85)}
    assert rows["dense"]["compute_to_target"] == pytest.approx(2 + 4 / 9 * 2)
    assert rows["ours"]["compute_to_target"] == pytest.approx(0.5 + 5 / 9 * 0.5)
    # absolute training FLOPs: 3 x dense epochs x 1000 images x 2 GFLOPs
    assert rows["ours"]["flops_to_target"] == pytest.approx(3 * (0.5 + 5 / 9 * 0.5) * 1000 * 2e9)
    assert run_train_flops({"dense_epochs_used": 2, "num_train": 10, "dense_gflops_per_image": 0.5}) == 30e9
    assert run_train_flops({"dense_epochs_used": 2, "num_train": 10}) is None
    # without the compute fields the figures are unknown, not "never"
    bare = {r["name"]: r for r in tta_rows(build_curves(_runs("dense", _DENSE) + _runs("ours", _OURS)), 85)}
    assert bare["ours"]["reached"] and bare["ours"]["compute_to_target"] is None
    assert bare["ours"]["flops_speedup"] is None and bare["ours"]["cpu_per_flop_vs_dense"] is None


def test_flops_to_accuracy_speedup_and_its_interval():
    rows = {r["name"]: r for r in tta_rows(build_curves(_runs("dense", _DENSE, 1.0) + _runs("ours", _OURS, 0.5)),
                                           target=85)}
    ours = rows["ours"]
    dense_mid, dense_up, dense_down = 2 + 4 / 9 * 2, 2 + 3 / 9 * 2, 2 + 5 / 9 * 2  # dense at 71/81/90, +1, -1 sem
    ours_mid, ours_up, ours_down = 0.5 + 5 / 9 * 0.5, 0.5 + 4 / 9 * 0.5, 0.5 + 6 / 9 * 0.5
    assert ours["flops_speedup_axis"] == "flops"
    assert ours["flops_speedup"] == pytest.approx(dense_mid / ours_mid)
    # the bootstrap interval lies within the extremes (every resample between the best and worst cases)
    assert dense_up / ours_down <= ours["flops_speedup_low"] <= ours["flops_speedup"]  # 3.2 <= ...
    assert ours["flops_speedup"] <= ours["flops_speedup_high"] <= dense_down / ours_up
    assert rows["dense"]["flops_speedup"] == pytest.approx(1.0)
    # the same wall-clock per budget: the time figures differ from the FLOPs ones (overhead)
    assert ours["speedup"] == pytest.approx((200 + 4 / 9 * 200) / (100 + 5 / 9 * 100))
    assert ours["cpu_speedup"] == pytest.approx(ours["speedup"])  # CPU time is twice the wall-clock for both
    assert ours["cpu_speedup_low"] == pytest.approx(ours["speedup_low"])  # the same resamples, axes twice apart
    # ours at half the compute per budget on the same time: twice dense's CPU time per FLOP
    assert ours["cpu_per_flop_vs_dense"] == pytest.approx(2.0)
    # read on absolute FLOPs: a configuration with a model twice as costly per image needs twice the FLOPs
    big = _runs("big", _OURS, 0.5, gflops=4.0)
    rows = {r["name"]: r for r in tta_rows(build_curves(_runs("dense", _DENSE, 1.0) + big), target=85)}
    assert rows["big"]["compute_to_target"] == pytest.approx(ours_mid)
    assert rows["big"]["flops_speedup"] == pytest.approx(dense_mid / ours_mid / 2)


def test_a_configuration_that_never_reaches_the_target_in_flops():
    runs = _runs("dense", {1: (100, [80]), 2: (200, [90])}, 1.0) + _runs("slow", {1: (50, [70]), 2: (100, [85])}, 0.5)
    rows = {r["name"]: r for r in tta_rows(build_curves(runs), target=89.7)}
    slow = rows["slow"]
    assert slow["reached"] is False and slow["compute_to_target"] is None and slow["flops_to_target"] is None
    assert slow["flops_speedup"] is None and slow["flops_speedup_low"] is None and slow["cpu_speedup"] is None
    table = format_tta_table(list(rows.values()), 89.7)
    flops_table = table.split("FLOPs-to-accuracy speedup vs dense")[1]
    slow_line = next(line for line in flops_table.splitlines() if line.startswith("| slow "))
    assert slow_line.startswith("| slow | never | never | never reaches the target |")


def test_cpu_seconds_per_flop_is_the_mean_over_runs_relative_to_dense():
    def run(name, budget, seed, epochs, cpu):
        return {"name": name, "budget": budget, "seed": seed, "val_top1": 80.0, "train_seconds": 1.0,
                "train_cpu_seconds": cpu, "dense_epochs_used": epochs, "num_train": 1000, "dense_gflops_per_image": 2.0}

    # a dense epoch: 3 x 1000 x 2 GFLOPs = 6000 training GFLOPs
    runs = [run("dense", 1, 0, 1.0, 60.0), run("dense", 1, 1, 1.0, 120.0), run("dense", 2, 0, 2.0, 240.0),
            run("ours", 1, 0, 0.5, 60.0), run("ours", 2, 0, 1.0, 90.0)]
    curves = build_curves(runs)
    assert [p.cpu_ms_per_gflop_mean for p in curves["dense"].points] == pytest.approx([15.0, 20.0])
    rows = {r["name"]: r for r in tta_rows(curves, target=80.0)}
    # mean over the runs (10, 20, 20 ms per GFLOP), not over the points (15, 20)
    assert rows["dense"]["cpu_ms_per_gflop"] == pytest.approx(50 / 3)
    assert rows["ours"]["cpu_ms_per_gflop"] == pytest.approx(17.5)  # 20 and 15
    assert rows["ours"]["cpu_per_flop_vs_dense"] == pytest.approx(17.5 / (50 / 3))  # 1.05
    assert rows["dense"]["cpu_per_flop_vs_dense"] == pytest.approx(1.0)
    # dense and ours are both at the target at their first budget: no speedup can be read
    table = format_tta_table(list(rows.values()), 80.0)
    assert "| ours | 0.5 | 3e+12 | n/a (dense and this row both at the target at the first budget) | 17.5 | 1.05 |" in table
    assert "| dense | 1 | 6e+12 | 1.00x (the baseline) | 16.7 | 1.00 |" in table


def test_tables_have_the_time_and_the_flops_columns():
    curves = build_curves(_runs("dense", _DENSE, 1.0) + _runs("ours", _OURS, 0.5))
    table = format_tta_table(tta_rows(curves, target=85), 85)
    for column in ("time to target (s)", "TTA speedup vs dense, wall-clock (95% CI)",
                   "TTA speedup vs dense, CPU time (95% CI)", "compute to target (dense epochs)",
                   "FLOPs-to-accuracy speedup vs dense (95% CI)", "CPU s per FLOP vs dense",
                   "gain over dense at equal wall-clock"):
        assert column in table, column
    assert "FLOPs to accuracy: the method, the same on any hardware" in table
    assert "time to accuracy: the method times this implementation on this machine" in table.lower()
    assert table.index("Time to accuracy (") < table.index("FLOPs to accuracy (")
    ours = next(line for line in table.splitlines() if line.startswith("| ours | 0.778 "))
    assert "| 4.67e+12 | 3.71x [95% CI " in ours and "| 66.7 | 2.00 |" in ours  # FLOPs, speedup, ms/GFLOP, ratio
    points = format_curve_table(curves)
    assert "compute used (dense epochs)" in points and "val top-1 % (mean)" in points
    # 95% t interval of 89 and 91: 90 +- 12.706 x 1
    assert "| dense | 4 | 2 | n/a | 90.00 [77.29, 102.71] | 1.00 | 1.41 | 400 | 800 | 4 |" in points
    assert "| ours | 4 | 2 | n/a | 90.00 [90.00, 90.00] | 0.00 | 0.00 | 400 | 800 | 2 | 1.2e+13 |" in points
    bare = format_curve_table(build_curves(_runs("dense", {1: (100, [70])})))
    assert "| 1 | n/a | 70.00 | 0.00 |" in bare and bare.endswith("| 100 | 200 | n/a | n/a |")


def test_curves_read_the_test_set_and_keep_validation_beside_it():
    runs = _runs("dense", {1: (100, [70, 72])})
    for r, val in zip(runs, (60.0, 64.0)):
        r.update(test_top1=r["val_top1"], val_top1=val, eval_set="val-split")
    p = build_curves(runs)["dense"].points[0]
    assert p.top1_mean == 71.0 and p.val_top1_mean == 62.0


def test_a_one_seed_row_has_no_interval_and_no_spread_gives_a_point_interval():
    one = tta_rows(build_curves(_runs("dense", {1: (100, [70]), 2: (200, [80])})
                                + _runs("ours", {1: (50, [75]), 2: (100, [85])})), target=78)
    ours = next(r for r in one if r["name"] == "ours")
    assert ours["speedup"] == pytest.approx((100 + 0.8 * 100) / (50 + 0.3 * 50))
    assert ours["speedup_low"] is None and ours["speedup_high"] is None and ours["seeds_min"] == 1
    assert "| ours | 65 | 2.77x |" in format_tta_table(one, 78)
    same = tta_rows(build_curves(_runs("dense", {1: (100, [70, 70]), 2: (200, [80, 80])})
                                 + _runs("ours", {1: (50, [75, 75]), 2: (100, [85, 85])})), target=78)
    ours = next(r for r in same if r["name"] == "ours")
    assert ours["speedup_low"] == pytest.approx(ours["speedup"]) == pytest.approx(ours["speedup_high"])


def test_a_speedup_at_the_first_budget_is_a_bound():
    rows = {r["name"]: r for r in tta_rows(build_curves(_runs("dense", {1: (100, [70, 72]), 2: (200, [80, 82])})
                                                        + _runs("ours", {1: (50, [85, 86]), 2: (100, [90, 90])})),
                                           target=79)}
    ours = rows["ours"]
    assert ours["speedup_bound"] == ">=" and ours["speedup_high"] is None
    assert ours["speedup"] == pytest.approx((100 + 8 / 10 * 100) / 50)
    assert format_tta_table(list(rows.values()), 79).count(">=3.60x") == 2  # wall-clock and CPU time


def test_plot_flops_curves_writes_a_png(tmp_path):
    curves = build_curves(_runs("dense", _DENSE, 1.0) + _runs("ours", _OURS, 0.5))
    path = plot_flops_curves(curves, tmp_path / "f.png", target=85)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="compute"):
        plot_flops_curves(build_curves(_runs("dense", _DENSE)), tmp_path / "g.png")
    with pytest.raises(ValueError, match="png"):
        plot_flops_curves(curves, tmp_path / "f.pdf")


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
                "train_seconds": 100.0 * cfg["budget"] * cheap, "train_cpu_seconds": 150.0 * cfg["budget"] * cheap,
                "eval_seconds": 1.0, "checkpoint_seconds": 0.1, "total_steps": 10, "epochs_trained": 1.0,
                "dense_epochs_used": cfg["budget"] * cheap ** 2, "relative_train_flops": cheap ** 2,
                "num_train": 100, "dense_gflops_per_image": 0.5, "output_dir": cfg["output_dir"]}

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
    for name in ("bench_runs.json", "bench_tta.json", "bench_tta.md", "accuracy_vs_time.png", "accuracy_vs_flops.png"):
        assert (tmp_path / name).is_file(), name
    assert len(json.loads((tmp_path / "bench_runs.json").read_text())) == 8
    tta = {r["name"]: r for r in result["tta"]}
    assert tta["token-only"]["speedup"] > 1.9  # same accuracy in half the time
    # a quarter of the compute in half the time: 4x FLOPs to accuracy, twice dense's CPU time per FLOP
    assert tta["token-only"]["flops_speedup"] == pytest.approx(4.0)
    assert tta["token-only"]["cpu_speedup"] == pytest.approx(2.0)
    assert tta["token-only"]["cpu_per_flop_vs_dense"] == pytest.approx(2.0)
    saved = json.loads((tmp_path / "bench_tta.json").read_text())
    assert {"runs", "curves", "target", "tta"} <= set(saved) and saved["train_flops_per_forward"] == 3.0
    assert saved["runs"][0]["num_train"] == 100 and saved["runs"][0]["dense_gflops_per_image"] == 0.5
    assert saved["curves"]["dense"][0]["compute_mean"] == pytest.approx(1.0)
    assert {"speedup", "flops_speedup", "compute_to_target", "cpu_ms_per_gflop"} <= set(saved["tta"][0])
    assert "FLOPs-to-accuracy speedup" in (tmp_path / "bench_tta.md").read_text()


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


def test_a_sigterm_during_a_run_stops_the_bench_before_the_next_run(tmp_path, monkeypatch):
    # the request arrives while a run finishes (its trainer's handler sets the flag); the next run never starts
    import signal

    from trilevel.bench import budgets as budget_bench
    from trilevel.training.signals import STOP_REQUEST
    from trilevel.training.trainer import TrainingInterrupted

    started = []

    def fake_train(cfg):
        started.append(cfg["output_dir"])
        STOP_REQUEST.set()  # what the run's SIGTERM handler does (SigtermHandler)
        return {"finished": True, "val_top1": 50.0, "train_seconds": 1.0, "train_cpu_seconds": 1.0}

    from trilevel import training

    monkeypatch.setattr(training, "train", fake_train)
    try:
        with pytest.raises(TrainingInterrupted, match="before bench run 2/"):
            budget_bench.run_budget_bench({"dense": True, "seed": 0}, ["dense", "fast"], [1.0], [0], str(tmp_path))
        assert len(started) == 1
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the bench's handler is gone afterwards
    finally:
        STOP_REQUEST.clear()


def test_a_stored_run_is_reused_only_by_the_same_code_version(tmp_path, caplog):
    import yaml

    from trilevel.bench.budgets import _done_before
    from trilevel.version import code_version

    import logging

    caplog.set_level(logging.INFO, logger="trilevel.bench.budgets")
    cfg = training.TrainConfig(epochs=2).to_dict()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))

    def stored(version):
        (tmp_path / "summary.json").write_text(json.dumps({"finished": True, "val_top1": 50.0,
                                                           "code_version": version}))

    stored("git:" + "0" * 40)
    assert _done_before(str(tmp_path), cfg) is None  # another commit
    assert "--allow-mixed-code" in caplog.text
    assert _done_before(str(tmp_path), cfg, allow_mixed_code=True)["val_top1"] == 50.0
    stored(None)  # from before code versions were recorded
    assert _done_before(str(tmp_path), cfg) is None
    stored(code_version())
    expected = None if code_version().endswith("+dirty") else 50.0  # uncommitted code names no fixed version
    assert (_done_before(str(tmp_path), cfg) or {}).get("val_top1") == expected
    assert _done_before(str(tmp_path), {**cfg, "lr": 1.0}, allow_mixed_code=True) is None  # another recipe


def test_provenance_names_the_code_versions_and_the_intervals():
    from trilevel.bench.budgets import format_provenance

    one = format_provenance({"code_versions": ["git:abc"], "reported_set": "test"})
    assert "code version git:abc" in one and "95%" in one and "bootstrap" in one and "mixes" not in one
    two = format_provenance({"code_versions": ["git:abc", "git:def"], "reported_set": "test"})
    assert "mixes 2 code versions" in two


def test_with_a_validation_split_the_bench_also_reads_its_speedups_on_validation(tmp_path, monkeypatch):
    calls = []
    fake = _fake_train(calls)

    def with_split(cfg):
        out = fake(cfg)
        out.update(eval_set="val-split", test_top1=out["val_top1"] - 1.0, val_top1=out["val_top1"] + 0.5)
        return out

    monkeypatch.setattr(training, "train", with_split)
    result = run_budget_bench(training.TrainConfig(epochs=2).to_dict(), ["dense", "token-only"], [1, 2], [0, 1],
                              str(tmp_path))
    assert result["target"] == pytest.approx(80.5 - 1.0 - 0.3)  # test curves
    assert result["selection"]["target"] == pytest.approx(80.5 + 0.5 - 0.3)  # validation curves
    assert {r["name"] for r in result["selection"]["tta"]} == {"dense", "token-only"}
    md = (tmp_path / "bench_tta.md").read_text()
    assert "Selection on the validation split" in md and "95% CI" in md
    dense = next(r for r in result["tta"] if r["name"] == "dense")
    assert dense["speedup"] == 1.0 and dense["speedup_low"] is None  # the baseline's own row: no interval


def test_the_baseline_can_be_a_tuned_dense_row(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "train", _fake_train(calls))
    extra = {"dense-tuned": {"dense": True, "lr": 0.002}}
    base = training.TrainConfig(epochs=2).to_dict()
    result = run_budget_bench(base, ["dense", "dense-tuned", "token-only"], [1, 2], [0], str(tmp_path),
                              extra_configs=extra, baseline="dense-tuned")
    tta = {r["name"]: r for r in result["tta"]}
    assert result["baseline"] == "dense-tuned" and tta["dense-tuned"]["speedup"] == 1.0
    assert "over dense-tuned" in (tmp_path / "bench_tta.md").read_text()
    assert tta["dense-tuned"]["is_baseline"] and "| 1.00x (the baseline) |" in format_tta_table(result["tta"], 0.0)
    for bad, words in (("nope", "must be one of"), ("token-only", "dense configuration")):
        with pytest.raises(ValueError, match=words):
            run_budget_bench(base, ["dense", "token-only"], [1], [0], str(tmp_path), baseline=bad)
