"""The FLOP model under test for the default preset's whole stack, in training forwards (issue 26, item 5).

The default preset (``fast-patchdrop``) stacks timm's PatchDropout 0.3 at the input, the ``grow``
keep-ratio schedule (0.5 -> 1, 8 buckets, a dense tail), the ``bypass`` token fate (pruned tokens
skip the pruning blocks and rejoin before the last block) and [CLS]-attention scores taken from
the [CLS] query row. A run counts its training FLOPs with
:class:`trilevel.training.accounting.FlopMeter` (``per_image(keep_ratio, training=True, ...)``, the
analytic model of :func:`trilevel.forward_flops`). These tests build a tiny ViT and a tiny EVA-02
the way ``trilevel train`` does (``TrainConfig`` with the defaults, ``build_model``,
``resolve_config``, ``install_patch_dropout``, the meter built before the patch, then
:class:`trilevel.TriLevel`) and check, at several keep ratios, that the analytic count and the
meter's count both equal what ``torch.utils.flop_counter.FlopCounterMode`` counts for one
train-mode forward of the patched model.

The comparison is exact (``==``): FlopCounterMode counts only matrix products and convolutions
(``mm``/``addmm``/``bmm``/``convolution``/SDPA kernels), and the analytic model counts exactly
those (the patch embedding, every ``nn.Linear``, the two attention products, the forward-only
[CLS] row of ``Q K^T``, the head); the norms, softmax, GELU/SiLU, rotary embeddings, DropPath,
PatchDropout's gather and the token selection that it leaves out are elementwise or index ops that
FlopCounterMode does not count either. Every count is an integer far below 2**53, so the float sums
are exact. PatchDropout keeps ``max(1, int(N * (1 - 0.3)))`` patches in every training forward
(timm's ``patch_dropout_forward``), so the count does not depend on which patches it draws.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import trilevel
from trilevel.algorithm import install_patch_dropout
from trilevel.presets import AUTO_PATCH_DROP, DEFAULT_PRESET, PRESETS
from trilevel.settings import resolve_config
from trilevel.training.accounting import FlopMeter
from trilevel.training.config import TrainConfig
from trilevel.training.factory import build_model

IMG, CHANS, CLASSES, BATCH = 32, 1, 10, 2
ARCH = dict(img_size=IMG, patch_size=4, embed_dim=32, depth=6, num_heads=2)  # 64 patches; prune 1, 3, 4; rejoin 5
MODELS = {"vit": "vit_tiny_patch16_224", "eva": "eva02_tiny_patch14_224"}


class Run:
    """A tiny training run's model and FLOP accounting, set up in the trainer's order (``trilevel.training.build.build_run``).

    Attributes:
        cfg (TrainConfig): The run's settings: the defaults (the default preset) and a tiny model.
        resolved: The settings resolved for the model (:func:`trilevel.settings.resolve_config`).
        model: The patched model (PatchDropout installed).
        meter (FlopMeter): The trainer's FLOP meter, built on the stock model as the trainer builds it.
        algorithm (trilevel.TriLevel): The run's algorithm (it patched the model; ``on_step`` sets the ratios).
    """

    def __init__(self, name: str) -> None:
        torch.manual_seed(0)
        self.cfg = TrainConfig(model=name, **ARCH)
        model = build_model(self.cfg, CLASSES, CHANS, IMG)
        self.resolved = resolve_config(self.cfg, model)
        install_patch_dropout(model, self.resolved.config.patch_drop)  # before the meter reads the model
        self.meter = FlopMeter(model, settings=self.resolved.patch, in_chans=CHANS, img_size=IMG,
                               device=torch.device("cpu"))
        self.algorithm = trilevel.TriLevel(model, 16, epochs=1, config=self.resolved)  # patches the model
        self.model = model

    def counted(self) -> tuple:
        """FLOPs per image of one train-mode forward by FlopCounterMode, and the tokens each block saw.

        The attention modules take timm's unfused path for the count: FlopCounterMode does not count
        the CPU fused SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu``: 0 FLOPs), while
        the unfused path runs the same two products as ``matmul``. The arithmetic is the same.
        """
        for blk in self.model.blocks:
            blk.attn.fused_attn = False
        self.model.train()
        torch.manual_seed(1)  # which patches PatchDropout keeps; their number is fixed
        x = torch.randn(BATCH, CHANS, IMG, IMG)
        with FlopCounterMode(display=False) as counter:
            self.model(x)  # gradients on, as in a training step (only the forward is run)
        return counter.get_total_flops() / BATCH, trilevel.get_trilevel_info(self.model).tokens_per_block


@pytest.fixture(scope="module", params=list(MODELS))
def run(request) -> Run:
    """One set-up run per family (ViT, EVA-02), shared by the tests of this module."""
    return Run(MODELS[request.param])


def test_the_run_is_the_default_preset_s_stack(run):
    """The run under test is the default preset's stack: PatchDropout 0.3, grow schedule, bypass, [CLS] row."""
    cfg = run.resolved.config
    assert DEFAULT_PRESET == "fast-patchdrop"
    for key, value in PRESETS[DEFAULT_PRESET].items():
        assert getattr(run.cfg, key) == value, key
    assert cfg.patch_drop == AUTO_PATCH_DROP == 0.3
    drop = run.model.patch_drop
    assert isinstance(drop, trilevel.models.family_of(run.model).patch_dropout_class()) and drop.prob == 0.3
    patch = run.resolved.patch
    assert (patch.token_fate, patch.token_score, patch.attn_keep_ratio) == ("bypass", "cls-attention", 1.0)
    assert patch.prune_layers == (1, 3, 4) and patch.rejoin_layer == 5
    assert (cfg.ratio_schedule, cfg.keep_ratio, cfg.ratio_buckets) == ("grow", 0.5, 8)
    assert trilevel.is_patched(run.model)


@pytest.mark.parametrize("keep_ratio", [0.5, 0.6, 0.8, 1.0])
def test_flop_model_and_meter_equal_the_flop_counter_in_training(run, keep_ratio):
    """At a keep ratio set with ``trilevel.set_keep_ratios``: analytic count == meter == FlopCounterMode."""
    trilevel.set_keep_ratios(run.model, keep_ratio)
    counted, seen = run.counted()
    analytic = trilevel.forward_flops(run.model, keep_ratio, training=True, attn_keep_ratio=1.0)
    blocks = trilevel.tokens_per_block(run.model, keep_ratio, training=True)
    assert seen == [n for n, _ in blocks]  # the tokens each block saw are the ones the model counts
    assert seen[0] == 1 + int(64 * (1 - 0.3))  # PatchDropout kept 44 of 64 patches, [CLS] apart
    assert analytic == counted
    assert run.meter.per_image(keep_ratio, training=True, attn_keep_ratio=1.0) == counted
    assert run.meter.mean_tokens(keep_ratio) == sum(seen) / len(seen)


@pytest.mark.parametrize("progress", [0.0, 0.3, 0.6, 0.9])
def test_the_trainer_s_count_of_scheduled_steps_equals_the_flop_counter(run, progress):
    """A step at ``progress`` of the run: the ratios ``TriLevel.on_step`` sets, counted as the trainer counts them."""
    kr, akr = run.algorithm.on_step(progress)  # what the training loop does before each step
    assert kr == run.resolved.token_schedule(progress) and akr == 1.0
    counted, _ = run.counted()
    assert run.meter.per_image(kr, training=True, attn_keep_ratio=akr) == counted
    assert trilevel.forward_flops(run.model, training=True) == counted  # the model's own ratios


def test_the_counts_fall_with_the_keep_ratio_and_patch_dropout(run):
    """The compared counts are not degenerate: pruning and PatchDropout both cut the counted FLOPs."""
    trilevel.set_keep_ratios(run.model, 0.5)
    pruned, _ = run.counted()
    trilevel.set_keep_ratios(run.model, 1.0)
    full, _ = run.counted()
    assert pruned < 0.75 * full < full < run.meter.dense_flops  # dense_flops: evaluation, every patch
