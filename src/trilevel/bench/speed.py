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

This module holds the command's side: the configurations and variants to time, and the table;
the measurement itself (:func:`compare_speed`, re-exported here) is :mod:`trilevel.bench.speed_measure`.
Used by ``trilevel bench speed`` and by ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..models import PatchSettings, family_of, patch
from .speed_measure import (
    SpeedResult, Variant, compare_speed, max_batch_in_memory, saved_bytes_for_backward, token_fraction,
)

__all__ = [
    "SpeedConfig", "SpeedResult", "DEFAULT_SPEED_CONFIGS", "Variant", "benchmark_speed", "compare_speed",
    "family_variants", "format_speed_table", "max_batch_in_memory", "saved_bytes_for_backward", "speed_for_model",
    "token_fraction",
]


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
