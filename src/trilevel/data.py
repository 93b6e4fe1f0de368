"""Training and validation datasets with their transforms.

``build_datasets`` returns a ``(train, val, info)`` triple for one of five sources:

* ``"fashion-mnist"``: the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist`` by default) or any folder holding them.
* ``"mnist"``: any folder of MNIST-format IDX files (gzipped or not); this also fits other
  IDX datasets with the same file names (KMNIST, a Fashion-MNIST copy, ...).
* ``"cifar10"`` / ``"cifar100"``: torchvision's CIFAR loaders over the python-pickle batches.
* ``"imagefolder"``: torchvision's ``ImageFolder`` over ``data_dir/train`` and ``data_dir/val``.

The IDX and CIFAR data are small, so they are held in memory as ``uint8`` tensors and
transformed with ``torchvision.transforms.v2`` directly on tensors (no PIL round trip, except
for ``aug="deit"``, whose RandAugment in timm works on PIL images). Every item is
``(image, target)`` with ``image`` a ``float32`` tensor of shape ``(C, H, W)``, normalised with the
dataset's per-channel mean and std, and ``target`` a Python ``int``.

Nothing is downloaded: all torchvision datasets are built with ``download=False``. Data that
cannot be found raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``), which says where
it looked and how to install the data or point to them.

Random augmentations draw from the global torch RNG (and, for ``aug="deit"``, Python's
``random``, which timm's RandAugment and RandomErasing use). Nothing here seeds anything, so a
``DataLoader`` that seeds each worker (as it does by default) gives reproducible batches.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm.data
import torch
import torchvision
import torchvision.transforms.v2 as v2
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset
from torchvision.datasets.mnist import read_image_file, read_label_file

__all__ = [
    "ALLOWED_AUGS",
    "ALLOWED_BAD_IMAGES",
    "ALLOWED_NAMES",
    "UnreadableImageError",
    "skip_unreadable_collate",
    "DEFAULT_FASHION_MNIST_DIR",
    "DataInfo",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "build_datasets",
]

logger = logging.getLogger(__name__)

ALLOWED_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
ALLOWED_BAD_IMAGES = ("fail", "skip")


class UnreadableImageError(ValueError):
    """An image file of an ImageFolder dataset could not be read or decoded (the path is named)."""


class _CheckedImageFolder(torchvision.datasets.ImageFolder):
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
"""Dataset names accepted by :func:`build_datasets`."""

ALLOWED_AUGS = ("light", "none", "deit")
"""Training augmentations accepted by :func:`build_datasets`."""

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files."""

# (images, labels) IDX file stems of the training and the test split (MNIST naming).
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Folder torchvision's own MNIST/FashionMNIST classes use below their root (``<root>/<X>/raw``).
_TORCHVISION_RAW = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# Per-channel statistics of the CIFAR training sets (pixel values scaled to [0, 1]).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_BASE_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

_DEFAULT_IMAGEFOLDER_SIZE = 224
# DeiT's recipe (Touvron et al., ICML 2021) as timm's create_transform arguments.
_DEIT_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
_DEIT_RE_PROB = 0.25


class DatasetNotFoundError(FileNotFoundError):
    """The data of a dataset are not where :func:`build_datasets` looked for them.

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
        name: Dataset name, one of :data:`ALLOWED_NAMES`.
        num_train: Number of training examples (after ``train_subset``).
        num_val: Number of validation examples.
    """

    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    num_train: int
    num_val: int


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


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_choice(what: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _check_positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _resolve_in_chans(name: str, native: int, in_chans: object) -> int:
    if in_chans is None:
        return native
    allowed = (1, 3) if native == 1 else (native,)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans not in allowed:
        raise ValueError(
            f"in_chans={in_chans!r} is not supported for {name!r} ({native}-channel images); "
            f"allowed: None (native) or {' or '.join(map(str, allowed))}"
        )
    return in_chans


def _check_subset(train_subset: object, num_train: int) -> int | None:
    if train_subset is None:
        return None
    if (
        isinstance(train_subset, bool)
        or not isinstance(train_subset, int)
        or not 1 <= train_subset <= num_train
    ):
        raise ValueError(
            f"train_subset must be None or an integer in [1, {num_train}] (the training set "
            f"size), got {train_subset!r}"
        )
    return train_subset


def _data_dir_or_raise(name: str, data_dir: str | os.PathLike | None, hint: str) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} has no default location; pass data_dir (--data-dir). {hint}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"data_dir {str(path)!r} for {name!r} is not a folder. {hint}")
    return path


# --------------------------------------------------------------------------------------------
# IDX (MNIST-format) files


def _find_idx_file(folders: list[Path], stem: str) -> Path | None:
    """First existing file named like ``stem`` (also ``.idx`` spelling, also gzipped)."""
    dotted = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some mirrors name them
    for folder in folders:
        for base in (stem, dotted):
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def _read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Reads an IDX file with torchvision's parser, decompressing gzip into a temp file first.

    torchvision's ``read_sn3_pascalvincent_tensor`` only opens plain files, so a gzipped file is
    inflated into a temporary folder that is removed right after parsing.
    """
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"
        if not is_gzip:
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="trilevel-idx-") as tmp:
            plain = Path(tmp) / "data.idx"
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            return reader(str(plain))
    except (AssertionError, ValueError, TypeError, KeyError, RuntimeError, EOFError, zlib.error,
            gzip.BadGzipFile) as exc:  # torchvision's parser validates with assert
        raise ValueError(
            f"{str(path)!r} is not a valid IDX file of the expected kind: {exc!r}"
        ) from exc


def _load_idx_split(
    name: str, split: str, image_path: Path, label_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(image_path, read_image_file)  # (N, H, W) uint8
    labels = _read_idx(label_path, read_label_file)  # (N,) int64
    if len(images) != len(labels):
        raise ValueError(
            f"{name} {split} split: {str(image_path)!r} holds {len(images)} images but "
            f"{str(label_path)!r} holds {len(labels)} labels"
        )
    return images.unsqueeze(1), labels  # (N, 1, H, W)


def _load_idx(
    name: str, data_dir: Path, hint: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folders = [data_dir, data_dir / _TORCHVISION_RAW[name] / "raw"]
    found = {stem: _find_idx_file(folders, stem) for pair in _IDX_STEMS.values() for stem in pair}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"{name} IDX files not found: looked in {', '.join(repr(str(f)) for f in folders)} for "
            f"{', '.join(m + '[.gz]' for m in missing)}. {hint}"
        )
    (train_x, train_y), (val_x, val_y) = (
        _load_idx_split(name, split, found[_IDX_STEMS[split][0]], found[_IDX_STEMS[split][1]])
        for split in ("train", "val")
    )
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(
            f"{name}: training images are {tuple(train_x.shape[2:])} but validation images are "
            f"{tuple(val_x.shape[2:])} pixels"
        )
    return train_x, train_y, val_x, val_y


def _uint8_mean_std(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of all pixels of a ``uint8`` tensor, scaled to [0, 1], via a histogram."""
    counts = torch.bincount(images.reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum()
    mean = (counts * values).sum() / total
    var = (counts * (values - mean) ** 2).sum() / total
    return float(mean), float(math.sqrt(max(float(var), 1e-12)))


# --------------------------------------------------------------------------------------------
# Transforms


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


def _tensor_transforms(
    native_size: int,
    native_chans: int,
    img_size: int,
    in_chans: int,
    aug: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[Callable, Callable]:
    """(train, val) transforms for ``uint8`` tensors ``(C, H, W)`` of side ``native_size``.

    ``mean``/``std`` have ``native_chans`` entries; a grayscale image is repeated to 3 channels
    after normalisation when ``in_chans == 3``.
    """
    resize = [] if img_size == native_size else [v2.Resize((img_size, img_size), antialias=True)]
    to_rgb = [v2.RGB()] if in_chans != native_chans else []
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    val = v2.Compose([*resize, *normalise, *to_rgb])
    if aug == "none":
        return val, val
    if aug == "light":
        crop_flip = [
            v2.RandomCrop(img_size, padding=img_size // 7),
            v2.RandomHorizontalFlip(),
        ]
        return v2.Compose([*resize, *crop_flip, *normalise, *to_rgb]), val
    # "deit": timm's PIL pipeline on an RGB image; val stays resize + normalise.
    rgb_mean = mean * 3 if len(mean) == 1 else mean
    rgb_std = std * 3 if len(std) == 1 else std
    deit = _deit_train_transform(img_size, rgb_mean, rgb_std)
    train = v2.Compose([*to_rgb, v2.ToPILImage(), deit])
    return train, val


def _imagefolder_transforms(img_size: int, aug: str) -> tuple[Callable, Callable]:
    """(train, val) transforms for PIL RGB images of any size (ImageFolder)."""
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


# --------------------------------------------------------------------------------------------
# Builders per source


def _warn_if_classes_missing(name: str, targets: torch.Tensor, num_classes: int) -> None:
    present = int(torch.unique(targets).numel())
    if present < num_classes:
        logger.warning(
            "%s training subset holds only %d of %d classes (the subset is the first examples "
            "in the dataset's order)", name, present, num_classes,
        )


def _build_in_memory(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train_subset: int | None,
    img_size: int | None,
    aug: str,
    in_chans: int | None,
) -> tuple[Dataset, Dataset, DataInfo]:
    native_chans, native_h, native_w = train_x.shape[1:]
    if native_h != native_w:
        raise ValueError(f"{name}: expected square images, got {native_h}x{native_w} pixels")
    chans = _resolve_in_chans(name, native_chans, in_chans)
    size = native_h if img_size is None else _check_positive_int("img_size", img_size)
    if aug == "deit" and chans != 3:
        raise ValueError(
            f"aug='deit' needs 3-channel images but {name!r} gives in_chans={chans}; "
            "pass in_chans=3 (grayscale is repeated) or use aug='light' or 'none'"
        )
    n = _check_subset(train_subset, len(train_x))
    if n is not None:
        # clone: a slice would keep (and pickle) the whole storage.
        train_x, train_y = train_x[:n].clone(), train_y[:n].clone()
        _warn_if_classes_missing(name, train_y, num_classes)
    train_tf, val_tf = _tensor_transforms(native_h, native_chans, size, chans, aug, mean, std)
    train = TensorImageDataset(train_x, train_y, train_tf)
    val = TensorImageDataset(val_x, val_y, val_tf)
    out_mean = mean * 3 if chans != native_chans else mean
    out_std = std * 3 if chans != native_chans else std
    info = DataInfo(
        num_classes=num_classes, in_chans=chans, img_size=size, mean=tuple(out_mean),
        std=tuple(out_std), name=name, num_train=len(train), num_val=len(val),
    )
    return train, val, info


def _build_idx(name: str, data_dir, **kwargs) -> tuple[Dataset, Dataset, DataInfo]:
    if name == "fashion-mnist":
        hint = (
            "Install it with `sudo apt-get install dataset-fashion-mnist` (files go to "
            f"{DEFAULT_FASHION_MNIST_DIR}), or pass data_dir (--data-dir) pointing to a folder "
            "with the four Fashion-MNIST IDX files."
        )
        if data_dir is None:
            data_dir = DEFAULT_FASHION_MNIST_DIR
        folder = _data_dir_or_raise(name, data_dir, hint)
    else:
        hint = (
            "Pass data_dir (--data-dir) pointing to a folder with the four MNIST IDX files "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte, each optionally .gz)."
        )
        folder = _data_dir_or_raise(name, data_dir, hint)
    train_x, train_y, val_x, val_y = _load_idx(name, folder, hint)
    max_label = int(max(train_y.max(), val_y.max()))
    min_label = int(min(train_y.min(), val_y.min()))
    if name == "fashion-mnist":
        num_classes = 10
        if min_label < 0 or max_label >= num_classes:
            raise ValueError(
                f"fashion-mnist labels in {str(folder)!r} span [{min_label}, {max_label}], "
                f"expected [0, {num_classes - 1}]"
            )
    else:  # any IDX dataset: classes are 0..max label
        num_classes = max_label + 1
    mean, std = _uint8_mean_std(train_x)  # of the full training set, before any subset
    return _build_in_memory(
        name, train_x, train_y, val_x, val_y, num_classes, (mean,), (std,), **kwargs
    )


def _build_cifar(name: str, data_dir, **kwargs) -> tuple[Dataset, Dataset, DataInfo]:
    base = _CIFAR_BASE_FOLDER[name]
    hint = (
        f"Pass data_dir (--data-dir) pointing to the folder that contains {base}/ (the "
        "'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html, extracted); "
        "nothing is downloaded at run time."
    )
    root = _data_dir_or_raise(name, data_dir, hint)
    if root.name == base:  # accept the extracted folder itself too
        root = root.parent
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train_ds = cls(root=str(root), train=True, download=False)
        val_ds = cls(root=str(root), train=False, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{name} not found or corrupted in {str(root / base)!r} ({exc}). {hint}"
        ) from exc

    def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    train_x, train_y = as_tensors(train_ds)
    val_x, val_y = as_tensors(val_ds)
    mean, std = _CIFAR_STATS[name]
    return _build_in_memory(
        name, train_x, train_y, val_x, val_y, len(train_ds.classes), mean, std, **kwargs
    )


def _build_imagefolder(
    name: str,
    data_dir,
    train_subset: int | None,
    img_size: int | None,
    aug: str,
    in_chans: int | None,
    bad_images: str = "fail",
) -> tuple[Dataset, Dataset, DataInfo]:
    hint = (
        "Pass data_dir (--data-dir) pointing to a folder with train/ and val/ subfolders, each "
        "holding one subfolder of images per class (torchvision ImageFolder layout)."
    )
    root = _data_dir_or_raise(name, data_dir, hint)
    chans = _resolve_in_chans(name, 3, in_chans)
    size = _DEFAULT_IMAGEFOLDER_SIZE if img_size is None else img_size
    train_tf, val_tf = _imagefolder_transforms(size, aug)
    datasets = []
    for split, tf in (("train", train_tf), ("val", val_tf)):
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"imagefolder: {str(folder)!r} is not a folder. {hint}")
        try:
            datasets.append(_CheckedImageFolder(str(folder), transform=tf, bad_images=bad_images))
        except FileNotFoundError as exc:  # no class folders / no images
            raise DatasetNotFoundError(
                f"imagefolder: no images found in {str(folder)!r} ({exc}). {hint}"
            ) from exc
    train_ds, val_ds = datasets
    if train_ds.classes != val_ds.classes:
        raise ValueError(
            f"imagefolder: class folders differ between {str(root / 'train')!r} "
            f"({train_ds.classes}) and {str(root / 'val')!r} ({val_ds.classes})"
        )
    num_classes = len(train_ds.classes)
    n = _check_subset(train_subset, len(train_ds))
    train: Dataset = train_ds
    if n is not None:
        train = Subset(train_ds, range(n))
        _warn_if_classes_missing(name, torch.as_tensor(train_ds.targets[:n]), num_classes)
    info = DataInfo(
        num_classes=num_classes, in_chans=chans, img_size=size,
        mean=tuple(IMAGENET_DEFAULT_MEAN), std=tuple(IMAGENET_DEFAULT_STD), name=name,
        num_train=len(train), num_val=len(val_ds),
    )
    return train, val_ds, info


def build_datasets(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    img_size: int | None = None,
    aug: str = "light",
    in_chans: int | None = None,
    bad_images: str = "fail",
) -> tuple[Dataset, Dataset, DataInfo]:
    """Builds the training and validation datasets of ``name`` with their transforms.

    Items of both datasets are ``(image, target)``: ``image`` a ``float32`` tensor of shape
    ``(in_chans, img_size, img_size)`` normalised with ``info.mean``/``info.std``, ``target`` an
    ``int`` in ``[0, info.num_classes)``.

    Training transforms by ``aug``:

    * ``"light"`` (default, meant for small images): random crop with zero padding of
      ``img_size // 7`` pixels (4 for 28 and 32) and a horizontal flip, then normalisation. For
      ``"imagefolder"``: random-resized crop and horizontal flip.
    * ``"none"``: the validation transform (no randomness).
    * ``"deit"``: timm's DeiT pipeline (random-resized crop, RandAugment
      ``rand-m9-mstd0.5-inc1``, random erasing with p=0.25); needs 3 channels, so pass
      ``in_chans=3`` for grayscale data.

    Validation transform: resize to ``img_size`` if it differs from the native size, then
    normalise. For ``"imagefolder"``: resize the shorter side to ``img_size / 0.875`` and
    centre-crop ``img_size`` (timm's evaluation transform).

    Args:
        name: One of :data:`ALLOWED_NAMES`.
        data_dir: Folder with the data. Default: ``/usr/share/datasets/fashion-mnist`` for
            ``"fashion-mnist"``; required for the others. IDX datasets: the four IDX files
            (plain or ``.gz``; torchvision's ``<dir>/MNIST/raw`` or ``<dir>/FashionMNIST/raw``
            layout works too). CIFAR: the folder holding ``cifar-10-batches-py/`` or
            ``cifar-100-python/``. ``"imagefolder"``: a folder with ``train/`` and ``val/``
            class-per-subfolder trees.
        train_subset: Keep only the first ``train_subset`` training examples (deterministic;
            in ``[1, training set size]``). ``None`` keeps all. The validation set is never cut.
            For ``"imagefolder"`` the order is class by class, so a small subset may miss
            classes (a warning is logged).
        img_size: Side of the produced square images, in pixels. Default: native size (28 for
            the IDX datasets, 32 for CIFAR), 224 for ``"imagefolder"``.
        aug: Training augmentation, one of :data:`ALLOWED_AUGS`.
        in_chans: Channels of the produced images. ``None`` keeps the native count; ``3`` for
            grayscale data repeats the channel (for RGB models such as ``deit_tiny_patch16_224``).
        bad_images: ``"imagefolder"`` only: an unreadable image file raises
            :class:`UnreadableImageError` naming its path (``"fail"``), or is logged with its
            path and dropped from its batch (``"skip"``; use :func:`skip_unreadable_collate`).

    Returns:
        ``(train, val, info)``: two picklable map-style datasets and their :class:`DataInfo`.
        IDX and CIFAR data come as :class:`TensorImageDataset` (with a ``targets`` tensor);
        ``"imagefolder"`` as torchvision ``ImageFolder`` (training set wrapped in a ``Subset``
        when ``train_subset`` is given). The normalisation statistics are computed from the
        full training images for IDX data and fixed (published) values otherwise (ImageNet's
        for ``"imagefolder"``).

    Raises:
        ValueError: If ``name``, ``aug``, ``img_size``, ``in_chans`` or ``train_subset`` is not
            allowed (the message names the value and the allowed ones), or if the files exist
            but are malformed or inconsistent.
        DatasetNotFoundError: If the data are not found (a ``FileNotFoundError``); the message
            says where it looked and how to install or point to the data.
    """
    _check_choice("name", name, ALLOWED_NAMES)
    _check_choice("aug", aug, ALLOWED_AUGS)
    _check_choice("bad_images", bad_images, ALLOWED_BAD_IMAGES)
    if img_size is not None:
        _check_positive_int("img_size", img_size)
    kwargs = dict(train_subset=train_subset, img_size=img_size, aug=aug, in_chans=in_chans)
    if name in ("fashion-mnist", "mnist"):
        train, val, info = _build_idx(name, data_dir, **kwargs)
    elif name in ("cifar10", "cifar100"):
        train, val, info = _build_cifar(name, data_dir, **kwargs)
    else:
        train, val, info = _build_imagefolder(name, data_dir, bad_images=bad_images, **kwargs)
    logger.info(
        "dataset %s: %d train / %d val examples, %d classes, images (%d, %d, %d), aug=%s",
        info.name, info.num_train, info.num_val, info.num_classes, info.in_chans,
        info.img_size, info.img_size, aug,
    )
    return train, val, info
