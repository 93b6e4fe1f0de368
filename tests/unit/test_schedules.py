import math

import pytest

from trilevel.schedules import KeepRatioSchedule, run_progress


def test_paper_schedule_shape():
    s = KeepRatioSchedule(0.7)  # warm-up 1/30, decay ends 11/30 (10 and 110 of 300 epochs)
    assert s(0.0) == 1.0
    assert s(10 / 300) == 1.0
    assert s(60 / 300) == pytest.approx(0.7 + 0.3 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # midpoint 0.85
    assert s(110 / 300) == 0.7
    assert s(1.0) == 0.7
    values = [s(i / 300) for i in range(301)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone non-increasing
    assert min(values) == 0.7


def test_per_iteration_not_per_epoch():
    s = KeepRatioSchedule(0.5, warmup=0.0, decay_end=1.0)
    assert s(0.1) != s(0.1 + 1e-4)


def test_target_one_is_constant():
    s = KeepRatioSchedule(1.0)
    assert {s(p / 10) for p in range(11)} == {1.0}


def test_resume_safe_pure_function():
    s = KeepRatioSchedule(0.3, warmup=0.1, decay_end=0.5)
    p = run_progress(3, 7, 20, 10)
    assert p == pytest.approx(3.35 / 10)
    assert s(p) == KeepRatioSchedule(0.3, warmup=0.1, decay_end=0.5)(p)


@pytest.mark.parametrize("kwargs", [dict(target=0.0), dict(target=1.5), dict(target=float("nan")),
                                    dict(target=0.5, warmup=-0.1), dict(target=0.5, warmup=1.0),
                                    dict(target=0.5, warmup=0.5, decay_end=0.2),
                                    dict(target=0.5, decay_end=1.2)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        KeepRatioSchedule(**kwargs)


def test_bad_progress_and_steps():
    with pytest.raises(ValueError, match="progress"):
        KeepRatioSchedule(0.5)(float("nan"))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        run_progress(0, 0, 0, 10)
    with pytest.raises(ValueError, match="epochs"):
        run_progress(0, 0, 10, 0)


# ------------------------------------------------------------------------ shapes beyond the paper
def test_grow_shapes():
    lin = KeepRatioSchedule(0.4, warmup=0.0, decay_end=0.8, shape="grow", curve="linear")
    assert lin(0.0) == 0.4 and lin(0.4) == pytest.approx(0.7) and lin(0.8) == 1.0 and lin(1.0) == 1.0
    cos = KeepRatioSchedule(0.4, warmup=0.1, decay_end=0.5, shape="grow")
    assert cos(0.05) == 0.4 and cos(0.3) == pytest.approx(0.7) and cos(0.6) == 1.0
    step = KeepRatioSchedule(0.4, warmup=0.0, decay_end=0.9, shape="grow", curve="step", stages=3)
    assert [step(p) for p in (0.0, 0.29, 0.31, 0.61, 0.89, 0.9)] == pytest.approx([0.4, 0.4, 0.6, 0.8, 0.8, 1.0])
    assert step.ends_dense() and not KeepRatioSchedule(0.7).ends_dense()


def test_dense_tail_and_decay_curves():
    tail = KeepRatioSchedule(0.5, warmup=0.0, decay_end=0.5, curve="linear", dense_tail=0.2)
    assert tail(0.25) == pytest.approx(0.75) and tail(0.79) == 0.5 and tail(0.8) == 1.0 and tail(1.0) == 1.0
    assert tail.ends_dense()
    # the paper's decay keeps EViT's expression exactly
    s = KeepRatioSchedule(0.7)
    t = (0.2 - 1 / 30) / (11 / 30 - 1 / 30)
    assert s(0.2) == 0.7 + (1.0 - 0.7) * 0.5 * (1.0 + math.cos(math.pi * t))


@pytest.mark.parametrize("kwargs", [dict(shape="wave"), dict(curve="sine"), dict(stages=0), dict(dense_tail=1.0),
                                    dict(dense_tail=-0.1)])
def test_bad_shape_arguments(kwargs):
    with pytest.raises(ValueError):
        KeepRatioSchedule(0.5, **kwargs)
