"""Property-based tests (hypothesis) of bad input everywhere: the training configuration and every
command's flags (train, eval, bench speed, bench train, visualize, report).

Any input either runs (for ``train`` and ``bench train``: reaches :func:`trilevel.training.train`,
stubbed here; for ``bench speed``: builds and patches its models and reaches the timing loop, stubbed) or exits with status 2 and a
one-line message naming the flag or its value. tyro's own boxed messages on flags it cannot parse
(exit 2) are fine; a Python traceback never is. ``eval``, ``visualize`` and ``report`` run for real on
a tiny checkpoint trained on a synthetic IDX dataset (so each example takes a fraction of a second).
Flags that spawn processes or size a model (``--workers``, the architecture) get bounded numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from trilevel import training  # noqa: E402
from trilevel.cli.bench import BenchTrainOptions, SpeedOptions  # noqa: E402
from trilevel.cli.eval import EvalOptions  # noqa: E402
from trilevel.cli.visualize import VisualizeOptions  # noqa: E402
from trilevel.training import TrainConfig  # noqa: E402

from _runs import exit_status  # noqa: E402

#: Examples per property (``TRILEVEL_PROPERTY_EXAMPLES=500`` for a deeper, randomised search).
EXAMPLES = int(os.environ.get("TRILEVEL_PROPERTY_EXAMPLES", "0")) or None
SETTINGS = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=EXAMPLES is None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=EXAMPLES or 20)


class ReachedTraining(BaseException):
    """Raised by the stubbed training entry points: the input was accepted (not an Exception, so no
    command handler catches it)."""


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------

WORDS = st.sampled_from([
    "", " ", "none", "None", "null", "nan", "NaN", "inf", "-inf", "1e309", "-1e309", "0", "-0", "-0.0", "-1",
    "1", "2", "0.5", "1.5", "1/3", "0/0", "1/0", "3,4", "a,b", ",", "1,,2", "0,0", "true", "False", "yes",
    "fp8", "bf16", "cuda", "cpu", "auto", "dense", "trilevel", "dense,dense", "dense,trilevel", "light",
    "deit", "forgetting", "1e3", "10000000000000000000000", "0x10", "--", "-", "--epochs", "é", "🙂",
])
NUMBERS = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True))
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
VALUE = st.one_of(WORDS, NUMBERS.map(str), TEXT)
SMALL = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["x", "1.5", "nan", "", "none"]))
SIZE = st.one_of(st.integers(-2, 40).map(str), st.sampled_from(["x", "7.5", "nan", "", "none", "inf"]))

#: Flags whose valid values start processes or build models: bounded numbers (still bad ones).
BOUNDED = {"workers": SMALL, "embed_dim": SIZE, "depth": SIZE, "num_heads": SIZE, "img_size": SIZE,
           "patch_size": SIZE, "in_chans": SMALL, "images": SIZE, "num_classes": SIZE, "batch_size": SIZE,
           "rounds": SMALL, "steps_per_round": SMALL, "warmup_steps": SMALL}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "recipe"]


def argv_for(names: list[str], extra=st.nothing()):
    """Strategy: argv of some of the flags ``names`` (in any order) with random values, maybe junk tokens."""
    def pair(name):
        value = BOUNDED.get(name, VALUE)
        return value.map(lambda v, n=name: [flag(n), v])

    pairs = st.lists(st.sampled_from(names).flatmap(pair), max_size=4)
    junk = st.lists(st.one_of(extra, WORDS), max_size=1)
    return st.tuples(pairs, junk).map(lambda t: [tok for p in t[0] for tok in p] + t[1])


def run(argv: list[str], capsys) -> tuple[object, str]:
    """``trilevel ARGV`` in process: its exit status (or "trained"), and its stderr."""
    try:
        code = exit_status(argv)
    except ReachedTraining:
        code = "trained"
    return code, capsys.readouterr().err


def check_outcome(argv: list[str], code, err: str, ok=(0, "trained")) -> None:
    """The property: it ran, or it exited 2 with tyro's box or one line naming a flag or a value."""
    hypothesis.event(f"outcome: {code}")
    assert "Traceback" not in err, err
    assert code in (*ok, 2), (argv, code, err[-2000:])
    if code != 2:
        return
    ours = [line for line in err.splitlines() if line.startswith("trilevel") and ": error:" in line]
    if not ours:
        assert "For full helptext" in err, err  # tyro's own message
        if "Error parsing" not in err:
            return  # a flag it could not read: its box names it
        message = " ".join(err.replace("│", " ").split()).lower()  # our ValueError, in tyro's box
    else:
        assert len(ours) == 1, err
        message = ours[0].lower()
    named = {a.lstrip("-").lower() for a in argv if a.startswith("--")}
    named |= {n.replace("-", "_") for n in named}
    values = {a.lower() for a in argv if len(a.strip()) >= 2 and not a.startswith("--")}
    assert any(n and n in message for n in named) or any(v in message for v in values), (argv, ours[0])


# ------------------------------------------------------------------------------------------------
# fixtures: the stubs, a tiny synthetic dataset and a checkpoint trained on it
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def stub_training(monkeypatch, tmp_path):
    def reached(*args, **kwargs):
        raise ReachedTraining()

    from trilevel.bench import speed

    def build_and_patch(make_model, variants, *args, **kwargs):  # what compare_speed does before timing
        stock = make_model()
        for *_, patch in variants:
            if patch is not None:
                patch(copy.deepcopy(stock))
        raise ReachedTraining()

    monkeypatch.setattr(training, "train", reached)
    monkeypatch.setattr(speed, "compare_speed", build_and_patch)
    monkeypatch.chdir(tmp_path)  # relative output paths land here


def _idx_folder(folder: Path, n: int = 48) -> Path:
    folder.mkdir(parents=True)
    pixels = bytes((i * 37) % 256 for i in range(784))
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + pixels * n)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n)))
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch tri-level run on 48 synthetic 28x28 images: its folder and checkpoint."""
    tmp = tmp_path_factory.mktemp("props")
    data = _idx_folder(tmp / "idx")
    training.train(dict(
        model="vit_tiny_patch16_224", embed_dim=32, depth=4, num_heads=2, patch_size=7, dataset="mnist",
        data_dir=str(data), epochs=1, batch_size=16, warmup_epochs=0.0, workers=0, device="cpu",
        output_dir=str(tmp / "run"), example_update_every=1, preset="paper",
    ))
    return tmp / "run"


# ------------------------------------------------------------------------------------------------
# the training configuration (Python API)
# ------------------------------------------------------------------------------------------------

PY_VALUES = st.one_of(
    st.none(), st.booleans(), NUMBERS, TEXT, WORDS, st.lists(st.integers(-3, 20), max_size=4),
    st.dictionaries(TEXT, st.integers(), max_size=2),
)


@SETTINGS
@given(overrides=st.dictionaries(st.sampled_from(TrainConfig.field_names()), PY_VALUES, max_size=4))
def test_train_config_accepts_or_names_the_field(overrides):
    try:
        cfg = TrainConfig.from_dict(overrides)
    except ValueError as e:
        message = str(e)
        assert "\n" not in message
        assert any(name.replace("_", "-") in message or name in message for name in overrides), (overrides, message)
        return
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # a valid config round-trips


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(argv=argv_for(TrainConfig.field_names(), st.sampled_from(["-c", "--config", "-v", "--resume"])))
def test_train_flags(argv, stub_training, capsys):
    code, err = run(["train", *argv], capsys)
    check_outcome(["train", *argv], code, err)


@SETTINGS
@given(argv=argv_for(field_names(BenchTrainOptions) + ["epochs", "keep_ratio", "seed", "budget", "dense"]))
def test_bench_train_flags(argv, stub_training, capsys):
    code, err = run(["bench", "train", *argv], capsys)
    check_outcome(["bench", "train", *argv], code, err)


def test_bench_train_repeated_configurations_are_an_error(stub_training, capsys):
    for configs in ("dense,dense", "dense,trilevel,trilevel"):
        code, err = run(["bench", "train", "--configs", configs], capsys)
        assert code == 2 and f"--configs {configs!r}: configurations repeat" in err
    code, err = run(["bench", "train", "--configs", "dense,trilevel", "--budgets", "1,1"], capsys)
    assert code == 2 and "--budgets '1,1': budgets repeat" in err
    code, err = run(["bench", "train", "--configs", "dense,dense", "--budgets", "1"], capsys)
    assert code == 2 and "--configs 'dense,dense': configurations repeat" in err


@SETTINGS
@given(argv=argv_for(field_names(SpeedOptions)))
def test_bench_speed_flags(argv, stub_training, capsys):
    code, err = run(["bench", "speed", *argv], capsys)
    check_outcome(["bench", "speed", *argv], code, err)


@FEW
@given(argv=argv_for([n for n in field_names(EvalOptions) if n != "checkpoint"]))
def test_eval_flags(argv, tiny_run, stub_training, capsys):
    code, err = run(["eval", "--checkpoint", str(tiny_run / "checkpoint.pt"), *argv], capsys)
    check_outcome(["eval", *argv], code, err)


@FEW
@given(argv=argv_for([n for n in field_names(VisualizeOptions) if n != "checkpoint"]))
def test_visualize_flags(argv, tiny_run, stub_training, capsys):
    code, err = run(["visualize", "--checkpoint", str(tiny_run / "checkpoint.pt"), *argv], capsys)
    check_outcome(["visualize", *argv], code, err)


@FEW
@given(checkpoint=st.one_of(WORDS, TEXT), rest=argv_for(["checkpoint", "data_dir", "val_subset"]))
def test_eval_and_visualize_bad_checkpoints(checkpoint, rest, stub_training, capsys):
    for command in ("eval", "visualize"):
        argv = [command, "--checkpoint", checkpoint, *rest]
        code, err = run(argv, capsys)
        check_outcome(argv, code, err, ok=())


@FEW
@given(argv=st.lists(st.one_of(WORDS, TEXT), min_size=0, max_size=3))
def test_report_arguments(argv, stub_training, capsys):
    code, err = run(["report", *argv], capsys)
    check_outcome(["report", *argv], code, err)


def test_report_and_eval_of_the_tiny_run(tiny_run, stub_training, capsys):
    code, err = run(["report", str(tiny_run)], capsys)
    assert code == 0, err
    code, err = run(["eval", "--checkpoint", str(tiny_run / "checkpoint.pt"), "--json"], capsys)
    assert code == 0, err
    code, err = run(["eval", "--checkpoint", str(tiny_run / "metrics.jsonl")], capsys)  # not a checkpoint
    assert code == 2 and "metrics.jsonl" in err
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert math.isfinite(summary["val_top1"])
