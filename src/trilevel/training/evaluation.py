"""Top-1 and throughput evaluation of a model on a loader, and of a run's checkpoint (pruned or not)."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..options import check_int
from .config import ALLOWED_AMP, ALLOWED_DEVICES

__all__ = ["autocast", "evaluate", "evaluate_checkpoint", "evaluate_checkpoint_sweep", "check_keep_ratio",
           "dense_eval_settings"]


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
    warmup: int = 0,
    synchronize: bool = False,
) -> Dict[str, float]:
    """Top-1 accuracy, mean cross-entropy and forward throughput of ``model`` on ``loader``.

    Under ``torch.distributed`` the counts are summed over ranks with ``all_reduce``, so each rank
    must get a disjoint shard of the data (e.g. ``Subset(ds, range(rank, len(ds), world))``); every
    rank gets the global result.

    Only the model calls are timed (``time.perf_counter``; ``time.process_time`` for the CPU
    seconds): data loading, the copy to the device and the metrics are not. On CUDA the kernels
    run asynchronously, so the wall seconds are the forward passes' only with ``synchronize`` (a
    ``torch.cuda.synchronize`` before and after each; a throughput measurement asks for it, a
    training run's per-epoch evaluation does not pay for it). Under ``torch.distributed`` ``seconds`` is the slowest
    rank's and ``cpu_seconds`` the sum over ranks.

    Args:
        model: A classifier (patched or not; DDP-wrapped is fine).
        loader: Yields ``(images (B, C, H, W), targets (B,))`` (extra items are ignored).
        device: Where to run.
        amp: ``none``, ``bf16`` or ``fp16`` autocast.
        keep_ratio: Token keep ratio for this evaluation (patched models only); None keeps the
            model's current ratios. The previous ratios are restored afterwards.
        attn_keep_ratio: Attention keep ratio for this evaluation; None keeps the current one.
        warmup: Untimed forward passes of the first batch before its timed one (they count
            toward nothing else either); 1 or more for a throughput free of first-call costs.
        synchronize: On CUDA, wait for the device around each timed forward pass (honest
            ``seconds`` at the cost of two host-device syncs per batch); ignored on the CPU.

    Returns:
        ``{"top1": percent, "loss": mean cross-entropy, "images": count, "seconds": wall seconds
        of the timed forward passes, "cpu_seconds": process CPU seconds of them, "images_per_s":
        images / seconds}`` (``top1``, ``loss`` and ``images_per_s`` are NaN for an empty loader).

    Raises:
        ValueError: If ``amp`` is unknown, ``warmup`` is negative, or ratios are given for an
            unpatched model or are outside (0, 1].
    """
    from ..models import get_keep_ratios, is_patched, set_keep_ratios, unwrap_model

    if amp not in ALLOWED_AMP:
        raise ValueError(f"amp must be one of {', '.join(ALLOWED_AMP)}; got {amp!r}")
    check_int("warmup", warmup, 0)
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
    sync = synchronize and device.type == "cuda"
    seconds = cpu_seconds = 0.0
    try:
        for i, batch in enumerate(loader):
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp):
                for _ in range(warmup if i == 0 else 0):
                    base(images)
                if sync:
                    torch.cuda.synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                logits = base(images)
                if sync:
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - t0
                cpu_seconds += time.process_time() - c0
            logits = logits.float()
            totals[0] += (logits.argmax(dim=1) == targets).sum()
            totals[1] += F.cross_entropy(logits, targets, reduction="sum")
            totals[2] += targets.shape[0]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
            wall = torch.tensor([seconds], dtype=torch.float64, device=device)
            cpu = torch.tensor([cpu_seconds], dtype=torch.float64, device=device)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
            seconds, cpu_seconds = wall.item(), cpu.item()
    finally:
        base.train(was_training)
        if previous is not None:
            set_keep_ratios(base, *previous)
    correct, loss_sum, count = totals.tolist()
    timing = {"seconds": seconds, "cpu_seconds": cpu_seconds,
              "images_per_s": count / seconds if count > 0 and seconds > 0 else float("nan")}
    if count == 0:
        return {"top1": float("nan"), "loss": float("nan"), "images": 0, **timing}
    return {"top1": 100.0 * correct / count, "loss": loss_sum / count, "images": int(count), **timing}


def check_keep_ratio(name: str, value: Any) -> float:
    """``value`` as a float if it is a keep ratio, a number in (0, 1].

    Args:
        name: The option, for the message (``keep_ratio``, ``attn_keep_ratio``).
        value: The value to check.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: If ``value`` is not a number in (0, 1] (the message names the value and the
            allowed range).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < float(value) <= 1.0
    if not ok:
        raise ValueError(f"{name} must be a number in (0, 1] (0 excluded, 1 keeps every token); got {value!r}")
    return float(value)


def dense_eval_settings(model: nn.Module, keep_ratio: float) -> Any:
    """The patch settings that prune a densely trained (stock timm) model at evaluation, as EViT does.

    The token level only: [CLS]-attention top-k in the family's default pruning blocks, the pruned
    tokens dropped (a family without the ``drop`` fate, such as Swin, uses its first fate), the
    attention level off (``attn_keep_ratio`` 1.0). Liang et al., "Not All Patches are What You
    Need" (EViT), ICLR 2022, prune a model fine-tuned densely this way.

    Args:
        model: The stock model (wrappers allowed).
        keep_ratio: Kept fraction of patch tokens per pruning block, in (0, 1].

    Returns:
        A :class:`~trilevel.models.PatchSettings` for :func:`trilevel.patch`.

    Raises:
        TypeError: For a model of no registered family.
    """
    from ..models import PatchSettings, family_of

    family = family_of(model)
    fates = family.token_fates
    fate = "drop" if fates is None or "drop" in fates else fates[0]
    return PatchSettings(prune_layers=None, keep_ratio=keep_ratio, attn_keep_ratio=1.0, token_fate=fate,
                         token_score="cls-attention")


def _set_dense_pruning(model: nn.Module, keep_ratio: float, checkpoint: Any) -> None:
    """Patch a dense run's stock model for evaluation at ``keep_ratio`` (< 1), or unpatch it (1.0).

    Raises:
        ValueError: If the model's family cannot be pruned at evaluation (named).
    """
    from ..models import patch, unpatch

    if keep_ratio >= 1.0:
        unpatch(model)
        return
    try:
        patch(model, dense_eval_settings(model, keep_ratio))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint} is a dense run whose model cannot be pruned at evaluation "
                         f"(keep_ratio {keep_ratio:g}): {e}") from None


def _gflops(model: nn.Module, keep_ratio: float, attn_keep_ratio: float) -> Optional[float]:
    """Forward GFLOPs of one image at the given ratios (:func:`trilevel.forward_flops`); None if not countable."""
    from ..models import forward_flops

    try:
        return forward_flops(model, keep_ratio=keep_ratio, attn_keep_ratio=attn_keep_ratio) / 1e9
    except (TypeError, ValueError, NotImplementedError):
        return None


def test_set_metrics(model: torch.nn.Module, test_set: Any, ctx: Any, config: Any,
                     eval_ratios: Optional[Tuple[float, float]], evaluated: Optional[Dict[str, Any]] = None,
                     evaluated_full: Optional[float] = None) -> Dict[str, Any]:
    """A run's top-1 on the test set, once, at its end (the run chose nothing on it).

    Without a validation split the run evaluated the test set all along: pass that result as
    ``evaluated`` (and its full-token top-1 as ``evaluated_full``) and it is reused.

    Args:
        model: The trained (possibly patched, DDP-wrapped) model.
        test_set: The test set; sharded over the ranks of ``ctx``.
        ctx: The distributed context (its ``device`` and ``rank``).
        config: The run's configuration (``batch_size``, ``workers``, ``seed``, ``amp``).
        eval_ratios: ``(keep_ratio, attn_keep_ratio)`` of a tri-level run's evaluation; None for dense.
        evaluated: The last evaluation of ``test_set`` at ``eval_ratios`` (its ``top1``), or None.
        evaluated_full: Its top-1 with every token, None when it is ``evaluated``'s.

    Returns:
        ``{"test_top1", "test_top1_full_tokens"}`` in percent: at the run's evaluation ratios and
        with every token (the same for a dense run or ratios of 1.0).
    """
    if evaluated is not None:
        top1 = evaluated["top1"]
        return {"test_top1": top1, "test_top1_full_tokens": top1 if evaluated_full is None else evaluated_full}
    from .distributed import shard
    from .loaders import make_loader

    loader = make_loader(shard(test_set, ctx), 2 * config.batch_size, config.workers, ctx.device, config.seed, 0,
                         ctx.rank)
    ratios = eval_ratios if eval_ratios is not None else (None, None)
    top1 = evaluate(model, loader, ctx.device, config.amp, *ratios)["top1"]
    full = top1
    if eval_ratios is not None and tuple(eval_ratios) != (1.0, 1.0):
        full = evaluate(model, loader, ctx.device, config.amp, 1.0, 1.0)["top1"]
    return {"test_top1": top1, "test_top1_full_tokens": full}


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
    """Rebuild the model of a :func:`trilevel.train` checkpoint; measure its validation top-1 and throughput.

    A dense run (a stock timm model) with ``keep_ratio < 1`` is pruned for this evaluation with
    the token level only (:func:`dense_eval_settings`: [CLS]-attention top-k in the family's
    default pruning blocks, tokens dropped), so a model fine-tuned densely is evaluated pruned, as
    EViT (Liang et al., ICLR 2022) does. The forward passes are timed after one untimed warm-up
    pass of the first batch (see :func:`evaluate`). Under ``torchrun`` the validation set is
    sharded over the ranks and the counts summed.

    Args:
        checkpoint: Path of a ``checkpoint.pt`` written by :func:`trilevel.train`.
        keep_ratio: Token keep ratio in (0, 1]; None: the run's evaluation ratio (1.0 for a dense run).
        attn_keep_ratio: Attention keep ratio in (0, 1]; None: the run's evaluation ratio. A dense
            run allows 1.0 only.
        data_dir: Data folder; None: the one stored in the checkpoint's configuration.
        batch_size: Evaluation batch size; None: twice the training batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: DataLoader workers.
        ema: Evaluate the EMA weights (the run must have used ``ema_decay > 0``).
        val_subset: Evaluate on the first N validation examples only; None: all.

    Returns:
        ``{"top1", "loss", "images", "seconds", "cpu_seconds", "images_per_s", "keep_ratio",
        "attn_keep_ratio", "gflops_per_image", "dense_run", "epoch", "model", "dataset", "ema"}``
        (``gflops_per_image``: :func:`trilevel.forward_flops` / 1e9 at these ratios, None for a
        model of no registered family; ``dense_run``: whether the run trained a stock model).

    Raises:
        FileNotFoundError: Missing checkpoint or data (``DatasetNotFoundError``).
        ValueError: A bad argument (a ratio outside (0, 1] is named with the range), a checkpoint
            that is not from :func:`trilevel.train` (``CheckpointError`` is a ``ValueError``),
            ``ema`` without EMA weights, ``attn_keep_ratio < 1`` on a dense run, or a dense run
            whose model cannot be pruned.
    """
    return _evaluate_run(checkpoint, [keep_ratio], attn_keep_ratio, data_dir=data_dir, batch_size=batch_size,
                         device=device, workers=workers, ema=ema, val_subset=val_subset)[0]


def evaluate_checkpoint_sweep(
    checkpoint: Union[str, os.PathLike],
    keep_ratios: Sequence[float] = (1.0, 0.7, 0.5, 0.3),
    attn_keep_ratio: Optional[float] = None,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    batch_size: Optional[int] = None,
    device: str = "auto",
    workers: int = 0,
    ema: bool = False,
    val_subset: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """:func:`evaluate_checkpoint` at several token keep ratios, in one process, on one loaded model.

    Every ratio sees the same batches (the validation set in order) and is timed after its own
    untimed warm-up pass of the first batch. A dense run is evaluated stock at 1.0 and pruned with
    the token level only below it (:func:`dense_eval_settings`).

    Args:
        checkpoint: Path of a ``checkpoint.pt`` written by :func:`trilevel.train`.
        keep_ratios: Token keep ratios, each in (0, 1], evaluated in this order (at least one).
        attn_keep_ratio: Attention keep ratio for every entry; None: the run's evaluation ratio
            (a dense run allows 1.0 only).
        data_dir, batch_size, device, workers, ema, val_subset: As for :func:`evaluate_checkpoint`.

    Returns:
        One :func:`evaluate_checkpoint` result per ratio, in the order given, each with
        ``relative_images_per_s``: its ``images_per_s`` over that of the (first) 1.0 entry, None
        when ``keep_ratios`` has no 1.0.

    Raises:
        FileNotFoundError: Missing checkpoint or data.
        ValueError: As for :func:`evaluate_checkpoint`, or an empty ``keep_ratios``.
    """
    ratios = list(keep_ratios)
    if not ratios:
        raise ValueError("keep_ratios needs at least one keep ratio in (0, 1]")
    results = _evaluate_run(checkpoint, ratios, attn_keep_ratio, data_dir=data_dir, batch_size=batch_size,
                            device=device, workers=workers, ema=ema, val_subset=val_subset)
    base = next((r["images_per_s"] for r in results if r["keep_ratio"] == 1.0), None)
    for r in results:
        ok = base is not None and base > 0 and not math.isnan(base)
        r["relative_images_per_s"] = r["images_per_s"] / base if ok else None
    return results


def _evaluate_run(
    checkpoint: Union[str, os.PathLike],
    keep_ratios: Sequence[Optional[float]],
    attn_keep_ratio: Optional[float],
    *,
    data_dir: Optional[Union[str, os.PathLike]],
    batch_size: Optional[int],
    device: str,
    workers: int,
    ema: bool,
    val_subset: Optional[int],
) -> List[Dict[str, Any]]:
    """Load a run once and evaluate it at each of ``keep_ratios`` (None: the run's evaluation ratio)."""
    from .distributed import setup_distributed, shard
    from .factory import first_examples
    from .run import load_run

    if device not in ALLOWED_DEVICES:
        raise ValueError(f"device must be one of {', '.join(ALLOWED_DEVICES)}; got {device!r}")
    keep_ratios = [None if r is None else check_keep_ratio("keep_ratio", r) for r in keep_ratios]
    if attn_keep_ratio is not None:
        attn_keep_ratio = check_keep_ratio("attn_keep_ratio", attn_keep_ratio)
    check_int("batch_size", batch_size, 1, optional=True)
    check_int("workers", workers, 0)
    check_int("val_subset", val_subset, 1, optional=True)
    ctx = setup_distributed(device)
    results: List[Dict[str, Any]] = []
    try:
        run = load_run(checkpoint, {"data_dir": data_dir} if data_dir is not None else None,
                       device=ctx.device, ema=ema)
        config, val_set = run.config, first_examples(run.val_set, val_subset)
        akr = run.eval_ratios[1] if attn_keep_ratio is None else attn_keep_ratio
        if config.dense and akr != 1.0:
            raise ValueError(
                f"{checkpoint} is a dense run (a stock timm model): evaluation can prune its tokens "
                f"(keep_ratio < 1) but has no attention level for it; attn_keep_ratio must be 1.0 (got {akr:g})"
            )
        loader = DataLoader(
            shard(val_set, ctx), batch_size=batch_size or 2 * config.batch_size, shuffle=False,
            num_workers=workers, pin_memory=ctx.device.type == "cuda",
        )
        for keep_ratio in keep_ratios:
            kr = run.eval_ratios[0] if keep_ratio is None else keep_ratio
            if config.dense:
                _set_dense_pruning(run.model, kr, checkpoint)
            result: Dict[str, Any] = evaluate(
                run.model, loader, ctx.device, config.amp,
                keep_ratio=None if config.dense else kr, attn_keep_ratio=None if config.dense else akr, warmup=1,
                synchronize=True,
            )
            result.update(
                keep_ratio=kr, attn_keep_ratio=akr, gflops_per_image=_gflops(run.model, kr, akr),
                dense_run=bool(config.dense), epoch=run.epoch, model=config.model, dataset=config.dataset,
                ema=bool(ema),
            )
            results.append(result)
    finally:
        ctx.close()
    return results
