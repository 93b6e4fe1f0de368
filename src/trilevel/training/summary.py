"""The summary of a run (``summary.json``): its result, cost and settings in one flat dict."""

from __future__ import annotations

import logging
from typing import Any, Dict

from ..models import describe_model
from ..version import code_version
from .distributed import all_gather_objects
from .state import State

__all__ = ["run_summary"]


def run_summary(state: State, finished: bool) -> Dict[str, Any]:
    """The summary of a run after its last epoch (a collective under DDP).

    Args:
        state: The run's :class:`~trilevel.training.state.State`.
        finished: Whether the run reached its last epoch (False after ``stop_after_epoch``).

    Returns:
        ``val_top1`` (percent; on the validation split with ``val_split``, else on the test set:
        ``eval_set`` says which), ``test_top1`` (percent, on the test set, at the end of the run;
        report this one, choose on ``val_top1``), ``code_version`` (the commit that trained it),
        ``train_seconds``, ``epochs``/``epochs_done``, ``train_images``,
        ``relative_train_flops`` (the run's forward FLOPs over ``L x train-set size x dense
        forward FLOPs``, ``L`` the epochs, or the budget of a budgeted run), ``dense_epochs_used``
        (the same FLOPs in dense-epoch equivalents), ``budget``/``total_steps``/``epochs_trained``,
        wall-clock and CPU time of training and wall-clock of evaluation and checkpoints apart,
        the tri-level settings, the selector digest on every rank, and more.
    """
    cfg, ctx, p = state.config, state.ctx, state.progress
    digest = state.algorithm.digest() if state.algorithm is not None else None
    digests = all_gather_objects(digest, ctx)
    if len(set(digests)) > 1:
        logging.getLogger("trilevel.training").error("selector state differs between ranks: %s", digests)
    m = p.last_metrics
    epochs_done = int(m.get("epoch", 0))
    kr_eval, akr_eval = state.eval_ratios
    dense_epochs = p.flops_sum / (state.num_train * state.dense_flops)
    plan = state.plan
    return {
        "finished": finished,
        "val_top1": m.get("val_top1"),
        "val_top1_full_tokens": m.get("val_top1_full_tokens"),
        "test_top1": m.get("test_top1"),
        "test_top1_full_tokens": m.get("test_top1_full_tokens"),
        "eval_set": "val-split" if state.test_set is not None and state.val_set is not state.test_set else "test",
        "code_version": code_version(),
        "val_top1_ema": m.get("val_top1_ema"),
        "val_loss": m.get("val_loss"),
        "train_loss": m.get("train_loss"),
        "train_acc": m.get("train_acc"),
        "train_seconds": p.train_seconds,
        "train_cpu_seconds": p.train_cpu_seconds,
        "eval_seconds": p.eval_seconds,
        "checkpoint_seconds": p.checkpoint_seconds,
        "compile_seconds": p.compile_seconds,
        "epochs": state.run_epochs,
        "epochs_done": epochs_done,
        "epochs_trained": p.epochs_trained,
        "budget": cfg.budget,
        "total_steps": state.total_updates if plan is not None else None,
        "train_images": p.train_images,
        "relative_train_flops": dense_epochs / (cfg.budget if plan is not None else cfg.epochs),
        "dense_epochs_used": dense_epochs,
        "dense_gflops_per_image": state.dense_flops / 1e9,
        "eval_gflops_per_image": state.flops_per_image(kr_eval) / 1e9,
        "skipped_steps": p.skipped_steps,
        "global_steps": p.global_step,
        "model": cfg.model,
        "params": sum(q.numel() for q in state.model.parameters()),
        "dataset": cfg.dataset,
        "num_train": state.num_train,
        "num_val": len(state.val_set),  # type: ignore[arg-type]
        "num_test": len(state.test_set) if state.test_set is not None else None,  # type: ignore[arg-type]
        "val_split": cfg.val_split,
        "init_from": cfg.init_from or ("timm-hub" if cfg.pretrained else None),
        "dense": cfg.dense,
        "keep_ratio": 1.0 if cfg.dense else cfg.keep_ratio,
        "attn_keep_ratio": 1.0 if cfg.dense else cfg.attn_keep_ratio,
        "prune_layers": None if state.resolved is None else list(state.resolved.patch.prune_layers or ()),
        "family": None if state.resolved is None else state.resolved.family,
        "model_description": describe_model(state.model),
        "ratio_warmup": cfg.ratio_warmup,
        "ratio_decay_end": cfg.ratio_decay_end,
        "ratio_schedule": cfg.ratio_schedule,
        "ratio_curve": cfg.ratio_curve,
        "dense_tail": cfg.dense_tail,
        "token_fate": cfg.token_fate,
        "token_score": cfg.token_score,
        "rejoin_layer": cfg.rejoin_layer,
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
        "device": str(state.device),
        "amp": cfg.amp,
        "output_dir": str(state.folder),
        "checkpoint": str(state.checkpoint),
    }
