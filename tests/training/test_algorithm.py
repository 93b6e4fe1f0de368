"""trilevel.TriLevel: the events, the dense tail of the example level, loss weights, state, errors."""

from __future__ import annotations

import pytest
import torch

import trilevel
from trilevel.algorithm import TriLevelConfig
from trilevel.example_selection import dominant_indices

from _models import tiny_vit


def test_events_set_ratios_and_record():
    tl = trilevel.TriLevel(tiny_vit(depth=4), 100, epochs=4, keep_ratio=0.5, attn_keep_ratio=1.0,
                           ratio_warmup=0.0, ratio_decay_end=0.5, example_update_every=1)
    assert trilevel.is_patched(tl.model) and tl.sampler is not None and tl.num_active == 80
    tl.on_epoch_start(0)
    assert tl.on_step(0.25) == (pytest.approx(0.5 + 0.5 * 4 / 7), 1.0)  # 0.75 rounded to 8 levels of [0.5, 1]
    assert trilevel.get_keep_ratios(tl.model)[0] == pytest.approx(0.5 + 0.5 * 4 / 7)
    continuous = trilevel.TriLevel(tiny_vit(depth=4), 100, epochs=4, keep_ratio=0.5, attn_keep_ratio=1.0,
                                   ratio_warmup=0.0, ratio_decay_end=0.5, ratio_buckets=0)
    assert continuous.on_step(0.25) == (pytest.approx(0.75), 1.0)
    idx = torch.arange(8)
    assert tl.after_forward(idx, torch.randn(8, 10), torch.randint(0, 10, (8,))) is None
    assert int(tl.selector.presentations.sum()) == 8


def test_dense_tail_draws_every_example():
    tl = trilevel.TriLevel(tiny_vit(depth=4), 100, epochs=4, dense_tail=0.25, example_update_every=1)
    tl.on_epoch_start(2)
    assert len(tl.sampler) == 80
    tl.on_epoch_start(3)  # progress 0.75 >= 1 - 0.25: the tail
    assert sorted(tl.sampler) == list(range(100))
    assert tl.eval_ratios() == (1.0, 1.0)  # the run ends dense, so it evaluates dense


def test_loss_selector_returns_weights():
    tl = trilevel.TriLevel(tiny_vit(depth=4), 20, epochs=4, selector="loss", example_remove=0.5, seed=0)
    assert tl.reweights_loss
    loss = torch.linspace(0.1, 2.0, 20)
    tl.on_epoch_start(0)
    w = tl.after_forward(torch.arange(20), torch.randn(20, 10), torch.randint(0, 10, (20,)), loss)
    assert torch.equal(w, torch.ones(20))  # nothing pruned yet in epoch 0
    tl.on_epoch_start(1)
    w = tl.after_forward(torch.arange(20), torch.randn(20, 10), torch.randint(0, 10, (20,)), loss)
    kept_low = [i for i in tl.sampler if loss[i] < loss.mean()]
    assert all(w[i] == 2.0 for i in kept_low)  # 1 / (1 - 0.5)
    with pytest.raises(ValueError, match="per-example loss"):
        tl.after_forward(torch.arange(4), torch.randn(4, 10), torch.randint(0, 10, (4,)))


def test_infobatch_rescaling_keeps_the_expected_loss():
    """InfoBatch (Qin et al., ICLR 2024): dropping each below-mean example with probability r and
    weighting the kept ones by 1/(1-r) leaves the expected total loss unchanged."""
    loss = torch.linspace(0.1, 2.0, 40)
    totals = []
    for seed in range(300):
        sel = trilevel.LossSelector(40, prune_ratio=0.5, num_epochs=8, seed=seed)
        sel.set_epoch(0)
        sel.record(torch.arange(40), torch.randn(40, 3), torch.zeros(40, dtype=torch.long), loss=loss)
        sel.set_epoch(1)
        active = sel.active_indices
        totals.append(float((loss[active] * sel.weights[active]).sum()))
    mean = sum(totals) / len(totals)
    assert abs(mean - float(loss.sum())) < 0.03 * float(loss.sum())


def test_state_round_trip_and_settings_check():
    def make():
        return trilevel.TriLevel(tiny_vit(depth=4), 50, epochs=3, example_update_every=1, seed=1)

    a = make()
    a.on_epoch_start(0)
    a.after_forward(torch.arange(10), torch.randn(10, 10), torch.randint(0, 10, (10,)))
    a.on_epoch_start(1)
    b = make()
    b.load_state_dict(a.state_dict())
    assert b.digest() == a.digest() != make().digest()
    other = trilevel.TriLevel(tiny_vit(depth=4), 50, epochs=3, example_update_every=1, seed=1, keep_ratio=0.6)
    with pytest.raises(ValueError, match="keep_ratio"):
        other.load_state_dict(a.state_dict())


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown TriLevel settings"):
        trilevel.TriLevel(tiny_vit(depth=4), 10, epochs=2, keep_rate=0.5)
    with pytest.raises(ValueError, match="num_examples"):
        trilevel.TriLevel(tiny_vit(depth=4), epochs=2)
    with pytest.raises(ValueError, match="keep-ratio"):
        TriLevelConfig(keep_ratio=0)
    assert trilevel.TriLevel(tiny_vit(depth=4), epochs=2, selector="none").sampler is None


def test_mixup_outcomes_go_to_the_dominant_example():
    indices = torch.tensor([10, 11, 12, 13])
    labels = torch.tensor([0, 1, 2, 1])
    lam = torch.tensor([0.7, 0.3, 0.3, 0.7]).unsqueeze(1)  # per-row weights of the own label
    onehot = torch.nn.functional.one_hot(labels, 4).float()
    mixed = lam * onehot + (1 - lam) * onehot.flip(0)
    # row 0 own label 0 dominates; row 1 (partner row 2, label 2) partner dominates; row 2 likewise
    # (partner row 1); row 3 pairs label 1 with label 0 of row 0, own dominates
    assert dominant_indices(indices, labels, mixed).tolist() == [10, 12, 11, 13]
    same = torch.tensor([1, 1, 1, 1])
    mixed_same = torch.nn.functional.one_hot(same, 4).float()
    assert dominant_indices(indices, same, mixed_same).tolist() == [10, 11, 12, 13]
    with pytest.raises(ValueError):
        dominant_indices(indices, labels[:3], mixed)


def test_speedup_picks_the_keep_ratio_its_flop_model_gives():
    from trilevel.algorithm import resolve_speedup, schedule_flops

    cfg = TriLevelConfig(attn_keep_ratio=1.0, selector="none", ratio_schedule="grow", ratio_warmup=0.0,
                         ratio_decay_end=0.8, ratio_curve="linear", token_fate="bypass", speedup=1.3)
    model = trilevel.patch(tiny_vit(), preset="paper", keep_ratio=1.0, attn_keep_ratio=1.0, token_fate="bypass")
    resolved = resolve_speedup(model, cfg)
    dense = trilevel.forward_flops(model, 1.0, attn_keep_ratio=1.0)
    assert dense / schedule_flops(model, resolved, resolved.keep_ratio) >= 1.3
    assert dense / schedule_flops(model, resolved, resolved.keep_ratio + 0.01) < 1.3  # the largest such ratio
    with pytest.raises(ValueError, match="out of reach"):
        resolve_speedup(model, TriLevelConfig(attn_keep_ratio=1.0, token_fate="bypass", speedup=5.0))
    tl = trilevel.TriLevel(tiny_vit(), epochs=2, config=cfg)
    assert tl.config.keep_ratio == resolved.keep_ratio
    with pytest.raises(ValueError, match="speedup"):
        TriLevelConfig(speedup=0.5)


def test_presets():
    paper = TriLevelConfig.from_preset("paper")
    assert (paper.keep_ratio, paper.attn_keep_ratio, paper.token_fate, paper.selector) == (0.7, 0.3, "drop", "forgetting")
    fast = TriLevelConfig.from_preset("fast", keep_ratio=0.6)
    assert fast.preset == "fast" and fast.keep_ratio == 0.6
    assert trilevel.TriLevel(tiny_vit(depth=4), 10, epochs=2, preset="paper").config.attn_keep_ratio == 0.3
    with pytest.raises(ValueError, match="preset"):
        TriLevelConfig.from_preset("turbo")
    from trilevel.training import TrainConfig

    assert TrainConfig.from_dict({"preset": "paper", "keep-ratio": 0.5}).attn_keep_ratio == 0.3


def test_defaults_are_the_default_preset():
    """The defaults are the study's winner (fast-patchdrop); the paper's settings are one flag away."""
    from trilevel.algorithm import PRESETS
    from trilevel.presets import DEFAULT_PRESET
    from trilevel.training import TrainConfig

    for cfg in (TriLevelConfig(), TrainConfig()):
        assert {k: getattr(cfg, k) for k in PRESETS[DEFAULT_PRESET]} == PRESETS[DEFAULT_PRESET]
    paper = TrainConfig.from_dict({"preset": "paper"})
    assert {k: getattr(paper, k) for k in PRESETS["paper"]} == PRESETS["paper"]
    assert PRESETS["paper"] != PRESETS["fast"]


def test_default_stacks_timms_patch_dropout_where_the_model_has_the_slot():
    from timm.layers import PatchDropout

    from trilevel.presets import AUTO_PATCH_DROP, DEFAULT_PRESET, PRESETS
    from trilevel.training import TrainConfig

    assert DEFAULT_PRESET == "fast-patchdrop" and AUTO_PATCH_DROP == 0.3
    assert PRESETS["fast-patchdrop"] == {**PRESETS["fast"], "patch_drop": None}
    assert TrainConfig().patch_drop is None and TrainConfig(preset="fast").patch_drop == 0.0
    stock = tiny_vit(depth=4)
    keys = list(stock.state_dict())
    model = tiny_vit(depth=4)
    tl = trilevel.TriLevel(model, 10, epochs=2)  # the default
    assert tl.config.patch_drop == 0.3  # resolved for this model
    assert isinstance(model.patch_drop, PatchDropout) and model.patch_drop.prob == 0.3
    assert model.patch_drop.num_prefix_tokens == model.num_prefix_tokens == 1
    assert list(model.state_dict()) == keys  # no new parameters: checkpoints load into stock timm
    model.train()
    x = torch.randn(2, 17, 8)  # (B, 1 + 16 patch tokens, C)
    assert model.patch_drop(x).shape == (2, 1 + int(16 * 0.7), 8)  # timm keeps int(16 * (1 - 0.3)) = 11
    model.eval()
    assert torch.equal(model.patch_drop(x), x)  # the identity at evaluation
    plain = tiny_vit(depth=4)
    assert trilevel.TriLevel(plain, 10, epochs=2, preset="fast").config.patch_drop == 0.0
    assert isinstance(plain.patch_drop, torch.nn.Identity)
    explicit = tiny_vit(depth=4)
    trilevel.TriLevel(explicit, 10, epochs=2, patch_drop=0.5)
    assert explicit.patch_drop.prob == 0.5
    with pytest.raises(ValueError, match=r"patch-drop must be in \[0, 1\), got 1.0"):
        TriLevelConfig(patch_drop=1.0)


def test_patch_dropout_on_a_model_without_the_slot():
    from _models import tiny_swin

    from trilevel.algorithm import install_patch_dropout

    with pytest.raises(ValueError, match="patch-drop 0.3: Linear has no PatchDropout slot"):
        install_patch_dropout(torch.nn.Linear(2, 2), 0.3)
    install_patch_dropout(torch.nn.Linear(2, 2), 0.0)  # 0: nothing to install
    install_patch_dropout(torch.nn.Linear(2, 2), None)  # the default: nothing to install without the slot
    swin = tiny_swin()
    assert trilevel.TriLevel(swin, 10, epochs=2).config.patch_drop == 0.0  # the default: off for Swin
    assert not hasattr(swin, "patch_drop")
    with pytest.raises(ValueError, match="patch-drop 0.3: SwinTransformer has no PatchDropout slot"):
        trilevel.TriLevel(tiny_swin(), 10, epochs=2, patch_drop=0.3)


def test_default_patch_dropout_on_eva_is_timms_own_class_and_trains():
    from _models import tiny_eva

    stock = tiny_eva(patch_drop_rate=0.3)  # what timm builds for patch_drop_rate (the same weights)
    model = tiny_eva()
    trilevel.TriLevel(model, 10, epochs=2)
    assert type(model.patch_drop) is type(stock.patch_drop) and model.patch_drop.prob == 0.3
    x = torch.randn(3, 1, 28, 28)
    model.train()
    trilevel.set_keep_ratios(model, 0.5)
    logits = model(x)  # 49 patches -> 34 by PatchDropout, then pruned; rotary rows follow the kept tokens
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    trilevel.set_keep_ratios(model, 1.0)
    model.eval(), stock.eval()
    torch.testing.assert_close(model(x), stock(x))  # PatchDropout is the identity at evaluation
