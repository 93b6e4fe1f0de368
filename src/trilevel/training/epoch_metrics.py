"""The end of an epoch: its sums folded into the run's totals, validation, and its metrics line (``metrics.jsonl``)."""

from __future__ import annotations

import time
from typing import Any, Dict

from .evaluation import evaluate, test_set_metrics
from .state import State

__all__ = ["epoch_metrics"]


def epoch_metrics(state: State) -> Dict[str, Any]:
    """Fold ``state.epoch`` into the run's totals, validate when due; returns the epoch's metrics line.

    A collective under DDP (the sums are reduced, evaluation is sharded). The run's totals in
    ``state.progress`` (seconds, images, FLOPs, passes) grow by the epoch's; evaluation time goes to
    ``progress.eval_seconds``.

    Returns:
        ``epoch`` (1-based), ``train_loss``, ``train_acc`` (percent, against the dominant label of a
        mixed target), ``val_top1`` / ``val_loss`` / ``val_images`` (None when not evaluated this
        epoch), at the run's end ``val_top1_full_tokens`` and ``test_top1`` / ``test_top1_full_tokens``,
        ``val_top1_ema`` with EMA, then ``epoch_seconds``, ``epoch_cpu_seconds``, ``train_images``,
        ``train_images_per_s``, ``active_examples``, ``mean_tokens_per_block``, the last step's
        ``keep_ratio`` / ``attn_keep_ratio`` / ``lr``, ``skipped_steps`` and ``dense_epochs_so_far``.
    """
    epoch, p = state.epoch, state.progress
    acc = epoch.acc
    p.epochs_trained += (acc.steps + acc.skipped) / epoch.full_iters
    totals = acc.reduced(state.ctx)
    # The checkpoint's run totals exclude a partial epoch (its sums travel in epoch_acc).
    p.train_seconds += acc.seconds
    p.train_cpu_seconds += acc.cpu_seconds
    epoch_images = totals["images"]
    p.train_images += epoch_images
    p.flops_sum += totals["flops"]
    counted = max(1, totals["counted"])
    t_eval = time.perf_counter()
    metrics: Dict[str, Any] = {
        "epoch": epoch.index + 1,
        "train_loss": totals["loss_sum"] / counted,
        "train_acc": 100.0 * totals["correct"] / counted,
        **_evaluation(state),
    }
    p.eval_seconds += time.perf_counter() - t_eval
    num_active = state.algorithm.num_active if state.algorithm is not None else None
    metrics.update(
        epoch_seconds=acc.seconds,
        epoch_cpu_seconds=acc.cpu_seconds,
        train_images=epoch_images,
        train_images_per_s=epoch_images / max(acc.seconds, 1e-9),
        active_examples=num_active if num_active is not None else state.num_train,
        mean_tokens_per_block=(acc.tokens_sum / max(1, acc.steps + acc.skipped)
                               if state.meter.dense_tokens is not None else None),
        keep_ratio=epoch.keep_ratio,
        attn_keep_ratio=epoch.attn_keep_ratio,
        lr=epoch.lr,
        skipped_steps=totals["skipped"],
        dense_epochs_so_far=p.flops_sum / (state.num_train * state.dense_flops),
    )
    return metrics


def _evaluation(state: State) -> Dict[str, Any]:
    """Validation (when due), and at the run's end the full-token and test-set top-1, and EMA's."""
    cfg, index = state.config, state.epoch.index
    model, loader, device = state.wrapped_model, state.val_loader, state.device
    ratios = state.eval_ratios if state.algorithm is not None else (None, None)
    ends = state.run_ends_after(index)
    if state.last_epoch_of_invocation(index) or (index + 1) % cfg.eval_every == 0:
        val = evaluate(model, loader, device, cfg.amp, *ratios)
    else:
        val = {"top1": None, "loss": None, "images": None}
    full = None  # a pruned model's top-1 with every token (what a stock timm model of its weights gets)
    if ends and state.algorithm is not None and state.eval_ratios != (1.0, 1.0):
        full = evaluate(model, loader, device, cfg.amp, 1.0, 1.0)["top1"]
    test = test_set_metrics(model, state.test_set, state.ctx, cfg,
                            state.eval_ratios if state.algorithm is not None else None,
                            val if state.val_set is state.test_set else None, full) if ends else {}
    out: Dict[str, Any] = {"val_top1": val["top1"], "val_loss": val["loss"], "val_images": val["images"]}
    if full is not None or (ends and val["top1"] is not None):
        out["val_top1_full_tokens"] = val["top1"] if full is None else full
    out.update(test)
    if state.ema is not None and val["top1"] is not None:
        out["val_top1_ema"] = evaluate(state.ema.module, loader, device, cfg.amp, *ratios)["top1"]
    return out
