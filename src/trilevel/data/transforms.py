"""Training and validation transforms of :mod:`trilevel.data`.

In-memory ``uint8`` tensors are transformed with ``torchvision.transforms.v2`` directly on
tensors; ImageFolder's PIL images with timm's evaluation transform or a v2 pipeline. The
``"deit"`` augmentation is the recipe of Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021, built with timm's
``create_transform`` (RandAugment ``rand-m9-mstd0.5-inc1``, random erasing with p=0.25), which
works on PIL images.
"""

from __future__ import annotations

from collections.abc import Callable

import timm.data
import torch
import torchvision.transforms.v2 as v2
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["imagefolder_transforms", "tensor_transforms"]

# DeiT's recipe (Touvron et al., ICML 2021) as timm's create_transform arguments.
_DEIT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
_DEIT_RE_PROB = 0.25


def _deit_train_transform(img_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    return timm.data.create_transform(
        input_size=img_size,
        is_training=True,
        auto_augment=_DEIT_AUTO_AUGMENT,
        re_prob=_DEIT_RE_PROB,
        re_mode="pixel",
        re_count=1,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )


def tensor_transforms(
    native_size: int,
    native_chans: int,
    img_size: int,
    in_chans: int,
    aug: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    hflip: bool = True,
) -> tuple[Callable, Callable]:
    """Builds the (train, val) transforms for ``uint8`` tensors ``(C, H, W)`` of side ``native_size``.

    A grayscale image is repeated to 3 channels after normalisation when ``in_chans == 3``.

    Args:
        native_size: Side of the stored images, in pixels.
        native_chans: Channels of the stored images.
        img_size: Side of the produced images (resized when it differs from ``native_size``).
        in_chans: Channels of the produced images (``native_chans``, or 3 for grayscale).
        aug: Training augmentation, ``"light"``, ``"none"`` or ``"deit"``.
        mean: Per-channel mean, ``native_chans`` entries, pixel values in [0, 1].
        std: Per-channel standard deviation, ``native_chans`` entries.
        hflip: Whether ``"light"`` flips images horizontally (not for digits or text, whose mirror
            image is another symbol).

    Returns:
        ``(train, val)`` callables mapping a ``uint8`` image to a normalised ``float32`` tensor.
    """
    resize = [] if img_size == native_size else [v2.Resize((img_size, img_size), antialias=True)]
    to_rgb = [v2.RGB()] if in_chans != native_chans else []
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    val = v2.Compose([*resize, *normalise, *to_rgb])
    if aug == "none":
        return val, val
    if aug == "light":
        crop_flip = [v2.RandomCrop(img_size, padding=img_size // 7), *([v2.RandomHorizontalFlip()] if hflip else [])]
        return v2.Compose([*resize, *crop_flip, *normalise, *to_rgb]), val
    # "deit": timm's PIL pipeline on an RGB image; val stays resize + normalise.
    rgb_mean = mean * 3 if len(mean) == 1 else mean
    rgb_std = std * 3 if len(std) == 1 else std
    deit = _deit_train_transform(img_size, rgb_mean, rgb_std)
    train = v2.Compose([*to_rgb, v2.ToPILImage(), deit])
    return train, val


def imagefolder_transforms(img_size: int, aug: str) -> tuple[Callable, Callable]:
    """Builds the (train, val) transforms for PIL RGB images of any size (ImageFolder).

    Normalisation uses ImageNet's mean and std.

    Args:
        img_size: Side of the produced square images, in pixels.
        aug: Training augmentation, ``"light"``, ``"none"`` or ``"deit"``.

    Returns:
        ``(train, val)`` callables mapping a PIL image to a normalised ``float32`` tensor.
    """
    mean, std = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    # Resize the shorter side to img_size / 0.875, centre-crop img_size (timm's eval transform).
    val = timm.data.create_transform(input_size=img_size, is_training=False, mean=mean, std=std)
    if aug == "none":
        return val, val
    if aug == "light":
        train = v2.Compose([
            v2.ToImage(),
            v2.RandomResizedCrop(img_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            v2.ToPureTensor(),
        ])
        return train, val
    return _deit_train_transform(img_size, mean, std), val
