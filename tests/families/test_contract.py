"""The contract every registered model family meets, checked through the public API only.

One parametrised run over the families: ViT/DeiT, EVA-02, Swin, and the toy family of tests/_toy.py
(registered by its fixture for the test and removed after). Each is patched with ``trilevel.patch``
and driven with ``trilevel.set_keep_ratios`` / ``get_keep_ratios`` / ``forward_flops`` /
``is_patched`` / ``unpatch``; no family's own function is called. The contract:

- at keep ratio 1.0 (patched so, or set so at run time) the output is the stock model's, bit for bit,
  in eval and in train mode (drop path drawn from the same seed);
- the state_dict round trip: the same keys, strict loads both ways, no new parameter;
- in train mode at a keep ratio < 1, the gradient reaches every parameter;
- ``forward_flops`` equals ``FlopCounterMode`` (attention on its explicit path, which the counter
  sees: it does not count the CPU fused SDPA kernel), dense, at a keep ratio < 1 and set back to 1;
  the count of settings assumed before patching is the patched model's (Swin: a strict xfail, see
  ``SWIN_ASSUMED_MODE``);
- ``unpatch`` restores the stock classes and attributes of every module, and the stock output.

A family registered without a case here fails ``test_every_registered_family_has_a_case``. What is
particular to a family (variants, re-statements of its pruning, its options) stays in its own file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn as nn

import trilevel
from trilevel.models import families

from _contract import assert_state_dict_round_trip, counted_flops, outputs_under_one_seed, parameters_without_gradient
from _models import images, tiny_eva, tiny_swin, tiny_vit, unfused
from _toy import TOY, toy_images, toy_model


@dataclass(frozen=True)
class Case:
    """A family's stock model (by seed), its inputs, and patch settings at a keep ratio < 1."""

    family: str
    make: Callable[[int], nn.Module]
    inputs: Callable[[], torch.Tensor]
    pruned: dict = field(default_factory=dict)
    fixture: str = ""  # a fixture that registers the family (one from outside the package)


CASES = {
    # attention level on; the default token fate (bypass) and score ([CLS] attention)
    "vit": Case("vit", lambda seed: tiny_vit(seed=seed, drop_path_rate=0.1), images,
                dict(keep_ratio=0.5, attn_keep_ratio=0.5)),
    "eva": Case("eva", lambda seed: tiny_eva(seed=seed, drop_path_rate=0.1), images,
                dict(keep_ratio=0.5, attn_keep_ratio=0.5)),
    # window pruning (the default mode); no attention level
    "swin": Case("swin", lambda seed: tiny_swin(seed=seed, drop_path_rate=0.1), images, dict(keep_ratio=0.5)),
    # the token level only, tokens dropped, scored by the registered token-norm score
    "toy": Case("toy", toy_model, toy_images, dict(keep_ratio=0.5, **TOY), fixture="toy_family"),
}
ONE = dict(keep_ratio=1.0, attn_keep_ratio=1.0)


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    case = CASES[request.param]
    if case.fixture:
        request.getfixturevalue(case.fixture)
    return case


def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_every_registered_family_has_a_case(toy_family):
    assert sorted(f.name for f in families()) == sorted(CASES)


def test_the_case_is_a_stock_model_of_its_family(case):
    model = case.make(0)
    assert trilevel.family_of(model).name == case.family
    assert not trilevel.is_patched(model) and trilevel.get_keep_ratios(model) == (1.0, 1.0)
    patched = trilevel.patch(model, **case.pruned)
    assert patched is model and trilevel.is_patched(model)
    assert trilevel.get_keep_ratios(model) == (0.5, case.pruned.get("attn_keep_ratio", 1.0))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_keep_ratio_one_equals_stock(case, train):
    stock, x = case.make(0), case.inputs()
    settings = {**case.pruned, **ONE}
    patched_at_one = trilevel.patch(copy.deepcopy(stock), **settings)
    set_to_one = trilevel.patch(copy.deepcopy(stock), **case.pruned)
    trilevel.set_keep_ratios(set_to_one, 1.0, 1.0)
    want, *got = outputs_under_one_seed([stock, patched_at_one, set_to_one], train, x)
    for out in got:
        assert torch.equal(out, want)


def test_state_dict_round_trip_both_ways(case):
    assert_state_dict_round_trip(case.make, lambda seed: trilevel.patch(case.make(seed), **case.pruned))


def test_gradients_reach_every_parameter_below_ratio_one(case):
    model, x = trilevel.patch(case.make(0), **case.pruned).train(), case.inputs()
    torch.manual_seed(3)
    out = model(x)
    targets = torch.arange(x.shape[0]) % out.shape[-1]
    torch.nn.functional.cross_entropy(out, targets).backward()
    assert parameters_without_gradient(model) == []


def test_forward_flops_equal_the_flop_counter(case):
    x = case.inputs()[:2]
    stock = unfused(case.make(0)).eval()
    dense = trilevel.forward_flops(stock)
    assert dense == counted_flops(stock, x)

    model = unfused(trilevel.patch(case.make(0), **case.pruned)).eval()
    pruned = trilevel.forward_flops(model)
    assert pruned == pytest.approx(counted_flops(model, x), rel=1e-6)
    assert pruned < dense

    trilevel.set_keep_ratios(model, 1.0, 1.0)
    assert trilevel.forward_flops(model) == counted_flops(model, x) == dense


SWIN_ASSUMED_MODE = pytest.mark.xfail(strict=True, reason=(
    "Swin counts settings whose mode is unset (None, the default) as a stock model, dense, where the other families "
    "resolve the settings first (the patch resolves mode None to 'window'); the budget path passes resolved settings"))


@pytest.mark.parametrize("case", [c if c != "swin" else pytest.param(c, marks=SWIN_ASSUMED_MODE) for c in CASES],
                         indirect=True)
def test_forward_flops_of_settings_assumed_before_patching(case):
    """``forward_flops(stock, ratios, settings=...)`` (how budgets and ``--speedup`` plan) is the patched count."""
    settings = trilevel.PatchSettings.from_preset(**case.pruned)
    patched = trilevel.patch(case.make(0), settings)
    assumed = trilevel.forward_flops(case.make(0), settings.keep_ratio, attn_keep_ratio=settings.attn_keep_ratio,
                                     settings=settings)
    assert assumed == trilevel.forward_flops(patched) < trilevel.forward_flops(case.make(0))


def test_unpatch_restores_the_stock_classes(case):
    model, x = case.make(0), case.inputs()
    want = _eval_output(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stock = [(name, type(m), sorted(vars(m))) for name, m in model.named_modules()]

    trilevel.patch(model, **case.pruned)
    assert [type(m) for m in model.modules()] != [t for _, t, _ in stock]  # patching swaps classes
    model.train()(x)  # a pruned forward in each mode leaves its run-time state on the modules
    _eval_output(model, x)

    assert trilevel.unpatch(model) is model
    assert [(name, type(m), sorted(vars(m))) for name, m in model.named_modules()] == stock
    assert not trilevel.is_patched(model) and trilevel.get_keep_ratios(model) == (1.0, 1.0)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(_eval_output(model, x), want)
    assert trilevel.unpatch(model) is model  # a stock model is returned as is
