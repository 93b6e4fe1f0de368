"""How ``trilevel train`` builds a run's configuration, once: defaults < preset < checkpoint < file < flags."""

from __future__ import annotations

import dataclasses

import pytest

from trilevel.checkpoint import save_checkpoint
from trilevel.cli.train import parse_train_config, split_source_flags
from trilevel.presets import PRESETS
from trilevel.training import TrainConfig

from _runs import exit_status


def test_the_source_flags_are_taken_out_first_in_both_spellings():
    sources, rest = split_source_flags(["--lr", "1", "--preset=paper", "--resume", "a.pt", "--dense",
                                        "--preset", "fast"])
    assert sources == {"preset": "fast", "resume": "a.pt"} and rest == ["--lr", "1", "--dense"]
    assert split_source_flags(["--resume", "none"])[0] == {"resume": None}
    assert split_source_flags(["--epochs", "3"]) == ({}, ["--epochs", "3"])
    with pytest.raises(ValueError, match="--preset needs a value"):
        split_source_flags(["--preset"])


def test_a_preset_flag_applies_under_the_file_and_the_other_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("token-fate: fuse\nlr: 0.01\n")
    cfg = parse_train_config(["--preset", "paper", "-c", str(cfg_file), "--keep-ratio", "0.5"])
    assert cfg.preset == "paper" and cfg.attn_keep_ratio == PRESETS["paper"]["attn_keep_ratio"]
    assert cfg.token_fate == "fuse" and cfg.lr == 0.01  # the file over the preset
    assert cfg.keep_ratio == 0.5  # a flag equal to the default still wins over the preset
    assert cfg.epochs == 30  # untouched default
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_the_files_preset_applies_and_a_preset_flag_wins_over_it(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("preset: paper\nkeep-ratio: 0.6\n")
    from_file = parse_train_config(["-c", str(cfg_file)])
    assert from_file.preset == "paper" and from_file.token_fate == "drop" and from_file.keep_ratio == 0.6
    flagged = parse_train_config(["-c", str(cfg_file), "--preset", "fast"])
    assert flagged.preset == "fast" and flagged.token_fate == "bypass" and flagged.keep_ratio == 0.6
    assert parse_train_config([]) == TrainConfig()  # no source: the defaults, the default preset's


def test_a_bad_preset_flag_is_a_usage_error(capsys):
    assert exit_status(["train", "--preset", "turbo"]) == 2
    assert "preset must be one of paper, fast, fast-patchdrop; got 'turbo'" in capsys.readouterr().err


def test_the_checkpoint_lies_under_the_file_and_the_flags(tmp_path):
    stored = TrainConfig(preset="paper", epochs=4, output_dir=str(tmp_path / "old"), stop_after_epoch=2).to_dict()
    del stored["ratio_buckets"]  # an option the writing version did not have: read as the paper's
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint({"config": stored}, ckpt)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("workers: 0\nepochs: 5\n")
    cfg = parse_train_config(["--resume", str(ckpt), "-c", str(cfg_file), "--preset", "fast", "--epochs", "6"])
    assert cfg.resume == str(ckpt) and cfg.output_dir is None and cfg.stop_after_epoch is None  # not inherited
    assert cfg.token_fate == "drop" and cfg.ratio_buckets == 0  # the checkpoint over the preset flag
    assert cfg.workers == 0 and cfg.epochs == 6 and cfg.preset == "fast"
