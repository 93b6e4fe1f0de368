"""The extension points: a model family and a token score registered from outside the package.

A toy family (a 5-token model) and a toy token score (the L2 norm of each patch token), both in
tests/_toy.py, are registered for the duration of a test by the fixtures of tests/conftest.py and
removed after it. The code of the three "How to add ..." sections of docs/design.md (family, score,
fate) is the code of tests/_toy.py and tests/conftest.py (checked at the end).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import trilevel
from trilevel.models import registry
from trilevel.models.registry import ModelFamily, PatchSettings, register_family
from trilevel.presets import PRESETS, patch_defaults
from trilevel.token_pruning import TOKEN_SCORES, num_kept_tokens

from _contract import counted_flops
from _models import tiny_vit
from _toy import TOY, PrunedToyTokenModel, ToyFamily, ToyTokenModel, toy_images, toy_model

TESTS = Path(__file__).resolve().parents[1]
DESIGN = TESTS.parent / "docs" / "design.md"


# ------------------------------------------------------------------------------------- the toy family through the public API
def test_patch_finds_a_registered_family_and_patches_in_place(toy_family):
    model, x = toy_model(), toy_images()
    stock_logits = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert trilevel.family_of(model) is toy_family
    assert not trilevel.is_patched(model)

    out = trilevel.patch(model, keep_ratio=0.5, **TOY)
    assert out is model and type(model) is PrunedToyTokenModel and trilevel.is_patched(model)
    assert model.trilevel_state.settings == PatchSettings(prune_layers=(1,), keep_ratio=0.5, **TOY)  # the family's default
    assert model.state_dict().keys() == state.keys()

    logits = model(x)
    assert not torch.allclose(logits, stock_logits)
    kept = trilevel.get_trilevel_info(model).kept_positions
    assert len(kept) == 1 and kept[0].shape == (3, 2)
    # the two kept tokens are the two of largest norm entering block 1
    h = model.tokens(x)
    h = h + model.blocks[0](h).relu()
    expected = h[:, 1:].norm(dim=-1).topk(2, dim=1).indices.sort(dim=1).values
    assert torch.equal(kept[0], expected)
    masks = toy_family.survival_masks(model)
    assert [label for label, _ in masks] == ["block 1"] and masks[0][1].sum().item() == 3 * 2

    assert trilevel.unpatch(model) is model and type(model) is ToyTokenModel
    assert torch.equal(model(x), stock_logits)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_family_s_limits_are_enforced(toy_family):
    model = toy_model()
    with pytest.raises(ValueError, match=r"token_fate 'bypass' is not implemented for toy models; allowed: drop"):
        trilevel.patch(model, keep_ratio=0.5)  # the fast preset's fate
    with pytest.raises(ValueError, match=r"attention level is not implemented for toy models"):
        trilevel.patch(model, attn_keep_ratio=0.3, **TOY)
    with pytest.raises(ValueError, match=r"prune_layers index 3 is outside the model.s blocks \[0, 2\]"):
        trilevel.patch(model, prune_layers=[3], **TOY)
    assert not trilevel.is_patched(model)


def test_set_and_get_keep_ratios(toy_family):
    model, x = trilevel.patch(toy_model(), keep_ratio=0.5, prune_layers=[0, 2], **TOY), toy_images()
    assert trilevel.get_keep_ratios(model) == (0.5, 1.0)
    trilevel.set_keep_ratios(model, 0.25)
    assert trilevel.get_keep_ratios(model) == (0.25, 1.0)
    model(x)
    assert [p.shape[1] for p in trilevel.get_trilevel_info(model).kept_positions] == [1, 1]
    trilevel.set_keep_ratios(model, 1.0, 1.0)
    model(x)
    assert trilevel.get_trilevel_info(model).kept_positions == []  # ratio 1: no pruning (as in a ViT)
    with pytest.raises(ValueError, match="no attention level"):
        trilevel.set_keep_ratios(model, attn_keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"keep_ratio must be a number in \(0, 1\]"):
        trilevel.set_keep_ratios(model, 0.0)
    assert trilevel.get_keep_ratios(toy_model()) == (1.0, 1.0)  # stock
    with pytest.raises(ValueError, match="not patched"):
        trilevel.set_keep_ratios(toy_model(), 0.5)


def test_forward_flops_is_the_family_s_count_and_falls_with_the_ratio(toy_family):
    model, x = toy_model(), toy_images()
    dense = trilevel.forward_flops(model)
    assert dense == counted_flops(model, x)
    trilevel.patch(model, keep_ratio=0.5, **TOY)
    assert trilevel.forward_flops(model) == counted_flops(model, x) < dense
    counts = []
    for keep in (1.0, 0.75, 0.5, 0.25):
        trilevel.set_keep_ratios(model, keep)
        counts.append(trilevel.forward_flops(model))
        assert counts[-1] == counted_flops(model, x)
        assert trilevel.forward_flops(model, keep_ratio=keep) == counts[-1]
    assert counts[0] == dense and counts == sorted(counts, reverse=True) and len(set(counts)) == 4
    # settings assumed before patching: the family's count for them
    stock = toy_model()
    assert trilevel.forward_flops(stock, 0.25, settings=PatchSettings(keep_ratio=0.25, **TOY)) == counts[-1]


def test_the_family_counts_the_cls_row_only_for_scores_that_use_it(toy_family):
    x = toy_images()
    by_score = {}
    for score in ("cls-attention", "token-norm", "random"):
        model = trilevel.patch(toy_model(), keep_ratio=0.5, token_fate="drop", token_score=score)
        by_score[score] = trilevel.forward_flops(model)
        assert by_score[score] == counted_flops(model, x)
    assert by_score["token-norm"] == by_score["random"] == by_score["cls-attention"] - 2.0 * 4 * 8


def test_bench_speed_variants_run_for_a_registered_family(toy_family):
    from trilevel.bench.speed import compare_speed, family_variants

    variants = family_variants(toy_model(), keep_ratio=0.5)
    assert [v[0] for v in variants] == ["dense timm", "patched, ratios 1.0/1.0", "token 0.5 / attn 1.0"]  # no attention level
    rows = compare_speed(toy_model, variants, 4, (1, 8, 8), 3, rounds=1, steps_per_round=1, warmup_steps=0)
    assert rows[0].relative_flops == 1.0 and rows[2].relative_flops < 1.0 < rows[2].flops_speedup
    assert rows[2].relative_flops == pytest.approx(
        trilevel.forward_flops(toy_model(), 0.5, settings=PatchSettings(keep_ratio=0.5, token_fate="drop"))
        / trilevel.forward_flops(toy_model()))


def test_trilevel_drives_a_registered_family(toy_family):
    model, x = toy_model(), toy_images()
    tl = trilevel.TriLevel(model, 32, epochs=2, selector="none", keep_ratio=0.25, ratio_buckets=0, **TOY)
    assert tl.model is model and trilevel.is_patched(model) and tl.sampler is None
    assert tl.resolved.family == "toy" and tl.resolved.patch.prune_layers == (1,)
    seen = []
    for progress in (0.0, 0.4, 0.9):
        keep, attn = tl.on_step(progress)
        assert attn == 1.0 and keep == pytest.approx(tl.token_schedule(progress))
        assert trilevel.get_keep_ratios(model) == (keep, 1.0)
        model(x)
        seen.append([p.shape[1] for p in trilevel.get_trilevel_info(model).kept_positions])
    assert seen == [[num_kept_tokens(4, 0.25)], [num_kept_tokens(4, tl.token_schedule(0.4))], []]  # grow, dense tail
    assert seen[0][0] == 1 and seen[1][0] == 3
    assert tl.eval_ratios() == (1.0, 1.0)


def test_speedup_and_the_trainer_s_flop_meter_use_the_family_s_count(toy_family):
    from trilevel.settings import resolve_config, schedule_flops
    from trilevel.training.accounting import FlopMeter

    model = toy_model()
    config = trilevel.TriLevelConfig(speedup=1.05, selector="none", **TOY)
    resolved = resolve_config(config, model)
    assert resolved.family == "toy" and resolved.config.keep_ratio < 1.0
    dense = trilevel.forward_flops(model, 1.0)
    assert schedule_flops(model, resolved.config, resolved.config.keep_ratio, resolved.patch) <= dense / 1.05
    assert not trilevel.is_patched(model)  # resolving patches nothing

    meter = FlopMeter(model, resolved.patch, 1, 8, torch.device("cpu"))
    assert meter.dense_flops == dense
    assert meter.per_image(0.25) == trilevel.forward_flops(model, 0.25, settings=resolved.patch) < dense
    assert trilevel.models.describe_model(model).startswith("toy: 3 blocks, width 8")


def test_visualize_and_the_trainer_ask_the_family(toy_family, monkeypatch):
    from trilevel.training.factory import patch_side
    from trilevel.viz.pruning import pruning_figure
    from trilevel.viz.trace import trace_pruning

    model = trilevel.patch(toy_model(), keep_ratio=0.5, **TOY)
    assert not toy_family.traces_tokens and trilevel.family_of(tiny_vit()).traces_tokens
    with pytest.raises(ValueError, match="a toy model does not record"):
        trace_pruning(model, toy_images())
    fig = pruning_figure(model, toy_images(batch=2), 0.0, 1.0)  # drawn from the family's survival masks
    assert [ax.get_title() for ax in fig.axes[:2]] == ["input", "block 1: 50% ran"]
    assert patch_side(model) == 1 and patch_side(tiny_vit()) == 4  # the toy's Linear embedding has no patch_size
    monkeypatch.setattr(ToyFamily, "patch_size", lambda self, m: 4)
    assert patch_side(model) == 4


def test_family_of_an_unknown_model_names_the_registered_families(toy_family):
    with pytest.raises(TypeError, match=r"torch\.nn\.modules\.conv\.Conv2d is not a supported model") as err:
        trilevel.family_of(nn.Conv2d(1, 1, 1))
    names = [f.name for f in registry.families()]
    assert names[-1] == "toy" and {"vit", "eva", "swin"} <= set(names)
    assert "supported families: " + ", ".join(names) in str(err.value)
    with pytest.raises(TypeError, match="supported families: .*toy"):
        trilevel.patch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="supported families: .*toy"):
        trilevel.forward_flops(nn.Linear(2, 2))


def test_registering_replaces_by_name_and_rejects_non_families(toy_family):
    again = register_family(ToyFamily())
    assert again is not toy_family and [f.name for f in registry.families()].count("toy") == 1
    assert trilevel.family_of(toy_model()) is again
    with pytest.raises(ValueError, match="ModelFamily instance with a name"):
        register_family(ModelFamily())
    with pytest.raises(ValueError, match="ModelFamily instance with a name"):
        register_family(ToyFamily)  # the class, not an instance


def test_the_fixture_leaves_the_registry_as_it_found_it():
    assert "toy" not in [f.name for f in registry.families()]
    assert "token-norm" not in TOKEN_SCORES
    with pytest.raises(TypeError, match="is not a supported model"):
        trilevel.family_of(ToyTokenModel())


# ------------------------------------------------------------------------------------- the toy score on a timm ViT
def test_a_registered_token_score_selects_the_tokens_in_a_vit(token_norm_score):
    model = tiny_vit(depth=4).eval()
    with torch.no_grad():  # the attention branch of block 0 adds nothing: the scored tokens are the embedded patches
        model.blocks[0].attn.proj.weight.zero_()
        model.blocks[0].attn.proj.bias.zero_()
    grid = model.patch_embed.grid_size  # 7x7 patches of 4x4 pixels
    bright = [3, 10, 17, 24, 30, 41, 48]  # patch indices, row-major
    image = torch.zeros(2, 1, 28, 28)
    for rank, p in enumerate(bright):
        r, c = divmod(p, grid[1])
        image[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 50.0 + rank
    image[1] = -image[1]

    trilevel.patch(model, prune_layers=[0], keep_ratio=0.14, token_fate="drop", token_score="token-norm")
    with torch.no_grad():
        model(image)
    info = trilevel.get_trilevel_info(model)
    assert info.kept_positions[0].tolist() == [bright, bright]


def test_a_registered_token_score_is_exactly_top_k_by_its_value(token_norm_score):
    model = tiny_vit(depth=4).eval()
    stock = copy.deepcopy(model)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    trilevel.patch(model, prune_layers=[1], keep_ratio=0.3, token_fate="drop", token_score="token-norm")
    with torch.no_grad():
        model(x)
        # the tokens block 1 scores: after its attention residual (stock modules, by hand)
        h = stock.norm_pre(stock.patch_drop(stock._pos_embed(stock.patch_embed(x))))
        h = stock.blocks[0](h)
        blk = stock.blocks[1]
        h = h + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(h))))
    norms = h[:, model.num_prefix_tokens:].norm(dim=-1)
    k = num_kept_tokens(49, 0.3)
    info = trilevel.get_trilevel_info(model)
    assert torch.allclose(info.cls_scores[0], norms, atol=1e-5)  # the selection scores are the norms
    assert torch.equal(info.kept_positions[0], norms.topk(k, dim=1).indices.sort(dim=1).values)


def test_the_flop_model_counts_the_cls_row_only_for_scores_that_use_it(token_norm_score):
    model = tiny_vit()
    flops = {score: trilevel.forward_flops(model, 0.5, settings=PatchSettings(keep_ratio=0.5, token_fate="drop",
                                                                              token_score=score))
             for score in ("token-norm", "random", "cls-attention")}
    assert flops["token-norm"] == flops["random"] < flops["cls-attention"]


def test_a_registered_token_score_is_a_valid_option(token_norm_score):
    assert trilevel.TriLevelConfig(token_score="token-norm").token_score == "token-norm"
    assert trilevel.TriLevelConfig(preset="paper", token_score="token-norm").token_score == "token-norm"
    with pytest.raises(ValueError, match="token-norm") as err:
        trilevel.TriLevelConfig(token_score="token-entropy")
    for name in TOKEN_SCORES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match=r"token_score must be one of cls-attention, random, token-norm"):
        trilevel.patch(tiny_vit(), token_score="token-entropy")


def test_an_unregistered_token_score_is_rejected():
    assert "token-norm" not in TOKEN_SCORES
    with pytest.raises(ValueError, match="cls-attention") as err:
        trilevel.TriLevelConfig(token_score="token-norm")
    assert "random" in str(err.value)
    with pytest.raises(ValueError, match="token_score must be one of"):
        trilevel.patch(tiny_vit(), token_score="token-norm")


# ------------------------------------------------------------------------------------- patch settings
def test_patch_rejects_unknown_keywords_and_settings_with_overrides():
    with pytest.raises(ValueError, match=r"unknown patch settings \['keep'\]; allowed: .*keep_ratio"):
        trilevel.patch(tiny_vit(), keep=0.5)
    with pytest.raises(ValueError, match="pass settings or keyword overrides, not both"):
        trilevel.patch(tiny_vit(), PatchSettings(), keep_ratio=0.5)
    with pytest.raises(ValueError, match="preset must be one of paper, fast"):
        trilevel.patch(tiny_vit(), preset="slow")


def test_patch_settings_from_a_preset():
    paper = PatchSettings.from_preset("paper")
    assert paper == PatchSettings(**patch_defaults("paper"))
    assert (paper.keep_ratio, paper.attn_keep_ratio, paper.token_fate) == (0.7, 0.3, "drop")
    for key in ("keep_ratio", "attn_keep_ratio", "prune_layers", "token_fate", "token_score", "rejoin_layer"):
        assert getattr(paper, key) == PRESETS["paper"][key]
    assert PatchSettings.from_preset() == PatchSettings() == PatchSettings.from_preset("fast")
    assert PatchSettings.from_preset("paper", keep_ratio=0.5, prune_layers=[1, 2]) == replace(
        paper, keep_ratio=0.5, prune_layers=(1, 2))


def test_patch_defaults_to_fast_and_takes_the_paper_preset():
    fast, paper = tiny_vit(), tiny_vit()
    trilevel.patch(fast)
    trilevel.patch(paper, preset="paper")
    assert trilevel.get_keep_ratios(fast) == (0.5, 1.0) and fast.trilevel_state.settings.token_fate == "bypass"
    assert trilevel.get_keep_ratios(paper) == (0.7, 0.3) and paper.trilevel_state.settings.token_fate == "drop"
    assert paper.trilevel_state.settings == PatchSettings(prune_layers=(3, 6, 9), keep_ratio=0.7, attn_keep_ratio=0.3,
                                                          token_fate="drop", token_score="cls-attention")


def test_one_entry_per_verb():
    """The per-family functions, Swin's parallel API and the alias modules are gone: one registry API."""
    import importlib

    for name in ("patch_vit", "patch_eva", "patch_swin", "unpatch_vit", "unpatch_eva", "unpatch_swin",
                 "set_swin_keep_ratios", "get_swin_keep_ratios", "get_swin_info", "swin_forward_flops"):
        assert not hasattr(trilevel, name) and not hasattr(trilevel.models, name), name
    with pytest.raises(ImportError):
        importlib.import_module("trilevel.vit")
    flops = importlib.import_module("trilevel.flops")  # no lazy alias of the registry's counts
    assert not hasattr(flops, "forward_flops") and not hasattr(flops, "tokens_per_block")


# ------------------------------------------------------------------------------------- the docs show this code
def _section(title: str) -> str:
    text = DESIGN.read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/design.md has no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("title", ["How to add a model family", "How to add a token score", "How to add a token fate"])
def test_the_docs_snippets_are_the_tests_code(title):
    source = "\n".join((TESTS / name).read_text(encoding="utf-8") for name in ("_toy.py", "conftest.py"))
    blocks = re.findall(r"```python\n(.*?)```", _section(title), flags=re.S)
    assert blocks
    for block in blocks:
        for chunk in block.split("\n\n"):  # each paragraph of a snippet appears here verbatim
            if chunk.strip() and not chunk.lstrip().startswith(("from ", "import ", "#")):
                assert chunk.strip("\n") in source, \
                    f"docs/design.md ({title}) shows code not in tests/_toy.py or tests/conftest.py:\n{chunk}"
