"""Named settings of the three levels: the paper's, and the winner of our time-to-accuracy study.

One table, read by :func:`trilevel.patch` (its defaults), :class:`trilevel.TriLevelConfig` (its
defaults, and ``preset=...``), the command line (``--preset``) and the benchmarks.

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

from typing import Any, Dict, Optional

__all__ = ["PRESETS", "AUTO_PATCH_DROP", "DEFAULT_PRESET", "PATCH_KEYS", "preset_settings", "patch_defaults"]

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
