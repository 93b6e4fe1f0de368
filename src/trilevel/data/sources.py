"""Dataset builders of :mod:`trilevel.data`: IDX (MNIST, Fashion-MNIST), CIFAR and ImageFolder.

:func:`build_datasets` checks its arguments, loads the data of one source and wraps them with the
transforms of :mod:`trilevel.data.transforms`. Sources:

* Fashion-MNIST: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017, as installed by the Debian
  package ``dataset-fashion-mnist``; MNIST-format IDX files in general (see
  :mod:`trilevel.data.idx`). Cluttered Fashion-MNIST: the same images on a larger canvas among
  clutter (Jaderberg et al., NeurIPS 2015; :mod:`trilevel.data.cluttered`).
* CIFAR-10/100: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009, the
  "python version" from https://www.cs.toronto.edu/~kriz/cifar.html, read with torchvision's
  ``CIFAR10``/``CIFAR100``.
* ImageFolder: torchvision's ``ImageFolder`` layout (one subfolder per class), normalised with
  ImageNet's mean and std.

The validation hold-out, the training subset and the kept classes are :mod:`trilevel.data.splits`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torchvision
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset

from .cluttered import cluttered_split
from .datasets import CheckedImageFolder, DataInfo, DatasetNotFoundError, TensorImageDataset
from .idx import load_idx, uint8_mean_std
from .splits import (
    VAL_SPLIT_SEED, DataSplits, check_classes, check_subset, holdout_indices, keep_classes, warn_if_classes_missing,
)
from .transforms import imagefolder_transforms, tensor_transforms

__all__ = [
    "ALLOWED_AUGS",
    "ALLOWED_BAD_IMAGES",
    "ALLOWED_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "HFLIP_KEEPS_LABEL",
    "VAL_SPLIT_SEED",
    "DataSplits",
    "build_datasets",
    "build_splits",
    "holdout_indices",
]

# The package's name, as log lines were named before trilevel.data became a package.
logger = logging.getLogger(__package__)

ALLOWED_NAMES = ("fashion-mnist", "cluttered-fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")
"""Dataset names accepted by :func:`build_datasets`."""

ALLOWED_AUGS = ("light", "none", "deit")
"""Training augmentations accepted by :func:`build_datasets`."""

HFLIP_KEEPS_LABEL = {"fashion-mnist": True, "cluttered-fashion-mnist": True, "mnist": False, "cifar10": True,
                     "cifar100": True, "imagefolder": True}
"""Whether a horizontal flip keeps an image's label, per dataset: clothing, objects and scenes
mirror; digits do not (a mirrored 2 or 7 is not a digit), so ``"light"`` does not flip MNIST."""

ALLOWED_BAD_IMAGES = ("fail", "skip")
"""What :func:`build_datasets` does with unreadable ``"imagefolder"`` images (``bad_images``)."""

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files."""

# Per-channel statistics of the CIFAR training sets (pixel values scaled to [0, 1]).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_BASE_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

_DEFAULT_IMAGEFOLDER_SIZE = 224


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
# Builders per source


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
    val_split: int | None = None,
    classes: Sequence[int] | None = None,
) -> "DataSplits":
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
    kept = check_classes(classes, num_classes)
    if kept is not None:
        train_x, train_y = keep_classes(train_x, train_y, kept)
        val_x, val_y = keep_classes(val_x, val_y, kept)
        num_classes = len(kept)
    train_tf, val_tf = tensor_transforms(native_h, native_chans, size, chans, aug, mean, std,
                                         hflip=HFLIP_KEEPS_LABEL[name])
    held: Optional[TensorImageDataset] = None
    if val_split is not None:  # held out of the full training set, before any train_subset
        rest, hold = holdout_indices(len(train_x), val_split)
        held = TensorImageDataset(train_x[hold].clone(), train_y[hold].clone(), val_tf)
        train_x, train_y = train_x[rest].clone(), train_y[rest].clone()
    n = check_subset(train_subset, len(train_x))
    if n is not None:
        # clone: a slice would keep (and pickle) the whole storage.
        train_x, train_y = train_x[:n].clone(), train_y[:n].clone()
        warn_if_classes_missing(name, train_y, num_classes)
    train = TensorImageDataset(train_x, train_y, train_tf)
    test = TensorImageDataset(val_x, val_y, val_tf)
    out_mean = mean * 3 if chans != native_chans else mean
    out_std = std * 3 if chans != native_chans else std
    info = DataInfo(
        num_classes=num_classes, in_chans=chans, img_size=size, mean=tuple(out_mean),
        std=tuple(out_std), name=name, num_train=len(train), num_val=len(held if held is not None else test),
        num_test=len(test), val_split=val_split, classes=kept,
    )
    return DataSplits(train, held, test, info)


def _build_idx(name: str, data_dir, canvas_size: int = 56, clutter_fragments: int = 4,
               **kwargs) -> "DataSplits":
    if name in ("fashion-mnist", "cluttered-fashion-mnist"):
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
    train_x, train_y, val_x, val_y = load_idx("fashion-mnist" if name.startswith("cluttered") else name, folder, hint)
    if name == "cluttered-fashion-mnist":  # Jaderberg et al. (NeurIPS 2015)'s cluttered recipe, see .cluttered
        train_x = cluttered_split(train_x, "train", canvas_size, clutter_fragments)
        val_x = cluttered_split(val_x, "val", canvas_size, clutter_fragments)
    max_label = int(max(train_y.max(), val_y.max()))
    min_label = int(min(train_y.min(), val_y.min()))
    if name != "mnist":
        num_classes = 10
        if min_label < 0 or max_label >= num_classes:
            raise ValueError(
                f"{name} labels in {str(folder)!r} span [{min_label}, {max_label}], "
                f"expected [0, {num_classes - 1}]"
            )
    else:  # any IDX dataset: classes are 0..max label
        num_classes = max_label + 1
    mean, std = uint8_mean_std(train_x)  # of the full training set, before any subset
    return _build_in_memory(
        name, train_x, train_y, val_x, val_y, num_classes, (mean,), (std,), **kwargs
    )


def _build_cifar(name: str, data_dir, **kwargs) -> "DataSplits":
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
    val_split: int | None = None,
    classes: Sequence[int] | None = None,
) -> "DataSplits":
    hint = (
        "Pass data_dir (--data-dir) pointing to a folder with train/ and val/ subfolders, each "
        "holding one subfolder of images per class (torchvision ImageFolder layout)."
    )
    root = _data_dir_or_raise(name, data_dir, hint)
    chans = _resolve_in_chans(name, 3, in_chans)
    size = _DEFAULT_IMAGEFOLDER_SIZE if img_size is None else img_size
    train_tf, val_tf = imagefolder_transforms(size, aug)
    datasets = []
    for split, tf in (("train", train_tf), ("val", val_tf)):
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"imagefolder: {str(folder)!r} is not a folder. {hint}")
        try:
            datasets.append(CheckedImageFolder(str(folder), transform=tf, bad_images=bad_images))
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
    if classes is not None:
        raise ValueError("classes is supported for the in-memory datasets (IDX, CIFAR), not imagefolder: "
                         "make a folder tree with the classes you want instead")
    num_classes = len(train_ds.classes)
    train: Dataset = train_ds
    rest = torch.arange(len(train_ds))
    held: Optional[Dataset] = None
    if val_split is not None:  # held out of the full training set, before any train_subset
        rest, hold = holdout_indices(len(train_ds), val_split)
        held = Subset(CheckedImageFolder(str(root / "train"), transform=val_tf, bad_images=bad_images), hold.tolist())
    n = check_subset(train_subset, len(rest))
    if n is not None:
        rest = rest[:n]
        warn_if_classes_missing(name, torch.as_tensor(train_ds.targets)[rest], num_classes)
    if n is not None or val_split is not None:
        train = Subset(train_ds, rest.tolist())
    info = DataInfo(
        num_classes=num_classes, in_chans=chans, img_size=size,
        mean=tuple(IMAGENET_DEFAULT_MEAN), std=tuple(IMAGENET_DEFAULT_STD), name=name,
        num_train=len(train), num_val=len(held if held is not None else val_ds), num_test=len(val_ds),
        val_split=val_split,
    )
    return DataSplits(train, held, val_ds, info)


def build_splits(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    img_size: int | None = None,
    aug: str = "light",
    in_chans: int | None = None,
    bad_images: str = "fail",
    canvas_size: int = 56,
    clutter_fragments: int = 4,
    val_split: int | None = None,
    classes: Sequence[int] | None = None,
) -> DataSplits:
    """Builds the training, validation and test sets of ``name`` with their transforms.

    The test set is the dataset's own held-out split (Fashion-MNIST's 10,000 ``t10k`` images,
    CIFAR's test batch, ``imagefolder``'s ``val/``). The validation set is ``val_split`` images
    held out of the full training set (:func:`holdout_indices`: chosen with a fixed generator, so
    the same for every seed and configuration, and disjoint from the training set), transformed
    like the test set; choose recipes and settings on it and report on the test set. (For
    ``"cluttered-fashion-mnist"`` the clutter of every training canvas is cut from the full
    training split before the hold-out, so a training canvas may carry an 8x8 fragment of a
    validation image: the images themselves are disjoint, the clutter is not. The test set's
    clutter comes from the test split only.)

    Items of both datasets are ``(image, target)``: ``image`` a ``float32`` tensor of shape
    ``(in_chans, img_size, img_size)`` normalised with ``info.mean``/``info.std``, ``target`` an
    ``int`` in ``[0, info.num_classes)``.

    Training transforms by ``aug``:

    * ``"light"`` (default, meant for small images): random crop with zero padding of
      ``img_size // 7`` pixels (4 for 28 and 32) and a horizontal flip where it keeps the label
      (:data:`HFLIP_KEEPS_LABEL`: not for MNIST digits), then normalisation. For
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
        canvas_size: ``"cluttered-fashion-mnist"`` only: side of the canvas in pixels (>= 28).
        clutter_fragments: ``"cluttered-fashion-mnist"`` only: 8x8 clutter fragments per image (>= 0).
        val_split: Training images to hold out as the validation set, in ``[1, training set size
            - 1]``; taken before ``train_subset`` (which then counts the remaining images). None:
            no validation set (``splits.val`` is None).
        classes: Keep only these classes (original label indices), renumbered ``0..len-1`` in the
            order given, in every split (e.g. pretrain on five Fashion-MNIST classes, fine-tune on
            the other five); IDX and CIFAR data only. None: all classes.

    Returns:
        :class:`DataSplits` ``(train, val, test, info)``: picklable map-style datasets (``val``
        None without ``val_split``) and their :class:`DataInfo`.
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
    kwargs = dict(train_subset=train_subset, img_size=img_size, aug=aug, in_chans=in_chans, val_split=val_split,
                  classes=classes)
    if name == "cluttered-fashion-mnist":
        _check_positive_int("canvas_size", canvas_size)
        if isinstance(clutter_fragments, bool) or not isinstance(clutter_fragments, int) or clutter_fragments < 0:
            raise ValueError(f"clutter_fragments must be an integer >= 0, got {clutter_fragments!r}")
        if canvas_size < 28:
            raise ValueError(f"canvas_size must be at least 28 (the Fashion-MNIST image side), got {canvas_size}")
        splits = _build_idx(name, data_dir, canvas_size=canvas_size, clutter_fragments=clutter_fragments, **kwargs)
    elif name in ("fashion-mnist", "mnist"):
        splits = _build_idx(name, data_dir, **kwargs)
    elif name in ("cifar10", "cifar100"):
        splits = _build_cifar(name, data_dir, **kwargs)
    else:
        splits = _build_imagefolder(name, data_dir, bad_images=bad_images, **kwargs)
    info = splits.info
    logger.info(
        "dataset %s: %d train / %s val / %d test examples, %d classes, images (%d, %d, %d), aug=%s",
        info.name, info.num_train, info.num_val if splits.val is not None else "no", info.num_test,
        info.num_classes, info.in_chans, info.img_size, info.img_size, aug,
    )
    return splits


def build_datasets(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    img_size: int | None = None,
    aug: str = "light",
    in_chans: int | None = None,
    bad_images: str = "fail",
    canvas_size: int = 56,
    clutter_fragments: int = 4,
    classes: Sequence[int] | None = None,
) -> tuple[Dataset, Dataset, DataInfo]:
    """The training and test sets of ``name``: :func:`build_splits` without a validation split.

    Returns:
        ``(train, test, info)``; see :func:`build_splits` for the arguments, transforms and errors.
    """
    s = build_splits(name, data_dir, train_subset=train_subset, img_size=img_size, aug=aug, in_chans=in_chans,
                     bad_images=bad_images, canvas_size=canvas_size, clutter_fragments=clutter_fragments,
                     classes=classes)
    return s.train, s.test, s.info
