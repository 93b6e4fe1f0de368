"""Tiny timm models shared by the tests (CPU, milliseconds per forward)."""

import timm
import torch

TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=12, num_heads=2, num_classes=10)


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


def images(batch: int = 3, chans: int = 1, size: int = 28, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans, size, size, generator=g)
