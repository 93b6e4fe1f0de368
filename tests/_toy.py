"""A toy model family, token score and token fate, registered from outside the package (docs/design.md's recipes).

ToyTokenModel is a 5-token model (four 4x4 patches of a 1x8x8 image and a [CLS] token); ToyFamily patches
it with the token level, pruned tokens dropped. ``token-norm`` scores each patch token by its L2 norm. The
token fate ``mean`` turns the pruned tokens into one extra token, their mean. The fixtures ``toy_family``,
``token_norm_score`` and ``mean_fate`` (tests/conftest.py) register them for one test;
tests/unit/test_registry.py runs the family through the public API, tests/families/test_contract.py holds
it to the contract of every family, tests/families/test_token_fates.py runs the fate through patched ViTs
and EVA-02s. The code of the three "How to add ..." sections of docs/design.md is this file's code
(tests/unit/test_registry.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional

import torch
import torch.nn as nn

from trilevel.models.common import check_ratio, survival_from_positions
from trilevel.models.registry import ModelFamily, PatchSettings, check_indices
from trilevel.token_pruning import (
    ScoreInputs, TokenFate, TokenScore, get_token_score, num_kept_tokens, select_topk_tokens,
)


# ------------------------------------------------------------------------------------- the toy family
@dataclass
class ToyInfo:
    kept_positions: List[torch.Tensor]  # per pruning block, (B, k): the kept patch indices (row-major, 2x2 grid)


@dataclass(eq=False)
class ToyState:
    """The runtime state of a patched toy model, ``model.trilevel_state`` (ModelFamily.settings reads its settings)."""

    settings: PatchSettings
    keep_ratio: float
    info: Optional[ToyInfo] = None  # the last forward's record


class ToyTokenModel(nn.Module):
    """A 1x8x8 image as four 4x4 patch tokens and a [CLS] token, residual linear blocks, a head on the mean token."""

    def __init__(self, dim: int = 8, depth: int = 3, num_classes: int = 3):
        super().__init__()
        self.patch_embed = nn.Linear(16, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        patches = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(images.shape[0], 4, 16)  # row-major 2x2 grid
        x = self.patch_embed(patches)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens(images)
        for block in self.blocks:
            x = x + block(x).relu()
        return self.head(x.mean(dim=1))


class PrunedToyTokenModel(ToyTokenModel):
    """A patched ToyTokenModel: a pruning block first keeps [CLS] and the top ceil(keep * N) tokens by the score."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens(images)
        state = self.trilevel_state
        settings = state.settings
        positions = torch.arange(x.shape[1] - 1).expand(x.shape[0], -1)
        info = ToyInfo([])
        for i, block in enumerate(self.blocks):
            if i in settings.prune_layers and state.keep_ratio < 1.0:
                score = get_token_score(settings.token_score)
                cls_attention = (x[:, :1] @ x[:, 1:].transpose(1, 2)).softmax(-1)[:, 0] if score.uses_cls_attention else None
                x, kept = select_topk_tokens(x, score.score(ScoreInputs(x, cls_attention, 1)), state.keep_ratio)
                positions = positions.gather(1, kept)
                info.kept_positions.append(positions)
            x = x + block(x).relu()
        state.info = info
        return self.head(x.mean(dim=1))


class ToyFamily(ModelFamily):
    """ToyTokenModel: the token level only (no attention level), pruned tokens dropped."""

    name = "toy"
    supports_attention_level = False
    token_fates = ("drop",)

    def matches(self, model):
        return isinstance(model, ToyTokenModel)

    def default_prune_layers(self, model):
        return (len(model.blocks) // 2,)

    def resolve(self, model, settings):
        settings = super().resolve(model, settings)  # ratios, fate, score, attention level, mode checked
        layers = check_indices(settings.prune_layers, len(model.blocks)) or self.default_prune_layers(model)
        return replace(settings, prune_layers=layers)

    def patch(self, model, settings):
        model.__class__ = PrunedToyTokenModel
        model.trilevel_state = ToyState(settings, settings.keep_ratio)  # the runtime state: one object

    def unpatch(self, model):
        model.__class__ = ToyTokenModel
        del model.trilevel_state

    def is_patched(self, model):
        return isinstance(model, PrunedToyTokenModel)

    def set_keep_ratios(self, model, keep_ratio, attn_keep_ratio):
        if attn_keep_ratio not in (None, 1.0):
            raise ValueError(f"toy models have no attention level; attn_keep_ratio must be 1.0, got {attn_keep_ratio}")
        if keep_ratio is not None:
            model.trilevel_state.keep_ratio = check_ratio("keep_ratio", keep_ratio)

    def get_keep_ratios(self, model):
        return (model.trilevel_state.keep_ratio, 1.0) if self.is_patched(model) else (1.0, 1.0)

    def forward_flops(self, model, keep_ratio, attn_keep_ratio, training, settings, img_size=None):
        settings = self.settings(model) if settings is None else self.resolve(model, settings)
        keep = self.get_keep_ratios(model)[0] if keep_ratio is None else keep_ratio
        dim, n = model.head.in_features, 4
        flops = 2.0 * n * 16 * dim + 2.0 * dim * model.head.out_features  # patch embedding, head
        for i in range(len(model.blocks)):
            if settings is not None and i in settings.prune_layers and keep < 1.0:
                if get_token_score(settings.token_score).uses_cls_attention:
                    flops += 2.0 * n * dim  # the [CLS] row of the scores
                n = num_kept_tokens(n, keep)
            flops += 2.0 * (1 + n) * dim * dim
        return flops

    def info(self, model):
        return model.trilevel_state.info

    def survival_masks(self, model):
        state = model.trilevel_state
        return survival_from_positions(state.info.kept_positions, (2, 2), state.settings.prune_layers)

    def describe(self, model):
        return f"toy: {len(model.blocks)} blocks, width {model.head.in_features}, 4 patch tokens + 1 prefix"


# ------------------------------------------------------------------------------------- the toy token score
def token_norm(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.tokens[:, inputs.num_prefix_tokens:].norm(dim=-1)  # (B, N - P)


TOKEN_NORM = TokenScore("token-norm", uses_cls_attention=False, score=token_norm, source="L2 norm of each patch token")


# ------------------------------------------------------------------------------------- the toy token fate
@dataclass(frozen=True)
class MeanFate(TokenFate):
    """The pruned patch tokens become one extra token, their plain mean (EViT's fusion without weights)."""

    def select(self, x, scores, keep_ratio, num_prefix_tokens):
        kept_x, kept_idx = select_topk_tokens(x, scores, keep_ratio, num_prefix_tokens)  # (B, P + k, C), (B, k)
        patches = x[:, num_prefix_tokens:]  # (B, N - P, C)
        if kept_idx.shape[1] == patches.shape[1]:
            return kept_x, kept_idx  # nothing pruned: no extra token
        pruned = torch.ones_like(patches[..., 0]).scatter(1, kept_idx, 0.0)  # (B, N - P): 1 where pruned
        mean = (pruned.unsqueeze(-1) * patches).sum(dim=1, keepdim=True) / pruned.sum(dim=1).view(-1, 1, 1)
        return torch.cat([kept_x, mean], dim=1), kept_idx

    def extra_tokens(self, num_patches, num_kept):
        return 1 if num_kept < num_patches else 0


MEAN = MeanFate("mean", source="the pruned tokens' mean as one token (a toy: EViT's fusion, unweighted)")


# ------------------------------------------------------------------------------------- models and inputs
def toy_model(seed: int = 0) -> ToyTokenModel:
    torch.manual_seed(seed)
    return ToyTokenModel().eval()


def toy_images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


TOY = dict(token_fate="drop", token_score="token-norm")  # what the toy family implements
