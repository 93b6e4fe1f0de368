"""What the training loop counts: the run's progress and totals, one epoch's running sums, and the
per-step flags read from the device.

Host-device synchronisation: the loop reads one small flag tensor per step (is the loss finite,
and, under DDP, did any rank receive SIGTERM), copied asynchronously into pinned memory and waited
for only after the backward pass has been queued, so the device queue does not drain. Loss and
accuracy are accumulated as device tensors and read once per log interval and per epoch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .distributed import DistContext, all_gather_objects, all_reduce_sum

__all__ = ["RunProgress", "EpochAccumulator", "EpochClock", "StepFlags", "FlopMeter"]


@dataclass
class RunProgress:
    """Where a run stands and what it has consumed (saved in every checkpoint).

    Attributes:
        epoch: The next epoch to run (0-based); the number of epochs completed at an epoch boundary.
        step_in_epoch: The next step inside ``epoch`` (0 at an epoch boundary).
        global_step: Optimizer steps taken (skipped non-finite steps included).
        train_seconds: Wall-clock of the training loops so far (seconds, summed over resumes):
            what a user waits for, data loading and selector updates included; evaluation and
            checkpoint writing excluded (they are counted apart).
        train_cpu_seconds: Process CPU time of the same (all threads; seconds).
        eval_seconds: Wall-clock of the validation passes (seconds).
        checkpoint_seconds: Wall-clock of writing checkpoints (seconds).
        compile_seconds: Wall-clock of training steps that compiled a graph (``compile``; seconds, not
            in ``train_seconds``).
        epochs_trained: Passes over the active set, fractional (a budget's last epoch is partial).
        epoch_start_progress: Fraction of the run done when the current epoch started.
        train_images: Training images consumed in completed epochs.
        flops_sum: Forward FLOPs of the completed epochs' training steps (images x FLOPs per image).
        skipped_steps: Steps skipped for a non-finite loss.
        last_metrics: The metrics line of the last completed epoch.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    compile_seconds: float = 0.0
    epochs_trained: float = 0.0
    epoch_start_progress: float = 0.0
    train_images: int = 0
    flops_sum: float = 0.0
    skipped_steps: int = 0
    last_metrics: Dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> Dict[str, Any]:
        """The fields as plain values."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: If a field is missing.
        """
        for f in dataclasses.fields(self):
            if f.name not in state and f.name != "compile_seconds":
                raise ValueError(f"run progress state lacks {f.name!r}")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        for name in ("train_seconds", "train_cpu_seconds", "eval_seconds", "checkpoint_seconds", "epochs_trained",
                     "epoch_start_progress"):
            setattr(self, name, float(state[name]))
        self.compile_seconds = float(state.get("compile_seconds", 0.0))  # absent before compile existed
        self.train_images = int(state["train_images"])
        self.flops_sum = float(state["flops_sum"])
        self.skipped_steps = int(state["skipped_steps"])
        self.last_metrics = dict(state["last_metrics"] or {})


@dataclass
class EpochAccumulator:
    """Running sums of one epoch (device tensors where they come from the device).

    Attributes:
        device: Where the loss and accuracy sums live.
        loss_sum: Summed training loss (device tensor).
        correct: Correct training predictions (device tensor).
        images: Images consumed this epoch on this rank.
        counted: Images whose loss and accuracy entered the sums (finite steps).
        steps: Finite steps.
        skipped: Skipped (non-finite) steps.
        tokens_sum: Sum over steps of the mean tokens per block.
        flops: Forward FLOPs of this epoch's steps on this rank.
        seconds: Training wall-clock of this epoch (seconds).
        cpu_seconds: Process CPU time of this epoch's training (seconds).
    """

    device: torch.device
    loss_sum: torch.Tensor = None  # type: ignore[assignment]
    correct: torch.Tensor = None  # type: ignore[assignment]
    tokens_sum: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    images: int = 0
    counted: int = 0
    steps: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.float64, device=self.device)

    def reduced(self, ctx: DistContext) -> Dict[str, float]:
        """Global sums over ranks (one collective; syncs with the device)."""
        t = torch.stack([
            self.loss_sum, self.correct,
            torch.tensor(float(self.images), dtype=torch.float64, device=self.device),
            torch.tensor(float(self.counted), dtype=torch.float64, device=self.device),
            torch.tensor(self.flops, dtype=torch.float64, device=self.device),
            torch.tensor(float(self.skipped), dtype=torch.float64, device=self.device),
        ])
        all_reduce_sum(t, ctx)
        loss_sum, correct, images, counted, flops, skipped = t.tolist()
        return {"loss_sum": loss_sum, "correct": correct, "images": int(round(images)),
                "counted": int(round(counted)), "flops": flops, "skipped": int(round(skipped))}

    def _local(self) -> Dict[str, Any]:
        """This rank's own sums as plain values (exact: float64 sums read as Python floats)."""
        return {"loss_sum": float(self.loss_sum.item()), "correct": float(self.correct.item()),
                "images": self.images, "counted": self.counted, "flops": self.flops, "skipped": self.skipped,
                "tokens_sum": self.tokens_sum}

    def state(self, ctx: DistContext) -> Dict[str, Any]:
        """Plain-value state for a mid-epoch checkpoint (collectives under DDP: every rank calls it).

        Holds the global sums and every rank's own sums (``per_rank``), so that a resume on the
        same world size continues each rank's sums bit-exactly.
        """
        r = self.reduced(ctx)
        return {**r, "steps": self.steps, "tokens_sum": self.tokens_sum, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "per_rank": all_gather_objects(self._local(), ctx)}

    def load(self, state: Mapping[str, Any], ctx: DistContext) -> None:
        """Restore :meth:`state`: each rank its own sums when the world size is the one saved; else the
        global sums on rank 0 and zeros elsewhere (the next reduction is still the global total)."""
        self.steps = int(state["steps"])
        self.tokens_sum = float(state["tokens_sum"])
        self.seconds = float(state["seconds"])
        self.cpu_seconds = float(state["cpu_seconds"])
        per_rank = state.get("per_rank")
        if isinstance(per_rank, (list, tuple)) and len(per_rank) == ctx.world_size:
            source: Optional[Mapping[str, Any]] = per_rank[ctx.rank]
            self.tokens_sum = float(source["tokens_sum"])
        else:
            source = state if ctx.is_main else None
        if source is not None:
            self.loss_sum.fill_(float(source["loss_sum"]))
            self.correct.fill_(float(source["correct"]))
            self.images = int(source["images"])
            self.counted = int(source["counted"])
            self.flops = float(source["flops"])
            self.skipped = int(source["skipped"])


class EpochClock:
    """The training clock of one epoch: wall-clock and process CPU time, minus what is not training.

    What a user waits for counts (updates, data loading, selector updates); checkpoint writes and
    steps that compiled a graph are excluded (:meth:`exclude`); evaluation runs after the clock
    is read.

    Args:
        device: The training device (CUDA is synchronised before each :meth:`stamp`).
        seconds_before: Training seconds of the epoch before this invocation (a mid-epoch resume).
        cpu_before: Likewise, process CPU seconds.
    """

    def __init__(self, device: torch.device, seconds_before: float = 0.0, cpu_before: float = 0.0) -> None:
        self.device = device
        self.seconds_before = seconds_before
        self.cpu_before = cpu_before
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def exclude(self, seconds: float, cpu_seconds: float = 0.0) -> None:
        """Leave ``seconds`` of wall-clock (and ``cpu_seconds`` of CPU time) out of the epoch's training time."""
        self.t0 += seconds
        self.c0 += cpu_seconds

    def elapsed(self) -> float:
        """Training seconds of the epoch so far (no device synchronisation)."""
        return self.seconds_before + time.perf_counter() - self.t0

    def stamp(self, acc: "EpochAccumulator") -> None:
        """Write the epoch's training seconds and CPU seconds so far into ``acc`` (synchronises CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per epoch (or at a save): honest timing
        acc.seconds = self.seconds_before + time.perf_counter() - self.t0
        acc.cpu_seconds = self.cpu_before + time.process_time() - self.c0


class StepFlags:
    """Per-step ``[loss not finite, stop requested]`` flags, read with one async host copy.

    Under DDP the flags are summed over ranks so that every rank takes the same decision.

    Args:
        ctx: The process's distributed context.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.device = ctx.device
        self.cuda = self.device.type == "cuda"
        self._host = torch.zeros(2, dtype=torch.float32, pin_memory=self.cuda)
        self._event = torch.cuda.Event() if self.cuda else None
        self._flags: Optional[torch.Tensor] = None

    def launch(self, loss: torch.Tensor, stop_requested: bool) -> None:
        """Queue the flags of this step (loss finiteness; this rank's stop request)."""
        flags = torch.zeros(2, dtype=torch.float32, device=self.device)
        flags[0] = (~torch.isfinite(loss.detach().float())).any().float()
        if self.ctx.distributed:
            flags[1].fill_(1.0 if stop_requested else 0.0)
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        if self.cuda:
            self._host.copy_(flags, non_blocking=True)
            self._event.record()
        else:
            self._flags = flags

    def read(self, stop_requested: bool) -> Tuple[bool, bool]:
        """``(loss not finite, stop requested)``, agreed over ranks (waits for the device)."""
        if self.cuda:
            self._event.synchronize()
            bad, stop = self._host.tolist()
        else:
            bad, stop = self._flags.tolist()
        if not self.ctx.distributed:
            stop = 1.0 if stop_requested else 0.0
        return bad > 0, stop > 0


class FlopMeter:
    """Forward FLOPs per image and tokens per block of a run's model, at any keep ratio (cached).

    Models of a registered family (:mod:`trilevel.models`) are counted analytically
    (:func:`trilevel.forward_flops`, which also counts timm's PatchDropout in training forwards);
    other models (a dense run of a CNN) once with ``torch.utils.flop_counter``.

    Args:
        model: The run's model, unwrapped (stock: it is patched later, or never for a dense run).
        settings: The resolved patch settings of a tri-level run (FLOPs then depend on the keep
            ratio), None for a dense run.
        in_chans: Input channels (for counting a model of no family).
        img_size: Input side in pixels (likewise).
        device: The model's device.

    Attributes:
        dense_flops (float): Forward FLOPs per image of the dense model at evaluation.
        dense_tokens (float or None): Mean tokens per block of a dense training forward; None for
            models without a token count per block.
    """

    def __init__(self, model: nn.Module, settings: Optional[Any], in_chans: int, img_size: int,
                 device: torch.device) -> None:
        from ..models import find_family, forward_flops
        from .factory import measured_flops

        self.model = model
        self.settings = settings
        self.family = find_family(model)
        self._forward_flops = forward_flops
        self._cache: Dict[Tuple[float, float, bool, Optional[int]], float] = {}
        self._tokens: Dict[Tuple[float, Optional[int]], Optional[float]] = {}
        if self.family is not None:
            self.dense_flops = float(forward_flops(model, 1.0, attn_keep_ratio=1.0))
            # a training forward of a stock model with timm's PatchDropout sees fewer patches
            self._train_dense = float(forward_flops(model, 1.0, training=True, attn_keep_ratio=1.0))
            counts = self.family.tokens_per_block(model, 1.0, True)
            self.dense_tokens: Optional[float] = None if counts is None else sum(n for n, _ in counts) / len(counts)
        else:
            self.dense_flops = measured_flops(model, in_chans, img_size, device)
            self._train_dense = self.dense_flops
            self.dense_tokens = None

    def per_image(self, keep_ratio: float, training: bool = False, attn_keep_ratio: float = 1.0,
                  img_size: Optional[int] = None) -> float:
        """Forward FLOPs per image at the given ratios (the dense count for a dense run).

        Args:
            keep_ratio: Token keep ratio.
            training: Count a training forward (timm's PatchDropout active, when configured).
            attn_keep_ratio: Attention keep ratio (below 1 the pruning blocks score all query rows).
            img_size: Input side of the step (resolution curriculum); None: the model's.
        """
        if self.settings is None and img_size is None:
            return self._train_dense if training else self.dense_flops
        key = (keep_ratio, attn_keep_ratio, training, img_size)
        f = self._cache.get(key)
        if f is None:
            if self.family is None:
                raise ValueError("a resolution curriculum needs a model of a registered family (its FLOP model)")
            f = float(self._forward_flops(self.model, keep_ratio if self.settings is not None else 1.0,
                                          training=training, attn_keep_ratio=attn_keep_ratio,
                                          settings=self.settings, img_size=img_size))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = f
        return f

    def mean_tokens(self, keep_ratio: float = 1.0, img_size: Optional[int] = None) -> Optional[float]:
        """Mean tokens entering a block in a training forward at ``keep_ratio`` (prefix tokens included;
        from the FLOP model's token counts, not read from the forward); None: no token count."""
        if (self.settings is None and img_size is None) or self.dense_tokens is None:
            return self.dense_tokens
        key = (keep_ratio, img_size)
        if key not in self._tokens:
            counts = self.family.tokens_per_block(self.model, keep_ratio if self.settings is not None else 1.0, True,
                                                  self.settings, img_size)
            self._tokens[key] = None if counts is None else sum(n for n, _ in counts) / len(counts)
            if len(self._tokens) > 100_000:
                self._tokens.clear()
        return self._tokens[key]
