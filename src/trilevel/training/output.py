"""A run's folder: ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``summary.json`` (rank 0 writes),
and the sinks of what a run shows while it happens (what is logged when is
:mod:`trilevel.training.callbacks.logs`): with ``--log-tensorboard`` / ``--log-wandb`` the numbers
of the progress bar and the metrics lines live in TensorBoard (``<output_dir>/tensorboard/``, through
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
from typing import Any, List, Mapping, Optional

import yaml

from ..checkpoint import atomic_write_json, atomic_write_text
from ..options import check_bool, check_int
from .config import TrainConfig
from .distributed import DistContext, broadcast_object

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

    With ``log_tensorboard`` / ``log_wandb`` it is also where the run is logged live
    (:meth:`log_scalars`, :meth:`log_histogram`, :meth:`log_image`; what is logged when is
    :mod:`trilevel.training.callbacks.logs`).

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

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """Log the numeric values of ``scalars`` (tag: value; None and bools left out) at global step ``step``."""
        values = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.config.log_tensorboard:
            writer = self._writer()
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        """Log a histogram of ``values`` (a 1-D array) at global step ``step``."""
        if self.config.log_tensorboard:
            self._writer().add_histogram(tag, values, step)
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Histogram(values)}, step=step)

    def log_image(self, tag: str, image: Any, step: int, caption: str) -> None:
        """Log an RGB ``uint8`` image ``(H, W, 3)`` at global step ``step`` (``caption``: W&B's)."""
        if self.config.log_tensorboard:
            self._writer().add_image(tag, image, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(image, caption=caption)}, step=step)

    def flush(self) -> None:
        """Flush the TensorBoard events written so far."""
        if self._tensorboard is not None:
            self._tensorboard.flush()

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
