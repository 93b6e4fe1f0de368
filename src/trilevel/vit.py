"""Alias of :mod:`trilevel.models.vit` (the ViT family moved into :mod:`trilevel.models`).

Kept so that existing ``from trilevel.vit import patch_vit`` lines go on working; new code uses
:func:`trilevel.patch` / :mod:`trilevel.models`.
"""

from .models.registry import get_keep_ratios, get_trilevel_info, is_patched, set_keep_ratios, unwrap_model
from .models.vit import TriLevelInfo, default_prune_layers, patch_vit, rejoin_tokens, resolve_bypass, unpatch_vit
from .token_pruning import TOKEN_FATES, TOKEN_SCORES

__all__ = ["TOKEN_FATES", "TOKEN_SCORES", "TriLevelInfo", "default_prune_layers", "get_keep_ratios", "get_trilevel_info",
           "is_patched", "patch_vit", "rejoin_tokens", "resolve_bypass", "set_keep_ratios", "unpatch_vit",
           "unwrap_model"]
