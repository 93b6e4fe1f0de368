"""Building a run's parts into its :class:`~trilevel.training.state.State`: :func:`build_run`.

The order is part of the result: every rank seeds the global RNGs with ``seed`` first (identical
initialisation), then the data, the model, the settings resolved once for it, the FLOP model,
the optimizer, the budget plan, the :class:`~trilevel.TriLevel` algorithm (the one patch), EMA,
DDP and ``torch.compile``, the sampler and the mixer are built; only then does each rank draw its
own dropout and mixup streams. Source: DeiT's recipe (Touvron et al., ICML 2021) through timm;
the method of Kong et al., AAAI 2023.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
import torch.nn as nn

from .accounting import FlopMeter
from .factory import build_criterion, build_data, build_model, patch_side
from .loaders import make_loader, seed_rank_streams
from .distributed import shard
from .state import State

__all__ = ["build_run"]

logger = logging.getLogger("trilevel.training")


def build_run(state: State) -> None:
    """Build the parts of the run of ``state.config`` into ``state`` (see the module docstring).

    Sets ``state.config`` to the resolved configuration of a tri-level run (``--speedup``).

    Raises:
        ValueError: An invalid setting (named), e.g. ``amp='fp16'`` off CUDA or a batch larger
            than a rank's share of the training set.
        FileNotFoundError: Missing data.
    """
    if state.config.amp == "fp16" and state.device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use --amp bf16 or none on the CPU")
    # Same seed on every rank: identical init (each rank then draws its own streams, in _build_loop).
    torch.manual_seed(state.config.seed)
    np.random.seed(state.config.seed)
    random.seed(state.config.seed)
    _build_model(state)
    _build_method(state)
    _build_loop(state)


def _build_model(state: State) -> None:
    """Data, model, the settings resolved once for it, the FLOP model, optimizer and grad scaler."""
    from timm.optim import create_optimizer_v2

    from ..algorithm import install_patch_dropout
    from ..settings import resolve_config

    cfg = state.config
    state.train_set, val, state.test_set, state.info = build_data(cfg)
    state.val_set = val if val is not None else state.test_set  # evaluated each epoch
    state.num_train = len(state.train_set)  # type: ignore[arg-type]
    info = state.info
    model = build_model(cfg, info.num_classes, info.in_chans, info.img_size, cfg.resume is None)
    model.to(state.device)
    state.model = model
    # The settings resolved once for this model (family defaults, --speedup, schedules, eval ratios).
    state.resolved = resolve_config(cfg, model) if cfg.tri_level else None
    if state.resolved is not None:
        state.config = cfg = state.resolved.config
        install_patch_dropout(model, cfg.patch_drop)  # before the FLOP meter and the budget plan read the model
        if cfg.speedup is not None:
            logger.info("speedup %g: keep ratio %g", cfg.speedup, cfg.keep_ratio)
    state.meter = FlopMeter(model, settings=None if state.resolved is None else state.resolved.patch,
                            in_chans=info.in_chans, img_size=info.img_size, device=state.device)
    state.optimizer = create_optimizer_v2(model, "adamw", cfg.lr, cfg.weight_decay, layer_decay=cfg.layer_decay)
    state.scaler = torch.amp.GradScaler(state.device.type, enabled=cfg.amp == "fp16")


def _build_method(state: State) -> None:
    """Budget plan, resolution curriculum, the algorithm (the one patch), EMA, DDP and compile."""
    from timm.utils import ModelEmaV3

    from ..algorithm import TriLevel, compile_model
    from .budget import plan_run, resolution_schedule

    cfg, ctx, model = state.config, state.ctx, state.model
    state.drop_last = cfg.mixup > 0 or cfg.cutmix > 0  # Mixup needs even batches
    state.resolution = resolution_schedule(cfg, state.info.img_size, patch_side(model))
    state.plan = None
    if cfg.budget is not None:
        state.plan = plan_run(cfg, state.num_train, ctx.world_size, state.drop_last, state.dense_flops,
                              state.flops_per_image, state.info.img_size, patch_side(model))
        logger.info("budget %g dense epochs: %d steps, %.2f passes over the active set",
                    state.plan.budget, state.plan.total_steps, state.plan.epochs)
    state.run_epochs = state.plan.whole_epochs if state.plan is not None else cfg.epochs
    state.algorithm = None
    if state.resolved is not None:
        state.algorithm = TriLevel(model, state.num_train, epochs=state.run_epochs, config=state.resolved,
                                   seed=cfg.seed, num_replicas=ctx.world_size, rank=ctx.rank)
        if state.algorithm.selector is not None:  # statistics next to the logits: no per-step host copy
            state.algorithm.selector.to(state.device)
    # after the (one) patch: the EMA copy and DDP see the patched model
    state.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    wrapped: nn.Module = model if not ctx.distributed else nn.parallel.DistributedDataParallel(
        model, device_ids=[state.device.index] if state.device.type == "cuda" else None)
    if cfg.compile:  # compile time is counted apart (progress.compile_seconds)
        wrapped = compile_model(wrapped, cfg.ratio_buckets if cfg.tri_level else 0)
    state.wrapped_model = wrapped


def _build_loop(state: State) -> None:
    """Sampler, mixer and loss, each rank's own streams, the LR schedule and the validation loader."""
    from timm.scheduler import CosineLRScheduler
    from torch.utils.data import DistributedSampler

    from ..example_selection import IndexedDataset

    cfg, ctx = state.config, state.ctx
    state.train_indexed = IndexedDataset(state.train_set)
    own = state.algorithm.sampler if state.algorithm is not None else None  # the active set's, if selecting
    state.sampler = own if own is not None else DistributedSampler(
        state.train_indexed, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    state.mixup, state.criterion = build_criterion(cfg, state.info.num_classes)
    if ctx.rank > 0:  # own dropout and mixup streams per rank (rank 0 keeps the seed's)
        seed_rank_streams(cfg.seed, ctx.rank)

    # LR schedule in iterations of a nominal epoch (the first epoch's length); the LR is set
    # from the run progress, so epochs of other lengths still cover their share.
    if state.algorithm is not None:
        state.algorithm.on_epoch_start(0, 0.0)
    if state.sampler is not getattr(state.algorithm, "sampler", None):
        state.sampler.set_epoch(0)  # type: ignore[attr-defined]
    state.nominal_iters = state.steps_in_epoch(len(state.sampler))  # type: ignore[arg-type]
    if state.nominal_iters == 0:
        raise ValueError(
            f"batch-size {cfg.batch_size} is larger than the per-rank share of the training set "
            f"({len(state.sampler)} examples); lower --batch-size"  # type: ignore[arg-type]
        )
    # Epochs: iterations of a nominal epoch (the first); a budget: its exact step count.
    state.total_updates = state.plan.total_steps if state.plan is not None else cfg.epochs * state.nominal_iters
    state.lr_scheduler = CosineLRScheduler(
        state.optimizer, t_initial=state.total_updates, lr_min=cfg.min_lr,
        warmup_t=int(round(cfg.warmup_fraction() * state.total_updates)), warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=False,
    )
    state.eval_ratios = (1.0, 1.0) if state.resolved is None else state.resolved.eval_ratios
    state.val_loader = make_loader(shard(state.val_set, ctx), 2 * cfg.batch_size, cfg.workers, state.device,
                                   cfg.seed, 0, ctx.rank)
