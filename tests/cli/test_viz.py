"""Tests of trilevel.viz: pruning pictures, run reports, the accuracy-vs-time plot.

A tiny patched ViT (7x7 patch grid, pruning in blocks 1 and 2 at keep 0.5) on real Fashion-MNIST
validation images. The survival masks are checked as tensors (not pixels); the pictures are checked
to be real PNGs of a non-trivial size.
"""

import json
import math
import struct

import pytest
import timm
import torch

from trilevel import viz
from trilevel.checkpoint import save_checkpoint
from trilevel.data import build_datasets
from trilevel.example_selection import ForgettingSelector
from trilevel import get_trilevel_info, patch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = 7
N = GRID * GRID

TINY_ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=10)


def png_size(path):
    """(width, height) of a PNG file, after checking its signature and IHDR chunk."""
    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_png(path, min_w=300, min_h=200):
    w, h = png_size(path)
    assert w >= min_w and h >= min_h, f"{path} is only {w}x{h} pixels"


def tiny_model(seed=0, keep=0.5, attn_keep=0.5):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_ARCH)
    with torch.no_grad():  # peakier attention than the near-uniform init, so scores are well ordered
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return patch(model, preset="paper", prune_layers=(1, 2), keep_ratio=keep, attn_keep_ratio=attn_keep)


@pytest.fixture(scope="module")
def fmnist():
    _, val, info = build_datasets("fashion-mnist", aug="none")
    images = torch.stack([val[i][0] for i in range(4)])
    return images, info


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ------------------------------------------------------------------------------ survival masks


def test_stage_survival_masks_dimmed_count_is_49_minus_kept(model, fmnist):
    images, _ = fmnist
    model.eval()
    with torch.no_grad():
        model(images)
    info = get_trilevel_info(model)
    masks = viz.stage_survival_masks(info.kept_positions, (GRID, GRID))
    assert masks.shape == (4, 2, GRID, GRID) and masks.dtype == torch.bool
    for s, pos in enumerate(info.kept_positions):
        dimmed = (~masks[:, s]).flatten(1).sum(dim=1)
        assert dimmed.tolist() == [N - pos.shape[1]] * 4
        for b in range(4):  # survivors are exactly the kept positions
            assert sorted(torch.nonzero(masks[b, s].flatten()).flatten().tolist()) == sorted(pos[b].tolist())
    assert [p.shape[1] for p in info.kept_positions] == [math.ceil(0.5 * 49), math.ceil(0.5 * 25)]
    assert not (masks[:, 1] & ~masks[:, 0]).any(), "a later stage keeps a patch an earlier one dropped"


def test_stage_survival_masks_ignores_fused_and_checks_input():
    pos = torch.tensor([[0, 5, 8, -1], [1, 2, 3, -1]])
    masks = viz.stage_survival_masks([pos], 3)
    assert masks.shape == (2, 1, 3, 3)
    assert (~masks).flatten(1).sum(1).tolist() == [9 - 3, 9 - 3]
    assert masks[0, 0, 0, 0] and masks[0, 0, 1, 2] and masks[0, 0, 2, 2]
    with pytest.raises(ValueError, match="9"):
        viz.stage_survival_masks([torch.tensor([[9]])], 3)
    with pytest.raises(ValueError, match="empty"):
        viz.stage_survival_masks([], 3)
    with pytest.raises(ValueError, match="integer"):
        viz.stage_survival_masks([torch.zeros(1, 2)], 3)
    with pytest.raises(ValueError, match="batch size"):
        viz.stage_survival_masks([torch.zeros(1, 2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)], 3)
    with pytest.raises(ValueError, match="grid_size"):
        viz.stage_survival_masks([pos], (0, 3))


# ------------------------------------------------------------------------------ trace


def test_trace_pruning_scores_query_and_connections(model, fmnist):
    images, _ = fmnist
    model.train()
    trace = viz.trace_pruning(model, images)
    assert model.training, "training mode not restored"
    assert "forward_trilevel" not in vars(model.blocks[2]), "the capture wrapper was left on the block"
    assert trace.prune_layers == (1, 2) and trace.grid_size == (GRID, GRID)
    assert trace.kept_counts == [25, 13]
    kept_last = trace.survival[:, -1]
    for b in range(4):
        cls = trace.cls_attention[b]
        entered = ~torch.isnan(cls)
        assert entered.equal(trace.survival[b, 0]), "[CLS] scores cover the patches entering the last block"
        # the recomputed [CLS] attention is what the block pruned by: kept >= dropped
        kept_scores = cls[kept_last[b]]
        dropped_scores = cls[entered & ~kept_last[b]]
        assert kept_scores.min() >= dropped_scores.max() - 1e-6
        # default query: the kept patch with the highest [CLS] attention
        assert trace.query_kept[b]
        assert cls.flatten()[trace.query[b]] == kept_scores.max()
        # connections: a subset of the kept patches, at least ceil(13 * 0.5) of them
        att = trace.attended[b]
        assert not (att & ~kept_last[b]).any()
        assert int(att.sum()) >= math.ceil(13 * 0.5)
    assert trace.predictions.shape == (4,)


def test_trace_pruning_attention_level_off_attends_every_kept_patch(fmnist):
    images, _ = fmnist
    m = tiny_model(attn_keep=1.0)
    trace = viz.trace_pruning(m, images)
    assert trace.attended.equal(trace.survival[:, -1])


def test_trace_pruning_given_query(model, fmnist):
    images, _ = fmnist
    trace = viz.trace_pruning(model, images, query_patch=0)
    assert trace.query.tolist() == [0] * 4
    for b in range(4):
        assert bool(trace.query_kept[b]) == bool(trace.survival[b, -1, 0, 0])
        if not trace.query_kept[b]:
            assert not trace.attended[b].any()


def test_trace_pruning_errors(model, fmnist):
    images, _ = fmnist
    with pytest.raises(ValueError, match="not patched"):
        viz.trace_pruning(timm.create_model("vit_tiny_patch16_224", **TINY_ARCH), images)
    with pytest.raises(ValueError, match=r"\(K, C, H, W\)"):
        viz.trace_pruning(model, images[0])
    with pytest.raises(ValueError, match="channels"):
        viz.trace_pruning(model, images.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="query_patch 49"):
        viz.trace_pruning(model, images, query_patch=49)
    with pytest.raises(ValueError, match="query_patch"):
        viz.trace_pruning(model, images, query_patch=True)


# ------------------------------------------------------------------------------ pictures


def test_visualize_pruning_writes_png(model, fmnist, tmp_path):
    images, info = fmnist
    out = viz.visualize_pruning(model, images, info.mean, info.std, tmp_path / "sub" / "pruning.png")
    assert out == tmp_path / "sub" / "pruning.png"
    w, h = png_size(out)
    assert w >= 4 * 150 and h >= 4 * 150  # 4 columns (input, 2 stages, connections) x 4 rows
    out2 = viz.visualize_pruning(model, images[:2], info.mean, info.std, tmp_path / "q.png", query_patch=24,
                                 row_labels=["a", "b"])
    assert_png(out2)


def test_visualize_pruning_errors(model, fmnist, tmp_path):
    images, info = fmnist
    with pytest.raises(ValueError, match="mean has 3 values"):
        viz.visualize_pruning(model, images, (0.1, 0.2, 0.3), info.std, tmp_path / "x.png")
    with pytest.raises(ValueError, match="std must be positive"):
        viz.visualize_pruning(model, images, info.mean, 0.0, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png"):
        viz.visualize_pruning(model, images, info.mean, info.std, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="row_labels"):
        viz.visualize_pruning(model, images, info.mean, info.std, tmp_path / "x.png", row_labels=["a"])
    assert not (tmp_path / "x.png").exists()


def _run_checkpoint(path, dense=False, with_selector=True):
    """A checkpoint with the layout a training run writes (config, model, selector, epoch)."""
    from trilevel.training.config import TrainConfig
    from trilevel.training.factory import build_model

    cfg = TrainConfig(
        model="vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=4, num_heads=2, drop_path=0.0,
        dataset="fashion-mnist", workers=0, device="cpu", keep_ratio=0.5, attn_keep_ratio=0.5,
        prune_layers=[1, 2], dense=dense, epochs=2,
    )
    torch.manual_seed(0)
    model = build_model(cfg, 10, 1, 28)
    selector = ForgettingSelector(40, initial_remove_fraction=0.25, swap_fraction=0.05, update_every=1,
                                  max_updates=1, seed=0, num_epochs=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # three presentations with random outcomes: some forgetting events
        idx = selector.active_indices
        targets = torch.randint(0, 10, (len(idx),), generator=g)
        selector.record(idx, torch.randn(len(idx), 10, generator=g), targets)
    state = {  # the parts of a trilevel.training checkpoint that the pictures read
        "format": 2,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "algorithm": {"selector": selector.state_dict() if with_selector else None},
        "progress": {"epoch": 1},
    }
    save_checkpoint(state, path)
    return path, selector


def test_visualize_checkpoint(tmp_path):
    ckpt, _ = _run_checkpoint(tmp_path / "checkpoint.pt")
    out = viz.visualize_checkpoint(ckpt, 3, tmp_path / "vis.png", seed=1)
    w, h = png_size(out)
    assert w >= 4 * 150 and h >= 3 * 150
    with pytest.raises(ValueError, match="num_images"):
        viz.visualize_checkpoint(ckpt, 0, tmp_path / "v.png")
    with pytest.raises(ValueError, match="10001"):
        viz.visualize_checkpoint(ckpt, 10001, tmp_path / "v.png")
    dense, _ = _run_checkpoint(tmp_path / "dense.pt", dense=True)
    with pytest.raises(ValueError, match="dense"):
        viz.visualize_checkpoint(dense, 2, tmp_path / "v.png")
    with pytest.raises(FileNotFoundError):
        viz.visualize_checkpoint(tmp_path / "missing.pt", 2, tmp_path / "v.png")


# ------------------------------------------------------------------------------ run report


def _metrics_rows(epochs=4):
    rows = []
    for e in range(1, epochs + 1):
        rows.append(dict(
            epoch=e, train_loss=2.3 / e, train_acc=20.0 + 10 * e, val_top1=25.0 + 9 * e, val_loss=2.2 / e,
            epoch_seconds=10.0 + e, train_images=800, train_images_per_s=80.0 - e,
            active_examples=1000 - 50 * min(e, 2), mean_tokens_per_block=50.0 - 3 * e,
            keep_ratio=1.0 - 0.1 * e, attn_keep_ratio=1.0 - 0.15 * e, lr=1e-3 / e, skipped_steps=0,
        ))
    return rows


def test_report_run_synthetic_metrics(tmp_path):
    rows = _metrics_rows()
    # a resumed run may repeat an epoch: the last line wins; blank lines are fine
    lines = [json.dumps(r) for r in rows] + ["", json.dumps({**rows[-1], "val_top1": 99.0})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    paths = viz.report_run(tmp_path)
    names = [p.name for p in paths]
    assert names == ["report_loss.png", "report_accuracy.png", "report_throughput.png", "report_tokens.png",
                     "report_active_examples.png"]
    for p in paths:
        assert p.parent == tmp_path
        assert_png(p)
    parsed = viz.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in parsed] == [1, 2, 3, 4] and parsed[-1]["val_top1"] == 99.0


def test_report_run_forgetting_histogram(tmp_path):
    _, selector = _run_checkpoint(tmp_path / "checkpoint.pt")
    assert int(selector.forgetting_counts.sum()) > 0
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _metrics_rows(2)) + "\n")
    paths = viz.report_run(tmp_path)
    assert paths[-1] == tmp_path / "report_forgetting.png"
    assert_png(paths[-1])


def test_report_run_without_selector_state(tmp_path):
    _run_checkpoint(tmp_path / "checkpoint.pt", with_selector=False)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_metrics_rows(1)[0]) + "\n")
    assert "report_forgetting.png" not in [p.name for p in viz.report_run(tmp_path)]


def test_report_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        viz.report_run(tmp_path / "nowhere")
    metrics = tmp_path / "metrics.jsonl"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        viz.report_run(tmp_path)
    metrics.write_text("")
    with pytest.raises(ValueError, match=r"metrics\.jsonl is empty"):
        viz.report_run(tmp_path)
    metrics.write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        viz.report_run(tmp_path)
    metrics.write_text(json.dumps({"epoch": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        viz.report_run(tmp_path)
    metrics.write_text(json.dumps({"val_top1": 3}) + "\n")
    with pytest.raises(ValueError, match="epoch"):
        viz.report_run(tmp_path)


# ------------------------------------------------------------------------------ benchmark plot


def test_plot_accuracy_vs_time(tmp_path):
    rows = [
        dict(name="dense", val_top1=79.2, train_seconds=965.0),
        dict(name="tri-level 0.7", val_top1=73.0, train_seconds=591.0, extra="ignored"),
        dict(name="dense 5 ep", val_top1=74.2, train_seconds=597),
        dict(name="failed", val_top1=float("nan"), train_seconds=10.0),
    ]
    out = viz.plot_accuracy_vs_time(rows, tmp_path / "acc.png")
    assert_png(out)


def test_scatter_labels_of_nearby_points_do_not_overlap():
    import numpy as np

    from trilevel.viz.plots import label_offsets

    xs, ys = np.array([406.0, 409.0, 408.0, 536.0]), np.array([63.52, 63.58, 63.00, 40.0])
    offsets = label_offsets(xs, ys, ["evit", "example-only", "random-examples", "dense"])
    assert offsets[1] == 4.0 and offsets[3] == 4.0  # the top label and a far-away one stay put
    # the other two move down, each to its own line: no two label baselines within 11 pt
    assert offsets[0] < 4.0 and offsets[2] < 4.0
    scale = 200.0 / (ys.max() - ys.min())
    base = [(y - ys.min()) * scale + o for y, o in zip(ys[:3], offsets[:3])]
    assert min(abs(a - b) for i, a in enumerate(base) for b in base[i + 1:]) >= 11.0


def test_plot_accuracy_vs_time_errors(tmp_path):
    out = tmp_path / "a.png"
    with pytest.raises(ValueError, match="non-empty"):
        viz.plot_accuracy_vs_time([], out)
    with pytest.raises(ValueError, match=r"rows\[1\] has no 'train_seconds'"):
        viz.plot_accuracy_vs_time([dict(name="a", val_top1=1, train_seconds=1), dict(name="b", val_top1=2)], out)
    with pytest.raises(ValueError, match=r"rows\[0\]\['val_top1'\] must be a number"):
        viz.plot_accuracy_vs_time([dict(name="a", val_top1="high", train_seconds=1)], out)
    with pytest.raises(ValueError, match=r"train_seconds'\] must be >= 0"):
        viz.plot_accuracy_vs_time([dict(name="a", val_top1=1.0, train_seconds=-1.0)], out)
    with pytest.raises(ValueError, match="no row has finite"):
        viz.plot_accuracy_vs_time([dict(name="a", val_top1=float("nan"), train_seconds=1.0)], out)
    assert not out.exists()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_train_then_report_and_visualize(tmp_path):
    """A real (tiny) run through trilevel.training.train, then its report and picture."""
    from trilevel.training import train

    run = tmp_path / "run"
    train(dict(
        model="vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=4, num_heads=2, drop_path=0.0,
        dataset="fashion-mnist", train_subset=128, epochs=1, warmup_epochs=0.0, batch_size=64, workers=0, device="cpu",
        keep_ratio=0.5, attn_keep_ratio=0.5, prune_layers=[1, 2], ratio_warmup=0.0, ratio_decay_end=0.5,
        output_dir=str(run), log_interval=1000,
    ))
    names = [p.name for p in viz.report_run(run)]
    assert "report_accuracy.png" in names and "report_forgetting.png" in names
    assert_png(viz.visualize_checkpoint(run / "checkpoint.pt", 2, run / "pruning.png"))
