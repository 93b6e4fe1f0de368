"""Checks shared by the contract tests of the patched families (Eva, Swin)."""

import torch
from torch.utils.flop_counter import FlopCounterMode


def outputs_under_one_seed(models, train: bool, x: torch.Tensor, seed: int = 5):
    """Each model's output on ``x`` in train or eval mode, every forward after the same ``manual_seed``."""
    outs = []
    for model in models:
        model.train(train)
        torch.manual_seed(seed)
        outs.append(model(x))
    return outs


def assert_state_dict_round_trip(make_stock, make_patched):
    """Same keys, strict loads both ways, the same tensors after the trip, no new parameters."""
    stock, patched, fresh = make_stock(0), make_patched(1), make_patched(2)
    assert list(patched.state_dict().keys()) == list(stock.state_dict().keys())
    stock.load_state_dict(patched.state_dict(), strict=True)
    fresh.load_state_dict(stock.state_dict(), strict=True)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), patched.state_dict().items()):
        assert torch.equal(a, b), name
    assert sum(p.numel() for p in patched.parameters()) == sum(p.numel() for p in stock.parameters())


def parameters_without_gradient(model):
    """Names of the parameters whose gradient is missing or all zero."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def counted_flops(model, x: torch.Tensor) -> float:
    """FLOPs per image of one no-grad forward, by ``FlopCounterMode`` (multiply-add = 2)."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / x.shape[0]
