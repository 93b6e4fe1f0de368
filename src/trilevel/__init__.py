"""trilevel: faster Vision Transformer training by removing redundant data at three nested levels.

Training examples (forgetting-based example selection), patch tokens ([CLS]-attention top-k token
pruning) and attention connections (per-query top-k connection masks), after Kong et al.,
"Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer
Training", AAAI 2023 (arXiv 2211.10801).
"""

__version__ = "0.1.0"

from .attention_sparsity import connection_mask, masked_attention, topk_connection_mask
from .presets import PRESETS
from .schedules import KeepRatioSchedule, run_progress
from .token_pruning import (
    TokenFate, TokenScore, cls_attention_scores, num_kept_tokens, register_token_fate, register_token_score,
    select_topk_tokens,
)
from .models import (
    ModelFamily, PatchSettings, SwinTriLevelInfo, TriLevelInfo, default_prune_layers, family_of, forward_flops,
    get_keep_ratios, get_trilevel_info, is_patched, patch, register_family, set_keep_ratios, tokens_per_block, unpatch,
    unwrap_model,
)
from .example_selection import (
    ActiveSubsetSampler,
    ExampleSelector,
    ForgettingSelector,
    IndexedDataset,
    LossSelector,
    RandomSelector,
)
from .settings import ResolvedTriLevel, TriLevelConfig, resolve_config
from .algorithm import TriLevel

__all__ = [
    "connection_mask", "masked_attention", "topk_connection_mask", "PRESETS", "KeepRatioSchedule", "run_progress",
    "TokenFate", "TokenScore", "cls_attention_scores", "num_kept_tokens", "register_token_fate",
    "register_token_score", "select_topk_tokens", "ModelFamily", "PatchSettings", "SwinTriLevelInfo", "TriLevelInfo",
    "default_prune_layers", "family_of", "forward_flops", "get_keep_ratios", "get_trilevel_info", "is_patched",
    "patch", "register_family", "set_keep_ratios", "tokens_per_block", "unpatch", "unwrap_model",
    "ActiveSubsetSampler", "ExampleSelector", "ForgettingSelector", "IndexedDataset", "LossSelector",
    "RandomSelector", "ResolvedTriLevel", "TriLevelConfig", "resolve_config", "TriLevel",
    "TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run",
]

#: Names served from :mod:`trilevel.training` on first use (it imports timm and torchvision data code).
_TRAINING_NAMES = ("TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run")


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'trilevel' has no attribute {name!r}")
