"""FlopAccounting (trilevel.training.callbacks.flops): each step's FLOPs and tokens per block into the epoch's sums."""

from __future__ import annotations

import math
from types import SimpleNamespace

from trilevel.training.callbacks import FlopAccounting


def state_for(img_size=None, tokens=10.0):
    calls = []

    def flops_per_image(keep_ratio, training=False, attn_keep_ratio=1.0, **kw):
        calls.append((keep_ratio, training, attn_keep_ratio, kw))
        return 100.0

    def mean_tokens(keep_ratio, side):
        calls.append(("tokens", keep_ratio, side))
        return tokens

    state = SimpleNamespace(
        step=SimpleNamespace(batch_size=8, keep_ratio=0.5, attn_keep_ratio=0.3, img_size=img_size, tokens=None),
        epoch=SimpleNamespace(acc=SimpleNamespace(flops=1.0, tokens_sum=2.0)),
        flops_per_image=flops_per_image, meter=SimpleNamespace(mean_tokens=mean_tokens),
        info=SimpleNamespace(img_size=28))
    return state, calls


def test_a_step_adds_batch_times_flops_and_its_tokens():
    state, calls = state_for()
    FlopAccounting().step_end(state)
    assert state.epoch.acc.flops == 1.0 + 8 * 100.0 and state.epoch.acc.tokens_sum == 12.0 and state.step.tokens == 10.0
    # a training forward at the step's ratios; no img_size argument without a curriculum
    assert calls == [(0.5, True, 0.3, {}), ("tokens", 0.5, None)]


def test_a_curriculum_step_is_counted_at_its_side():
    state, calls = state_for(img_size=14)
    FlopAccounting().step_end(state)
    assert calls == [(0.5, True, 0.3, {"img_size": 14}), ("tokens", 0.5, 14)]
    state, calls = state_for(img_size=28)  # the full side is the model's own
    FlopAccounting().step_end(state)
    assert calls[1] == ("tokens", 0.5, None)


def test_a_model_without_token_counts_sums_nan():
    state, _ = state_for(tokens=None)
    FlopAccounting().step_end(state)
    assert math.isnan(state.epoch.acc.tokens_sum) and state.step.tokens is None
