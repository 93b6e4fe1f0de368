"""Training-step throughput benchmark: dense timm against the tri-level patch, side by side.

Every configuration gets its own copy of the same initial weights and its own AdamW. The
configurations run in rounds, in rotating order (A B C, B C A, ...), a few timed steps each, so
slow drifts of the machine hit all of them alike; the report gives the median step time, its
min-max over rounds, throughput, the measured speedup over dense timm and the FLOP-implied one.

Each configuration's training memory is measured too: the bytes that one training forward saves
for backward, per image (:func:`saved_bytes_for_backward`; exact, the same on any device), on CUDA
also the step's allocator peak, against dense and against the kept-token fraction that the FLOP
model implies. With ``compile=True`` every configuration is also timed under ``torch.compile`` in
the same rotation, for the step speedup of compile over eager.
Used by ``trilevel bench speed`` and by ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models import PatchSettings, family_of, forward_flops, patch, tokens_per_block

__all__ = [
    "SpeedConfig", "SpeedResult", "DEFAULT_SPEED_CONFIGS", "Variant", "benchmark_speed", "compare_speed",
    "family_variants", "format_speed_table", "max_batch_in_memory", "saved_bytes_for_backward", "speed_for_model",
    "token_fraction",
]

_LOG = logging.getLogger(__name__)

@dataclass(frozen=True)
class SpeedConfig:
    """One benchmarked configuration.

    Attributes:
        name: Row label.
        keep_ratio: Token keep ratio; None means stock timm (not patched).
        attn_keep_ratio: Attention keep ratio (ignored for stock timm).
        token_fate: What happens to pruned tokens (``drop``, ``fuse``, ``bypass``).
    """

    name: str
    keep_ratio: Optional[float] = None
    attn_keep_ratio: float = 1.0
    token_fate: str = "drop"


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


def DEFAULT_SPEED_CONFIGS(keep_ratio: float = 0.7, attn_keep_ratio: float = 0.3) -> List[SpeedConfig]:
    """Dense timm, the patch at ratio 1, token level alone, attention level alone, tri-level."""
    return [
        SpeedConfig("dense timm"),
        SpeedConfig("patched, ratios 1.0/1.0", 1.0, 1.0),
        SpeedConfig(f"token {keep_ratio} / attn 1.0", keep_ratio, 1.0),
        SpeedConfig(f"token 1.0 / attn {attn_keep_ratio}", 1.0, attn_keep_ratio),
        SpeedConfig(f"token {keep_ratio} / attn {attn_keep_ratio}", keep_ratio, attn_keep_ratio),
    ]


def benchmark_speed(make_model: Callable[[], nn.Module], configs: Sequence[SpeedConfig], batch_size: int,
                    input_shape: Sequence[int], num_classes: int, device: str | torch.device = "cpu",
                    rounds: int = 5, steps_per_round: int = 3, warmup_steps: int = 2,
                    amp_dtype: Optional[torch.dtype] = None, prune_layers: Optional[Sequence[int]] = None,
                    seed: int = 0) -> List[SpeedResult]:
    """Time forward + backward + AdamW step for each configuration, alternating.

    Args:
        make_model: Builds the stock timm model (called once; copies are patched).
        configs: Configurations to compare; the first one without ``keep_ratio`` is the
            dense baseline (speedups are relative to it; else to the first config).
        batch_size: Images per step.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Classes of the random labels.
        device: ``"cpu"`` or ``"cuda"``.
        rounds: Rounds; each config runs ``steps_per_round`` timed steps per round.
        steps_per_round: Timed steps per config per round; the round's mean is one sample.
        warmup_steps: Untimed steps per config before the first round.
        amp_dtype: ``torch.bfloat16``/``torch.float16`` for autocast, None for full precision.
        prune_layers: Pruning blocks (None: the paper's default).
        seed: Seed of the weights and the (fixed) random batch.

    Returns:
        One :class:`SpeedResult` per config, in ``configs`` order.

    Raises:
        ValueError: If ``batch_size``, ``rounds`` or ``steps_per_round`` is not positive, or
            ``configs`` is empty.
    """
    for name, v in (("batch_size", batch_size), ("rounds", rounds), ("steps_per_round", steps_per_round)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not configs:
        raise ValueError("configs must not be empty")
    def patcher(cfg: SpeedConfig) -> Optional[Callable[[nn.Module], Any]]:
        if cfg.keep_ratio is None:
            return None
        return lambda m: patch(m, preset="paper", prune_layers=prune_layers, keep_ratio=cfg.keep_ratio,
                               attn_keep_ratio=cfg.attn_keep_ratio, token_fate=cfg.token_fate)

    variants = [(c.name, c.keep_ratio, c.attn_keep_ratio, patcher(c)) for c in configs]
    return compare_speed(make_model, variants, batch_size, input_shape, num_classes, device, rounds,
                         steps_per_round, warmup_steps, amp_dtype, seed)


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
    counts = {"batch_size": batch_size, "rounds": rounds, "steps_per_round": steps_per_round}
    bad = [f"{k}={v!r}" for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or not variants:
        raise ValueError(f"compare_speed needs variants and positive int counts; got {', '.join(bad) or 'no variants'}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stock = make_model()
    images = torch.randn(batch_size, *input_shape, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    dense_flops = forward_flops(stock)
    runs = []
    for _, _, _, patch in variants:
        model = copy.deepcopy(stock)
        if patch is not None:
            patch(model)
        model.to(device).train()
        runs.append((model, torch.optim.AdamW(model.parameters(), lr=1e-4)))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_steps(model, opt, n):
        for _ in range(n):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    # a timed run: (variant index, callable model); compiled twins follow their eager run
    entries: List[Tuple[int, Callable]] = []
    for i, (model, _) in enumerate(runs):
        entries.append((i, model))
        if compile:
            entries.append((i, torch.compile(model, backend=compile_backend)))
    compile_s: Dict[int, float] = {}
    errors: Dict[int, str] = {}
    times: List[List[float]] = [[] for _ in entries]
    dead = set()

    def run_entry(e: int, n: int) -> None:
        i, fn = entries[e]
        if fn is runs[i][0]:
            train_steps(fn, runs[i][1], n)
            return
        try:
            train_steps(fn, runs[i][1], n)
        except Exception as err:  # noqa: BLE001 - a failed compile is a row's finding, not the bench's end
            dead.add(e)
            errors[i] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            _LOG.warning("torch.compile of %r failed; its row has no compile figures: %s", variants[i][0], errors[i])

    with _recompile_limit(len(runs)) if compile else contextlib.nullcontext():
        for e, (i, fn) in enumerate(entries):
            if fn is runs[i][0]:
                run_entry(e, warmup_steps)
                continue
            sync()
            start = time.perf_counter()
            run_entry(e, 1)
            if e not in dead:
                compile_s[i] = time.perf_counter() - start
                run_entry(e, max(0, warmup_steps - 1))
        saved = [saved_bytes_for_backward(model, images, labels, amp_dtype) for model, _ in runs]
        peaks: List[Optional[float]] = [None] * len(runs)
        if device.type == "cuda":
            for i, (model, opt) in enumerate(runs):
                sync()
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                train_steps(model, opt, 1)
                peaks[i] = (torch.cuda.max_memory_allocated(device) - before) / batch_size
        for r in range(rounds):
            for j in range(len(entries)):
                e = (j + r) % len(entries)
                if e in dead:
                    continue
                start = time.perf_counter()
                run_entry(e, steps_per_round)
                if e not in dead:
                    times[e].append((time.perf_counter() - start) / steps_per_round)
    eager = {i: times[e] for e, (i, fn) in enumerate(entries) if fn is runs[i][0]}
    compiled = {i: times[e] for e, (i, fn) in enumerate(entries) if fn is not runs[i][0] and e not in dead}
    ref = next((i for i, v in enumerate(variants) if v[3] is None), 0)
    ref_time, ref_flops = statistics.median(eager[ref]), forward_flops(runs[ref][0])
    rows = []
    for i, ((name, keep, attn, _), (model, _)) in enumerate(zip(variants, runs)):
        samples = eager[i]
        median, flops = statistics.median(samples), forward_flops(model)
        fast = compiled.get(i)
        rows.append(SpeedResult(
            name=name, keep_ratio=keep, attn_keep_ratio=attn, median_s=median, min_s=min(samples),
            max_s=max(samples), images_per_s=batch_size / median, speedup=ref_time / median,
            flops_speedup=ref_flops / flops, relative_flops=flops / dense_flops, saved_bytes=saved[i],
            saved_bytes_per_image=round(saved[i] / batch_size),
            memory_ratio=saved[i] / saved[ref] if saved[ref] else float("nan"),
            max_batch_same_memory=max_batch_in_memory(batch_size, saved[ref], saved[i]),
            token_fraction=token_fraction(model, stock), cuda_peak_bytes_per_image=peaks[i],
            compile_speedup=median / statistics.median(fast) if fast else None,
            compile_seconds=compile_s.get(i) if fast else None, compile_error=errors.get(i),
        ))
    return rows


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_speed_table(results: Sequence[SpeedResult], as_json: bool = False) -> str:
    """Markdown table (or JSON) of :func:`compare_speed` / :func:`benchmark_speed` results.

    Columns: step time (ms), throughput (images/s), measured and FLOP-implied speedups, saved for
    backward (MB = 1e6 bytes per image), memory and tokens relative to dense, the batch that fits
    in dense's saved memory; a CUDA peak column (MB per image) when measured, and compile speedup
    and compile time (s) columns when compiled ("failed" where compiling raised).
    """
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    cuda = any(r.cuda_peak_bytes_per_image is not None for r in results)
    compiled = any(r.compile_speedup is not None or r.compile_error is not None for r in results)
    head = ["configuration", "step median (min-max) ms", "images/s", "speedup", "FLOP-implied", "measured / implied",
            "saved for backward MB/image", "memory vs dense", "tokens vs dense", "batch in dense's memory"]
    head += ["CUDA peak MB/image"] * cuda + ["compile speedup", "compile s"] * compiled
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [
            r.name, f"{r.median_s * 1e3:.1f} ({r.min_s * 1e3:.1f}-{r.max_s * 1e3:.1f})", f"{r.images_per_s:.1f}",
            f"{r.speedup:.3f}x", f"{r.flops_speedup:.3f}x", f"{r.speedup / r.flops_speedup:.3f}",
            f"{r.saved_bytes_per_image / 1e6:.3f}", f"{r.memory_ratio:.3f}", _cell(r.token_fraction, ".3f"),
            str(r.max_batch_same_memory),
        ]
        if cuda:
            peak = r.cuda_peak_bytes_per_image
            cells.append(_cell(None if peak is None else peak / 1e6, ".3f"))
        if compiled:
            failed = r.compile_error is not None
            cells += ["failed" if failed else _cell(r.compile_speedup, ".3f") + "x" * (r.compile_speedup is not None),
                      "failed" if failed else _cell(r.compile_seconds, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_variants(model: nn.Module, keep_ratio: float = 0.7, attn_keep_ratio: float = 0.3,
                    prune_layers: Optional[Sequence[int]] = None) -> List[Variant]:
    """The variants worth timing for a model of any registered family.

    Stock timm, the patch at ratios 1/1, the token level alone; with an attention level, the
    attention level alone and both; each further mode of the family (Swin: ``mask``) at
    ``keep_ratio``. Pruned tokens are dropped (the paper's fate) where the family allows it.

    Raises:
        TypeError: For a model of no registered family.
    """
    family = family_of(model)
    fate = "drop" if family.token_fates is None or "drop" in family.token_fates else family.token_fates[0]
    layers = None if prune_layers is None else tuple(prune_layers)

    def patched(name: str, keep: float, attn: float, mode: Optional[str] = None) -> Variant:
        settings = PatchSettings(prune_layers=layers, keep_ratio=keep, attn_keep_ratio=attn, token_fate=fate,
                                 mode=mode)
        return name, keep, attn, lambda m: patch(m, settings)

    rows = [("dense timm", None, 1.0, None), patched("patched, ratios 1.0/1.0", 1.0, 1.0),
            patched(f"token {keep_ratio} / attn 1.0", keep_ratio, 1.0)]
    if family.supports_attention_level:
        rows += [patched(f"token 1.0 / attn {attn_keep_ratio}", 1.0, attn_keep_ratio),
                 patched(f"token {keep_ratio} / attn {attn_keep_ratio}", keep_ratio, attn_keep_ratio)]
    rows += [patched(f"{mode} {keep_ratio}", keep_ratio, 1.0, mode) for mode in family.modes[1:]]
    return rows


def speed_for_model(
    model: str,
    model_kwargs: Mapping[str, Any],
    batch_size: int = 128,
    keep_ratio: float = 0.7,
    attn_keep_ratio: float = 0.3,
    prune_layers: Optional[Sequence[int]] = None,
    rounds: int = 5,
    steps_per_round: int = 3,
    warmup_steps: int = 2,
    device: str = "auto",
    amp: str = "none",
    compile: bool = False,
) -> List[SpeedResult]:
    """:func:`compare_speed` of a timm model by name (any registered family) with :func:`family_variants`.

    Args:
        model: timm model name (ViT/DeiT, EVA-02, Swin).
        model_kwargs: Keyword arguments of ``timm.create_model`` (``num_classes``, ``img_size``,
            ``patch_size``, ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``).
        batch_size: Images per step.
        keep_ratio: Token keep ratio of the pruned rows.
        attn_keep_ratio: Attention keep ratio of the pruned rows (families with an attention level).
        prune_layers: Pruning blocks; None: the family's default.
        rounds: Rounds of the alternation.
        steps_per_round: Timed steps per configuration per round.
        warmup_steps: Untimed steps per configuration first.
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: ``none``, ``bf16`` or ``fp16``.
        compile: Also time each variant under ``torch.compile`` (inductor) for the compile speedup.

    Returns:
        One :class:`SpeedResult` per variant, with its memory figures (and compile figures).

    Raises:
        ValueError: For an unknown model name, a model of no registered family, an unavailable
            device, or a bad setting (named).
    """
    import timm

    if not timm.is_model(model):
        raise ValueError(f"--model {model!r} is not a timm model name (e.g. vit_tiny_patch16_224)")
    if amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be one of none, bf16, fp16; got {amp!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch.cuda.is_available() is False")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def make():
        return timm.create_model(model, pretrained=False, **model_kwargs)

    try:
        probe = make()
    except (TypeError, AssertionError, RuntimeError) as e:  # timm checks sizes with assert
        raise ValueError(f"timm could not build --model {model!r} with {dict(model_kwargs)}: {e or type(e).__name__}") from e
    try:
        variants = family_variants(probe, keep_ratio, attn_keep_ratio, prune_layers)
    except TypeError as e:
        raise ValueError(f"--model {model!r}: {e}") from None
    shape = (probe.patch_embed.proj.in_channels, *probe.patch_embed.img_size)
    del probe
    return compare_speed(make, variants, batch_size, shape, int(model_kwargs.get("num_classes", 10)), device=device,
                         rounds=rounds, steps_per_round=steps_per_round, warmup_steps=warmup_steps,
                         amp_dtype=amp_dtype, compile=compile)
