"""A run's folder: ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``summary.json`` (rank 0 writes),
and what a run shows while it happens: the progress bar, and with ``--log-tensorboard`` /
``--log-wandb`` the same numbers live in TensorBoard (``<output_dir>/tensorboard/``, through
PyTorch's own ``torch.utils.tensorboard.SummaryWriter``) and Weights & Biases (``<output_dir>/wandb/``).

Live logging adds no host-device synchronisation: the step scalars (:data:`STEP_TAGS`) are written
where the progress bar is updated, every ``log_interval`` steps, from the one host read the loop
already makes there; the epoch scalars (:data:`EPOCH_TAGS`), the forgetting-count histogram and
the pruning picture come after the epoch's validation. Every event's step is the run's global
optimizer step, so a resumed run continues the same curves; its writer purges the events a
crashed continuation may have left after the checkpoint (``purge_step``), and W&B resumes the same
run id (kept in ``wandb/trilevel-run-id``). The pruning picture is drawn with the global RNG state
forked, so logging changes nothing in training (a resumed run stays bit-identical).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Tuple

import yaml

from ..checkpoint import atomic_write_json, atomic_write_text
from ..options import check_bool, check_int
from .config import TrainConfig
from .distributed import DistContext, broadcast_object
from .state import RunState

__all__ = ["EPOCH_TAGS", "HISTOGRAM_TAG", "PICTURE_IMAGES", "PICTURE_TAG", "RUN_FILES", "STEP_TAGS",
           "TENSORBOARD_DIR", "RunOutput", "check_live_logging", "run_outputs"]

logger = logging.getLogger("trilevel.training")

#: What a run folder may hold, in the order the ``outputs in ...`` line names them (folders end in /).
RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt", "config.yaml", "train.log", "tensorboard/",
             "wandb/")
#: Sub-folder of the TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"
#: Scalars written every ``log_interval`` steps (tag: meaning).
STEP_TAGS = {
    "train/loss": "running training loss of the epoch so far (rank 0)",
    "train/lr": "learning rate",
    "train/images_per_s": "training images per second in the epoch so far (all ranks)",
    "pruning/keep_ratio": "token keep ratio of the step (1 for a dense run)",
    "pruning/attn_keep_ratio": "attention keep ratio of the step (1 for a dense run)",
    "pruning/tokens_per_block": "mean tokens per block of the step's forward (prefix tokens included)",
    "flops/relative_so_far": "training forward FLOPs so far over those of dense training to the same point",
    "flops/dense_epochs_so_far": "training forward FLOPs so far in dense-epoch equivalents",
}
#: Scalars written once per epoch, after its validation (tag: metrics.jsonl key).
EPOCH_TAGS = {
    "epoch/epoch": "epoch",
    "epoch/train_loss": "train_loss",
    "epoch/train_top1": "train_acc",
    "epoch/val_top1": "val_top1",
    "epoch/val_loss": "val_loss",
    "epoch/val_top1_ema": "val_top1_ema",
    "epoch/active_examples": "active_examples",
}
#: Histogram of the forgetting selector's counts over the active set, per epoch.
HISTOGRAM_TAG = "examples/forgetting_counts"
#: The pruning picture (the drawing of ``trilevel visualize``) of :data:`PICTURE_IMAGES` fixed images.
PICTURE_TAG = "pruning/picture"
PICTURE_IMAGES = 4


PICTURE_RENDERER: Optional[Callable[..., Any]] = None
"""``(model, val_set, data_info, seed, num_images) -> (H, W, 3) uint8``: draws the pruning picture of
the live logs. Set by :mod:`trilevel.viz` when it is imported (the training layer does not import
the layers above it); :func:`set_picture_renderer` replaces it."""


def set_picture_renderer(renderer: Optional[Callable[..., Any]]) -> None:
    """Install the function that draws the live logs' pruning picture (None: none)."""
    global PICTURE_RENDERER
    PICTURE_RENDERER = renderer


def run_outputs(folder: Any) -> List[str]:
    """The entries of :data:`RUN_FILES` present in a run folder (folders with a trailing ``/``)."""
    folder = Path(folder)
    found = []
    for name in RUN_FILES:
        path = folder / name.rstrip("/")
        if path.is_dir() if name.endswith("/") else path.is_file():
            found.append(name)
    return found


def check_live_logging(config: TrainConfig) -> None:
    """Check the live-logging options, and that the packages they need import.

    Args:
        config: The run's configuration (``log_tensorboard``, ``log_wandb``,
            ``tensorboard_images_every``).

    Raises:
        ValueError: A bad option value (named), or ``--log-tensorboard`` / ``--log-wandb``
            without its package, saying what to install (``pip install trilevel[tensorboard]`` /
            ``pip install trilevel[wandb]``).
    """
    check_bool("log_tensorboard", config.log_tensorboard)
    check_bool("log_wandb", config.log_wandb)
    check_int("tensorboard_images_every", config.tensorboard_images_every, 1)
    if config.log_tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")  # needs the tensorboard package
        except ImportError as e:
            raise ValueError(
                f"--log-tensorboard needs the tensorboard package, which is not installed ({e}): "
                f"pip install trilevel[tensorboard]"
            ) from None
    if config.log_wandb:
        try:
            importlib.import_module("wandb")
        except ImportError as e:
            raise ValueError(
                f"--log-wandb needs the wandb package, which is not installed ({e}): pip install trilevel[wandb] "
                f"(then WANDB_MODE=offline logs to <output-dir>/wandb/ without an account or network)"
            ) from None


class RunOutput:
    """The output folder of one run; only rank 0 writes into it.

    The folder is ``config.output_dir``, else the resumed checkpoint's folder, else
    ``runs/<timestamp>`` (decided on rank 0 and broadcast); :attr:`config` is the run's
    configuration with ``output_dir`` set to it.
    :meth:`open` creates it, writes ``config.yaml`` and attaches ``train.log`` to the
    ``trilevel`` logger (at INFO or finer); :meth:`close` detaches it.

    With ``log_tensorboard`` / ``log_wandb`` it also logs the run live (see the module
    docstring): :meth:`log_step` every ``log_interval`` steps, :meth:`end_epoch` after each epoch.

    Args:
        config: The run's configuration (frozen; its ``output_dir`` may be None).
        ctx: This process's distributed context.
        resumed: The loaded checkpoint this run resumes, or None (live logs continue after its
            global step).

    Attributes:
        config (TrainConfig): ``config`` with ``output_dir`` resolved.
        folder (Path): The run folder.
        checkpoint (Path): ``<folder>/checkpoint.pt``.

    Raises:
        ValueError: As :func:`check_live_logging` (on every rank, before anything is written).
    """

    def __init__(self, config: TrainConfig, ctx: DistContext, resumed: Optional[Mapping[str, Any]] = None) -> None:
        check_live_logging(config)
        progress = resumed.get("progress") if isinstance(resumed, Mapping) else None
        self._first_step = 1 + (int(progress.get("global_step", 0)) if isinstance(progress, Mapping) else 0)
        self._tensorboard: Any = None
        self._wandb: Any = None
        self._warned_renderer = False
        out = config.output_dir
        if out is None and config.resume is not None:
            out = str(Path(config.resume).resolve().parent)
        if out is None:
            out = str(Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        out = broadcast_object(out, ctx)
        self.config = dataclasses.replace(config, output_dir=out)
        self.is_main = ctx.is_main
        self.folder = Path(out)
        self.checkpoint = self.folder / "checkpoint.pt"
        self._file_handler: Optional[logging.Handler] = None
        self._old_level: Optional[int] = None

    def open(self) -> None:
        """Create the folder, write ``config.yaml``, start ``train.log`` (rank 0)."""
        if not self.is_main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        pkg_logger = logging.getLogger("trilevel")
        if pkg_logger.getEffectiveLevel() > logging.INFO:
            self._old_level = pkg_logger.level
            pkg_logger.setLevel(logging.INFO)
        self._file_handler = logging.FileHandler(self.folder / "train.log", encoding="utf-8")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg_logger.addHandler(self._file_handler)
        atomic_write_text(self.folder / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        if self.config.log_wandb:
            try:
                self._wandb = self._start_wandb()
            except ValueError:
                self.close()  # the caller closes only an opened output
                raise

    def _start_wandb(self) -> Any:
        """``wandb.init`` in ``<folder>/wandb/``: a resumed run continues its W&B run (same id)."""
        import wandb

        folder = self.folder / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "trilevel-run-id"
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
        if self._first_step == 1 or not run_id:  # a fresh run gets a fresh W&B run
            run_id = secrets.token_hex(8)
            id_file.write_text(run_id + "\n", encoding="utf-8")
        try:
            return wandb.init(project=os.environ.get("WANDB_PROJECT", "trilevel"), name=self.folder.name, id=run_id,
                              resume="allow", dir=str(self.folder), config=self.config.to_dict())
        except Exception as e:  # wandb raises its own error types (no account, no network, ...)
            raise ValueError(
                f"--log-wandb: wandb.init failed ({type(e).__name__}: {e}); log in with 'wandb login', or set "
                f"WANDB_MODE=offline to log to {folder} without an account or network ('wandb sync' uploads it later)"
            ) from e

    def close(self) -> None:
        """Close the live loggers, detach ``train.log`` and restore the logger's level."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        pkg_logger = logging.getLogger("trilevel")
        if self._file_handler is not None:
            pkg_logger.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
        if self._old_level is not None:
            pkg_logger.setLevel(self._old_level)
            self._old_level = None

    def log_epoch(self, m: Mapping[str, Any], epochs: int, num_train: int) -> None:
        """Log one epoch's metrics line (every rank's logger; rank 0 shows INFO)."""
        tokens = m.get("mean_tokens_per_block")
        logging.getLogger("trilevel.training").info(
            "epoch %d/%d: train loss %.4f acc %.2f%% | val top-1 %s%s | %.1f s, %.0f img/s | active %d/%d | "
            "tokens/block %s | keep %.3f attn %.3f | lr %.3e",
            m["epoch"], epochs, m["train_loss"], m["train_acc"],
            "n/a" if m["val_top1"] is None else f"{m['val_top1']:.2f}%",
            (f" (EMA {m['val_top1_ema']:.2f}%)" if "val_top1_ema" in m else "")
            + (f" | test top-1 {m['test_top1']:.2f}%" if m.get("test_top1") is not None else ""),
            m["epoch_seconds"], m["train_images_per_s"], m["active_examples"], num_train,
            "n/a" if tokens is None else f"{tokens:.1f}", m["keep_ratio"], m["attn_keep_ratio"], m["lr"],
        )

    # ------------------------------------------------------------------------------ live logging
    @property
    def live(self) -> bool:
        """Whether this process logs live (rank 0 with ``log_tensorboard`` or ``log_wandb``)."""
        return self.is_main and (self.config.log_tensorboard or self.config.log_wandb)

    def _writer(self) -> Any:
        """The TensorBoard writer, opened on first use (after a resume's checkpoint is loaded)."""
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            # Events of a crashed continuation after the checkpoint's step are dropped.
            self._tensorboard = SummaryWriter(str(self.folder / TENSORBOARD_DIR), purge_step=self._first_step)
        return self._tensorboard

    def _log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        values = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.config.log_tensorboard:
            writer = self._writer()
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_step(self, trainer: "RunState", acc: Any, bar: Any, epoch: int, done: int, iters: int, fraction: float, *,
                 lr: float, ratios: Tuple[float, float], tokens: Optional[float], elapsed: float) -> None:
        """Show the progress of the epoch so far (rank 0, every ``log_interval`` steps).

        Reads the running loss from the device (the loop's one host read per log interval), sets
        the progress bar's postfix, logs a DEBUG line and, when live logging, the
        :data:`STEP_TAGS` scalars at the current global step.

        Args:
            trainer: The :class:`~trilevel.training.Trainer` (its progress, sizes and FLOP counts are read).
            acc: The epoch's :class:`~trilevel.training.accounting.EpochAccumulator` (rank 0's sums).
            bar: The epoch's ``tqdm`` bar.
            epoch: 0-based epoch.
            done: Steps done in the epoch (1-based).
            iters: Steps in the epoch.
            fraction: Fraction of the run done after this step, in (0, 1].
            lr: Learning rate of the step.
            ratios: ``(keep ratio, attention keep ratio)`` of the step.
            tokens: Mean tokens per block of the step's forward, or None (a model without tokens).
            elapsed: Training seconds of the epoch so far.
        """
        world = trainer.ctx.world_size
        loss_now = acc.loss_sum.item() / max(1, acc.counted)
        rate = acc.images * world / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}", refresh=False)
        logger.debug("epoch %d step %d/%d loss %.4f lr %.3e %.0f img/s", epoch + 1, done, iters, loss_now, lr, rate)
        if not self.live:
            return
        # FLOPs so far: completed epochs (all ranks) + this epoch's (rank 0's x world size).
        dense_epochs = (trainer.progress.flops_sum + acc.flops * world) / (trainer.num_train * trainer.dense_flops)
        length = trainer.cfg.budget if trainer.plan is not None else trainer.cfg.epochs
        self._log_scalars({
            "train/loss": loss_now, "train/lr": lr, "train/images_per_s": rate,
            "pruning/keep_ratio": ratios[0], "pruning/attn_keep_ratio": ratios[1],
            "pruning/tokens_per_block": tokens,
            "flops/relative_so_far": dense_epochs / max(length * fraction, 1e-12),
            "flops/dense_epochs_so_far": dense_epochs,
        }, trainer.progress.global_step)

    def end_epoch(self, trainer: "RunState", metrics: Mapping[str, Any], last: bool) -> None:
        """Record a finished epoch: its ``metrics.jsonl`` line and, when live logging, the rest.

        Live (rank 0): the :data:`EPOCH_TAGS` scalars; :data:`HISTOGRAM_TAG`, the forgetting counts
        of the active examples when the run has a forgetting selector; :data:`PICTURE_TAG`, the
        pruning picture of :data:`PICTURE_IMAGES` fixed validation images (drawn by
        :func:`trilevel.viz.pruning_figure` at the model's current training keep ratios) every
        ``tensorboard_images_every`` epochs and at the run's last epoch (none for a dense run).
        All at the run's global step.

        Args:
            trainer: The :class:`~trilevel.training.Trainer`.
            metrics: The epoch's metrics line.
            last: Whether this is the run's last epoch.
        """
        self.append_metrics(metrics)
        if not self.live:
            return
        step = trainer.progress.global_step
        self._log_scalars({tag: metrics.get(key) for tag, key in EPOCH_TAGS.items()}, step)
        selector = getattr(trainer.algorithm, "selector", None)
        counts = getattr(selector, "forgetting_counts", None)
        if counts is not None:
            values = counts.cpu()[selector.active_mask.cpu()].numpy()
            if self.config.log_tensorboard:
                self._writer().add_histogram(HISTOGRAM_TAG, values, step)
            if self._wandb is not None:
                import wandb

                self._wandb.log({HISTOGRAM_TAG: wandb.Histogram(values)}, step=step)
        every = self.config.tensorboard_images_every
        if trainer.algorithm is not None and (last or int(metrics["epoch"]) % every == 0):
            picture = self._pruning_picture(trainer)
            if picture is None:
                pass
            elif self.config.log_tensorboard:
                self._writer().add_image(PICTURE_TAG, picture, step, dataformats="HWC")
            if picture is not None and self._wandb is not None:
                import wandb

                self._wandb.log({PICTURE_TAG: wandb.Image(picture, caption=f"epoch {metrics['epoch']}")}, step=step)
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def _pruning_picture(self, trainer: "RunState") -> Any:
        """The pruning picture as an RGB ``uint8`` array ``(H, W, 3)`` (None without a renderer); the global
        RNG is left as it was."""
        import torch

        if PICTURE_RENDERER is None:
            if not self._warned_renderer:
                logging.getLogger("trilevel.training").warning(
                    "no pruning-picture renderer: import trilevel.viz to log pruning pictures")
                self._warned_renderer = True
            return None
        device = trainer.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return PICTURE_RENDERER(trainer.model, trainer.val_set, trainer.info, trainer.cfg.seed,
                                    PICTURE_IMAGES)

    def append_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Append one epoch's line to ``metrics.jsonl`` (rank 0)."""
        if self.is_main:
            with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(dict(metrics)) + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` and log its headline (rank 0)."""
        if not self.is_main:
            return
        atomic_write_json(self.folder / "summary.json", dict(summary))
        top1, test = summary["val_top1"], summary.get("test_top1")
        where = (f" ({summary.get('num_val')} held-out training images), test top-1 "
                 f"{float('nan') if test is None else test:.2f}%" if summary.get("eval_set") == "val-split"
                 else " (the test set: no --val-split)")
        logging.getLogger("trilevel.training").info(
            "%s: val top-1 %.2f%%%s after %d/%d epochs, %.1f s of training, %d training images, "
            "relative training FLOPs %.3f, world size %d, selector digest %s",
            "done" if summary["finished"] else "paused", float("nan") if top1 is None else top1, where,
            summary["epochs_done"], summary["epochs"], summary["train_seconds"], summary["train_images"],
            summary["relative_train_flops"], summary["world_size"], summary["selector_digest"],
        )
