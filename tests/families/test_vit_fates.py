"""Token fates and token scores beyond the paper: bypass (tokens skip blocks and rejoin), random
selection; equivalence with stock timm at ratio 1, exact bypass arithmetic, gradients, FLOP counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import trilevel
from trilevel import forward_flops, get_trilevel_info, tokens_per_block
from trilevel.token_pruning import cls_attention_scores, num_kept_tokens

from _contract import counted_flops
from _models import images, tiny_vit, unfused


@pytest.mark.parametrize("fate, score", [("bypass", "cls-attention"), ("bypass", "random"), ("drop", "random")])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ratio_one_equals_stock_for_every_fate(fate, score, mode):
    stock = tiny_vit(drop_path_rate=0.1)
    patched = trilevel.patch(copy.deepcopy(stock), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0,
                             token_fate=fate, token_score=score)
    getattr(stock, mode)(), getattr(patched, mode)()
    torch.manual_seed(3)
    a = stock(images())
    torch.manual_seed(3)
    b = patched(images())
    assert torch.equal(a, b)


def test_bypass_is_exact():
    """Blocks 0..3, pruning in block 1 (keep 0.5), rejoin at block 3: the dropped tokens keep the
    value they had after block 1's attention residual and come back in their places."""
    model = unfused(tiny_vit(depth=4)).eval()
    ref = copy.deepcopy(model)
    trilevel.patch(model, preset="paper", prune_layers=[1], keep_ratio=0.5, attn_keep_ratio=1.0, token_fate="bypass",
                   rejoin_layer=3)
    x = images(batch=2)
    with torch.no_grad():
        got = model(x)
        t = ref.norm_pre(ref._pos_embed(ref.patch_embed(x)))
        t = ref.blocks[0](t)
        blk = ref.blocks[1]
        h = blk.norm1(t)
        B, N, C = h.shape
        qkv = blk.attn.qkv(h).reshape(B, N, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        scores = cls_attention_scores(((q[:, :, :1] * blk.attn.scale) @ k.transpose(-2, -1)).softmax(-1), 1)
        t = t + blk.attn(h)
        n_keep = num_kept_tokens(N - 1, 0.5)
        kept = scores.topk(n_keep, dim=1).indices.sort(dim=1).values
        full = t.clone()
        short = torch.cat([t[:, :1], t[:, 1:].gather(1, kept.unsqueeze(-1).expand(-1, -1, C))], dim=1)
        short = short + blk.mlp(blk.norm2(short))
        short = ref.blocks[2](short)
        full[:, :1] = short[:, :1]
        full[:, 1:] = full[:, 1:].scatter(1, kept.unsqueeze(-1).expand(-1, -1, C), short[:, 1:])
        want = ref.forward_head(ref.norm(ref.blocks[3](full)))
    assert torch.allclose(got, want, atol=1e-5)
    info = get_trilevel_info(model)
    assert info.tokens_per_block == [N, N, 1 + n_keep, N]


@pytest.mark.parametrize("fate, score, attn_keep", [
    ("bypass", "cls-attention", 1.0), ("bypass", "cls-attention", 0.5), ("bypass", "random", 1.0),
    ("drop", "random", 1.0), ("fuse", "cls-attention", 0.5),
])
def test_gradients_reach_every_parameter(fate, score, attn_keep):
    model = trilevel.patch(tiny_vit(depth=6), preset="paper", prune_layers=[1, 3], keep_ratio=0.5,
                           attn_keep_ratio=attn_keep, token_fate=fate, token_score=score).train()
    model(images()).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # bypass: the last block sees every token again; drop: it sees the pruned count
    last = get_trilevel_info(model).tokens_per_block[-1]
    assert (last == 50) == (fate == "bypass")


@pytest.mark.parametrize("fate, score, attn_keep", [
    ("bypass", "cls-attention", 1.0), ("bypass", "cls-attention", 0.3), ("bypass", "random", 1.0),
    ("drop", "random", 1.0), ("drop", "cls-attention", 0.3),
])
def test_flop_count_matches_the_flop_counter(fate, score, attn_keep):
    model = unfused(trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.6, attn_keep_ratio=attn_keep,
                                   token_fate=fate, token_score=score)).eval()
    assert forward_flops(model) == pytest.approx(counted_flops(model, images(batch=2)), rel=1e-6)


def test_bypass_token_counts_and_rejoin_default():
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.5, attn_keep_ratio=1.0, token_fate="bypass")
    assert model.trilevel_state.rejoin_layer == 11
    counts = tokens_per_block(model)
    assert counts[2] == (50, 50) and counts[3] == (50, 26) and counts[10] == (8, 8) and counts[11] == (50, 50)


def test_random_selection_is_random_and_keeps_the_count():
    model = trilevel.patch(tiny_vit(), preset="paper", prune_layers=[2], keep_ratio=0.5, attn_keep_ratio=1.0,
                           token_score="random").eval()
    kept = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            model(images(batch=1))
        kept.append(get_trilevel_info(model).kept_positions[0])
    assert kept[0].shape == kept[1].shape == (1, 25)
    assert not torch.equal(kept[0], kept[1])
    # no scoring pass: the FLOPs are those of the pruned token counts alone
    cls = trilevel.patch(tiny_vit(), preset="paper", prune_layers=[2], keep_ratio=0.5, attn_keep_ratio=1.0)
    assert forward_flops(model) < forward_flops(cls)


@pytest.mark.parametrize("kwargs, words", [
    (dict(token_fate="merge"), ["token_fate"]),
    (dict(token_score="norm"), ["token_score"]),
    (dict(token_fate="bypass", prune_layers=[3, 9], rejoin_layer=9), ["rejoin_layer", "after"]),
    (dict(token_fate="bypass", rejoin_layer=12), ["rejoin_layer"]),
    (dict(rejoin_layer=11), ["bypass"]),
])
def test_bad_fate_arguments(kwargs, words):
    with pytest.raises(ValueError) as info:
        trilevel.patch(tiny_vit(), preset="paper", **kwargs)
    for w in words:
        assert w in str(info.value)


def test_unpatch_restores_stock_after_bypass():
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.5, token_fate="bypass", token_score="random")
    trilevel.unpatch(model)
    assert not hasattr(model, "trilevel_state") and type(model.blocks[0]) is timm.models.vision_transformer.Block


def test_bypass_default_pruning_blocks_stop_before_the_rejoin_block():
    # depth 4: the default blocks are 1, 2, 3; block 3 is the rejoin block, so bypass prunes in 1 and 2
    model = trilevel.patch(tiny_vit(depth=4), preset="paper", keep_ratio=0.5, attn_keep_ratio=1.0, token_fate="bypass")
    assert model.trilevel_state.settings.prune_layers == (1, 2) and model.trilevel_state.rejoin_layer == 3
    with pytest.raises(ValueError, match="rejoin_layer"):  # blocks the user names are kept as named
        trilevel.patch(tiny_vit(depth=4), preset="paper", prune_layers=[1, 2, 3], token_fate="bypass")
    deep = trilevel.patch(tiny_vit(depth=12), preset="paper", token_fate="bypass")
    assert deep.trilevel_state.settings.prune_layers == (3, 6, 9)
