"""Tri-level patches of timm families beyond ``VisionTransformer``: EVA-02 (``Eva``) and Swin.

:func:`patch_eva` brings the token and attention levels of :mod:`trilevel.vit` to timm ``Eva``
models, with rotary embeddings that follow the kept tokens; :func:`patch_swin` prunes whole
windows of timm ``SwinTransformer`` blocks (or masks low-scoring keys). Speed comparisons of
stock against patched models: :mod:`trilevel.models.speed` (imported on demand).
"""

from .eva import gather_rope, is_eva, patch_eva, unpatch_eva
from .swin import (
    SWIN_MODES, SwinTriLevelInfo, get_swin_info, get_swin_keep_ratios, is_swin, is_swin_patched, patch_swin,
    set_swin_keep_ratios, swin_forward_flops, unpatch_swin,
)

__all__ = [
    "gather_rope", "is_eva", "patch_eva", "unpatch_eva", "SWIN_MODES", "SwinTriLevelInfo", "get_swin_info",
    "get_swin_keep_ratios", "is_swin", "is_swin_patched", "patch_swin", "set_swin_keep_ratios",
    "swin_forward_flops", "unpatch_swin",
]
