"""A training checkpoint's configuration: reading it, and checking that a run may resume it.

A checkpoint written by :func:`trilevel.train` stores its run's configuration under ``"config"``.
:func:`stored_config` reads it over the preset that runs of older versions used
(:data:`~trilevel.presets.CHECKPOINT_PRESET`), :func:`config_from_checkpoint` reads it from a file,
and :func:`check_resume` compares it with the configuration of the run resuming it: only
:data:`RUNTIME_KEYS` may differ. The configuration itself is :mod:`trilevel.training.config`
(which re-exports these names).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping

from ..options import flag
from ..presets import CHECKPOINT_PRESET, layered_settings

__all__ = ["RUNTIME_KEYS", "check_resume", "config_from_checkpoint", "defaults_of", "stored_config"]

#: Configuration keys that may differ between a checkpoint and the run resuming it.
RUNTIME_KEYS = frozenset(
    {"resume", "output_dir", "workers", "log_interval", "device", "nonfinite", "data_dir", "stop_after_epoch",
     "bad_images", "eval_every", "checkpoint_every", "keep_last", "allow_world_size_change", "log_tensorboard",
     "log_wandb", "tensorboard_images_every", "compile"}
)


def config_from_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """The configuration stored in a checkpoint written by :func:`trilevel.train`, as a dict.

    Raises:
        FileNotFoundError: If the file does not exist.
        trilevel.checkpoint.CheckpointError: If it is not a readable checkpoint.
        ValueError: If it holds no trilevel training configuration.
    """
    from ..checkpoint import load_checkpoint

    return stored_config(load_checkpoint(path), path)


def stored_config(ckpt: Mapping[str, Any], path: Any) -> Dict[str, Any]:
    """The ``config`` entry of a loaded training checkpoint, as a new dict.

    The stored values are read over the :data:`~trilevel.presets.CHECKPOINT_PRESET` (paper)
    preset: a tri-level option missing from it is one the writing version did not have yet, and
    that run used the paper's value (the default until the ``fast`` preset became it).

    Raises:
        ValueError: If the checkpoint holds no configuration.
    """
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} is not a trilevel training checkpoint (no 'config' entry)")
    stored = {str(k).replace("-", "_"): v for k, v in config.items()}
    if stored.pop("fuse_inattentive", None) and "token_fate" not in stored:  # before token-fate existed
        stored["token_fate"] = "fuse"
    return layered_settings(stored, preset=CHECKPOINT_PRESET)


def defaults_of(config_type: type) -> Dict[str, Any]:
    """Every field of the dataclass ``config_type`` with a plain default, ``{name: default}``.

    For a configuration, the value a run of a version that did not have the option yet ran with
    (used to compare stored configurations).

    Args:
        config_type: A dataclass type (e.g. :class:`~trilevel.training.TrainConfig`).

    Returns:
        ``{field name: default}``; fields without a default or with a default factory are left out.
    """
    return {f.name: f.default for f in dataclasses.fields(config_type) if f.default is not dataclasses.MISSING}


def check_resume(config: Any, ckpt: Mapping[str, Any], checkpoint_format: int) -> None:
    """Check that ``config`` may resume the loaded training checkpoint ``ckpt``.

    Only :data:`RUNTIME_KEYS` may differ between the two configurations.

    Args:
        config: The resuming run's :class:`~trilevel.training.TrainConfig` (``resume`` names the checkpoint).
        ckpt: The loaded checkpoint.
        checkpoint_format: The layout version this code writes and reads.

    Raises:
        ValueError: Naming every setting that differs, or an unsupported checkpoint layout.
    """
    stored = stored_config(ckpt, config.resume)
    # An option the checkpoint's version did not have yet ran at its default.
    defaults = defaults_of(type(config))
    diffs = [
        f"{flag(k)}: checkpoint {stored.get(k, defaults.get(k))!r}, now {v!r}"
        for k, v in config.to_dict().items()
        if k not in RUNTIME_KEYS and stored.get(k, defaults.get(k)) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {config.resume}: the configuration differs from the checkpoint's in "
            f"{'; '.join(diffs)} (only {', '.join(sorted(flag(k) for k in RUNTIME_KEYS))} may change)"
        )
    if ckpt.get("format") != checkpoint_format:
        raise ValueError(
            f"{config.resume}: training-checkpoint format {ckpt.get('format', ckpt.get('engine_format'))!r} "
            f"cannot be resumed by this version (format {checkpoint_format}); it can still be evaluated"
        )
