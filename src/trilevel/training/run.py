"""Rebuilding a finished (or paused) run from its checkpoint: one function for eval, visualize and tools."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .checkpoint_config import stored_config
from .config import TrainConfig

__all__ = ["LoadedRun", "load_run", "checkpoint_epoch"]


@dataclass
class LoadedRun:
    """A run rebuilt from its checkpoint by :func:`load_run`.

    Attributes:
        path: The checkpoint file.
        state: The loaded checkpoint dictionary.
        config: The run's configuration (overrides applied), validated.
        model: The rebuilt model (patched when tri-level) with the checkpoint's weights, in eval
            mode, on the requested device, keep ratios set to ``eval_ratios``.
        eval_ratios: ``(keep_ratio, attn_keep_ratio)`` used for evaluation; ``(1.0, 1.0)`` for dense.
        val_set: The validation set (no augmentation); items ``(image (C, H, W), target)``.
        data_info: The dataset's :class:`~trilevel.data.DataInfo`.
        epoch: Epochs completed when the checkpoint was written.
    """

    path: Path
    state: dict
    config: TrainConfig
    model: nn.Module
    eval_ratios: Tuple[float, float]
    val_set: Dataset
    data_info: Any
    epoch: int


def checkpoint_epoch(state: Mapping[str, Any]) -> int:
    """Epochs completed when a training checkpoint was written (0 if it does not say)."""
    progress = state.get("progress")
    if isinstance(progress, Mapping) and "epoch" in progress:
        return int(progress["epoch"])
    return int(state.get("epoch", 0))


def load_run(
    checkpoint: Union[str, os.PathLike],
    overrides: Optional[Mapping[str, Any]] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    ema: bool = False,
) -> LoadedRun:
    """Rebuild the model and validation set of a ``trilevel train`` checkpoint.

    Args:
        checkpoint: A ``checkpoint.pt`` written by :func:`trilevel.train`.
        overrides: Configuration fields to change before rebuilding (e.g. ``{"data_dir": ...}``;
            hyphens or underscores).
        device: ``auto``, ``cpu``, ``cuda`` or a ``torch.device``.
        ema: Load the EMA weights instead of the trained ones.

    Returns:
        The :class:`LoadedRun`.

    Raises:
        FileNotFoundError: Missing checkpoint or data.
        ValueError: Not a training checkpoint (``CheckpointError`` is a ``ValueError``), no model
            weights, ``ema`` without EMA weights, or an invalid override (named).
    """
    from ..checkpoint import load_checkpoint
    from ..data import build_datasets
    from ..models import patch, set_keep_ratios
    from ..settings import resolve_config
    from .distributed import resolve_device
    from .factory import build_model

    if isinstance(device, str):
        from .config import ALLOWED_DEVICES

        if device not in ALLOWED_DEVICES:
            raise ValueError(f"device must be one of {', '.join(ALLOWED_DEVICES)}; got {device!r}")
        torch_device = resolve_device(device)
    else:
        torch_device = torch.device(device)
    ckpt = load_checkpoint(checkpoint)
    stored = stored_config(ckpt, checkpoint)
    stored.update(resume=None, output_dir=None, device="cpu")
    for key, value in (overrides or {}).items():
        stored[str(key).replace("-", "_")] = os.fspath(value) if isinstance(value, os.PathLike) else value
    config = TrainConfig.from_dict(stored, source=f"configuration stored in {checkpoint}")
    if ema:
        weights = ckpt.get("ema")
        if not weights:
            raise ValueError(f"{checkpoint} holds no EMA weights (the run had ema-decay 0)")
        weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
    else:
        weights = ckpt.get("model")
        if not isinstance(weights, Mapping):
            raise ValueError(f"{checkpoint} holds no model weights")
    _, val_set, info = build_datasets(
        config.dataset, config.data_dir, train_subset=None, img_size=config.img_size, aug="none",
        in_chans=config.in_chans, canvas_size=config.canvas_size, clutter_fragments=config.clutter_fragments,
        classes=config.classes,
    )
    model = build_model(config, info.num_classes, info.in_chans, info.img_size, initial_weights=False)
    model.load_state_dict(weights)
    model.to(torch_device).eval()
    ratios = (1.0, 1.0)
    if config.tri_level:  # resolved as the run resolved it (family defaults, --speedup, eval ratios)
        resolved = resolve_config(config, model)
        config, ratios = resolved.config, resolved.eval_ratios
        patch(model, resolved.patch)
        set_keep_ratios(model, *ratios)
    return LoadedRun(
        path=Path(checkpoint), state=ckpt, config=config, model=model, eval_ratios=ratios, val_set=val_set,
        data_info=info, epoch=checkpoint_epoch(ckpt),
    )
