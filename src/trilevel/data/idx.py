"""Reading MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...).

The IDX format is described by LeCun, Cortes and Burges, "The MNIST database of handwritten
digits", http://yann.lecun.com/exdb/mnist/; Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017,
arXiv:1708.07747) uses the same files and names. Parsing is torchvision's
(``torchvision.datasets.mnist.read_image_file`` / ``read_label_file``).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from .datasets import DatasetNotFoundError

__all__ = ["load_idx", "uint8_mean_std"]

# (images, labels) IDX file stems of the training and the test split (MNIST naming).
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Folder torchvision's own MNIST/FashionMNIST classes use below their root (``<root>/<X>/raw``).
_TORCHVISION_RAW = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _find_idx_file(folders: list[Path], stem: str) -> Path | None:
    """First existing file named like ``stem`` (also ``.idx`` spelling, also gzipped)."""
    dotted = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some mirrors name them
    for folder in folders:
        for base in (stem, dotted):
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    return candidate
    return None


# Bytes per value of each IDX type code (unsigned/signed byte, short, int, float, double).
_IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def _check_complete(plain: str, shown: Path) -> None:
    """Raise ValueError naming ``shown`` if the IDX file ``plain`` is shorter than its header announces."""
    size = os.path.getsize(plain)
    with open(plain, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4:
            raise ValueError(f"{str(shown)!r} is truncated: {size} bytes, less than an IDX header")
        ndim, item = magic[3], _IDX_ITEM_BYTES.get(magic[2])
        dims_raw = f.read(4 * ndim)
    if item is None or magic[:2] != b"\0\0":
        return  # not an IDX header at all: torchvision's parser says so
    if len(dims_raw) < 4 * ndim:
        raise ValueError(f"{str(shown)!r} is truncated: {size} bytes, its header is cut short")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    expected = 4 + 4 * ndim + math.prod(dims) * item
    if size < expected:
        raise ValueError(
            f"{str(shown)!r} is truncated: its header announces {' x '.join(map(str, dims))} values "
            f"({expected} bytes) but it holds {size} bytes; download or copy it again"
        )


def _read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Reads an IDX file with torchvision's parser, decompressing gzip into a temp file first.

    torchvision's ``read_sn3_pascalvincent_tensor`` only opens plain files, so a gzipped file is
    inflated into a temporary folder that is removed right after parsing.
    """
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"
        if not is_gzip:
            _check_complete(str(path), path)
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="trilevel-idx-") as tmp:
            plain = Path(tmp) / "data.idx"
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            _check_complete(str(plain), path)
            return reader(str(plain))
    except EOFError as exc:  # gzip data cut short
        raise ValueError(f"{str(path)!r} is truncated (its gzip stream ends early): {exc}") from exc
    except ValueError as exc:
        if "is truncated" in str(exc):
            raise
        raise ValueError(f"{str(path)!r} is not a valid IDX file of the expected kind: {exc!r}") from exc
    except (AssertionError, TypeError, KeyError, RuntimeError, zlib.error,
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


def load_idx(
    name: str, data_dir: Path, hint: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loads the training and test splits of an IDX dataset.

    The four files are looked for in ``data_dir`` and in torchvision's ``<data_dir>/<X>/raw``
    layout, plain or gzipped, with ``-idx`` or ``.idx`` spelling.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (picks torchvision's folder name).
        data_dir: Folder to look in.
        hint: How to install or point to the data, appended to the not-found message.

    Returns:
        ``(train_x, train_y, val_x, val_y)``: ``uint8`` images of shape ``(N, 1, H, W)`` and
        ``int64`` labels of shape ``(N,)``.

    Raises:
        DatasetNotFoundError: If a file is missing.
        ValueError: If a file is malformed, or images and labels disagree in count or size.
    """
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


def uint8_mean_std(images: torch.Tensor) -> tuple[float, float]:
    """Computes the mean and std of all pixels of a ``uint8`` tensor via a histogram.

    Args:
        images: ``uint8`` tensor of any shape.

    Returns:
        ``(mean, std)`` of the pixel values scaled to [0, 1] (std at least 1e-6).
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum()
    mean = (counts * values).sum() / total
    var = (counts * (values - mean) ** 2).sum() / total
    return float(mean), float(math.sqrt(max(float(var), 1e-12)))
