"""The method's settings, resolved once: :class:`TriLevelConfig` and :func:`resolve_config`.

:class:`TriLevelConfig` holds the settings of the three levels (presets applied on construction);
:class:`trilevel.training.TrainConfig` extends it with the training recipe, so every option is
described once. :func:`resolve_config` turns a config and a model into a frozen
:class:`ResolvedTriLevel` -- the patch settings with the family's defaults filled in, ``--speedup``
turned into a keep ratio, the schedules and the evaluation ratios -- which the trainer,
:class:`trilevel.TriLevel`, ``load_run`` and the Lightning callback share, so nothing is resolved
twice or differently.

Source: Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient
Vision Transformer Training", AAAI 2023 (arXiv 2211.10801); the example level's forgetting events
follow Toneva et al., ICLR 2019; the loss-based selector follows InfoBatch (Qin et al., ICLR 2024).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple, get_args

import torch.nn as nn

from .models import PatchSettings, family_of, find_family, forward_flops, unwrap_model
from .options import (
    BlockList, Fraction, OptionalFloat, OptionalInt, UpdateEvery, check_block_indices, check_choice, check_float,
    check_int, check_ratio, flag, parse_update_every,
)
from .presets import DEFAULTS, PRESETS, layered_settings, preset_settings
from .schedules import KeepRatioSchedule
from .token_pruning import TOKEN_FATES, TOKEN_SCORES

__all__ = ["ALLOWED_SELECTORS", "PRESETS", "SelectorName", "TriLevelConfig", "ResolvedTriLevel", "build_selector",
           "has_patch_dropout_slot", "layered_settings", "preset_settings", "resolve_config", "resolve_patch_drop",
           "resolve_speedup", "schedule_flops", "track_given"]

SelectorName = Literal["forgetting", "random", "loss", "none"]
ScheduleShape = Literal["decay", "grow"]
ScheduleCurve = Literal["cosine", "linear", "step"]
ALLOWED_SELECTORS: Tuple[str, ...] = get_args(SelectorName)
"""Example selectors: the paper's forgetting events, random swaps, InfoBatch-style loss, or none."""

PresetName = Literal["paper", "fast", "fast-patchdrop"]


def track_given(cls):
    """Class decorator for a dataclass: record which fields its constructor was given (``_given``).

    A config built with ``preset=...`` then takes the preset's value for every field it was not
    given, whatever the field's default (``__post_init__`` passes the given fields to
    :func:`~trilevel.presets.layered_settings`). Apply it after ``@dataclass`` on every config class
    (a subclass's dataclass ``__init__`` is its own).
    """
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_given", frozenset(names[:len(args)]) | frozenset(kwargs))
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@track_given
@dataclass(frozen=True)
class TriLevelConfig:
    """Settings of the three levels (the method), validated on construction.

    Every invalid value raises ``ValueError`` naming the option (as its flag), the value and what
    is allowed. Frozen: a changed setting is a new config (``dataclasses.replace``). The command
    line of ``trilevel train`` is generated from these fields. The defaults are read from the
    preset table (:data:`~trilevel.presets.DEFAULTS`): the ``fast-patchdrop`` preset's, the winner
    of the study in three regimes (docs/benchmarks.md, "Study in users' regimes");
    ``TriLevelConfig(preset="paper")`` (``--preset paper``) takes Kong et al.'s exact settings for
    every option not given explicitly (:data:`PRESETS`, applied by
    :func:`~trilevel.presets.layered_settings`).

    Attributes:
        preset: Named settings the others start from: paper (Kong et al.'s exact settings), fast (the winner of our first time-to-accuracy study) or fast-patchdrop (fast on PatchDropout 0.3, the best in the long and cluttered regimes); none: the defaults below, which are the fast-patchdrop preset's (--preset paper for the paper's). Options given explicitly override the preset.
        keep_ratio: Token keep ratio per pruning block at the schedule's start (grow) or end (decay), in (0, 1] (paper: 0.7).
        attn_keep_ratio: Final kept fraction of attention connections per query, in (0, 1] (paper: 0.3; 1.0 turns the attention level off).
        prune_layers: 0-based pruning blocks, comma-separated; none: depth//4, depth//2, 3*depth//4 (blocks 3, 6, 9 of 12, the paper's; with bypass, those before the rejoin block).
        ratio_schedule: decay: the ratios start at 1 and fall to their targets (the paper's, from EViT); grow: they start at their targets and rise to 1, so the run ends at full tokens (random-LTD, Token Expansion).
        ratio_warmup: Fraction of the run before the ratios start to change (paper: 10 of 300 epochs = 1/30).
        ratio_decay_end: Fraction of the run where the change ends (paper: epoch 110 of 300 = 11/30).
        ratio_curve: Form of the change: cosine (the paper's), linear, or step (--ratio-stages equal jumps).
        ratio_stages: Jumps of a step curve (Token Expansion: 2, for three stages).
        ratio_buckets: Round the scheduled ratios to this many evenly spaced levels, so a run uses at most that many token counts (the FLOP model, budget planning and torch.compile key on them); 0: continuous (the paper's curve, exact).
        dense_tail: Final fraction of the run trained dense: both ratios 1, every example, no connection mask (FLIP, InfoBatch); the run then also evaluates dense. 0: off (the paper).
        token_fate: What happens to pruned tokens (a registered fate): drop (the paper), fuse (EViT: one extra token, their score-weighted mean) or bypass (random-LTD: they skip the blocks up to --rejoin-layer and are put back there).
        token_score: How tokens are chosen (a registered score): cls-attention (the paper: head-mean [CLS] attention) or random (random-LTD, PatchDropout).
        rejoin_layer: bypass: the block where the bypassed tokens come back; none: the last block.
        patch_mode: The model family's variant (Swin: window, whole windows skip a block, or mask, the authors' key masking); none: the family's default.
        speedup: Pick --keep-ratio so that the token and attention levels cut the run's forward FLOPs per image by this factor (their FLOP model averaged over the schedule; the example level's saving is not counted); none: use --keep-ratio.
        eval_keep_ratio: Token keep ratio for evaluation; none: the schedule's final value.
        eval_attn_keep_ratio: Attention keep ratio for evaluation; none: the schedule's final value.
        selector: Example selector: forgetting (paper), random (ablation), loss (InfoBatch-style) or none.
        example_remove: Fraction of the training set removed (forgetting, random), or the drop probability of below-mean-loss examples (loss), in [0, 1) (paper: 0.2).
        example_swap: Fraction of the training set swapped at each selector update, in [0, 1) (paper: 0.05).
        example_update_every: Epochs between selector updates (an integer), or a fraction of the run in (0, 1) (paper: 30 of 300 = 0.1).
        example_max_updates: Maximum number of selector updates (paper: 5).
        patch_drop: Fraction of patch tokens dropped at random at the input while training (timm PatchDropout, Liu et al., WACV 2023; installed on the model), in [0, 1); 0: off; none (the default): 0.3 in a tri-level run of a model with timm's PatchDropout slot (ViT/DeiT, EVA-02), else 0 (Swin, and --dense runs).
    """

    preset: Optional[PresetName] = None
    keep_ratio: float = DEFAULTS["keep_ratio"]
    attn_keep_ratio: float = DEFAULTS["attn_keep_ratio"]
    prune_layers: BlockList = DEFAULTS["prune_layers"]
    ratio_schedule: ScheduleShape = DEFAULTS["ratio_schedule"]
    ratio_warmup: Fraction = DEFAULTS["ratio_warmup"]
    ratio_decay_end: Fraction = DEFAULTS["ratio_decay_end"]
    ratio_curve: ScheduleCurve = DEFAULTS["ratio_curve"]
    ratio_stages: int = 3
    ratio_buckets: int = DEFAULTS["ratio_buckets"]
    dense_tail: float = DEFAULTS["dense_tail"]
    token_fate: str = DEFAULTS["token_fate"]
    token_score: str = DEFAULTS["token_score"]
    rejoin_layer: OptionalInt = DEFAULTS["rejoin_layer"]
    patch_mode: Optional[str] = None
    speedup: OptionalFloat = None
    eval_keep_ratio: OptionalFloat = DEFAULTS["eval_keep_ratio"]
    eval_attn_keep_ratio: OptionalFloat = DEFAULTS["eval_attn_keep_ratio"]
    selector: SelectorName = DEFAULTS["selector"]
    example_remove: float = DEFAULTS["example_remove"]
    example_swap: float = DEFAULTS["example_swap"]
    example_update_every: UpdateEvery = DEFAULTS["example_update_every"]
    example_max_updates: int = DEFAULTS["example_max_updates"]
    patch_drop: OptionalFloat = DEFAULTS["patch_drop"]

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in getattr(self, "_given", ())}
        for key, value in layered_settings(given).items():  # a named preset's values under those given
            if key not in given:
                self._set(**{key: copy.copy(value)})
        self.validate()

    def _set(self, **values: Any) -> None:
        """Set fields of this frozen config while it is built (validation normalises values)."""
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def validate(self) -> None:
        """Check and normalise the tri-level fields (subclasses extend it); run once, on construction.

        Raises:
            ValueError: Naming the first invalid option.
        """
        if self.preset is not None:
            check_choice("preset", self.preset, tuple(PRESETS))
        self._set(keep_ratio=check_ratio("keep-ratio", self.keep_ratio),
                  attn_keep_ratio=check_ratio("attn-keep-ratio", self.attn_keep_ratio))
        layers = check_block_indices("prune-layers", self.prune_layers)
        self._set(prune_layers=None if layers is None else list(layers))
        self._set(ratio_warmup=check_float("ratio_warmup", self.ratio_warmup, 0.0, 1.0, high_open=True),
                  ratio_decay_end=check_float("ratio_decay_end", self.ratio_decay_end, 0.0, 1.0))
        if self.ratio_decay_end < self.ratio_warmup:
            raise ValueError(
                f"ratio-decay-end ({self.ratio_decay_end:g}) must be >= ratio-warmup ({self.ratio_warmup:g})"
            )
        check_choice("ratio_schedule", self.ratio_schedule, get_args(ScheduleShape))
        check_choice("ratio_curve", self.ratio_curve, get_args(ScheduleCurve))
        check_int("ratio_stages", self.ratio_stages, 1)
        check_int("ratio_buckets", self.ratio_buckets, 0)
        if self.ratio_buckets == 1:
            raise ValueError("ratio-buckets must be 0 (continuous) or >= 2, got 1")
        self._set(dense_tail=check_float("dense_tail", self.dense_tail, 0.0, 1.0, high_open=True))
        check_choice("token_fate", self.token_fate, tuple(TOKEN_FATES))
        check_choice("token_score", self.token_score, tuple(TOKEN_SCORES))
        if self.patch_mode is not None and not (isinstance(self.patch_mode, str) and self.patch_mode):
            raise ValueError(f"patch-mode must be a family's mode name (e.g. window or mask for Swin) or none, "
                             f"got {self.patch_mode!r}")
        check_int("rejoin_layer", self.rejoin_layer, 0, optional=True)
        self._set(speedup=check_float("speedup", self.speedup, 1.0, float("inf"), low_open=True, high_open=True,
                                      optional=True))
        if self.rejoin_layer is not None and not TOKEN_FATES[self.token_fate].rejoins:
            rejoining = ", ".join(name for name, fate in TOKEN_FATES.items() if fate.rejoins)
            raise ValueError(f"rejoin-layer is for a token fate that rejoins ({rejoining}); "
                             f"token-fate is {self.token_fate!r}")
        if self.rejoin_layer is not None and self.prune_layers is not None and self.rejoin_layer <= max(self.prune_layers):
            raise ValueError(f"rejoin-layer ({self.rejoin_layer}) must come after the last pruning block "
                             f"({max(self.prune_layers)})")
        for name in ("eval_keep_ratio", "eval_attn_keep_ratio"):
            self._set(**{name: check_ratio(flag(name), getattr(self, name), optional=True)})
        check_choice("selector", self.selector, ALLOWED_SELECTORS)
        self._set(example_remove=check_float("example_remove", self.example_remove, 0.0, 1.0, high_open=True),
                  example_swap=check_float("example_swap", self.example_swap, 0.0, 1.0, high_open=True))
        if self.selector in ("forgetting", "random") and self.example_swap > self.example_remove:
            raise ValueError(
                f"example-swap ({self.example_swap:g}) must be <= example-remove ({self.example_remove:g}): "
                f"the swapped examples come back from the removed pool"
            )
        self._set(example_update_every=_check_update_every(self.example_update_every))
        check_int("example_max_updates", self.example_max_updates, 0)
        self._set(patch_drop=check_float("patch_drop", self.patch_drop, 0.0, 1.0, high_open=True, optional=True))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TriLevelConfig":
        """A config with the settings of preset ``name`` (:data:`PRESETS`), then ``overrides``.

        Raises:
            ValueError: An unknown preset or an invalid override.
        """
        return cls(preset=name, **overrides)

    def trilevel_settings(self) -> Dict[str, Any]:
        """The tri-level fields only, as plain values (a :class:`TriLevelConfig` accepts them)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(TriLevelConfig)}

    def schedule(self, target: float):
        """The :class:`~trilevel.schedules.KeepRatioSchedule` of these settings ending (or starting) at ``target``."""
        from .schedules import KeepRatioSchedule

        return KeepRatioSchedule(target, self.ratio_warmup, self.ratio_decay_end, self.ratio_schedule,
                                 self.ratio_curve, self.ratio_stages, self.dense_tail, self.ratio_buckets)

    def patch_settings(self) -> PatchSettings:
        """How these settings patch a model (before the family fills in its defaults)."""
        layers = None if self.prune_layers is None else tuple(self.prune_layers)
        return PatchSettings(prune_layers=layers, keep_ratio=self.keep_ratio, attn_keep_ratio=self.attn_keep_ratio,
                             token_fate=self.token_fate, token_score=self.token_score,
                             rejoin_layer=self.rejoin_layer, mode=self.patch_mode)

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



@dataclass(frozen=True)
class ResolvedTriLevel:
    """A :class:`TriLevelConfig` resolved for one model: what every part of a run reads.

    Attributes:
        config: The settings (a private copy; ``keep_ratio`` is the one ``speedup`` picked).
        family: The model family's name (:mod:`trilevel.models`).
        patch: The patch settings with the family's defaults filled in (pruning blocks, rejoin
            block, mode): what the model is patched with.
        token_schedule: Token keep ratio as a function of run progress.
        attn_schedule: Attention keep ratio as a function of run progress.
        eval_ratios: ``(keep_ratio, attn_keep_ratio)`` for evaluation.
    """

    config: TriLevelConfig
    family: str
    patch: PatchSettings
    token_schedule: KeepRatioSchedule
    attn_schedule: KeepRatioSchedule
    eval_ratios: Tuple[float, float]


def resolve_config(config: TriLevelConfig, model: nn.Module) -> ResolvedTriLevel:
    """Resolve ``config`` for ``model`` once (nothing is patched).

    Args:
        config: The settings (a :class:`TriLevelConfig` or a subclass such as ``TrainConfig``).
        model: The model the run trains (stock or patched, wrappers allowed).

    Returns:
        The :class:`ResolvedTriLevel`.

    Raises:
        TypeError: For a model of no registered family, or a variant its family cannot patch.
        ValueError: A setting the family does not support, or a ``speedup`` out of reach.
    """
    family = family_of(model)
    base = unwrap_model(model)
    family.check(base)
    settings = family.resolve(base, config.patch_settings())
    config = dataclasses.replace(config, patch_drop=resolve_patch_drop(base, config.patch_drop))
    if config.speedup is not None:
        config = resolve_speedup(model, config, settings)
        settings = dataclasses.replace(settings, keep_ratio=config.keep_ratio)
    return ResolvedTriLevel(config=config, family=family.name, patch=settings,
                            token_schedule=config.schedule(config.keep_ratio),
                            attn_schedule=config.schedule(config.attn_keep_ratio), eval_ratios=config.eval_ratios())


def has_patch_dropout_slot(model: nn.Module) -> bool:
    """Whether ``model``'s family has timm's PatchDropout slot (ViT/DeiT, EVA-02; not Swin, not an unknown model)."""
    family = find_family(unwrap_model(model))
    return family is not None and family.patch_dropout_class() is not None


def resolve_patch_drop(model: nn.Module, patch_drop: Optional[float]) -> float:
    """The PatchDropout fraction a tri-level run of ``model`` uses (Liu et al., "PatchDropout", WACV 2023).

    The default preset stacks it under the ``fast`` schedules (docs/benchmarks.md, section 7);
    the paper's method (Kong et al., AAAI 2023) has no input-level dropping (``--preset paper``: 0).

    Args:
        model: The (unwrapped) model.
        patch_drop: The setting: None (the default) or a fraction in [0, 1).

    Returns:
        ``patch_drop`` as given; for None, :data:`~trilevel.presets.AUTO_PATCH_DROP` (0.3) where
        the model has timm's PatchDropout slot, else 0 (Swin).

    Raises:
        ValueError: A fraction > 0 asked explicitly of a model without the slot.
    """
    from .presets import AUTO_PATCH_DROP

    if patch_drop is None:
        return AUTO_PATCH_DROP if has_patch_dropout_slot(model) else 0.0
    if patch_drop > 0 and not has_patch_dropout_slot(model):
        raise ValueError(f"patch-drop {patch_drop:g}: {type(model).__name__} has no PatchDropout slot (ViT/DeiT "
                         f"and EVA-02 have one); use --patch-drop 0, or leave it unset (none: off for this model)")
    return float(patch_drop)


def schedule_flops(model: nn.Module, config: TriLevelConfig, keep_ratio: float,
                   settings: Optional[PatchSettings] = None, points: int = 1000) -> float:
    """Forward FLOPs per image of ``model`` averaged over a run of ``config`` with target ``keep_ratio``.

    The mean over ``points`` evenly spaced progress values (midpoints) of
    :func:`trilevel.forward_flops` at the scheduled token and attention keep ratios.

    Args:
        model: The model (patched or not).
        config: The settings (schedules).
        keep_ratio: The token schedule's target.
        settings: Patch settings to assume; None: the model's own.
        points: Progress values averaged over.
    """
    token, attn = config.schedule(keep_ratio), config.schedule(config.attn_keep_ratio)
    cache: Dict[Tuple[float, float], float] = {}
    total = 0.0
    for i in range(points):
        p = (i + 0.5) / points
        key = (token(p), attn(p))
        if key not in cache:
            cache[key] = forward_flops(model, key[0], attn_keep_ratio=key[1], settings=settings)
        total += cache[key]
    return total / points


def resolve_speedup(model: nn.Module, config: TriLevelConfig, settings: Optional[PatchSettings] = None):
    """``config`` with ``keep_ratio`` chosen so its schedules cut the mean forward FLOPs by ``speedup``.

    Bisection on the keep ratio (the FLOPs grow with it). A config without ``speedup`` is
    returned as it is.

    Args:
        model: The model.
        config: The settings.
        settings: Resolved patch settings to assume; None: the model's own (it must be patched).

    Raises:
        ValueError: If no keep ratio in (0, 1] reaches the speedup (the most these settings give
            is named).
    """
    if config.speedup is None:
        return config
    dense = forward_flops(model, 1.0, attn_keep_ratio=1.0, settings=settings)
    goal = dense / config.speedup
    lo, hi = 1e-3, 1.0
    if schedule_flops(model, config, lo, settings) > goal:
        most = dense / schedule_flops(model, config, lo, settings)
        raise ValueError(
            f"speedup {config.speedup:g} is out of reach with these settings (their schedule, blocks and "
            f"fate give at most {most:.2f}x); lower --speedup, or prune earlier or for longer"
        )
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if schedule_flops(model, config, mid, settings) <= goal:
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


