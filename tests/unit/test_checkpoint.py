"""Tests of trilevel.checkpoint: atomic save, checked load, RNG capture/restore."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from trilevel.checkpoint import (
    CHECKPOINT_FORMAT,
    FORMAT_KEY,
    VERSION_KEY,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best_acc": 0.875,
        "config": {"name": "fashion-mnist", "keep": (0.7, 0.5), "tags": ["a", "b"], "none": None},
        "forgetting": torch.zeros(10, dtype=torch.int32),
        "format": 1,  # callers may use ordinary "format"/"version" keys of their own
        "version": "v2",
    }


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_round_trip(tmp_path):
    state = _state()
    path = save_checkpoint(state, str(tmp_path / "ckpt.pt"))
    assert path == tmp_path / "ckpt.pt" and path.is_file()
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    assert FORMAT_KEY not in loaded and VERSION_KEY not in loaded
    raw = torch.load(path, weights_only=True)
    assert raw[FORMAT_KEY] == CHECKPOINT_FORMAT and raw[VERSION_KEY] == 1
    # the loaded model state fits a fresh model
    torch.nn.Linear(4, 3).load_state_dict(loaded["model"])
    assert _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path) == {"epoch": 2}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_previous(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial data")
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(failure)):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_truncated_file(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "ckpt.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pt.*(truncated|corrupt)") as exc:
        load_checkpoint(path)
    assert isinstance(exc.value, ValueError)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_checkpoint(path)


class _Foreign:
    pass


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.write_bytes(pickle.dumps(_Foreign(), protocol=2)),  # refused unread
        lambda p: p.write_bytes(b"not a checkpoint at all " * 4),
        lambda p: torch.save({"model": {}}, p),  # a dict without our marker
        lambda p: torch.save({"format": CHECKPOINT_FORMAT, "model": {}}, p),  # not our key
        lambda p: torch.save({FORMAT_KEY: "other-tool", "model": {}}, p),
        lambda p: torch.save(torch.ones(2), p),  # not a dict
        lambda p: torch.save({FORMAT_KEY: CHECKPOINT_FORMAT, VERSION_KEY: 99}, p),  # future
    ],
    ids=["pickle-object", "garbage", "dict-no-marker", "plain-format-key", "other-format",
         "tensor", "future-version"],
)
def test_foreign_file(tmp_path, write):
    path = tmp_path / "foreign.pt"
    write(path)
    with pytest.raises(CheckpointError, match="foreign.pt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        save_checkpoint({"epoch": 1}, tmp_path / "no_such_folder" / "ckpt.pt")


def test_save_rejects_bad_state(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(ValueError, match="dict"):
        save_checkpoint([1, 2], path)
    with pytest.raises(ValueError, match="reserved.*'_trilevel_version'"):
        save_checkpoint({VERSION_KEY: 2}, path)
    with pytest.raises(ValueError, match=r"state\['extra'\]\['arr'\].*numpy.ndarray"):
        save_checkpoint({"extra": {"arr": np.zeros(3)}}, path)
    with pytest.raises(ValueError, match=r"state\['f'\]"):
        save_checkpoint({"f": lambda: 0}, path)
    assert not path.exists() and _leftovers(tmp_path) == []


def _draws() -> tuple:
    return (
        torch.rand(5),
        torch.randint(0, 1000, (3,)),
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
        np.random.rand(3),
        np.random.standard_normal(),
    )


def _same_draws(a: tuple, b: tuple) -> bool:
    return (
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]
        and np.array_equal(a[4], b[4]) and a[5] == b[5]
    )


def test_rng_capture_restore_reproduces_draws(tmp_path):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    # leave a cached Gaussian in Python's and NumPy's generators, which the state must carry
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    state = capture_rng_state()
    first = _draws()
    restore_rng_state(state)
    assert _same_draws(first, _draws())
    # through a checkpoint file (weights_only=True) as well
    path = save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    _draws()  # move all generators on
    restore_rng_state(load_checkpoint(path)["rng"])
    assert _same_draws(first, _draws())
    assert not _same_draws(first, _draws())


def test_restore_rejects_bad_state():
    good = capture_rng_state()
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match="dict"):
        restore_rng_state([1, 2])
    with pytest.raises(ValueError, match="'numpy'"):
        restore_rng_state({k: v for k, v in good.items() if k != "numpy"})
    with pytest.raises(ValueError, match="unknown key.*'jax'"):
        restore_rng_state({**good, "jax": 0})
    with pytest.raises(ValueError, match=r"\['torch'\].*uint8"):
        restore_rng_state({**good, "torch": torch.zeros(3)})
    bad_numpy = {**good["numpy"], "key": torch.zeros(5, dtype=torch.int64)}
    with pytest.raises(ValueError, match="malformed"):
        restore_rng_state({**good, "numpy": bad_numpy})
    assert torch.equal(torch.get_rng_state(), before)  # nothing was changed
