"""Logging a run: :class:`ProgressLogger` (the log lines and the progress bar) and :class:`MetricsLogger`
(``metrics.jsonl``, ``summary.json``, and TensorBoard / W&B with their histogram and pruning picture).

Both write through the run's :class:`~trilevel.training.output.RunOutput` and add no host-device
synchronisation: the step scalars are read where the progress bar is updated, every
``log_interval`` steps (one host read), the epoch's after its validation. The pruning picture is
drawn by a renderer the caller hands in (``trilevel train`` gives
:func:`trilevel.viz.render_pruning_picture`; the training layer does not import the drawing code),
with the global RNG state forked, so logging changes nothing in training.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...models import describe_model
from ..events import Callback
from ..output import EPOCH_TAGS, HISTOGRAM_TAG, PICTURE_IMAGES, PICTURE_TAG, RunOutput
from ..state import State

__all__ = ["MetricsLogger", "PictureRenderer", "ProgressLogger"]

logger = logging.getLogger("trilevel.training")

PictureRenderer = Callable[..., Any]
"""``(model, val_set, data_info, seed, num_images) -> (H, W, 3) uint8 array``: draws the pruning picture
of ``num_images`` validation images chosen by ``seed`` (:func:`trilevel.viz.render_pruning_picture`)."""


class ProgressLogger(Callback):
    """The run's log lines (console and ``train.log``) and the epoch's progress bar.

    * ``FIT_START``: the model line (model, GFLOPs, method, data, batch, iterations).
    * ``STEP_START`` of an epoch's first step: opens the ``tqdm`` bar (rank 0, on a terminal;
      log lines are routed around it).
    * ``STEP_END``: every ``log_interval`` steps and at the epoch's last (rank 0): the running
      loss (one host read), images/s and LR on the bar, a DEBUG line and, when logging live,
      the :data:`~trilevel.training.output.STEP_TAGS` scalars; the bar closes after the last step.
    * ``EPOCH_END``: the epoch's INFO line.

    Args:
        output: The run's output folder and live-log sinks.
    """

    def __init__(self, output: RunOutput) -> None:
        self.output = output
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()

    def fit_start(self, state: State) -> None:
        cfg, ctx = state.config, state.ctx
        method = "dense" if cfg.dense else (
            f"tri-level keep {cfg.keep_ratio:g} attn-keep {cfg.attn_keep_ratio:g} "
            f"blocks {list(state.resolved.patch.prune_layers or ())}")
        logger.info(
            "model %s (%s), %.3f GFLOPs/image dense; %s; selector %s; %d train / %d %s images; "
            "global batch %d; %d iterations in the first epoch",
            cfg.model, describe_model(state.model), state.dense_flops / 1e9, method, cfg.effective_selector,
            state.num_train, len(state.val_set),  # type: ignore[arg-type]
            "validation" if state.val_set is not state.test_set else "test (no --val-split)",
            cfg.batch_size * ctx.world_size, state.nominal_iters,
        )

    def step_start(self, state: State) -> None:
        if self._bar is not None:
            return
        epoch, main = state.epoch, state.ctx.is_main
        self._bar = tqdm(total=epoch.iters, initial=epoch.skip, desc=f"epoch {epoch.index + 1}/{state.run_epochs}",
                         unit="it", disable=None if main else True, leave=False, dynamic_ncols=True)  # None: a terminal only
        if main:
            self._redirect.enter_context(logging_redirect_tqdm())

    def step_end(self, state: State) -> None:
        epoch = state.epoch
        done, iters = epoch.done, epoch.iters
        if state.ctx.is_main and (done % state.config.log_interval == 0 or done == iters):
            self._log_step(state)
        self._bar.update(1)
        if done == iters:
            self._close_bar()

    def epoch_end(self, state: State) -> None:
        self._close_bar()
        m = state.epoch.metrics
        tokens = m.get("mean_tokens_per_block")
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.2f%% | val top-1 %s%s | %.1f s, %.0f img/s | active %d/%d | "
            "tokens/block %s | keep %.3f attn %.3f | lr %.3e",
            m["epoch"], state.run_epochs, m["train_loss"], m["train_acc"],
            "n/a" if m["val_top1"] is None else f"{m['val_top1']:.2f}%",
            (f" (EMA {m['val_top1_ema']:.2f}%)" if "val_top1_ema" in m else "")
            + (f" | test top-1 {m['test_top1']:.2f}%" if m.get("test_top1") is not None else ""),
            m["epoch_seconds"], m["train_images_per_s"], m["active_examples"], state.num_train,
            "n/a" if tokens is None else f"{tokens:.1f}", m["keep_ratio"], m["attn_keep_ratio"], m["lr"],
        )

    def close(self, state: State) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _log_step(self, state: State) -> None:
        """The bar's postfix, a DEBUG line and the live step scalars (rank 0)."""
        epoch, step, world = state.epoch, state.step, state.ctx.world_size
        acc, done, iters = epoch.acc, epoch.done, epoch.iters
        fraction = state.run_fraction(epoch.index, done, iters)
        elapsed = epoch.clock.elapsed()
        loss_now = acc.loss_sum.item() / max(1, acc.counted)
        rate = acc.images * world / max(elapsed, 1e-9)
        lr = step.lr
        self._bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}", refresh=False)
        logger.debug("epoch %d step %d/%d loss %.4f lr %.3e %.0f img/s", epoch.index + 1, done, iters, loss_now,
                     lr, rate)
        if not self.output.live:
            return
        # FLOPs so far: completed epochs (all ranks) + this epoch's (rank 0's x world size).
        dense_epochs = (state.progress.flops_sum + acc.flops * world) / (state.num_train * state.dense_flops)
        length = state.config.budget if state.plan is not None else state.config.epochs
        self.output.log_scalars({
            "train/loss": loss_now, "train/lr": lr, "train/images_per_s": rate,
            "pruning/keep_ratio": step.keep_ratio, "pruning/attn_keep_ratio": step.attn_keep_ratio,
            "pruning/tokens_per_block": step.tokens,
            "flops/relative_so_far": dense_epochs / max(length * fraction, 1e-12),
            "flops/dense_epochs_so_far": dense_epochs,
        }, state.progress.global_step)


class MetricsLogger(Callback):
    """The run's records: ``metrics.jsonl`` and ``summary.json`` (rank 0), and the live epoch logs.

    * ``EPOCH_END`` (after the epoch's checkpoint): the metrics line into ``metrics.jsonl``; when
      logging live, the :data:`~trilevel.training.output.EPOCH_TAGS` scalars, the forgetting
      counts of the active examples (:data:`~trilevel.training.output.HISTOGRAM_TAG`, with a
      forgetting selector) and, every ``tensorboard_images_every`` epochs and at the run's last,
      the pruning picture of :data:`~trilevel.training.output.PICTURE_IMAGES` fixed validation
      images at the model's current training keep ratios (none for a dense run), all at the
      run's global step.
    * ``FIT_END``: ``summary.json`` and its headline.

    Args:
        output: The run's output folder and live-log sinks.
        picture_renderer: Draws the pruning picture (see :data:`PictureRenderer`); None: no
            picture (a warning, once, when one is due).
    """

    def __init__(self, output: RunOutput, picture_renderer: Optional[PictureRenderer] = None) -> None:
        self.output = output
        self.picture_renderer = picture_renderer
        self._warned = False

    def epoch_end(self, state: State) -> None:
        metrics = state.epoch.metrics
        self.output.append_metrics(metrics)
        if not self.output.live:
            return
        step = state.progress.global_step
        self.output.log_scalars({tag: metrics.get(key) for tag, key in EPOCH_TAGS.items()}, step)
        selector = getattr(state.algorithm, "selector", None)
        counts = getattr(selector, "forgetting_counts", None)
        if counts is not None:
            self.output.log_histogram(HISTOGRAM_TAG, counts.cpu()[selector.active_mask.cpu()].numpy(), step)
        last = state.run_ends_after(state.epoch.index)
        if state.algorithm is not None and (last or int(metrics["epoch"]) % state.config.tensorboard_images_every == 0):
            picture = self._picture(state)
            if picture is not None:
                self.output.log_image(PICTURE_TAG, picture, step, caption=f"epoch {metrics['epoch']}")
        self.output.flush()

    def fit_end(self, state: State) -> None:
        self.output.write_summary(state.summary)

    def _picture(self, state: State) -> Any:
        """The pruning picture, RGB ``uint8`` ``(H, W, 3)``, or None without a renderer; the global RNG is left as it was."""
        if self.picture_renderer is None:
            if not self._warned:
                logger.warning("no pruning-picture renderer: pass picture_renderer=trilevel.viz.render_pruning_picture "
                               "to train() to log pruning pictures")
                self._warned = True
            return None
        device = state.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return self.picture_renderer(state.model, state.val_set, state.info, state.config.seed, PICTURE_IMAGES)
