"""Training-step throughput benchmark: dense timm against the tri-level patch, side by side.

Every configuration gets its own copy of the same initial weights and its own AdamW. The
configurations run in rounds, in rotating order (A B C, B C A, ...), a few timed steps each, so
slow drifts of the machine hit all of them alike; the report gives the median step time, its
min-max over rounds, throughput, the measured speedup over dense timm and the FLOP-implied one.
Used by ``trilevel bench speed`` and by ``docs/benchmarks.md``.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models import PatchSettings, family_of, forward_flops, patch, patch_vit

__all__ = [
    "SpeedConfig", "SpeedResult", "DEFAULT_SPEED_CONFIGS", "Variant", "benchmark_speed", "compare_speed",
    "family_variants", "format_speed_table", "speed_for_model",
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
    """Measured step times of one configuration (seconds per training step)."""

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
        return lambda m: patch_vit(m, prune_layers=prune_layers, keep_ratio=cfg.keep_ratio,
                                   attn_keep_ratio=cfg.attn_keep_ratio, token_fate=cfg.token_fate)

    variants = [(c.name, c.keep_ratio, c.attn_keep_ratio, patcher(c)) for c in configs]
    return compare_speed(make_model, variants, batch_size, input_shape, num_classes, device, rounds,
                         steps_per_round, warmup_steps, amp_dtype, seed)


Variant = Tuple[str, Optional[float], float, Optional[Callable[[nn.Module], Any]]]
"""``(name, keep_ratio, attn_keep_ratio, patch)``: ``patch`` patches a model in place; None is stock timm."""


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
) -> List[SpeedResult]:
    """Median forward + backward + AdamW step time of each variant, taking turns.

    Args:
        make_model: Builds the stock model (called once; each variant patches a copy).
        variants: ``(name, keep_ratio, attn_keep_ratio, patch)`` rows; the first with ``patch``
            None is the baseline of the speedups (else the first row).
        batch_size: Images per step.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Classes of the random labels.
        device: ``"cpu"`` or ``"cuda"``.
        rounds: Rounds; in round ``r`` the variants run in order rotated by ``r``.
        steps_per_round: Timed steps per variant per round (their mean is one sample).
        warmup_steps: Untimed steps per variant first.
        amp_dtype: Autocast dtype, or None for full precision.
        seed: Seed of the weights and of the fixed random batch.

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

    def train_steps(model, opt, n):
        for _ in range(n):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for model, opt in runs:
        train_steps(model, opt, warmup_steps)
    times: List[List[float]] = [[] for _ in runs]
    for r in range(rounds):
        for j in range(len(runs)):
            i = (j + r) % len(runs)
            start = time.perf_counter()
            train_steps(*runs[i], steps_per_round)
            times[i].append((time.perf_counter() - start) / steps_per_round)
    ref = next((i for i, v in enumerate(variants) if v[3] is None), 0)
    ref_time, ref_flops = statistics.median(times[ref]), forward_flops(runs[ref][0])
    rows = []
    for (name, keep, attn, _), (model, _), samples in zip(variants, runs, times):
        median, flops = statistics.median(samples), forward_flops(model)
        rows.append(SpeedResult(name=name, keep_ratio=keep, attn_keep_ratio=attn, median_s=median,
                                min_s=min(samples), max_s=max(samples), images_per_s=batch_size / median,
                                speedup=ref_time / median, flops_speedup=ref_flops / flops,
                                relative_flops=flops / dense_flops))
    return rows


def format_speed_table(results: Sequence[SpeedResult], as_json: bool = False) -> str:
    """Markdown table (or JSON) of :func:`benchmark_speed` results."""
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    lines = [
        "| configuration | step median (min-max) ms | images/s | speedup | FLOP-implied | measured / implied |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.median_s * 1e3:.1f} ({r.min_s * 1e3:.1f}-{r.max_s * 1e3:.1f}) | "
            f"{r.images_per_s:.1f} | {r.speedup:.3f}x | {r.flops_speedup:.3f}x | "
            f"{r.speedup / r.flops_speedup:.3f} |"
        )
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

    Returns:
        One :class:`SpeedResult` per variant.

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
                         amp_dtype=amp_dtype)
