"""The tri-level patch of timm Eva (EVA-02): stock equivalence at ratio 1, a per-example re-statement
with rotary embeddings gathered by position, gradients, FLOPs, errors (the state_dict round trip: test_contract.py)."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

import trilevel
from trilevel import forward_flops, get_keep_ratios, get_trilevel_info, is_patched, set_keep_ratios, tokens_per_block
from trilevel.models.eva import gather_rope

from _contract import counted_flops, outputs_under_one_seed, parameters_without_gradient
from _models import images, tiny_eva, tiny_vit, unfused

VARIANTS = {
    "eva02": {},
    "registers": dict(num_reg_tokens=2),
    "layerscale": dict(init_values=0.1),
    "qk_norm_split_qkv": dict(qk_norm=True, qkv_fused=False),
    "no_rope_token_pool": dict(use_rot_pos_emb=False, global_pool="token"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("train", [True, False])
def test_ratio_one_equals_stock(variant, train):
    stock = tiny_eva(drop_path_rate=0.1, **VARIANTS[variant])
    patched = trilevel.patch(copy.deepcopy(stock), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0)
    a, b = outputs_under_one_seed([stock, patched], train, images())
    assert torch.equal(a, b)


def _reference_logits(model, x, prune_layers, keep, attn_keep, rope_rows=None):
    """Per-example re-statement with stock modules: each kept patch token brings its own rope row.

    Attention probabilities are read from the stock unfused path (a hook on ``attn_drop``);
    ``rope_rows(full_rope, kept)`` picks the rope rows (the right rule by default).
    """
    rope_rows = rope_rows or (lambda rope, kept: rope[kept])
    P = model.num_prefix_tokens
    outs, kept_all = [], []
    for b in range(x.shape[0]):
        t, rope = model._pos_embed(model.patch_embed(x[b:b + 1]))
        t = model.norm_pre(t)[0]
        kept, mask, stages = list(range(t.shape[0] - P)), None, []
        for i, blk in enumerate(model.blocks):
            probs = []
            hook = blk.attn.attn_drop.register_forward_hook(lambda m, inp, out: probs.append(inp[0]))
            r = None if rope is None else rope_rows(rope, torch.tensor(kept))
            a = blk.attn(blk.norm1(t)[None], rope=r, attn_mask=None if mask is None else mask[None, None])[0]
            hook.remove()
            t = t + (a if blk.gamma_1 is None else blk.gamma_1 * a)
            if i in prune_layers:
                Am = probs[0][0].mean(0)
                n_keep = math.ceil(keep * len(kept))
                order = sorted(sorted(range(len(kept)), key=lambda j: -float(Am[0, P + j]))[:n_keep])
                tok = list(range(P)) + [P + j for j in order]
                sub = Am[tok][:, tok]
                kk = math.ceil(n_keep * attn_keep)
                mask = torch.ones(len(tok), len(tok), dtype=torch.bool)
                for row in range(P, len(tok)):
                    thr = sorted((float(v) for v in sub[row, P:]), reverse=True)[kk - 1]
                    mask[row, P:] = torch.tensor([float(v) >= thr for v in sub[row, P:]])
                kept = [kept[j] for j in order]
                stages.append(kept)
                t = t[tok]
            m = blk.mlp(blk.norm2(t))
            t = t + (m if blk.gamma_2 is None else blk.gamma_2 * m)
        outs.append(model.forward_head(model.norm(t[None])))
        kept_all.append(stages)
    return torch.cat(outs), kept_all


@pytest.mark.parametrize("variant", ["eva02", "registers", "layerscale"])
@pytest.mark.parametrize("keep,attn_keep", [(0.6, 0.4), (0.5, 1.0), (1.0, 0.5)])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_reference_with_rope_gathered_by_position(variant, keep, attn_keep, fused):
    model = tiny_eva(**VARIANTS[variant]).eval()
    x = images(batch=2)
    with torch.no_grad():
        ref, kept = _reference_logits(unfused(copy.deepcopy(model)), x, (1, 2), keep, attn_keep)
        trilevel.patch(model, preset="paper", prune_layers=(1, 2), keep_ratio=keep, attn_keep_ratio=attn_keep)
        for blk in model.blocks:
            blk.attn.fused_attn = fused
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    got = get_trilevel_info(model).kept_positions
    for b in range(2):
        assert [p[b].tolist() for p in got] == kept[b]


def test_the_rope_check_can_fail():
    """Taking the first n rope rows instead of the kept tokens' rows changes the output."""
    model = unfused(tiny_eva()).eval()
    x = images(batch=2)
    with torch.no_grad():
        wrong, _ = _reference_logits(model, x, (1,), 0.5, 1.0, rope_rows=lambda rope, kept: rope[:len(kept)])
        trilevel.patch(model, preset="paper", prune_layers=(1,), keep_ratio=0.5, attn_keep_ratio=1.0)
        assert not torch.allclose(model(x), wrong, atol=1e-3)


def test_gather_rope_rows_and_fused_identity():
    rope = torch.randn(6, 8)
    positions = torch.tensor([[4, 0, -1], [1, 5, 2]])
    rows = gather_rope(rope, positions)
    assert rows.shape == (2, 1, 3, 8)
    assert torch.equal(rows[0, 0, 0], rope[4]) and torch.equal(rows[1, 0, 2], rope[2])
    assert torch.equal(rows[0, 0, 2], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 1: no rotation
    batched = rope.expand(2, 1, 6, 8)
    assert torch.equal(gather_rope(batched, positions), rows)
    assert gather_rope(None, positions) is None


@pytest.mark.parametrize("fate,score,attn_keep", [
    ("drop", "cls-attention", 0.3), ("fuse", "cls-attention", 0.5), ("bypass", "cls-attention", 1.0),
    ("drop", "random", 1.0),
])
def test_gradients_reach_every_parameter(fate, score, attn_keep):
    model = trilevel.patch(tiny_eva(drop_path_rate=0.1, init_values=0.1), preset="paper", prune_layers=(1, 2),
                           keep_ratio=0.5, attn_keep_ratio=attn_keep, token_fate=fate, token_score=score).train()
    torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 1, 2])).backward()
    assert parameters_without_gradient(model) == []


def test_patch_dropout_and_checkpointing_in_training():
    """PatchDropout hands a batched rope in shuffled order; pruning and gradient checkpointing follow it."""
    stock = tiny_eva(patch_drop_rate=0.3)
    patched = trilevel.patch(copy.deepcopy(stock), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0).train()
    stock.train()
    torch.manual_seed(2)
    a = stock(images())
    torch.manual_seed(2)
    assert torch.equal(a, patched(images()))
    trilevel.patch(patched, preset="paper", prune_layers=(1,), keep_ratio=0.5, attn_keep_ratio=0.5)
    torch.manual_seed(2)
    plain = patched(images())
    patched.set_grad_checkpointing(True)
    torch.manual_seed(2)
    ckpt = patched(images())
    ckpt.sum().backward()
    assert torch.allclose(plain, ckpt, atol=1e-6)
    assert get_trilevel_info(patched).kept_positions == []  # shuffled input: positions not reported
    assert get_trilevel_info(patched).tokens_per_block == [1 + 34, 1 + 34, 1 + 17, 1 + 17]


@pytest.mark.parametrize("fate,score,keep,attn_keep", [
    ("drop", "cls-attention", 0.6, 0.3), ("drop", "cls-attention", 0.6, 1.0), ("bypass", "cls-attention", 0.5, 0.5),
    ("bypass", "random", 0.5, 1.0), ("drop", "cls-attention", 1.0, 1.0),
])
def test_flop_count_matches_the_flop_counter(fate, score, keep, attn_keep):
    model = unfused(trilevel.patch(tiny_eva(), preset="paper", prune_layers=(1, 2), keep_ratio=keep,
                                   attn_keep_ratio=attn_keep, token_fate=fate, token_score=score)).eval()
    assert forward_flops(model) == pytest.approx(counted_flops(model, images(batch=2)), rel=1e-6)


def test_stock_flops_and_token_counts():
    stock = unfused(tiny_eva()).eval()
    assert forward_flops(stock) == counted_flops(stock, images(batch=2))
    model = trilevel.patch(tiny_eva(), preset="paper", prune_layers=(1, 2), keep_ratio=0.5, attn_keep_ratio=1.0)
    assert tokens_per_block(model) == [(50, 50), (50, 26), (26, 14), (14, 14)]
    assert forward_flops(model) < 0.7 * forward_flops(stock)


def test_set_get_unpatch():
    model = trilevel.patch(tiny_eva(), preset="paper", keep_ratio=0.7, attn_keep_ratio=0.3)
    assert is_patched(model) and get_keep_ratios(model) == (0.7, 0.3)
    set_keep_ratios(model, keep_ratio=1.0, attn_keep_ratio=1.0)
    model.eval()
    x = images()
    expected = model(x)
    trilevel.unpatch(model)
    assert type(model) is timm.models.eva.Eva and type(model.blocks[0]) is timm.models.eva.EvaBlock
    assert not is_patched(model) and "keep_ratio" not in vars(model.blocks[0])
    assert "trilevel_rope" not in vars(model.blocks[0])
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("kwargs,match", [
    (dict(keep_ratio=0.0), "keep_ratio"), (dict(keep_ratio=float("nan")), "keep_ratio"),
    (dict(attn_keep_ratio="0.3"), "attn_keep_ratio"), (dict(prune_layers=(1, 4)), "4"),
    (dict(prune_layers=(1, 1)), "duplicate"), (dict(prune_layers=()), "at least one"),
    (dict(prune_layers=(1.5,)), "1.5"), (dict(token_fate="merge"), "token_fate"),
    (dict(token_score="norm"), "token_score"), (dict(rejoin_layer=3), "bypass"),
    (dict(token_fate="bypass", prune_layers=(2,), rejoin_layer=2), "rejoin_layer"),
])
def test_bad_input_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trilevel.patch(tiny_eva(), preset="paper", **kwargs)


def test_family_found_and_unsupported_variants_raise_type_errors():
    assert trilevel.family_of(tiny_eva()).name == "eva" and trilevel.family_of(tiny_vit()).name == "vit"
    with pytest.raises(TypeError, match="CLS"):
        trilevel.patch(tiny_eva(class_token=False, num_reg_tokens=1), preset="paper")
    no_cls = trilevel.patch(tiny_eva(class_token=False, num_reg_tokens=1), preset="paper", token_score="random")
    assert no_cls(images()).shape == (3, 10)
    pe = timm.create_model("vit_pe_core_tiny_patch16_384", img_size=32, patch_size=8, embed_dim=32, depth=2,
                           num_heads=2, num_classes=10)
    with pytest.raises(TypeError, match="AttentionRope"):
        trilevel.patch(pe, preset="paper")
