"""One registry of model families: how each timm family is patched, scheduled, counted and drawn.

A *family* (:class:`ModelFamily`) knows one kind of timm model: whether a model is of its kind,
how to patch it in place with the token and attention levels (and undo that), how to set the
keep ratios a schedule gives, its FLOPs per image at given ratios (the analytic model behind
budgets, ``--speedup`` and FLOPs to accuracy), what :func:`get_trilevel_info` reports and which
tokens survived each pruning stage (what ``trilevel visualize`` draws). ViT/DeiT
(:mod:`trilevel.models.vit`), EVA-02 (:mod:`trilevel.models.eva`) and Swin
(:mod:`trilevel.models.swin`) are its entries; a new family is one module with a subclass of
:class:`ModelFamily` and one :func:`register_family` call (docs/design.md, "How to add a family").

Everything else goes through the functions here: :func:`patch`, :func:`unpatch`,
:func:`set_keep_ratios`, :func:`get_keep_ratios`, :func:`is_patched`, :func:`get_trilevel_info`,
:func:`forward_flops`, :func:`family_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..options import check_block_indices, check_ratio
from ..presets import DEFAULT_PRESET, PATCH_KEYS, layered_settings, patch_defaults

_DEFAULTS = patch_defaults()  # the default preset's patch settings: PatchSettings' defaults

__all__ = [
    "PatchSettings", "ModelFamily", "register_family", "families", "family_of", "find_family", "unwrap_model",
    "patch", "unpatch", "is_patched", "set_keep_ratios", "get_keep_ratios", "get_trilevel_info", "forward_flops",
    "tokens_per_block", "describe_model", "timm_patch_size",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers.

    Args:
        model: A model, wrapped or not.

    Returns:
        The innermost wrapped module (``model`` itself when it is not wrapped).
    """
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class PatchSettings:
    """How a model is patched (the token and attention levels of Kong et al., AAAI 2023).

    Defaults are the default preset's patch settings (``fast-patchdrop``, whose patch settings are
    ``fast``'s; :data:`trilevel.presets.PRESETS`), as for :class:`trilevel.TriLevelConfig`.

    Attributes:
        prune_layers: 0-based pruning blocks; None: the family's default (ViT: ``depth//4,
            depth//2, 3*depth//4``, the paper's 3/6/9 of 12).
        keep_ratio: Kept fraction of patch tokens (Swin: of windows) per pruning block, in (0, 1]
            (Swin also takes one per stage, a tuple).
        attn_keep_ratio: Kept fraction of attention connections per query row, in (0, 1]; 1.0
            turns the attention level off.
        token_fate: A registered :class:`~trilevel.token_pruning.TokenFate` name.
        token_score: A registered :class:`~trilevel.token_pruning.TokenScore` name.
        rejoin_layer: ``bypass``: the block where bypassed tokens come back; None: the last.
        mode: A family's variant (Swin: ``window`` or ``mask``); None: the family's default.
    """

    prune_layers: Optional[Tuple[int, ...]] = _DEFAULTS["prune_layers"]
    keep_ratio: float = _DEFAULTS["keep_ratio"]
    attn_keep_ratio: float = _DEFAULTS["attn_keep_ratio"]
    token_fate: str = _DEFAULTS["token_fate"]
    token_score: str = _DEFAULTS["token_score"]
    rejoin_layer: Optional[int] = _DEFAULTS["rejoin_layer"]
    mode: Optional[str] = None

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides: Any) -> "PatchSettings":
        """The patch settings of ``preset`` with ``overrides`` (unknown names raise ``ValueError``)."""
        allowed = set(PATCH_KEYS) | {"mode"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ValueError(f"unknown patch settings {unknown}; allowed: {', '.join(sorted(allowed))}")
        values = {k: v for k, v in layered_settings(overrides, preset=preset).items() if k in allowed}
        layers = values.get("prune_layers")
        if layers is not None and not isinstance(layers, (str, bytes)):
            try:
                values["prune_layers"] = tuple(layers)
            except TypeError:
                pass  # the family names the bad value
        return cls(**values)


class ModelFamily:
    """One kind of timm model, as the tri-level method sees it (subclass and :func:`register_family`).

    Subclasses set :attr:`name` and implement the methods that raise ``NotImplementedError``;
    the others have defaults that fit a token-pruning ViT-like model.

    Attributes:
        name: Short name (``vit``, ``eva``, ``swin``), used in messages and summaries.
        supports_attention_level: Whether ``attn_keep_ratio < 1`` is implemented.
        token_fates: Fates this family implements (None: every registered one).
        token_scores: Scores this family implements (None: every registered one).
        modes: The family's variants (first: the default), for :attr:`PatchSettings.mode`.
        traces_tokens: Whether :meth:`info` is a :class:`~trilevel.models.vit.TriLevelInfo` whose
            ``kept_positions``, ``cls_scores`` and ``connection_masks`` cover every pruning block on
            the patch grid: what :func:`trilevel.viz.trace.trace_pruning` reads and ``visualize``
            draws as tokens and connections. False: ``visualize`` draws :meth:`survival_masks`.
    """

    name: str = ""
    supports_attention_level: bool = True
    token_fates: Optional[Tuple[str, ...]] = None
    token_scores: Optional[Tuple[str, ...]] = None
    modes: Tuple[str, ...] = ()
    traces_tokens: bool = False

    # -------------------------------------------------------------- what subclasses implement
    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` (unwrapped) is of this family."""
        raise NotImplementedError

    def patch(self, model: nn.Module, settings: PatchSettings) -> None:
        """Patch ``model`` (unwrapped) in place with resolved ``settings`` (:meth:`resolve`)."""
        raise NotImplementedError

    def unpatch(self, model: nn.Module) -> None:
        """Restore the stock classes of ``model`` (unwrapped), in place."""
        raise NotImplementedError

    def is_patched(self, model: nn.Module) -> bool:
        """Whether ``model`` (unwrapped) carries this family's patch."""
        raise NotImplementedError

    def set_keep_ratios(self, model: nn.Module, keep_ratio: Optional[float], attn_keep_ratio: Optional[float]) -> None:
        """Set the ratios of a patched model (None leaves one as it is)."""
        raise NotImplementedError

    def get_keep_ratios(self, model: nn.Module) -> Tuple[float, float]:
        """``(keep_ratio, attn_keep_ratio)`` of a patched model; ``(1.0, 1.0)`` for a stock one."""
        raise NotImplementedError

    def forward_flops(self, model: nn.Module, keep_ratio: Optional[float], attn_keep_ratio: Optional[float],
                      training: bool, settings: Optional[PatchSettings], img_size: Optional[int] = None) -> float:
        """FLOPs (multiply-add = 2) of one forward of one image at the given ratios.

        Args:
            model: The model (unwrapped), patched or not.
            keep_ratio, attn_keep_ratio: Ratios to assume; None: the model's own.
            training: Count a training forward (e.g. timm's PatchDropout active).
            settings: Resolved patch settings to assume; None: the model's own (dense if stock).
            img_size: Input side in pixels; None: the model's.
        """
        raise NotImplementedError

    def info(self, model: nn.Module) -> Any:
        """What the last forward pass of a patched model did (None before the first one)."""
        raise NotImplementedError

    def settings(self, model: nn.Module) -> Optional[PatchSettings]:
        """The resolved settings a patched model was patched with (None for a stock model).

        By default ``model.trilevel_state.settings``: a family keeps its runtime state in one object at
        ``model.trilevel_state`` (as ToMe's ``_tome_info``) with the settings as its ``settings``.
        """
        return model.trilevel_state.settings if self.is_patched(model) else None

    # -------------------------------------------------------------- defaults
    def check(self, model: nn.Module) -> None:
        """Raise ``TypeError`` naming what this family cannot patch in ``model`` (nothing by default)."""

    def default_prune_layers(self, model: nn.Module) -> Tuple[int, ...]:
        """The pruning blocks used when ``prune_layers`` is None."""
        return ()

    def patch_size(self, model: nn.Module) -> int:
        """The side in pixels of the model's square patches (input sides are multiples of it; the
        resolution curriculum steps by it). By default timm's ``patch_embed.patch_size``
        (:func:`timm_patch_size`)."""
        return timm_patch_size(model)

    def patch_dropout_class(self) -> Optional[type]:
        """The timm layer the family's constructor puts in ``model.patch_drop`` for ``patch_drop_rate``
        (called with ``(prob, num_prefix_tokens=...)``); None: the family has no such slot (PatchDropout,
        Liu et al., WACV 2023, is then off)."""
        return None

    def resolve(self, model: nn.Module, settings: PatchSettings) -> PatchSettings:
        """``settings`` checked against this family and ``model``, with the family's defaults filled in.

        Raises:
            ValueError: A setting the family does not support or a bad value (named).
        """
        from ..token_pruning import get_token_fate, get_token_score

        keep_ratio = check_ratio("keep_ratio", settings.keep_ratio)
        attn_keep_ratio = check_ratio("attn_keep_ratio", settings.attn_keep_ratio)
        get_token_fate(settings.token_fate)
        get_token_score(settings.token_score)
        for what, allowed, value in (("token_fate", self.token_fates, settings.token_fate),
                                     ("token_score", self.token_scores, settings.token_score)):
            if allowed is not None and value not in allowed:
                raise ValueError(f"{what} {value!r} is not implemented for {self.name} models; "
                                 f"allowed: {', '.join(allowed)}")
        if settings.attn_keep_ratio != 1.0 and not self.supports_attention_level:
            raise ValueError(f"attn_keep_ratio={settings.attn_keep_ratio!r}: the attention level is not "
                             f"implemented for {self.name} models; use attn_keep_ratio=1.0")
        mode = settings.mode
        if self.modes:
            mode = self.modes[0] if mode is None else mode
            if mode not in self.modes:
                raise ValueError(f"mode must be one of {', '.join(self.modes)} for {self.name} models; got {mode!r}")
        elif mode is not None:
            raise ValueError(f"{self.name} models have no mode (got mode={mode!r})")
        return replace(settings, keep_ratio=keep_ratio, attn_keep_ratio=attn_keep_ratio, mode=mode)

    def tokens_per_block(self, model: nn.Module, keep_ratio: float, training: bool,
                         settings: Optional[PatchSettings] = None,
                         img_size: Optional[int] = None) -> Optional[List[Tuple[int, int]]]:
        """Tokens seen by attention and MLP of each block for one image, or None if not token-shaped."""
        return None

    def survival_masks(self, model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
        """After a forward of a patched model: per pruning stage a label and a ``(B, gh, gw)`` bool map
        of the tokens (or windows) that the stage's blocks processed (what ``visualize`` draws)."""
        raise NotImplementedError(f"visualize does not draw {self.name} models")

    def describe(self, model: nn.Module) -> str:
        """One line describing the model actually built (depth, width, tokens)."""
        return type(model).__name__


_FAMILIES: List[ModelFamily] = []


def register_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` (a :class:`ModelFamily` instance); a family of the same name is replaced.

    Returns:
        ``family``.

    Raises:
        ValueError: If it is not a :class:`ModelFamily` with a name.
    """
    if not isinstance(family, ModelFamily) or not family.name:
        raise ValueError(f"register_family takes a ModelFamily instance with a name, got {family!r}")
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name] + [family]
    return family


def families() -> Tuple[ModelFamily, ...]:
    """The registered families, in registration order."""
    return tuple(_FAMILIES)


def find_family(model: nn.Module) -> Optional[ModelFamily]:
    """The family of ``model`` (wrappers looked through), or None."""
    base = unwrap_model(model)
    for family in _FAMILIES:
        if family.matches(base):
            return family
    return None


def family_of(model: nn.Module) -> ModelFamily:
    """The family of ``model`` (wrappers looked through).

    Raises:
        TypeError: If no registered family matches (the registered ones are named).
    """
    family = find_family(model)
    if family is None:
        base = unwrap_model(model)
        raise TypeError(f"{type(base).__module__}.{type(base).__name__} is not a supported model; supported "
                        f"families: {', '.join(f.name for f in _FAMILIES)} (timm VisionTransformer/DeiT, Eva/EVA-02, "
                        f"SwinTransformer), or register your own (trilevel.models.register_family)")
    return family


def patch(model: nn.Module, settings: Optional[PatchSettings] = None, *, preset: str = DEFAULT_PRESET,
          **overrides: Any) -> nn.Module:
    """Add the token and attention levels to a timm model, in place: the one entry point for every family.

    No module or parameter is added (``state_dict`` keys stay stock, so checkpoints load into stock
    timm); each block reuses its own submodules. Patching again replaces the earlier settings.

    Args:
        model: A model of a registered family (ViT/DeiT, Eva/EVA-02, Swin), wrappers allowed.
        settings: Patch settings; None: those of ``preset`` with ``overrides``.
        preset: Preset whose patch settings are the defaults (the default preset's, as :class:`trilevel.TriLevelConfig`;
            ``paper`` for Kong et al.'s 0.7/0.3 in blocks 3/6/9, tokens dropped).
        **overrides: Fields of :class:`PatchSettings` (``keep_ratio=0.7``, ``token_fate="drop"``...).

    Returns:
        The same model object, patched.

    Raises:
        TypeError: If the model is of no registered family, or a variant the family cannot patch.
        ValueError: A bad or unsupported setting (named), or ``settings`` given with ``overrides``.

    Source: Kong et al., "Peeling the Onion", AAAI 2023 (token and attention levels).
    """
    if settings is None:
        settings = PatchSettings.from_preset(preset, **overrides)
    elif overrides:
        raise ValueError(f"pass settings or keyword overrides, not both (got {sorted(overrides)})")
    family = family_of(model)
    base = unwrap_model(model)
    family.check(base)
    resolved = family.resolve(base, settings)
    family.patch(base, resolved)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the stock timm classes of a patched model, in place (weights untouched); a stock model is returned as is."""
    family = find_family(model)
    base = unwrap_model(model)
    if family is not None and family.is_patched(base):
        family.unpatch(base)
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (wrappers looked through) carries a tri-level patch."""
    family = find_family(model)
    return family is not None and family.is_patched(unwrap_model(model))


def _patched_family(model: nn.Module) -> ModelFamily:
    family = find_family(model)
    if family is None or not family.is_patched(unwrap_model(model)):
        raise ValueError(f"model ({type(unwrap_model(model)).__name__}) is not patched; call trilevel.patch(model) first")
    return family


def set_keep_ratios(model: nn.Module, keep_ratio: Union[None, float, Sequence[float]] = None,
                    attn_keep_ratio: Optional[float] = None) -> None:
    """Set the token and/or attention keep ratio of every pruning block (e.g. from a schedule).

    Args:
        model: A patched model (wrappers allowed).
        keep_ratio: New kept fraction of tokens (Swin: windows), in (0, 1]; a Swin also takes one
            per stage (a sequence); None leaves it.
        attn_keep_ratio: New kept fraction of connections per query, in (0, 1]; None leaves it.

    Raises:
        ValueError: If the model is not patched, a ratio is outside (0, 1], a per-stage sequence
            has the wrong length, or the family has no attention level and ``attn_keep_ratio != 1``
            (nothing is changed then).
    """
    _patched_family(model).set_keep_ratios(unwrap_model(model), keep_ratio, attn_keep_ratio)


def get_keep_ratios(model: nn.Module) -> Tuple[float, float]:
    """``(keep_ratio, attn_keep_ratio)`` of a patched model; ``(1.0, 1.0)`` for a stock or unknown model.

    A Swin reports its first stage's keep ratio (the same in every stage unless set per stage).
    """
    family = find_family(model)
    return (1.0, 1.0) if family is None else family.get_keep_ratios(unwrap_model(model))


def get_trilevel_info(model: nn.Module) -> Any:
    """What the last forward pass of a patched model did (its family's info object; None before the first).

    Raises:
        ValueError: If the model is not patched.
    """
    return _patched_family(model).info(unwrap_model(model))


def forward_flops(model: nn.Module, keep_ratio: Union[None, float, Sequence[float]] = None, training: bool = False,
                  attn_keep_ratio: Optional[float] = None, settings: Optional[PatchSettings] = None,
                  img_size: Optional[int] = None) -> float:
    """FLOPs (multiply-add = 2) of one forward pass of one image, from the family's analytic model.

    A training step costs about 3x this; ratios between two settings are the same either way.

    Args:
        model: A model of a registered family, patched or not (wrappers allowed).
        keep_ratio: Token keep ratio to assume (a Swin also takes one per stage); None: the model's
            current one.
        training: Count a training forward (timm's PatchDropout active).
        attn_keep_ratio: Attention keep ratio to assume; None: the model's current one.
        settings: Patch settings to assume (e.g. before patching); None: the model's own.
        img_size: Input side in pixels; None: the model's.

    Returns:
        FLOPs of one image.

    Raises:
        TypeError: For a model of no registered family.
        ValueError: A bad ratio, or an ``img_size`` the family's model cannot count (named).
    """
    family = family_of(model)
    return float(family.forward_flops(unwrap_model(model), keep_ratio, attn_keep_ratio, training, settings, img_size))


def tokens_per_block(model: nn.Module, keep_ratio: Optional[float] = None, training: bool = False,
                     settings: Optional[PatchSettings] = None,
                     img_size: Optional[int] = None) -> Optional[List[Tuple[int, int]]]:
    """Tokens seen by the attention and by the MLP of each block, for one image (prefix tokens included).

    Returns:
        A list over blocks of ``(n_attention, n_mlp)``.

    Raises:
        TypeError: For a model of no registered family, or of a family without a token count per
            block (a Swin keeps its grid; see :func:`trilevel.get_trilevel_info` for its windows).
    """
    family = family_of(model)
    base = unwrap_model(model)
    kr = family.get_keep_ratios(base)[0] if keep_ratio is None else keep_ratio
    counts = family.tokens_per_block(base, kr, training, settings, img_size)
    if counts is None:
        raise TypeError(f"tokens_per_block counts the tokens of each block; a {family.name} model ({type(base).__name__}) "
                        "has no such count (a SwinTransformer keeps its grid: see trilevel.get_trilevel_info)")
    return counts


def describe_model(model: nn.Module) -> str:
    """One line on the model actually built (family, depth, width, tokens, parameters)."""
    base = unwrap_model(model)
    family = find_family(base)
    n = sum(p.numel() for p in base.parameters())
    what = family.describe(base) if family is not None else type(base).__name__
    return f"{what}, {n / 1e6:.2f}M parameters"


def timm_patch_size(model: nn.Module) -> int:
    """The first side of timm's ``model.patch_embed.patch_size`` in pixels; 1 for a model without one
    (e.g. a CNN), which then takes any input side."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1, 1))
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def check_indices(values: Optional[Sequence[int]], depth: int, name: str = "prune_layers") -> Optional[Tuple[int, ...]]:
    """Sorted, validated 0-based block indices of a model of ``depth`` blocks (None passes through).

    :func:`trilevel.options.check_block_indices` with the model's depth, in a family's argument order.

    Raises:
        ValueError: A non-sequence, an empty sequence, a non-int, an index outside ``[0, depth - 1]``
            or a duplicate (each named).
    """
    return check_block_indices(name, values, depth)
