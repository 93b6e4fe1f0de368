"""Cluttered Fashion-MNIST: each item on a larger blank canvas, at a random place, among clutter.

The recipe of cluttered MNIST (Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015,
Sec. 4.1: digits placed at random in a larger frame, with random 6x6 pieces of other digits as
clutter), applied to Fashion-MNIST: each 28x28 image is pasted at a uniformly random offset on a
``canvas x canvas`` black canvas, after ``fragments`` random ``fragment x fragment`` crops of other
images of the same split were pasted at random places (pixel-wise maximum, so neither erases the
other). With 4x4 patches a 56x56 canvas is 196 patch tokens (DeiT's count at 224/16), most of them
background or clutter: the regime where choosing tokens by [CLS] attention can beat dropping
them at random.

Deterministic: every random draw comes from a ``torch.Generator`` seeded by the split (train 0,
test 1), and all draws of a split are made at once, so image ``i`` is the same whatever subset is
used. The built split is cached on first use (``$TRILEVEL_CACHE_DIR``, default
``~/.cache/trilevel``), keyed by the recipe and a digest of the source images; the file is written
atomically.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch

__all__ = ["CLUTTER_RECIPE_VERSION", "clutter_images", "cache_dir", "cluttered_split"]

CLUTTER_RECIPE_VERSION = 1
"""Bumped whenever the recipe changes (it is part of the cache key and of the pinned digest)."""

_SPLIT_SEEDS = {"train": 0, "val": 1}


def clutter_images(images: torch.Tensor, canvas: int, fragments: int, fragment: int, seed: int) -> torch.Tensor:
    """Place each image at a random offset on a blank canvas among random fragments of other images.

    Args:
        images: ``uint8`` ``(N, C, h, w)`` source images (``N >= 2`` when ``fragments > 0``).
        canvas: Side of the square output canvas in pixels, ``>= max(h, w)``.
        fragments: Clutter fragments per image, ``>= 0``.
        fragment: Side of a square fragment in pixels, in ``[1, min(h, w)]``.
        seed: Seed of the draws.

    Returns:
        ``uint8`` ``(N, C, canvas, canvas)``.

    Raises:
        ValueError: For a canvas smaller than the images, a fragment larger than them, a negative
            fragment count, or fragments with fewer than two images.
    """
    N, C, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"canvas-size {canvas} must be at least the image side {max(h, w)}")
    if fragments < 0:
        raise ValueError(f"clutter-fragments must be >= 0, got {fragments}")
    if not 1 <= fragment <= min(h, w):
        raise ValueError(f"fragment side must be in [1, {min(h, w)}], got {fragment}")
    if fragments and N < 2:
        raise ValueError("clutter fragments come from other images: need at least two images")
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(N, C, canvas, canvas, dtype=torch.uint8)
    n = torch.arange(N).view(N, 1, 1, 1)
    c = torch.arange(C).view(1, C, 1, 1)

    def paste(patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> None:
        ph, pw = patch.shape[-2:]
        rows = (top.view(N, 1) + torch.arange(ph)).view(N, 1, ph, 1)
        cols = (left.view(N, 1) + torch.arange(pw)).view(N, 1, 1, pw)
        out[n, c, rows, cols] = torch.maximum(out[n, c, rows, cols], patch)

    # All draws first, in a fixed order, so the recipe does not depend on how pasting is done.
    src = (torch.arange(N).view(N, 1) + 1 + torch.randint(0, max(N - 1, 1), (N, fragments), generator=g)) % N
    crop = torch.randint(0, min(h, w) - fragment + 1, (N, fragments, 2), generator=g)
    place = torch.randint(0, canvas - fragment + 1, (N, fragments, 2), generator=g)
    offset_y = torch.randint(0, canvas - h + 1, (N,), generator=g)
    offset_x = torch.randint(0, canvas - w + 1, (N,), generator=g)
    for j in range(fragments):
        rows = (crop[:, j, 0].view(N, 1) + torch.arange(fragment)).view(N, 1, fragment, 1)
        cols = (crop[:, j, 1].view(N, 1) + torch.arange(fragment)).view(N, 1, 1, fragment)
        piece = images[src[:, j].view(N, 1, 1, 1), c, rows, cols]
        paste(piece, place[:, j, 0], place[:, j, 1])
    paste(images, offset_y, offset_x)
    return out


def cache_dir() -> Path:
    """Where built datasets are cached: ``$TRILEVEL_CACHE_DIR``, else ``~/.cache/trilevel``."""
    return Path(os.environ.get("TRILEVEL_CACHE_DIR") or Path.home() / ".cache" / "trilevel")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def cluttered_split(images: torch.Tensor, split: str, canvas: int, fragments: int, fragment: int = 8) -> torch.Tensor:
    """The cluttered images of one split, built once and then read from the cache.

    Args:
        images: ``uint8`` ``(N, C, h, w)`` source images of the split.
        split: ``train`` or ``val`` (picks the seed).
        canvas, fragments, fragment: As :func:`clutter_images`.

    Returns:
        ``uint8`` ``(N, C, canvas, canvas)``.

    Raises:
        ValueError: As :func:`clutter_images`, or an unknown split.
    """
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be one of {', '.join(_SPLIT_SEEDS)}; got {split!r}")
    key = f"cluttered-v{CLUTTER_RECIPE_VERSION}-{split}-c{canvas}-f{fragments}x{fragment}-{_digest(images)}.pt"
    path = cache_dir() / key
    if path.is_file():
        try:
            cached = torch.load(path, weights_only=True)
            if isinstance(cached, torch.Tensor) and cached.shape == (images.shape[0], images.shape[1], canvas, canvas):
                return cached
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            pass  # a damaged cache file is rebuilt
    built = clutter_images(images, canvas, fragments, fragment, _SPLIT_SEEDS[split])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save(built, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # an unwritable cache only costs the rebuild next time
    return built
