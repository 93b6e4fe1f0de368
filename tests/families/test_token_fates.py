"""A token fate registered from outside the package adds behaviour with no edit to trilevel.models.

``mean`` (tests/_toy.py, registered for one test by the ``mean_fate`` fixture) turns the tokens a pruning
block does not keep into one extra token, their plain mean. These tests run it through patched ViTs and
EVA-02s as the built-in fates run (forward, training steps, token counts, the FLOP model against the
FLOP counter, the connection mask), and check the errors around fates: an unknown name, a family that
does not declare the fate, a rejoining fate without ``rejoin``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

import trilevel
from trilevel import forward_flops, get_trilevel_info, tokens_per_block
from trilevel.token_pruning import TOKEN_FATES, TokenFate, num_kept_tokens, register_token_fate

from _contract import counted_flops, parameters_without_gradient
from _models import images, tiny_eva, tiny_swin, tiny_vit, unfused
from _toy import TOY, toy_model


def test_select_appends_the_mean_of_the_pruned_tokens(mean_fate):
    x, scores = torch.randn(2, 1 + 6, 4), torch.randn(2, 6)
    out, kept = mean_fate.select(x, scores, 0.5, 1)
    assert out.shape == (2, 1 + 3 + 1, 4) and kept.shape == (2, 3)
    for b in range(2):
        pruned = sorted(set(range(6)) - set(kept[b].tolist()))
        assert torch.allclose(out[b, -1], x[b, 1 + torch.tensor(pruned)].mean(dim=0))
    assert mean_fate.extra_tokens(6, 3) == 1 and mean_fate.extra_tokens(6, 6) == 0
    full, _ = mean_fate.select(x, scores, 1.0, 1)
    assert torch.equal(full, x)  # nothing pruned, nothing added


@pytest.mark.parametrize("make", [tiny_vit, tiny_eva], ids=["vit", "eva"])
@pytest.mark.parametrize("attn_keep", [1.0, 0.5])
def test_a_registered_fate_forwards_trains_and_is_counted(mean_fate, make, attn_keep):
    model = trilevel.patch(make(depth=4), preset="paper", prune_layers=[1, 2], keep_ratio=0.5,
                           attn_keep_ratio=attn_keep, token_fate="mean")
    assert model.trilevel_state.fate is mean_fate
    # in training: every parameter learns, and the blocks see the kept tokens and the one mean token
    model.train()
    model(images()).sum().backward()
    assert not parameters_without_gradient(model)
    info = get_trilevel_info(model)
    k1 = num_kept_tokens(49, 0.5)
    k2 = num_kept_tokens(k1 + 1, 0.5)  # the mean token is a patch token for the next pruning block
    assert info.tokens_per_block == [50, 50, 1 + k1 + 1, 1 + k2 + 1]
    assert [n for n, _ in tokens_per_block(model)] == info.tokens_per_block
    # positions: -1 marks the fate's token (EVA-02 gives it the identity rotation)
    assert (info.kept_positions[0][:, -1] == -1).all() and (info.kept_positions[0][:, :-1] >= 0).all()
    if attn_keep < 1.0:  # the mean token keeps every connection, as the fused token does
        mask = info.connection_masks[-1]
        assert mask.shape[-1] == 1 + k2 + 1 and mask[:, -1].all() and mask[:, :, -1].all()
    # the FLOP model counts what runs (unfused attention: the counter sees the matrix products)
    unfused(model).eval()
    assert forward_flops(model) == pytest.approx(counted_flops(model, images(batch=2)), rel=1e-6)


def test_a_registered_fate_at_ratio_one_is_stock(mean_fate):
    stock = tiny_vit()
    patched = trilevel.patch(copy.deepcopy(stock), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0,
                             token_fate="mean")
    x = images()
    assert torch.equal(stock.eval()(x), patched.eval()(x))


def test_a_registered_fate_learns_with_the_loop_object(mean_fate):
    model = tiny_vit(depth=4)
    algo = trilevel.TriLevel(model, num_examples=6, epochs=1, preset="paper", keep_ratio=0.5, token_fate="mean",
                             selector="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = images(batch=6), torch.arange(6) % 10
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    algo.on_epoch_start(0)
    for progress in (0.5, 0.7, 0.9):  # the paper's schedule is at its target after 11/30 of the run
        algo.on_step(progress)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.trilevel_state.settings.token_fate == "mean" and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert get_trilevel_info(model).kept_positions[0][:, -1].eq(-1).all()


def test_unknown_and_undeclared_fates_are_clear_errors(mean_fate, toy_family):
    with pytest.raises(ValueError, match=r"token_fate must be one of drop, fuse, bypass, mean; got 'merge'"):
        trilevel.patch(tiny_vit(), token_fate="merge")
    with pytest.raises(ValueError, match=r"token_fate 'mean' is not implemented for swin models; allowed: bypass"):
        trilevel.patch(tiny_swin(), token_fate="mean")
    with pytest.raises(ValueError, match=r"token_fate 'mean' is not implemented for toy models; allowed: drop"):
        trilevel.patch(toy_model(), keep_ratio=0.5, **{**TOY, "token_fate": "mean"})
    rejoin = r"rejoin_layer is for a token fate that rejoins \('bypass'\), not token_fate='mean'"
    with pytest.raises(ValueError, match=rejoin):
        trilevel.patch(tiny_vit(), token_fate="mean", rejoin_layer=11)


def test_unknown_fate_without_registration():
    assert "mean" not in TOKEN_FATES  # the fixture removed it
    with pytest.raises(ValueError, match=r"token_fate must be one of drop, fuse, bypass; got 'mean'"):
        trilevel.patch(tiny_vit(), token_fate="mean")


def test_registering_a_rejoining_fate_needs_set_aside_and_rejoin():
    @dataclass(frozen=True)
    class HalfDone(TokenFate):
        rejoins: bool = True

    with pytest.raises(ValueError, match="'half' rejoins, so it must implement set_aside and rejoin"):
        register_token_fate(HalfDone("half"))
    with pytest.raises(ValueError, match="takes a TokenFate with a name"):
        register_token_fate("mean")
    assert "half" not in TOKEN_FATES
