"""trilevel: faster Vision Transformer training by removing redundant data at three nested levels.

Training examples (forgetting-based example selection), patch tokens ([CLS]-attention top-k token
pruning) and attention connections (per-query top-k connection masks), after Kong et al.,
"Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer
Training", AAAI 2023 (arXiv 2211.10801).
"""

__version__ = "0.1.0"

from .attention_sparsity import connection_mask, masked_attention, topk_connection_mask
from .flops import forward_flops, tokens_per_block
from .schedules import KeepRatioSchedule, run_progress
from .token_pruning import cls_attention_scores, num_kept_tokens, select_topk_tokens
from .vit import (
    TriLevelInfo,
    default_prune_layers,
    unwrap_model,
    get_keep_ratios,
    get_trilevel_info,
    is_patched,
    patch_vit,
    set_keep_ratios,
    unpatch_vit,
)
from .models import (
    SwinTriLevelInfo,
    get_swin_info,
    patch_eva,
    patch_swin,
    set_swin_keep_ratios,
    unpatch_eva,
    unpatch_swin,
)
from .example_selection import (
    ActiveSubsetSampler,
    ExampleSelector,
    ForgettingSelector,
    IndexedDataset,
    LossSelector,
    RandomSelector,
)
from .algorithm import TriLevel, TriLevelConfig

__all__ = [
    "connection_mask", "masked_attention", "topk_connection_mask", "forward_flops", "tokens_per_block",
    "KeepRatioSchedule", "run_progress", "cls_attention_scores", "num_kept_tokens", "select_topk_tokens",
    "TriLevelInfo", "default_prune_layers", "unwrap_model", "get_keep_ratios", "get_trilevel_info", "is_patched",
    "patch_vit", "set_keep_ratios", "unpatch_vit", "patch_eva", "unpatch_eva", "patch_swin", "unpatch_swin",
    "set_swin_keep_ratios", "get_swin_info", "SwinTriLevelInfo", "ActiveSubsetSampler", "ExampleSelector",
    "ForgettingSelector",
    "IndexedDataset", "LossSelector", "RandomSelector", "TriLevel", "TriLevelConfig",
    "TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run",
]

#: Names served from :mod:`trilevel.training` on first use (it imports timm and torchvision data code).
_TRAINING_NAMES = ("TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run")


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'trilevel' has no attribute {name!r}")
