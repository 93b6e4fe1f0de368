"""Window pruning and key masking on timm Swin: stock equivalence at ratio 1, hand re-statements of a
pruning block in both modes, gradients, state_dict, FLOPs, errors; the speed rows of both families."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from timm.models.swin_transformer import window_partition

import trilevel
from trilevel import forward_flops, get_keep_ratios, get_trilevel_info, set_keep_ratios, tokens_per_block
from trilevel.bench.speed import format_speed_table, speed_for_model
from trilevel.models.swin import merge_scores

from _contract import assert_state_dict_round_trip, counted_flops, outputs_under_one_seed, parameters_without_gradient
from _models import SWIN, images, tiny_swin, tiny_vit, unfused

# 14x14 grid of 4x4 windows: padded to 16x16, then 7x7 padded to 8x8
PADDED = dict(SWIN, patch_size=2, window_size=4)
# shifted-window masks built per forward (timm's dynamic_mask)
DYNAMIC = dict(SWIN, strict_img_size=False)


def _blocks(model):
    return [blk for stage in model.layers for blk in stage.blocks]


def _stage_ratios(model):
    """The keep ratio of each stage, from the model's one runtime state (blocks carry no attributes)."""
    assert not any("keep_ratio" in vars(blk) for blk in _blocks(model))
    return model.trilevel_state.keep_ratios


@pytest.mark.parametrize("config", [SWIN, PADDED])
@pytest.mark.parametrize("mode", ["window", "mask"])
@pytest.mark.parametrize("train", [True, False])
def test_ratio_one_equals_stock(config, mode, train):
    stock = tiny_swin(**{**config, "drop_path_rate": 0.1})
    patched = trilevel.patch(copy.deepcopy(stock), keep_ratio=1.0, mode=mode)
    a, b = outputs_under_one_seed([stock, patched], train, images())
    assert torch.equal(a, b)
    assert get_trilevel_info(patched).windows_per_block == [(16, 16), (16, 16), (4, 4), (4, 4)]


def _window_ids(blk, H, W):
    """Window index of every token of an H x W grid in this block's shifted, padded window grid (by hand)."""
    wh, ww = blk.window_size
    sh, sw = blk.shift_size
    cols = math.ceil(W / ww)
    rows = torch.arange(H).view(-1, 1)
    c = torch.arange(W).view(1, -1)
    return ((rows - sh) % H) // wh * cols + ((c - sw) % W) // ww


def _received(blk, x):
    """Column sums of the head-mean window attention of stock timm, read from its softmax, as a (B, H, W) map."""
    seen = []
    hook = blk.attn.softmax.register_forward_hook(lambda m, inp, out: seen.append(out))
    blk(x)
    hook.remove()
    B, H, W, _ = x.shape
    col = seen[0].mean(1).sum(1)  # (B * nW, A)
    ids = _window_ids(blk, H, W)
    wh, ww = blk.window_size
    # the token at (i, j) sits at ((i - sh) % H, (j - sw) % W) of the shifted grid, offset within its window
    sh, sw = blk.shift_size
    r = (torch.arange(H).view(-1, 1) - sh) % H
    c = (torch.arange(W).view(1, -1) - sw) % W
    slot = (r % wh) * ww + c % ww
    nW = col.shape[0] // B
    return torch.stack([col[b * nW + ids, slot] for b in range(B)])


def _block_and_input(block, mode="window", keep=0.5, **config):
    """Block ``block`` (model order) of a patched unfused tiny Swin in eval mode, a random input and random scores."""
    model = unfused(trilevel.patch(tiny_swin(**config), keep_ratio=keep, mode=mode)).eval()
    blk = _blocks(model)[block]
    H, W = blk.input_resolution
    return blk, torch.randn(2, H, W, blk.dim), torch.rand(2, H, W)


@pytest.mark.parametrize("config", [SWIN, PADDED, DYNAMIC])
@pytest.mark.parametrize("block", [0, 1, 3])
def test_dense_scoring_path_equals_stock_and_scores_are_received_attention(config, block):
    blk, x, _ = _block_and_input(block, **config)
    with torch.no_grad():
        out, scores, kept_windows, _ = blk.forward_sparse(x, None, emit=True, keep_ratio=0.5, mode="window")
        assert kept_windows is None
        assert torch.allclose(out, blk.forward(x), atol=1e-5)
        assert torch.allclose(scores, _received(blk, x), atol=1e-5)


@pytest.mark.parametrize("config", [SWIN, PADDED, DYNAMIC])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_window_pruning_block_by_hand(config, block):
    """A pruning block equals stock timm on the kept windows' tokens and the identity elsewhere, and
    keeps the windows with the largest summed scores."""
    blk, x, scores = _block_and_input(block, **config)
    H, W = blk.input_resolution
    with torch.no_grad():
        out, _, kept, _ = blk.forward_sparse(x, scores, emit=False, keep_ratio=0.5, mode="window")
        dense = blk.forward(x)
    ids = _window_ids(blk, H, W)
    nW = math.ceil(H / blk.window_size[0]) * math.ceil(W / blk.window_size[1])
    k = math.ceil(0.5 * nW)
    for b in range(2):
        totals = torch.zeros(nW).index_add_(0, ids.flatten(), scores[b].flatten())
        assert kept[b].tolist() == sorted(totals.topk(k).indices.tolist())
        inside = torch.isin(ids, kept[b]).unsqueeze(-1)
        assert torch.allclose(out[b], torch.where(inside, dense[b], x[b]), atol=1e-5)


@pytest.mark.parametrize("block", [1, 2, 3])
def test_mask_mode_block_by_hand(block):
    """Key masking equals stock timm with the low-scoring keys put at -inf (a query keeps its own key)."""
    blk, x, scores = _block_and_input(block, mode="mask", keep=0.3)
    H, W = blk.input_resolution
    with torch.no_grad():
        out, _, _, kept_tokens = blk.forward_sparse(x, scores, emit=False, keep_ratio=0.3, mode="mask")
        n_keep = math.ceil(0.3 * H * W)
        want = torch.zeros(2, H * W, dtype=torch.bool)
        want[torch.arange(2).unsqueeze(1), scores.flatten(1).topk(n_keep).indices] = True
        assert torch.equal(kept_tokens, want.view(2, H, W))
        shifted = torch.roll(want.view(2, H, W, 1).float(), shifts=(-blk.shift_size[0], -blk.shift_size[1]),
                             dims=(1, 2))
        keys = window_partition(shifted, blk.window_size).flatten(1) > 0  # (B * nW, A)
        A = keys.shape[1]
        allowed = keys.unsqueeze(1) | torch.eye(A, dtype=torch.bool)
        extra = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        stock_mask = blk.attn_mask
        blk.attn_mask = extra if stock_mask is None else stock_mask.repeat(2, 1, 1) + extra
        expected = blk.forward(x)
        blk.attn_mask = stock_mask
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["window", "mask"])
def test_model_windows_per_block_and_merged_scores(mode):
    model = trilevel.patch(tiny_swin(), keep_ratio=(0.5, 0.3), mode=mode).eval()
    with torch.no_grad():
        model(images(batch=2))
    info = get_trilevel_info(model)
    if mode == "window":  # the first block runs dense (no scores yet); then ceil(ratio * windows)
        assert info.windows_per_block == [(16, 16), (8, 16), (2, 4), (2, 4)]
        assert [None if k is None else tuple(k.shape) for k in info.kept_windows] == [None, (2, 8), (2, 2), (2, 2)]
    else:
        assert info.windows_per_block == [(16, 16)] * 2 + [(4, 4)] * 2
        assert [None if k is None else int(k[0].sum()) for k in info.kept_tokens] == [None, 392, 59, 59]
    assert torch.equal(merge_scores(torch.arange(12.0).view(1, 3, 4)), torch.tensor([[[10.0, 18.0], [17.0, 21.0]]]))


@pytest.mark.parametrize("mode,keep", [("window", 0.5), ("mask", 0.5), ("window", (0.4, 1.0))])
def test_gradients_reach_every_parameter(mode, keep):
    model = trilevel.patch(tiny_swin(drop_path_rate=0.1), keep_ratio=keep, mode=mode).train()
    torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 1, 2])).backward()
    assert parameters_without_gradient(model) == []


def test_gradient_checkpointing_gives_the_same_step():
    model = trilevel.patch(tiny_swin(), keep_ratio=0.5).train()
    plain = model(images())
    model.set_grad_checkpointing(True)
    ckpt = model(images())
    ckpt.sum().backward()
    assert torch.allclose(plain, ckpt, atol=1e-6)


def test_state_dict_round_trip_both_ways():
    assert_state_dict_round_trip(lambda seed: tiny_swin(seed=seed), lambda seed: trilevel.patch(
        tiny_swin(seed=seed), keep_ratio=0.7, mode=("window", "mask")[seed % 2]))


@pytest.mark.parametrize("config,mode,keep", [
    (SWIN, None, None), (SWIN, "window", 0.5), (SWIN, "window", (1.0, 0.5)), (SWIN, "window", (0.3, 1.0)),
    (SWIN, "mask", 0.5), (PADDED, "window", 0.5), (PADDED, None, None),
])
def test_flop_count_matches_the_flop_counter(config, mode, keep):
    model = tiny_swin(**config)
    if mode is not None:
        trilevel.patch(model, keep_ratio=keep, mode=mode)
    unfused(model).eval()
    assert forward_flops(model) == pytest.approx(counted_flops(model, images(batch=2)), rel=1e-9)


def test_flops_fall_with_the_ratio_and_mask_mode_saves_nothing():
    dense = forward_flops(tiny_swin())
    window = trilevel.patch(tiny_swin(), keep_ratio=0.5)
    assert forward_flops(window, keep_ratio=1.0) == dense
    assert forward_flops(window, keep_ratio=(1.0, 0.5)) < dense
    assert forward_flops(window) < 0.8 * dense
    assert forward_flops(trilevel.patch(tiny_swin(), keep_ratio=0.5, mode="mask")) == dense
    with pytest.raises(TypeError, match="Swin"):
        tokens_per_block(window)


def test_set_get_unpatch():
    model = trilevel.patch(tiny_swin(), keep_ratio=(0.5, 0.7))
    assert _stage_ratios(model) == (0.5, 0.7) and get_keep_ratios(model) == (0.5, 1.0)
    assert model.trilevel_state.settings.keep_ratio == (0.5, 0.7) and model.trilevel_state.mode == "window"
    assert [k for k in vars(model) if "trilevel" in k] == ["trilevel_state"]  # one runtime state, nothing loose
    assert trilevel.models.registry.family_of(model).settings(model) is model.trilevel_state.settings
    set_keep_ratios(model, 1.0)
    assert _stage_ratios(model) == (1.0, 1.0) and get_keep_ratios(model) == (1.0, 1.0)
    set_keep_ratios(model, (0.3, 0.6))
    assert _stage_ratios(model) == (0.3, 0.6)
    with pytest.raises(ValueError, match="stages"):
        set_keep_ratios(model, (0.5,))
    with pytest.raises(ValueError, match="attention level"):
        set_keep_ratios(model, 0.5, attn_keep_ratio=0.5)
    assert _stage_ratios(model) == (0.3, 0.6)  # unchanged after the errors
    set_keep_ratios(model, 1.0)
    model.eval()
    x = images()
    expected = model(x)
    trilevel.unpatch(model)
    assert type(model) is timm.models.swin_transformer.SwinTransformer
    assert type(model.layers[0].blocks[0]) is timm.models.swin_transformer.SwinTransformerBlock
    assert "trilevel_state" not in vars(model) and set(vars(model)) == set(vars(tiny_swin()))
    assert all(set(vars(b)) == set(vars(s)) for b, s in zip(_blocks(model), _blocks(tiny_swin())))
    assert torch.equal(model(x), expected)
    assert get_keep_ratios(model) == (1.0, 1.0)
    with pytest.raises(ValueError, match="not patched"):
        get_trilevel_info(model)
    with pytest.raises(ValueError, match="not patched"):
        set_keep_ratios(model, 0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(keep_ratio=0.0), "keep_ratio"), (dict(keep_ratio=(0.5,)), "1 entries"),
    (dict(keep_ratio=(0.5, 1.5)), r"keep_ratio\[1\]"), (dict(attn_keep_ratio=0.5), "attention level"),
    (dict(attn_keep_ratio=0.0), "attn_keep_ratio"), (dict(mode="tokens"), "mode"),
])
def test_bad_input_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trilevel.patch(tiny_swin(), **kwargs)


def test_family_found_and_the_paper_preset_refused():
    assert trilevel.family_of(tiny_swin()).name == "swin" and trilevel.family_of(tiny_vit()).name == "vit"
    with pytest.raises(ValueError, match="token_fate 'drop' is not implemented for swin models"):
        trilevel.patch(tiny_swin(), preset="paper")  # the paper drops tokens; a Swin skips whole windows


@pytest.mark.parametrize("name,kwargs,rows", [
    ("swin_tiny_patch4_window7_224", SWIN, 4),
    ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2,
                                    num_classes=10), 5),
])
def test_speed_rows_for_both_families_one_step(name, kwargs, rows):
    results = speed_for_model(name, kwargs, batch_size=2, rounds=1, steps_per_round=1, warmup_steps=0,
                              device="cpu", keep_ratio=0.5)
    assert len(results) == rows and results[0].name == "dense timm" and results[0].relative_flops == 1.0
    assert all(r.median_s > 0 for r in results) and min(r.relative_flops for r in results) < 1.0
    assert "dense timm" in format_speed_table(results)
    with pytest.raises(ValueError, match="not a supported model"):
        speed_for_model("resnet18", dict(num_classes=10), rounds=1, device="cpu")
