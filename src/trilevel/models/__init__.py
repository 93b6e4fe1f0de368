"""The model families the tri-level method patches, behind one registry (:mod:`trilevel.models.registry`).

* ViT / DeiT (timm ``VisionTransformer``): :mod:`trilevel.models.vit`, the paper's family.
* EVA-02 (timm ``Eva``): :mod:`trilevel.models.eva`, rotary embeddings that follow the kept tokens.
* Swin (timm ``SwinTransformer``): :mod:`trilevel.models.swin`, whole windows skip a block.

Use :func:`patch`, :func:`unpatch`, :func:`set_keep_ratios`, :func:`forward_flops`, ... for any
of them: one entry per verb, the family found from the model. A new family is one module with a
:class:`ModelFamily` subclass and one :func:`register_family` call.
"""

from .registry import (
    ModelFamily, PatchSettings, describe_model, families, family_of, find_family, forward_flops, get_keep_ratios,
    get_trilevel_info, is_patched, patch, register_family, set_keep_ratios, tokens_per_block, unpatch, unwrap_model,
)
from .vit import TriLevelInfo, TriLevelState, ViTFamily, default_prune_layers, resolve_bypass
from .eva import EvaFamily, gather_rope
from .swin import SWIN_MODES, SwinFamily, SwinTriLevelInfo

__all__ = [
    "ModelFamily", "PatchSettings", "describe_model", "families", "family_of", "find_family", "forward_flops",
    "get_keep_ratios", "get_trilevel_info", "is_patched", "patch", "register_family", "set_keep_ratios",
    "tokens_per_block", "unpatch", "unwrap_model", "TriLevelInfo", "TriLevelState", "ViTFamily",
    "default_prune_layers", "resolve_bypass", "EvaFamily", "gather_rope", "SWIN_MODES", "SwinFamily", "SwinTriLevelInfo",
]
