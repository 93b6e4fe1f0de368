"""The three levels as one object that a training loop calls at fixed events.

:class:`TriLevel` owns what the method adds to an ordinary training loop: the in-place patch of a
timm Vision Transformer (token and attention levels, :mod:`trilevel.vit`), the keep-ratio
schedules (:mod:`trilevel.schedules`), the example selector and its sampler
(:mod:`trilevel.example_selection`). A loop calls it at three events, in the shape of composer's
``Algorithm`` (MosaicML composer): :meth:`TriLevel.on_epoch_start`, :meth:`TriLevel.on_step` and
:meth:`TriLevel.after_forward`; :meth:`TriLevel.state_dict` makes a resume exact. ``trilevel
train`` runs the same object, so the few lines in the README are what the command does.

:class:`TriLevelConfig` holds the method's settings; :class:`trilevel.training.TrainConfig`
extends it with the training recipe, so every option is described once.

Source: Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient
Vision Transformer Training", AAAI 2023 (arXiv 2211.10801); the example level's forgetting events
follow Toneva et al., ICLR 2019; the loss-based selector follows InfoBatch (Qin et al., ICLR 2024).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, get_args

import torch
import torch.nn as nn

from .options import (
    BlockList, Fraction, OptionalFloat, OptionalInt, UpdateEvery, check_choice, check_float, check_int,
    parse_block_list, parse_update_every,
)

__all__ = ["ALLOWED_SELECTORS", "PRESETS", "SelectorName", "TriLevelConfig", "TriLevel", "build_selector",
           "patch_model", "preset_settings", "resolve_speedup", "schedule_flops"]

SelectorName = Literal["forgetting", "random", "loss", "none"]
ScheduleShape = Literal["decay", "grow"]
ScheduleCurve = Literal["cosine", "linear", "step"]
TokenFate = Literal["drop", "fuse", "bypass"]
TokenScore = Literal["cls-attention", "random"]
ALLOWED_SELECTORS: Tuple[str, ...] = get_args(SelectorName)
"""Example selectors: the paper's forgetting events, random swaps, InfoBatch-style loss, or none."""


PresetName = Literal["paper", "fast"]

#: Named settings of the three levels (the fields of :class:`TriLevelConfig` they set).
#: ``paper``: the exact settings of Kong et al. (AAAI 2023) and the authors' code. ``fast``: what
#: won the time-to-accuracy study against budget-matched dense training (docs/benchmarks.md).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {
        "keep_ratio": 0.7, "attn_keep_ratio": 0.3, "prune_layers": None, "ratio_schedule": "decay",
        "ratio_warmup": 1.0 / 30.0, "ratio_decay_end": 11.0 / 30.0, "ratio_curve": "cosine", "dense_tail": 0.0,
        "token_fate": "drop", "token_score": "cls-attention", "rejoin_layer": None, "eval_keep_ratio": None,
        "eval_attn_keep_ratio": None, "selector": "forgetting", "example_remove": 0.2, "example_swap": 0.05,
        "example_update_every": 0.1, "example_max_updates": 5,
    },
    "fast": {
        "keep_ratio": 0.5, "attn_keep_ratio": 1.0, "prune_layers": None, "ratio_schedule": "grow",
        "ratio_warmup": 0.0, "ratio_decay_end": 0.8, "ratio_curve": "linear", "dense_tail": 0.2,
        "token_fate": "bypass", "token_score": "cls-attention", "rejoin_layer": None, "eval_keep_ratio": None,
        "eval_attn_keep_ratio": None, "selector": "forgetting", "example_remove": 0.2, "example_swap": 0.05,
        "example_update_every": 0.1, "example_max_updates": 5,
    },
}


def preset_settings(name: Optional[str]) -> Dict[str, Any]:
    """The settings of preset ``name`` (a copy; empty for None).

    Raises:
        ValueError: For an unknown name (the known ones are listed).
    """
    if name is None:
        return {}
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return dict(PRESETS[name])


@dataclass
class TriLevelConfig:
    """Settings of the three levels (the method), validated on construction.

    Every invalid value raises ``ValueError`` naming the option (as its flag), the value and what
    is allowed. The command line of ``trilevel train`` is generated from these fields.
    :meth:`from_preset` starts from named settings (:data:`PRESETS`). The defaults are the
    ``fast`` preset's, the winner of the time-to-accuracy study (docs/benchmarks.md);
    ``preset="paper"`` (``--preset paper``) gives Kong et al.'s exact settings.

    Attributes:
        preset: Named settings the others start from: paper (Kong et al.'s exact settings) or fast (the winner of our time-to-accuracy study); none: the defaults below, which are the fast preset's (--preset paper for the paper's). Options given explicitly override the preset.
        keep_ratio: Token keep ratio per pruning block at the schedule's start (grow) or end (decay), in (0, 1] (paper: 0.7).
        attn_keep_ratio: Final kept fraction of attention connections per query, in (0, 1] (paper: 0.3; 1.0 turns the attention level off).
        prune_layers: 0-based pruning blocks, comma-separated; none: depth//4, depth//2, 3*depth//4 (blocks 3, 6, 9 of 12, the paper's; with bypass, those before the rejoin block).
        ratio_schedule: decay: the ratios start at 1 and fall to their targets (the paper's, from EViT); grow: they start at their targets and rise to 1, so the run ends at full tokens (random-LTD, Token Expansion).
        ratio_warmup: Fraction of the run before the ratios start to change (paper: 10 of 300 epochs = 1/30).
        ratio_decay_end: Fraction of the run where the change ends (paper: epoch 110 of 300 = 11/30).
        ratio_curve: Form of the change: cosine (the paper's), linear, or step (--ratio-stages equal jumps).
        ratio_stages: Jumps of a step curve (Token Expansion: 2, for three stages).
        dense_tail: Final fraction of the run trained dense: both ratios 1, every example, no connection mask (FLIP, InfoBatch); the run then also evaluates dense. 0: off (the paper).
        token_fate: What happens to pruned tokens: drop (the paper), fuse (EViT: one extra token, their score-weighted mean) or bypass (random-LTD: they skip the blocks up to --rejoin-layer and are put back there).
        token_score: How tokens are chosen: cls-attention (the paper: head-mean [CLS] attention) or random (random-LTD, PatchDropout).
        rejoin_layer: bypass: the block where the bypassed tokens come back; none: the last block.
        speedup: Pick --keep-ratio so that the token and attention levels cut the run's forward FLOPs per image by this factor (their FLOP model averaged over the schedule; the example level's saving is not counted); none: use --keep-ratio.
        eval_keep_ratio: Token keep ratio for evaluation; none: the schedule's final value.
        eval_attn_keep_ratio: Attention keep ratio for evaluation; none: the schedule's final value.
        selector: Example selector: forgetting (paper), random (ablation), loss (InfoBatch-style) or none.
        example_remove: Fraction of the training set removed (forgetting, random), or the drop probability of below-mean-loss examples (loss), in [0, 1) (paper: 0.2).
        example_swap: Fraction of the training set swapped at each selector update, in [0, 1) (paper: 0.05).
        example_update_every: Epochs between selector updates (an integer), or a fraction of the run in (0, 1) (paper: 30 of 300 = 0.1).
        example_max_updates: Maximum number of selector updates (paper: 5).
    """

    preset: Optional[PresetName] = None
    keep_ratio: float = 0.5
    attn_keep_ratio: float = 1.0
    prune_layers: BlockList = None
    ratio_schedule: ScheduleShape = "grow"
    ratio_warmup: Fraction = 0.0
    ratio_decay_end: Fraction = 0.8
    ratio_curve: ScheduleCurve = "linear"
    ratio_stages: int = 3
    dense_tail: float = 0.2
    token_fate: TokenFate = "bypass"
    token_score: TokenScore = "cls-attention"
    rejoin_layer: OptionalInt = None
    speedup: OptionalFloat = None
    eval_keep_ratio: OptionalFloat = None
    eval_attn_keep_ratio: OptionalFloat = None
    selector: SelectorName = "forgetting"
    example_remove: float = 0.2
    example_swap: float = 0.05
    example_update_every: UpdateEvery = 0.1
    example_max_updates: int = 5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise the tri-level fields in place (subclasses extend it).

        Raises:
            ValueError: Naming the first invalid option.
        """
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
        self.keep_ratio = check_float("keep_ratio", self.keep_ratio, 0.0, 1.0, low_open=True)
        self.attn_keep_ratio = check_float("attn_keep_ratio", self.attn_keep_ratio, 0.0, 1.0, low_open=True)
        self.prune_layers = _check_prune_layers(self.prune_layers)
        self.ratio_warmup = check_float("ratio_warmup", self.ratio_warmup, 0.0, 1.0, high_open=True)
        self.ratio_decay_end = check_float("ratio_decay_end", self.ratio_decay_end, 0.0, 1.0)
        if self.ratio_decay_end < self.ratio_warmup:
            raise ValueError(
                f"ratio-decay-end ({self.ratio_decay_end:g}) must be >= ratio-warmup ({self.ratio_warmup:g})"
            )
        check_choice("ratio_schedule", self.ratio_schedule, get_args(ScheduleShape))
        check_choice("ratio_curve", self.ratio_curve, get_args(ScheduleCurve))
        check_int("ratio_stages", self.ratio_stages, 1)
        self.dense_tail = check_float("dense_tail", self.dense_tail, 0.0, 1.0, high_open=True)
        check_choice("token_fate", self.token_fate, get_args(TokenFate))
        check_choice("token_score", self.token_score, get_args(TokenScore))
        check_int("rejoin_layer", self.rejoin_layer, 0, optional=True)
        self.speedup = check_float("speedup", self.speedup, 1.0, float("inf"), low_open=True, high_open=True,
                                   optional=True)
        if self.rejoin_layer is not None and self.token_fate != "bypass":
            raise ValueError(f"rejoin-layer is for --token-fate bypass only (token-fate is {self.token_fate!r})")
        if self.rejoin_layer is not None and self.prune_layers is not None and self.rejoin_layer <= max(self.prune_layers):
            raise ValueError(f"rejoin-layer ({self.rejoin_layer}) must come after the last pruning block "
                             f"({max(self.prune_layers)})")
        for name in ("eval_keep_ratio", "eval_attn_keep_ratio"):
            setattr(self, name, check_float(name, getattr(self, name), 0.0, 1.0, low_open=True, optional=True))
        check_choice("selector", self.selector, ALLOWED_SELECTORS)
        self.example_remove = check_float("example_remove", self.example_remove, 0.0, 1.0, high_open=True)
        self.example_swap = check_float("example_swap", self.example_swap, 0.0, 1.0, high_open=True)
        if self.selector in ("forgetting", "random") and self.example_swap > self.example_remove:
            raise ValueError(
                f"example-swap ({self.example_swap:g}) must be <= example-remove ({self.example_remove:g}): "
                f"the swapped examples come back from the removed pool"
            )
        self.example_update_every = _check_update_every(self.example_update_every)
        check_int("example_max_updates", self.example_max_updates, 0)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TriLevelConfig":
        """A config with the settings of preset ``name`` (:data:`PRESETS`), then ``overrides``.

        Raises:
            ValueError: An unknown preset or an invalid override.
        """
        return cls(**{**preset_settings(name), "preset": name, **overrides})

    def trilevel_settings(self) -> Dict[str, Any]:
        """The tri-level fields only, as plain values (a :class:`TriLevelConfig` accepts them)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(TriLevelConfig)}

    def schedule(self, target: float):
        """The :class:`~trilevel.schedules.KeepRatioSchedule` of these settings ending (or starting) at ``target``."""
        from .schedules import KeepRatioSchedule

        return KeepRatioSchedule(target, self.ratio_warmup, self.ratio_decay_end, self.ratio_schedule,
                                 self.ratio_curve, self.ratio_stages, self.dense_tail)

    def eval_ratios(self) -> Tuple[float, float]:
        """``(keep_ratio, attn_keep_ratio)`` for evaluation: the explicit ones, else the schedules' final values."""
        kr, akr = self.eval_keep_ratio, self.eval_attn_keep_ratio
        if kr is None:
            kr = self.schedule(self.keep_ratio)(1.0)
        if akr is None:
            akr = self.schedule(self.attn_keep_ratio)(1.0)
        return float(kr), float(akr)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_prune_layers(value: Any) -> Optional[list]:
    """None/``"none"``/``"default"`` -> None; ``"3,6,9"`` or ``[3, 6, 9]`` -> ``[3, 6, 9]``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = parse_block_list(value)
        except ValueError:
            raise ValueError(
                f"prune-layers must be a comma-separated list of block indices (e.g. 3,6,9) or 'none', got {value!r}"
            ) from None
        if value is None:
            return None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("prune-layers must name at least one block (or 'none' for the default blocks)")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"prune-layers entries must be block indices >= 0, got {v!r} in {list(value)!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"prune-layers has duplicate indices: {list(value)!r}")
        return sorted(int(v) for v in value)
    raise ValueError(f"prune-layers must be a list of block indices or 'none', got {value!r}")


def _check_update_every(value: Any) -> Any:
    """An int >= 1 (epochs) or a float in (0, 1) (fraction of the run); integral floats >= 1 -> int."""
    message = (f"example-update-every must be a number of epochs (int >= 1) or a fraction of the run in (0, 1), "
               f"got {value!r}")
    if isinstance(value, str):
        try:
            value = parse_update_every(value)
        except ValueError:
            raise ValueError(message) from None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    if isinstance(value, float) and value >= 1.0 and value.is_integer():
        return int(value)
    raise ValueError(message)


def patch_model(model: nn.Module, config: TriLevelConfig) -> nn.Module:
    """:func:`trilevel.patch_vit` (or :func:`trilevel.models.patch_eva` for EVA-02) with ``config``'s settings.

    The model is patched in place with the final keep ratios.

    Raises:
        TypeError: For a model of another family (a Swin is named: it has its own patch).
        ValueError: As :func:`trilevel.patch_vit`.
    """
    from .models import is_eva, is_swin, patch_eva
    from .vit import patch_vit, unwrap_model

    base = unwrap_model(model)
    if is_swin(base):
        raise TypeError(
            "a timm SwinTransformer is patched with trilevel.models.patch_swin (window pruning, its own "
            "schedule calls: set_swin_keep_ratios); TriLevel and trilevel train drive VisionTransformer and Eva"
        )
    patch = patch_eva if is_eva(base) else patch_vit
    return patch(model, prune_layers=config.prune_layers, keep_ratio=config.keep_ratio,
                 attn_keep_ratio=config.attn_keep_ratio, token_fate=config.token_fate,
                 token_score=config.token_score, rejoin_layer=config.rejoin_layer)


def schedule_flops(model: nn.Module, config: TriLevelConfig, keep_ratio: float, points: int = 1000) -> float:
    """Forward FLOPs per image of ``model`` averaged over a run of ``config`` with target ``keep_ratio``.

    The mean over ``points`` evenly spaced progress values (midpoints) of
    :func:`trilevel.forward_flops` at the scheduled token and attention keep ratios.
    """
    from .flops import forward_flops

    token, attn = config.schedule(keep_ratio), config.schedule(config.attn_keep_ratio)
    cache: Dict[Tuple[float, float], float] = {}
    total = 0.0
    for i in range(points):
        p = (i + 0.5) / points
        key = (token(p), attn(p))
        if key not in cache:
            cache[key] = forward_flops(model, key[0], attn_keep_ratio=key[1])
        total += cache[key]
    return total / points


def resolve_speedup(model: nn.Module, config: TriLevelConfig) -> TriLevelConfig:
    """``config`` with ``keep_ratio`` chosen so its schedules cut the mean forward FLOPs by ``speedup``.

    Bisection on the keep ratio (the FLOPs grow with it); the model must be patched with the
    config's blocks and fate. A config without ``speedup`` is returned as it is.

    Raises:
        ValueError: If no keep ratio in (0, 1] reaches the speedup (the most these settings give
            is named).
    """
    if config.speedup is None:
        return config
    from .flops import forward_flops

    dense = forward_flops(model, 1.0, attn_keep_ratio=1.0)
    goal = dense / config.speedup
    lo, hi = 1e-3, 1.0
    if schedule_flops(model, config, lo) > goal:
        most = dense / schedule_flops(model, config, lo)
        raise ValueError(
            f"speedup {config.speedup:g} is out of reach with these settings (their schedule, blocks and "
            f"fate give at most {most:.2f}x); lower --speedup, or prune earlier or for longer"
        )
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if schedule_flops(model, config, mid) <= goal:
            lo = mid
        else:
            hi = mid
    return dataclasses.replace(config, keep_ratio=math.floor(lo * 1e4) / 1e4)  # never above the goal


def build_selector(config: TriLevelConfig, num_examples: int, epochs: int, seed: int):
    """The example selector of ``config`` for a training set of ``num_examples`` (None for ``selector="none"``).

    Args:
        config: The tri-level settings (``selector``, ``example_*``).
        num_examples: Training-set size.
        epochs: Epochs of the run (fractions of the run are resolved against it).
        seed: Seed of the selector's own generator (the same on every rank).

    Returns:
        A :class:`~trilevel.example_selection.ForgettingSelector`,
        :class:`~trilevel.example_selection.RandomSelector` or
        :class:`~trilevel.example_selection.LossSelector`, or None.

    Raises:
        ValueError: As the selector's constructor (e.g. a removal that leaves nothing).
    """
    from .example_selection import ForgettingSelector, LossSelector, RandomSelector

    if config.selector == "none":
        return None
    if config.selector == "loss":
        return LossSelector(num_examples, prune_ratio=config.example_remove, num_epochs=epochs, seed=seed)
    cls = ForgettingSelector if config.selector == "forgetting" else RandomSelector
    return cls(
        num_examples,
        initial_remove_fraction=config.example_remove,
        swap_fraction=config.example_swap,
        update_every=config.example_update_every,
        max_updates=config.example_max_updates,
        seed=seed,
        num_epochs=epochs,
    )


class TriLevel:
    """Tri-level data reduction for one training run: patch, schedules, example selector, sampler.

    Construction patches ``model`` in place (:func:`trilevel.patch_vit`, with the final keep
    ratios) and, unless ``selector="none"``, builds the example selector for ``num_examples``
    examples and a DDP-aware :class:`~trilevel.example_selection.ActiveSubsetSampler` over its
    active set. A training loop then calls::

        tl.on_epoch_start(epoch)                          # applies a due selector update
        tl.on_step(progress)                              # keep ratios for this step
        weights = tl.after_forward(indices, logits, targets[, per_example_loss])

    Args:
        model: A timm ``VisionTransformer`` (DDP-wrapped is fine), patched in place.
        num_examples: Training-set size; required unless ``selector="none"``.
        epochs: Epochs of the run (the selector's fractions of the run are resolved against it).
        config: Settings; None uses :class:`TriLevelConfig` defaults (the ``fast`` preset's;
            ``preset="paper"`` gives the paper's).
        seed: Seed of the selector and of the sampler's per-epoch order; the same on every rank.
        num_replicas: Ranks sharing the data; None: the ``torch.distributed`` world size, else 1.
        rank: This rank; None: the distributed rank, else 0.
        **settings: Fields of :class:`TriLevelConfig` overriding ``config``.

    Attributes:
        config (TriLevelConfig): The settings.
        model (nn.Module): The patched model.
        selector: The example selector, or None.
        sampler: The sampler to give the training ``DataLoader``, or None without a selector
            (then use any sampler, e.g. ``DistributedSampler``).
        keep_ratio (float): Token keep ratio set by the last :meth:`on_step` (1.0 before).
        attn_keep_ratio (float): Attention keep ratio set by the last :meth:`on_step` (1.0 before).

    Raises:
        TypeError: If ``model`` is not a supported timm Vision Transformer.
        ValueError: For an invalid setting (named), or a selector without ``num_examples``.

    Source: Kong et al., AAAI 2023 (all three levels); the event shape follows composer's
    ``Algorithm``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_examples: Optional[int] = None,
        *,
        epochs: int,
        config: Optional[TriLevelConfig] = None,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        **settings: Any,
    ) -> None:
        from .example_selection import ActiveSubsetSampler

        base = config if config is not None else TriLevelConfig()
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TriLevelConfig)})
        if unknown:
            raise ValueError(f"unknown TriLevel settings {unknown}; allowed: the fields of TriLevelConfig")
        merged = base.trilevel_settings() if "preset" not in settings else preset_settings(settings["preset"])
        self.config = TriLevelConfig(**{**merged, **settings})
        self.epochs = check_int("epochs", epochs, 1)
        self.model = patch_model(model, self.config)
        self.config = resolve_speedup(self.model, self.config)
        cfg = self.config
        self.token_schedule = cfg.schedule(cfg.keep_ratio)
        self.attn_schedule = cfg.schedule(cfg.attn_keep_ratio)
        self.selector = None
        self.sampler = None
        if cfg.selector != "none":
            if num_examples is None:
                raise ValueError(
                    f"num_examples (the training-set size) is required for selector={cfg.selector!r}; "
                    f"pass selector='none' to turn the example level off"
                )
            self.selector = build_selector(cfg, num_examples, self.epochs, seed)
            self.sampler = ActiveSubsetSampler(
                self.selector, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
            )
        self.keep_ratio = 1.0
        self.attn_keep_ratio = 1.0

    # ------------------------------------------------------------------------------ events
    def on_epoch_start(self, epoch: int, progress: Optional[float] = None) -> None:
        """Start ``epoch`` (0-based): apply a due selector update and fix the epoch's data order.

        Args:
            epoch: The epoch about to start.
            progress: Fraction of the run done when it starts; None: ``epoch / epochs``. In the
                dense tail (``progress >= 1 - dense_tail``) the sampler draws every example.

        Raises:
            ValueError: If ``epoch`` is not an integer >= 0.
        """
        if progress is None:
            progress = epoch / self.epochs
        tail = self.config.dense_tail > 0.0 and progress >= 1.0 - self.config.dense_tail
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, all_examples=tail)
        elif self.selector is not None:
            self.selector.set_epoch(epoch)

    def on_step(self, progress: float) -> Tuple[float, float]:
        """Set the scheduled keep ratios for the step at ``progress`` (fraction of the run done).

        Args:
            progress: Fraction of all training iterations done before this step, in [0, 1]
                (:func:`trilevel.run_progress`).

        Returns:
            ``(keep_ratio, attn_keep_ratio)`` now in effect.

        Raises:
            ValueError: If ``progress`` is not a finite number.
        """
        from .vit import set_keep_ratios

        self.keep_ratio = self.token_schedule(progress)
        self.attn_keep_ratio = self.attn_schedule(progress)
        set_keep_ratios(self.model, self.keep_ratio, self.attn_keep_ratio)
        return self.keep_ratio, self.attn_keep_ratio

    @property
    def reweights_loss(self) -> bool:
        """Whether :meth:`after_forward` needs the per-example loss and returns loss weights (InfoBatch)."""
        return bool(getattr(self.selector, "needs_loss", False))

    def after_forward(
        self,
        indices: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: Optional[torch.Tensor] = None,
    ) -> Optional[torch.Tensor]:
        """Record a batch's outcomes for the example level; return per-example loss weights.

        Call it for every batch that updates the model (not for a skipped, non-finite one); under
        DDP on every rank (the outcomes are all-gathered).

        Args:
            indices: ``(B,)`` example indices (from :class:`~trilevel.example_selection.IndexedDataset`).
            logits: ``(B, K)`` model outputs (detached or not).
            targets: ``(B,)`` class indices or ``(B, K)`` soft (mixup/cutmix) targets.
            loss: ``(B,)`` per-example loss (``reduction="none"``); required when
                :attr:`reweights_loss`, else ignored.

        Returns:
            ``(B,)`` weights on ``loss``'s device and dtype when :attr:`reweights_loss` (back-propagate
            ``(loss * weights).mean()``), else None (use the ordinary mean loss).

        Raises:
            ValueError: Shape or index errors (see the selector's ``record``), or a missing
                ``loss`` when it is required.
        """
        if self.selector is None:
            return None
        if not self.reweights_loss:
            self.selector.record(indices, logits, targets)
            return None
        if loss is None:
            raise ValueError("after_forward needs loss, the (B,) per-example loss, for the loss-based selector")
        self.selector.record(indices, logits, targets, loss=loss)
        local = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
        w = self.selector.weights[local.detach().to("cpu", torch.int64)]
        return w.to(device=loss.device, dtype=loss.dtype)

    # ------------------------------------------------------------------------------ queries
    @property
    def num_active(self) -> Optional[int]:
        """Size of the current active set (None without a selector)."""
        return None if self.selector is None else self.selector.num_active

    def eval_ratios(self) -> Tuple[float, float]:
        """``(keep_ratio, attn_keep_ratio)`` to evaluate with (see :meth:`TriLevelConfig.eval_ratios`)."""
        return self.config.eval_ratios()

    def digest(self) -> Optional[str]:
        """The selector's state digest (equal across ranks and resumes), or None without a selector."""
        return None if self.selector is None else self.selector.digest()

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly: settings, selector and sampler state.

        Loadable with ``torch.load(weights_only=True)`` (tensors and plain values only).
        """
        return {
            "config": self.config.trilevel_settings(),
            "epochs": self.epochs,
            "selector": None if self.selector is None else self.selector.state_dict(),
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output of an algorithm with the same settings.

        Raises:
            ValueError: If the settings differ (the first differing option is named) or the
                selector state does not fit.
        """
        if not isinstance(state, Mapping) or "config" not in state:
            raise ValueError("state must be a dict from TriLevel.state_dict()")
        mine = self.config.trilevel_settings()
        for key, value in mine.items():
            if state["config"].get(key) != value:
                raise ValueError(
                    f"TriLevel state was saved with {key}={state['config'].get(key)!r}, this one has {value!r}"
                )
        if state.get("epochs") != self.epochs:
            raise ValueError(f"TriLevel state was saved for {state.get('epochs')!r} epochs, this run has {self.epochs}")
        if self.selector is not None:
            self.selector.load_state_dict(state["selector"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
