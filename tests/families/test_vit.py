import copy
import math

import pytest
import timm
import torch

import trilevel
from trilevel import default_prune_layers, get_keep_ratios, get_trilevel_info, is_patched, set_keep_ratios

from _contract import parameters_without_gradient
from _models import images, tiny_vit

VARIANTS = {
    "vit": dict(name="vit_tiny_patch16_224"),
    "deit_distilled": dict(name="deit_tiny_distilled_patch16_224"),
    "registers": dict(name="vit_tiny_patch16_224", reg_tokens=2),
    "layerscale_deit3": dict(name="vit_tiny_patch16_224", init_values=0.1, no_embed_class=True),
    "qk_norm": dict(name="vit_tiny_patch16_224", qk_norm=True),
    "avg_pool": dict(name="vit_tiny_patch16_224", global_pool="avg"),
}


def make(variant, **kw):
    spec = dict(VARIANTS[variant])
    return tiny_vit(spec.pop("name"), **{**spec, **kw})


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ratio_one_equals_stock(variant, mode):
    stock = make(variant, drop_path_rate=0.1)
    patched = trilevel.patch(copy.deepcopy(stock), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0)
    getattr(stock, mode)(), getattr(patched, mode)()
    x = images()
    torch.manual_seed(5)
    a = stock(x)
    torch.manual_seed(5)
    b = patched(x)
    if isinstance(a, tuple):  # distilled model in train mode returns (cls, dist) logits
        a, b = torch.stack(a), torch.stack(b)
    assert torch.allclose(a, b, atol=1e-5)


def test_prefix_tokens_read_from_model():
    m = trilevel.patch(make("deit_distilled"), preset="paper")
    assert m.trilevel_state.num_prefix_tokens == 2
    r = trilevel.patch(make("registers"), preset="paper")
    assert r.trilevel_state.num_prefix_tokens == 3


def _reference_logits(model, x, prune_layers, keep, attn_keep):
    """Independent per-example re-statement of SPEC sections 2-3 (loops, explicit masks)."""
    P = model.num_prefix_tokens
    outs = []
    for b in range(x.shape[0]):
        t = model.norm_pre(model._pos_embed(model.patch_embed(x[b:b + 1])))[0]
        mask = None
        for i, blk in enumerate(model.blocks):
            N = t.shape[0]
            at = blk.attn
            h = blk.norm1(t)
            q, k, v = at.qkv(h).reshape(N, 3, at.num_heads, at.head_dim).permute(1, 2, 0, 3)
            q, k = at.q_norm(q), at.k_norm(k)
            logits = (q @ k.transpose(-2, -1)) * at.scale
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            A = logits.softmax(-1)
            t = t + blk.ls1(at.proj((A @ v).transpose(0, 1).reshape(N, -1)))
            if i in prune_layers:
                Am = A.mean(0)
                n_patch = N - P
                n_keep = math.ceil(keep * n_patch)
                order = sorted(range(n_patch), key=lambda j: -float(Am[0, P + j]))[:n_keep]
                tok = list(range(P)) + [P + j for j in order]
                sub = Am[tok][:, tok]
                kk = math.ceil(n_keep * attn_keep)
                mask = torch.ones(len(tok), len(tok), dtype=torch.bool)
                for r in range(P, len(tok)):
                    row = sorted((float(v_) for v_ in sub[r, P:]), reverse=True)
                    thr = row[kk - 1]
                    for c in range(P, len(tok)):
                        mask[r, c] = float(sub[r, c]) >= thr
                t = t[tok]
            t = t + blk.ls2(blk.mlp(blk.norm2(t)))
        outs.append(model.forward_head(model.norm(t)[None]))
    return torch.cat(outs)


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "qk_norm"])
@pytest.mark.parametrize("keep,attn_keep", [(0.7, 0.3), (0.5, 1.0), (1.0, 0.4)])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_reference_semantics(variant, keep, attn_keep, fused):
    model = make(variant, depth=6).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    x = images(batch=2)
    with torch.no_grad():
        ref = _reference_logits(model, x, (1, 3, 4), keep, attn_keep)
        trilevel.patch(model, preset="paper", prune_layers=(1, 3, 4), keep_ratio=keep, attn_keep_ratio=attn_keep)
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_token_counts_compound_and_positions():
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.7, attn_keep_ratio=0.3).eval()
    x = images(batch=4)
    model(x)
    info = get_trilevel_info(model)
    # 49 patches -> 35 -> 25 -> 18 at blocks 3, 6, 9 (MLP of block 3 already sees 1 + 35)
    assert info.tokens_per_block == [50] * 4 + [36] * 3 + [26] * 3 + [19] * 2
    assert [tuple(p.shape) for p in info.kept_positions] == [(4, 35), (4, 25), (4, 18)]
    for earlier, later in zip(info.kept_positions, info.kept_positions[1:]):
        for b in range(4):
            assert set(later[b].tolist()) <= set(earlier[b].tolist())  # nested


def test_kept_tokens_are_those_with_highest_cls_attention():
    model = tiny_vit(depth=2).eval()
    x = images(batch=2)
    with torch.no_grad():
        # [CLS] attention of block 0, computed by hand with stock modules
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        blk = model.blocks[0]
        h = blk.norm1(t)
        B, N, _ = h.shape
        q, k, _ = blk.attn.qkv(h).reshape(B, N, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        cls = ((q @ k.transpose(-2, -1)) * blk.attn.scale).softmax(-1).mean(1)[:, 0, 1:]
        expected = cls.topk(25, dim=1).indices.sort(dim=1).values
        trilevel.patch(model, preset="paper", prune_layers=(0,), keep_ratio=0.5, attn_keep_ratio=1.0)
        model(x)
    assert torch.equal(get_trilevel_info(model).kept_positions[0], expected)


@pytest.mark.parametrize("keep,attn_keep,fuse", [(0.7, 0.3, False), (0.6, 1.0, True), (1.0, 0.5, False)])
def test_gradients_reach_every_parameter(keep, attn_keep, fuse):
    model = trilevel.patch(tiny_vit(depth=6, drop_path_rate=0.1), preset="paper", keep_ratio=keep,
                           attn_keep_ratio=attn_keep, token_fate="fuse" if fuse else "drop").train()
    out = model(images(batch=4))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert parameters_without_gradient(model) == []


def test_fuse_fate_adds_one_token():
    model = trilevel.patch(tiny_vit(depth=4), preset="paper", prune_layers=(1, 2), keep_ratio=0.5,
                           attn_keep_ratio=0.5, token_fate="fuse").eval()
    model(images())
    info = get_trilevel_info(model)
    # 49 -> 25 kept + 1 fused; then 26 -> 13 kept + 1 fused
    assert info.tokens_per_block == [50, 50, 27, 15]
    assert (info.kept_positions[0][:, -1] == -1).all()


def test_set_get_unpatch():
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.7, attn_keep_ratio=0.3)
    assert is_patched(model) and get_keep_ratios(model) == (0.7, 0.3)
    set_keep_ratios(model, keep_ratio=0.9)
    assert get_keep_ratios(model) == (0.9, 0.3)
    set_keep_ratios(model, attn_keep_ratio=0.5)
    assert get_keep_ratios(model) == (0.9, 0.5)
    model.eval()
    ref = copy.deepcopy(model)
    trilevel.unpatch(model)
    assert not is_patched(model) and type(model) is timm.models.vision_transformer.VisionTransformer
    assert type(model.blocks[0]) is timm.models.vision_transformer.Block
    set_keep_ratios(ref, 1.0, 1.0)
    x = images()
    assert torch.allclose(model(x), ref(x), atol=1e-6)


def test_default_prune_layers():
    assert default_prune_layers(12) == (3, 6, 9)
    assert default_prune_layers(24) == (6, 12, 18)
    m = trilevel.patch(tiny_vit(), preset="paper")
    assert [i for i, prune in enumerate(m.trilevel_state.pruning) if prune] == [3, 6, 9]


def test_unsupported_models_raise_type_error():
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(TypeError, match="ResNet is not a supported model; supported families: vit, eva, swin"):
        trilevel.patch(cnn, preset="paper")
    no_cls = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(TypeError, match="CLS"):
        trilevel.patch(no_cls, preset="paper")


@pytest.mark.parametrize("kwargs,match", [
    (dict(keep_ratio=0.0), "keep_ratio"), (dict(keep_ratio=1.2), "keep_ratio"),
    (dict(keep_ratio=float("nan")), "keep_ratio"), (dict(attn_keep_ratio=-0.1), "attn_keep_ratio"),
    (dict(attn_keep_ratio="0.3"), "attn_keep_ratio"), (dict(prune_layers=(3, 12)), "12"),
    (dict(prune_layers=(-1,)), "-1"), (dict(prune_layers=(3, 3)), "duplicate"),
    (dict(prune_layers=()), "at least one"), (dict(prune_layers=(1.5,)), "1.5"),
])
def test_bad_input_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trilevel.patch(tiny_vit(), preset="paper", **kwargs)


def test_set_keep_ratios_errors():
    with pytest.raises(ValueError, match="not patched"):
        set_keep_ratios(tiny_vit(), 0.5)
    model = trilevel.patch(tiny_vit(), preset="paper")
    with pytest.raises(ValueError, match="keep_ratio"):
        set_keep_ratios(model, keep_ratio=0.0)
    assert get_keep_ratios(model) == (0.7, 0.3)  # unchanged after the error
