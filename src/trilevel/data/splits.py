"""How :mod:`trilevel.data` cuts a dataset into splits: the validation hold-out, the training subset
and the kept classes.

The validation split is held out of the full training set with a fixed generator
(:func:`holdout_indices`, seeded with :data:`VAL_SPLIT_SEED`), so every run, seed and configuration
validates on the same images; ``train_subset`` then keeps the first remaining examples
(:func:`check_subset`), and ``classes`` keeps some classes, renumbered (:func:`check_classes`,
:func:`keep_classes`). The sources that load the data are :mod:`trilevel.data.sources`; what they
return is :class:`DataSplits`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
from torch.utils.data import Dataset

from .datasets import DataInfo

__all__ = [
    "VAL_SPLIT_SEED", "DataSplits", "check_classes", "check_subset", "holdout_indices", "keep_classes",
    "warn_if_classes_missing",
]

# The package's name, as log lines were named before trilevel.data became a package.
logger = logging.getLogger(__package__)


#: Seed of the generator that picks the held-out validation images (:func:`holdout_indices`): a constant,
#: so the split is the same for every run, seed and configuration.
VAL_SPLIT_SEED = 0x7A11DA7E


def holdout_indices(num_examples: int, val_split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which training examples are held out as the validation split, and which remain for training.

    The choice depends only on ``num_examples`` and ``val_split`` (a generator seeded with
    :data:`VAL_SPLIT_SEED`), never on a run's seed: every run and configuration that holds out the
    same number of images from the same training set validates on the same images.

    Args:
        num_examples: Size of the full training set.
        val_split: Number of examples to hold out, in ``[1, num_examples - 1]``.

    Returns:
        ``(train, val)``: ``int64`` index tensors of shapes ``(num_examples - val_split,)`` and
        ``(val_split,)``, each in increasing order, disjoint, together ``range(num_examples)``.

    Raises:
        ValueError: If ``val_split`` is not an integer in ``[1, num_examples - 1]``.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, int) or not 1 <= val_split < num_examples:
        raise ValueError(
            f"val_split must be an integer in [1, {num_examples - 1}] (training images to hold out for "
            f"validation; the training set has {num_examples}), got {val_split!r}"
        )
    g = torch.Generator().manual_seed(VAL_SPLIT_SEED)
    held = torch.zeros(num_examples, dtype=torch.bool)
    held[torch.randperm(num_examples, generator=g)[:val_split]] = True
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()


def check_subset(train_subset: object, num_train: int) -> int | None:
    """The checked ``train_subset`` of a training set of ``num_train`` examples.

    Args:
        train_subset: None (keep all) or the number of first training examples to keep.
        num_train: Size of the training set it cuts.

    Returns:
        ``train_subset`` (None stays None).

    Raises:
        ValueError: If it is not None or an integer in ``[1, num_train]``.
    """
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


def warn_if_classes_missing(name: str, targets: torch.Tensor, num_classes: int) -> None:
    """Log a warning when a training subset's ``targets`` do not cover all ``num_classes`` classes.

    Args:
        name: The dataset's name (in the message).
        targets: Labels of the subset.
        num_classes: The dataset's number of classes.
    """
    present = int(torch.unique(targets).numel())
    if present < num_classes:
        logger.warning(
            "%s training subset holds only %d of %d classes (the subset is the first examples "
            "in the dataset's order)", name, present, num_classes,
        )


def check_classes(classes: object, num_classes: int) -> tuple[int, ...] | None:
    """The checked ``classes`` to keep, as a tuple.

    Args:
        classes: None (all classes) or distinct class indices.
        num_classes: The dataset's number of classes.

    Returns:
        ``tuple(classes)``, or None.

    Raises:
        ValueError: If it is not None or a non-empty list/tuple of distinct indices in ``[0, num_classes)``.
    """
    if classes is None:
        return None
    if (not isinstance(classes, (list, tuple)) or not classes
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes for c in classes)
            or len(set(classes)) != len(classes)):
        raise ValueError(
            f"classes must be distinct class indices in [0, {num_classes - 1}] (at least one), got {classes!r}"
        )
    return tuple(classes)


def keep_classes(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``classes`` only, labels renumbered ``classes[i] -> i``.

    Args:
        x: Images, ``(N, ...)``.
        y: ``(N,)`` int64 labels.
        classes: The classes to keep, in their new order.

    Returns:
        ``(images, labels)``: copies holding only the kept examples.
    """
    lookup = torch.full((max(int(y.max()) + 1, max(classes) + 1),), -1, dtype=torch.int64)
    lookup[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes))
    new = lookup[y]
    keep = new >= 0
    return x[keep].clone(), new[keep].clone()


class DataSplits(NamedTuple):
    """The datasets of one source, as :func:`build_splits` builds them.

    Attributes:
        train: The training set (augmented; ``train_subset`` applied).
        val: The validation split held out of the training set (no augmentation), or None.
        test: The test set (no augmentation): report on it, never choose on it.
        info: What the model and the loop need to know (:class:`DataInfo`).
    """

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    info: DataInfo
