"""The training loop of ``trilevel train``: tri-level (or dense) training of a timm model.

:func:`train` runs one job from a :class:`~trilevel.training.TrainConfig` and returns its summary
(Kong et al., "Peeling the Onion", AAAI 2023; DeiT's recipe, Touvron et al., ICML 2021, via timm).
Unless ``dense``, the :class:`~trilevel.algorithm.TriLevel` algorithm patches the model and owns
the keep-ratio schedules, the example selector and its sampler; the loop calls it at
``on_epoch_start``, ``on_step`` (progress ``(epoch + i / iters_this_epoch) / epochs``, which also
drives the per-iteration cosine LR with warm-up) and ``after_forward``. Under ``torchrun`` the
model is wrapped in DDP, every rank initialises with the same ``seed`` (then draws its own dropout,
mixup and augmentation streams), the selector all-gathers its observations, evaluation is sharded,
and only rank 0 writes (:class:`~trilevel.training.output.RunOutput`).
Each stateful part (model, optimizer, LR scheduler, grad scaler, EMA, algorithm, run progress)
contributes its own ``state_dict`` to the checkpoint (:mod:`~trilevel.training.checkpointing`), so a
resumed run (after an epoch, after SIGTERM or a step checkpoint mid-epoch, or after SIGKILL from its
last checkpoint) ends bit-identical to an uninterrupted one on CPU, with any number of workers
(augmentation is seeded per sample: :mod:`~trilevel.training.loaders`).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..example_selection import dominant_indices
from .accounting import EpochAccumulator, FlopMeter, RunProgress, StepFlags
from .checkpointing import (
    CHECKPOINT_FORMAT, CheckpointWriteError, NonFiniteLossError, RunCheckpoints, TrainingFailedError,
    TrainingInterrupted, checkpoint_state, restore_state,
)
from .config import TrainConfig, check_resume
from .distributed import DistContext, agree, setup_distributed, shard
from .evaluation import autocast, evaluate, test_set_metrics
from .factory import patch_side
from .loaders import make_loader, seed_rank_streams
from .output import RunOutput
from .signals import STOP_REQUEST, compiled_graphs
from .state import RunState

__all__ = ["CHECKPOINT_FORMAT", "CheckpointWriteError", "NonFiniteLossError", "Trainer", "TrainingFailedError",
           "TrainingInterrupted", "train"]

logger = logging.getLogger("trilevel.training")


class Trainer:
    """One training run (see :func:`train`); ``run()`` does the work and returns the summary.

    Args:
        config: The run's configuration (frozen; ``output_dir`` is resolved into a copy, :attr:`cfg`).
        ctx: This process's distributed context.
    """

    def __init__(self, config: TrainConfig, ctx: DistContext) -> None:
        self.cfg = self.given_cfg = config
        self.ctx = ctx
        self.device = ctx.device
        self._stop_requested = False
        self._training = False  # set once setup is done: later failures are the run's (TrainingFailedError)
        self.progress = RunProgress()
        self.metrics_history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------------------ setup
    def _build(self) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.utils import ModelEmaV3

        from ..algorithm import TriLevel, compile_model, install_patch_dropout
        from ..example_selection import IndexedDataset
        from ..settings import resolve_config
        from .factory import build_criterion, build_data, build_model

        cfg, ctx = self.cfg, self.ctx
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use --amp bf16 or none on the CPU")
        # Same seed on every rank: identical init (each rank then draws its own streams, below).
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

        self.train_ds, val, self.test_ds, self.info = build_data(cfg)
        self.val_ds = val if val is not None else self.test_ds  # evaluated each epoch
        self.num_train = len(self.train_ds)  # type: ignore[arg-type]
        model = build_model(cfg, self.info.num_classes, self.info.in_chans, self.info.img_size, cfg.resume is None)
        model.to(self.device)
        self.model_base = model
        # The settings resolved once for this model (family defaults, --speedup, schedules, eval ratios).
        self.resolved = resolve_config(cfg, model) if cfg.tri_level else None
        if self.resolved is not None:
            self.cfg = cfg = self.resolved.config
            install_patch_dropout(model, cfg.patch_drop)  # before the FLOP meter and the budget plan read the model
            if cfg.speedup is not None:
                logger.info("speedup %g: keep ratio %g", cfg.speedup, cfg.keep_ratio)

        self.meter = FlopMeter(model, settings=None if self.resolved is None else self.resolved.patch,
                               in_chans=self.info.in_chans, img_size=self.info.img_size, device=self.device)
        self.dense_flops = self.meter.dense_flops

        self.optimizer = create_optimizer_v2(model, "adamw", cfg.lr, cfg.weight_decay, layer_decay=cfg.layer_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

        self.drop_last = cfg.mixup > 0 or cfg.cutmix > 0  # Mixup needs even batches
        from .budget import resolution_schedule

        self.resolution = resolution_schedule(cfg, self.info.img_size, patch_side(self.model_base))
        self.plan = self._plan_budget() if cfg.budget is not None else None
        self.run_epochs = self.plan.whole_epochs if self.plan is not None else cfg.epochs
        self.algorithm: Optional[TriLevel] = None
        if self.resolved is not None:
            self.algorithm = TriLevel(model, self.num_train, epochs=self.run_epochs, config=self.resolved,
                                      seed=cfg.seed, num_replicas=ctx.world_size, rank=ctx.rank)
            if self.algorithm.selector is not None:  # statistics next to the logits: no per-step host copy
                self.algorithm.selector.to(self.device)
        # after the (one) patch: the EMA copy and DDP see the patched model
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.model = model if not ctx.distributed else nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:  # compile time is counted apart (progress.compile_seconds)
            self.model = compile_model(self.model, cfg.ratio_buckets if cfg.tri_level else 0)
        self.train_indexed = IndexedDataset(self.train_ds)
        own = self.algorithm.sampler if self.algorithm is not None else None  # the active set's, if selecting
        self.sampler = own if own is not None else DistributedSampler(
            self.train_indexed, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
        self.mixup, self.criterion = build_criterion(cfg, self.info.num_classes)
        if ctx.rank > 0:  # own dropout and mixup streams per rank (rank 0 keeps the seed's)
            seed_rank_streams(cfg.seed, ctx.rank)

        # LR schedule in iterations of a nominal epoch (the first epoch's length); the LR is set
        # from the run progress, so epochs of other lengths still cover their share.
        self._start_epoch(0, 0.0)
        self.nominal_iters = self._iters(len(self.sampler))
        if self.nominal_iters == 0:
            raise ValueError(
                f"batch-size {cfg.batch_size} is larger than the per-rank share of the training set "
                f"({len(self.sampler)} examples); lower --batch-size"
            )
        # Epochs: iterations of a nominal epoch (the first); a budget: its exact step count.
        self.total_updates = self.plan.total_steps if self.plan is not None else cfg.epochs * self.nominal_iters
        self.lr_scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.total_updates, lr_min=cfg.min_lr,
            warmup_t=int(round(cfg.warmup_fraction() * self.total_updates)), warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=False,
        )
        self.eval_ratios = (1.0, 1.0) if self.resolved is None else self.resolved.eval_ratios
        self.val_loader = make_loader(shard(self.val_ds, ctx), 2 * cfg.batch_size, cfg.workers, self.device,
                                      cfg.seed, 0, ctx.rank)

    def _plan_budget(self):
        """The steps ``cfg.budget`` buys this run (see :mod:`trilevel.training.budget`)."""
        from .budget import plan_run

        plan = plan_run(self.cfg, self.num_train, self.ctx.world_size, self.drop_last, self.dense_flops,
                        self.flops_per_image, self.info.img_size, patch_side(self.model_base))
        logger.info("budget %g dense epochs: %d steps, %.2f passes over the active set",
                    plan.budget, plan.total_steps, plan.epochs)
        return plan

    def _run_ends_after(self, epoch: int) -> bool:
        """Whether the run is complete after 0-based ``epoch`` (its last epoch, or its budget spent)."""
        if self.plan is not None:
            return self.progress.global_step >= self.plan.total_steps
        return epoch + 1 >= self.cfg.epochs

    def _start_epoch(self, epoch: int, progress: float) -> None:
        if self.algorithm is not None:
            self.algorithm.on_epoch_start(epoch, progress)
        if self.sampler is not getattr(self.algorithm, "sampler", None):
            self.sampler.set_epoch(epoch)

    def _iters(self, n: int) -> int:
        b = self.cfg.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def flops_per_image(self, keep_ratio: float, training: bool = False, attn_keep_ratio: float = 1.0,
                        img_size: Optional[int] = None) -> float:
        """Forward FLOPs per image at the given ratios (cached; the dense count for a dense model).

        Args:
            keep_ratio: Token keep ratio.
            training: Count a training forward (timm's PatchDropout active, when configured).
            attn_keep_ratio: Attention keep ratio.
            img_size: Input side (resolution curriculum); None: the model's.
        """
        if img_size == self.info.img_size:
            img_size = None
        return self.meter.per_image(keep_ratio, training, attn_keep_ratio, img_size)

    # ------------------------------------------------------------------------------ state
    def run_state(self) -> RunState:
        """What checkpointing, the summary and the outputs read (the live parts, by reference)."""
        return RunState(
            cfg=self.cfg, given_cfg=self.given_cfg, ctx=self.ctx, device=self.device, info=self.info,
            resolved=self.resolved, model=self.model_base, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
            scaler=self.scaler, ema=self.ema, algorithm=self.algorithm, progress=self.progress,
            metrics_history=self.metrics_history, plan=self.plan, run_epochs=self.run_epochs,
            total_updates=self.total_updates, num_train=self.num_train, val_set=self.val_ds, test_set=self.test_ds,
            dense_flops=self.dense_flops, eval_ratios=self.eval_ratios, flops_per_image=self.flops_per_image,
            folder=getattr(self, "out", None), checkpoint=getattr(self, "ckpt_path", None),
        )

    def _save(self, next_epoch: int, next_step: int, acc: Optional[EpochAccumulator] = None) -> float:
        """Save the checkpoint (a collective under DDP); returns the seconds it took.

        Raises:
            CheckpointWriteError: The write failed on rank 0 (every rank raises); the previous file is kept.
        """
        t_save = time.perf_counter()
        self.progress.epoch, self.progress.step_in_epoch = int(next_epoch), int(next_step)
        where = f"epoch {next_epoch + 1}, step {next_step}" if next_step else f"the end of epoch {next_epoch}"
        self.checkpoints.write(checkpoint_state(self.run_state(), acc), self.progress.global_step, where)
        spent = time.perf_counter() - t_save
        self.progress.checkpoint_seconds += spent
        return spent

    # ------------------------------------------------------------------------------ signals
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ANN001
        STOP_REQUEST.set()  # outlives this run: a bench stops before its next one
        if not self._stop_requested:
            self._stop_requested = True
            logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and exiting")

    # ------------------------------------------------------------------------------ the run
    def run(self) -> Dict[str, Any]:
        """Train (or resume) to the end or to ``stop_after_epoch``; returns the summary.

        Raises:
            ValueError, FileNotFoundError, NonFiniteLossError, TrainingInterrupted: See :func:`train`.
        """
        from ..checkpoint import load_checkpoint

        cfg = self.cfg
        ckpt = None
        if cfg.resume is not None:
            ckpt = load_checkpoint(cfg.resume)
            check_resume(cfg, ckpt, CHECKPOINT_FORMAT)
        self.output = RunOutput(cfg, self.ctx, resumed=ckpt)  # live logs (if any) continue after ckpt's step
        self.cfg = self.given_cfg = self.output.config  # output_dir resolved
        self.out, self.ckpt_path = self.output.folder, self.output.checkpoint
        self.output.open()
        self.checkpoints = RunCheckpoints(self.out, self.ctx, cfg.checkpoint_every, cfg.keep_last)
        self.checkpoints.remove_stale_temp_files()
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._run(ckpt)
        except (TrainingInterrupted, NonFiniteLossError, CheckpointWriteError, TrainingFailedError):
            raise
        except Exception as e:
            from ..data import UnreadableImageError

            if not self._training or isinstance(e, UnreadableImageError):
                raise  # a bad option, data file or checkpoint
            p = self.progress
            raise TrainingFailedError(
                f"training failed at epoch {p.epoch + 1} (global step {p.global_step}): {type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[-1]}"
            ) from e
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            self.output.close()

    def _run(self, ckpt: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        logger.info(
            "trilevel train: %s on %s, world size %d, device %s, output %s%s",
            cfg.model, cfg.dataset, ctx.world_size, self.device, self.out,
            f", resuming {cfg.resume}" if cfg.resume else "",
        )
        self._build()
        acc_state = None
        if ckpt is not None:
            acc_state, self.metrics_history = restore_state(self.run_state(), ckpt)
            self.checkpoints.kept = f"{cfg.resume} (the resumed one)"
            self.checkpoints.rewrite_metrics(self.metrics_history)
            logger.info("resumed from %s at epoch %d, step %d", cfg.resume, self.progress.epoch + 1,
                        self.progress.step_in_epoch)
        start_epoch, start_step = self.progress.epoch, self.progress.step_in_epoch
        from ..models import describe_model

        logger.info(
            "model %s (%s), %.3f GFLOPs/image dense; %s; selector %s; %d train / %d %s images; "  # noqa: E501
            "global batch %d; %d iterations in the first epoch",
            cfg.model, describe_model(self.model_base), self.dense_flops / 1e9,
            "dense" if cfg.dense else f"tri-level keep {cfg.keep_ratio:g} attn-keep {cfg.attn_keep_ratio:g} "
            f"blocks {list(self.resolved.patch.prune_layers or ())}",
            cfg.effective_selector, self.num_train, len(self.val_ds), "validation" if self.val_ds is not self.test_ds else "test (no --val-split)",  # type: ignore[arg-type]  # noqa: E501
            cfg.batch_size * ctx.world_size, self.nominal_iters,
        )

        finished = True
        self._training = True
        epoch = start_epoch
        while not (self.plan is None and epoch >= cfg.epochs) and not (
                self.plan is not None and self.progress.global_step >= self.plan.total_steps):
            skip = start_step if epoch == start_epoch else 0
            metrics = self._train_epoch(epoch, skip, acc_state)
            acc_state = None
            self.progress.last_metrics = metrics
            self.metrics_history.append(metrics)
            self._save(epoch + 1, 0)
            self.output.end_epoch(self.run_state(), metrics, last=self._run_ends_after(epoch))  # metrics.jsonl, live logs
            stop = agree(self._stop_requested, ctx)
            if stop and not self._run_ends_after(epoch):
                msg = (f"stopped by SIGTERM after epoch {epoch + 1}/{self.run_epochs}; checkpoint saved to "
                       f"{self.ckpt_path}; resume with --resume {self.ckpt_path}")
                logger.warning(msg)
                raise TrainingInterrupted(msg, str(self.ckpt_path))
            if not self._run_ends_after(epoch) and self._last_epoch_of_invocation(epoch):
                logger.info(
                    "stopping after epoch %d as requested (stop-after-epoch); resume with --resume %s",
                    epoch + 1, self.ckpt_path,
                )
                finished = False
                break
            epoch += 1
        return self._write_summary(finished)

    def _last_epoch_of_invocation(self, epoch: int) -> bool:
        """Whether this invocation ends after 0-based ``epoch`` (end of run or ``stop_after_epoch``)."""
        stop_after = self.cfg.stop_after_epoch
        return self._run_ends_after(epoch) or (stop_after is not None and epoch + 1 >= stop_after)

    def _train_epoch(self, epoch: int, skip: int, acc_state: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        acc = EpochAccumulator(self.device)
        if acc_state is not None:
            acc.load(acc_state, ctx)
        seconds_before, cpu_before = acc.seconds, acc.cpu_seconds
        t0, c0 = time.perf_counter(), time.process_time()  # what a user waits for: updates and data too
        if skip == 0:  # where the epoch starts decides its data (the dense tail); a resume reuses it
            self.progress.epoch_start_progress = (self.progress.global_step / self.plan.total_steps
                                                  if self.plan is not None else epoch / self.cfg.epochs)
        self._start_epoch(epoch, self.progress.epoch_start_progress)
        iters = full_iters = self._iters(len(self.sampler))
        if self.plan is not None:  # the budget's last epoch ends early
            iters = min(iters, skip + self.plan.total_steps - self.progress.global_step)
        loader = make_loader(self.train_indexed, cfg.batch_size, cfg.workers, self.device, cfg.seed, epoch, ctx.rank,
                             sampler=self.sampler, drop_last=self.drop_last, seeded=True, skip_steps=skip)
        flags = StepFlags(ctx)
        self.model.train()
        bar = tqdm(total=iters, initial=skip, desc=f"epoch {epoch + 1}/{self.run_epochs}", unit="it",
                   disable=None if ctx.is_main else True, leave=False, dynamic_ncols=True)  # None: a terminal only
        kr = akr = 1.0
        lr = max(g["lr"] for g in self.optimizer.param_groups)  # the top layer's with --layer-decay
        redirect = logging_redirect_tqdm() if ctx.is_main else nullcontext()
        try:
            with redirect:
                for i, (images, targets, indices) in enumerate(loader, start=skip):
                    if i >= iters:
                        break
                    progress = self._progress(epoch, i, iters)
                    if self.algorithm is not None:
                        kr, akr = self.algorithm.on_step(progress)
                    self.lr_scheduler.step_update(num_updates=progress * self.total_updates)
                    lr = max(g["lr"] for g in self.optimizer.param_groups)  # the top layer's with --layer-decay
                    batch = int(images.shape[0])
                    side = self.resolution(progress) if self.resolution is not None else None
                    graphs, t_step, c_step = compiled_graphs(), time.perf_counter(), time.process_time()
                    bad, stop = self._step(images, targets, indices, flags, acc, side)
                    if compiled_graphs() != graphs:  # this step compiled a graph: compile time, not training time
                        spent = time.perf_counter() - t_step
                        t0, c0 = t0 + spent, c0 + time.process_time() - c_step
                        self.progress.compile_seconds += spent
                    if bad:
                        if cfg.nonfinite == "stop":
                            self._stop_nonfinite(epoch, i, acc)
                        acc.skipped += 1
                        self.progress.skipped_steps += 1
                        logger.warning("non-finite loss at epoch %d, step %d: batch skipped (nonfinite=skip)",
                                       epoch + 1, i + 1)
                    self.progress.global_step += 1
                    acc.images += batch
                    acc.flops += batch * self.flops_per_image(kr, training=True, attn_keep_ratio=akr,
                                                              **({} if side is None else {"img_size": side}))
                    tokens = self.meter.mean_tokens(kr, None if side == self.info.img_size else side)
                    acc.tokens_sum += tokens if tokens is not None else float("nan")
                    done = i + 1
                    if ctx.is_main and (done % cfg.log_interval == 0 or done == iters):  # bar, live logs: 1 host read
                        self.output.log_step(self.run_state(), acc, bar, epoch, done, iters, self._progress(epoch, done, iters), lr=lr,
                                             ratios=(kr, akr), tokens=tokens, elapsed=seconds_before + time.perf_counter() - t0)
                    bar.update(1)
                    stopping = stop or (not ctx.distributed and self._stop_requested)
                    if stopping or self.checkpoints.due(self.progress.global_step, done, iters):
                        acc.seconds, acc.cpu_seconds = seconds_before + self._elapsed(t0), cpu_before + time.process_time() - c0
                        if stopping:
                            self._interrupt(epoch, done, iters, acc)
                        t0 += self._save(epoch, done, acc)  # writing checkpoints is not training time
                acc.seconds, acc.cpu_seconds = seconds_before + self._elapsed(t0), cpu_before + time.process_time() - c0
        finally:
            bar.close()
        self.progress.epochs_trained += (acc.steps + acc.skipped) / full_iters
        return self._end_epoch(epoch, acc, kr, akr, lr)

    def _progress(self, epoch: int, i: int, iters: int) -> float:
        """Fraction of the run done before step ``i`` of ``epoch``: by epochs, or by the budget's steps."""
        if self.plan is not None:
            return self.progress.global_step / self.plan.total_steps
        return (epoch + i / iters) / self.cfg.epochs

    def _end_epoch(self, epoch: int, acc: EpochAccumulator, kr: float, akr: float, lr: float) -> Dict[str, Any]:
        """Fold the epoch into the run totals, validate if due, log; returns the metrics line."""
        cfg = self.cfg
        totals = acc.reduced(self.ctx)
        # The checkpoint's run totals exclude a partial epoch (its sums travel in epoch_acc).
        self.progress.train_seconds += acc.seconds
        self.progress.train_cpu_seconds += acc.cpu_seconds
        epoch_images = totals["images"]
        self.progress.train_images += epoch_images
        self.progress.flops_sum += totals["flops"]
        counted = max(1, totals["counted"])
        ratios = self.eval_ratios if self.algorithm is not None else (None, None)
        t_eval = time.perf_counter()
        if self._last_epoch_of_invocation(epoch) or (epoch + 1) % cfg.eval_every == 0:
            val = evaluate(self.model, self.val_loader, self.device, cfg.amp, *ratios)
        else:
            val = {"top1": None, "loss": None, "images": None}
        full = None  # a pruned model's top-1 with every token (what a stock timm model of its weights gets)
        if self._run_ends_after(epoch) and self.algorithm is not None and self.eval_ratios != (1.0, 1.0):
            full = evaluate(self.model, self.val_loader, self.device, cfg.amp, 1.0, 1.0)["top1"]
        test = test_set_metrics(self.model, self.test_ds, self.ctx, cfg, self.eval_ratios if self.algorithm else None,
                                val if self.val_ds is self.test_ds else None, full) if self._run_ends_after(epoch) else {}
        metrics: Dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": totals["loss_sum"] / counted,
            "train_acc": 100.0 * totals["correct"] / counted,
            "val_top1": val["top1"],
            "val_loss": val["loss"],
            "val_images": val["images"],
        }
        if full is not None or (self._run_ends_after(epoch) and val["top1"] is not None):
            metrics["val_top1_full_tokens"] = val["top1"] if full is None else full
        metrics.update(test)
        if self.ema is not None and val["top1"] is not None:
            metrics["val_top1_ema"] = evaluate(self.ema.module, self.val_loader, self.device, cfg.amp, *ratios)["top1"]
        self.progress.eval_seconds += time.perf_counter() - t_eval
        num_active = self.algorithm.num_active if self.algorithm is not None else None
        metrics.update(
            epoch_seconds=acc.seconds,
            epoch_cpu_seconds=acc.cpu_seconds,
            train_images=epoch_images,
            train_images_per_s=epoch_images / max(acc.seconds, 1e-9),
            active_examples=num_active if num_active is not None else self.num_train,
            mean_tokens_per_block=(acc.tokens_sum / max(1, acc.steps + acc.skipped)
                                   if self.meter.dense_tokens is not None else None),
            keep_ratio=kr,
            attn_keep_ratio=akr,
            lr=lr,
            skipped_steps=totals["skipped"],
            dense_epochs_so_far=self.progress.flops_sum / (self.num_train * self.dense_flops),
        )
        self.output.log_epoch(metrics, self.run_epochs, self.num_train)
        return metrics

    def _step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        flags: StepFlags,
        acc: EpochAccumulator,
        side: Optional[int] = None,
    ) -> tuple:
        """Forward, loss, backward and update on one batch.

        Returns:
            ``(loss not finite, stop requested)``, agreed over ranks. A batch whose loss is not
            finite changes nothing: no update, not recorded by the selector, not counted.
        """
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if side is not None and side != images.shape[-1]:  # resolution curriculum: fewer tokens by resizing
            images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        loss_targets = targets
        if self.mixup is not None:
            images, loss_targets = self.mixup(images, targets)  # soft (B, K) targets
            indices = dominant_indices(indices, targets, loss_targets)  # whose outcome each mixed image is
        with autocast(self.device, cfg.amp):
            logits = self.model(images)
        logits = logits.float()
        self.optimizer.zero_grad(set_to_none=True)
        if self.algorithm is not None and self.algorithm.reweights_loss:
            # The algorithm weights the per-example losses (InfoBatch): check them before recording.
            per_example = F.cross_entropy(
                logits, loss_targets, reduction="none",
                label_smoothing=0.0 if self.mixup is not None else cfg.smoothing,
            )
            flags.launch(per_example, self._stop_requested)
            bad, stop = flags.read(self._stop_requested)
            weights = None if bad else self.algorithm.after_forward(
                indices, logits.detach(), loss_targets, per_example.detach())
            loss = per_example.mean() if weights is None else (per_example * weights).mean()
            loss_sum = per_example.detach().sum()
            self.scaler.scale(loss).backward()  # also for a bad batch: DDP expects every backward
        else:
            loss = self.criterion(logits, loss_targets)
            loss_sum = loss.detach() * images.shape[0]
            flags.launch(loss, self._stop_requested)
            self.scaler.scale(loss).backward()  # queued before the flag wait: the device stays busy
            bad, stop = flags.read(self._stop_requested)
            if not bad and self.algorithm is not None:
                self.algorithm.after_forward(indices, logits.detach(), loss_targets)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return True, stop
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model_base.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model_base, step=self.progress.global_step)
        with torch.no_grad():
            # Accuracy against the hard label, or the dominant class of a mixed target.
            label = loss_targets.argmax(dim=1) if loss_targets.dim() == 2 else loss_targets
            acc.correct += (logits.detach().argmax(dim=1) == label).sum()
            acc.loss_sum += loss_sum.double()
        acc.steps += 1
        acc.counted += int(images.shape[0])
        return False, stop

    def _elapsed(self, t0: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per epoch (or at a stop): honest timing
        return time.perf_counter() - t0

    def _interrupt(self, epoch: int, done: int, iters: int, acc: EpochAccumulator) -> None:
        self._save(epoch, done, acc)
        msg = (f"stopped by SIGTERM at epoch {epoch + 1}, step {done}/{iters}; checkpoint saved to "
               f"{self.ckpt_path}; resume with --resume {self.ckpt_path}")
        logger.warning(msg)
        raise TrainingInterrupted(msg, str(self.ckpt_path))

    def _stop_nonfinite(self, epoch: int, step: int, acc: EpochAccumulator) -> None:
        # Parameters and optimizer are untouched by the bad step: this is the last good state.
        # (The checkpoint resumes at this batch.)
        self._save(epoch, step, acc)
        msg = (
            f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {self.progress.global_step + 1}); "
            f"the last good state was saved to {self.ckpt_path}. Lower --lr, set --clip-grad, or pass "
            f"--nonfinite skip to skip such batches"
        )
        logger.error(msg)
        raise NonFiniteLossError(msg)

    def _write_summary(self, finished: bool) -> Dict[str, Any]:
        from .summary import run_summary

        summary = run_summary(self.run_state(), finished)
        self.output.write_summary(summary)
        return summary


def train(config: TrainConfig | Mapping[str, Any]) -> Dict[str, Any]:
    """Run one training job; returns the summary (also written to ``<output_dir>/summary.json``).

    Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) it initialises the process
    group itself (and destroys it at the end); inside an already initialised group it uses that.

    Args:
        config: A :class:`~trilevel.training.TrainConfig`, or a mapping of its fields (hyphens or
            underscores).

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
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)  # frozen: no copy needed
    ctx = setup_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        ctx.close()
