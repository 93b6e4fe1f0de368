"""The model families the tri-level method patches, behind one registry (:mod:`trilevel.models.registry`).

* ViT / DeiT (timm ``VisionTransformer``): :mod:`trilevel.models.vit`, the paper's family.
* EVA-02 (timm ``Eva``): :mod:`trilevel.models.eva`, rotary embeddings that follow the kept tokens.
* Swin (timm ``SwinTransformer``): :mod:`trilevel.models.swin`, whole windows skip a block.

Use :func:`patch`, :func:`set_keep_ratios`, :func:`forward_flops`, ... for any of them; the
family-specific names (``patch_vit``, ``patch_eva``, ``patch_swin``, ...) are thin aliases. A new
family is one module with a :class:`ModelFamily` subclass and one :func:`register_family` call.
"""

from .registry import (
    ModelFamily, PatchSettings, describe_model, families, family_of, find_family, forward_flops, get_keep_ratios,
    get_trilevel_info, is_patched, patch, register_family, set_keep_ratios, tokens_per_block, unpatch, unwrap_model,
)
from .vit import (
    TriLevelInfo, ViTFamily, default_prune_layers, patch_vit, rejoin_tokens, resolve_bypass, unpatch_vit,
)
from .eva import EvaFamily, gather_rope, is_eva, patch_eva, unpatch_eva
from .swin import (
    SWIN_MODES, SwinFamily, SwinTriLevelInfo, get_swin_info, get_swin_keep_ratios, is_swin, is_swin_patched, patch_swin,
    set_swin_keep_ratios, swin_forward_flops, unpatch_swin,
)

__all__ = [
    "ModelFamily", "PatchSettings", "describe_model", "families", "family_of", "find_family", "forward_flops",
    "get_keep_ratios", "get_trilevel_info", "is_patched", "patch", "register_family", "set_keep_ratios",
    "tokens_per_block", "unpatch", "unwrap_model", "TriLevelInfo", "ViTFamily", "default_prune_layers", "patch_vit",
    "rejoin_tokens", "resolve_bypass", "unpatch_vit", "EvaFamily", "gather_rope", "is_eva", "patch_eva", "unpatch_eva",
    "SWIN_MODES", "SwinFamily", "SwinTriLevelInfo", "get_swin_info", "get_swin_keep_ratios", "is_swin",
    "is_swin_patched", "patch_swin", "set_swin_keep_ratios", "swin_forward_flops", "unpatch_swin",
]
