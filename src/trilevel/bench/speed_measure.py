"""The measurement of ``trilevel bench speed``: step time and training memory of model variants, taking turns.

:func:`compare_speed` gives every variant its own copy of the same initial weights and its own
AdamW; the variants (and, with ``compile``, their ``torch.compile`` twins) run in rounds, in rotating
order, a few timed steps each, so slow drifts of the machine hit all of them alike. Memory is the
bytes one training forward saves for backward (:func:`saved_bytes_for_backward`; exact, the same
on any device), on CUDA also the step's allocator peak. The rows (:class:`SpeedResult`) are
formatted and the variants chosen by :mod:`trilevel.bench.speed`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models import forward_flops, tokens_per_block

__all__ = ["SpeedResult", "Variant", "compare_speed", "max_batch_in_memory", "saved_bytes_for_backward",
           "token_fraction"]

# the warnings of ``trilevel bench speed`` keep the logger name they had before this module was split off
_LOG = logging.getLogger("trilevel.bench.speed")


@dataclass
class SpeedResult:
    """Measured step time and training memory of one configuration.

    Attributes:
        name: Row label.
        keep_ratio: Token keep ratio; None for stock timm.
        attn_keep_ratio: Attention keep ratio.
        median_s: Median over rounds of the eager step time (seconds per training step).
        min_s: Fastest round (seconds per step).
        max_s: Slowest round (seconds per step).
        images_per_s: Batch size over ``median_s`` (images per second).
        speedup: Baseline's median step time over this one's (eager).
        flops_speedup: Baseline's training FLOPs over this one's (the FLOP-implied speedup).
        relative_flops: This configuration's training FLOPs over dense timm's.
        saved_bytes: Bytes one training forward (loss included) saves for backward, for the whole
            batch; parameters and their (autocast) copies excluded (:func:`saved_bytes_for_backward`).
        saved_bytes_per_image: ``saved_bytes`` over the batch size, rounded (bytes per image).
        memory_ratio: ``saved_bytes`` over the baseline's (dimensionless).
        max_batch_same_memory: Largest batch (images) whose saved bytes fit in what the baseline
            saves at the benchmark batch size: ``floor(batch * baseline_saved / saved)``.
        token_fraction: Tokens the blocks process, summed over blocks (attention and MLP alike),
            over dense timm's, from :func:`trilevel.tokens_per_block` of a training forward; None
            for families without a token count (Swin).
        cuda_peak_bytes_per_image: On CUDA, the allocator peak of one eager training step above
            what was allocated before it (weights, gradients, optimizer state), over the batch
            size (bytes per image); None on CPU.
        compile_speedup: With compile: median eager step time over median ``torch.compile`` step
            time; None without compile or when compiling failed.
        compile_seconds: With compile: wall time of the first compiled step (seconds), which
            includes the compilation; None without compile or when compiling failed.
        compile_error: Why compiling (or a compiled step) failed; None otherwise.
    """

    name: str
    keep_ratio: Optional[float]
    attn_keep_ratio: float
    median_s: float
    min_s: float
    max_s: float
    images_per_s: float
    speedup: float
    flops_speedup: float
    relative_flops: float
    saved_bytes: int = 0
    saved_bytes_per_image: int = 0
    memory_ratio: float = 1.0
    max_batch_same_memory: int = 0
    token_fraction: Optional[float] = None
    cuda_peak_bytes_per_image: Optional[float] = None
    compile_speedup: Optional[float] = None
    compile_seconds: Optional[float] = None
    compile_error: Optional[str] = None


Variant = Tuple[str, Optional[float], float, Optional[Callable[[nn.Module], Any]]]
"""``(name, keep_ratio, attn_keep_ratio, patch)``: ``patch`` patches a model in place; None is stock timm."""



# grad_fn nodes that only view or cast their one input: a saved tensor reached from a parameter's
# AccumulateGrad through these alone is a copy of the weight (autocast's), not an activation
_PASS_THROUGH = ("ToCopyBackward", "TBackward", "TransposeBackward", "PermuteBackward", "ViewBackward",
                 "UnsafeViewBackward", "ExpandBackward", "UnsqueezeBackward", "SqueezeBackward", "AliasBackward",
                 "ReshapeAliasBackward")


def _weight_copy(t: torch.Tensor, hops: int = 8) -> bool:
    fn = t.grad_fn
    for _ in range(hops):
        if fn is None:
            return False
        kind = type(fn).__name__
        if kind == "AccumulateGrad":
            return True
        inputs = [f for f, _ in fn.next_functions if f is not None]
        if kind.rstrip("0123456789") not in _PASS_THROUGH or len(inputs) != 1:
            return False
        fn = inputs[0]
    return False


def saved_bytes_for_backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             amp_dtype: Optional[torch.dtype] = None) -> int:
    """Bytes that one training forward (cross-entropy loss included) keeps for backward.

    Runs ``model(images)`` under :func:`torch.autograd.graph.saved_tensors_hooks` and adds up the
    storage of every saved tensor once (storages deduplicated by data pointer, so views of one
    tensor count once). Parameters and buffers are skipped (leaves requiring grad, or tensors on
    their storage), and so are their casts under autocast (a saved tensor whose autograd history is
    only casts and views of a parameter): what remains grows with the batch. Exact and the same on
    any device; the graph is dropped without a backward, and nothing is trained.

    Args:
        model: The model, in the mode to measure (``train()`` for a training step).
        images: The input batch.
        labels: Class indices of ``images``.
        amp_dtype: Autocast dtype, or None for full precision.

    Returns:
        Saved bytes for the whole batch.
    """
    skip = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    seen: set = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if (t.is_leaf and t.requires_grad) or _weight_copy(t):
            return t
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:  # every saved tensor stays alive: pointers are not reused
            seen.add(ptr)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
    del loss
    return total


def max_batch_in_memory(batch_size: int, budget_bytes: int, saved_bytes: int) -> int:
    """Largest batch whose saved bytes fit ``budget_bytes``, saved bytes growing linearly with the batch.

    Args:
        batch_size: Batch (images) at which ``saved_bytes`` was measured.
        budget_bytes: The memory to fit in (bytes; e.g. dense's saved bytes at ``batch_size``).
        saved_bytes: Bytes saved for backward at ``batch_size``.

    Returns:
        ``floor(batch_size * budget_bytes / saved_bytes)`` in exact integer arithmetic (images);
        0 if ``saved_bytes`` is not positive.
    """
    return batch_size * budget_bytes // saved_bytes if saved_bytes > 0 else 0


def token_fraction(model: nn.Module, dense: nn.Module) -> Optional[float]:
    """Tokens that ``model``'s blocks process in a training forward, over dense ``dense``'s.

    Attention and MLP token counts of every block (:func:`trilevel.tokens_per_block`, prefix
    tokens included) are summed, so a pruning block counts half at its input and half at its kept
    tokens.

    Returns:
        The fraction (dimensionless), or None for a family without token counts (Swin).
    """
    try:
        ours, theirs = tokens_per_block(model, training=True), tokens_per_block(dense, training=True)
    except TypeError:
        return None
    return sum(a + m for a, m in ours) / sum(a + m for a, m in theirs)


def _recompile_limit(n: int) -> contextlib.AbstractContextManager:
    """Room for ``n`` compiled variants of the same code (dynamo's guards differ per variant)."""
    config = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, key):
            return config.patch(**{key: max(getattr(config, key), 4 * n)})
    return contextlib.nullcontext()


def compare_speed(
    make_model: Callable[[], nn.Module],
    variants: Sequence[Variant],
    batch_size: int,
    input_shape: Sequence[int],
    num_classes: int,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    steps_per_round: int = 3,
    warmup_steps: int = 2,
    amp_dtype: Optional[torch.dtype] = None,
    seed: int = 0,
    compile: bool = False,
    compile_backend: str | Callable = "inductor",
) -> List[SpeedResult]:
    """Median forward + backward + AdamW step time and training memory of each variant, taking turns.

    After the warm-up, each variant's saved-for-backward bytes are measured
    (:func:`saved_bytes_for_backward`), and on CUDA the allocator peak of one step. With
    ``compile``, each variant is timed a second time through ``torch.compile(model)`` (same weights
    and optimizer) in the same rotation; its first compiled step is untimed and its wall time is
    the compile time. A variant whose compilation or compiled step raises keeps its eager figures
    and gets ``compile_error`` (and a logged warning).

    Args:
        make_model: Builds the stock model (called once; each variant patches a copy).
        variants: ``(name, keep_ratio, attn_keep_ratio, patch)`` rows; the first with ``patch``
            None is the baseline of the speedups and of the memory ratio (else the first row).
        batch_size: Images per step.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Classes of the random labels.
        device: ``"cpu"`` or ``"cuda"``.
        rounds: Rounds; in round ``r`` the runs (variants, and their compiled twins) go in order
            rotated by ``r``.
        steps_per_round: Timed steps per run per round (their mean is one sample).
        warmup_steps: Untimed steps per run first (at least one for a compiled run).
        amp_dtype: Autocast dtype, or None for full precision.
        seed: Seed of the weights and of the fixed random batch.
        compile: Also time each variant under ``torch.compile``.
        compile_backend: ``torch.compile`` backend, a name or a callable (``inductor``; ``eager``
            to test the plumbing without code generation).

    Returns:
        One :class:`~trilevel.bench.speed.SpeedResult` per variant, in order.

    Raises:
        ValueError: If ``variants`` is empty or a count is not a positive int.
    """
    _check_counts(batch_size, rounds, steps_per_round, variants)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stock = make_model()
    step = _Step(torch.randn(batch_size, *input_shape, generator=gen).to(device),
                 torch.randint(0, num_classes, (batch_size,), generator=gen).to(device), device, amp_dtype)
    dense_flops = forward_flops(stock)
    runs = _eager_runs(stock, variants, device)
    # compiled twins follow their eager run in the rotation
    entries = [twin for run in runs for twin in ([run, run.compiled_twin(compile_backend)] if compile else [run])]
    with _recompile_limit(len(runs)) if compile else contextlib.nullcontext():
        for entry in entries:
            entry.warm_up(step, warmup_steps)
        saved = [saved_bytes_for_backward(run.model, step.images, step.labels, amp_dtype) for run in runs]
        peaks = [step.cuda_peak_per_image(run) for run in runs]
        _time_rounds(entries, step, rounds, steps_per_round)
    twins = {entry.variant: entry for entry in entries if entry.is_compiled}
    ref = next((i for i, v in enumerate(variants) if v[3] is None), 0)
    baseline = _Baseline(stock=stock, batch_size=batch_size, median_s=statistics.median(runs[ref].times),
                         flops=forward_flops(runs[ref].model), dense_flops=dense_flops, saved_bytes=saved[ref])
    return [_speed_row(variant, run, twins.get(i), saved[i], peaks[i], baseline)
            for i, (variant, run) in enumerate(zip(variants, runs))]


def _check_counts(batch_size: int, rounds: int, steps_per_round: int, variants: Sequence[Variant]) -> None:
    counts = {"batch_size": batch_size, "rounds": rounds, "steps_per_round": steps_per_round}
    bad = [f"{k}={v!r}" for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or not variants:
        raise ValueError(f"compare_speed needs variants and positive int counts; got {', '.join(bad) or 'no variants'}")


@dataclass
class _Step:
    """The fixed random batch and the training step (forward, loss, backward, AdamW) every run takes."""

    images: torch.Tensor
    labels: torch.Tensor
    device: torch.device
    amp_dtype: Optional[torch.dtype]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self, model: Callable, opt: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = nn.functional.cross_entropy(model(self.images), self.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.sync()

    def cuda_peak_per_image(self, run: "_Run") -> Optional[float]:
        """On CUDA, the allocator peak of one eager step above what was allocated before (bytes per image)."""
        if self.device.type != "cuda":
            return None
        self.sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.train(run.model, run.opt, 1)
        return (torch.cuda.max_memory_allocated(self.device) - before) / len(self.images)


@dataclass
class _Run:
    """One timed run: a variant's model (eager) or its ``torch.compile`` twin, sharing weights and optimizer."""

    variant: int
    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    fn: Callable
    is_compiled: bool = False
    times: List[float] = field(default_factory=list)
    compile_s: Optional[float] = None
    error: Optional[str] = None

    def compiled_twin(self, backend: str | Callable) -> "_Run":
        return _Run(self.variant, self.name, self.model, self.opt, torch.compile(self.model, backend=backend), True)

    def steps(self, step: _Step, n: int) -> None:
        if not self.is_compiled:
            step.train(self.fn, self.opt, n)
            return
        try:
            step.train(self.fn, self.opt, n)
        except Exception as err:  # noqa: BLE001 - a failed compile is a row's finding, not the bench's end
            self.error = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            _LOG.warning("torch.compile of %r failed; its row has no compile figures: %s", self.name, self.error)

    def warm_up(self, step: _Step, warmup_steps: int) -> None:
        """Untimed steps; a compiled run's first step is timed apart as its compile time."""
        if not self.is_compiled:
            self.steps(step, warmup_steps)
            return
        step.sync()
        start = time.perf_counter()
        self.steps(step, 1)
        if self.error is None:
            self.compile_s = time.perf_counter() - start
            self.steps(step, max(0, warmup_steps - 1))


def _eager_runs(stock: nn.Module, variants: Sequence[Variant], device: torch.device) -> List[_Run]:
    """Each variant's patched copy of ``stock``, on ``device`` in train mode, with its own AdamW."""
    runs = []
    for i, (name, _, _, patch) in enumerate(variants):
        model = copy.deepcopy(stock)
        if patch is not None:
            patch(model)
        model.to(device).train()
        runs.append(_Run(i, name, model, torch.optim.AdamW(model.parameters(), lr=1e-4), model))
    return runs


def _time_rounds(entries: Sequence[_Run], step: _Step, rounds: int, steps_per_round: int) -> None:
    """In round ``r`` every live run takes ``steps_per_round`` timed steps, in order rotated by ``r``."""
    for r in range(rounds):
        for j in range(len(entries)):
            entry = entries[(j + r) % len(entries)]
            if entry.error is not None:
                continue
            start = time.perf_counter()
            entry.steps(step, steps_per_round)
            if entry.error is None:
                entry.times.append((time.perf_counter() - start) / steps_per_round)


@dataclass(frozen=True)
class _Baseline:
    """What every row is compared with: dense timm and the reference variant."""

    stock: nn.Module
    batch_size: int
    median_s: float
    flops: float
    dense_flops: float
    saved_bytes: int


def _speed_row(variant: Variant, run: _Run, twin: Optional[_Run], saved: int, peak: Optional[float],
               ref: _Baseline) -> SpeedResult:
    name, keep, attn, _ = variant
    samples, batch = run.times, ref.batch_size
    median, flops = statistics.median(samples), forward_flops(run.model)
    fast = twin.times if twin is not None and twin.error is None else None
    return SpeedResult(
        name=name, keep_ratio=keep, attn_keep_ratio=attn, median_s=median, min_s=min(samples),
        max_s=max(samples), images_per_s=batch / median, speedup=ref.median_s / median,
        flops_speedup=ref.flops / flops, relative_flops=flops / ref.dense_flops, saved_bytes=saved,
        saved_bytes_per_image=round(saved / batch),
        memory_ratio=saved / ref.saved_bytes if ref.saved_bytes else float("nan"),
        max_batch_same_memory=max_batch_in_memory(batch, ref.saved_bytes, saved),
        token_fraction=token_fraction(run.model, ref.stock), cuda_peak_bytes_per_image=peak,
        compile_speedup=median / statistics.median(fast) if fast else None,
        compile_seconds=twin.compile_s if fast else None, compile_error=None if twin is None else twin.error,
    )
