"""Tests of trilevel.data on the real Fashion-MNIST (Debian package dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trilevel.data import (
    ALLOWED_NAMES,
    DEFAULT_FASHION_MNIST_DIR,
    DataInfo,
    DatasetNotFoundError,
    TensorImageDataset,
    build_datasets,
)
from trilevel.data import cluttered
from trilevel.data.cluttered import CLUTTER_RECIPE_VERSION, cache_dir, clutter_images, cluttered_split

from _runs import FMNIST, FMNIST_FILES, needs_fmnist


def test_the_fashion_mnist_skip_checks_the_folder_the_loaders_read():
    assert FMNIST == DEFAULT_FASHION_MNIST_DIR


@pytest.fixture(scope="module")
def fmnist():
    return build_datasets("fashion-mnist")


def _write_idx(path: Path, tensor: torch.Tensor) -> None:
    """Writes a uint8 tensor as an IDX file (big-endian header: 0, 0, type 0x08, ndim; dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + b"".join(
        struct.pack(">I", d) for d in tensor.shape
    )
    path.write_bytes(header + tensor.contiguous().numpy().tobytes())


def _synthetic_idx_folder(folder: Path, n_train=12, n_val=6, n_val_labels=None, size=8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    splits = (("train", n_train, n_train), ("t10k", n_val, n_val_labels or n_val))
    for prefix, n, n_labels in splits:
        images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        labels = torch.arange(n_labels, dtype=torch.uint8) % 3
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_default(fmnist):
    train, val, info = fmnist
    assert isinstance(info, DataInfo)
    assert (info.name, info.num_classes, info.in_chans) == ("fashion-mnist", 10, 1)
    assert info.img_size == 28
    assert (info.num_train, info.num_val) == (60000, 10000) == (len(train), len(val))
    assert len(info.mean) == len(info.std) == 1
    assert info.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert info.std[0] == pytest.approx(0.3530, abs=1e-3)
    for ds in (train, val):
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert isinstance(y, int) and 0 <= y < 10
    assert isinstance(train, TensorImageDataset)
    assert train.targets.min() == 0 and train.targets.max() == 9
    assert torch.bincount(val.targets).tolist() == [1000] * 10


@needs_fmnist
def test_fashion_mnist_normalised(fmnist):
    _, val, _ = fmnist
    xs = torch.stack([val[i][0] for i in range(0, 10000, 5)])
    assert abs(float(xs.mean())) < 0.05
    assert float(xs.std()) == pytest.approx(1.0, abs=0.05)


@needs_fmnist
def test_light_aug_random_and_reproducible(fmnist):
    train, val, _ = fmnist
    torch.manual_seed(0)
    a = torch.stack([train[i][0] for i in range(16)])
    torch.manual_seed(0)
    b = torch.stack([train[i][0] for i in range(16)])
    torch.manual_seed(1)
    c = torch.stack([train[i][0] for i in range(16)])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(val[3][0], val[3][0])  # validation is deterministic


@needs_fmnist
def test_subset_in_chans_img_size_and_none_aug(fmnist):
    full_train, _, _ = fmnist
    train, val, info = build_datasets(
        "fashion-mnist", train_subset=50, img_size=32, in_chans=3, aug="none"
    )
    assert (info.num_train, info.num_val, info.in_chans, info.img_size) == (50, 10000, 3, 32)
    assert len(info.mean) == len(info.std) == 3
    assert len(train) == 50
    assert torch.equal(train.targets, full_train.targets[:50])  # first N, in order
    x, _ = train[7]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert torch.equal(x, train[7][0])  # aug="none" is deterministic
    assert val[0][0].shape == (3, 32, 32)
    # the subset carries only its own examples when pickled (DataLoader workers)
    clone = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 200_000
    assert torch.equal(clone[7][0], x)


@needs_fmnist
def test_deit_aug_and_dataloader_workers():
    train, val, info = build_datasets(
        "fashion-mnist", train_subset=8, img_size=224, in_chans=3, aug="deit"
    )
    assert (info.in_chans, info.img_size) == (3, 224)
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= y < 10
    assert val[0][0].shape == (3, 224, 224)

    def epoch(seed: int) -> torch.Tensor:
        loader = DataLoader(train, batch_size=4, num_workers=1,
                            generator=torch.Generator().manual_seed(seed))
        return torch.cat([xb for xb, _ in loader])

    assert torch.equal(epoch(3), epoch(3))


def test_deit_needs_three_channels(tmp_path):
    folder = _synthetic_idx_folder(tmp_path / "idx")
    with pytest.raises(ValueError, match="in_chans=3"):
        build_datasets("mnist", data_dir=folder, aug="deit")


# --------------------------------------------------------------------------------------------
# MNIST-format folders


@needs_fmnist
def test_mnist_from_folder_gzipped_and_plain(tmp_path, fmnist):
    folder = tmp_path / "idx"
    folder.mkdir()
    # training files stay gzipped, test files are decompressed
    for name in FMNIST_FILES:
        src = DEFAULT_FASHION_MNIST_DIR / name
        if name.startswith("train"):
            shutil.copy(src, folder / name)
        else:
            with gzip.open(src, "rb") as f_in, open(folder / name[: -len(".gz")], "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
    train, val, info = build_datasets("mnist", data_dir=folder, train_subset=100)
    ref_train, ref_val, ref_info = fmnist
    assert (info.name, info.num_classes, info.num_train, info.num_val) == ("mnist", 10, 100, 10000)
    assert info.mean == pytest.approx(ref_info.mean)
    assert torch.equal(train.images, ref_train.images[:100])
    assert torch.equal(val.images, ref_val.images)
    assert torch.equal(val.targets, ref_val.targets)
    assert list(tmp_path.iterdir()) == [folder]  # no temp files left next to the data


def test_mnist_synthetic_torchvision_layout(tmp_path):
    _synthetic_idx_folder(tmp_path / "MNIST" / "raw", size=8)
    train, val, info = build_datasets("mnist", data_dir=str(tmp_path), aug="light")
    assert (info.num_classes, info.img_size, info.num_train, info.num_val) == (3, 8, 12, 6)
    assert train[0][0].shape == (1, 8, 8)


def test_light_aug_flips_clothing_but_not_digits(tmp_path, fmnist):
    import torchvision.transforms.v2 as v2

    def flips(dataset) -> bool:
        return any(isinstance(t, v2.RandomHorizontalFlip) for t in dataset.transform.transforms)

    assert flips(fmnist[0])  # the fixture's default aug is "light"
    _synthetic_idx_folder(tmp_path / "MNIST" / "raw", size=8)
    digits, _, _ = build_datasets("mnist", data_dir=str(tmp_path), aug="light")
    assert not flips(digits)
    assert any(isinstance(t, v2.RandomCrop) for t in digits.transform.transforms)  # still cropped


def test_mnist_label_count_mismatch(tmp_path):
    folder = _synthetic_idx_folder(tmp_path / "idx", n_val=6, n_val_labels=5)
    with pytest.raises(ValueError, match="6 images but .* 5 labels"):
        build_datasets("mnist", data_dir=folder)


def test_mnist_corrupt_file(tmp_path):
    folder = _synthetic_idx_folder(tmp_path / "idx")
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*not a valid IDX"):
        build_datasets("mnist", data_dir=folder)


# --------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder(tmp_path):
    for split in ("train", "val"):
        for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / split / label
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40 + 10 * i, 30), colour).save(d / f"{i}.png")
    for aug in ("light", "none", "deit"):
        train, val, info = build_datasets("imagefolder", data_dir=tmp_path, img_size=32,
                                          aug=aug, train_subset=3)
        assert (info.num_classes, info.in_chans, info.img_size) == (2, 3, 32)
        assert (info.num_train, info.num_val) == (3, 4) == (len(train), len(val))
        x, y = train[2]
        assert type(x) is torch.Tensor and x.shape == (3, 32, 32) and y in (0, 1)
        assert val[0][0].shape == (3, 32, 32)


def test_imagefolder_unreadable_image_fail_or_skip(tmp_path, caplog):
    from trilevel.data import UnreadableImageError, skip_unreadable_collate
    from trilevel.example_selection import IndexedDataset

    for split in ("train", "val"):
        d = tmp_path / split / "cat"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (255, 0, 0)).save(d / f"{i}.png")
    broken = tmp_path / "train" / "cat" / "1.png"
    broken.write_bytes(b"not a png at all")
    train, _, _ = build_datasets("imagefolder", data_dir=tmp_path, img_size=32, aug="none")
    with pytest.raises(UnreadableImageError, match=r"1\.png.*--bad-images skip"):
        train[1]
    train, _, _ = build_datasets("imagefolder", data_dir=tmp_path, img_size=32, aug="none", bad_images="skip")
    with caplog.at_level("WARNING"):
        batch = skip_unreadable_collate([IndexedDataset(train)[i] for i in range(3)])
    assert "1.png" in caplog.text
    images, targets, indices = batch
    assert images.shape == (2, 3, 32, 32) and indices.tolist() == [0, 2]
    with pytest.raises(UnreadableImageError, match="all 1 images"):
        skip_unreadable_collate([IndexedDataset(train)[1]])
    with pytest.raises(ValueError, match="bad_images"):
        build_datasets("imagefolder", data_dir=tmp_path, bad_images="ignore")


# --------------------------------------------------------------------------------------------
# CIFAR (a fake cifar-10-batches-py; torchvision's md5 check is patched out since it cannot pass)


def test_cifar10_fake_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    g = torch.Generator().manual_seed(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = torch.randint(0, 256, (4, 3 * 32 * 32), dtype=torch.uint8, generator=g).numpy()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 3, 9, 1]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    for data_dir in (tmp_path, base):  # the parent or the extracted folder itself
        train, val, info = build_datasets("cifar10", data_dir=data_dir, train_subset=5)
        assert (info.num_classes, info.in_chans, info.img_size) == (10, 3, 32)
        assert (info.num_train, info.num_val) == (5, 4)
        x, y = train[4]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
        assert val[0][0].shape == (3, 32, 32)
    _, val, _ = build_datasets("cifar10", data_dir=tmp_path, aug="deit", img_size=48)
    assert val[0][0].shape == (3, 48, 48)


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_data_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="nowhere") as exc:
        build_datasets("fashion-mnist", data_dir=missing)
    assert isinstance(exc.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)
    assert "--data-dir" in str(exc.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"empty.*t10k-labels-idx1-ubyte\[\.gz\]"):
        build_datasets("mnist", data_dir=empty)
    for name in ("cifar10", "cifar100", "imagefolder"):
        with pytest.raises(DatasetNotFoundError, match="empty"):
            build_datasets(name, data_dir=empty)
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        build_datasets("mnist")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'svhn'") as exc:
        build_datasets("svhn")
    assert all(n in str(exc.value) for n in ALLOWED_NAMES)
    with pytest.raises(ValueError, match="'light'.*got 'heavy'"):
        build_datasets("fashion-mnist", aug="heavy")
    with pytest.raises(ValueError, match="img_size.*0"):
        build_datasets("fashion-mnist", img_size=0)
    folder = _synthetic_idx_folder(tmp_path / "idx")
    for bad in (0, -1, 13, 2.5, True):
        with pytest.raises(ValueError, match=rf"train_subset.*\[1, 12\].*{bad!r}"):
            build_datasets("mnist", data_dir=folder, train_subset=bad)
    with pytest.raises(ValueError, match="in_chans=2"):
        build_datasets("mnist", data_dir=folder, in_chans=2)


def test_tensor_dataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="disagree"):
        TensorImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)
        )


# --------------------------------------------------------------------------------------------
# Cluttered Fashion-MNIST (trilevel.data.cluttered)

# sha256 of clutter_images(_ramp_images(4), canvas=40, fragments=2, fragment=8, seed=0). It pins the
# recipe (the draws, their order and the pasting): a change of the recipe must bump
# CLUTTER_RECIPE_VERSION (the cache key) and then re-pin this digest.
CLUTTER_DIGEST_V1 = "80c673b3b357c77ff8f00cce338e48ffe7464e9abee263573852e2ada6d3d575"


def _ramp_images(n: int, side: int = 28) -> torch.Tensor:
    return (torch.arange(n * side * side) % 251).to(torch.uint8).view(n, 1, side, side)


def _random_images(n: int, side: int = 28, seed: int = 0) -> torch.Tensor:
    """Images without a black pixel (1..255), so that every placement test is discriminating."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)


def _windows(canvas: torch.Tensor, side: int) -> torch.Tensor:
    """All side x side windows of a (C, H, W) canvas: (oy, ox, C, side, side)."""
    return canvas.unfold(1, side, 1).unfold(2, side, 1).permute(1, 2, 0, 3, 4)


def test_clutter_recipe_digest_is_pinned():
    out = clutter_images(_ramp_images(4), canvas=40, fragments=2, fragment=8, seed=0)
    assert CLUTTER_RECIPE_VERSION == 1, "recipe version bumped: re-pin CLUTTER_DIGEST_V1"
    assert hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest() == CLUTTER_DIGEST_V1


def test_clutter_shape_placement_and_determinism():
    images = _random_images(8)
    out = clutter_images(images, canvas=56, fragments=4, fragment=8, seed=3)
    assert out.shape == (8, 1, 56, 56) and out.dtype == torch.uint8
    rows, cols = set(), set()
    for i in range(8):
        # pasted by pixel-wise maximum: the canvas is >= the image at its offset (random images
        # without black pixels fit nowhere else)
        fits = (_windows(out[i], 28) >= images[i]).flatten(2).all(-1)  # (29, 29)
        found = fits.nonzero().tolist()
        assert len(found) == 1, f"image {i} intact at {len(found)} offsets of its canvas"
        rows.add(found[0][0])
        cols.add(found[0][1])
    assert len(rows) > 1 and len(cols) > 1  # offsets are drawn per image, not one place for all
    # clutter: something lies outside the image's window on some canvas
    assert any(int(out[i].sum()) > int(images[i].sum()) for i in range(8))
    assert torch.equal(out, clutter_images(images, canvas=56, fragments=4, fragment=8, seed=3))
    assert not torch.equal(out, clutter_images(images, canvas=56, fragments=4, fragment=8, seed=4))


def test_clutter_fragments_come_from_other_images():
    # constant images, image k the brightest in turn: its pixels are exactly its 28x28 window (a
    # fragment of another image is darker, so pasting by maximum cannot cover it), and everything
    # outside that window must come from the other images
    base = torch.arange(1, 9, dtype=torch.uint8) * 10
    cluttered_any = False
    for k in range(8):
        values = torch.roll(base, k + 1)
        assert int(values[k]) == 80
        images = values.view(8, 1, 1, 1).expand(8, 1, 28, 28).contiguous()
        canvas = clutter_images(images, canvas=56, fragments=6, fragment=8, seed=0)[k, 0]
        ys, xs = (canvas == 80).nonzero(as_tuple=True)
        assert len(ys) == 28 * 28, "a fragment of the image itself, or the image not intact"
        oy, ox = int(ys.min()), int(xs.min())
        assert (int(ys.max()) - oy, int(xs.max()) - ox) == (27, 27)
        outside = canvas.clone()
        outside[oy:oy + 28, ox:ox + 28] = 0
        seen = set(torch.unique(outside).tolist()) - {0}
        assert seen <= set(values.tolist()) - {80}
        cluttered_any |= bool(seen)
    assert cluttered_any


def test_clutter_without_fragments_is_the_image_on_black():
    images = _random_images(5)
    out = clutter_images(images, canvas=40, fragments=0, fragment=8, seed=0)
    for i in range(5):
        assert int(out[i].sum()) == int(images[i].sum())  # nothing else on the canvas
        exact = (_windows(out[i], 28) == images[i]).flatten(2).all(-1).nonzero()
        assert len(exact) == 1
    single = clutter_images(images[:1], canvas=28, fragments=0, fragment=8, seed=0)
    assert torch.equal(single, images[:1])  # a canvas of the image's size: the image itself


def test_clutter_errors():
    images = _random_images(2)
    with pytest.raises(ValueError, match="canvas-size 27 must be at least the image side 28"):
        clutter_images(images, canvas=27, fragments=1, fragment=8, seed=0)
    with pytest.raises(ValueError, match="clutter-fragments must be >= 0, got -1"):
        clutter_images(images, canvas=40, fragments=-1, fragment=8, seed=0)
    for bad in (0, 29):
        with pytest.raises(ValueError, match=rf"fragment side must be in \[1, 28\], got {bad}"):
            clutter_images(images, canvas=40, fragments=1, fragment=bad, seed=0)
    with pytest.raises(ValueError, match="need at least two images"):
        clutter_images(images[:1], canvas=40, fragments=1, fragment=8, seed=0)
    assert clutter_images(images[:1], canvas=40, fragments=0, fragment=28, seed=0).shape == (1, 1, 40, 40)


def test_cache_dir_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("TRILEVEL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "trilevel"
    monkeypatch.setenv("TRILEVEL_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"


def test_cluttered_split_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEVEL_CACHE_DIR", str(tmp_path / "cache"))
    images = _random_images(6)
    first = cluttered_split(images, "train", canvas=40, fragments=2)
    assert torch.equal(first, clutter_images(images, 40, 2, 8, seed=0))  # train: seed 0
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].name.startswith(f"cluttered-v{CLUTTER_RECIPE_VERSION}-train-c40-f2x8-")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(cluttered, "clutter_images", no_rebuild)
    assert torch.equal(cluttered_split(images, "train", canvas=40, fragments=2), first)
    monkeypatch.undo()
    monkeypatch.setenv("TRILEVEL_CACHE_DIR", str(tmp_path / "cache"))

    # the validation split has another seed and its own file; other source images another file
    val = cluttered_split(images, "val", canvas=40, fragments=2)
    assert torch.equal(val, clutter_images(images, 40, 2, 8, seed=1)) and not torch.equal(val, first)
    other = cluttered_split(_random_images(6, seed=1), "train", canvas=40, fragments=2)
    assert not torch.equal(other, first)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # no temp files left

    good = files[0].read_bytes()
    # a damaged cache file (truncated, empty, not a pickle, zeroed) is rebuilt and rewritten
    for damaged in (good[: len(good) // 2], b"", b"not a tensor", bytes(64)):
        files[0].write_bytes(damaged)
        assert torch.equal(cluttered_split(images, "train", canvas=40, fragments=2), first)
        assert torch.equal(torch.load(files[0], weights_only=True), first)
    torch.save(first[:, :, :28, :28].clone(), files[0])  # a tensor of the wrong shape too
    assert torch.equal(cluttered_split(images, "train", canvas=40, fragments=2), first)
    with pytest.raises(ValueError, match="split must be one of train, val; got 'test'"):
        cluttered_split(images, "test", canvas=40, fragments=2)


def test_cluttered_dataset_from_an_idx_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEVEL_CACHE_DIR", str(tmp_path / "cache"))
    folder = _synthetic_idx_folder(tmp_path / "idx", size=8)
    train, val, info = build_datasets("cluttered-fashion-mnist", data_dir=folder, canvas_size=28,
                                      clutter_fragments=2, aug="none")
    assert (info.name, info.img_size, info.in_chans, info.num_train, info.num_val) == (
        "cluttered-fashion-mnist", 28, 1, 12, 6)
    assert train.images.shape == (12, 1, 28, 28) and val.images.shape == (6, 1, 28, 28)
    assert train[0][0].shape == (1, 28, 28)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and val, cached
    # built from the whole split, then cut: an image is the same whatever the subset
    sub, _, _ = build_datasets("cluttered-fashion-mnist", data_dir=folder, canvas_size=28,
                               clutter_fragments=2, aug="none", train_subset=5)
    assert torch.equal(sub.images, train.images[:5])
    assert len(list((tmp_path / "cache").iterdir())) == 2  # read back, not rebuilt under another key
    for kwargs, message in (
        (dict(canvas_size=27), "canvas_size must be at least 28.*27"),
        (dict(canvas_size=0), "canvas_size must be a positive integer"),
        (dict(clutter_fragments=-1), "clutter_fragments must be an integer >= 0, got -1"),
        (dict(clutter_fragments=True), "clutter_fragments must be an integer >= 0, got True"),
    ):
        with pytest.raises(ValueError, match=message):
            build_datasets("cluttered-fashion-mnist", data_dir=folder, **kwargs)


def test_cluttered_options_of_the_train_config():
    from trilevel.cli.train import parse_train_config
    from trilevel.training import TrainConfig

    cfg = parse_train_config(["--dataset", "cluttered-fashion-mnist", "--canvas-size", "40",
                              "--clutter-fragments", "0"])
    assert (cfg.dataset, cfg.canvas_size, cfg.clutter_fragments) == ("cluttered-fashion-mnist", 40, 0)
    assert (TrainConfig().canvas_size, TrainConfig().clutter_fragments) == (56, 4)
    with pytest.raises(ValueError, match="canvas-size"):
        TrainConfig.from_dict({"dataset": "cluttered-fashion-mnist", "canvas-size": 27})
    with pytest.raises(ValueError, match="clutter-fragments"):
        TrainConfig.from_dict({"dataset": "cluttered-fashion-mnist", "clutter-fragments": -1})


@needs_fmnist
def test_cluttered_fashion_mnist_split_is_cached(tmp_path, monkeypatch):
    from trilevel.data.idx import load_idx

    monkeypatch.setenv("TRILEVEL_CACHE_DIR", str(tmp_path))
    _, _, val_x, _ = load_idx("fashion-mnist", DEFAULT_FASHION_MNIST_DIR, "")
    built = cluttered_split(val_x, "val", canvas=56, fragments=4)
    assert built.shape == (10000, 1, 56, 56) and built.dtype == torch.uint8
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].startswith(f"cluttered-v{CLUTTER_RECIPE_VERSION}-val-c56-f4x8-")
    assert torch.equal(cluttered_split(val_x, "val", canvas=56, fragments=4), built)
    assert len(list(tmp_path.iterdir())) == 1
    # clutter fills the canvas: far more lit pixels than the images alone
    assert int((built > 0).sum()) > int((val_x > 0).sum())


def test_holdout_indices_are_disjoint_complete_and_depend_only_on_the_sizes():
    from trilevel.data import holdout_indices

    train, val = holdout_indices(1000, 100)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert torch.equal(val, val.sort().values)
    torch.manual_seed(123)  # the global generator (a run's seed) does not move the split
    again = holdout_indices(1000, 100)[1]
    torch.manual_seed(7)
    assert torch.equal(val, again) and torch.equal(val, holdout_indices(1000, 100)[1])
    assert not torch.equal(val, torch.arange(100))  # random, not the first images
    for bad in (0, 1000, -1, 2.5, True):
        with pytest.raises(ValueError, match="val_split"):
            holdout_indices(1000, bad)


@pytest.mark.slow
@needs_fmnist
def test_build_splits_holds_out_validation_before_the_subset():
    from trilevel.data import build_splits, holdout_indices

    s = build_splits("fashion-mnist", val_split=500, train_subset=300, aug="none")
    assert (len(s.train), len(s.val), len(s.test)) == (300, 500, 10000)
    assert (s.info.num_train, s.info.num_val, s.info.num_test, s.info.val_split) == (300, 500, 10000, 500)
    full = build_datasets("fashion-mnist", aug="none")[0]
    rest, held = holdout_indices(len(full), 500)
    assert torch.equal(s.val.images, full.images[held]) and torch.equal(s.val.targets, full.targets[held])
    assert torch.equal(s.train.images, full.images[rest[:300]])
    # disjoint: no validation image is a training image (compared as raw bytes)
    train_rows = {bytes(x.numpy().tobytes()) for x in build_splits("fashion-mnist", val_split=500, aug="none").train.images}
    assert not any(bytes(x.numpy().tobytes()) in train_rows for x in s.val.images)
    # the validation set is transformed like the test set (no augmentation)
    light = build_splits("fashion-mnist", val_split=500, aug="light")
    assert light.val.transform is light.test.transform
    assert build_splits("fashion-mnist").val is None


@pytest.mark.slow
@needs_fmnist
def test_classes_keeps_and_renumbers_the_named_classes():
    from trilevel.data import build_splits

    s = build_splits("fashion-mnist", classes=[7, 1, 3], aug="none")
    full_train, full_test, _ = build_datasets("fashion-mnist", aug="none")
    assert s.info.num_classes == 3 and s.info.classes == (7, 1, 3)
    assert len(s.train) == int(sum((full_train.targets == c).sum() for c in (7, 1, 3)))
    assert sorted(s.test.targets.unique().tolist()) == [0, 1, 2]
    first_sneaker = int((full_train.targets == 7).nonzero()[0])
    kept_rows = torch.isin(full_train.targets, torch.tensor([7, 1, 3])).nonzero().flatten().tolist()
    assert int(s.train.targets[kept_rows.index(first_sneaker)]) == 0  # class 7 is now 0, in the order given
    for bad in ([10], [], [1, 1], [-1]):
        with pytest.raises(ValueError, match="classes"):
            build_splits("fashion-mnist", classes=bad)
