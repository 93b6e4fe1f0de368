"""torch.compile of a patched model: at most one graph per keep-ratio bucket, compile time apart."""

from __future__ import annotations

import math

import pytest
import torch

import trilevel
from trilevel.algorithm import compile_model

from _models import images, tiny_vit


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_a_bucketed_run_compiles_at_most_once_per_bucket():
    torch._dynamo.reset()
    model = tiny_vit(depth=4)
    tl = trilevel.TriLevel(model, selector="none", epochs=1, keep_ratio=0.5, ratio_buckets=4)
    compiled = compile_model(model, buckets=4, backend="eager")
    x = images(batch=2)
    before = _graphs()
    ratios = set()
    for step in range(12):  # a whole run of 12 steps: the ratio moves through the buckets, then the dense tail
        ratios.add(tl.on_step(step / 12)[0])
        compiled(x).sum().backward()
    assert 1 < len(ratios) <= 4
    assert 1 <= _graphs() - before <= len(ratios)  # one graph per distinct ratio, not one per step


@pytest.mark.slow
def test_continuous_ratios_recompile():  # why the buckets exist (the check can fail)
    torch._dynamo.reset()
    model = tiny_vit(depth=4)
    tl = trilevel.TriLevel(model, selector="none", epochs=1, keep_ratio=0.5, ratio_buckets=0, dense_tail=0.0)
    compiled = compile_model(model, buckets=16, backend="eager")
    x = images(batch=2)
    before = _graphs()
    kept = set()
    for step in range(4):
        kept.add(tl.on_step(step / 4)[0])
        compiled(x)
    # a new ratio is a new graph (until dynamo's automatic dynamic shapes fall back to a dynamic one)
    assert len(kept) == 4 and _graphs() - before >= 3


@pytest.mark.slow
def test_trainer_reports_compile_seconds_apart(tmp_path, monkeypatch):
    import trilevel.algorithm as algorithm

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="eager"))
    torch._dynamo.reset()
    summary = trilevel.train(dict(model="vit_tiny_patch16_224", embed_dim=32, depth=4, num_heads=2, patch_size=7,
                                  train_subset=128, val_subset=64, epochs=1, batch_size=32, workers=0, device="cpu",
                                  compile=True, output_dir=str(tmp_path / "run")))
    assert summary["compile_seconds"] > 0 and math.isfinite(summary["val_top1"])
    assert algorithm.compile_model is compile_model
