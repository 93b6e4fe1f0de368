"""Named settings of the three levels: the paper's, and the winner of our time-to-accuracy study.

One table, the only place these values are written: the defaults of :func:`trilevel.patch`
(:class:`~trilevel.models.PatchSettings`), :class:`trilevel.TriLevelConfig`,
:class:`~trilevel.schedules.KeepRatioSchedule` and ``trilevel bench speed`` derive from it
(:data:`DEFAULTS`, :data:`PRESETS`), and one function, :func:`layered_settings`, applies a preset
wherever one is named: ``TriLevelConfig(preset=...)``, ``--preset`` (the command line builds a
run's settings as defaults < preset < checkpoint < file < flags), the bench rows and the
reading of old checkpoints.

* ``paper``: the exact settings of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
  Redundancy for Efficient Vision Transformer Training", AAAI 2023, and of the authors' code:
  token keep ratio 0.7 and attention keep ratio 0.3 in blocks 3/6/9 of 12, decaying from 1 over
  10-110 of 300 epochs (EViT's cosine), pruned tokens dropped; forgetting-event example selection
  removing 20% and swapping 5% every 30 of 300 epochs, at most 5 times.
* ``fast``: what won the time-to-accuracy study against budget-matched dense training
  (docs/benchmarks.md): tokens grow 0.5 -> 1 linearly over 80% of the run, pruned tokens bypass
  the pruning blocks and rejoin before the last (random-LTD), the last 20% dense; forgetting 20%/5%.
* ``fast-patchdrop``: ``fast`` stacked on timm's PatchDropout 0.3 at the input (Liu et al., "PatchDropout:
  Economizing Vision Transformers Using Patch Dropout", WACV 2023): the best row of the study in the
  long-schedule and cluttered (100-token) regimes (docs/benchmarks.md, section "Study in users' regimes").
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

__all__ = ["PRESETS", "AUTO_PATCH_DROP", "DEFAULT_PRESET", "DEFAULTS", "CHECKPOINT_PRESET", "PATCH_KEYS",
           "preset_settings", "patch_defaults", "layered_settings"]

#: Named settings of the three levels (field names of :class:`trilevel.TriLevelConfig`).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {
        "keep_ratio": 0.7, "attn_keep_ratio": 0.3, "prune_layers": None, "ratio_schedule": "decay",
        "ratio_warmup": 1.0 / 30.0, "ratio_decay_end": 11.0 / 30.0, "ratio_curve": "cosine", "ratio_buckets": 0,
        "dense_tail": 0.0,
        "token_fate": "drop", "token_score": "cls-attention", "rejoin_layer": None, "eval_keep_ratio": None,
        "eval_attn_keep_ratio": None, "selector": "forgetting", "example_remove": 0.2, "example_swap": 0.05,
        "example_update_every": 0.1, "example_max_updates": 5, "patch_drop": 0.0,
    },
    "fast": {
        "keep_ratio": 0.5, "attn_keep_ratio": 1.0, "prune_layers": None, "ratio_schedule": "grow",
        "ratio_warmup": 0.0, "ratio_decay_end": 0.8, "ratio_curve": "linear", "ratio_buckets": 8, "dense_tail": 0.2,
        "token_fate": "bypass", "token_score": "cls-attention", "rejoin_layer": None, "eval_keep_ratio": None,
        "eval_attn_keep_ratio": None, "selector": "forgetting", "example_remove": 0.2, "example_swap": 0.05,
        "example_update_every": 0.1, "example_max_updates": 5, "patch_drop": 0.0,
    },
}
PRESETS["fast-patchdrop"] = {**PRESETS["fast"], "patch_drop": None}  # None: AUTO_PATCH_DROP where the model has the slot

AUTO_PATCH_DROP = 0.3
"""PatchDropout's drop fraction where ``patch_drop`` is None (the default) and the model has timm's slot."""

DEFAULT_PRESET = "fast-patchdrop"
"""The preset whose values are the defaults of :func:`trilevel.patch` and :class:`trilevel.TriLevelConfig`."""

DEFAULTS: Mapping[str, Any] = PRESETS[DEFAULT_PRESET]
"""The default preset's settings: the field defaults of :class:`trilevel.TriLevelConfig` (read, never written)."""

CHECKPOINT_PRESET = "paper"
"""The preset a stored configuration is read over: an option missing from an old checkpoint is one its
version did not have yet, and that run used the paper's value (the default until ``fast`` became it)."""

PATCH_KEYS = ("prune_layers", "keep_ratio", "attn_keep_ratio", "token_fate", "token_score", "rejoin_layer")
"""The settings that decide how a model is patched (the rest are schedules and the example level)."""


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


def patch_defaults(name: str = DEFAULT_PRESET) -> Dict[str, Any]:
    """The patch settings (:data:`PATCH_KEYS`) of preset ``name``.

    Raises:
        ValueError: For an unknown name.
    """
    settings = preset_settings(name)
    return {k: settings[k] for k in PATCH_KEYS}


def layered_settings(*layers: Optional[Mapping[str, Any]], base: Optional[Mapping[str, Any]] = None,
                     preset: Optional[str] = None) -> Dict[str, Any]:
    """Settings from layers, later ones winning: ``base < preset < layers[0] < layers[1] < ...``.

    The one place a preset is applied. ``trilevel train`` calls it with the resumed checkpoint's
    configuration, the ``-c`` file's and the flags naming the sources (defaults < preset <
    checkpoint < file < flags; the dataclass defaults, :data:`DEFAULTS`, lie below everything);
    ``TriLevelConfig(preset=...)`` with the fields it was given; a bench row with the shared recipe
    as ``base``; a stored configuration with ``preset=CHECKPOINT_PRESET``.

    Args:
        *layers: Mappings of field names (underscored) to values, lowest first; None or empty skipped.
        base: The bottom layer, below the preset (e.g. a complete recipe); None: nothing.
        preset: The preset whose values lie between ``base`` and ``layers``; None: the one named by
            the highest layer that has a ``preset`` key (no preset when that names None, or none does).

    Returns:
        A new dict.

    Raises:
        ValueError: An unknown preset name (the known ones are listed).
    """
    given = [layer for layer in layers if layer]
    if preset is None:
        preset = next((layer["preset"] for layer in reversed(given) if "preset" in layer), None)
    out: Dict[str, Any] = dict(base or {})
    out.update(preset_settings(preset))
    for layer in given:
        out.update(layer)
    return out
