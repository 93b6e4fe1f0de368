"""What a training run saves and restores, and the files it keeps: ``checkpoint.pt`` and step checkpoints.

Every save is atomic (:func:`trilevel.checkpoint.save_checkpoint`: a temporary file, ``fsync``,
``os.replace``): a crash, ``SIGKILL`` or a full disk at any moment leaves the previous checkpoint
loadable. ``checkpoint.pt`` is always the latest; with ``keep_last`` K > 0 each save is also kept as
``checkpoint-step<global step>.pt`` (``checkpoint.pt`` is then a hard link to it, so nothing is
written twice), and older step files beyond the last K are deleted only after the new one is in
place. Under DDP only rank 0 writes, and it tells every rank whether the write succeeded (a
failed write stops every rank with :class:`CheckpointWriteError`, instead of leaving the others
waiting).

The checkpoint holds each stateful part's ``state_dict`` (model, optimizer, LR scheduler, grad
scaler, EMA, algorithm, run progress), the RNG states of every rank, the running sums of a
partial epoch (every rank's own, for a bit-exact mid-epoch resume), and every epoch's metrics
line, from which a resume rewrites ``metrics.jsonl``: a run killed between writing its checkpoint
and appending that epoch's line, or resumed from an older step checkpoint, has exactly the lines
of its checkpoint.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .state import State
from .distributed import DistContext, all_gather_objects, broadcast_object

__all__ = ["CHECKPOINT_FORMAT", "CheckpointWriteError", "NonFiniteLossError", "TrainingInterrupted", "RunCheckpoints", "TrainingFailedError",
           "checkpoint_state", "restore_state", "stateful_parts"]

logger = logging.getLogger("trilevel.training")

#: Layout version of the training checkpoint (the parts each state_dict'd under its own key).
CHECKPOINT_FORMAT = 2

_STEP_FILE = re.compile(r"^checkpoint-step(\d+)\.pt$")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the run stopped.

    The previous checkpoint, if any, is untouched and loadable; the message names both paths.

    Attributes:
        path: The checkpoint that could not be written.
        kept: The previous checkpoint (still valid), or None if the run had written none.
    """

    def __init__(self, message: str, path: str, kept: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.kept = kept


class TrainingFailedError(RuntimeError):
    """The run failed while training (not a bad option, data file or checkpoint); the cause is chained."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``nonfinite="stop"``).

    The message names the epoch and step; the last good state (before the bad step's update) has
    been saved to the run's checkpoint.
    """


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; resume with ``resume=<checkpoint>``.

    Attributes:
        checkpoint: Path of the checkpoint written before stopping.
    """

    def __init__(self, message: str, checkpoint: Optional[str] = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def stateful_parts(state: State) -> Dict[str, Any]:
    """The parts of a run (:class:`~trilevel.training.state.State`) that contribute their own ``state_dict``, by key."""
    parts: Dict[str, Any] = {
        "model": state.model, "optimizer": state.optimizer, "lr_scheduler": state.lr_scheduler,
        "scaler": state.scaler, "progress": state.progress,
    }
    if state.ema is not None:
        parts["ema"] = state.ema
    if state.algorithm is not None:
        parts["algorithm"] = state.algorithm
    return parts


def checkpoint_state(state: State, acc: Any = None) -> Dict[str, Any]:
    """The checkpoint content of a run; a collective under DDP (every rank must call it).

    Args:
        state: The run's :class:`~trilevel.training.state.State`.
        acc: The running :class:`~trilevel.training.accounting.EpochAccumulator` of a partial
            epoch, or None at an epoch boundary.
    """
    from ..checkpoint import capture_rng_state

    content = {name: part.state_dict() for name, part in stateful_parts(state).items()}
    content.update(
        format=CHECKPOINT_FORMAT,
        config=state.given_config.to_dict(),  # as given (a --speedup's keep ratio is resolved again on resume)
        data_info=dataclasses.asdict(state.info),
        rng=all_gather_objects(capture_rng_state(), state.ctx),
        world_size=state.ctx.world_size,
        selector_digest=state.algorithm.digest() if state.algorithm is not None else None,
        epoch_acc=acc.state(state.ctx) if acc is not None else None,
        metrics_history=[dict(m) for m in state.metrics_history],
    )
    return content


def _check_world_size(state: State, ckpt: Mapping[str, Any]) -> bool:
    """Whether the checkpoint was saved on this world size; raises unless a change is allowed and possible."""
    cfg, world = state.config, state.ctx.world_size
    saved = int(ckpt.get("world_size", 1))
    if saved == world:
        return True
    if not cfg.allow_world_size_change:
        raise ValueError(
            f"{cfg.resume} was saved by {saved} process(es) but this run has {world}: resume with "
            f"{saved} process(es) (torchrun --nproc_per_node={saved}) for an exact continuation, or pass "
            f"--allow-world-size-change to continue on {world} (not an exact continuation)"
        )
    progress = ckpt.get("progress") or {}
    if int(progress.get("step_in_epoch", 0)) != 0:
        raise ValueError(
            f"{cfg.resume} was saved in the middle of epoch {int(progress.get('epoch', 0)) + 1} by {saved} "
            f"process(es): a different world size ({world}) can only resume from an epoch boundary; resume it "
            f"with {saved} process(es), then stop with --stop-after-epoch"
        )
    if cfg.budget is not None:
        raise ValueError(
            f"{cfg.resume}: a --budget run cannot change its world size ({saved} -> {world}): its step plan "
            f"depends on it; resume with {saved} process(es)"
        )
    logger.warning(
        "resuming %s, saved by %d process(es), on %d (--allow-world-size-change): not an exact continuation. "
        "Different from a run on %d: the split of each epoch's order over the ranks, each rank's augmentation, "
        "dropout and mixup streams (ranks beyond %d start fresh ones), and the iterations per epoch behind the "
        "LR schedule (rebuilt for %d, not restored)",
        cfg.resume, saved, world, saved, saved, world,
    )
    return False


def restore_state(state: State, ckpt: Mapping[str, Any]) -> Tuple[Optional[Mapping[str, Any]], List[Dict[str, Any]]]:
    """Load a checkpoint into a built run's parts.

    Returns:
        ``(the partial epoch's sums or None at an epoch boundary, the metrics history)``.

    Raises:
        ValueError: A missing part, a world size other than the checkpoint's (unless
            ``allow_world_size_change``, and then only at an epoch boundary and without a budget),
            or a selector that does not match its saved digest.
    """
    from ..checkpoint import restore_rng_state

    same_world = _check_world_size(state, ckpt)
    for name, part in stateful_parts(state).items():
        if ckpt.get(name) is None:
            raise ValueError(f"{state.config.resume}: the checkpoint lacks the {name!r} state")
        if name == "lr_scheduler" and not same_world:
            continue  # its iterations per epoch are this world size's; the LR follows the run progress
        part.load_state_dict(ckpt[name])
    rng = ckpt["rng"]
    if state.ctx.rank < len(rng):  # a rank the checkpoint did not have keeps its own fresh streams
        restore_rng_state(rng[state.ctx.rank])
    if state.algorithm is not None and ckpt.get("selector_digest") != state.algorithm.digest():
        raise ValueError(f"{state.config.resume}: the restored selector does not match its saved digest")
    history = ckpt.get("metrics_history")
    if history is None:  # a checkpoint from before the history was kept: only its last line is known
        last = state.progress.last_metrics
        history = [last] if last else []
    return ckpt.get("epoch_acc"), [dict(m) for m in history]


class RunCheckpoints:
    """The checkpoint files of one run folder (rank 0 writes; every rank learns the outcome).

    Args:
        folder: The run folder.
        ctx: This process's distributed context.
        every: Save every N global steps inside an epoch (None: at epoch ends only).
        keep_last: Step checkpoints to keep besides ``checkpoint.pt`` (0: none).

    Attributes:
        latest (Path): ``<folder>/checkpoint.pt``.
        kept (Optional[str]): Description of the last checkpoint written or resumed from.
    """

    def __init__(self, folder: Path, ctx: DistContext, every: Optional[int], keep_last: int) -> None:
        self.folder = Path(folder)
        self.ctx = ctx
        self.every = every
        self.keep_last = int(keep_last)
        self.latest = self.folder / "checkpoint.pt"
        self.kept: Optional[str] = None

    def step_path(self, global_step: int) -> Path:
        """``<folder>/checkpoint-step<global_step>.pt``."""
        return self.folder / f"checkpoint-step{int(global_step)}.pt"

    def due(self, global_step: int, done: int, iters: int) -> bool:
        """Whether a step checkpoint is due after ``done`` of ``iters`` steps (the epoch's end saves anyway)."""
        return self.every is not None and done < iters and global_step % self.every == 0

    def remove_stale_temp_files(self) -> None:
        """Delete temporary files of checkpoint writes that a killed process left behind (rank 0)."""
        if not self.ctx.is_main or not self.folder.is_dir():
            return
        for tmp in [*self.folder.glob(".checkpoint*.tmp"), *self.folder.glob(".metrics.jsonl.*.tmp")]:
            try:
                tmp.unlink()
                logger.info("removed %s, left by an interrupted checkpoint write", tmp)
            except OSError as e:
                logger.warning("cannot remove %s: %s", tmp, e)

    def write(self, state: Dict[str, Any], global_step: int, where: str) -> None:
        """Write ``state`` (rank 0), keep/prune step files; every rank returns or raises alike.

        Args:
            state: The checkpoint content.
            global_step: The run's global step (names the step file).
            where: Where the run stands, e.g. ``epoch 2, step 3`` (for messages).

        Raises:
            CheckpointWriteError: The write failed (on every rank); the previous file is kept.
        """
        error = None
        if self.ctx.is_main:
            target = self.step_path(global_step) if self.keep_last > 0 else self.latest
            try:
                self._write_files(state, target)
            except OSError as e:
                kept = f"the previous checkpoint {self.kept} is kept" if self.kept else "no checkpoint was written before"
                error = (f"cannot write checkpoint {target} at {where}: {e.strerror or e}"
                         f"{' (' + errno.errorcode.get(e.errno, '') + ')' if e.errno else ''}; {kept}. "
                         f"Free space (or fix the folder) and resume with --resume {self.latest}")
            else:
                self.kept = f"{self.latest} ({where})"
                if self.keep_last > 0:
                    self._prune(global_step)
        error = broadcast_object(error, self.ctx)  # also the barrier: no rank runs ahead of the write
        if error is not None:
            raise CheckpointWriteError(error, str(self.latest), self.kept)

    def _write_files(self, state: Dict[str, Any], target: Path) -> None:
        from ..checkpoint import save_checkpoint

        save_checkpoint(state, target)
        if target == self.latest:
            return
        tmp = self.folder / f".checkpoint.pt.{uuid.uuid4().hex[:12]}.link.tmp"
        try:  # checkpoint.pt becomes the same file, atomically
            os.link(target, tmp)
            os.replace(tmp, self.latest)
        except OSError as e:  # no hard links here: write it again
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            logger.debug("hard link %s -> %s failed (%s); writing it again", target, self.latest, e)
            save_checkpoint(state, self.latest)

    def _prune(self, global_step: int) -> None:
        """Delete step files up to ``global_step`` beyond the last ``keep_last`` (later ones: an older timeline)."""
        steps = []
        for p in self.folder.iterdir():
            m = _STEP_FILE.match(p.name)
            if m and int(m.group(1)) <= global_step:
                steps.append(int(m.group(1)))
        for step in sorted(steps)[: max(0, len(steps) - self.keep_last)]:
            try:
                self.step_path(step).unlink()
            except OSError as e:
                logger.warning("cannot delete the old step checkpoint %s: %s", self.step_path(step), e)

    def rewrite_metrics(self, history: List[Mapping[str, Any]]) -> None:
        """Make ``metrics.jsonl`` hold exactly the checkpoint's epoch lines (rank 0; atomic)."""
        if not self.ctx.is_main:
            return
        path = self.folder / "metrics.jsonl"
        tmp = self.folder / f".metrics.jsonl.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(dict(m)) + "\n" for m in history)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise
