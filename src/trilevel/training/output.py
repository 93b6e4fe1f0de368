"""A run's folder: ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``summary.json`` (rank 0 writes)."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from .config import TrainConfig
from .distributed import DistContext, broadcast_object

__all__ = ["RunOutput"]


class RunOutput:
    """The output folder of one run; only rank 0 writes into it.

    The folder is ``config.output_dir``, else the resumed checkpoint's folder, else
    ``runs/<timestamp>`` (decided on rank 0 and broadcast); ``config.output_dir`` is set to it.
    :meth:`open` creates it, writes ``config.yaml`` and attaches ``train.log`` to the
    ``trilevel`` logger (at INFO or finer); :meth:`close` detaches it.

    Args:
        config: The run's configuration (``output_dir`` is resolved in place).
        ctx: This process's distributed context.

    Attributes:
        folder (Path): The run folder.
        checkpoint (Path): ``<folder>/checkpoint.pt``.
    """

    def __init__(self, config: TrainConfig, ctx: DistContext) -> None:
        out = config.output_dir
        if out is None and config.resume is not None:
            out = str(Path(config.resume).resolve().parent)
        if out is None:
            out = str(Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        out = broadcast_object(out, ctx)
        config.output_dir = out
        self.config = config
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
        with open(self.folder / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(self.config.to_dict(), f, sort_keys=False)

    def close(self) -> None:
        """Detach ``train.log`` and restore the logger's level."""
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
            f" (EMA {m['val_top1_ema']:.2f}%)" if "val_top1_ema" in m else "",
            m["epoch_seconds"], m["train_images_per_s"], m["active_examples"], num_train,
            "n/a" if tokens is None else f"{tokens:.1f}", m["keep_ratio"], m["attn_keep_ratio"], m["lr"],
        )

    def append_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Append one epoch's line to ``metrics.jsonl`` (rank 0)."""
        if self.is_main:
            with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(dict(metrics)) + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` and log its headline (rank 0)."""
        if not self.is_main:
            return
        with open(self.folder / "summary.json", "w", encoding="utf-8") as f:
            json.dump(dict(summary), f, indent=2)
        top1 = summary["val_top1"]
        logging.getLogger("trilevel.training").info(
            "%s: val top-1 %.2f%% after %d/%d epochs, %.1f s of training, %d training images, "
            "relative training FLOPs %.3f, world size %d, selector digest %s",
            "done" if summary["finished"] else "paused", float("nan") if top1 is None else top1,
            summary["epochs_done"], summary["epochs"], summary["train_seconds"], summary["train_images"],
            summary["relative_train_flops"], summary["world_size"], summary["selector_digest"],
        )
