"""The one keep-ratio check, the one block-index check, and the preset table as the one source of defaults."""

from __future__ import annotations

import dataclasses
import math

import pytest

from trilevel.options import check_block_indices, check_ratio
from trilevel.presets import CHECKPOINT_PRESET, DEFAULTS, PATCH_KEYS, PRESETS, layered_settings


@pytest.mark.parametrize("value", [0.5, 1, 1.0, 1e-9])
def test_check_ratio_accepts_numbers_in_the_half_open_interval(value):
    assert check_ratio("keep_ratio", value) == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_check_ratio_names_the_option_the_value_and_the_interval(value):
    with pytest.raises(ValueError, match=r"keep-ratio must be a number in \(0, 1\], got "):
        check_ratio("keep-ratio", value)


def test_check_ratio_takes_none_when_optional():
    assert check_ratio("eval-keep-ratio", None, optional=True) is None
    with pytest.raises(ValueError, match=r"\(0, 1\] or none, got 2"):
        check_ratio("eval-keep-ratio", 2, optional=True)


def test_check_block_indices_reads_text_and_sequences_and_sorts():
    assert check_block_indices("prune-layers", "9,3,6") == (3, 6, 9)
    assert check_block_indices("prune-layers", [6, 3]) == (3, 6)
    assert check_block_indices("prune_layers", (0, 11), depth=12) == (0, 11)
    for none in (None, "none", "default", ""):
        assert check_block_indices("prune-layers", none) is None


@pytest.mark.parametrize("value, depth, message", [
    ("a,b", None, r"prune-layers must be comma-separated block indices such as 3,6,9"),
    (5, None, r"prune-layers must be a sequence of block indices"),
    ([], None, r"prune-layers must name at least one block"),
    ([1.0], None, r"prune-layers entries must be block indices \(ints\), got 1.0"),
    ([True], None, r"prune-layers entries must be block indices \(ints\), got True"),
    ([-1], None, r"prune-layers index -1 is outside the blocks"),
    ([3], 3, r"prune-layers index 3 is outside the model's blocks \[0, 2\]"),
    ([3, 3], None, r"prune-layers has duplicate indices: \[3, 3\]"),
])
def test_check_block_indices_names_the_option_the_value_and_what_is_allowed(value, depth, message):
    with pytest.raises(ValueError, match=message):
        check_block_indices("prune-layers", value, depth)


def test_the_configurations_and_the_families_share_the_two_checks():
    from trilevel import TriLevelConfig
    from trilevel.models import common, registry

    assert common.check_ratio is check_ratio
    with pytest.raises(ValueError, match=r"prune-layers has duplicate indices"):
        TriLevelConfig(prune_layers=[3, 3])
    with pytest.raises(ValueError, match=r"keep-ratio must be a number in \(0, 1\], got 1.5"):
        TriLevelConfig(keep_ratio=1.5)
    with pytest.raises(ValueError, match=r"prune_layers index 4 is outside the model's blocks \[0, 3\]"):
        registry.check_indices([4], 4)


# ------------------------------------------------------------------------------ the preset table


def test_every_default_derives_from_the_preset_table():
    from trilevel import TriLevelConfig
    from trilevel.cli.bench import SpeedOptions
    from trilevel.models import PatchSettings
    from trilevel.schedules import KeepRatioSchedule
    from trilevel.training import TrainConfig

    for cls in (TriLevelConfig, TrainConfig):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert {k: defaults[k] for k in DEFAULTS} == dict(DEFAULTS)
    patch = {f.name: f.default for f in dataclasses.fields(PatchSettings)}
    assert {k: patch[k] for k in PATCH_KEYS} == {k: DEFAULTS[k] for k in PATCH_KEYS}
    paper = PRESETS["paper"]
    s = KeepRatioSchedule(0.5)
    assert (s.warmup, s.decay_end, s.shape, s.curve, s.dense_tail, s.buckets) == (
        paper["ratio_warmup"], paper["ratio_decay_end"], paper["ratio_schedule"], paper["ratio_curve"],
        paper["dense_tail"], paper["ratio_buckets"])
    speed = {f.name: f.default for f in dataclasses.fields(SpeedOptions)}
    assert (speed["keep_ratio"], speed["attn_keep_ratio"]) == (paper["keep_ratio"], paper["attn_keep_ratio"])


def test_layered_settings_puts_the_preset_between_the_base_and_the_layers():
    base = {"keep_ratio": 0.9, "lr": 1.0, "preset": None}
    assert layered_settings(base=base) == base
    out = layered_settings({"lr": 2.0}, {"preset": "paper", "token_fate": "fuse"}, base=base)
    assert out == {**PRESETS["paper"], "lr": 2.0, "preset": "paper", "token_fate": "fuse"}
    # the highest layer that names a preset picks it; None there means no preset
    assert layered_settings({"preset": "paper"}, {"preset": "fast"})["token_fate"] == "bypass"
    assert layered_settings({"preset": "paper"}, {"preset": None}) == {"preset": None}
    # an explicit preset wins over the layers' and does not set the preset field
    assert layered_settings({"preset": "fast"}, preset=CHECKPOINT_PRESET) == {**PRESETS["paper"], "preset": "fast"}
    with pytest.raises(ValueError, match="preset must be one of paper, fast, fast-patchdrop; got 'turbo'"):
        layered_settings({"preset": "turbo"})


def test_a_config_is_frozen():
    from trilevel.training import TrainConfig

    cfg = TrainConfig(preset="paper", keep_ratio=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.keep_ratio = 0.9  # type: ignore[misc]
    changed = dataclasses.replace(cfg, keep_ratio=0.9)  # a changed copy, validated, the preset not re-applied
    assert (changed.keep_ratio, changed.attn_keep_ratio, cfg.keep_ratio) == (0.9, 0.3, 0.5)
