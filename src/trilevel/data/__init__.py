"""Training and validation datasets with their transforms.

``build_splits`` returns the training set, an optional validation split held out of it, the test
set and their :class:`DataInfo` for one of six sources (``build_datasets``: the same without a
validation split, as a ``(train, test, info)`` triple):

* ``"fashion-mnist"``: the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist`` by default) or any folder holding them.
* ``"mnist"``: any folder of MNIST-format IDX files (gzipped or not); this also fits other
  IDX datasets with the same file names (KMNIST, a Fashion-MNIST copy, ...).
* ``"cifar10"`` / ``"cifar100"``: torchvision's CIFAR loaders over the python-pickle batches.
* ``"imagefolder"``: torchvision's ``ImageFolder`` over ``data_dir/train`` and ``data_dir/val``.
* ``"cluttered-fashion-mnist"``: Fashion-MNIST on a larger canvas among fragments of other images
  (:mod:`trilevel.data.cluttered`), built from the Debian files and cached.

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

Modules: :mod:`~trilevel.data.sources` (:func:`build_datasets` and the builder per source),
:mod:`~trilevel.data.idx` (IDX files), :mod:`~trilevel.data.transforms` (transforms; the
``"deit"`` recipe is that of Touvron et al., ICML 2021) and :mod:`~trilevel.data.datasets`
(dataset classes and errors).
"""

from .datasets import (
    DataInfo,
    DatasetNotFoundError,
    TensorImageDataset,
    UnreadableImageError,
    skip_unreadable_collate,
)
from .sources import (
    ALLOWED_AUGS,
    ALLOWED_BAD_IMAGES,
    ALLOWED_NAMES,
    HFLIP_KEEPS_LABEL,
    DEFAULT_FASHION_MNIST_DIR,
    VAL_SPLIT_SEED,
    DataSplits,
    build_datasets,
    build_splits,
    holdout_indices,
)

__all__ = [
    "HFLIP_KEEPS_LABEL",
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
    "build_splits",
    "DataSplits",
    "holdout_indices",
    "VAL_SPLIT_SEED",
]
