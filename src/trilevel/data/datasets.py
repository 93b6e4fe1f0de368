"""Dataset classes and errors shared by the builders of :mod:`trilevel.data`.

* :class:`TensorImageDataset`: in-memory ``uint8`` images transformed on access (IDX and CIFAR).
* :class:`CheckedImageFolder`: torchvision's ``ImageFolder`` (torchvision documentation,
  https://pytorch.org/vision/stable/generated/torchvision.datasets.ImageFolder.html) that names
  the file it cannot read, with :func:`skip_unreadable_collate` to drop skipped images.
* :class:`DataInfo`, :class:`DatasetNotFoundError`, :class:`UnreadableImageError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch.utils.data import Dataset

__all__ = [
    "CheckedImageFolder",
    "DataInfo",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "UnreadableImageError",
    "skip_unreadable_collate",
]

# The package's name, as log lines were named before trilevel.data became a package.
logger = logging.getLogger(__package__)


class UnreadableImageError(ValueError):
    """An image file of an ImageFolder dataset could not be read or decoded (the path is named)."""


class CheckedImageFolder(torchvision.datasets.ImageFolder):
    """torchvision ``ImageFolder`` that names the file it cannot read.

    ``bad_images="fail"`` raises :class:`UnreadableImageError` with the path; ``"skip"`` logs a
    warning with the path and returns None, which :func:`skip_unreadable_collate` drops.
    """

    def __init__(self, root: str, transform=None, bad_images: str = "fail") -> None:
        super().__init__(root, transform=transform)
        self.bad_images = bad_images

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for broken files
            if self.bad_images == "fail":
                raise UnreadableImageError(
                    f"cannot read image {path!r}: {exc}. Fix or remove the file, or pass "
                    f"--bad-images skip to skip unreadable images"
                ) from exc
            logger.warning("skipping unreadable image %r: %s", path, exc)
            return None
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


def skip_unreadable_collate(batch: list):
    """``default_collate`` after dropping items that are None or start with None (skipped images).

    Raises:
        UnreadableImageError: If every item of the batch was unreadable.
    """
    kept = [b for b in batch if b is not None and not (isinstance(b, (tuple, list)) and b[0] is None)]
    if not kept:
        raise UnreadableImageError(f"all {len(batch)} images of a batch were unreadable (see the warnings above)")
    return torch.utils.data.default_collate(kept)


class DatasetNotFoundError(FileNotFoundError):
    """The data of a dataset are not where :func:`~trilevel.data.build_datasets` looked for them.

    The message names the place(s) looked at and how to install the data or point to them
    (``data_dir`` / ``--data-dir``).
    """


@dataclass(frozen=True)
class DataInfo:
    """What a model and a training loop need to know about the built datasets.

    Attributes:
        num_classes: Number of classes; targets are in ``[0, num_classes)``.
        in_chans: Channels ``C`` of the produced images (after any grayscale-to-RGB repeat).
        img_size: Side ``H == W`` of the produced images, in pixels.
        mean: Per-channel mean used for normalisation (length ``in_chans``), pixel values in
            [0, 1].
        std: Per-channel standard deviation used for normalisation (length ``in_chans``).
        name: Dataset name, one of :data:`~trilevel.data.ALLOWED_NAMES`.
        num_train: Number of training examples (after ``val_split`` and ``train_subset``).
        num_val: Number of validation examples: the held-out split's with ``val_split``, else the
            test set's (the set evaluated during training).
        num_test: Number of test examples.
        val_split: Training examples held out for validation; None: no validation split.
        classes: The original class indices kept (renumbered ``0..len-1``); None: all.
    """

    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    num_train: int
    num_val: int
    num_test: int = 0
    val_split: int | None = None
    classes: tuple[int, ...] | None = None


class TensorImageDataset(Dataset):
    """Images held in memory as one ``uint8`` tensor, transformed on access.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        targets: Integer tensor of shape ``(N,)`` with the class indices.
        transform: Callable applied to each ``uint8`` image of shape ``(C, H, W)``; must return
            the final tensor. ``None`` returns the raw ``uint8`` image.

    Raises:
        ValueError: If the tensors have the wrong dtype, rank or disagreeing lengths.

    Items are ``(transform(images[i]), int(targets[i]))``. The dataset is picklable (the
    tensors travel with it), so it works with ``DataLoader`` workers of any start method.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                "images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                f"{tuple(getattr(images, 'shape', ()))}"
            )
        if (
            not isinstance(targets, torch.Tensor)
            or targets.dim() != 1
            or targets.dtype.is_floating_point
            or targets.dtype.is_complex
        ):
            raise ValueError(
                "targets must be an integer tensor of shape (N,), got "
                f"{type(targets).__name__} {getattr(targets, 'dtype', '')} "
                f"{tuple(getattr(targets, 'shape', ()))}"
            )
        if len(images) != len(targets):
            raise ValueError(
                "images and targets disagree in length: "
                f"{len(images)} images, {len(targets)} targets"
            )
        self.images = images
        self._targets = targets.to(torch.int64)
        self.transform = transform

    @property
    def targets(self) -> torch.Tensor:
        """Class indices of all examples, ``int64`` tensor of shape ``(N,)``."""
        return self._targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self._targets[index])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}(n={n}, image=({c}, {h}, {w}), transform={self.transform})"
