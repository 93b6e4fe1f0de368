"""FLOP accounting: :class:`FlopAccounting` counts each step's forward FLOPs and tokens per block.

Each step adds ``batch x forward FLOPs per image`` at the step's keep ratios and input side (the
analytic FLOP model of the model's family, :class:`~trilevel.training.accounting.FlopMeter`,
timm's PatchDropout counted in training forwards) to the epoch's sums; the epoch's end folds them
into ``progress.flops_sum``, behind ``relative_train_flops`` and budgets.
"""

from __future__ import annotations

from ..events import Callback
from ..state import State

__all__ = ["FlopAccounting"]


class FlopAccounting(Callback):
    """At ``STEP_END``: the step's FLOPs into ``state.epoch.acc.flops``, its mean tokens per block into
    ``acc.tokens_sum`` (NaN for a model without a token count) and ``state.step.tokens``."""

    def step_end(self, state: State) -> None:
        step, acc = state.step, state.epoch.acc
        side = step.img_size
        acc.flops += step.batch_size * state.flops_per_image(
            step.keep_ratio, training=True, attn_keep_ratio=step.attn_keep_ratio,
            **({} if side is None else {"img_size": side}))
        tokens = state.meter.mean_tokens(step.keep_ratio, None if side == state.info.img_size else side)
        acc.tokens_sum += tokens if tokens is not None else float("nan")
        step.tokens = tokens
