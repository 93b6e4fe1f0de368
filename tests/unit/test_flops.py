import pytest

import trilevel
from trilevel import forward_flops, set_keep_ratios, tokens_per_block

from _contract import counted_flops
from _models import images, tiny_vit, unfused


def _counted(model):
    return counted_flops(unfused(model), images(batch=2))


def test_dense_matches_flop_counter():
    model = tiny_vit().eval()
    assert forward_flops(model) == _counted(model)


@pytest.mark.parametrize("keep,attn_keep", [(0.7, 0.3), (0.5, 0.5)])
def test_pruned_matches_flop_counter(keep, attn_keep):
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=keep, attn_keep_ratio=attn_keep).eval()
    assert forward_flops(model) == pytest.approx(_counted(model), rel=1e-6)


def test_token_counts_and_ratio_argument():
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=0.7, attn_keep_ratio=1.0)
    counts = tokens_per_block(model)
    assert counts[3] == (50, 36) and counts[4] == (36, 36) and counts[11] == (19, 19)
    assert forward_flops(model, keep_ratio=1.0) == forward_flops(tiny_vit())
    assert forward_flops(model) < 0.7 * forward_flops(model, keep_ratio=1.0)
    set_keep_ratios(model, keep_ratio=1.0)
    assert forward_flops(model) == forward_flops(tiny_vit())


@pytest.mark.parametrize("patched", [False, True])
def test_patch_dropout_counted_in_training_only(patched):
    model = tiny_vit(patch_drop_rate=0.3)
    if patched:
        model = trilevel.patch(model, preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0)
    kept = int(49 * 0.7)  # timm keeps int(N * (1 - prob)) of the N = 49 patches
    assert tokens_per_block(model, training=True)[0] == (1 + kept, 1 + kept)
    assert tokens_per_block(model)[0] == (50, 50)
    model.train()  # PatchDropout only acts in training mode; the count must match what runs
    assert forward_flops(model, training=True) == pytest.approx(_counted(model), rel=1e-6)
    assert forward_flops(model.eval()) == _counted(model)
