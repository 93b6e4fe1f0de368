"""Tiny models shared by the tests (CPU, milliseconds per forward): one builder per timm family."""

import timm
import torch

TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=12, num_heads=2, num_classes=10)
EVA = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=10,
           ref_feat_shape=(7, 7))
# 28x28 grid of 7x7 windows (16), then 14x14 (4 windows, shifted by 3 in the second block)
SWIN = dict(img_size=28, patch_size=1, window_size=7, embed_dim=16, depths=(2, 2), num_heads=(1, 2), in_chans=1,
            num_classes=10, drop_path_rate=0.0)


def tiny_vit(name: str = "vit_tiny_patch16_224", seed: int = 0, **overrides) -> torch.nn.Module:
    kwargs = {**TINY, **overrides}
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    # timm zero-initialises some heads; random weights make every path observable
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def tiny_eva(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **{**EVA, **overrides})
    with torch.no_grad():  # timm zero-initialises biases and scales the head; random values expose every path
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
        model.head.weight.normal_(0, 0.2)
        for blk in model.blocks:  # peaked attention, so that rotary positions matter
            for proj in (blk.attn.qkv, blk.attn.q_proj, blk.attn.k_proj):
                if proj is not None:
                    proj.weight.normal_(0, 0.25)
    return model


def tiny_swin(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **{**SWIN, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
        for stage in model.layers:  # peaked attention, so that scores differ between windows
            for blk in stage.blocks:
                blk.attn.qkv.weight.normal_(0, 0.3)
    return model


def unfused(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every timm attention on its explicit path: ``FlopCounterMode`` does not count the CPU
    fused SDPA kernel, and hooks see the attention probabilities."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def images(batch: int = 3, chans: int = 1, size: int = 28, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans, size, size, generator=g)
