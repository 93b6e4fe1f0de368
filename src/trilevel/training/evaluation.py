"""Top-1 evaluation of a model on a loader, and of a run's checkpoint."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Dict, Iterable, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..options import check_int
from .config import ALLOWED_AMP, ALLOWED_DEVICES

__all__ = ["autocast", "evaluate", "evaluate_checkpoint"]


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in ``bf16``/``fp16``, a no-op context for ``none``."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: Union[torch.device, str] = "cpu",
    amp: str = "none",
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
) -> Dict[str, float]:
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
    from ..models import get_keep_ratios, is_patched, set_keep_ratios, unwrap_model

    if amp not in ALLOWED_AMP:
        raise ValueError(f"amp must be one of {', '.join(ALLOWED_AMP)}; got {amp!r}")
    device = torch.device(device)
    base = unwrap_model(model)
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
            with autocast(device, amp):
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
    checkpoint: Union[str, os.PathLike],
    keep_ratio: Optional[float] = None,
    attn_keep_ratio: Optional[float] = None,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    workers: int = 0,
    ema: bool = False,
    val_subset: Optional[int] = None,
) -> Dict[str, Any]:
    """Rebuild the model of a :func:`trilevel.train` checkpoint and measure its validation top-1.

    Under ``torchrun`` the validation set is sharded over the ranks and the counts summed.

    Args:
        checkpoint: Path of a ``checkpoint.pt`` written by :func:`trilevel.train`.
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
        ValueError: A bad argument, a checkpoint that is not from :func:`trilevel.train`
            (``CheckpointError`` is a ``ValueError``), or ``ema`` without EMA weights.
    """
    from .distributed import setup_distributed, shard
    from .factory import first_examples
    from .run import load_run

    if device not in ALLOWED_DEVICES:
        raise ValueError(f"device must be one of {', '.join(ALLOWED_DEVICES)}; got {device!r}")
    check_int("batch_size", batch_size, 1, optional=True)
    check_int("workers", workers, 0)
    check_int("val_subset", val_subset, 1, optional=True)
    ctx = setup_distributed(device)
    try:
        run = load_run(checkpoint, {"data_dir": data_dir} if data_dir is not None else None,
                       device=ctx.device, ema=ema)
        config, val_set = run.config, first_examples(run.val_set, val_subset)
        kr = run.eval_ratios[0] if keep_ratio is None else keep_ratio
        akr = run.eval_ratios[1] if attn_keep_ratio is None else attn_keep_ratio
        if config.dense and (kr, akr) != (1.0, 1.0):
            raise ValueError(f"{checkpoint} is a dense run; keep ratios cannot be set (got {kr}, {akr})")
        loader = DataLoader(
            shard(val_set, ctx), batch_size=batch_size or 2 * config.batch_size, shuffle=False,
            num_workers=workers, pin_memory=ctx.device.type == "cuda",
        )
        result: Dict[str, Any] = evaluate(
            run.model, loader, ctx.device, config.amp,
            keep_ratio=None if config.dense else kr, attn_keep_ratio=None if config.dense else akr,
        )
    finally:
        ctx.close()
    result.update(
        keep_ratio=kr, attn_keep_ratio=akr, epoch=run.epoch, model=config.model, dataset=config.dataset,
        ema=bool(ema),
    )
    return result
