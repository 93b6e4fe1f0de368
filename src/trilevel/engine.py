"""Training and evaluation loops: tri-level (or dense) training of a timm Vision Transformer.

:func:`train` runs one training job from a :class:`TrainConfig` (or a plain dict of its fields)
and returns a summary dict; :func:`evaluate` measures top-1 accuracy of a model on a loader, and
:func:`evaluate_checkpoint` rebuilds a model from a checkpoint written by :func:`train` and
evaluates it. The command line (``trilevel train`` / ``trilevel eval``, :mod:`trilevel.cli`) only
parses arguments and calls these.

What one run does (Kong et al., "Peeling the Onion", AAAI 2023, arXiv 2211.10801; recipe of DeiT,
Touvron et al., ICML 2021, adapted to small data through timm):

* **Model**: ``timm.create_model(name, pretrained=False, ...)`` with optional architecture
  overrides; unless ``dense``, patched in place by :func:`trilevel.vit.patch_vit` (token and
  attention levels).
* **Keep-ratio schedules**: :class:`trilevel.schedules.KeepRatioSchedule` for the token and the
  attention keep ratio, evaluated every iteration at
  ``progress = (epoch + i / iters_this_epoch) / epochs`` and applied with
  :func:`trilevel.vit.set_keep_ratios`.
* **Example level**: a selector of :mod:`trilevel.example_selection` chooses each epoch's data
  through :class:`~trilevel.example_selection.ActiveSubsetSampler`; every step calls
  ``selector.record(indices, logits, targets)`` (with the per-example loss for the ``loss``
  selector, whose returned re-weighted loss is the one back-propagated).
* **Optimisation**: AdamW from ``timm.optim.create_optimizer_v2`` (no weight decay on biases,
  norms, position embedding and class token); ``lr`` is absolute (not scaled by the batch size:
  DeiT's ``5e-4 * global_batch / 512`` is yours to compute); a per-iteration cosine schedule with
  linear warm-up (``timm.scheduler.CosineLRScheduler``, ``t_in_epochs=False``) driven by the same
  run progress as the keep ratios, so an epoch with fewer iterations (a smaller active set) still
  covers its share of the schedule; label smoothing (``LabelSmoothingCrossEntropy``) or
  Mixup/CutMix (``timm.data.Mixup`` with ``SoftTargetCrossEntropy``); drop-path; optional
  gradient-norm clipping; optional AMP (bf16 or fp16 autocast; ``GradScaler`` for fp16); optional
  EMA of the weights (``timm.utils.ModelEmaV3``).
* **Distributed**: under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
  the process group is initialised (NCCL on CUDA, Gloo on CPU) and the model wrapped in
  ``DistributedDataParallel``. ``batch_size`` is per process. Every rank seeds the global RNGs
  with the same ``seed`` (never ``seed + rank``), and the selector records all-gathered outcomes,
  so all ranks hold the same active set. Evaluation is sharded without duplicates and summed with
  ``all_reduce``. Only rank 0 writes files and shows progress bars.
* **Outputs** (rank 0, in ``output_dir``): ``config.yaml`` (the resolved configuration),
  ``train.log``, ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (every epoch, written
  atomically) and ``summary.json``.
* **Exact resume**: the checkpoint holds model, optimizer, LR scheduler, grad scaler, EMA,
  selector and sampler state, counters, every rank's RNG states and the configuration; the data
  order depends only on ``seed`` and the epoch, so on CPU (``workers=0``) a resumed run ends with
  the same weights, metrics and selector digest as an uninterrupted one. SIGTERM makes the run
  finish its current step, save a checkpoint (which resumes mid-epoch) and raise
  :class:`TrainingInterrupted`.

Host-device synchronisation: the training loop reads one small flag tensor per step (is the loss
finite, and, under DDP, did any rank receive SIGTERM), copied asynchronously into pinned memory and
waited for only after the backward pass has been queued, so the device queue does not drain.
Loss and accuracy are accumulated as device tensors and read once per log interval and per epoch.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from .data import ALLOWED_BAD_IMAGES, skip_unreadable_collate

__all__ = [
    "ALLOWED_AMP",
    "ALLOWED_DATASETS",
    "ALLOWED_DEVICES",
    "ALLOWED_NONFINITE",
    "ALLOWED_SELECTORS",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainingInterrupted",
    "build_model",
    "config_from_checkpoint",
    "evaluate",
    "evaluate_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

ALLOWED_DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
ALLOWED_AUGS = ("light", "none", "deit")
ALLOWED_SELECTORS = ("forgetting", "random", "loss", "none")
ALLOWED_AMP = ("none", "bf16", "fp16")
ALLOWED_DEVICES = ("auto", "cpu", "cuda")
ALLOWED_NONFINITE = ("stop", "skip")

#: Configuration keys that may differ between a checkpoint and the run resuming it.
RUNTIME_KEYS = frozenset(
    {"resume", "output_dir", "workers", "log_interval", "device", "nonfinite", "data_dir", "stop_after_epoch",
     "bad_images", "eval_every"}
)

_CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``nonfinite="stop"``).

    The message names the epoch and step; the last good state (before the bad step's update) has
    been saved to the run's checkpoint.
    """


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; resume with ``resume=<checkpoint>``.

    Attributes:
        checkpoint: Path of the checkpoint written before stopping.
    """

    def __init__(self, message: str, checkpoint: Optional[str] = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flag(name: str) -> str:
    return name.replace("_", "-")


@dataclass
class TrainConfig:
    """Every setting of one training run (the CLI flags of ``trilevel train``, hyphens -> underscores).

    Construction validates every field and raises ``ValueError`` naming the field, the value and
    what is allowed. Use :meth:`from_dict` for mappings from files (hyphenated keys accepted,
    unknown keys rejected).

    Attributes:
        model: Any timm model name; tri-level training needs a timm ``VisionTransformer``.
        img_size: Input side in pixels; None: the dataset's native size.
        patch_size: Patch side in pixels; None: the model's.
        in_chans: Input channels; None: the dataset's (3 repeats grayscale channels).
        embed_dim: Embedding width override; None: the model's.
        depth: Number of blocks override; None: the model's.
        num_heads: Attention heads override; None: the model's.
        drop_path: Stochastic-depth rate, in [0, 1) (DeiT: 0.1).
        patch_drop: Fraction of patch tokens dropped at random at the input while training
            (timm ``PatchDropout``, Liu et al. 2022), in [0, 1); 0: off. A baseline for token
            pruning; combines with the tri-level model too.
        dataset: One of :data:`ALLOWED_DATASETS`.
        data_dir: Data folder; None: the dataset's default (Fashion-MNIST only).
        train_subset: Train on the first N training examples only; None: all.
        val_subset: Evaluate on the first N validation examples only (quick runs); None: all.
        aug: Training augmentation, ``light`` | ``none`` | ``deit`` (see :mod:`trilevel.data`).
        workers: DataLoader worker processes per rank (0: load in the main process).
        epochs: Training epochs (>= 1).
        batch_size: Batch size per process (global batch = batch_size * world size).
        lr: Peak learning rate, absolute (not scaled by the batch size).
        min_lr: Final learning rate of the cosine schedule.
        warmup_lr: Learning rate at the start of the warm-up (DeiT: 1e-6).
        warmup_epochs: Linear LR warm-up length in epochs (may be fractional), < ``epochs``.
        weight_decay: AdamW weight decay (DeiT: 0.05).
        seed: Seed of model init, data order, augmentation and the example selector.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        smoothing: Label smoothing, in [0, 1) (DeiT: 0.1).
        mixup: Mixup alpha (0: off; DeiT: 0.8).
        cutmix: CutMix alpha (0: off; DeiT: 1.0).
        clip_grad: Max gradient norm; None or 0: no clipping.
        amp: ``none``, ``bf16`` (CUDA or CPU) or ``fp16`` (CUDA only, with a GradScaler).
        ema_decay: EMA decay of the weights, in [0, 1); 0: no EMA.
        keep_ratio: Final token keep ratio per pruning block, in (0, 1] (paper: 0.7).
        attn_keep_ratio: Final kept fraction of attention connections, in (0, 1] (paper: 0.3).
        prune_layers: 0-based pruning blocks; None: ``depth//4, depth//2, 3*depth//4``.
        ratio_warmup: Fraction of the run at ratio 1 before the decay (paper: 1/30).
        ratio_decay_end: Fraction of the run where the ratios reach their targets (paper: 11/30).
        fuse_inattentive: Fuse the pruned tokens into one (EViT), off in the paper.
        eval_keep_ratio: Token keep ratio for evaluation; None: the final schedule value.
        eval_attn_keep_ratio: Attention keep ratio for evaluation; None: the final value.
        selector: Example selector, ``forgetting`` (paper) | ``random`` | ``loss`` | ``none``.
        example_remove: Fraction of the training set removed (forgetting/random) or the drop
            probability of low-loss examples (loss), in [0, 1) (paper: 0.2).
        example_swap: Fraction of the training set swapped at each update, in [0, 1) (paper: 0.05).
        example_update_every: Epochs between selector updates: an int >= 1, or a float in (0, 1)
            meaning that fraction of the run (paper: 30 of 300 = 0.1).
        example_max_updates: Maximum number of selector updates (paper: 5).
        dense: Baseline: stock timm model, no keep-ratio schedules, no selector.
        output_dir: Output folder; None: ``runs/<timestamp>`` (or the checkpoint's folder on
            resume).
        resume: Checkpoint to resume from; None: start fresh.
        stop_after_epoch: End this invocation after this (1-based) epoch, checkpoint saved, to be
            resumed later; None: run to the end.
        nonfinite: What a NaN/inf loss does: ``stop`` (save the last good state, raise
            :class:`NonFiniteLossError`) or ``skip`` (skip the batch).
        bad_images: ImageFolder only: an unreadable image stops the run naming its path
            (``fail``) or is logged with its path and skipped (``skip``).
        log_interval: Steps between progress updates (the only per-step-range host reads).
        eval_every: Epochs between validation passes (>= 1); the last epoch of the run and of
            this invocation (``stop_after_epoch``) is always evaluated. Epochs in between log
            ``val_top1`` as null.
    """

    # model
    model: str = "vit_tiny_patch16_224"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    in_chans: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    drop_path: float = 0.1
    patch_drop: float = 0.0
    # data
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    aug: str = "light"
    workers: int = 2
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "auto"
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    clip_grad: Optional[float] = None
    amp: str = "none"
    ema_decay: float = 0.0
    # tri-level
    keep_ratio: float = 0.7
    attn_keep_ratio: float = 0.3
    prune_layers: Optional[list] = None
    ratio_warmup: float = 1.0 / 30.0
    ratio_decay_end: float = 11.0 / 30.0
    fuse_inattentive: bool = False
    eval_keep_ratio: Optional[float] = None
    eval_attn_keep_ratio: Optional[float] = None
    selector: str = "forgetting"
    example_remove: float = 0.2
    example_swap: float = 0.05
    example_update_every: Any = 0.1
    example_max_updates: int = 5
    dense: bool = False
    # output / runtime
    output_dir: Optional[str] = None
    resume: Optional[str] = None
    stop_after_epoch: Optional[int] = None
    nonfinite: str = "stop"
    bad_images: str = "fail"
    log_interval: int = 50
    eval_every: int = 1

    # ------------------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self._validate()

    def _int(self, name: str, minimum: int, optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if not _is_int(v) or v < minimum:
            extra = " or None" if optional else ""
            raise ValueError(f"{_flag(name)} must be an integer >= {minimum}{extra}, got {v!r}")

    def _float(
        self,
        name: str,
        low: float,
        high: float,
        low_open: bool = False,
        high_open: bool = False,
        optional: bool = False,
    ) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        if not _is_number(v) or math.isnan(float(v)):
            raise ValueError(f"{_flag(name)} must be a number in {interval}, got {v!r}")
        fv = float(v)
        if fv < low or fv > high or (low_open and fv == low) or (high_open and fv == high):
            raise ValueError(f"{_flag(name)} must be in {interval}, got {v!r}")
        setattr(self, name, fv)

    def _choice(self, name: str, allowed: Sequence[str]) -> None:
        v = getattr(self, name)
        if v not in allowed:
            raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}; got {v!r}")

    def _bool(self, name: str) -> None:
        v = getattr(self, name)
        if not isinstance(v, bool):
            raise ValueError(f"{_flag(name)} must be true or false, got {v!r}")

    def _validate(self) -> None:
        inf = float("inf")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a timm model name, got {self.model!r}")
        import timm

        if not timm.is_model(self.model):
            raise ValueError(
                f"model {self.model!r} is not a timm model name; see timm.list_models('vit_*') "
                f"(e.g. vit_tiny_patch16_224, deit_small_patch16_224)"
            )
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            self._int(name, 1, optional=True)
        self._float("drop_path", 0.0, 1.0, high_open=True)
        self._float("patch_drop", 0.0, 1.0, high_open=True)
        self._choice("dataset", ALLOWED_DATASETS)
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)) or not str(self.data_dir):
                raise ValueError(f"data-dir must be a folder path, got {self.data_dir!r}")
            self.data_dir = os.fspath(self.data_dir)
        self._int("train_subset", 1, optional=True)
        self._int("val_subset", 1, optional=True)
        self._choice("aug", ALLOWED_AUGS)
        self._int("workers", 0)
        self._int("epochs", 1)
        self._int("batch_size", 1)
        self._float("lr", 0.0, inf, low_open=True, high_open=True)
        self._float("min_lr", 0.0, inf, high_open=True)
        self._float("warmup_lr", 0.0, inf, high_open=True)
        self._float("warmup_epochs", 0.0, inf, high_open=True)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup-epochs ({self.warmup_epochs:g}) must be smaller than epochs ({self.epochs}); "
                f"pass --warmup-epochs 0 (or a fraction of an epoch) for so short a run"
            )
        self._float("weight_decay", 0.0, inf, high_open=True)
        self._int("seed", 0)
        self._choice("device", ALLOWED_DEVICES)
        self._float("smoothing", 0.0, 1.0, high_open=True)
        self._float("mixup", 0.0, inf, high_open=True)
        self._float("cutmix", 0.0, inf, high_open=True)
        if self.clip_grad is not None:
            self._float("clip_grad", 0.0, inf, high_open=True)
            if self.clip_grad == 0.0:
                self.clip_grad = None
        self._choice("amp", ALLOWED_AMP)
        self._float("ema_decay", 0.0, 1.0, high_open=True)
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"batch-size must be even with mixup/cutmix (timm Mixup mixes pairs), got {self.batch_size}")

        self._float("keep_ratio", 0.0, 1.0, low_open=True)
        self._float("attn_keep_ratio", 0.0, 1.0, low_open=True)
        self.prune_layers = _parse_prune_layers(self.prune_layers)
        self._float("ratio_warmup", 0.0, 1.0, high_open=True)
        self._float("ratio_decay_end", 0.0, 1.0)
        if self.ratio_decay_end < self.ratio_warmup:
            raise ValueError(
                f"ratio-decay-end ({self.ratio_decay_end:g}) must be >= ratio-warmup ({self.ratio_warmup:g})"
            )
        self._bool("fuse_inattentive")
        self._float("eval_keep_ratio", 0.0, 1.0, low_open=True, optional=True)
        self._float("eval_attn_keep_ratio", 0.0, 1.0, low_open=True, optional=True)
        self._choice("selector", ALLOWED_SELECTORS)
        self._float("example_remove", 0.0, 1.0, high_open=True)
        self._float("example_swap", 0.0, 1.0, high_open=True)
        if self.selector in ("forgetting", "random") and self.example_swap > self.example_remove:
            raise ValueError(
                f"example-swap ({self.example_swap:g}) must be <= example-remove ({self.example_remove:g}): "
                f"the swapped examples come back from the removed pool"
            )
        self.example_update_every = _parse_update_every(self.example_update_every)
        self._int("example_max_updates", 0)
        self._bool("dense")
        for name in ("output_dir", "resume"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, (str, os.PathLike)) or not str(v):
                    raise ValueError(f"{_flag(name)} must be a path, got {v!r}")
                setattr(self, name, os.fspath(v))
        self._int("stop_after_epoch", 1, optional=True)
        self._choice("nonfinite", ALLOWED_NONFINITE)
        self._choice("bad_images", ALLOWED_BAD_IMAGES)
        self._int("log_interval", 1)
        self._int("eval_every", 1)

    # ------------------------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all fields (underscored)."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build a config from a mapping whose keys are field names (hyphens or underscores).

        Args:
            mapping: Keys such as ``batch-size`` or ``batch_size``.
            source: Where the mapping comes from, for error messages (e.g. a file name).

        Raises:
            ValueError: If a key is unknown (all unknown keys are named, with the allowed ones),
                a key appears twice (hyphen and underscore spelling), or a value is invalid.
        """
        return cls(**normalize_keys(mapping, source))

    @property
    def tri_level(self) -> bool:
        """Whether the model is patched (token/attention levels): ``not dense``."""
        return not self.dense

    @property
    def effective_selector(self) -> str:
        """The selector actually used (``none`` for a dense run)."""
        return "none" if self.dense else self.selector

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (YAML/JSON/``torch.load(weights_only=True)`` safe)."""
        d = dataclasses.asdict(self)
        if d["prune_layers"] is not None:
            d["prune_layers"] = list(d["prune_layers"])
        return d


def normalize_keys(mapping: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Turn hyphenated keys into field names and reject unknown or duplicate keys.

    Raises:
        ValueError: Unknown keys (named, with the allowed keys) or a key given twice.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{source} must be a mapping of option names to values, got {type(mapping).__name__}")
    names = set(TrainConfig.field_names())
    out: dict[str, Any] = {}
    unknown = []
    for key, value in mapping.items():
        norm = str(key).replace("-", "_")
        if norm not in names:
            unknown.append(str(key))
            continue
        if norm in out:
            raise ValueError(f"{source}: option {_flag(norm)!r} is given twice")
        out[norm] = value
    if unknown:
        allowed = ", ".join(sorted(_flag(n) for n in names))
        raise ValueError(f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed keys: {allowed}")
    return out


def _parse_prune_layers(value: Any) -> Optional[list]:
    """``None``/``"none"``/``"default"`` -> None; ``"3,6,9"`` or ``[3, 6, 9]`` -> ``[3, 6, 9]``."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "default"):
            return None
        parts = [p.strip() for p in text.split(",")]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"prune-layers must be a comma-separated list of block indices (e.g. 3,6,9) or 'none', got {text!r}"
            ) from None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("prune-layers must name at least one block (or 'none' for the default blocks)")
        for v in value:
            if not _is_int(v) or v < 0:
                raise ValueError(f"prune-layers entries must be block indices >= 0, got {v!r} in {list(value)!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"prune-layers has duplicate indices: {list(value)!r}")
        return sorted(int(v) for v in value)
    raise ValueError(f"prune-layers must be a list of block indices or 'none', got {value!r}")


def _parse_update_every(value: Any) -> Any:
    """An int >= 1 (epochs) or a float in (0, 1) (fraction of the run); integral floats >= 1 -> int."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ValueError(
                f"example-update-every must be a number of epochs (int >= 1) or a fraction of the run in (0, 1), "
                f"got {value!r}"
            ) from None
    if _is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    if isinstance(value, float) and value >= 1.0 and value.is_integer():
        return int(value)
    raise ValueError(
        f"example-update-every must be a number of epochs (int >= 1) or a fraction of the run in (0, 1), got {value!r}"
    )


def config_from_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The configuration stored in a checkpoint written by :func:`train`, as a dict.

    Raises:
        FileNotFoundError: If the file does not exist.
        trilevel.checkpoint.CheckpointError: If it is not a readable checkpoint.
        ValueError: If it holds no trilevel training configuration.
    """
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return _checkpoint_config(ckpt, path)


def _checkpoint_config(ckpt: Mapping[str, Any], path: Any) -> dict[str, Any]:
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} is not a trilevel training checkpoint (no 'config' entry)")
    return dict(config)


# --------------------------------------------------------------------------------------------------
# distributed / device plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available; use --device cpu or auto")
    if torch.cuda.is_available() and requested in ("cuda", "auto"):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _setup_distributed(device_request: str) -> _DistContext:
    """Initialise the process group when launched by torchrun; resolve this process's device."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        device = _resolve_device(device_request, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return _DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    if env_world > 1:
        device = _resolve_device(device_request, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        return _DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)
    return _DistContext(0, 1, 0, _resolve_device(device_request, 0), owns_group=False)


def _all_reduce_sum(t: torch.Tensor, ctx: _DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _all_gather_objects(obj: Any, ctx: _DistContext) -> list:
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _broadcast_object(obj: Any, ctx: _DistContext) -> Any:
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# model, data and selector construction
# --------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_model(config: TrainConfig, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """Create the timm model of ``config`` (random init) and, unless ``dense``, patch it.

    Args:
        config: The run configuration (model name, architecture overrides, drop-path,
            tri-level settings).
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Input side in pixels.

    Returns:
        The model on the CPU; patched with the *final* keep ratios (training sets the scheduled
        ratios every iteration).

    Raises:
        ValueError: If ``img_size`` is not a multiple of the patch size, or tri-level training
            is asked of a model that is not a timm ``VisionTransformer``, or timm rejects the
            architecture overrides.
    """
    import timm

    kwargs: dict[str, Any] = dict(
        pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        drop_path_rate=config.drop_path,
    )
    for name in ("patch_size", "embed_dim", "depth", "num_heads"):
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = value
    if config.patch_drop > 0:
        kwargs["patch_drop_rate"] = config.patch_drop
    if config.embed_dim is not None and config.num_heads is not None and config.embed_dim % config.num_heads:
        # timm would fail later with an opaque reshape error
        raise ValueError(f"embed-dim ({config.embed_dim}) must be divisible by num-heads ({config.num_heads})")
    try:
        try:
            model = timm.create_model(config.model, **kwargs)
        except TypeError as e:
            # Size-agnostic models (CNNs) take no img_size; fine for a dense run that did not set it.
            if not (config.dense and config.img_size is None and "img_size" in str(e)):
                raise
            kwargs.pop("img_size")
            model = timm.create_model(config.model, **kwargs)
    except TypeError as e:
        hint = "" if config.dense else (
            "; tri-level training needs a timm VisionTransformer (vit_*, deit_*), use --dense for other models"
        )
        raise ValueError(f"timm could not build {config.model!r} with {kwargs}: {e}{hint}") from e
    pe = getattr(model, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if patch is not None:
        ph, pw = patch if isinstance(patch, (tuple, list)) else (patch, patch)
        if img_size % ph or img_size % pw:
            divisors = [d for d in range(2, img_size + 1) if img_size % d == 0 and d <= 32]
            raise ValueError(
                f"img-size {img_size} is not a multiple of the patch size {ph}x{pw} of {config.model}; "
                f"pass --patch-size one of {divisors} or --img-size a multiple of {ph}"
            )
    if config.tri_level:
        from .vit import patch_vit

        try:
            patch_vit(
                model,
                prune_layers=config.prune_layers,
                keep_ratio=config.keep_ratio,
                attn_keep_ratio=config.attn_keep_ratio,
                fuse_inattentive=config.fuse_inattentive,
            )
        except TypeError as e:
            raise ValueError(
                f"model {config.model!r} cannot be trained tri-level ({e}); use a timm VisionTransformer "
                f"(vit_*, deit_*) or --dense"
            ) from e
    return model


def _eval_ratios(config: TrainConfig) -> tuple[float, float]:
    from .schedules import KeepRatioSchedule

    if config.dense:
        return 1.0, 1.0
    kr = config.eval_keep_ratio
    akr = config.eval_attn_keep_ratio
    if kr is None:
        kr = KeepRatioSchedule(config.keep_ratio, config.ratio_warmup, config.ratio_decay_end)(1.0)
    if akr is None:
        akr = KeepRatioSchedule(config.attn_keep_ratio, config.ratio_warmup, config.ratio_decay_end)(1.0)
    return float(kr), float(akr)


def _build_selector(config: TrainConfig, num_examples: int):
    from .example_selection import ForgettingSelector, LossSelector, RandomSelector

    kind = config.effective_selector
    if kind == "none":
        return None
    if kind == "loss":
        return LossSelector(num_examples, prune_ratio=config.example_remove, num_epochs=config.epochs, seed=config.seed)
    cls = ForgettingSelector if kind == "forgetting" else RandomSelector
    return cls(
        num_examples,
        initial_remove_fraction=config.example_remove,
        swap_fraction=config.example_swap,
        update_every=config.example_update_every,
        max_updates=config.example_max_updates,
        seed=config.seed,
        num_epochs=config.epochs,
    )


def _measured_flops(model: nn.Module, in_chans: int, img_size: int, device: torch.device) -> float:
    """Forward FLOPs of one image counted by ``torch.utils.flop_counter`` (eval mode, no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


class _SkipSampler(Sampler[int]):
    """Yield the indices of ``base`` after the first ``skip`` (a mid-epoch resume)."""

    def __init__(self, base: Sampler, skip: int) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def _shard(ds: Dataset, ctx: _DistContext) -> Dataset:
    """Rank ``r`` of ``w`` gets items ``r, r + w, ...``: disjoint, no padding duplicates."""
    if not ctx.distributed:
        return ds
    return Subset(ds, range(ctx.rank, len(ds), ctx.world_size))  # type: ignore[arg-type]


def _loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    # Deterministic per (seed, epoch, rank): worker seeds and any loader randomness repeat on resume.
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003) + epoch) * 1_009 + rank)
    return g


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterator | DataLoader,
    device: torch.device | str = "cpu",
    amp: str = "none",
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``loader``.

    Under ``torch.distributed`` the counts are summed over ranks with ``all_reduce``, so each rank
    must get a disjoint shard of the data (e.g. ``Subset(ds, range(rank, len(ds), world))``); every
    rank gets the global result.

    Args:
        model: A classifier (patched or not; DDP-wrapped is fine).
        loader: Yields ``(images (B, C, H, W), targets (B,))`` (extra items are ignored).
        device: Where to run.
        amp: ``none``, ``bf16`` or ``fp16`` autocast.
        keep_ratio: Token keep ratio for this evaluation (patched models only); None keeps the
            model's current ratios. The previous ratios are restored afterwards.
        attn_keep_ratio: Attention keep ratio for this evaluation; None keeps the current one.

    Returns:
        ``{"top1": percent, "loss": mean cross-entropy, "images": count}`` (``top1`` is NaN for
        an empty loader).

    Raises:
        ValueError: If ``amp`` is unknown, or ratios are given for an unpatched model or are
            outside (0, 1].
    """
    from .vit import get_keep_ratios, is_patched, set_keep_ratios

    if amp not in ALLOWED_AMP:
        raise ValueError(f"amp must be one of {', '.join(ALLOWED_AMP)}; got {amp!r}")
    device = torch.device(device)
    base = _unwrap(model)
    previous = None
    if keep_ratio is not None or attn_keep_ratio is not None:
        if not is_patched(base):
            if any(r not in (None, 1.0) for r in (keep_ratio, attn_keep_ratio)):
                raise ValueError(
                    f"keep ratios ({keep_ratio}, {attn_keep_ratio}) were given for an unpatched (dense) model; "
                    f"only 1.0 or None is allowed"
                )
        else:
            previous = get_keep_ratios(base)
            set_keep_ratios(base, keep_ratio, attn_keep_ratio)
    was_training = base.training
    base.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    try:
        for batch in loader:
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = base(images)
            logits = logits.float()
            totals[0] += (logits.argmax(dim=1) == targets).sum()
            totals[1] += F.cross_entropy(logits, targets, reduction="sum")
            totals[2] += targets.shape[0]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    finally:
        base.train(was_training)
        if previous is not None:
            set_keep_ratios(base, *previous)
    correct, loss_sum, count = totals.tolist()
    if count == 0:
        return {"top1": float("nan"), "loss": float("nan"), "images": 0}
    return {"top1": 100.0 * correct / count, "loss": loss_sum / count, "images": int(count)}


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
    data_dir: Optional[str | os.PathLike] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    workers: int = 0,
    ema: bool = False,
    val_subset: Optional[int] = None,
) -> dict[str, Any]:
    """Rebuild the model of a :func:`train` checkpoint and measure its validation top-1.

    Args:
        checkpoint: Path of a ``checkpoint.pt`` written by :func:`train`.
        keep_ratio: Token keep ratio; None: the run's evaluation ratio.
        attn_keep_ratio: Attention keep ratio; None: the run's evaluation ratio.
        data_dir: Data folder; None: the one stored in the checkpoint's configuration.
        batch_size: Evaluation batch size; None: twice the training batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: DataLoader workers.
        ema: Evaluate the EMA weights (the run must have used ``ema_decay > 0``).
        val_subset: Evaluate on the first N validation examples only; None: all.

    Returns:
        ``{"top1", "loss", "images", "keep_ratio", "attn_keep_ratio", "epoch", "model", "dataset",
        "ema"}``.

    Raises:
        FileNotFoundError: Missing checkpoint or data (``DatasetNotFoundError``).
        ValueError: A bad argument, a checkpoint that is not from :func:`train`
            (``CheckpointError`` is a ``ValueError``), or ``ema`` without EMA weights.
    """
    from .checkpoint import load_checkpoint
    from .data import build_datasets

    if device not in ALLOWED_DEVICES:
        raise ValueError(f"device must be one of {', '.join(ALLOWED_DEVICES)}; got {device!r}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch-size must be an integer >= 1, got {batch_size!r}")
    if not _is_int(workers) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if val_subset is not None and (not _is_int(val_subset) or val_subset < 1):
        raise ValueError(f"val-subset must be an integer >= 1, got {val_subset!r}")
    ckpt = load_checkpoint(checkpoint)
    stored = _checkpoint_config(ckpt, checkpoint)
    stored.update(resume=None, output_dir=None, device=device)
    if data_dir is not None:
        stored["data_dir"] = os.fspath(data_dir)
    config = TrainConfig.from_dict(stored, source=f"configuration stored in {checkpoint}")
    ctx = _setup_distributed(device)
    try:
        _, val_ds, info = build_datasets(
            config.dataset, config.data_dir, train_subset=None, img_size=config.img_size,
            aug="none", in_chans=config.in_chans,
        )
        if val_subset is not None:
            if val_subset > len(val_ds):  # type: ignore[arg-type]
                raise ValueError(f"val-subset {val_subset} is larger than the validation set ({len(val_ds)} examples)")  # type: ignore[arg-type]
            val_ds = Subset(val_ds, range(val_subset))
        model = build_model(config, info.num_classes, info.in_chans, info.img_size)
        if ema:
            state = ckpt.get("ema")
            if not state:
                raise ValueError(f"{checkpoint} holds no EMA weights (the run had ema-decay 0)")
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        else:
            state = ckpt["model"]
        model.load_state_dict(state)
        model.to(ctx.device)
        kr_default, akr_default = _eval_ratios(config)
        kr = kr_default if keep_ratio is None else keep_ratio
        akr = akr_default if attn_keep_ratio is None else attn_keep_ratio
        if config.dense and (kr, akr) != (1.0, 1.0):
            raise ValueError(f"{checkpoint} is a dense run; keep ratios cannot be set (got {kr}, {akr})")
        loader = DataLoader(
            _shard(val_ds, ctx), batch_size=batch_size or 2 * config.batch_size, shuffle=False,
            num_workers=workers, pin_memory=ctx.device.type == "cuda",
        )
        result = evaluate(
            model, loader, ctx.device, config.amp,
            keep_ratio=None if config.dense else kr, attn_keep_ratio=None if config.dense else akr,
        )
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
    result.update(
        keep_ratio=kr, attn_keep_ratio=akr, epoch=int(ckpt.get("epoch", 0)), model=config.model,
        dataset=config.dataset, ema=bool(ema),
    )
    return result


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


class _StepFlags:
    """Per-step ``[loss not finite, stop requested]`` flags, read with one async host copy.

    Under DDP the flags are summed over ranks so that every rank takes the same decision.
    """

    def __init__(self, ctx: _DistContext) -> None:
        self.ctx = ctx
        self.device = ctx.device
        self.cuda = self.device.type == "cuda"
        self._host = torch.zeros(2, dtype=torch.float32, pin_memory=self.cuda)
        self._event = torch.cuda.Event() if self.cuda else None
        self._flags: Optional[torch.Tensor] = None

    def launch(self, loss: torch.Tensor, stop_requested: bool) -> None:
        flags = torch.zeros(2, dtype=torch.float32, device=self.device)
        flags[0] = (~torch.isfinite(loss.detach().float())).any().float()
        if self.ctx.distributed:
            flags[1].fill_(1.0 if stop_requested else 0.0)
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        if self.cuda:
            self._host.copy_(flags, non_blocking=True)
            self._event.record()
        else:
            self._flags = flags

    def read(self, stop_requested: bool) -> tuple[bool, bool]:
        if self.cuda:
            self._event.synchronize()
            bad, stop = self._host.tolist()
        else:
            bad, stop = self._flags.tolist()
        if not self.ctx.distributed:
            stop = 1.0 if stop_requested else 0.0
        return bad > 0, stop > 0


@dataclass
class _EpochAcc:
    """Running sums of one epoch (device tensors where they come from the device)."""

    device: torch.device
    loss_sum: torch.Tensor = None  # type: ignore[assignment]
    correct: torch.Tensor = None  # type: ignore[assignment]
    images: int = 0
    counted: int = 0
    steps: int = 0
    skipped: int = 0
    tokens_sum: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.float64, device=self.device)

    def reduced(self, ctx: _DistContext) -> dict[str, float]:
        """Global sums over ranks (one collective; syncs with the device)."""
        t = torch.stack([
            self.loss_sum, self.correct,
            torch.tensor(float(self.images), dtype=torch.float64, device=self.device),
            torch.tensor(float(self.counted), dtype=torch.float64, device=self.device),
            torch.tensor(self.flops, dtype=torch.float64, device=self.device),
            torch.tensor(float(self.skipped), dtype=torch.float64, device=self.device),
        ])
        _all_reduce_sum(t, ctx)
        loss_sum, correct, images, counted, flops, skipped = t.tolist()
        return {"loss_sum": loss_sum, "correct": correct, "images": int(round(images)),
                "counted": int(round(counted)), "flops": flops, "skipped": int(round(skipped))}

    def state(self, ctx: _DistContext) -> dict[str, Any]:
        """Plain-value state for a mid-epoch checkpoint (global sums)."""
        r = self.reduced(ctx)
        return {**r, "steps": self.steps, "tokens_sum": self.tokens_sum, "seconds": self.seconds}

    def load(self, state: Mapping[str, Any], ctx: _DistContext) -> None:
        """Restore global sums on rank 0 (zeros elsewhere, so the next reduction is exact)."""
        self.steps = int(state["steps"])
        self.tokens_sum = float(state["tokens_sum"])
        self.seconds = float(state["seconds"])
        if ctx.is_main:
            self.loss_sum.fill_(float(state["loss_sum"]))
            self.correct.fill_(float(state["correct"]))
            self.images = int(state["images"])
            self.counted = int(state["counted"])
            self.flops = float(state["flops"])
            self.skipped = int(state["skipped"])


class _Trainer:
    """One training run (see :func:`train`)."""

    def __init__(self, config: TrainConfig, ctx: _DistContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.device = ctx.device
        self._stop_requested = False
        self._file_handler: Optional[logging.Handler] = None
        self._old_level: Optional[int] = None

    # ------------------------------------------------------------------------------ setup
    def _setup_output(self) -> None:
        cfg = self.cfg
        out = cfg.output_dir
        if out is None and cfg.resume is not None:
            out = str(Path(cfg.resume).resolve().parent)
        if out is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = str(Path("runs") / stamp)
        out = _broadcast_object(out, self.ctx)
        cfg.output_dir = out
        self.out = Path(out)
        self.ckpt_path = self.out / "checkpoint.pt"
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            pkg_logger = logging.getLogger("trilevel")
            if pkg_logger.getEffectiveLevel() > logging.INFO:
                self._old_level = pkg_logger.level
                pkg_logger.setLevel(logging.INFO)
            self._file_handler = logging.FileHandler(self.out / "train.log", encoding="utf-8")
            self._file_handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            pkg_logger.addHandler(self._file_handler)
            with open(self.out / "config.yaml", "w", encoding="utf-8") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)

    def _teardown_logging(self) -> None:
        pkg_logger = logging.getLogger("trilevel")
        if self._file_handler is not None:
            pkg_logger.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
        if self._old_level is not None:
            pkg_logger.setLevel(self._old_level)
            self._old_level = None

    def _check_resume_config(self, ckpt: Mapping[str, Any]) -> None:
        stored = _checkpoint_config(ckpt, self.cfg.resume)
        mine = self.cfg.to_dict()
        diffs = [
            f"{_flag(k)}: checkpoint {stored.get(k)!r}, now {v!r}"
            for k, v in mine.items()
            if k not in RUNTIME_KEYS and stored.get(k) != v
        ]
        if diffs:
            raise ValueError(
                f"cannot resume {self.cfg.resume}: the configuration differs from the checkpoint's in "
                f"{'; '.join(diffs)} (only {', '.join(sorted(_flag(k) for k in RUNTIME_KEYS))} may change)"
            )
        if ckpt.get("engine_format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{self.cfg.resume}: checkpoint format {ckpt.get('engine_format')!r} is not supported")

    def _build(self) -> None:
        from .data import build_datasets
        from .example_selection import ActiveSubsetSampler, IndexedDataset
        from .flops import forward_flops, tokens_per_block
        from .schedules import KeepRatioSchedule
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.models.vision_transformer import VisionTransformer
        from timm.utils import ModelEmaV3

        cfg, ctx = self.cfg, self.ctx
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use --amp bf16 or none on the CPU")
        # Same seed on every rank (never seed + rank): identical init, identical selector decisions.
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

        self.train_ds, self.val_ds, self.info = build_datasets(
            cfg.dataset, cfg.data_dir, train_subset=cfg.train_subset, img_size=cfg.img_size,
            aug=cfg.aug, in_chans=cfg.in_chans, bad_images=cfg.bad_images,
        )
        self.num_train = len(self.train_ds)  # type: ignore[arg-type]
        if cfg.val_subset is not None:
            if cfg.val_subset > len(self.val_ds):  # type: ignore[arg-type]
                raise ValueError(
                    f"val-subset {cfg.val_subset} is larger than the validation set ({len(self.val_ds)} examples)"  # type: ignore[arg-type]
                )
            self.val_ds = Subset(self.val_ds, range(cfg.val_subset))
        model = build_model(cfg, self.info.num_classes, self.info.in_chans, self.info.img_size)
        model.to(self.device)
        self.model_base = model
        self.patched = cfg.tri_level

        self._flops_fn = forward_flops
        self._flops_cache: dict[tuple[float, bool], float] = {}
        if isinstance(model, VisionTransformer):
            self.dense_flops = float(forward_flops(model, 1.0))
            # a training forward of a stock model with timm's PatchDropout sees fewer patches
            self._train_flops_dense = float(forward_flops(model, 1.0, training=True))
            # tokens per block of a dense training forward (fewer with PatchDropout)
            counts = tokens_per_block(model, 1.0, training=True)
            self._dense_tokens: Optional[float] = sum(m for _, m in counts) / len(counts)
        else:  # a dense run of another timm model (e.g. a CNN): count once with torch's FLOP counter
            self.dense_flops = _measured_flops(model, self.info.in_chans, self.info.img_size, self.device)
            self._train_flops_dense = self.dense_flops
            self._dense_tokens = None

        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        if ctx.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.model = model

        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

        self.selector = _build_selector(cfg, self.num_train)
        self.train_indexed = IndexedDataset(self.train_ds)
        if self.selector is not None:
            self.sampler = ActiveSubsetSampler(
                self.selector, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed
            )
        else:
            self.sampler = DistributedSampler(
                self.train_indexed, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed
            )
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                num_classes=self.info.num_classes,
            )
            self.criterion: Callable = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.drop_last = self.mixup is not None  # Mixup needs even batches

        # LR schedule in iterations of a nominal epoch (the first epoch's length); the LR is set
        # from the run progress, so epochs of other lengths still cover their share.
        self.sampler.set_epoch(0)
        self.nominal_iters = self._iters(len(self.sampler))
        if self.nominal_iters == 0:
            raise ValueError(
                f"batch-size {cfg.batch_size} is larger than the per-rank share of the training set "
                f"({len(self.sampler)} examples); lower --batch-size"
            )
        self.total_updates = cfg.epochs * self.nominal_iters
        self.lr_scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.total_updates, lr_min=cfg.min_lr,
            warmup_t=int(round(cfg.warmup_epochs * self.nominal_iters)), warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=False,
        )
        self.token_schedule = KeepRatioSchedule(cfg.keep_ratio, cfg.ratio_warmup, cfg.ratio_decay_end)
        self.attn_schedule = KeepRatioSchedule(cfg.attn_keep_ratio, cfg.ratio_warmup, cfg.ratio_decay_end)
        self.eval_ratios = _eval_ratios(cfg)
        self.val_loader = DataLoader(
            _shard(self.val_ds, ctx), batch_size=2 * cfg.batch_size, shuffle=False,
            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            generator=_loader_generator(cfg.seed, 0, ctx.rank), collate_fn=skip_unreadable_collate,
        )

    def _iters(self, n: int) -> int:
        b = self.cfg.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _flops(self, keep_ratio: float, training: bool = False) -> float:
        """Forward FLOPs per image at ``keep_ratio`` (cached; the dense count for a dense model).

        ``training`` counts a training forward (timm's PatchDropout active, when configured).
        """
        if not self.patched:
            return self._train_flops_dense if training else self.dense_flops
        f = self._flops_cache.get((keep_ratio, training))
        if f is None:
            f = float(self._flops_fn(self.model_base, keep_ratio, training=training))
            if len(self._flops_cache) > 100_000:
                self._flops_cache.clear()
            self._flops_cache[(keep_ratio, training)] = f
        return f

    # ------------------------------------------------------------------------------ state
    def _state(self, next_epoch: int, next_step: int, acc: Optional[_EpochAcc]) -> dict[str, Any]:
        """Checkpoint content; a collective under DDP (every rank must call it)."""
        from .checkpoint import capture_rng_state

        rng = _all_gather_objects(capture_rng_state(), self.ctx)
        acc_state = acc.state(self.ctx) if acc is not None else None
        digest = self.selector.digest() if self.selector is not None else None
        return {
            "engine_format": _CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "data_info": dataclasses.asdict(self.info),
            "model": self.model_base.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "selector": self.selector.state_dict() if self.selector is not None else None,
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict")
            else {"epoch": int(self.sampler.epoch)},
            "epoch": int(next_epoch),
            "step_in_epoch": int(next_step),
            "global_step": int(self.global_step),
            "rng": rng,
            "world_size": self.ctx.world_size,
            "selector_digest": digest,
            "train_seconds": float(self.train_seconds),
            "train_images": int(self.train_images),
            "flops_sum": float(self.flops_sum),
            "skipped_steps": int(self.skipped_steps),
            "epoch_acc": acc_state,
            "last_metrics": dict(self.last_metrics),
        }

    def _save(self, next_epoch: int, next_step: int, acc: Optional[_EpochAcc] = None) -> None:
        from .checkpoint import save_checkpoint

        state = self._state(next_epoch, next_step, acc)
        if self.ctx.is_main:
            save_checkpoint(state, self.ckpt_path)
        if self.ctx.distributed:
            dist.barrier()

    def _load(self, ckpt: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        from .checkpoint import restore_rng_state

        self.model_base.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.selector is not None:
            self.selector.load_state_dict(ckpt["selector"])
        if hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(ckpt["sampler"])  # checks seed/shuffle; set_epoch follows
        self.start_epoch = int(ckpt["epoch"])
        self.start_step = int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.train_seconds = float(ckpt["train_seconds"])
        self.train_images = int(ckpt["train_images"])
        self.flops_sum = float(ckpt["flops_sum"])
        self.skipped_steps = int(ckpt["skipped_steps"])
        self.last_metrics = dict(ckpt.get("last_metrics") or {})
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.ctx.world_size:
            logger.warning(
                "resuming a run saved with world size %d on world size %d: the data split per rank "
                "differs, so the run is not an exact continuation", saved_world, self.ctx.world_size,
            )
        rng = ckpt["rng"]
        restore_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        if self.selector is not None and ckpt.get("selector_digest") != self.selector.digest():
            raise ValueError(f"{self.cfg.resume}: the restored selector does not match its saved digest")
        return ckpt.get("epoch_acc")

    # ------------------------------------------------------------------------------ signals
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ANN001
        if not self._stop_requested:
            self._stop_requested = True
            logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and exiting")

    # ------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        from .checkpoint import load_checkpoint

        cfg, ctx = self.cfg, self.ctx
        ckpt = None
        if cfg.resume is not None:
            ckpt = load_checkpoint(cfg.resume)
            self._check_resume_config(ckpt)
        self._setup_output()
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._run(ckpt)
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            self._teardown_logging()

    def _run(self, ckpt: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        logger.info(
            "trilevel train: %s on %s, world size %d, device %s, output %s%s",
            cfg.model, cfg.dataset, ctx.world_size, self.device, self.out,
            f", resuming {cfg.resume}" if cfg.resume else "",
        )
        self._build()
        self.start_epoch, self.start_step = 0, 0
        self.global_step = 0
        self.train_seconds = 0.0
        self.train_images = 0
        self.flops_sum = 0.0
        self.skipped_steps = 0
        self.last_metrics: dict[str, Any] = {}
        acc_state = None
        if ckpt is not None:
            acc_state = self._load(ckpt)
            logger.info("resumed from %s at epoch %d, step %d", cfg.resume, self.start_epoch + 1, self.start_step)
        n_params = sum(p.numel() for p in self.model_base.parameters())
        logger.info(
            "model %s: %.2fM parameters, %.3f GFLOPs/image dense; %s; selector %s; %d train / %d val images; "
            "global batch %d; %d iterations in the first epoch",
            cfg.model, n_params / 1e6, self.dense_flops / 1e9,
            "dense" if cfg.dense else f"tri-level keep {cfg.keep_ratio:g} attn-keep {cfg.attn_keep_ratio:g} "
            f"blocks {list(self.model_base.trilevel_prune_layers)}",
            cfg.effective_selector, self.num_train, len(self.val_ds),  # type: ignore[arg-type]
            cfg.batch_size * ctx.world_size, self.nominal_iters,
        )

        finished = True
        for epoch in range(self.start_epoch, cfg.epochs):
            skip = self.start_step if epoch == self.start_epoch else 0
            metrics = self._train_epoch(epoch, skip, acc_state)
            acc_state = None
            self.last_metrics = metrics
            self._save(epoch + 1, 0)
            if ctx.is_main:
                with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")
            stop = self._agree(self._stop_requested)
            if stop and epoch + 1 < cfg.epochs:
                msg = (f"stopped by SIGTERM after epoch {epoch + 1}/{cfg.epochs}; checkpoint saved to "
                       f"{self.ckpt_path}; resume with --resume {self.ckpt_path}")
                logger.warning(msg)
                raise TrainingInterrupted(msg, str(self.ckpt_path))
            if epoch + 1 < cfg.epochs and self._last_epoch_of_invocation(epoch):
                logger.info(
                    "stopping after epoch %d as requested (stop-after-epoch); resume with --resume %s",
                    epoch + 1, self.ckpt_path,
                )
                finished = False
                break
        return self._write_summary(finished)

    def _last_epoch_of_invocation(self, epoch: int) -> bool:
        """Whether this invocation ends after 0-based ``epoch`` (end of run or ``stop_after_epoch``)."""
        stop_after = self.cfg.stop_after_epoch
        return epoch + 1 >= self.cfg.epochs or (stop_after is not None and epoch + 1 >= stop_after)

    def _agree(self, flag: bool) -> bool:
        if not self.ctx.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        _all_reduce_sum(t, self.ctx)
        return bool(t.item() > 0)

    def _train_epoch(self, epoch: int, skip: int, acc_state: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        from .vit import set_keep_ratios

        cfg, ctx = self.cfg, self.ctx
        self.sampler.set_epoch(epoch)
        iters = self._iters(len(self.sampler))
        sampler: Sampler = self.sampler if skip == 0 else _SkipSampler(self.sampler, skip * cfg.batch_size)
        loader = DataLoader(
            self.train_indexed, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda", drop_last=self.drop_last,
            generator=_loader_generator(cfg.seed, epoch, ctx.rank), collate_fn=skip_unreadable_collate,
        )
        acc = _EpochAcc(self.device)
        if acc_state is not None:
            acc.load(acc_state, ctx)
        flags = _StepFlags(ctx)
        self.model.train()
        bar = tqdm(
            total=iters, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
            disable=not ctx.is_main, leave=False, dynamic_ncols=True,
        )
        kr = akr = 1.0
        lr = self.optimizer.param_groups[0]["lr"]
        redirect = logging_redirect_tqdm() if ctx.is_main else nullcontext()
        seconds_before = acc.seconds
        t0 = time.perf_counter()
        try:
            with redirect:
                for i, (images, targets, indices) in enumerate(loader, start=skip):
                    progress = (epoch + i / iters) / cfg.epochs
                    if self.patched:
                        kr, akr = self.token_schedule(progress), self.attn_schedule(progress)
                        set_keep_ratios(self.model_base, kr, akr)
                    self.lr_scheduler.step_update(num_updates=progress * self.total_updates)
                    lr = self.optimizer.param_groups[0]["lr"]
                    batch = int(images.shape[0])
                    bad, stop = self._step(images, targets, indices, flags, acc)
                    if bad:
                        if cfg.nonfinite == "stop":
                            self._stop_nonfinite(epoch, i, acc)
                        acc.skipped += 1
                        self.skipped_steps += 1
                        logger.warning("non-finite loss at epoch %d, step %d: batch skipped (nonfinite=skip)",
                                       epoch + 1, i + 1)
                    self.global_step += 1
                    acc.images += batch
                    acc.flops += batch * self._flops(kr, training=True)
                    tokens = self._mean_tokens()
                    acc.tokens_sum += tokens if tokens is not None else float("nan")
                    done = i + 1
                    if ctx.is_main and (done % cfg.log_interval == 0 or done == iters):
                        # One host read per log interval (rank 0's running loss; the epoch line is global).
                        elapsed = seconds_before + time.perf_counter() - t0
                        loss_now = acc.loss_sum.item() / max(1, acc.counted)
                        rate = acc.images * ctx.world_size / max(elapsed, 1e-9)
                        bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}", refresh=False)
                        logger.debug("epoch %d step %d/%d loss %.4f lr %.3e %.0f img/s",
                                     epoch + 1, done, iters, loss_now, lr, rate)
                    bar.update(1)
                    if stop or (not ctx.distributed and self._stop_requested):
                        acc.seconds = seconds_before + self._elapsed(t0)
                        self._interrupt(epoch, done, iters, acc)
                acc.seconds = seconds_before + self._elapsed(t0)
        finally:
            bar.close()

        totals = acc.reduced(ctx)
        # The checkpoint's run totals exclude a partial epoch (its sums travel in epoch_acc).
        self.train_seconds += acc.seconds
        epoch_images = totals["images"]
        self.train_images += epoch_images
        self.flops_sum += totals["flops"]
        counted = max(1, totals["counted"])
        if self._last_epoch_of_invocation(epoch) or (epoch + 1) % cfg.eval_every == 0:
            val = evaluate(self.model, self.val_loader, self.device, cfg.amp,
                           *(self.eval_ratios if self.patched else (None, None)))
        else:
            val = {"top1": None, "loss": None, "images": None}
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": totals["loss_sum"] / counted,
            "train_acc": 100.0 * totals["correct"] / counted,
            "val_top1": val["top1"],
            "val_loss": val["loss"],
            "val_images": val["images"],
        }
        if self.ema is not None and val["top1"] is not None:
            ema_val = evaluate(self.ema.module, self.val_loader, self.device, cfg.amp,
                               *(self.eval_ratios if self.patched else (None, None)))
            metrics["val_top1_ema"] = ema_val["top1"]
        metrics.update(
            epoch_seconds=acc.seconds,
            train_images=epoch_images,
            train_images_per_s=epoch_images / max(acc.seconds, 1e-9),
            active_examples=self.selector.num_active if self.selector is not None else self.num_train,
            mean_tokens_per_block=(acc.tokens_sum / max(1, acc.steps + acc.skipped)
                                   if self._dense_tokens is not None else None),
            keep_ratio=kr,
            attn_keep_ratio=akr,
            lr=lr,
            skipped_steps=totals["skipped"],
            relative_flops_so_far=self.flops_sum / ((epoch + 1) * self.num_train * self.dense_flops),
        )
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.2f%% | val top-1 %s%s | %.1f s, %.0f img/s | active %d/%d | "
            "tokens/block %s | keep %.3f attn %.3f | lr %.3e",
            epoch + 1, cfg.epochs, metrics["train_loss"], metrics["train_acc"],
            "n/a" if metrics["val_top1"] is None else f"{metrics['val_top1']:.2f}%",
            f" (EMA {metrics['val_top1_ema']:.2f}%)" if "val_top1_ema" in metrics else "",
            acc.seconds, metrics["train_images_per_s"], metrics["active_examples"], self.num_train,
            "n/a" if metrics["mean_tokens_per_block"] is None else f"{metrics['mean_tokens_per_block']:.1f}",
            kr, akr, lr,
        )
        return metrics

    def _step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        flags: _StepFlags,
        acc: _EpochAcc,
    ) -> tuple[bool, bool]:
        """Forward, loss, backward and update on one batch.

        Args:
            images: ``(B, C, H, W)`` batch (any device).
            targets: ``(B,)`` class indices.
            indices: ``(B,)`` example indices (for the selector).
            flags: The epoch's step-flag reader.
            acc: The epoch's running sums (updated for a good batch).

        Returns:
            ``(loss not finite, stop requested)``, agreed over ranks. A batch whose loss is not
            finite changes nothing: no update, not recorded by the selector, not counted.
        """
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        loss_targets = targets
        if self.mixup is not None:
            images, loss_targets = self.mixup(images, targets)  # soft (B, K) targets
        with _autocast(self.device, cfg.amp):
            logits = self.model(images)
        logits = logits.float()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.effective_selector == "loss":
            # The selector re-weights the per-example losses; check them before recording.
            per_example = F.cross_entropy(
                logits, loss_targets, reduction="none",
                label_smoothing=0.0 if self.mixup is not None else cfg.smoothing,
            )
            flags.launch(per_example, self._stop_requested)
            bad, stop = flags.read(self._stop_requested)
            if bad:
                loss = per_example.mean()
            else:
                loss = self.selector.record(indices, logits.detach(), loss_targets, loss=per_example)
            loss_sum = per_example.detach().sum()
            self.scaler.scale(loss).backward()  # also for a bad batch: DDP expects every backward
        else:
            loss = self.criterion(logits, loss_targets)
            loss_sum = loss.detach() * images.shape[0]
            flags.launch(loss, self._stop_requested)
            self.scaler.scale(loss).backward()  # queued before the flag wait: the device stays busy
            bad, stop = flags.read(self._stop_requested)
            if not bad and self.selector is not None:
                self.selector.record(indices, logits.detach(), loss_targets)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return True, stop
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model_base.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model_base, step=self.global_step)
        with torch.no_grad():
            # Accuracy against the hard label, or the dominant class of a mixed target.
            label = loss_targets.argmax(dim=1) if loss_targets.dim() == 2 else loss_targets
            acc.correct += (logits.detach().argmax(dim=1) == label).sum()
            acc.loss_sum += loss_sum.double()
        acc.steps += 1
        acc.counted += int(images.shape[0])
        return False, stop

    def _mean_tokens(self) -> Optional[float]:
        """Mean tokens per block of the last forward pass (prefix tokens included); None: no tokens."""
        if not self.patched:
            return self._dense_tokens
        from .vit import get_trilevel_info

        info = get_trilevel_info(self.model_base)
        tpb = info.tokens_per_block if info is not None else None
        return sum(tpb) / len(tpb) if tpb else self._dense_tokens

    def _elapsed(self, t0: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per epoch (or at a stop): honest timing
        return time.perf_counter() - t0

    def _interrupt(self, epoch: int, done: int, iters: int, acc: _EpochAcc) -> None:
        self._save(epoch, done, acc)
        msg = (f"stopped by SIGTERM at epoch {epoch + 1}, step {done}/{iters}; checkpoint saved to "
               f"{self.ckpt_path}; resume with --resume {self.ckpt_path}")
        logger.warning(msg)
        raise TrainingInterrupted(msg, str(self.ckpt_path))

    def _stop_nonfinite(self, epoch: int, step: int, acc: _EpochAcc) -> None:
        # Parameters and optimizer are untouched by the bad step: this is the last good state.
        # (The checkpoint resumes at this batch.)
        self._save(epoch, step, acc)
        msg = (
            f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {self.global_step + 1}); "
            f"the last good state was saved to {self.ckpt_path}. Lower --lr, set --clip-grad, or pass "
            f"--nonfinite skip to skip such batches"
        )
        logger.error(msg)
        raise NonFiniteLossError(msg)

    def _write_summary(self, finished: bool) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        digest = self.selector.digest() if self.selector is not None else None
        digests = _all_gather_objects(digest, ctx)
        if len(set(digests)) > 1:
            logger.error("selector state differs between ranks: %s", digests)
        m = self.last_metrics
        epochs_done = int(m.get("epoch", 0))
        kr_eval, akr_eval = self.eval_ratios
        summary: dict[str, Any] = {
            "finished": finished,
            "val_top1": m.get("val_top1"),
            "val_top1_ema": m.get("val_top1_ema"),
            "val_loss": m.get("val_loss"),
            "train_loss": m.get("train_loss"),
            "train_acc": m.get("train_acc"),
            "train_seconds": self.train_seconds,
            "epochs": cfg.epochs,
            "epochs_done": epochs_done,
            "train_images": self.train_images,
            "relative_train_flops": self.flops_sum / (cfg.epochs * self.num_train * self.dense_flops),
            "dense_gflops_per_image": self.dense_flops / 1e9,
            "eval_gflops_per_image": self._flops(kr_eval) / 1e9,
            "skipped_steps": self.skipped_steps,
            "global_steps": self.global_step,
            "model": cfg.model,
            "params": sum(p.numel() for p in self.model_base.parameters()),
            "dataset": cfg.dataset,
            "num_train": self.num_train,
            "num_val": len(self.val_ds),  # type: ignore[arg-type]
            "dense": cfg.dense,
            "keep_ratio": 1.0 if cfg.dense else cfg.keep_ratio,
            "attn_keep_ratio": 1.0 if cfg.dense else cfg.attn_keep_ratio,
            "prune_layers": None if cfg.dense else list(self.model_base.trilevel_prune_layers),
            "ratio_warmup": cfg.ratio_warmup,
            "ratio_decay_end": cfg.ratio_decay_end,
            "fuse_inattentive": cfg.fuse_inattentive,
            "eval_keep_ratio": kr_eval,
            "eval_attn_keep_ratio": akr_eval,
            "selector": cfg.effective_selector,
            "example_remove": cfg.example_remove,
            "example_swap": cfg.example_swap,
            "example_update_every": cfg.example_update_every,
            "example_max_updates": cfg.example_max_updates,
            "active_examples": m.get("active_examples"),
            "selector_digest": digest,
            "selector_digest_per_rank": digests,
            "world_size": ctx.world_size,
            "global_batch_size": cfg.batch_size * ctx.world_size,
            "device": str(self.device),
            "amp": cfg.amp,
            "output_dir": str(self.out),
            "checkpoint": str(self.ckpt_path),
        }
        if ctx.is_main:
            with open(self.out / "summary.json", "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
            logger.info(
                "%s: val top-1 %.2f%% after %d/%d epochs, %.1f s of training, %d training images, "
                "relative training FLOPs %.3f, world size %d, selector digest %s",
                "done" if finished else "paused",
                float("nan") if summary["val_top1"] is None else summary["val_top1"], epochs_done,
                cfg.epochs, self.train_seconds, self.train_images, summary["relative_train_flops"],
                ctx.world_size, digest,
            )
        return summary


def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Run one training job; returns the summary (also written to ``<output_dir>/summary.json``).

    Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) it initialises the process
    group itself (and destroys it at the end); inside an already initialised group it uses that.

    Args:
        config: A :class:`TrainConfig`, or a mapping of its fields (hyphens or underscores).

    Returns:
        The summary dict: ``val_top1`` (percent), ``train_seconds`` (training loops only, summed
        over resumes), ``epochs``, ``train_images``, ``relative_train_flops`` (sum over steps of
        images x forward FLOPs at that step's keep ratio, over ``epochs x train-set size x dense
        forward FLOPs``), the tri-level settings, ``world_size``, ``selector_digest`` (and one per
        rank), ``finished`` (False after ``stop_after_epoch``), and more.

    Raises:
        ValueError: An invalid setting (named), a resume configuration that does not match the
            checkpoint, or a corrupt checkpoint (``CheckpointError``).
        FileNotFoundError: Missing data (``DatasetNotFoundError``) or checkpoint.
        NonFiniteLossError: The loss became NaN/inf with ``nonfinite="stop"`` (state saved).
        TrainingInterrupted: SIGTERM was received (checkpoint saved).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg = dataclasses.replace(cfg)  # a copy: output_dir gets resolved
    ctx = _setup_distributed(cfg.device)
    try:
        return _Trainer(cfg, ctx).run()
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
